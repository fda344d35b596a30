//! `sluice serve`'s configuration: defaults, then a TOML file (`--config`), then environment
//! variables (`SLUICE_<FIELD>`), then flags (`--<field>`), each overriding the one before.
//! Every value is checked at start-up; an invalid one stops the broker with a message naming the
//! field and where the value came from.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The file layout of a TOML config; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    listeners: Option<String>,
    advertised_listeners: Option<String>,
    listener_security_protocol_map: Option<String>,
    ssl_certificate: Option<PathBuf>,
    ssl_key: Option<PathBuf>,
    ssl_client_ca: Option<PathBuf>,
    ssl_client_auth: Option<String>,
    ssl_principal_mapping_rules: Option<String>,
    sasl_enabled_mechanisms: Option<String>,
    connections_max_reauth_ms: Option<u64>,
    authorizer: Option<String>,
    super_users: Option<String>,
    allow_everyone_if_no_acl_found: Option<bool>,
    audit_enabled: Option<bool>,
    audit_log_dir: Option<PathBuf>,
    audit_log_max_file_bytes: Option<u64>,
    audit_log_max_files: Option<usize>,
    admin_listen: Option<String>,
    metrics_per_partition: Option<bool>,
    otlp_endpoint: Option<String>,
    otlp_sample_ratio: Option<f64>,
    client_metrics: Option<String>,
    client_metrics_interval_ms: Option<u64>,
    advertised_host: Option<String>,
    advertised_port: Option<u16>,
    data_dir: Option<PathBuf>,
    cores: Option<usize>,
    overprovisioned: Option<bool>,
    node_id: Option<i32>,
    frame_bytes_max: Option<usize>,
    shutdown_drain_ms: Option<u64>,
    auto_create_topics: Option<bool>,
    default_partitions: Option<i32>,
    clamp_replication_factor: Option<bool>,
    retention_check_ms: Option<u64>,
    offsets_partitions: Option<i32>,
    group_initial_rebalance_delay_ms: Option<u64>,
    log_cleaner_backoff_ms: Option<u64>,
    log_cleaner_io_bytes_per_second: Option<u64>,
    log_cleaner_dedupe_buffer_bytes: Option<u64>,
    disk_free_bytes_min: Option<u64>,
    durability_rounds: Option<String>,
    log_zero_ahead: Option<bool>,
    log_dsync_lone_writes: Option<bool>,
    transaction_partition_verification_enable: Option<bool>,
    write_buffer_bytes_per_shard: Option<u64>,
    fetch_session_cache_slots: Option<u64>,
    fetch_session_eviction_ms: Option<u64>,
    seeds: Option<String>,
    rpc_listen: Option<String>,
    raft_tick_ms: Option<u64>,
    replica_lag_time_max_ms: Option<u64>,
    leader_imbalance_check_interval_ms: Option<u64>,
    leader_imbalance_per_broker_percentage: Option<u64>,
    broker_session_timeout_ms: Option<u64>,
    metadata_log_max_record_bytes_between_snapshots: Option<u64>,
}

/// Cluster mode's part of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The controller's voters: node id -> RPC address (`1@host:port,2@host:port`).
    pub seeds: std::collections::BTreeMap<i32, SocketAddr>,
    /// This node's RPC address (shard 0; shard `s` listens on port + `s`).
    pub rpc_listen: SocketAddr,
    pub raft_tick: Duration,
    /// Kafka's `replica.lag.time.max.ms`.
    pub replica_lag: Duration,
    /// How often a node checks whether it leads too few of the partitions it is the
    /// preferred leader of (Kafka's `leader.imbalance.check.interval.seconds`); `None`: never
    /// (`auto.leader.rebalance.enable=false`).
    pub leader_imbalance_check: Option<Duration>,
    /// Kafka's `leader.imbalance.per.broker.percentage`.
    pub leader_imbalance_percent: u8,
    /// Kafka's `broker.session.timeout.ms`: a node silent this long is fenced.
    pub session_timeout: Duration,
    /// Kafka's `metadata.log.max.record.bytes.between.snapshots`: the controller snapshots
    /// its image and cuts its log after this many bytes of commands.
    pub controller_snapshot_bytes: u64,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Every Kafka listener (`listeners`; one PLAINTEXT listener on `listen` by default).
    pub listeners: Vec<sluice_net::Listener>,
    /// Where clients reach each listener (`advertised_listeners`, `advertised_host`/`_port`
    /// for the first, otherwise the listener's own address).
    pub endpoints: Vec<sluice_net::Endpoint>,
    /// The SSL and SASL_SSL listeners' TLS configuration, loaded (`None` without such a listener).
    pub tls: Option<std::sync::Arc<sluice_net::tls::TlsServer>>,
    /// The SASL listeners' mechanisms and session lifetime (`None` without a SASL listener).
    pub sasl: Option<std::sync::Arc<sluice_net::sasl::SaslSettings>>,
    /// The ACL authorizer (`None`: `authorizer = none`, every client may do everything).
    pub authorizer: Option<std::sync::Arc<sluice_core::acls::AuthorizerSettings>>,
    /// The audit trail's directory and rotation (`None`: `audit_enabled = false`).
    pub audit: Option<sluice_core::audit::AuditSettings>,
    /// The admin HTTP listener: `/metrics`, readiness, health, the JSON API.
    pub admin_listen: SocketAddr,
    /// `/metrics` series per partition as well as per topic.
    pub metrics_per_partition: bool,
    /// Where request spans go (OTLP over HTTP, the collector's base URL); `None`: nowhere.
    pub otlp_endpoint: Option<String>,
    /// Share of requests traced when no sampled producer trace asks for it (0.0..=1.0).
    pub otlp_sample_ratio: f64,
    /// KIP-714: metric name prefixes clients are asked to push (empty: no subscription; an
    /// empty prefix: every metric).
    pub client_metrics: Vec<String>,
    /// KIP-714: how often subscribed clients push.
    pub client_metrics_interval: Duration,
    pub data_dir: PathBuf,
    pub cores: usize,
    /// Leave the shards' threads to the OS scheduler instead of pinning each to a CPU (a node
    /// sharing its machine's cores with other nodes or programs, as Redpanda's
    /// `--overprovisioned`).
    pub overprovisioned: bool,
    pub node_id: i32,
    /// Cluster mode (`--seeds`); `None`: a single node.
    pub cluster: Option<ClusterConfig>,
    pub frame_bytes_max: usize,
    pub shutdown_drain: Duration,
    /// Create unknown topics named in Metadata requests (Kafka's `auto.create.topics.enable`).
    pub auto_create_topics: bool,
    /// Partitions of a topic created without a count (Kafka's `num.partitions`).
    pub default_partitions: i32,
    /// Accept replication factors above 1 as 1 instead of refusing them.
    pub clamp_replication_factor: bool,
    /// How often retention runs (Kafka's `log.retention.check.interval.ms`).
    pub retention_check_ms: u64,
    /// Partitions of `__consumer_offsets` when it is first created
    /// (Kafka's `offsets.topic.num.partitions`).
    pub offsets_partitions: i32,
    /// Kafka's `group.initial.rebalance.delay.ms`.
    pub group_initial_rebalance_delay_ms: u64,
    /// Pause between compaction passes (Kafka's `log.cleaner.backoff.ms`).
    pub log_cleaner_backoff_ms: u64,
    /// Compaction's I/O per shard, bytes/s (Kafka's `log.cleaner.io.max.bytes.per.second`);
    /// 0: unpaced.
    pub log_cleaner_io_bytes_per_second: u64,
    /// Memory of a compaction pass's offset map, per shard (Kafka's
    /// `log.cleaner.dedupe.buffer.size`).
    pub log_cleaner_dedupe_buffer_bytes: u64,
    /// Produce is refused while the data directory's disk has less free; 0: never.
    pub disk_free_bytes_min: u64,
    /// How acks=all appends are made durable: `shard` (one round per shard, overwrite-only
    /// logs sharing one flush), `shard-per-file` (one round per shard, an fdatasync per file)
    /// or `partition` (every partition its own rounds).
    pub durability_rounds: DurabilityRounds,
    /// Zero segment space ahead of the writer so durable appends are overwrites.
    pub log_zero_ahead: bool,
    /// A durability round that writes one partition alone, as one overwrite, writes it with
    /// O_DSYNC instead of writing and then fdatasyncing.
    pub log_dsync_lone_writes: bool,
    /// KIP-890 part 1: a producer's first transactional batch on a partition is checked with
    /// its transaction coordinator (Kafka's `transaction.partition.verification.enable`).
    pub transaction_partition_verification_enable: bool,
    /// Write-buffer memory per shard beyond which producers are slowed (not failed).
    pub write_buffer_bytes_per_shard: u64,
    /// Incremental fetch sessions kept (Kafka's `max.incremental.fetch.session.cache.slots`);
    /// 0: every fetch is full.
    pub fetch_session_cache_slots: u64,
    /// Idle time after which any new session may evict a session (Kafka's
    /// `min.incremental.fetch.session.eviction.ms`).
    pub fetch_session_eviction_ms: u64,
}

/// See [`BrokerConfig::durability_rounds`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurabilityRounds {
    Shard,
    ShardPerFile,
    Partition,
}

impl DurabilityRounds {
    fn parse(raw: &str) -> Option<DurabilityRounds> {
        match raw {
            "shard" => Some(DurabilityRounds::Shard),
            "shard-per-file" => Some(DurabilityRounds::ShardPerFile),
            "partition" => Some(DurabilityRounds::Partition),
            _ => None,
        }
    }

