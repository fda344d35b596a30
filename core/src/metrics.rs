//! What a shard counts on the data path, the snapshot it publishes of its state, and the
//! node-wide hub the admin listener reads.
//!
//! A shard is one thread: its counters ([`ShardMetrics`]) are plain cells that the request path
//! bumps without atomics or locks. Once per [`PUBLISH_INTERVAL`] a task on the shard copies
//! them, with what it reads from its partitions, consumer groups and storage, into a
//! [`ShardSnapshot`] and hands it to the [`MetricsHub`]: the only place another thread (the
//! admin listener's) reads shard state, behind a mutex the data path never takes.
//!
//! Invariants: counters only grow while the process lives (Prometheus derives rates from
//! them); a snapshot is a self-contained copy, never a view into live state; a scrape sees
//! every shard's latest snapshot, so values are at most one interval old.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_storage::metrics::Histogram;

use crate::client_telemetry::ClientTelemetry;
use crate::shard::Shard;

/// How often each shard publishes its snapshot.
pub const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

/// One API's requests on one shard.
#[derive(Debug, Clone)]
pub struct RequestStats {
    /// Seconds from the request's frame being read to its response being ready.
    pub latency: Histogram,
}

/// What produce and fetch moved for one partition, counted on the shard that served the
/// connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Records and bytes of batches a Produce appended (answered without error).
    pub records_in: u64,
    pub bytes_in: u64,
    /// Record bytes Fetch responses carried to consumers.
    pub bytes_out: u64,
}

/// A shard's counters, bumped on the data path.
#[derive(Debug, Default)]
pub struct ShardMetrics {
    requests: RefCell<HashMap<i16, RequestStats>>,
    /// (API key, Kafka error code) → responses (or partitions of a response) with that error.
    errors: RefCell<HashMap<(i16, i16), u64>>,
    /// Topic → partition → traffic (keyed by topic first so a lookup by `&str` allocates
    /// nothing).
    traffic: RefCell<HashMap<Arc<str>, HashMap<i32, Traffic>>>,
    /// Connections this shard accepted, and those still open.
    pub connections_accepted: Cell<u64>,
    pub connections_open: Cell<u64>,
    /// Connections closed on an error: what the client sent (a bad frame, an unknown API, an
    /// undecodable request) or an I/O error.
    pub connections_failed: Cell<u64>,
    /// Times a replica on this shard became its partition's leader.
    pub leader_elections: Cell<u64>,
    /// Raft groups this shard holds a replica of, and those of them quiet (see
    /// `replication/src/replica.rs`), as of the last tick.
    pub raft_groups: Cell<u64>,
    pub raft_groups_quiet: Cell<u64>,
    /// Replication steps this shard took, and the Raft groups they looked at together.
    pub raft_steps: Cell<u64>,
    pub raft_step_groups: Cell<u64>,
    /// Transaction markers this shard's coordinators tried again (the partition's leader did
    /// not answer, refused the write for now, or was being elected).
    pub txn_marker_retries: Cell<u64>,
}

impl ShardMetrics {
    /// One request of `api` answered after `elapsed`.
    pub fn record_request(&self, api: i16, elapsed: Duration) {
        self.requests
            .borrow_mut()
            .entry(api)
            .or_insert_with(|| RequestStats {
                latency: Histogram::latency(),
            })
            .latency
            .observe_duration(elapsed);
    }

    /// A response (or one partition of it) of `api` carried error `code` (non-zero).
    pub fn record_error(&self, api: i16, code: i16) {
        if code != 0 {
            *self.errors.borrow_mut().entry((api, code)).or_default() += 1;
        }
    }

    /// A produce appended `records` records in `bytes` bytes to `topic`-`partition`.
    pub fn record_produced(&self, topic: &str, partition: i32, records: u64, bytes: u64) {
        self.with_traffic(topic, partition, |t| {
            t.records_in += records;
            t.bytes_in += bytes;
        });
    }

    /// A fetch response carried `bytes` record bytes of `topic`-`partition`.
    pub fn record_fetched(&self, topic: &str, partition: i32, bytes: u64) {
        if bytes > 0 {
            self.with_traffic(topic, partition, |t| t.bytes_out += bytes);
        }
    }

    fn with_traffic(&self, topic: &str, partition: i32, change: impl FnOnce(&mut Traffic)) {
        let mut traffic = self.traffic.borrow_mut();
        // An Arc is allocated only for a topic's first traffic on this shard.
        let partitions = match traffic.get_mut(topic) {
            Some(partitions) => partitions,
            None => traffic.entry(Arc::from(topic)).or_default(),
        };
        change(partitions.entry(partition).or_default());
    }

    /// A connection closed on an error.
    pub fn connection_failed(&self) {
        self.connections_failed
            .set(self.connections_failed.get() + 1);
    }

    /// A connection was accepted; the guard counts it open until dropped.
    pub fn connection_opened(self: &std::rc::Rc<Self>) -> OpenConnection {
        self.connections_accepted
            .set(self.connections_accepted.get() + 1);
        self.connections_open.set(self.connections_open.get() + 1);
        OpenConnection(self.clone())
    }
}

