//! The command-line tools that talk the Kafka protocol to any broker: `sluice topic`,
//! `sluice produce`, `sluice consume`, `sluice group`. Each takes `--bootstrap HOST:PORT` (or a
//! comma-separated list, the first broker that answers used; default `SLUICE_BOOTSTRAP`, then
//! 127.0.0.1:9092).
//!
//! - `client` — the blocking Kafka client underneath.
//! - `users` — `sluice user`: SCRAM users (KIP-554).
//! - `acls` — `sluice acl`: ACLs.
//! - `decommission` — `sluice cluster decommission|rebalance|unregister`: moving replicas.
//! - `voters` — `sluice cluster add-voter|remove-voter`: the controller's voters (KIP-853).
//! - `txn` — `sluice txn`: transactions, producers and hanging transactions (KIP-664).
//! - this module — the commands and their arguments (clap derive; `src/main.rs` nests them).

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ConsumerProtocolAssignment, CreateTopicsRequest, CreateTopicsResponse,
    DeleteGroupsRequest, DeleteGroupsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
    DescribeConfigsRequest, DescribeConfigsResponse, DescribeGroupsRequest, DescribeGroupsResponse,
    FetchRequest, FetchResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    ListGroupsRequest, ListGroupsResponse, ListOffsetsRequest, ListOffsetsResponse,
    MetadataResponse, OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest,
    OffsetFetchResponse, ProduceRequest, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::Decodable;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

mod acls;
mod client;
mod decommission;
mod txn;
mod users;
mod voters;

pub use acls::{acl, AclCommand};
pub use decommission::{
    decommission, rebalance, unregister, DecommissionArgs, RebalanceArgs, UnregisterArgs,
};
pub use txn::{txn, TxnCommand};
pub use users::{user, UserCommand};
pub use voters::{add_voter, remove_voter, VoterArgs};

use client::{partition_for_key, ApiUse, Client, Result};

const CREATE_TOPICS: ApiUse = ApiUse {
    key: ApiKey::CreateTopics,
    min: 2,
    max: 7,
};
const DELETE_TOPICS: ApiUse = ApiUse {
    key: ApiKey::DeleteTopics,
    min: 1,
    max: 5,
};
const DESCRIBE_CONFIGS: ApiUse = ApiUse {
    key: ApiKey::DescribeConfigs,
    min: 1,
    max: 4,
};
const PRODUCE: ApiUse = ApiUse {
    key: ApiKey::Produce,
    min: 3,
    max: 12,
};
const FETCH: ApiUse = ApiUse {
    key: ApiKey::Fetch,
    min: 4,
    max: 12,
};
const LIST_OFFSETS: ApiUse = ApiUse {
    key: ApiKey::ListOffsets,
    min: 1,
    max: 7,
};

const FIND_COORDINATOR: ApiUse = ApiUse {
    key: ApiKey::FindCoordinator,
    min: 0,
    max: 3,
};
const LIST_GROUPS: ApiUse = ApiUse {
    key: ApiKey::ListGroups,
    min: 0,
    max: 4,
};
const DESCRIBE_GROUPS: ApiUse = ApiUse {
    key: ApiKey::DescribeGroups,
    min: 0,
    max: 5,
};
const OFFSET_FETCH: ApiUse = ApiUse {
    key: ApiKey::OffsetFetch,
    min: 1,
    max: 7,
};
const OFFSET_COMMIT: ApiUse = ApiUse {
    key: ApiKey::OffsetCommit,
    min: 2,
    max: 8,
};
const DELETE_GROUPS: ApiUse = ApiUse {
    key: ApiKey::DeleteGroups,
    min: 0,
    max: 2,
};

/// Records per Produce request.
const PRODUCE_BATCH_RECORDS: usize = 1000;
/// Bytes per partition per Fetch.
const FETCH_PARTITION_BYTES: i32 = 1 << 20;

/// Where a tool connects.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// A broker to start from (or several, comma-separated: the first that answers); the
    /// others are found through it.
    #[arg(
        long,
        value_name = "HOST:PORT[,HOST:PORT...]",
        env = "SLUICE_BOOTSTRAP",
        default_value = "127.0.0.1:9092"
    )]
    bootstrap: String,
}

impl Connection {
    fn client(&self) -> Result<Client> {
        Client::new(&self.bootstrap)
    }
}

/// How listing commands print.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Lines for people.
    #[default]
    Text,
    /// One JSON document, for scripts.
    Json,
}

fn print_json(value: &serde_json::Value) -> Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(value).map_err(|e| e.to_string())?
    );
    Ok(())
}