    /// The flush mode of the shard's sync group, or `None` for per-partition rounds.
    pub fn flush_mode(self) -> Option<sluice_storage::FlushMode> {
        match self {
            DurabilityRounds::Shard => Some(sluice_storage::FlushMode::Shared),
            DurabilityRounds::ShardPerFile => Some(sluice_storage::FlushMode::PerFile),
            DurabilityRounds::Partition => None,
        }
    }
}

/// A value that could not be used: which field, where it came from, and why.
#[derive(Debug, thiserror::Error)]
#[error("invalid config: {field} (from {origin}): {reason}")]
pub struct ConfigError {
    pub field: &'static str,
    pub origin: String,
    pub reason: String,
}

/// The settable fields: (field name, flag, environment variable, help).
const FIELDS: &[(&str, &str, &str, &str)] = &[
    (
        "listen",
        "--listen",
        "SLUICE_LISTEN",
        "Kafka listener every shard accepts on [default: 127.0.0.1:9092]",
    ),
    (
        "listeners",
        "--listeners",
        "SLUICE_LISTENERS",
        "Kafka listeners as NAME://host:port, comma-separated (Kafka's listeners), instead of --listen [default: PLAINTEXT://<listen>]",
    ),
    (
        "advertised_listeners",
        "--advertised-listeners",
        "SLUICE_ADVERTISED_LISTENERS",
        "Addresses named in Metadata per listener, NAME://host:port [default: each listener's own; the first's from --advertised-host/--advertised-port]",
    ),
    (
        "listener_security_protocol_map",
        "--listener-security-protocol-map",
        "SLUICE_LISTENER_SECURITY_PROTOCOL_MAP",
        "NAME:PROTOCOL pairs (PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL) for listeners not named after their protocol [default: each protocol maps to itself]",
    ),
    (
        "ssl_certificate",
        "--ssl-certificate",
        "SLUICE_SSL_CERTIFICATE",
        "PEM file with the SSL listeners' certificate chain, leaf first; re-read on SIGHUP",
    ),
    (
        "ssl_key",
        "--ssl-key",
        "SLUICE_SSL_KEY",
        "PEM file with the certificate's private key; re-read on SIGHUP",
    ),
    (
        "ssl_client_ca",
        "--ssl-client-ca",
        "SLUICE_SSL_CLIENT_CA",
        "PEM file with the CAs client certificates must chain to; re-read on SIGHUP",
    ),
    (
        "ssl_client_auth",
        "--ssl-client-auth",
        "SLUICE_SSL_CLIENT_AUTH",
        "Client certificates: none, requested or required (Kafka's ssl.client.auth) [default: none]",
    ),
    (
        "ssl_principal_mapping_rules",
        "--ssl-principal-mapping-rules",
        "SLUICE_SSL_PRINCIPAL_MAPPING_RULES",
        "Kafka's ssl.principal.mapping.rules: RULE:pattern/replacement/[LU] and DEFAULT, comma-separated [default: DEFAULT]",
    ),
    (
        "sasl_enabled_mechanisms",
        "--sasl-enabled-mechanisms",
        "SLUICE_SASL_ENABLED_MECHANISMS",
        "Mechanisms the SASL listeners offer: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, comma-separated; all check the SCRAM users [default: SCRAM-SHA-256,SCRAM-SHA-512]",
    ),
    (
        "connections_max_reauth_ms",
        "--connections-max-reauth-ms",
        "SLUICE_CONNECTIONS_MAX_REAUTH_MS",
        "KIP-368: a SASL session lasts this long and the client re-authenticates on its connection; a request after that closes it; 0: forever [default: 0]",
    ),
    (
        "authorizer",
        "--authorizer",
        "SLUICE_AUTHORIZER",
        "none (every client may do everything) or acls (Kafka's ACLs decide; see docs/security.md) [default: none]",
    ),
    (
        "super_users",
        "--super-users",
        "SLUICE_SUPER_USERS",
        "Kafka's super.users: principals allowed everything, semicolon-separated (User:admin;User:ops) [default: none]",
    ),
    (
        "allow_everyone_if_no_acl_found",
        "--allow-everyone-if-no-acl-found",
        "SLUICE_ALLOW_EVERYONE_IF_NO_ACL_FOUND",
        "Kafka's allow.everyone.if.no.acl.found: a resource no ACL names is open to all [default: false]",
    ),
    (
        "audit_enabled",
        "--audit-enabled",
        "SLUICE_AUDIT_ENABLED",
        "Keep the audit trail: authentications, authorization denials and administrative changes as hash-chained JSON lines (true|false) [default: false]",
    ),
    (
        "audit_log_dir",
        "--audit-log-dir",
        "SLUICE_AUDIT_LOG_DIR",
        "Where the audit trail's files go [default: <data_dir>/audit]",
    ),
    (
        "audit_log_max_file_bytes",
        "--audit-log-max-file-bytes",
        "SLUICE_AUDIT_LOG_MAX_FILE_BYTES",
        "An audit file is closed and the next begun before it grows past this [default: 104857600]",
    ),
    (
        "audit_log_max_files",
        "--audit-log-max-files",
        "SLUICE_AUDIT_LOG_MAX_FILES",
        "Audit files kept; the oldest beyond this are deleted [default: 10]",
    ),
    (
        "admin_listen",
        "--admin-listen",
        "SLUICE_ADMIN_LISTEN",
        "Admin HTTP listener: /metrics, /v1/status/ready, /v1/health [default: 127.0.0.1:9644]",
    ),
    (
        "metrics_per_partition",
        "--metrics-per-partition",
        "SLUICE_METRICS_PER_PARTITION",
        "/metrics traffic and size series per partition too (true|false) [default: false]",
    ),
    (
        "otlp_endpoint",
        "--otlp-endpoint",
        "SLUICE_OTLP_ENDPOINT",
        "Export request spans over OTLP/HTTP to this collector (http://host:4318) [default: none]",
    ),
    (
        "otlp_sample_ratio",
        "--otlp-sample-ratio",
        "SLUICE_OTLP_SAMPLE_RATIO",
        "Share of requests traced unless a producer's sampled trace asks (0..1) [default: 0.01]",
    ),
    (
        "client_metrics",
        "--client-metrics",
        "SLUICE_CLIENT_METRICS",
        "KIP-714: metric prefixes clients push, comma-separated; \"\" none, \"*\" all \
         [default: org.apache.kafka.producer.,org.apache.kafka.consumer.]",
    ),
    (
        "client_metrics_interval_ms",
        "--client-metrics-interval-ms",
        "SLUICE_CLIENT_METRICS_INTERVAL_MS",
        "KIP-714: how often subscribed clients push their metrics, ms [default: 30000]",
    ),
    (
        "advertised_host",
        "--advertised-host",
        "SLUICE_ADVERTISED_HOST",
        "Host named in Metadata responses [default: the listen IP]",
    ),
    (
        "advertised_port",
        "--advertised-port",
        "SLUICE_ADVERTISED_PORT",
        "Port named in Metadata responses [default: the listen port]",
    ),
    (
        "data_dir",
        "--data-dir",
        "SLUICE_DATA_DIR",
        "Data directory, created and locked [default: ./data]",
    ),
    (
        "cores",
        "--cores",
        "SLUICE_CORES",
        "Shards, one executor per CPU [default: all online CPUs]",
    ),
    (
        "overprovisioned",
        "--overprovisioned",
        "SLUICE_OVERPROVISIONED",
        "Leave shard threads unpinned, for nodes sharing cores (true|false) [default: false]",
    ),
    (
        "node_id",
        "--node-id",
        "SLUICE_NODE_ID",
        "Broker id; in a cluster, this node's id among the seeds [default: 0]",
    ),
    (
        "seeds",
        "--seeds",
        "SLUICE_SEEDS",
        "Cluster mode: ID@IP:PORT,... of every node's RPC address (the controller's voters)",
    ),
    (
        "rpc_listen",
        "--rpc-listen",
        "SLUICE_RPC_LISTEN",
        "Cluster mode: shard 0's RPC address [default: this node's seed address]",
    ),
    (
        "raft_tick_ms",
        "--raft-tick-ms",
        "SLUICE_RAFT_TICK_MS",
        "Cluster mode: one Raft tick in ms [default: 50]",
    ),
    (
        "replica_lag_time_max_ms",
        "--replica-lag-time-max-ms",
        "SLUICE_REPLICA_LAG_TIME_MAX_MS",
        "Cluster mode: a follower this far behind leaves the ISR, ms [default: 30000]",
    ),
    (
        "leader_imbalance_check_interval_ms",
        "--leader-imbalance-check-interval-ms",
        "SLUICE_LEADER_IMBALANCE_CHECK_INTERVAL_MS",
        "Cluster mode: how often a node takes back the leaderships it is preferred for, ms; 0: never [default: 300000]",
    ),
    (
        "leader_imbalance_per_broker_percentage",
        "--leader-imbalance-per-broker-percentage",
        "SLUICE_LEADER_IMBALANCE_PER_BROKER_PERCENTAGE",
        "Cluster mode: share of its preferred leaderships a node may miss before it takes them back [default: 10]",
    ),
    (
        "broker_session_timeout_ms",
        "--broker-session-timeout-ms",
        "SLUICE_BROKER_SESSION_TIMEOUT_MS",
        "Cluster mode: a node not heard from this long is fenced (left out of Metadata), ms [default: 9000]",
    ),
    (
        "metadata_log_max_record_bytes_between_snapshots",
        "--metadata-log-max-record-bytes-between-snapshots",
        "SLUICE_METADATA_LOG_MAX_RECORD_BYTES_BETWEEN_SNAPSHOTS",
        "Cluster mode: the controller snapshots its image and cuts the metadata log after this many bytes of commands [default: 20971520]",
    ),
    (
        "frame_bytes_max",
        "--frame-bytes-max",
        "SLUICE_FRAME_BYTES_MAX",
        "Largest request accepted, bytes [default: 104857600]",
    ),
    (
        "shutdown_drain_ms",
        "--shutdown-drain-ms",
        "SLUICE_SHUTDOWN_DRAIN_MS",
        "How long shutdown waits for requests being answered, ms [default: 5000]",
    ),
    (
        "auto_create_topics",
        "--auto-create-topics",
        "SLUICE_AUTO_CREATE_TOPICS",
        "Create unknown topics on Metadata (true|false) [default: true]",
    ),
    (
        "default_partitions",
        "--default-partitions",
        "SLUICE_DEFAULT_PARTITIONS",
        "Partitions of topics created without a count [default: 1]",
    ),
    (
        "clamp_replication_factor",
        "--clamp-replication-factor",
        "SLUICE_CLAMP_REPLICATION_FACTOR",
        "Accept replication factors above 1 as 1 on a single node (true|false) [default: false]",
    ),
    (
        "retention_check_ms",
        "--retention-check-ms",
        "SLUICE_RETENTION_CHECK_MS",
        "How often retention is applied, ms [default: 300000]",
    ),
    (
        "offsets_partitions",
        "--offsets-partitions",
        "SLUICE_OFFSETS_PARTITIONS",
        "Partitions of __consumer_offsets when first created [default: 8]",
    ),
    (
        "group_initial_rebalance_delay_ms",
        "--group-initial-rebalance-delay-ms",
        "SLUICE_GROUP_INITIAL_REBALANCE_DELAY_MS",
        "A new group waits this long for more members, ms [default: 3000]",
    ),
    (
        "log_cleaner_backoff_ms",
        "--log-cleaner-backoff-ms",
        "SLUICE_LOG_CLEANER_BACKOFF_MS",
        "Pause between compaction passes, ms [default: 15000]",
    ),
    (
        "log_cleaner_io_bytes_per_second",
        "--log-cleaner-io-bytes-per-second",
        "SLUICE_LOG_CLEANER_IO_BYTES_PER_SECOND",
        "Compaction I/O per shard, bytes/s; 0: unpaced [default: 104857600]",
    ),
    (
        "log_cleaner_dedupe_buffer_bytes",
        "--log-cleaner-dedupe-buffer-bytes",
        "SLUICE_LOG_CLEANER_DEDUPE_BUFFER_BYTES",
        "Memory of one compaction pass's key map per shard [default: 67108864]",
    ),
    (
        "disk_free_bytes_min",
        "--disk-free-bytes-min",
        "SLUICE_DISK_FREE_BYTES_MIN",
        "Produce is refused below this many free bytes; 0: never [default: 268435456]",
    ),
    (
        "durability_rounds",
        "--durability-rounds",
        "SLUICE_DURABILITY_ROUNDS",
        "shard, shard-per-file or partition [default: shard]",
    ),
    (
        "log_zero_ahead",
        "--log-zero-ahead",
        "SLUICE_LOG_ZERO_AHEAD",
        "Zero active segments ahead of their writers (true|false) [default: true]",
    ),
    (
        "log_dsync_lone_writes",
        "--log-dsync-lone-writes",
        "SLUICE_LOG_DSYNC_LONE_WRITES",
        "A durability round of one partition's one overwrite writes it with O_DSYNC instead of write + fdatasync (true|false) [default: true]",
    ),
    (
        "transaction_partition_verification_enable",
        "--transaction-partition-verification-enable",
        "SLUICE_TRANSACTION_PARTITION_VERIFICATION_ENABLE",
        "Check a producer's first transactional batch on a partition with its transaction \
         coordinator, refusing it unless the partition is in the producer's transaction \
         (true|false) [default: true]",
    ),
    (
        "write_buffer_bytes_per_shard",
        "--write-buffer-bytes-per-shard",
        "SLUICE_WRITE_BUFFER_BYTES_PER_SHARD",
        "Write-buffer memory per shard before appends wait [default: 268435456]",
    ),
    (
        "fetch_session_cache_slots",
        "--fetch-session-cache-slots",
        "SLUICE_FETCH_SESSION_CACHE_SLOTS",
        "Incremental fetch sessions kept (KIP-227) [default: 1000]",
    ),
    (
        "fetch_session_eviction_ms",
        "--fetch-session-eviction-ms",
        "SLUICE_FETCH_SESSION_EVICTION_MS",
        "A session unused this long may be evicted, ms [default: 120000]",
    ),
];

