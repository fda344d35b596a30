//! `sluice txn`: transactions as an operator sees them, Kafka's `kafka-transactions.sh` over
//! the protocol (so it works against any Kafka-compatible broker):
//!
//! - `list`: every transactional id with its producer and state (ListTransactions, asked of
//!   every broker: each lists the ids it coordinates);
//! - `describe ID`: one id's producer, epoch, timeout, start and partitions
//!   (FindCoordinator for the id, then DescribeTransactions there);
//! - `producers TOPIC`: each partition's active producers, with the first offset of an open
//!   transaction (DescribeProducers to each leader);
//! - `find-hanging --topic T`: open transactions on a topic's partitions that no coordinator
//!   will end: the partition's producer has a transaction open there, older than
//!   `--older-than-ms`, and the coordinator knows no Ongoing transaction of that producer
//!   holding the partition. Such a transaction holds read_committed consumers (and the last
//!   stable offset) back for good;
//! - `abort --topic T --partition P --start-offset O`: ends such a transaction with an abort
//!   marker (WriteTxnMarkers to the partition's leader, with the producer id, epoch and
//!   coordinator epoch DescribeProducers shows), as `kafka-transactions.sh abort` does.

use std::collections::BTreeMap;

use kafka_protocol::messages::describe_producers_request::TopicRequest;
use kafka_protocol::messages::describe_producers_response::ProducerState;
use kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use kafka_protocol::messages::{
    ApiKey, DescribeProducersRequest, DescribeProducersResponse, DescribeTransactionsRequest,
    DescribeTransactionsResponse, ListTransactionsRequest, ListTransactionsResponse, ProducerId,
    TransactionalId, WriteTxnMarkersRequest, WriteTxnMarkersResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::client::{ApiUse, Client, Result};
use super::{
    coordinator_of, error_text, name, partition_leaders, print_json, Connection, CoordinatorKey,
    Output,
};
use sluice_storage::types::now_ms;

const LIST_TRANSACTIONS: ApiUse = ApiUse {
    key: ApiKey::ListTransactions,
    min: 0,
    max: 2,
};
const DESCRIBE_TRANSACTIONS: ApiUse = ApiUse {
    key: ApiKey::DescribeTransactions,
    min: 0,
    max: 0,
};
const DESCRIBE_PRODUCERS: ApiUse = ApiUse {
    key: ApiKey::DescribeProducers,
    min: 0,
    max: 0,
};
const WRITE_TXN_MARKERS: ApiUse = ApiUse {
    key: ApiKey::WriteTxnMarkers,
    min: 1,
    max: 1,
};

/// Kafka's `transaction.max.timeout.ms` default: no producer may keep a transaction open
/// longer, so one open longer is not any producer's doing.
const MAX_TRANSACTION_TIMEOUT_MS: u64 = 900_000;

#[derive(Debug, clap::Subcommand)]
pub enum TxnCommand {
    /// Every transactional id, with its producer id and state (`kafka-transactions.sh list`).
    List {
        /// Only ids in this state (repeatable): Empty, Ongoing, PrepareCommit, PrepareAbort,
        /// CompleteCommit, CompleteAbort.
        #[arg(long = "state", value_name = "STATE")]
        states: Vec<String>,
        /// Only ids of this producer id (repeatable).
        #[arg(long = "producer-id", value_name = "ID")]
        producer_ids: Vec<i64>,
        /// Only transactions started more than MS milliseconds ago.
        #[arg(long, value_name = "MS")]
        duration_ms: Option<i64>,
        /// Only ids the regular expression matches whole.
        #[arg(long, value_name = "REGEX")]
        pattern: Option<String>,
        #[command(flatten)]
        connection: Connection,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// One transactional id: producer id and epoch, state, timeout, start, partitions.
    Describe {
        transactional_id: String,
        #[command(flatten)]
        connection: Connection,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// The active producers of a topic's partitions, with each open transaction's first
    /// offset (`kafka-transactions.sh describe-producers`).
    Producers {
        topic: String,
        /// Only this partition.
        #[arg(long, value_name = "N")]
        partition: Option<i32>,
        #[command(flatten)]
        connection: Connection,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Open transactions on a topic's partitions that no coordinator will end (they hold
    /// read_committed consumers back); end them with `sluice txn abort`.
    FindHanging {
        #[arg(long)]
        topic: String,
        /// Only this partition.
        #[arg(long, value_name = "N")]
        partition: Option<i32>,
        /// Only transactions whose producer last wrote more than MS milliseconds ago.
        #[arg(long, value_name = "MS", default_value_t = MAX_TRANSACTION_TIMEOUT_MS)]
        older_than_ms: u64,
        #[command(flatten)]
        connection: Connection,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Aborts the open transaction that starts at --start-offset on one partition (as
    /// `kafka-transactions.sh abort`): for a hanging transaction, not one a producer is
    /// still running.
    Abort {
        #[arg(long)]
        topic: String,
        #[arg(long, value_name = "N")]
        partition: i32,
        /// The transaction's first offset (`sluice txn producers` or `find-hanging` show it).
        #[arg(long, value_name = "OFFSET")]
        start_offset: i64,
        #[command(flatten)]
        connection: Connection,
    },
}

pub fn txn(command: TxnCommand) -> Result<()> {
    match command {
        TxnCommand::List {
            states,
            producer_ids,
            duration_ms,
            pattern,
            connection,
            output,
        } => list(
            &mut connection.client()?,
            &states,
            &producer_ids,
            duration_ms,
            pattern,
            output,
        ),
        TxnCommand::Describe {
            transactional_id,
            connection,
            output,
        } => describe(&mut connection.client()?, &transactional_id, output),
        TxnCommand::Producers {
            topic,
            partition,
            connection,
            output,
        } => {
            let producers = producers(&mut connection.client()?, &topic, partition)?;
            print_producers(&topic, &producers, output)
        }
        TxnCommand::FindHanging {
            topic,
            partition,
            older_than_ms,
            connection,
            output,
        } => find_hanging(
            &mut connection.client()?,
            &topic,
            partition,
            older_than_ms,
            output,
        ),
        TxnCommand::Abort {
            topic,
            partition,
            start_offset,
            connection,
        } => abort(&mut connection.client()?, &topic, partition, start_offset),
    }
}

/// One transactional id as ListTransactions names it.
struct Listed {
    id: String,
    producer_id: i64,
    state: String,
}

fn list_all(
    client: &mut Client,
    states: &[String],
    producer_ids: &[i64],
    duration_ms: Option<i64>,
    pattern: Option<String>,
) -> Result<Vec<Listed>> {
    let mut listed = Vec::new();
    for (node, address) in client.all_brokers()? {
        // A node that cannot be reached (stopped, killed and not yet fenced out of Metadata)
        // coordinates nothing until it is back: said, and skipped.
        if let Err(e) = client.reach(&address) {
            eprintln!("node {node}: {e}; its transactions are not listed");
            continue;
        }
        let response: ListTransactionsResponse =
            client.call(Some(&address), LIST_TRANSACTIONS, |version| {
                if version < 1 && duration_ms.is_some() {
                    eprintln!("{address}: no ListTransactions v1; --duration-ms is not applied");
                }
                ListTransactionsRequest::default()
                    .with_state_filters(
                        states
                            .iter()
                            .map(|s| StrBytes::from_string(s.clone()))
                            .collect(),
                    )
                    .with_producer_id_filters(producer_ids.iter().map(|p| ProducerId(*p)).collect())
                    .with_duration_filter(duration_ms.unwrap_or(-1))
                    .with_transactional_id_pattern(pattern.clone().map(StrBytes::from_string))
            })?;
        if response.error_code != 0 {
            return Err(format!(
                "{address}: {}",
                error_text(response.error_code, None)
            ));
        }
        if let Some(unknown) = response.unknown_state_filters.first() {
            return Err(format!(
                "--state {}: not a transaction state the broker knows",
                unknown.as_str()
            ));
        }
        listed.extend(response.transaction_states.iter().map(|t| Listed {
            id: t.transactional_id.0.to_string(),
            producer_id: t.producer_id.0,
            state: t.transaction_state.to_string(),
        }));
    }
    listed.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(listed)
}

fn list(
    client: &mut Client,
    states: &[String],
    producer_ids: &[i64],
    duration_ms: Option<i64>,
    pattern: Option<String>,
    output: Output,
) -> Result<()> {
    let listed = list_all(client, states, producer_ids, duration_ms, pattern)?;
    if output == Output::Json {
        return print_json(&serde_json::json!(listed
            .iter()
            .map(|t| serde_json::json!({
                "transactional_id": t.id,
                "producer_id": t.producer_id,
                "state": t.state,
            }))
            .collect::<Vec<_>>()));
    }
    println!("TRANSACTIONAL-ID PRODUCER-ID STATE");
    for t in listed {
        println!("{} {} {}", t.id, t.producer_id, t.state);
    }
    Ok(())
}

/// One transactional id as its coordinator describes it.
struct Described {
    state: String,
    producer_id: i64,
    producer_epoch: i16,
    timeout_ms: i32,
    start_ms: i64,
    partitions: Vec<(String, i32)>,
}

fn describe_one(client: &mut Client, transactional_id: &str) -> Result<Described> {
    let at = coordinator_of(client, CoordinatorKey::Transaction, transactional_id)?;
    let response: DescribeTransactionsResponse =
        client.call(Some(&at), DESCRIBE_TRANSACTIONS, |_| {
            DescribeTransactionsRequest::default().with_transactional_ids(vec![TransactionalId(
                StrBytes::from_string(transactional_id.to_string()),
            )])
        })?;
    let state = response
        .transaction_states
        .first()
        .ok_or_else(|| format!("{at}: DescribeTransactions answered no state"))?;
    if state.error_code != 0 {
        return Err(format!(
            "{transactional_id}: {}",
            error_text(state.error_code, None)
        ));
    }
    Ok(Described {
        state: state.transaction_state.to_string(),
        producer_id: state.producer_id.0,
        producer_epoch: state.producer_epoch,
        timeout_ms: state.transaction_timeout_ms,
        start_ms: state.transaction_start_time_ms,
        partitions: state
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(move |p| (t.topic.0.to_string(), *p))
            })
            .collect(),
    })
}

fn describe(client: &mut Client, transactional_id: &str, output: Output) -> Result<()> {
    let d = describe_one(client, transactional_id)?;
    if output == Output::Json {
        return print_json(&serde_json::json!({
            "transactional_id": transactional_id,
            "state": d.state,
            "producer_id": d.producer_id,
            "producer_epoch": d.producer_epoch,
            "timeout_ms": d.timeout_ms,
            "start_ms": (d.start_ms >= 0).then_some(d.start_ms),
            "partitions": d.partitions.iter()
                .map(|(t, p)| serde_json::json!({ "topic": t, "partition": p }))
                .collect::<Vec<_>>(),
        }));
    }
    println!(
        "transactional id {transactional_id} state {} producer {} epoch {} timeout {} ms",
        d.state, d.producer_id, d.producer_epoch, d.timeout_ms
    );
    if d.start_ms >= 0 {
        println!(
            "started {} ms ago",
            now_ms().saturating_sub(d.start_ms).max(0)
        );
    }
    for (topic, partition) in &d.partitions {
        println!("{topic} {partition}");
    }
    Ok(())
}

/// Each partition's active producers, as its leader answers DescribeProducers.
fn producers(
    client: &mut Client,
    topic: &str,
    only: Option<i32>,
) -> Result<BTreeMap<i32, Vec<ProducerState>>> {
    let mut by_leader: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for (partition, leader) in partition_leaders(client, topic)? {
        if only.is_none_or(|o| o == partition) {
            by_leader.entry(leader).or_default().push(partition);
        }
    }
    if by_leader.is_empty() {
        return Err(format!("{topic} has no partition {}", only.unwrap_or(-1)));
    }
    let mut out = BTreeMap::new();
    for (leader, partitions) in by_leader {
        let response: DescribeProducersResponse =
            client.call(Some(&leader), DESCRIBE_PRODUCERS, |_| {
                DescribeProducersRequest::default().with_topics(vec![TopicRequest::default()
                    .with_name(name(topic))
                    .with_partition_indexes(partitions.clone())])
            })?;
        for t in &response.topics {
            for p in &t.partitions {
                if p.error_code != 0 {
                    return Err(format!(
                        "{topic} {}: {}",
                        p.partition_index,
                        error_text(p.error_code, p.error_message.as_ref())
                    ));
                }
                out.insert(p.partition_index, p.active_producers.clone());
            }
        }
    }
    Ok(out)
}

fn print_producers(
    topic: &str,
    producers: &BTreeMap<i32, Vec<ProducerState>>,
    output: Output,
) -> Result<()> {
    if output == Output::Json {
        let rows: Vec<serde_json::Value> = producers
            .iter()
            .flat_map(|(partition, list)| {
                list.iter().map(move |s| {
                    serde_json::json!({
                        "topic": topic,
                        "partition": partition,
                        "producer_id": s.producer_id.0,
                        "producer_epoch": s.producer_epoch,
                        "last_sequence": s.last_sequence,
                        "last_timestamp": s.last_timestamp,
                        "coordinator_epoch": s.coordinator_epoch,
                        "txn_start_offset": (s.current_txn_start_offset >= 0)
                            .then_some(s.current_txn_start_offset),
                    })
                })
            })
            .collect();
        return print_json(&serde_json::json!(rows));
    }
    println!("PARTITION PRODUCER-ID EPOCH LAST-SEQUENCE LAST-TIMESTAMP COORDINATOR-EPOCH TXN-START-OFFSET");
    for (partition, list) in producers {
        for s in list {
            let start = if s.current_txn_start_offset >= 0 {
                s.current_txn_start_offset.to_string()
            } else {
                "-".to_string()
            };
            println!(
                "{partition} {} {} {} {} {} {start}",
                s.producer_id.0,
                s.producer_epoch,
                s.last_sequence,
                s.last_timestamp,
                s.coordinator_epoch
            );
        }
    }
    Ok(())
}

fn find_hanging(
    client: &mut Client,
    topic: &str,
    only: Option<i32>,
    older_than_ms: u64,
    output: Output,
) -> Result<()> {
    let now = now_ms();
    let mut open: Vec<(i32, ProducerState)> = producers(client, topic, only)?
        .into_iter()
        .flat_map(|(partition, list)| list.into_iter().map(move |s| (partition, s)))
        .filter(|(_, s)| {
            s.current_txn_start_offset >= 0
                && now.saturating_sub(s.last_timestamp) > older_than_ms as i64
        })
        .collect();
    if !open.is_empty() {
        // Open transactions a coordinator still runs (Ongoing, with this partition) are not
        // hanging: their producer or the coordinator's timeout ends them.
        let producer_ids: Vec<i64> = open.iter().map(|(_, s)| s.producer_id.0).collect();
        let listed = list_all(client, &[], &producer_ids, None, None)?;
        let mut running: Vec<(i64, String, i32)> = Vec::new();
        for t in listed.iter().filter(|t| t.state == "Ongoing") {
            if let Ok(d) = describe_one(client, &t.id) {
                if d.state == "Ongoing" {
                    running.extend(
                        d.partitions
                            .into_iter()
                            .map(|(tp, p)| (d.producer_id, tp, p)),
                    );
                }
            }
        }
        open.retain(|(partition, s)| {
            !running
                .iter()
                .any(|(id, tp, p)| *id == s.producer_id.0 && tp == topic && p == partition)
        });
    }
    if output == Output::Json {
        return print_json(&serde_json::json!(open
            .iter()
            .map(|(partition, s)| serde_json::json!({
                "topic": topic,
                "partition": partition,
                "producer_id": s.producer_id.0,
                "producer_epoch": s.producer_epoch,
                "coordinator_epoch": s.coordinator_epoch,
                "start_offset": s.current_txn_start_offset,
                "last_timestamp": s.last_timestamp,
            }))
            .collect::<Vec<_>>()));
    }
    println!("TOPIC PARTITION PRODUCER-ID EPOCH START-OFFSET LAST-WRITE-MS-AGO");
    for (partition, s) in &open {
        println!(
            "{topic} {partition} {} {} {} {}",
            s.producer_id.0,
            s.producer_epoch,
            s.current_txn_start_offset,
            now.saturating_sub(s.last_timestamp)
        );
    }
    Ok(())
}

fn abort(client: &mut Client, topic: &str, partition: i32, start_offset: i64) -> Result<()> {
    let states = producers(client, topic, Some(partition))?;
    let producer = states
        .get(&partition)
        .and_then(|list| {
            list.iter()
                .find(|s| s.current_txn_start_offset == start_offset)
        })
        .cloned()
        .ok_or_else(|| {
            format!("{topic} {partition}: no open transaction starts at offset {start_offset}")
        })?;
    let leader = partition_leaders(client, topic)?
        .into_iter()
        .find(|(p, _)| *p == partition)
        .map(|(_, leader)| leader)
        .ok_or_else(|| format!("{topic} has no partition {partition}"))?;
    let epoch = i16::try_from(producer.producer_epoch)
        .map_err(|_| format!("producer epoch {} out of range", producer.producer_epoch))?;
    let response: WriteTxnMarkersResponse =
        client.call(Some(&leader), WRITE_TXN_MARKERS, |_| {
            WriteTxnMarkersRequest::default().with_markers(vec![WritableTxnMarker::default()
                .with_producer_id(producer.producer_id)
                .with_producer_epoch(epoch)
                .with_transaction_result(false)
                .with_coordinator_epoch(producer.coordinator_epoch.max(0))
                .with_topics(vec![WritableTxnMarkerTopic::default()
                    .with_name(name(topic))
                    .with_partition_indexes(vec![partition])])])
        })?;
    for marker in &response.markers {
        for t in &marker.topics {
            for p in &t.partitions {
                if p.error_code != 0 {
                    return Err(format!(
                        "{topic} {partition}: the abort marker was refused: {}",
                        error_text(p.error_code, None)
                    ));
                }
            }
        }
    }
    println!(
        "aborted the transaction of producer {} (epoch {epoch}) on {topic} {partition} from offset {start_offset}",
        producer.producer_id.0
    );
    Ok(())
}