#[derive(Debug, clap::Subcommand)]
pub enum TopicCommand {
    /// The topics (internal ones left out, as `kafka-topics.sh --exclude-internal`).
    List {
        #[command(flatten)]
        connection: Connection,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Creates a topic (through the cluster's controller).
    Create {
        name: String,
        /// Partitions [default: the broker's num.partitions].
        #[arg(long, value_name = "N")]
        partitions: Option<i32>,
        /// Replicas of each partition [default: the broker's default.replication.factor].
        #[arg(long, value_name = "N")]
        replication_factor: Option<i16>,
        /// A topic config, Kafka's name (repeatable), e.g. --config retention.ms=86400000.
        #[arg(long = "config", value_name = "KEY=VALUE")]
        configs: Vec<String>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Partitions, leaders, replicas, in-sync replicas and configs.
    Describe {
        name: String,
        #[command(flatten)]
        connection: Connection,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Deletes a topic and its records.
    Delete {
        name: String,
        #[command(flatten)]
        connection: Connection,
    },
}

/// `sluice produce`: one record per line of stdin.
#[derive(Debug, clap::Args)]
pub struct ProduceArgs {
    topic: String,
    /// The text before the first occurrence of SEP is the record's key (partitioned by it as
    /// the Java client does); without it, records have no key and go round-robin.
    #[arg(long, value_name = "SEP")]
    key_separator: Option<String>,
    /// Every record to this partition.
    #[arg(long, value_name = "N")]
    partition: Option<i32>,
    #[arg(long, value_name = "ACKS", default_value = "all", value_parser = ["0", "1", "all", "-1"])]
    acks: String,
    #[command(flatten)]
    connection: Connection,
}

/// `sluice consume`: prints records as they come.
#[derive(Debug, clap::Args)]
pub struct ConsumeArgs {
    topic: String,
    /// Where to start: beginning, latest or an offset.
    #[arg(
        long,
        value_name = "beginning|latest|OFFSET",
        default_value = "beginning"
    )]
    from: String,
    /// Only this partition.
    #[arg(long, value_name = "N")]
    partition: Option<i32>,
    /// Stop after N records.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Stop once nothing new came for MS milliseconds.
    #[arg(long, value_name = "MS")]
    idle_exit_ms: Option<u64>,
    /// %t topic, %p partition, %o offset, %k key, %v value, %T timestamp, %h headers, \n, \t.
    #[arg(long, value_name = "FMT", default_value = "%v\\n")]
    format: String,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, clap::Subcommand)]
pub enum GroupCommand {
    /// The consumer groups, with their states.
    List {
        #[command(flatten)]
        connection: Connection,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Per partition: committed offset, end offset, lag and the member holding it.
    Describe {
        group: String,
        #[command(flatten)]
        connection: Connection,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Deletes a group without members, with its offsets.
    Delete {
        group: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Sets the committed offsets of a group without members.
    ResetOffsets {
        group: String,
        #[arg(long)]
        topic: String,
        #[arg(long, value_name = "earliest|latest|OFFSET")]
        to: String,
        /// Only this partition.
        #[arg(long, value_name = "N")]
        partition: Option<i32>,
        #[command(flatten)]
        connection: Connection,
    },
}

/// `sluice cluster info`.
#[derive(Debug, clap::Args)]
pub struct ClusterInfoArgs {
    #[command(flatten)]
    connection: Connection,
    #[arg(long, value_enum, default_value_t)]
    output: Output,
}

fn name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

/// Kafka's name for an error code, for messages.
fn error_text(code: i16, message: Option<&StrBytes>) -> String {
    let name = kafka_protocol::ResponseError::try_from_code(code)
        .map_or_else(|| "NONE".to_string(), |e| format!("{e:?}"));
    match message {
        Some(m) if !m.is_empty() => format!("{name} ({code}): {}", m.as_str()),
        _ => format!("{name} ({code})"),
    }
}

/// Broker ids as a comma-separated list ("0,1,2").
fn broker_ids(ids: &[kafka_protocol::messages::BrokerId]) -> String {
    ids.iter()
        .map(|b| b.0.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// `sluice cluster info`: every broker asked for its own Metadata, so the answer shows which
/// nodes answer, how many partitions each leads, and, from each leader's own view (only a
/// leader knows its ISR), the partitions with fewer replicas in sync than assigned.
pub fn cluster_info(args: ClusterInfoArgs) -> Result<()> {
    let mut client = args.connection.client()?;
    let metadata = client.metadata(None)?;
    // Dead nodes are not in Metadata (fenced, as Kafka's): DescribeCluster lists them too.
    let brokers = client.all_brokers()?;
    let views: HashMap<i32, Result<MetadataResponse>> = brokers
        .iter()
        .map(|(id, addr)| (*id, client.metadata_from(Some(addr), None)))
        .collect();
    let controller = metadata.controller_id.0;
    let mut led: HashMap<i32, usize> = HashMap::new();
    let (mut total, mut leaderless, mut under_replicated) = (0, Vec::new(), Vec::new());
    let mut topics: Vec<_> = metadata.topics.iter().collect();
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    for topic in topics {
        let name = topic.name.as_ref().map_or("?", |n| n.as_str());
        let mut partitions: Vec<_> = topic.partitions.iter().collect();
        partitions.sort_by_key(|p| p.partition_index);
        for p in partitions {
            total += 1;
            let label = format!("{name}-{}", p.partition_index);
            // A node that says it leads the partition: only a leader knows the ISR (nodes
            // without a replica do not even know the leader).
            let own = views.iter().find_map(|(id, view)| {
                view.as_ref()
                    .ok()?
                    .topics
                    .iter()
                    .find(|t| t.name == topic.name)?
                    .partitions
                    .iter()
                    .find(|q| q.partition_index == p.partition_index && q.leader_id.0 == *id)
                    .cloned()
            });
            let Some(own) = own else {
                leaderless.push(label);
                continue;
            };
            *led.entry(own.leader_id.0).or_default() += 1;
            if own.isr_nodes.len() < own.replica_nodes.len() {
                under_replicated.push(format!(
                    "{label} leader {} replicas [{}] isr [{}]",
                    own.leader_id.0,
                    broker_ids(&own.replica_nodes),
                    broker_ids(&own.isr_nodes)
                ));
            }
        }
    }
    if args.output == Output::Json {
        return print_json(&serde_json::json!({
            "controller": controller,
            "nodes": brokers.iter().map(|(id, addr)| serde_json::json!({
                "node": id,
                "address": addr,
                "up": views[id].is_ok(),
                "leads": led.get(id).copied().unwrap_or(0),
                "error": views[id].as_ref().err(),
            })).collect::<Vec<_>>(),
            "partitions": total,
            "leaderless": leaderless,
            "under_replicated": under_replicated,
        }));
    }
    println!(
        "cluster: {} brokers, controller node {}",
        brokers.len(),
        controller
    );
    for (id, addr) in &brokers {
        let state = match &views[id] {
            Ok(_) => format!("up           leads {}", led.get(id).copied().unwrap_or(0)),
            Err(e) => format!("unreachable  ({e})"),
        };
        let role = if *id == controller {
            "  controller"
        } else {
            ""
        };
        println!("node {id}  {addr}  {state}{role}");
    }
    println!(
        "partitions: {total}, leaderless {}, under-replicated {}",
        leaderless.len(),
        under_replicated.len()
    );
    for line in &leaderless {
        println!("  leaderless: {line}");
    }
    for line in &under_replicated {
        println!("  under-replicated: {line}");
    }
    Ok(())
}

pub fn topic(command: TopicCommand) -> Result<()> {
    match command {
        TopicCommand::List { connection, output } => {
            let metadata = connection.client()?.metadata(None)?;
            // Internal topics (`__consumer_offsets`) are left out, as kafka-topics.sh
            // --exclude-internal does.
            let mut names: Vec<String> = metadata
                .topics
                .iter()
                .filter(|t| !t.is_internal)
                .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
                .collect();
            names.sort();
            if output == Output::Json {
                return print_json(&serde_json::json!(names));
            }
            for n in names {
                println!("{n}");
            }
            Ok(())
        }
        TopicCommand::Create {
            name: topic,
            partitions,
            replication_factor: replication,
            configs: pairs,
            connection,
        } => {
            let mut configs = Vec::new();
            for pair in &pairs {
                let (k, v) = pair
                    .split_once('=')
                    .ok_or_else(|| format!("--config {pair:?}: expected KEY=VALUE"))?;
                configs.push(
                    CreatableTopicConfig::default()
                        .with_name(StrBytes::from_string(k.to_string()))
                        .with_value(Some(StrBytes::from_string(v.to_string()))),
                );
            }
            // In a cluster only the controller creates topics.
            let mut client = connection.client()?;
            let controller = client.controller_address()?;
            let response: CreateTopicsResponse =
                client.call(controller.as_deref(), CREATE_TOPICS, |_| {
                    CreateTopicsRequest::default()
                        .with_timeout_ms(30_000)
                        .with_topics(vec![CreatableTopic::default()
                            .with_name(name(&topic))
                            .with_num_partitions(partitions.unwrap_or(-1))
                            .with_replication_factor(replication.unwrap_or(-1))
                            .with_configs(configs)])
                })?;
            let result = &response.topics[0];
            if result.error_code != 0 {
                return Err(format!(
                    "cannot create {topic}: {}",
                    error_text(result.error_code, result.error_message.as_ref())
                ));
            }
            println!("created topic {topic}");
            Ok(())
        }
        TopicCommand::Describe {
            name: topic,
            connection,
            output,
        } => {
            let mut client = connection.client()?;
            let metadata = client.metadata(Some(&[&topic]))?;
            let t = &metadata.topics[0];
            if t.error_code != 0 {
                return Err(format!("{topic}: {}", error_text(t.error_code, None)));
            }
            let mut partitions: Vec<_> = t.partitions.iter().collect();
            partitions.sort_by_key(|p| p.partition_index);
            let configs: DescribeConfigsResponse = client.call(None, DESCRIBE_CONFIGS, |_| {
                DescribeConfigsRequest::default().with_resources(vec![
                    DescribeConfigsResource::default()
                        .with_resource_type(2)
                        .with_resource_name(StrBytes::from_string(topic.clone()))
                        .with_configuration_keys(None),
                ])
            })?;
            let result = &configs.results[0];
            if result.error_code != 0 {
                return Err(format!(
                    "configs of {topic}: {}",
                    error_text(result.error_code, result.error_message.as_ref())
                ));
            }
            if output == Output::Json {
                let ids = |ids: &[kafka_protocol::messages::BrokerId]| -> Vec<i32> {
                    ids.iter().map(|b| b.0).collect()
                };
                return print_json(&serde_json::json!({
                    "topic": topic,
                    "id": t.topic_id.to_string(),
                    "partitions": partitions.iter().map(|p| serde_json::json!({
                        "partition": p.partition_index,
                        "leader": p.leader_id.0,
                        "replicas": ids(&p.replica_nodes),
                        "isr": ids(&p.isr_nodes),
                    })).collect::<Vec<_>>(),
                    "configs": result.configs.iter().map(|c| serde_json::json!({
                        "name": c.name.as_str(),
                        "value": c.value.as_ref().map(|v| v.as_str()),
                        "default": c.config_source == 5,
                    })).collect::<Vec<_>>(),
                }));
            }
            println!(
                "topic {topic} id {} partitions {}",
                t.topic_id,
                t.partitions.len()
            );
            for p in partitions {
                println!(
                    "  partition {} leader {} replicas [{}] isr [{}]",
                    p.partition_index,
                    p.leader_id.0,
                    broker_ids(&p.replica_nodes),
                    broker_ids(&p.isr_nodes)
                );
            }
            println!("configs:");
            for c in &result.configs {
                let value = c.value.as_ref().map_or("(null)", |v| v.as_str());
                let source = if c.config_source == 5 {
                    " (default)"
                } else {
                    ""
                };
                println!("  {}={value}{source}", c.name.as_str());
            }
            Ok(())
        }
        TopicCommand::Delete {
            name: topic,
            connection,
        } => {
            let mut client = connection.client()?;
            let controller = client.controller_address()?;
            let response: DeleteTopicsResponse =
                client.call(controller.as_deref(), DELETE_TOPICS, |_| {
                    DeleteTopicsRequest::default()
                        .with_timeout_ms(30_000)
                        .with_topic_names(vec![name(&topic)])
                })?;
            let result = &response.responses[0];
            if result.error_code != 0 {
                return Err(format!(
                    "cannot delete {topic}: {}",
                    error_text(result.error_code, result.error_message.as_ref())
                ));
            }
            println!("deleted topic {topic}");
            Ok(())
        }
    }
}

/// A topic's partitions and their leaders' addresses.
fn partition_leaders(client: &mut Client, topic: &str) -> Result<Vec<(i32, String)>> {
    let metadata: MetadataResponse = client.metadata(Some(&[topic]))?;
    let t = &metadata.topics[0];
    if t.error_code != 0 {
        return Err(format!("{topic}: {}", error_text(t.error_code, None)));
    }
    let mut leaders = Vec::new();
    for p in &t.partitions {
        leaders.push((p.partition_index, client.broker_address(p.leader_id.0)?));
    }
    leaders.sort();
    Ok(leaders)
}

pub fn produce(args: ProduceArgs) -> Result<()> {
    let topic = args.topic;
    let acks: i16 = match args.acks.as_str() {
        "1" => 1,
        "0" => 0,
        _ => -1, // all
    };
    let fixed_partition = args.partition;
    let separator = args.key_separator;
    let mut client = args.connection.client()?;
    let leaders = partition_leaders(&mut client, &topic)?;
    let partitions = leaders.len() as i32;
    if let Some(p) = fixed_partition {
        if !(0..partitions).contains(&p) {
            return Err(format!("{topic} has no partition {p}"));
        }
    }
    let mut pending: HashMap<i32, Vec<(Option<Bytes>, Bytes)>> = HashMap::new();
    let mut buffered = 0usize;
    let mut produced = 0usize;
    let mut round_robin = 0i32;
    let progress = progress_line(&format!("records sent to {topic}"));
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        let line = lines
            .next()
            .transpose()
            .map_err(|e| format!("stdin: {e}"))?;
        if let Some(line) = &line {
            let (key, value) = match &separator {
                Some(sep) => match line.split_once(sep.as_str()) {
                    Some((k, v)) => (Some(Bytes::from(k.to_string())), v.to_string()),
                    None => (None, line.clone()),
                },
                None => (None, line.clone()),
            };
            let partition = match (fixed_partition, &key) {
                (Some(p), _) => p,
                (None, Some(k)) => partition_for_key(k, partitions),
                (None, None) => {
                    round_robin = (round_robin + 1) % partitions;
                    round_robin
                }
            };
            pending
                .entry(partition)
                .or_default()
                .push((key, Bytes::from(value)));
            buffered += 1;
        }
        if buffered >= PRODUCE_BATCH_RECORDS || (line.is_none() && buffered > 0) {
            produced += send_batches(&mut client, &topic, &leaders, acks, &mut pending)?;
            progress.set_position(produced as u64);
            buffered = 0;
        }
        if line.is_none() {
            break;
        }
    }
    drop(progress);
    eprintln!("produced {produced} records to {topic}");
    Ok(())
}

/// A progress line on stderr (`⠁ 12345 records sent to t (8123/s)`), drawn only when stderr
/// is a terminal: piped or redirected output stays clean.
fn progress_line(what: &str) -> ProgressLine {
    let line =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {pos} {msg} ({per_sec})")
    {
        line.set_style(style);
    }
    line.set_message(what.to_string());
    line.enable_steady_tick(Duration::from_millis(200));
    ProgressLine(line)
}

/// A progress line, erased when the command ends however it ends.
struct ProgressLine(indicatif::ProgressBar);

impl ProgressLine {
    fn set_position(&self, position: u64) {
        self.0.set_position(position);
    }
}

impl Drop for ProgressLine {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// Sends the pending records, one batch per partition, one request per leader.
fn send_batches(
    client: &mut Client,
    topic: &str,
    leaders: &[(i32, String)],
    acks: i16,
    pending: &mut HashMap<i32, Vec<(Option<Bytes>, Bytes)>>,
) -> Result<usize> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut by_leader: HashMap<&str, Vec<PartitionProduceData>> = HashMap::new();
    let mut count = 0;
    for (partition, records) in pending.drain() {
        count += records.len();
        let records: Vec<Record> = records
            .into_iter()
            .enumerate()
            .map(|(i, (key, value))| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                // offset - sequence equal for all records: the encoder keeps them in one batch.
                offset: i as i64,
                sequence: i as i32,
                timestamp: now,
                key,
                value: Some(value),
                headers: Default::default(),
            })
            .collect();
        let mut batch = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut batch,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .map_err(|e| format!("encoding records: {e}"))?;
        let leader = leaders
            .iter()
            .find(|(p, _)| *p == partition)
            .map(|(_, addr)| addr.as_str())
            .ok_or_else(|| format!("no leader for partition {partition}"))?;
        by_leader.entry(leader).or_default().push(
            PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(batch.freeze())),
        );
    }
    for (leader, partitions) in by_leader {
        let request = |_| {
            ProduceRequest::default()
                .with_acks(acks)
                .with_timeout_ms(30_000)
                .with_topic_data(vec![TopicProduceData::default()
                    .with_name(name(topic))
                    .with_partition_data(partitions.clone())])
        };
        if acks == 0 {
            client.send_only(Some(leader), PRODUCE, request)?;
            continue;
        }
        let response: ProduceResponse = client.call(Some(leader), PRODUCE, request)?;
        for t in &response.responses {
            for p in &t.partition_responses {
                if p.error_code != 0 {
                    return Err(format!(
                        "partition {}: {}",
                        p.index,
                        error_text(p.error_code, p.error_message.as_ref())
                    ));
                }
            }
        }
    }
    Ok(count)
}

pub fn consume(args: ConsumeArgs) -> Result<()> {
    let topic = args.topic;
    let count = args.count;
    let idle_exit = args.idle_exit_ms.map(Duration::from_millis);
    let format = args.format.replace("\\n", "\n").replace("\\t", "\t");
    let only = args.partition;
    let mut client = args.connection.client()?;
    let leaders: Vec<(i32, String)> = partition_leaders(&mut client, &topic)?
        .into_iter()
        .filter(|(p, _)| only.is_none_or(|o| o == *p))
        .collect();
    if leaders.is_empty() {
        return Err(format!("{topic} has no partition {}", only.unwrap_or(-1)));
    }
    let mut positions: HashMap<i32, i64> = HashMap::new();
    for (partition, leader) in &leaders {
        let start = match args.from.as_str() {
            "beginning" => list_offset(&mut client, leader, &topic, *partition, -2)?,
            "latest" | "end" => list_offset(&mut client, leader, &topic, *partition, -1)?,
            n => n
                .parse()
                .map_err(|_| format!("--from {n:?}: expected beginning, latest or an offset"))?,
        };
        positions.insert(*partition, start);
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut printed = 0u64;
    // Records go to stdout; with stdout a file or a pipe, a progress line on the terminal.
    let progress = if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        ProgressLine(indicatif::ProgressBar::hidden())
    } else {
        progress_line(&format!("records read from {topic}"))
    };
    let mut last_data = Instant::now();
    loop {
        let mut got_any = false;
        let mut groups: HashMap<&str, Vec<i32>> = HashMap::new();
        for (p, leader) in &leaders {
            groups.entry(leader.as_str()).or_default().push(*p);
        }
        for (leader, partitions) in groups {
            let response: FetchResponse = client.call(Some(leader), FETCH, |_| {
                FetchRequest::default()
                    .with_replica_id(kafka_protocol::messages::BrokerId(-1))
                    .with_max_wait_ms(500)
                    .with_min_bytes(1)
                    .with_max_bytes(16 << 20)
                    .with_isolation_level(0)
                    .with_session_epoch(-1)
                    .with_topics(vec![FetchTopic::default()
                        .with_topic(name(&topic))
                        .with_partitions(
                            partitions
                                .iter()
                                .map(|p| {
                                    FetchPartition::default()
                                        .with_partition(*p)
                                        .with_fetch_offset(positions[p])
                                        .with_partition_max_bytes(FETCH_PARTITION_BYTES)
                                })
                                .collect(),
                        )])
            })?;
            if response.error_code != 0 {
                return Err(format!("fetch: {}", error_text(response.error_code, None)));
            }
            for t in &response.responses {
                for p in &t.partitions {
                    if p.error_code != 0 {
                        return Err(format!(
                            "partition {}: {}",
                            p.partition_index,
                            error_text(p.error_code, None)
                        ));
                    }
                    let mut bytes = p.records.clone().unwrap_or_default();
                    let position = positions.get_mut(&p.partition_index).expect("asked for");
                    for record in decode_whole_batches(&mut bytes)? {
                        if record.offset < *position || record.control {
                            continue;
                        }
                        *position = record.offset + 1;
                        got_any = true;
                        write_record(&mut out, &format, &topic, p.partition_index, &record)
                            .map_err(|e| format!("stdout: {e}"))?;
                        printed += 1;
                        if count.is_some_and(|c| printed >= c) {
                            return out.flush().map_err(|e| format!("stdout: {e}"));
                        }
                    }
                }
            }
        }
        out.flush().map_err(|e| format!("stdout: {e}"))?;
        progress.set_position(printed);
        if got_any {
            last_data = Instant::now();
        } else if idle_exit.is_some_and(|idle| last_data.elapsed() >= idle) {
            return Ok(());
        }
    }
}

fn list_offset(
    client: &mut Client,
    leader: &str,
    topic: &str,
    partition: i32,
    at: i64,
) -> Result<i64> {
    let response: ListOffsetsResponse = client.call(Some(leader), LIST_OFFSETS, |_| {
        ListOffsetsRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(name(topic))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(partition)
                    .with_timestamp(at)])])
    })?;
    let p = &response.topics[0].partitions[0];
    if p.error_code != 0 {
        return Err(format!(
            "offsets of partition {partition}: {}",
            error_text(p.error_code, None)
        ));
    }
    Ok(p.offset)
}