/// `sluice serve`'s flags: `--config FILE` and one per field of [`FIELDS`], kept as the raw
/// strings given: [`BrokerConfig::load`] checks them, with the environment and the file, so an
/// invalid value is reported the same way wherever it came from.
#[derive(Debug, Clone, Default)]
pub struct ServeArgs {
    pub config: Option<PathBuf>,
    /// (field, value) in command-line order.
    pub flags: Vec<(&'static str, String)>,
}

impl clap::FromArgMatches for ServeArgs {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut args = ServeArgs::default();
        args.update_from_arg_matches(matches)?;
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        if let Some(path) = matches.get_one::<PathBuf>("config") {
            self.config = Some(path.clone());
        }
        for (field, ..) in FIELDS {
            // A flag given twice: the later one wins (scripts append overrides).
            if let Some(value) = matches
                .get_many::<String>(field)
                .and_then(|mut values| values.next_back())
            {
                self.flags.push((field, value.clone()));
            }
        }
        Ok(())
    }
}

impl clap::Args for ServeArgs {
    fn augment_args(command: clap::Command) -> clap::Command {
        command
            .arg(
                clap::Arg::new("config")
                    .long("config")
                    .value_name("FILE.toml")
                    .value_parser(clap::value_parser!(PathBuf))
                    .help("A TOML file setting the fields below by name (environment and flags win over it)"),
            )
            .args(FIELDS.iter().map(|(field, flag, var, help)| {
                clap::Arg::new(*field)
                    .long(&flag[2..])
                    .value_name("VALUE")
                    .action(clap::ArgAction::Append)
                    // A negative number is a value (refused by the field's own check, named).
                    .allow_negative_numbers(true)
                    .help(format!("{help} [env: {var}]"))
            }))
            .after_help(
                "Each field is set, in increasing precedence, by the TOML file, its SLUICE_* \
                 environment variable, or its flag; an invalid value stops start-up (exit 2) \
                 naming the field and where it came from. See docs/operations.md.",
            )
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        Self::augment_args(command)
    }
}

/// KIP-714 subscription prefixes from `a.b.,c.d.`: `""` none, `"*"` every metric (the empty
/// prefix, as GetTelemetrySubscriptions says "all").
fn parse_metric_prefixes(value: &str) -> Result<Vec<String>, String> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(Vec::new());
    }
    if value == "*" {
        return Ok(vec![String::new()]);
    }
    value
        .split(',')
        .map(|prefix| {
            let prefix = prefix.trim();
            if prefix.is_empty() || prefix == "*" || prefix.contains(char::is_whitespace) {
                Err(format!(
                    "{prefix:?} is not a metric name prefix (use \"*\" alone for every metric)"
                ))
            } else {
                Ok(prefix.to_string())
            }
        })
        .collect()
}

const FRAME_BYTES_MIN: usize = 1024;
const FRAME_BYTES_LIMIT: usize = 1 << 30;
const CORES_LIMIT: usize = 1024;
/// Sessions hold every partition a consumer fetches; a million of them is beyond any host.
const FETCH_SESSION_SLOTS_LIMIT: u64 = 1_000_000;
/// An audit file holds at least a few dozen lines.
const AUDIT_FILE_BYTES_MIN: u64 = 16 * 1024;
const PARTITIONS_MAX: i32 = sluice_core::topics::PARTITIONS_MAX;

/// A raw value and where it came from.
struct Raw {
    value: String,
    origin: String,
}

impl BrokerConfig {
    /// Builds the config from `args` (the flags of `sluice serve`) and the process
    /// environment.
    pub fn load(
        args: &ServeArgs,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<BrokerConfig, ConfigError> {
        let config_file = args.config.clone();
        let flags: Vec<(&'static str, Raw)> = args
            .flags
            .iter()
            .map(|(field, value)| {
                let (_, flag_name, _, _) = FIELDS
                    .iter()
                    .find(|(f, ..)| f == field)
                    .expect("flags are fields");
                (
                    *field,
                    Raw {
                        value: value.clone(),
                        origin: format!("flag {flag_name}"),
                    },
                )
            })
            .collect();

        let file = match &config_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
                    field: "config",
                    origin: format!("flag --config {}", path.display()),
                    reason: e.to_string(),
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|e| ConfigError {
                    field: "config",
                    origin: format!("config file {}", path.display()),
                    reason: e.to_string().trim().replace('\n', " "),
                })?
            }
            None => FileConfig::default(),
        };
        let file_origin = config_file
            .as_ref()
            .map_or_else(String::new, |p| format!("config file {}", p.display()));

