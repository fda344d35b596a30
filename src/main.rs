//! The `sluice` command: one binary for the broker and its tools.
//!
//! The command line is clap's (derive); each command's arguments live beside its code.
//!
//! - `sluice serve`: the single-node broker, one shard per core (`sluice-net` over
//!   `sluice-core` over `sluice-storage`; see `docs/ARCHITECTURE.md`).
//! - `sluice topic|produce|consume|group|user|acl|txn`: Kafka tools that talk the protocol to any broker (`cli`).
//! - `sluice bench` and `sluice chaos`: load runs and fault runs against real nodes (`bench`
//!   feature: librdkafka inside).
//! - `sluice log verify <dir>`: opens a partition log directory the way the broker will
//!   (recovering it: see `docs/on-disk-format.md`) and prints what it holds.

use std::process::ExitCode;

mod alloc;
mod cli;
mod cluster_dev;
mod config;
mod telemetry;

#[global_allocator]
static ALLOCATOR: alloc::ReserveOnlyForHuge = alloc::ReserveOnlyForHuge;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use config::BrokerConfig;
use sluice_storage::{Log, LogConfig};

/// Sluice: a Kafka-compatible streaming log engine. One binary: the broker and its tools.
///
/// Exit status: 0 success; 1 a command failed (its error on stderr); 2 invalid usage or
/// configuration (the flag or field named).
#[derive(Debug, clap::Parser)]
#[command(
    name = "sluice",
    version,
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Starts the broker: Kafka on 127.0.0.1:9092, admin and /metrics on 127.0.0.1:9644, data
    /// in ./data, one shard per core; with --seeds, a node of a cluster.
    Serve(config::ServeArgs),
    /// Creates, lists, describes and deletes topics.
    #[command(subcommand)]
    Topic(cli::TopicCommand),
    /// Produces one record per line of stdin.
    Produce(cli::ProduceArgs),
    /// Prints a topic's records.
    Consume(cli::ConsumeArgs),
    /// Lists, describes, deletes consumer groups and resets their offsets.
    #[command(subcommand)]
    Group(cli::GroupCommand),
    /// Creates, lists and deletes SCRAM users (SASL PLAIN and SCRAM authenticate against them).
    #[command(subcommand)]
    User(cli::UserCommand),
    /// Adds, lists and removes ACLs (the broker decides with them when `authorizer = acls`).
    #[command(subcommand)]
    Acl(cli::AclCommand),
    /// Lists and describes transactions and producers; finds and aborts hanging transactions.
    #[command(subcommand)]
    Txn(cli::TxnCommand),
    /// A local cluster, and what a cluster's nodes report.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Partition log files.
    #[command(subcommand)]
    Log(LogCommand),
    /// The audit trail (`audit_enabled`).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Load runs from YAML workloads against any Kafka address (librdkafka inside).
    #[cfg(feature = "bench")]
    Bench(sluice_bench_harness::BenchArgs),
    /// Real nodes under seeded faults, with every acknowledged record checked.
    #[cfg(feature = "bench")]
    #[command(subcommand)]
    Chaos(sluice_chaos::ChaosCommand),
    /// Prints a shell completion script (e.g. `sluice completions bash > /etc/bash_completion.d/sluice`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, clap::Subcommand)]
enum ClusterCommand {
    /// Runs a local N-node cluster on loopback until Ctrl-C (distinct ports, 1 core each).
    Dev(cluster_dev::DevArgs),
    /// Nodes (reachable or not, partitions led), the controller, leaderless and
    /// under-replicated partitions (each leader's ISR).
    Info(cli::ClusterInfoArgs),
    /// Moves every partition replica off a node (to the least loaded other nodes) and waits
    /// until the moves are done: before retiring the node.
    Decommission(cli::DecommissionArgs),
    /// Removes a stopped node's registration (one that joined through the seeds, with no
    /// replica left): Kafka's UnregisterBroker.
    Unregister(cli::UnregisterArgs),
    /// Makes a registered node a controller voter (it catches up first): KIP-853's
    /// AddRaftVoter, so the seeds can be replaced while the cluster runs.
    AddVoter(cli::VoterArgs),
    /// Makes a controller voter a learner (an observer while it runs): KIP-853's
    /// RemoveRaftVoter.
    RemoveVoter(cli::VoterArgs),
    /// Evens out the partition replicas over the nodes (after a node joined) and waits until
    /// the moves are done.
    Rebalance(cli::RebalanceArgs),
}

#[derive(Debug, clap::Subcommand)]
enum LogCommand {
    /// Recovers a partition log directory as the broker would and prints what it holds.
    Verify { dir: String },
}