/// Decodes the whole batches of a fetched partition; a partial batch at the end (brokers may
/// cut the last one at the size limit) is left for the next fetch.
fn decode_whole_batches(bytes: &mut Bytes) -> Result<Vec<Record>> {
    let mut records = Vec::new();
    while bytes.len() >= 12 {
        let length = i32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        let Some(size) = usize::try_from(length).ok().map(|l| l + 12) else {
            return Err("a fetched batch has a negative length".into());
        };
        if size > bytes.len() {
            break;
        }
        let mut one = bytes.split_to(size);
        let set = RecordBatchDecoder::decode(&mut one)
            .map_err(|e| format!("cannot decode a fetched batch: {e}"))?;
        records.extend(set.records);
    }
    Ok(records)
}

fn write_record(
    out: &mut impl Write,
    format: &str,
    topic: &str,
    partition: i32,
    record: &Record,
) -> std::io::Result<()> {
    let text = |b: &Option<Bytes>| b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            write!(out, "{c}")?;
            continue;
        }
        match chars.next() {
            Some('t') => write!(out, "{topic}")?,
            Some('p') => write!(out, "{partition}")?,
            Some('o') => write!(out, "{}", record.offset)?,
            Some('k') => write!(out, "{}", text(&record.key).unwrap_or_default())?,
            Some('v') => write!(out, "{}", text(&record.value).unwrap_or_default())?,
            Some('T') => write!(out, "{}", record.timestamp)?,
            Some('h') => {
                let headers: Vec<String> = record
                    .headers
                    .iter()
                    .map(|(k, v)| format!("{}={}", k.as_str(), text(v).unwrap_or_default()))
                    .collect();
                write!(out, "{}", headers.join(","))?
            }
            Some('%') => write!(out, "%")?,
            Some(other) => write!(out, "%{other}")?,
            None => write!(out, "%")?,
        }
    }
    Ok(())
}