        // The winning raw value of a field: flag, then environment, then file.
        let pick = |field: &'static str, from_file: Option<String>| -> Option<Raw> {
            if let Some((_, raw)) = flags.iter().rev().find(|(f, _)| *f == field) {
                return Some(Raw {
                    value: raw.value.clone(),
                    origin: raw.origin.clone(),
                });
            }
            let (_, _, var, _) = FIELDS
                .iter()
                .find(|(f, ..)| *f == field)
                .expect("known field");
            if let Some(value) = env(var) {
                return Some(Raw {
                    value,
                    origin: format!("environment {var}"),
                });
            }
            from_file.map(|value| Raw {
                value,
                origin: file_origin.clone(),
            })
        };
        fn parse<T: std::str::FromStr>(field: &'static str, raw: &Raw) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            raw.value.trim().parse::<T>().map_err(|e| ConfigError {
                field,
                origin: raw.origin.clone(),
                reason: format!("{e}: {:?}", raw.value),
            })
        }
        let invalid = |field: &'static str, raw: &Raw, reason: String| ConfigError {
            field,
            origin: raw.origin.clone(),
            reason,
        };
        let default = |v: &str| Raw {
            value: v.to_string(),
            origin: "default".into(),
        };

        let listen_raw = pick("listen", file.listen);
        let listeners = match pick("listeners", file.listeners) {
            Some(raw) => {
                if listen_raw.is_some() {
                    return Err(invalid(
                        "listeners",
                        &raw,
                        "set either listen or listeners, not both".into(),
                    ));
                }
                let protocols = match pick(
                    "listener_security_protocol_map",
                    file.listener_security_protocol_map,
                ) {
                    Some(map) => parse_protocol_map(&map.value)
                        .map_err(|e| invalid("listener_security_protocol_map", &map, e))?,
                    None => Vec::new(),
                };
                parse_listeners(&raw.value, &protocols)
                    .map_err(|e| invalid("listeners", &raw, e))?
            }
            None => {
                let raw = listen_raw.unwrap_or_else(|| default("127.0.0.1:9092"));
                vec![sluice_net::Listener {
                    name: "PLAINTEXT".into(),
                    protocol: sluice_net::SecurityProtocol::Plaintext,
                    address: parse("listen", &raw)?,
                }]
            }
        };
        let listen = listeners[0].address;

        let advertised_host = pick("advertised_host", file.advertised_host)
            .map(|r| r.value)
            .unwrap_or_else(|| listen.ip().to_string());

        let advertised_port = match pick(
            "advertised_port",
            file.advertised_port.map(|p| p.to_string()),
        ) {
            Some(raw) => {
                let port: u16 = parse("advertised_port", &raw)?;
                if port == 0 {
                    return Err(invalid("advertised_port", &raw, "must not be 0".into()));
                }
                port
            }
            None => listen.port(),
        };
        let mut endpoints: Vec<sluice_net::Endpoint> = listeners
            .iter()
            .enumerate()
            .map(|(i, l)| sluice_net::Endpoint {
                listener: l.name.clone(),
                host: if i == 0 {
                    advertised_host.clone()
                } else {
                    l.address.ip().to_string()
                },
                port: if i == 0 {
                    advertised_port
                } else {
                    l.address.port()
                },
            })
            .collect();
        if let Some(raw) = pick("advertised_listeners", file.advertised_listeners) {
            for (name, host, port) in parse_advertised(&raw.value)
                .map_err(|e| invalid("advertised_listeners", &raw, e))?
            {
                let Some(endpoint) = endpoints.iter_mut().find(|e| e.listener == name) else {
                    return Err(invalid(
                        "advertised_listeners",
                        &raw,
                        format!("{name} is not one of the listeners"),
                    ));
                };
                endpoint.host = host;
                endpoint.port = port;
            }
        }

        let ssl_listener = listeners.iter().find(|l| l.protocol.uses_tls());
        let certificate = pick(
            "ssl_certificate",
            file.ssl_certificate.map(|p| p.display().to_string()),
        );
        let key = pick("ssl_key", file.ssl_key.map(|p| p.display().to_string()));
        let client_ca = pick(
            "ssl_client_ca",
            file.ssl_client_ca.map(|p| p.display().to_string()),
        );
        let client_auth = match pick("ssl_client_auth", file.ssl_client_auth) {
            Some(raw) => parse::<sluice_net::tls::ClientAuth>("ssl_client_auth", &raw)?,
            None => sluice_net::tls::ClientAuth::None,
        };
        let principal_rules = match pick(
            "ssl_principal_mapping_rules",
            file.ssl_principal_mapping_rules,
        ) {
            Some(raw) => parse("ssl_principal_mapping_rules", &raw)?,
            None => sluice_net::tls::PrincipalRules::default(),
        };
        let tls = match (ssl_listener, certificate, key) {
            (None, _, _) => None,
            (Some(l), None, _) => {
                return Err(ConfigError {
                    field: "ssl_certificate",
                    origin: "default".into(),
                    reason: format!(
                        "must be set: listener {} is {}",
                        l.name,
                        l.protocol.kafka_name()
                    ),
                })
            }
            (Some(l), Some(_), None) => {
                return Err(ConfigError {
                    field: "ssl_key",
                    origin: "default".into(),
                    reason: format!(
                        "must be set: listener {} is {}",
                        l.name,
                        l.protocol.kafka_name()
                    ),
                })
            }
            (Some(_), Some(certificate), Some(key)) => {
                let settings = sluice_net::tls::TlsSettings {
                    certificate: PathBuf::from(certificate.value.trim()),
                    key: PathBuf::from(key.value.trim()),
                    client_ca: client_ca.as_ref().map(|c| PathBuf::from(c.value.trim())),
                    client_auth,
                    principal_rules,
                };
                let loaded = sluice_net::tls::TlsServer::load(settings).map_err(|e| {
                    let origin = match e.field {
                        "ssl_key" => key.origin.clone(),
                        "ssl_client_ca" => client_ca
                            .as_ref()
                            .map_or_else(|| "default".into(), |c| c.origin.clone()),
                        _ => certificate.origin.clone(),
                    };
                    ConfigError {
                        field: e.field,
                        origin,
                        reason: e.reason,
                    }
                })?;
                Some(std::sync::Arc::new(loaded))
            }
        };

        let mechanisms_raw = pick("sasl_enabled_mechanisms", file.sasl_enabled_mechanisms)
            .unwrap_or_else(|| default("SCRAM-SHA-256,SCRAM-SHA-512"));
        let mut mechanisms: Vec<sluice_net::sasl::SaslMechanism> = Vec::new();
        for name in mechanisms_raw
            .value
            .split(',')
            .filter(|n| !n.trim().is_empty())
        {
            let mechanism = name
                .parse()
                .map_err(|e| invalid("sasl_enabled_mechanisms", &mechanisms_raw, e))?;
            if !mechanisms.contains(&mechanism) {
                mechanisms.push(mechanism);
            }
        }
        if mechanisms.is_empty() {
            return Err(invalid(
                "sasl_enabled_mechanisms",
                &mechanisms_raw,
                "names no mechanism".into(),
            ));
        }
        let raw = pick(
            "connections_max_reauth_ms",
            file.connections_max_reauth_ms.map(|n| n.to_string()),
        )
        .unwrap_or_else(|| default("0"));
        let reauth_ms: u64 = parse("connections_max_reauth_ms", &raw)?;
        let sasl = listeners.iter().any(|l| l.protocol.uses_sasl()).then(|| {
            std::sync::Arc::new(sluice_net::sasl::SaslSettings {
                mechanisms,
                session_lifetime: (reauth_ms > 0).then(|| Duration::from_millis(reauth_ms)),
            })
        });

        let raw = pick("authorizer", file.authorizer).unwrap_or_else(|| default("none"));
        let acls_on = match raw.value.trim() {
            "none" => false,
            "acls" => true,
            other => {
                return Err(invalid(
                    "authorizer",
                    &raw,
                    format!("{other:?}: none or acls"),
                ))
            }
        };
        let raw = pick("super_users", file.super_users).unwrap_or_else(|| default(""));
        let mut super_users = Vec::new();
        for principal in raw
            .value
            .split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            if !principal.contains(':') {
                return Err(invalid(
                    "super_users",
                    &raw,
                    format!("{principal:?} is not TYPE:NAME (e.g. User:admin)"),
                ));
            }
            super_users.push(principal.to_string());
        }
        let raw = pick(
            "allow_everyone_if_no_acl_found",
            file.allow_everyone_if_no_acl_found.map(|b| b.to_string()),
        )
        .unwrap_or_else(|| default("false"));
        let allow_everyone_if_no_acl_found: bool = parse("allow_everyone_if_no_acl_found", &raw)?;
        let authorizer = acls_on.then(|| {
            std::sync::Arc::new(sluice_core::acls::AuthorizerSettings {
                super_users,
                allow_everyone_if_no_acl_found,
            })
        });

        let raw = pick("data_dir", file.data_dir.map(|p| p.display().to_string()))
            .unwrap_or_else(|| default("./data"));
        if raw.value.trim().is_empty() {
            return Err(invalid("data_dir", &raw, "must not be empty".into()));
        }
        let data_dir = PathBuf::from(raw.value.trim());

        let all_cores = std::thread::available_parallelism().map_or(1, usize::from);
        let raw = pick("cores", file.cores.map(|c| c.to_string()))
            .unwrap_or_else(|| default(&all_cores.to_string()));
        let cores: usize = parse("cores", &raw)?;
        if cores == 0 || cores > CORES_LIMIT {
            return Err(invalid(
                "cores",
                &raw,
                format!("must be in 1..={CORES_LIMIT}"),
            ));
        }

        let raw =
            pick("node_id", file.node_id.map(|n| n.to_string())).unwrap_or_else(|| default("0"));
        let node_id: i32 = parse("node_id", &raw)?;
        if node_id < 0 {
            return Err(invalid("node_id", &raw, "must not be negative".into()));
        }

        let cluster = match pick("seeds", file.seeds) {
            None => None,
            Some(raw) => {
                let seeds =
                    parse_seeds(&raw.value).map_err(|reason| invalid("seeds", &raw, reason))?;
                // A node that is not a seed joins through the seeds: it needs its own RPC
                // address, which it registers (so it must be one the others can dial).
                let rpc_listen = match (pick("rpc_listen", file.rpc_listen), seeds.get(&node_id)) {
                    (Some(rpc), _) => {
                        let address: SocketAddr = parse("rpc_listen", &rpc)?;
                        if !seeds.contains_key(&node_id) && address.ip().is_unspecified() {
                            return Err(invalid(
                                "rpc_listen",
                                &rpc,
                                "a node that is not a seed registers its RPC address: it must be one the seeds can dial, not a wildcard".into(),
                            ));
                        }
                        address
                    }
                    (None, Some(own)) => *own,
                    (None, None) => {
                        return Err(invalid(
                            "seeds",
                            &raw,
                            format!("this node ({node_id}, from node_id) is not one of the seeds: a node that joins through them needs rpc_listen"),
                        ));
                    }
                };
                if usize::from(rpc_listen.port()) + cores > usize::from(u16::MAX) + 1 {
                    return Err(invalid(
                        "seeds",
                        &raw,
                        format!("shard s listens on the RPC port + s: {rpc_listen} leaves no room for {cores} shards"),
                    ));
                }
                let raw = pick("raft_tick_ms", file.raft_tick_ms.map(|n| n.to_string()))
                    .unwrap_or_else(|| default("50"));
                let tick: u64 = parse("raft_tick_ms", &raw)?;
                if !(1..=10_000).contains(&tick) {
                    return Err(invalid("raft_tick_ms", &raw, "must be in 1..=10000".into()));
                }
                let raw = pick(
                    "replica_lag_time_max_ms",
                    file.replica_lag_time_max_ms.map(|n| n.to_string()),
                )
                .unwrap_or_else(|| default("30000"));
                let lag: u64 = parse("replica_lag_time_max_ms", &raw)?;
                if lag < 2 * tick {
                    return Err(invalid(
                        "replica_lag_time_max_ms",
                        &raw,
                        format!("must be at least two Raft ticks ({} ms)", 2 * tick),
                    ));
                }
                let raw = pick(
                    "leader_imbalance_check_interval_ms",
                    file.leader_imbalance_check_interval_ms
                        .map(|n| n.to_string()),
                )
                .unwrap_or_else(|| default("300000"));
                let check: u64 = parse("leader_imbalance_check_interval_ms", &raw)?;
                if check != 0 && check < 100 {
                    return Err(invalid(
                        "leader_imbalance_check_interval_ms",
                        &raw,
                        "must be 0 (never) or at least 100".into(),
                    ));
                }
                let raw = pick(
                    "leader_imbalance_per_broker_percentage",
                    file.leader_imbalance_per_broker_percentage
                        .map(|n| n.to_string()),
                )
                .unwrap_or_else(|| default("10"));
                let percent: u8 = parse("leader_imbalance_per_broker_percentage", &raw)?;
                if percent > 100 {
                    return Err(invalid(
                        "leader_imbalance_per_broker_percentage",
                        &raw,
                        "must be in 0..=100".into(),
                    ));
                }
                let raw = pick(
                    "broker_session_timeout_ms",
                    file.broker_session_timeout_ms.map(|n| n.to_string()),
                )
                .unwrap_or_else(|| default("9000"));
                let session: u64 = parse("broker_session_timeout_ms", &raw)?;
                if session < 2000 {
                    return Err(invalid(
                        "broker_session_timeout_ms",
                        &raw,
                        "must be at least 2000 (nodes hear from each other every second)".into(),
                    ));
                }
                let raw = pick(
                    "metadata_log_max_record_bytes_between_snapshots",
                    file.metadata_log_max_record_bytes_between_snapshots
                        .map(|n| n.to_string()),
                )
                .unwrap_or_else(|| default(&(20u64 << 20).to_string()));
                let snapshot_bytes: u64 =
                    parse("metadata_log_max_record_bytes_between_snapshots", &raw)?;
                if snapshot_bytes < 1024 {
                    return Err(invalid(
                        "metadata_log_max_record_bytes_between_snapshots",
                        &raw,
                        "must be at least 1024".into(),
                    ));
                }
                Some(ClusterConfig {
                    seeds,
                    rpc_listen,
                    raft_tick: Duration::from_millis(tick),
                    replica_lag: Duration::from_millis(lag),
                    leader_imbalance_check: (check > 0).then(|| Duration::from_millis(check)),
                    leader_imbalance_percent: percent,
                    session_timeout: Duration::from_millis(session),
                    controller_snapshot_bytes: snapshot_bytes,
                })
            }
        };

        let raw = pick(
            "frame_bytes_max",
            file.frame_bytes_max.map(|n| n.to_string()),
        )
        .unwrap_or_else(|| default(&(100 << 20).to_string()));
        let frame_bytes_max: usize = parse("frame_bytes_max", &raw)?;
        if !(FRAME_BYTES_MIN..=FRAME_BYTES_LIMIT).contains(&frame_bytes_max) {
            return Err(invalid(
                "frame_bytes_max",
                &raw,
                format!("must be in {FRAME_BYTES_MIN}..={FRAME_BYTES_LIMIT}"),
            ));
        }

        let raw = pick(
            "shutdown_drain_ms",
            file.shutdown_drain_ms.map(|n| n.to_string()),
        )
        .unwrap_or_else(|| default("5000"));
        let shutdown_drain = Duration::from_millis(parse("shutdown_drain_ms", &raw)?);

        let raw = pick(
            "auto_create_topics",
            file.auto_create_topics.map(|b| b.to_string()),
        )
        .unwrap_or_else(|| default("true"));
        let auto_create_topics: bool = parse("auto_create_topics", &raw)?;

        let raw = pick(
            "default_partitions",
            file.default_partitions.map(|n| n.to_string()),
        )
        .unwrap_or_else(|| default("1"));
        let default_partitions: i32 = parse("default_partitions", &raw)?;
        if !(1..=PARTITIONS_MAX).contains(&default_partitions) {
            return Err(invalid(
                "default_partitions",
                &raw,
                format!("must be in 1..={PARTITIONS_MAX}"),
            ));
        }

        let raw =
            pick("admin_listen", file.admin_listen).unwrap_or_else(|| default("127.0.0.1:9644"));
        let admin_listen: SocketAddr = parse("admin_listen", &raw)?;

        let raw = pick(
            "metrics_per_partition",
            file.metrics_per_partition.map(|b| b.to_string()),
        )
        .unwrap_or_else(|| default("false"));
        let metrics_per_partition: bool = parse("metrics_per_partition", &raw)?;

        let otlp_endpoint = match pick("otlp_endpoint", file.otlp_endpoint) {
            None => None,
            Some(raw) if raw.value.trim().is_empty() => None,
            Some(raw) => {
                let url = raw.value.trim().trim_end_matches('/');
                let Some(rest) = url.strip_prefix("http://") else {
                    return Err(invalid(
                        "otlp_endpoint",
                        &raw,
                        format!("must be an http:// URL (OTLP over HTTP), not {url:?}"),
                    ));
                };
                if rest.is_empty() || rest.contains(char::is_whitespace) {
                    return Err(invalid(
                        "otlp_endpoint",
                        &raw,
                        format!("names no host: {url:?}"),
                    ));
                }
                Some(url.to_string())
            }
        };

        let raw = pick(
            "otlp_sample_ratio",
            file.otlp_sample_ratio.map(|r| r.to_string()),
        )
        .unwrap_or_else(|| default("0.01"));
        let otlp_sample_ratio: f64 = parse("otlp_sample_ratio", &raw)?;
        if !(0.0..=1.0).contains(&otlp_sample_ratio) {
            return Err(invalid(
                "otlp_sample_ratio",
                &raw,
                "must be in 0.0..=1.0".into(),
            ));
        }

        let raw = pick("client_metrics", file.client_metrics)
            .unwrap_or_else(|| default("org.apache.kafka.producer.,org.apache.kafka.consumer."));
        let client_metrics = parse_metric_prefixes(&raw.value)
            .map_err(|reason| invalid("client_metrics", &raw, reason))?;

        let raw = pick(
            "client_metrics_interval_ms",
            file.client_metrics_interval_ms.map(|n| n.to_string()),
        )
        .unwrap_or_else(|| default("30000"));
        let interval_ms: u64 = parse("client_metrics_interval_ms", &raw)?;
        if !(100..=3_600_000).contains(&interval_ms) {
            return Err(invalid(
                "client_metrics_interval_ms",
                &raw,
                "must be in 100..=3600000".into(),
            ));
        }
        let client_metrics_interval = Duration::from_millis(interval_ms);

        let raw = pick(
            "overprovisioned",
            file.overprovisioned.map(|b| b.to_string()),
        )
        .unwrap_or_else(|| default("false"));
        let overprovisioned: bool = parse("overprovisioned", &raw)?;

        let raw = pick(
            "clamp_replication_factor",
            file.clamp_replication_factor.map(|b| b.to_string()),
        )
        .unwrap_or_else(|| default("false"));
        let clamp_replication_factor: bool = parse("clamp_replication_factor", &raw)?;

        let raw = pick(
            "retention_check_ms",
            file.retention_check_ms.map(|n| n.to_string()),
        )
        .unwrap_or_else(|| default("300000"));
        let retention_check_ms: u64 = parse("retention_check_ms", &raw)?;
        if retention_check_ms == 0 {
            return Err(invalid(
                "retention_check_ms",
                &raw,
                "must be at least 1".into(),
            ));
        }

        let raw = pick(
            "offsets_partitions",
            file.offsets_partitions.map(|n| n.to_string()),
        )
        .unwrap_or_else(|| default("8"));
        let offsets_partitions: i32 = parse("offsets_partitions", &raw)?;
        if !(1..=1000).contains(&offsets_partitions) {
            return Err(invalid(
                "offsets_partitions",
                &raw,
                "must be in 1..=1000".into(),
            ));
        }

        let raw = pick(
            "group_initial_rebalance_delay_ms",
            file.group_initial_rebalance_delay_ms.map(|n| n.to_string()),
        )
        .unwrap_or_else(|| default("3000"));
        let group_initial_rebalance_delay_ms: u64 =
            parse("group_initial_rebalance_delay_ms", &raw)?;

        let raw = pick(
            "log_cleaner_backoff_ms",
            file.log_cleaner_backoff_ms.map(|n| n.to_string()),
        )
        .unwrap_or_else(|| default("15000"));
        let log_cleaner_backoff_ms: u64 = parse("log_cleaner_backoff_ms", &raw)?;
        if log_cleaner_backoff_ms == 0 {
            return Err(invalid(
                "log_cleaner_backoff_ms",
                &raw,
                "must be at least 1".into(),
            ));
        }

        let raw = pick(
            "log_cleaner_io_bytes_per_second",
            file.log_cleaner_io_bytes_per_second.map(|n| n.to_string()),
        )
        .unwrap_or_else(|| default("104857600"));
        let log_cleaner_io_bytes_per_second: u64 = parse("log_cleaner_io_bytes_per_second", &raw)?;

        let raw = pick(
            "log_cleaner_dedupe_buffer_bytes",
            file.log_cleaner_dedupe_buffer_bytes.map(|n| n.to_string()),
        )
        .unwrap_or_else(|| default("67108864"));
        let log_cleaner_dedupe_buffer_bytes: u64 = parse("log_cleaner_dedupe_buffer_bytes", &raw)?;
        if log_cleaner_dedupe_buffer_bytes < 1 << 20 {
            return Err(invalid(
                "log_cleaner_dedupe_buffer_bytes",
                &raw,
                "must be at least 1048576 (1 MiB)".into(),
            ));
        }

        let raw = pick(
            "disk_free_bytes_min",
            file.disk_free_bytes_min.map(|n| n.to_string()),
        )
        .unwrap_or_else(|| default("268435456"));
        let disk_free_bytes_min: u64 = parse("disk_free_bytes_min", &raw)?;

        let raw = pick("durability_rounds", file.durability_rounds.clone())
            .unwrap_or_else(|| default("shard"));
        let durability_rounds = DurabilityRounds::parse(raw.value.trim()).ok_or_else(|| {
            invalid(
                "durability_rounds",
                &raw,
                "must be one of shard, shard-per-file, partition".into(),
            )
        })?;

        let raw = pick("log_zero_ahead", file.log_zero_ahead.map(|b| b.to_string()))
            .unwrap_or_else(|| default("true"));
        let log_zero_ahead: bool = parse("log_zero_ahead", &raw)?;

        let raw = pick(
            "log_dsync_lone_writes",
            file.log_dsync_lone_writes.map(|b| b.to_string()),
        )
        .unwrap_or_else(|| default("true"));
        let log_dsync_lone_writes: bool = parse("log_dsync_lone_writes", &raw)?;

        let raw = pick(
            "transaction_partition_verification_enable",
            file.transaction_partition_verification_enable
                .map(|b| b.to_string()),
        )
        .unwrap_or_else(|| default("true"));
        let transaction_partition_verification_enable: bool =
            parse("transaction_partition_verification_enable", &raw)?;

        let raw = pick(
            "write_buffer_bytes_per_shard",
            file.write_buffer_bytes_per_shard.map(|n| n.to_string()),
        )
        .unwrap_or_else(|| default("268435456"));
        let write_buffer_bytes_per_shard: u64 = parse("write_buffer_bytes_per_shard", &raw)?;
        if write_buffer_bytes_per_shard < 1 << 20 {
            return Err(invalid(
                "write_buffer_bytes_per_shard",
                &raw,
                "must be at least 1048576 (1 MiB)".into(),
            ));
        }

        let raw = pick(
            "fetch_session_cache_slots",
            file.fetch_session_cache_slots.map(|n| n.to_string()),
        )
        .unwrap_or_else(|| default("1000"));
        let fetch_session_cache_slots: u64 = parse("fetch_session_cache_slots", &raw)?;
        if fetch_session_cache_slots > FETCH_SESSION_SLOTS_LIMIT {
            return Err(invalid(
                "fetch_session_cache_slots",
                &raw,
                format!("must be at most {FETCH_SESSION_SLOTS_LIMIT}"),
            ));
        }

        let raw = pick(
            "fetch_session_eviction_ms",
            file.fetch_session_eviction_ms.map(|n| n.to_string()),
        )
        .unwrap_or_else(|| default("120000"));
        let fetch_session_eviction_ms: u64 = parse("fetch_session_eviction_ms", &raw)?;

        let raw = pick("audit_enabled", file.audit_enabled.map(|b| b.to_string()))
            .unwrap_or_else(|| default("false"));
        let audit_enabled: bool = parse("audit_enabled", &raw)?;
        let raw = pick(
            "audit_log_dir",
            file.audit_log_dir.map(|p| p.display().to_string()),
        )
        .unwrap_or_else(|| default(&data_dir.join("audit").display().to_string()));
        if raw.value.trim().is_empty() {
            return Err(invalid("audit_log_dir", &raw, "must not be empty".into()));
        }
        let audit_dir = PathBuf::from(raw.value.trim());
        let raw = pick(
            "audit_log_max_file_bytes",
            file.audit_log_max_file_bytes.map(|n| n.to_string()),
        )
        .unwrap_or_else(|| default("104857600"));
        let audit_max_file_bytes: u64 = parse("audit_log_max_file_bytes", &raw)?;
        if audit_max_file_bytes < AUDIT_FILE_BYTES_MIN {
            return Err(invalid(
                "audit_log_max_file_bytes",
                &raw,
                format!("must be at least {AUDIT_FILE_BYTES_MIN}"),
            ));
        }
        let raw = pick(
            "audit_log_max_files",
            file.audit_log_max_files.map(|n| n.to_string()),
        )
        .unwrap_or_else(|| default("10"));
        let audit_max_files: usize = parse("audit_log_max_files", &raw)?;
        if audit_max_files == 0 {
            return Err(invalid(
                "audit_log_max_files",
                &raw,
                "must be at least 1".into(),
            ));
        }
        let audit = audit_enabled.then_some(sluice_core::audit::AuditSettings {
            dir: audit_dir,
            max_file_bytes: audit_max_file_bytes,
            max_files: audit_max_files,
        });

        Ok(BrokerConfig {
            listeners,
            endpoints,
            tls,
            sasl,
            authorizer,
            audit,
            admin_listen,
            metrics_per_partition,
            otlp_endpoint,
            otlp_sample_ratio,
            client_metrics,
            client_metrics_interval,
            data_dir,
            cores,
            overprovisioned,
            node_id,
            cluster,
            frame_bytes_max,
            shutdown_drain,
            auto_create_topics,
            default_partitions,
            clamp_replication_factor,
            retention_check_ms,
            offsets_partitions,
            group_initial_rebalance_delay_ms,
            log_cleaner_backoff_ms,
            log_cleaner_io_bytes_per_second,
            log_cleaner_dedupe_buffer_bytes,
            disk_free_bytes_min,
            durability_rounds,
            log_zero_ahead,
            log_dsync_lone_writes,
            transaction_partition_verification_enable,
            write_buffer_bytes_per_shard,
            fetch_session_cache_slots,
            fetch_session_eviction_ms,
        })
    }
}