/// Counts a connection as open while it lives.
pub struct OpenConnection(std::rc::Rc<ShardMetrics>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0
            .connections_open
            .set(self.0.connections_open.get() - 1);
    }
}

/// One partition this shard holds, as the snapshot saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    pub topic: String,
    pub partition: i32,
    pub log_start: i64,
    pub high_watermark: i64,
    pub log_end: i64,
    pub size_bytes: u64,
    /// Cluster mode only.
    pub replication: Option<ReplicaState>,
}

/// A replicated partition as its replica on this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaState {
    /// The leader's node id, -1 when none is known (the partition is offline here).
    pub leader: i32,
    pub is_leader: bool,
    pub replicas: usize,
    /// On the leader: replicas in sync, itself included.
    pub in_sync: usize,
}

/// A consumer group this shard coordinates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSnapshot {
    pub group: String,
    pub state: String,
    pub members: usize,
    /// (topic, partition, committed offset).
    pub offsets: Vec<(String, i32, i64)>,
}

/// A copy of one shard's metrics and state.
#[derive(Debug, Clone)]
pub struct ShardSnapshot {
    pub shard: usize,
    pub requests: Vec<(i16, RequestStats)>,
    pub errors: Vec<((i16, i16), u64)>,
    pub traffic: Vec<((Arc<str>, i32), Traffic)>,
    pub partitions: Vec<PartitionState>,
    pub groups: Vec<GroupSnapshot>,
    /// Transactional ids this shard coordinates, by state (Kafka's names; states with none
    /// left out).
    pub transactions: Vec<(&'static str, u64)>,
    pub txn_marker_retries: u64,
    pub connections_accepted: u64,
    pub connections_open: u64,
    pub connections_failed: u64,
    pub requests_in_flight: u64,
    pub leader_elections: u64,
    pub raft_groups: u64,
    pub raft_groups_quiet: u64,
    pub raft_steps: u64,
    pub raft_step_groups: u64,
    pub fdatasync_seconds: Histogram,
    /// Durability rounds shared by the shard's partitions, and partitions they made durable.
    pub sync_rounds: u64,
    pub sync_round_partitions: u64,
    pub write_buffer: sluice_storage::WriteBudgetStats,
}

impl Shard {
    /// Copies this shard's counters and state; `requests_in_flight` comes from the listener.
    pub fn metrics_snapshot(&self, requests_in_flight: u64) -> ShardSnapshot {
        let image = self.image();
        let partitions = self
            .open_partitions()
            .into_iter()
            .filter_map(|((topic_id, index), partition)| {
                let topic = image.topic_by_id(topic_id)?;
                let log = partition.log();
                let replication = partition.replica().map(|link| ReplicaState {
                    leader: link.leader_id(),
                    is_leader: link.is_leader(),
                    replicas: self
                        .replicas_of(&image, &topic.name, index)
                        .map_or(1, <[i32]>::len),
                    in_sync: link.in_sync_count(),
                });
                Some(PartitionState {
                    topic: topic.name.clone(),
                    partition: index,
                    log_start: log.log_start_offset().0,
                    high_watermark: partition.high_watermark().0,
                    log_end: log.log_end_offset().0,
                    size_bytes: log.size_bytes(),
                    replication,
                })
            })
            .collect();
        let sync = self
            .sync_group
            .as_ref()
            .map(|g| g.stats())
            .unwrap_or_default();
        let m = &self.metrics;
        // A deleted topic's counters go with it (its series end; a topic created again under
        // the name starts from zero, a counter reset Prometheus' rate() handles).
        m.traffic
            .borrow_mut()
            .retain(|topic, _| image.topic(topic).is_some());
        ShardSnapshot {
            shard: self.id,
            requests: m
                .requests
                .borrow()
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .collect(),
            errors: m.errors.borrow().iter().map(|(k, v)| (*k, *v)).collect(),
            traffic: m
                .traffic
                .borrow()
                .iter()
                .flat_map(|(topic, partitions)| {
                    partitions.iter().map(|(p, t)| ((topic.clone(), *p), *t))
                })
                .collect(),
            partitions,
            groups: self.groups.snapshot(),
            transactions: self.transactions.snapshot(),
            txn_marker_retries: m.txn_marker_retries.get(),
            connections_accepted: m.connections_accepted.get(),
            connections_open: m.connections_open.get(),
            connections_failed: m.connections_failed.get(),
            requests_in_flight,
            leader_elections: m.leader_elections.get(),
            raft_groups: m.raft_groups.get(),
            raft_groups_quiet: m.raft_groups_quiet.get(),
            raft_steps: m.raft_steps.get(),
            raft_step_groups: m.raft_step_groups.get(),
            fdatasync_seconds: sluice_storage::metrics::durability_snapshot().fdatasync_seconds,
            sync_rounds: sync.rounds,
            sync_round_partitions: sync.logs_synced,
            write_buffer: self.write_budget.stats(),
        }
    }
}

/// Where shards publish their snapshots and the node's lifecycle, for the admin listener.
#[derive(Debug)]
pub struct MetricsHub {
    pub node_id: i32,
    pub data_dir: PathBuf,
    /// Produce is refused below this many free bytes (`disk_free_bytes_min`).
    pub disk_free_bytes_min: u64,
    shards: Mutex<Vec<Option<Arc<ShardSnapshot>>>>,
    shard_count: usize,
    serving: AtomicUsize,
    draining: AtomicBool,
    /// KIP-714: the node's client-metrics subscription and what clients pushed.
    pub client_telemetry: Arc<ClientTelemetry>,
}

impl MetricsHub {
    pub fn new(
        node_id: i32,
        data_dir: PathBuf,
        shard_count: usize,
        disk_free_bytes_min: u64,
    ) -> MetricsHub {
        MetricsHub {
            node_id,
            data_dir,
            disk_free_bytes_min,
            shards: Mutex::new(vec![None; shard_count]),
            shard_count,
            serving: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            client_telemetry: Arc::new(ClientTelemetry::unsubscribed()),
        }
    }