/// The address of the broker coordinating `group`.
/// The address of the coordinator of `group`.
fn coordinator(client: &mut Client, group: &str) -> Result<String> {
    coordinator_of(client, CoordinatorKey::Group, group)
}

/// What a coordinator is asked for (FindCoordinator's key type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CoordinatorKey {
    Group = 0,
    Transaction = 1,
}

/// The address of the coordinator of `key` (a group or a transactional id).
fn coordinator_of(client: &mut Client, kind: CoordinatorKey, key: &str) -> Result<String> {
    let response: FindCoordinatorResponse = client.call(None, FIND_COORDINATOR, |_| {
        FindCoordinatorRequest::default()
            .with_key(StrBytes::from_string(key.to_string()))
            .with_key_type(kind as i8)
    })?;
    if response.error_code != 0 {
        let what = match kind {
            CoordinatorKey::Group => "group",
            CoordinatorKey::Transaction => "transactional id",
        };
        return Err(format!(
            "no coordinator for {what} {key}: {}",
            error_text(response.error_code, response.error_message.as_ref())
        ));
    }
    Ok(format!("{}:{}", response.host.as_str(), response.port))
}

/// A group's committed offsets: (topic, partition) -> offset.
fn committed_offsets(
    client: &mut Client,
    at: &str,
    group: &str,
) -> Result<Vec<(String, i32, i64)>> {
    let response: OffsetFetchResponse = client.call(Some(at), OFFSET_FETCH, |_| {
        OffsetFetchRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
            .with_topics(None)
    })?;
    if response.error_code != 0 {
        return Err(format!(
            "offsets of {group}: {}",
            error_text(response.error_code, None)
        ));
    }
    let mut out = Vec::new();
    for t in &response.topics {
        for p in &t.partitions {
            if p.committed_offset >= 0 {
                out.push((t.name.0.to_string(), p.partition_index, p.committed_offset));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The end offset (or, with `at = -2`, the start) of each partition of `topic`.
fn topic_offsets(client: &mut Client, topic: &str, at: i64) -> Result<Vec<(i32, i64)>> {
    let leaders = partition_leaders(client, topic)?;
    let mut out = Vec::new();
    for (partition, leader) in leaders {
        out.push((
            partition,
            list_offset(client, &leader, topic, partition, at)?,
        ));
    }
    Ok(out)
}

pub fn group(command: GroupCommand) -> Result<()> {
    match command {
        GroupCommand::List { connection, output } => {
            let response: ListGroupsResponse =
                connection
                    .client()?
                    .call(None, LIST_GROUPS, |_| ListGroupsRequest::default())?;
            if response.error_code != 0 {
                return Err(error_text(response.error_code, None));
            }
            let mut groups: Vec<(String, String)> = response
                .groups
                .iter()
                .map(|g| (g.group_id.0.to_string(), g.group_state.to_string()))
                .collect();
            groups.sort();
            if output == Output::Json {
                return print_json(&serde_json::json!(groups
                    .iter()
                    .map(|(id, state)| serde_json::json!({ "group": id, "state": state }))
                    .collect::<Vec<_>>()));
            }
            for (id, state) in groups {
                if state.is_empty() {
                    println!("{id}");
                } else {
                    println!("{id} {state}");
                }
            }
            Ok(())
        }
        GroupCommand::Describe {
            group,
            connection,
            output,
        } => {
            let mut client = connection.client()?;
            let at = coordinator(&mut client, &group)?;
            let described: DescribeGroupsResponse =
                client.call(Some(&at), DESCRIBE_GROUPS, |_| {
                    DescribeGroupsRequest::default()
                        .with_groups(vec![GroupId(StrBytes::from_string(group.clone()))])
                })?;
            let g = &described.groups[0];
            if g.error_code != 0 {
                return Err(format!(
                    "{group}: {}",
                    error_text(g.error_code, g.error_message.as_ref())
                ));
            }
            // Which member holds each partition (consumer protocol assignments).
            let mut owner: HashMap<(String, i32), (String, String, String)> = HashMap::new();
            for m in &g.members {
                let mut bytes = m.member_assignment.clone();
                if bytes.len() < 2 {
                    continue;
                }
                let version = i16::from_be_bytes([bytes[0], bytes[1]]);
                let _ = bytes.split_to(2);
                let Ok(assignment) =
                    ConsumerProtocolAssignment::decode(&mut bytes, version.clamp(0, 3))
                else {
                    continue;
                };
                for tp in assignment.assigned_partitions {
                    for p in tp.partitions {
                        owner.insert(
                            (tp.topic.0.to_string(), p),
                            (
                                m.member_id.to_string(),
                                m.client_host.to_string(),
                                m.client_id.to_string(),
                            ),
                        );
                    }
                }
            }
            let committed = committed_offsets(&mut client, &at, &group)?;
            let mut rows: Vec<(String, i32, Option<i64>)> = committed
                .iter()
                .map(|(t, p, o)| (t.clone(), *p, Some(*o)))
                .collect();
            for (t, p) in owner.keys() {
                if !rows.iter().any(|(rt, rp, _)| rt == t && rp == p) {
                    rows.push((t.clone(), *p, None));
                }
            }
            rows.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
            let mut ends: HashMap<String, Vec<(i32, i64)>> = HashMap::new();
            if output == Output::Text {
                println!(
                    "group {group} state {} protocol {} members {}",
                    g.group_state.as_str(),
                    g.protocol_data.as_str(),
                    g.members.len()
                );
                println!(
                    "TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG CONSUMER-ID HOST CLIENT-ID"
                );
            }
            let mut json_rows = Vec::new();
            for (topic, partition, current) in rows {
                if !ends.contains_key(&topic) {
                    let offsets = topic_offsets(&mut client, &topic, -1)?;
                    ends.insert(topic.clone(), offsets);
                }
                let end = ends[&topic]
                    .iter()
                    .find(|(p, _)| *p == partition)
                    .map(|(_, e)| *e);
                let show = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
                let lag = current.zip(end).map(|(c, e)| e - c);
                let (member, host, client_id) = owner
                    .get(&(topic.clone(), partition))
                    .cloned()
                    .unwrap_or_else(|| ("-".into(), "-".into(), "-".into()));
                if output == Output::Json {
                    json_rows.push(serde_json::json!({
                        "topic": topic,
                        "partition": partition,
                        "committed": current,
                        "end": end,
                        "lag": lag,
                        "member": (member != "-").then_some(member),
                        "host": (host != "-").then_some(host),
                        "client_id": (client_id != "-").then_some(client_id),
                    }));
                    continue;
                }
                println!(
                    "{topic} {partition} {} {} {} {member} {host} {client_id}",
                    show(current),
                    show(end),
                    show(lag)
                );
            }
            if output == Output::Json {
                return print_json(&serde_json::json!({
                    "group": group,
                    "state": g.group_state.as_str(),
                    "protocol": g.protocol_data.as_str(),
                    "members": g.members.len(),
                    "partitions": json_rows,
                }));
            }
            Ok(())
        }
        GroupCommand::Delete { group, connection } => {
            let mut client = connection.client()?;
            let at = coordinator(&mut client, &group)?;
            let response: DeleteGroupsResponse = client.call(Some(&at), DELETE_GROUPS, |_| {
                DeleteGroupsRequest::default()
                    .with_groups_names(vec![GroupId(StrBytes::from_string(group.clone()))])
            })?;
            let code = response.results[0].error_code;
            if code != 0 {
                return Err(format!("cannot delete {group}: {}", error_text(code, None)));
            }
            println!("deleted group {group}");
            Ok(())
        }
        GroupCommand::ResetOffsets {
            group,
            topic,
            to,
            partition: only,
            connection,
        } => {
            let mut client = connection.client()?;
            let targets: Vec<(i32, i64)> = match to.as_str() {
                "earliest" => topic_offsets(&mut client, &topic, -2)?,
                "latest" => topic_offsets(&mut client, &topic, -1)?,
                n => {
                    let offset: i64 = n.parse().map_err(|_| {
                        format!("--to {n:?}: expected earliest, latest or an offset")
                    })?;
                    partition_leaders(&mut client, &topic)?
                        .into_iter()
                        .map(|(p, _)| (p, offset))
                        .collect()
                }
            };
            let targets: Vec<(i32, i64)> = targets
                .into_iter()
                .filter(|(p, _)| only.is_none_or(|o| o == *p))
                .collect();
            let at = coordinator(&mut client, &group)?;
            let response: OffsetCommitResponse = client.call(Some(&at), OFFSET_COMMIT, |_| {
                OffsetCommitRequest::default()
                    .with_group_id(GroupId(StrBytes::from_string(group.clone())))
                    .with_generation_id_or_member_epoch(-1)
                    .with_member_id(StrBytes::default())
                    .with_topics(vec![OffsetCommitRequestTopic::default()
                        .with_name(name(&topic))
                        .with_partitions(
                            targets
                                .iter()
                                .map(|(p, o)| {
                                    OffsetCommitRequestPartition::default()
                                        .with_partition_index(*p)
                                        .with_committed_offset(*o)
                                })
                                .collect(),
                        )])
            })?;
            for t in &response.topics {
                for p in &t.partitions {
                    if p.error_code != 0 {
                        return Err(format!(
                            "partition {}: {} (is the group empty?)",
                            p.partition_index,
                            error_text(p.error_code, None)
                        ));
                    }
                }
            }
            for (p, o) in targets {
                println!("{topic} {p} {o}");
            }
            Ok(())
        }
    }
}