/// `NAME://host:port` split in its parts (the host may be empty: all interfaces).
fn split_listener(entry: &str) -> Result<(String, &str, u16), String> {
    let (name, address) = entry
        .trim()
        .split_once("://")
        .ok_or_else(|| format!("{entry:?} is not NAME://host:port"))?;
    let name = name.trim().to_ascii_uppercase();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "{name:?}: a listener name is letters, digits and _"
        ));
    }
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("{entry:?} has no port"))?;
    let port: u16 = port.parse().map_err(|e| format!("{entry:?}: port: {e}"))?;
    Ok((name, host.trim_matches(|c| c == '[' || c == ']'), port))
}

/// The security protocol of a listener called `name`: as `map` says, else its own name when
/// that is a protocol.
fn protocol_of(
    name: &str,
    map: &[(String, String)],
) -> Result<sluice_net::SecurityProtocol, String> {
    let protocol = map
        .iter()
        .find(|(n, _)| n == name)
        .map_or(name, |(_, p)| p.as_str());
    match protocol {
        "PLAINTEXT" => Ok(sluice_net::SecurityProtocol::Plaintext),
        "SSL" => Ok(sluice_net::SecurityProtocol::Ssl),
        "SASL_PLAINTEXT" => Ok(sluice_net::SecurityProtocol::SaslPlaintext),
        "SASL_SSL" => Ok(sluice_net::SecurityProtocol::SaslSsl),
        _ => Err(format!(
            "listener {name} has no security protocol: name it PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL, or map it in listener_security_protocol_map"
        )),
    }
}