    /// The hub with `telemetry` as the node's client-metrics subscription.
    pub fn with_client_telemetry(mut self, telemetry: ClientTelemetry) -> MetricsHub {
        self.client_telemetry = Arc::new(telemetry);
        self
    }

    pub fn shard_count(&self) -> usize {
        self.shard_count
    }

    /// Stores a shard's latest snapshot.
    pub fn publish(&self, snapshot: ShardSnapshot) {
        let mut shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = shards.get_mut(snapshot.shard) {
            *slot = Some(Arc::new(snapshot));
        }
    }

    /// Every shard's latest snapshot (shards that have not published yet are missing).
    pub fn snapshots(&self) -> Vec<Arc<ShardSnapshot>> {
        self.shards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// A shard accepts connections.
    pub fn shard_serving(&self) {
        self.serving.fetch_add(1, Ordering::AcqRel);
    }

    /// Shutdown began: the node no longer takes new work.
    pub fn draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Every shard serves and the node is not shutting down.
    pub fn ready(&self) -> bool {
        self.shards_serving() >= self.shard_count && !self.draining.load(Ordering::Acquire)
    }

    pub fn shards_serving(&self) -> usize {
        self.serving.load(Ordering::Acquire)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

/// Publishes the shard's snapshot every [`PUBLISH_INTERVAL`] until `stop` resolves (the
/// listener passes the number of requests it is answering).
pub async fn publish_loop(
    shard: std::rc::Rc<Shard>,
    hub: Arc<MetricsHub>,
    in_flight: impl Fn() -> u64,
) {
    loop {
        hub.publish(shard.metrics_snapshot(in_flight()));
        glommio::timer::sleep(PUBLISH_INTERVAL).await;
    }
}

/// Kafka's name for an error code (`NOT_LEADER_OR_FOLLOWER`, ...), or the number.
pub fn kafka_error_name(code: i16) -> String {
    let Some(error) = kafka_protocol::ResponseError::try_from_code(code) else {
        return code.to_string();
    };
    let camel = format!("{error:?}");
    if !camel.chars().all(|c| c.is_ascii_alphanumeric()) {
        return code.to_string(); // `Unknown(code)`: a code this Kafka version does not name
    }
    upper_snake_case(&camel)
}

/// `TransactionalId` as Kafka's Java enums spell it: `TRANSACTIONAL_ID`.
pub fn upper_snake_case(camel: &str) -> String {
    let mut snake = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            snake.push('_');
        }
        snake.push(c.to_ascii_uppercase());
    }
    snake
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_have_kafka_names() {
        assert_eq!(kafka_error_name(6), "NOT_LEADER_OR_FOLLOWER");
        assert_eq!(kafka_error_name(56), "KAFKA_STORAGE_ERROR");
        assert_eq!(kafka_error_name(30_000), "30000");
    }

    #[test]
    fn traffic_adds_up_per_partition() {
        let m = ShardMetrics::default();
        m.record_produced("t", 0, 3, 300);
        m.record_produced("t", 0, 2, 200);
        m.record_produced("t", 1, 1, 10);
        m.record_fetched("t", 0, 500);
        m.record_fetched("u", 0, 0);
        let traffic = m.traffic.borrow();
        assert_eq!(traffic.len(), 1, "a fetch of nothing adds no topic");
        assert_eq!(traffic["t"].len(), 2);
        assert_eq!(
            traffic["t"][&0],
            Traffic {
                records_in: 5,
                bytes_in: 500,
                bytes_out: 500
            }
        );
    }

    #[test]
    fn success_is_not_an_error() {
        let m = ShardMetrics::default();
        m.record_error(0, 0);
        m.record_error(0, 6);
        m.record_error(0, 6);
        assert_eq!(m.errors.borrow().get(&(0, 6)), Some(&2));
        assert_eq!(m.errors.borrow().len(), 1);
    }

    #[test]
    fn a_node_is_ready_once_every_shard_serves_and_until_it_drains() {
        let hub = MetricsHub::new(0, PathBuf::from("."), 2, 0);
        assert!(!hub.ready());
        hub.shard_serving();
        assert!(!hub.ready());
        hub.shard_serving();
        assert!(hub.ready());
        hub.draining();
        assert!(!hub.ready());
    }
}