#[derive(Debug, clap::Subcommand)]
enum AuditCommand {
    /// Checks the audit trail's hash chain: every line unchanged, none removed, inserted or
    /// reordered; prints the last hash (keep it elsewhere: a trail rewritten from there on is
    /// then detected too). Exit 1 names the first broken line.
    Verify {
        /// The trail's directory (the broker's audit_log_dir).
        #[arg(long, env = "SLUICE_AUDIT_LOG_DIR", default_value = "./data/audit")]
        dir: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = <Cli as clap::Parser>::parse();
    match cli.command {
        Command::Serve(args) => serve(&args),
        Command::Log(LogCommand::Verify { dir }) => verify_log(dir),
        Command::Audit(AuditCommand::Verify { dir }) => verify_audit(&dir),
        Command::Cluster(ClusterCommand::Dev(args)) => tool("cluster dev", cluster_dev::dev(args)),
        Command::Cluster(ClusterCommand::Info(args)) => {
            tool("cluster info", cli::cluster_info(args))
        }
        Command::Cluster(ClusterCommand::Decommission(args)) => {
            tool("cluster decommission", cli::decommission(args))
        }
        Command::Cluster(ClusterCommand::AddVoter(args)) => {
            tool("cluster add-voter", cli::add_voter(args))
        }
        Command::Cluster(ClusterCommand::RemoveVoter(args)) => {
            tool("cluster remove-voter", cli::remove_voter(args))
        }
        Command::Cluster(ClusterCommand::Unregister(args)) => {
            tool("cluster unregister", cli::unregister(args))
        }
        Command::Cluster(ClusterCommand::Rebalance(args)) => {
            tool("cluster rebalance", cli::rebalance(args))
        }
        Command::Topic(command) => tool("topic", cli::topic(command)),
        Command::Produce(args) => tool("produce", cli::produce(args)),
        Command::Consume(args) => tool("consume", cli::consume(args)),
        Command::Group(command) => tool("group", cli::group(command)),
        Command::User(command) => tool("user", cli::user(command)),
        Command::Acl(command) => tool("acl", cli::acl(command)),
        Command::Txn(command) => tool("txn", cli::txn(command)),
        #[cfg(feature = "bench")]
        Command::Bench(args) => tool("bench", sluice_bench_harness::main(args)),
        #[cfg(feature = "bench")]
        Command::Chaos(command) => tool("chaos", sluice_chaos::main(command)),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "sluice", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
    }
}

/// The exit of a command-line tool: its error on stderr, exit code 1.
fn tool(name: &str, outcome: Result<(), String>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice {name}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Opens (and so recovers) the log in `dir`, reads every batch back, and prints a summary.
fn verify_audit(dir: &std::path::Path) -> ExitCode {
    match sluice_core::audit::verify(dir) {
        Ok(report) => {
            let start = if report.from_genesis {
                "from the first entry".to_string()
            } else {
                format!(
                    "from entry {} (older files were rotated away)",
                    report.first_seq
                )
            };
            println!(
                "audit trail {}: {} entries in {} files, {start} to entry {}, chain intact; last hash {}",
                dir.display(),
                report.entries,
                report.files,
                report.last_seq,
                report.last_hash
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sluice audit verify: {e}");
            ExitCode::FAILURE
        }
    }
}

fn verify_log(dir: String) -> ExitCode {
    let outcome = glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let log = Log::open(&dir, LogConfig::default()).await?;
            let mut from = log.log_start_offset();
            let (mut batches, mut bytes) = (0u64, 0u64);
            while from < log.log_end_offset() {
                let read = log.read(from, 1 << 20).await?;
                let mut rest = &read.bytes[..];
                while !rest.is_empty() {
                    let info = sluice_storage::batch::validate_batch(rest, usize::MAX)
                        .expect("read returns validated batches");
                    batches += 1;
                    bytes += info.size_bytes as u64;
                    rest = &rest[info.size_bytes..];
                }
                from = read.next_offset;
            }
            let summary = format!(
                "log {}: offsets [{}, {}), {} segments, {batches} batches, {bytes} bytes, all valid",
                dir,
                log.log_start_offset(),
                log.log_end_offset(),
                log.segment_count()
            );
            log.close().await?;
            Ok::<_, sluice_storage::StorageError>(summary)
        })
        .map_err(|e| e.to_string())
        .and_then(|handle| handle.join().map_err(|e| format!("{e:?}")));
    match outcome {
        Ok(Ok(summary)) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("sluice log verify: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("sluice log verify: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Names the control file of the storage fault points (`sluice chaos` sets it for its nodes;
/// see `sluice_storage::faults`). Not a config field: a test hook, refused by a build without
/// fault points.
const FAULT_POINTS_VAR: &str = "SLUICE_FAULT_POINTS";

fn arm_fault_points(control_file: Option<std::ffi::OsString>) -> Result<(), String> {
    let Some(path) = control_file else {
        return Ok(());
    };
    #[cfg(feature = "fault-points")]
    {
        tracing::warn!(file = ?path, "fault points armed from a control file (a test hook)");
        sluice_storage::faults::watch_control_file(std::path::Path::new(&path))
    }
    #[cfg(not(feature = "fault-points"))]
    {
        Err(format!(
            "names {path:?}, but this build has no fault points (build with the fault-points feature)"
        ))
    }
}

/// Loads the config, takes the data directory, and runs the listeners until SIGINT/SIGTERM.
fn serve(args: &config::ServeArgs) -> ExitCode {
    let config = match BrokerConfig::load(args, |var| std::env::var(var).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice serve: {e}\n(see sluice serve --help)");
            return ExitCode::from(2);
        }
    };
    // Dropped last: spans of the final requests are flushed after the shards stop.
    let _telemetry = match telemetry::init(&config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("sluice serve: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = arm_fault_points(std::env::var_os(FAULT_POINTS_VAR)) {
        eprintln!("sluice serve: {FAULT_POINTS_VAR}: {e}");
        return ExitCode::from(2);
    }
    let _data_lock = match lock_data_dir(&config.data_dir) {
        Ok(lock) => lock,
        Err(e) => {
            eprintln!("sluice serve: data_dir {}: {e}", config.data_dir.display());
            return ExitCode::FAILURE;
        }
    };
    raise_open_files_limit();
    let shutdown = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(signal, shutdown.clone()) {
            eprintln!("sluice serve: cannot install a handler for signal {signal}: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Some(tls) = config.tls.clone() {
        if let Err(e) = reload_tls_on_sighup(tls) {
            eprintln!("sluice serve: cannot install a handler for SIGHUP: {e}");
            return ExitCode::FAILURE;
        }
    }
    let loaded = match &config.cluster {
        None => sluice_core::catalog::Catalog::load(&config.data_dir),
        Some(_) => sluice_core::catalog::Catalog::for_cluster(&config.data_dir),
    };
    let catalog = match loaded {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("sluice serve: {e}");
            return ExitCode::FAILURE;
        }
    };
    if config.cluster.is_none() {
        if let Err(code) = prepare_single_node(&config, &catalog) {
            return code;
        }
    }
    let cluster_id = match &config.cluster {
        None => "sluice-single-node-000".to_string(),
        // Every node derives the same id from the same seed list.
        Some(cluster) => {
            let seeds: Vec<String> = cluster
                .seeds
                .iter()
                .map(|(id, address)| format!("{id}@{address}"))
                .collect();
            format!("sluice-{:08x}", crc32c::crc32c(seeds.join(",").as_bytes()))
        }
    };
    let cluster = config
        .cluster
        .as_ref()
        .map(|cluster| sluice_core::cluster::ClusterSettings {
            node_id: config.node_id,
            rpc_listen: cluster.rpc_listen,
            seeds: cluster.seeds.clone(),
            endpoints: config.endpoints.clone(),
            rack: None,
            tick: cluster.raft_tick,
            replica: sluice_replication::ReplicaConfig::default(),
            offsets_partitions: config.offsets_partitions,
            replica_lag: cluster.replica_lag,
            session_timeout: cluster.session_timeout,
            leader_imbalance_check: cluster.leader_imbalance_check,
            leader_imbalance_percent: cluster.leader_imbalance_percent,
            controller_snapshot_bytes: cluster.controller_snapshot_bytes,
        });
    let audit = match &config.audit {
        None => None,
        Some(settings) => {
            let mut started = serde_json::Map::new();
            started.insert("node_id".into(), config.node_id.into());
            started.insert("version".into(), env!("CARGO_PKG_VERSION").into());
            match sluice_core::audit::AuditLog::open(settings.clone(), started) {
                Ok(opened) => Some(opened),
                Err(e) => {
                    eprintln!("sluice serve: audit_log_dir: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let server = sluice_net::ServerConfig {
        listeners: config.listeners.clone(),
        tls: config.tls.clone(),
        sasl: config.sasl.clone(),
        authorizer: config.authorizer.clone(),
        audit: audit.as_ref().map(|(log, _)| log.clone()),
        frame_bytes_max: config.frame_bytes_max,
        shards: config.cores,
        pin_shards: !config.overprovisioned,
        drain_timeout: config.shutdown_drain,
        shard_settings: sluice_core::shard::ShardSettings {
            log_defaults: LogConfig {
                zero_ahead: config.log_zero_ahead,
                dsync_lone_writes: config.log_dsync_lone_writes,
                ..LogConfig::default()
            },
            auto_create_topics: config.auto_create_topics,
            default_partitions: config.default_partitions,
            clamp_replication_factor: config.clamp_replication_factor,
            retention_check_ms: config.retention_check_ms,
            group_initial_rebalance_delay: std::time::Duration::from_millis(
                config.group_initial_rebalance_delay_ms,
            ),
            cleaner: sluice_core::cleaner::CleanerSettings {
                backoff: std::time::Duration::from_millis(config.log_cleaner_backoff_ms),
                io_bytes_per_second: Some(config.log_cleaner_io_bytes_per_second)
                    .filter(|b| *b > 0),
                dedupe_buffer_bytes: config.log_cleaner_dedupe_buffer_bytes,
            },
            disk_free_bytes_min: config.disk_free_bytes_min,
            txn_partition_verification: config.transaction_partition_verification_enable,
            sync_flush: config.durability_rounds.flush_mode(),
            write_buffer_bytes: config.write_buffer_bytes_per_shard as usize,
            fetch_session_slots: config.fetch_session_cache_slots as usize,
            fetch_session_eviction: std::time::Duration::from_millis(
                config.fetch_session_eviction_ms,
            ),
            cluster,
        },
    };
    let hub = Arc::new(
        sluice_core::metrics::MetricsHub::new(
            config.node_id,
            config.data_dir.clone(),
            config.cores.max(1),
            config.disk_free_bytes_min,
        )
        .with_client_telemetry(sluice_core::client_telemetry::ClientTelemetry::new(
            config.client_metrics.clone(),
            config.client_metrics_interval,
        )),
    );
    let admin = sluice_admin::AdminSettings {
        listen: config.admin_listen,
        metrics_per_partition: config.metrics_per_partition,
    };
    if let Err(e) = sluice_admin::start(admin, hub.clone()) {
        eprintln!("sluice serve: admin_listen: {e}");
        return ExitCode::FAILURE;
    }
    let broker = sluice_net::BrokerIdentity {
        node_id: config.node_id,
        endpoints: config.endpoints.clone(),
        cluster_id,
        static_configs: static_broker_configs(&config),
    };
    let outcome = sluice_net::server::run(server, broker, catalog, shutdown, hub);
    if let Some((log, writer)) = audit {
        writer.finish(log, std::time::Duration::from_secs(5));
    }
    match outcome {
        Ok(()) => {
            eprintln!("sluice serve: stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sluice serve: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A single node's start-up chores: `__consumer_offsets` in the catalog, the disk-space
/// reserve, and the files of topics whose deletion a crash interrupted.
fn prepare_single_node(
    config: &BrokerConfig,
    catalog: &sluice_core::catalog::Catalog,
) -> Result<(), ExitCode> {
    if let Err(e) = catalog.ensure_topic_blocking(
        sluice_core::groups::OFFSETS_TOPIC,
        config.offsets_partitions,
    ) {
        eprintln!(
            "sluice serve: cannot create {}: {e}",
            sluice_core::groups::OFFSETS_TOPIC
        );
        return Err(ExitCode::FAILURE);
    }
    sluice_core::catalog::ensure_space_reserve(&config.data_dir);
    for orphan in catalog.orphan_topic_dirs() {
        // Left by a topic deletion that a crash interrupted after the catalog changed.
        tracing::info!(dir = %orphan.display(), "removing the files of a deleted topic");
        if let Err(e) = std::fs::remove_dir_all(&orphan) {
            eprintln!("sluice serve: cannot remove {}: {e}", orphan.display());
            return Err(ExitCode::FAILURE);
        }
    }
    Ok(())
}

/// Re-reads the SSL listeners' certificate, key and client CA on every SIGHUP (rotated
/// certificates without a restart): new connections use the new files, open ones are left as
/// they are; files that do not load leave the old configuration in force, with an error logged.
fn reload_tls_on_sighup(tls: Arc<sluice_net::tls::TlsServer>) -> std::io::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])?;
    std::thread::Builder::new()
        .name("sluice-sighup".into())
        .spawn(move || {
            for _ in signals.forever() {
                match tls.reload() {
                    Ok(()) => tracing::info!("SIGHUP: TLS certificate, key and client CA reloaded"),
                    Err(e) => tracing::error!(error = %e, "SIGHUP: TLS files not reloaded; the previous ones stay in force"),
                }
            }
        })?;
    Ok(())
}

/// The start-up settings under Kafka's broker config names, as DescribeConfigs shows them
/// (read-only): tools read `advertised.listeners` and `log.dirs` from there.
fn static_broker_configs(
    config: &BrokerConfig,
) -> Vec<(&'static str, String, sluice_core::topics::ConfigType)> {
    use sluice_core::topics::ConfigType;
    let data_dir = std::fs::canonicalize(&config.data_dir).unwrap_or(config.data_dir.clone());
    vec![
        ("broker.id", config.node_id.to_string(), ConfigType::Int),
        ("node.id", config.node_id.to_string(), ConfigType::Int),
        (
            "process.roles",
            "broker,controller".into(),
            ConfigType::List,
        ),
        (
            "listeners",
            config
                .listeners
                .iter()
                .map(|l| format!("{}://{}", l.name, l.address))
                .collect::<Vec<_>>()
                .join(","),
            ConfigType::List,
        ),
        (
            "advertised.listeners",
            config
                .endpoints
                .iter()
                .map(|e| format!("{}://{}:{}", e.listener, e.host, e.port))
                .collect::<Vec<_>>()
                .join(","),
            ConfigType::List,
        ),
        (
            "listener.security.protocol.map",
            config
                .listeners
                .iter()
                .map(|l| format!("{}:{}", l.name, l.protocol.kafka_name()))
                .collect::<Vec<_>>()
                .join(","),
            ConfigType::List,
        ),
        (
            "ssl.client.auth",
            config
                .tls
                .as_ref()
                .map_or("none", |t| t.client_auth_name())
                .into(),
            ConfigType::String,
        ),
        (
            "inter.broker.listener.name",
            "PLAINTEXT".into(),
            ConfigType::String,
        ),
        ("log.dirs", data_dir.display().to_string(), ConfigType::List),
        (
            "socket.request.max.bytes",
            config.frame_bytes_max.to_string(),
            ConfigType::Int,
        ),
        (
            "offsets.topic.num.partitions",
            config.offsets_partitions.to_string(),
            ConfigType::Int,
        ),
        ("default.replication.factor", "1".into(), ConfigType::Int),
        (
            "log.retention.check.interval.ms",
            config.retention_check_ms.to_string(),
            ConfigType::Long,
        ),
        (
            "log.cleaner.backoff.ms",
            config.log_cleaner_backoff_ms.to_string(),
            ConfigType::Long,
        ),
        (
            "log.cleaner.io.max.bytes.per.second",
            config.log_cleaner_io_bytes_per_second.to_string(),
            ConfigType::Double,
        ),
        (
            "log.cleaner.dedupe.buffer.size",
            config.log_cleaner_dedupe_buffer_bytes.to_string(),
            ConfigType::Long,
        ),
        (
            "max.incremental.fetch.session.cache.slots",
            config.fetch_session_cache_slots.to_string(),
            ConfigType::Int,
        ),
        (
            "min.incremental.fetch.session.eviction.ms",
            config.fetch_session_eviction_ms.to_string(),
            ConfigType::Int,
        ),
    ]
}

/// Raises the soft limit on open files to the hard limit: every open partition holds its
/// segment files open, so thousands of partitions need tens of thousands of descriptors, and
/// the usual soft default (1024) would fail partition opens with EMFILE long before that. The
/// hard limit is the operator's to set (systemd `LimitNOFILE`, `ulimit -Hn`).
fn raise_open_files_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    let (Some(soft), Some(hard)) = (limit.current, limit.maximum) else {
        return; // unlimited: nothing to raise
    };
    if soft < hard {
        limit.current = Some(hard);
        if setrlimit(Resource::Nofile, limit).is_ok() {
            tracing::info!(from = soft, to = hard, "open-file limit raised");
        }
    }
    if hard < 65_536 {
        tracing::info!(
            limit = hard,
            "open-file limit: every partition holds about one descriptor per segment; raise the hard limit for many partitions"
        );
    }
}

/// Creates the data directory and takes an exclusive lock on `<data_dir>/.lock`, so two brokers
/// never share one directory. The lock is held until the returned file is dropped.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let path = dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err("in use by another sluice process".into()),
        Err(std::fs::TryLockError::Error(e)) => Err(format!("{}: {e}", path.display())),
    }
}