/// `INTERNAL:PLAINTEXT,EXTERNAL:SSL`.
fn parse_protocol_map(raw: &str) -> Result<Vec<(String, String)>, String> {
    raw.split(',')
        .filter(|e| !e.trim().is_empty())
        .map(|entry| {
            let (name, protocol) = entry
                .split_once(':')
                .ok_or_else(|| format!("{entry:?} is not NAME:PROTOCOL"))?;
            Ok((
                name.trim().to_ascii_uppercase(),
                protocol.trim().to_ascii_uppercase(),
            ))
        })
        .collect()
}

/// `PLAINTEXT://127.0.0.1:9092,SSL://0.0.0.0:9093`: distinct names and addresses, at least one.
fn parse_listeners(
    raw: &str,
    protocols: &[(String, String)],
) -> Result<Vec<sluice_net::Listener>, String> {
    let mut listeners: Vec<sluice_net::Listener> = Vec::new();
    for entry in raw.split(',').filter(|e| !e.trim().is_empty()) {
        let (name, host, port) = split_listener(entry)?;
        let ip: std::net::IpAddr = if host.is_empty() {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        } else {
            host.parse()
                .map_err(|e| format!("{entry:?}: an IP address to bind to: {e}"))?
        };
        let address = SocketAddr::new(ip, port);
        if listeners.iter().any(|l| l.name == name) {
            return Err(format!("listener {name} is named twice"));
        }
        if listeners.iter().any(|l| l.address == address) {
            return Err(format!("{address} is used by two listeners"));
        }
        listeners.push(sluice_net::Listener {
            protocol: protocol_of(&name, protocols)?,
            name,
            address,
        });
    }
    if listeners.is_empty() {
        return Err("no listener".into());
    }
    Ok(listeners)
}

/// `EXTERNAL://broker1.example.com:9093,...`: (name, host, port), the host any name.
fn parse_advertised(raw: &str) -> Result<Vec<(String, String, u16)>, String> {
    raw.split(',')
        .filter(|e| !e.trim().is_empty())
        .map(|entry| {
            let (name, host, port) = split_listener(entry)?;
            if host.is_empty() || port == 0 {
                return Err(format!("{entry:?}: clients need a host and a port"));
            }
            Ok((name, host.to_string(), port))
        })
        .collect()
}

/// `1@127.0.0.1:19092,2@127.0.0.1:19192`: node ids (distinct, ≥ 0) and RPC addresses.
fn parse_seeds(raw: &str) -> Result<std::collections::BTreeMap<i32, SocketAddr>, String> {
    let mut seeds = std::collections::BTreeMap::new();
    for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (id, address) = entry
            .split_once('@')
            .ok_or_else(|| format!("{entry:?} is not NODE_ID@HOST:PORT"))?;
        let id: i32 = id
            .trim()
            .parse()
            .ok()
            .filter(|id| *id >= 0)
            .ok_or_else(|| format!("{entry:?}: the node id must be a number ≥ 0"))?;
        let address: SocketAddr = address
            .trim()
            .parse()
            .map_err(|e| format!("{entry:?}: {e} (an IP address and port)"))?;
        if seeds.insert(id, address).is_some() {
            return Err(format!("node {id} appears twice"));
        }
    }
    if seeds.is_empty() {
        return Err("no seeds given".into());
    }
    Ok(seeds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    /// `sluice serve`'s flags as clap parses them.
    fn try_flags(words: &[&str]) -> Result<ServeArgs, clap::Error> {
        use clap::{Args, FromArgMatches};
        let command = ServeArgs::augment_args(clap::Command::new("serve"));
        let matches =
            command.try_get_matches_from(std::iter::once("serve").chain(words.iter().copied()))?;
        ServeArgs::from_arg_matches(&matches)
    }

    fn flags(words: &[&str]) -> ServeArgs {
        try_flags(words).expect("valid flags")
    }

    #[test]
    fn defaults() {
        let c = BrokerConfig::load(&flags(&[]), no_env).unwrap();
        assert_eq!(c.listeners[0].address, "127.0.0.1:9092".parse().unwrap());
        assert_eq!(c.listeners[0].name, "PLAINTEXT");
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.endpoints[0].host, "127.0.0.1");
        assert!(c.tls.is_none());
        assert!(c.cores >= 1);
        assert_eq!(c.otlp_endpoint, None);
        assert_eq!(
            c.client_metrics,
            ["org.apache.kafka.producer.", "org.apache.kafka.consumer."]
        );
        let c = BrokerConfig::load(
            &flags(&[
                "--client-metrics",
                "*",
                "--otlp-endpoint",
                "http://127.0.0.1:4318/",
            ]),
            no_env,
        )
        .unwrap();
        assert_eq!(c.client_metrics, [""]);
        assert_eq!(c.otlp_endpoint.as_deref(), Some("http://127.0.0.1:4318"));
    }

    #[test]
    fn flags_beat_environment_beat_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sluice.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:1111\"\ncores = 1\nnode_id = 3\n",
        )
        .unwrap();
        let env = |var: &str| match var {
            "SLUICE_LISTEN" => Some("127.0.0.1:2222".to_string()),
            "SLUICE_NODE_ID" => Some("4".to_string()),
            _ => None,
        };
        let path = file.display().to_string();
        let c = BrokerConfig::load(
            &flags(&["--config", &path, "--listen", "127.0.0.1:3333"]),
            env,
        )
        .unwrap();
        assert_eq!(c.listeners[0].address.port(), 3333, "flag wins");
        assert_eq!(c.node_id, 4, "environment beats the file");
        assert_eq!(c.cores, 1, "the file beats the default");
    }

    #[test]
    fn listeners_are_named_mapped_and_advertised() {
        let c = BrokerConfig::load(
            &flags(&[
                "--listeners",
                "PLAINTEXT://127.0.0.1:9092, internal://:9094",
                "--listener-security-protocol-map",
                "INTERNAL:PLAINTEXT",
                "--advertised-listeners",
                "INTERNAL://broker-1.internal:19094",
            ]),
            no_env,
        )
        .unwrap();
        let names: Vec<_> = c.listeners.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["PLAINTEXT", "INTERNAL"]);
        assert_eq!(c.listeners[1].address, "0.0.0.0:9094".parse().unwrap());
        assert_eq!(
            c.endpoints[1],
            sluice_net::Endpoint {
                listener: "INTERNAL".into(),
                host: "broker-1.internal".into(),
                port: 19094
            }
        );
        assert_eq!(
            (c.endpoints[0].host.as_str(), c.endpoints[0].port),
            ("127.0.0.1", 9092)
        );
    }

    #[test]
    fn bad_listeners_are_refused_naming_the_field() {
        let field = |words: &[&str]| {
            BrokerConfig::load(&flags(words), no_env)
                .map(|_| ())
                .unwrap_err()
                .field
        };
        for (words, expected) in [
            (&["--listeners", "PLAINTEXT:/127.0.0.1:1"][..], "listeners"),
            (
                &[
                    "--listeners",
                    "PLAINTEXT://127.0.0.1:1,PLAINTEXT://127.0.0.1:2",
                ],
                "listeners",
            ),
            (
                &["--listeners", "PLAINTEXT://127.0.0.1:1,SSL://127.0.0.1:1"],
                "listeners",
            ),
            (&["--listeners", "EXTERNAL://127.0.0.1:1"], "listeners"),
            (
                &["--listeners", "SASL_SSL://127.0.0.1:1"],
                "ssl_certificate",
            ),
            (
                &["--sasl-enabled-mechanisms", "PLAIN,GSSAPI"],
                "sasl_enabled_mechanisms",
            ),
            (
                &["--sasl-enabled-mechanisms", ","],
                "sasl_enabled_mechanisms",
            ),
            (
                &["--connections-max-reauth-ms", "-1"],
                "connections_max_reauth_ms",
            ),
            (&["--authorizer", "AclAuthorizer"], "authorizer"),
            (&["--super-users", "admin"], "super_users"),
            (
                &["--allow-everyone-if-no-acl-found", "yes"],
                "allow_everyone_if_no_acl_found",
            ),
            (&["--listeners", "PLAINTEXT://somehost:1"], "listeners"),
            (
                &[
                    "--listeners",
                    "PLAINTEXT://127.0.0.1:1",
                    "--listen",
                    "127.0.0.1:2",
                ],
                "listeners",
            ),
            (
                &[
                    "--listeners",
                    "A://127.0.0.1:1",
                    "--listener-security-protocol-map",
                    "A",
                ],
                "listener_security_protocol_map",
            ),
            (
                &["--advertised-listeners", "SSL://h:1"],
                "advertised_listeners",
            ),
            (
                &["--advertised-listeners", "PLAINTEXT://:1"],
                "advertised_listeners",
            ),
            (&["--listeners", "SSL://127.0.0.1:1"], "ssl_certificate"),
            (
                &[
                    "--listeners",
                    "SSL://127.0.0.1:1",
                    "--ssl-certificate",
                    "/nonexistent.pem",
                ],
                "ssl_key",
            ),
            (
                &[
                    "--listeners",
                    "SSL://127.0.0.1:1",
                    "--ssl-certificate",
                    "/nonexistent.pem",
                    "--ssl-key",
                    "/k.pem",
                ],
                "ssl_certificate",
            ),
            (&["--ssl-client-auth", "always"], "ssl_client_auth"),
            (
                &["--ssl-principal-mapping-rules", "RULE:x"],
                "ssl_principal_mapping_rules",
            ),
        ] {
            assert_eq!(field(words), expected, "{words:?}");
        }
    }

    #[test]
    fn cluster_mode_takes_seeds_and_checks_them() {
        assert_eq!(
            BrokerConfig::load(&flags(&[]), no_env).unwrap().cluster,
            None
        );
        let seeds = "0@127.0.0.1:19092, 1@127.0.0.1:19192,2@127.0.0.1:19292";
        let c = BrokerConfig::load(&flags(&["--node-id", "1", "--seeds", seeds]), no_env).unwrap();
        let cluster = c.cluster.unwrap();
        assert_eq!(cluster.seeds.len(), 3);
        assert_eq!(cluster.rpc_listen, "127.0.0.1:19192".parse().unwrap());
        assert_eq!(cluster.raft_tick, Duration::from_millis(50));
        for (bad, why) in [
            ("0@127.0.0.1:1,0@127.0.0.1:2", "twice"),
            ("0=127.0.0.1:1", "NODE_ID@HOST:PORT"),
            ("x@127.0.0.1:1", "node id"),
            ("0@localhost", "IP address"),
            ("1@127.0.0.1:1", "needs rpc_listen"),
        ] {
            let e = BrokerConfig::load(&flags(&["--seeds", bad]), no_env).unwrap_err();
            assert_eq!(e.field, "seeds");
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
        // A node that is not a seed joins through the seeds at an RPC address they can dial.
        let joining = BrokerConfig::load(
            &flags(&[
                "--node-id",
                "3",
                "--seeds",
                seeds,
                "--rpc-listen",
                "127.0.0.1:19392",
            ]),
            no_env,
        )
        .unwrap();
        assert_eq!(
            joining.cluster.unwrap().rpc_listen,
            "127.0.0.1:19392".parse().unwrap()
        );
        let e = BrokerConfig::load(
            &flags(&[
                "--node-id",
                "3",
                "--seeds",
                seeds,
                "--rpc-listen",
                "0.0.0.0:19392",
            ]),
            no_env,
        )
        .unwrap_err();
        assert_eq!(e.field, "rpc_listen");
        assert!(e.to_string().contains("dial"), "{e}");
        let e = BrokerConfig::load(
            &flags(&["--seeds", "0@127.0.0.1:1", "--raft-tick-ms", "0"]),
            no_env,
        )
        .unwrap_err();
        assert_eq!(e.field, "raft_tick_ms");
        let e = BrokerConfig::load(
            &flags(&[
                "--seeds",
                "0@127.0.0.1:1",
                "--replica-lag-time-max-ms",
                "10",
            ]),
            no_env,
        )
        .unwrap_err();
        assert_eq!(e.field, "replica_lag_time_max_ms");
        for (flag, value, field) in [
            (
                "--leader-imbalance-check-interval-ms",
                "50",
                "leader_imbalance_check_interval_ms",
            ),
            (
                "--leader-imbalance-check-interval-ms",
                "soon",
                "leader_imbalance_check_interval_ms",
            ),
            (
                "--leader-imbalance-per-broker-percentage",
                "101",
                "leader_imbalance_per_broker_percentage",
            ),
            (
                "--broker-session-timeout-ms",
                "1000",
                "broker_session_timeout_ms",
            ),
            (
                "--metadata-log-max-record-bytes-between-snapshots",
                "100",
                "metadata_log_max_record_bytes_between_snapshots",
            ),
        ] {
            let e = BrokerConfig::load(&flags(&["--seeds", "0@127.0.0.1:1", flag, value]), no_env)
                .unwrap_err();
            assert_eq!(e.field, field, "{flag} {value}");
        }
        let off = BrokerConfig::load(
            &flags(&[
                "--seeds",
                "0@127.0.0.1:1",
                "--leader-imbalance-check-interval-ms",
                "0",
            ]),
            no_env,
        )
        .unwrap();
        assert_eq!(off.cluster.unwrap().leader_imbalance_check, None);
    }

    #[test]
    fn invalid_values_name_the_field_and_origin() {
        let e = BrokerConfig::load(&flags(&["--cores", "0"]), no_env).unwrap_err();
        assert_eq!((e.field, e.origin.as_str()), ("cores", "flag --cores"));
        let e = BrokerConfig::load(&flags(&[]), |v: &str| {
            (v == "SLUICE_LISTEN").then(|| "nonsense".to_string())
        })
        .unwrap_err();
        assert_eq!(e.field, "listen");
        assert!(e.to_string().contains("environment SLUICE_LISTEN"), "{e}");
        let e =
            BrokerConfig::load(&flags(&["--otlp-endpoint", "grpc://x:4317"]), no_env).unwrap_err();
        assert_eq!(e.field, "otlp_endpoint");
        assert!(e.to_string().contains("http://"), "{e}");
        let e = BrokerConfig::load(&flags(&["--otlp-sample-ratio", "2"]), no_env).unwrap_err();
        assert_eq!(e.field, "otlp_sample_ratio");
        let e = BrokerConfig::load(&flags(&["--client-metrics", "a.,,b."]), no_env).unwrap_err();
        assert_eq!(e.field, "client_metrics");
        let e =
            BrokerConfig::load(&flags(&["--client-metrics-interval-ms", "5"]), no_env).unwrap_err();
        assert_eq!(e.field, "client_metrics_interval_ms");
        let e = BrokerConfig::load(&flags(&["--frame-bytes-max", "10"]), no_env).unwrap_err();
        assert_eq!(e.field, "frame_bytes_max");
        let e = BrokerConfig::load(&flags(&["--audit-enabled", "yes"]), no_env).unwrap_err();
        assert_eq!(e.field, "audit_enabled");
        let e =
            BrokerConfig::load(&flags(&["--audit-log-max-file-bytes", "100"]), no_env).unwrap_err();
        assert_eq!(e.field, "audit_log_max_file_bytes");
        let e = BrokerConfig::load(&flags(&["--audit-log-max-files", "0"]), no_env).unwrap_err();
        assert_eq!(e.field, "audit_log_max_files");
        let c = BrokerConfig::load(
            &flags(&["--audit-enabled", "true", "--data-dir", "/srv/sluice"]),
            no_env,
        )
        .unwrap();
        let audit = c.audit.expect("enabled");
        assert_eq!(audit.dir, PathBuf::from("/srv/sluice/audit"));
        assert_eq!((audit.max_file_bytes, audit.max_files), (104_857_600, 10));
        assert!(BrokerConfig::load(&flags(&[]), no_env)
            .unwrap()
            .audit
            .is_none());
        let e = BrokerConfig::load(&flags(&["--default-partitions", "0"]), no_env).unwrap_err();
        assert_eq!(e.field, "default_partitions");
        let e = BrokerConfig::load(&flags(&["--auto-create-topics", "maybe"]), no_env).unwrap_err();
        assert_eq!(e.field, "auto_create_topics");
        let e = BrokerConfig::load(&flags(&["--log-cleaner-backoff-ms", "0"]), no_env).unwrap_err();
        assert_eq!(e.field, "log_cleaner_backoff_ms");
        let e = BrokerConfig::load(
            &flags(&["--log-cleaner-dedupe-buffer-bytes", "4096"]),
            no_env,
        )
        .unwrap_err();
        assert_eq!(e.field, "log_cleaner_dedupe_buffer_bytes");
        assert!(e.to_string().contains("at least 1048576"), "{e}");
        let e = BrokerConfig::load(&flags(&["--disk-free-bytes-min", "-1"]), no_env).unwrap_err();
        assert_eq!(e.field, "disk_free_bytes_min");
        let e = BrokerConfig::load(
            &flags(&["--log-cleaner-io-bytes-per-second", "fast"]),
            no_env,
        )
        .unwrap_err();
        assert_eq!(e.field, "log_cleaner_io_bytes_per_second");
        let e =
            BrokerConfig::load(&flags(&["--durability-rounds", "sometimes"]), no_env).unwrap_err();
        assert_eq!(e.field, "durability_rounds");
        assert!(
            e.to_string().contains("shard, shard-per-file, partition"),
            "{e}"
        );
        let e = BrokerConfig::load(&flags(&["--log-zero-ahead", "yes"]), no_env).unwrap_err();
        assert_eq!(e.field, "log_zero_ahead");
        let e = BrokerConfig::load(
            &flags(&["--transaction-partition-verification-enable", "maybe"]),
            no_env,
        )
        .unwrap_err();
        assert_eq!(e.field, "transaction_partition_verification_enable");
        let e = BrokerConfig::load(&flags(&["--write-buffer-bytes-per-shard", "4096"]), no_env)
            .unwrap_err();
        assert_eq!(e.field, "write_buffer_bytes_per_shard");
        assert!(e.to_string().contains("at least 1048576"), "{e}");
        let e = BrokerConfig::load(&flags(&["--fetch-session-cache-slots", "2000000"]), no_env)
            .unwrap_err();
        assert_eq!(e.field, "fetch_session_cache_slots");
        let e =
            BrokerConfig::load(&flags(&["--fetch-session-eviction-ms", "-5"]), no_env).unwrap_err();
        assert_eq!(e.field, "fetch_session_eviction_ms");
        let c = BrokerConfig::load(&flags(&[]), no_env).unwrap();
        assert_eq!(
            (c.fetch_session_cache_slots, c.fetch_session_eviction_ms),
            (1000, 120_000)
        );
        assert_eq!(
            (c.disk_free_bytes_min, c.log_cleaner_backoff_ms),
            (256 << 20, 15_000)
        );
        assert_eq!(
            (
                c.durability_rounds,
                c.log_zero_ahead,
                c.log_dsync_lone_writes
            ),
            (DurabilityRounds::Shard, true, true)
        );
        let e =
            BrokerConfig::load(&flags(&["--log-dsync-lone-writes", "maybe"]), no_env).unwrap_err();
        assert_eq!(e.field, "log_dsync_lone_writes");
        assert!(c.transaction_partition_verification_enable);
        let c = BrokerConfig::load(&flags(&["--durability-rounds", "partition"]), no_env).unwrap();
        assert_eq!(c.durability_rounds.flush_mode(), None);
        let e = try_flags(&["--bogus", "1"]).unwrap_err();
        assert!(e.to_string().contains("--bogus"), "{e}");
        let e = try_flags(&["--cores"]).unwrap_err();
        assert!(e.to_string().contains("--cores"), "{e}");
        let c = BrokerConfig::load(&flags(&["--cores", "3", "--cores", "2"]), no_env).unwrap();
        assert_eq!(c.cores, 2, "the later flag wins");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "cores = \"many\"\n").unwrap();
        let e = BrokerConfig::load(&flags(&["--config", &file.display().to_string()]), no_env)
            .unwrap_err();
        assert!(
            e.to_string().contains("cores"),
            "the TOML error names the key: {e}"
        );
        std::fs::write(&file, "colors = 3\n").unwrap();
        let e = BrokerConfig::load(&flags(&["--config", &file.display().to_string()]), no_env)
            .unwrap_err();
        assert!(
            e.to_string().contains("colors"),
            "unknown keys are refused by name: {e}"
        );
    }
}
