//! The node as the admin API shows it, assembled from the shards' latest snapshots: health,
//! topics with their partitions, consumer groups with their lag.
//!
//! Everything here is computed per request from copies (`ShardSnapshot`s); nothing reaches
//! into a shard. A node shows what it holds: on a cluster node, the partitions it has a replica
//! of and the groups it coordinates (lag needs the partition's high watermark, so it is shown
//! where this node holds a replica of the partition).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;
use sluice_core::metrics::{MetricsHub, PartitionState, ShardSnapshot};

/// The shards' snapshots, joined.
pub struct NodeView {
    pub snapshots: Vec<Arc<ShardSnapshot>>,
}

impl NodeView {
    pub fn of(hub: &MetricsHub) -> NodeView {
        NodeView {
            snapshots: hub.snapshots(),
        }
    }

    pub fn partitions(&self) -> impl Iterator<Item = &PartitionState> {
        self.snapshots.iter().flat_map(|s| s.partitions.iter())
    }

    /// (topic, partition) → high watermark, for the partitions this node holds.
    fn high_watermarks(&self) -> HashMap<(&str, i32), i64> {
        self.partitions()
            .map(|p| ((p.topic.as_str(), p.partition), p.high_watermark))
            .collect()
    }

    /// Every committed offset of every group coordinated here, with its lag where the
    /// partition's high watermark is known here: (group, topic, partition, committed, lag).
    pub fn lags(&self) -> Vec<GroupLag> {
        let high_watermarks = self.high_watermarks();
        let mut lags = Vec::new();
        for group in self.snapshots.iter().flat_map(|s| s.groups.iter()) {
            for (topic, partition, committed) in &group.offsets {
                let high_watermark = high_watermarks.get(&(topic.as_str(), *partition)).copied();
                lags.push(GroupLag {
                    group: group.group.clone(),
                    topic: topic.clone(),
                    partition: *partition,
                    committed: *committed,
                    high_watermark,
                    // A commit beyond the end (after a truncation, say) is no lag.
                    lag: high_watermark.map(|end| (end - committed).max(0)),
                });
            }
        }
        lags.sort_by(|a, b| {
            (&a.group, &a.topic, a.partition).cmp(&(&b.group, &b.topic, b.partition))
        });
        lags
    }

    /// Counts of the partitions held here by their replication state.
    pub fn partition_counts(&self) -> PartitionCounts {
        let mut counts = PartitionCounts::default();
        for p in self.partitions() {
            counts.total += 1;
            match &p.replication {
                // A single node leads every partition it has, with every replica in sync.
                None => counts.led += 1,
                Some(r) if r.leader < 0 => counts.offline += 1,
                Some(r) if r.is_leader => {
                    counts.led += 1;
                    if r.in_sync < r.replicas {
                        counts.under_replicated += 1;
                    }
                }
                Some(_) => {}
            }
        }
        counts
    }
}

/// One committed offset and how far behind the partition's end it is.
#[derive(Debug, Clone, Serialize)]
pub struct GroupLag {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub committed: i64,
    /// `None` where this node holds no replica of the partition.
    pub high_watermark: Option<i64>,
    pub lag: Option<i64>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct PartitionCounts {
    pub total: usize,
    /// Led here (every partition on a single node).
    pub led: usize,
    /// Led here with fewer replicas in sync than it has.
    pub under_replicated: usize,
    /// Held here with no leader known.
    pub offline: usize,
}

/// `GET /v1/health`.
#[derive(Debug, Serialize)]
pub struct Health {
    pub node_id: i32,
    pub ready: bool,
    pub draining: bool,
    pub shards: usize,
    pub shards_serving: usize,
    pub partitions: PartitionCounts,
    pub disk: Disk,
}

#[derive(Debug, Serialize)]
pub struct Disk {
    pub data_dir: String,
    pub total_bytes: Option<u64>,
    pub free_bytes: Option<u64>,
    /// Produce is refused below this many free bytes.
    pub free_bytes_min: u64,
    /// "ok", or "full" while produce is refused for space, or "unknown" if statvfs failed.
    pub state: &'static str,
}

impl Disk {
    pub fn of(hub: &MetricsHub) -> Disk {
        let space = sluice_storage::io::disk_space(&hub.data_dir).ok();
        let state = match space {
            None => "unknown",
            Some((_, free)) if free < hub.disk_free_bytes_min => "full",
            Some(_) => "ok",
        };
        Disk {
            data_dir: hub.data_dir.display().to_string(),
            total_bytes: space.map(|(total, _)| total),
            free_bytes: space.map(|(_, free)| free),
            free_bytes_min: hub.disk_free_bytes_min,
            state,
        }
    }
}

pub fn health(hub: &MetricsHub) -> Health {
    let view = NodeView::of(hub);
    Health {
        node_id: hub.node_id,
        ready: hub.ready(),
        draining: hub.is_draining(),
        shards: hub.shard_count(),
        shards_serving: hub.shards_serving(),
        partitions: view.partition_counts(),
        disk: Disk::of(hub),
    }
}

/// `GET /v1/topics`: the topics with partitions here.
#[derive(Debug, Serialize)]
pub struct TopicView {
    pub topic: String,
    pub partitions: Vec<PartitionView>,
    pub size_bytes: u64,
    pub records_in: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

#[derive(Debug, Serialize)]
pub struct PartitionView {
    pub partition: i32,
    /// The leader's node id (this node's on a single node), -1 if none is known.
    pub leader: i32,
    pub replicas: usize,
    /// On the leader; `None` elsewhere (a follower does not know).
    pub in_sync: Option<usize>,
    pub log_start_offset: i64,
    pub high_watermark: i64,
    pub log_end_offset: i64,
    pub size_bytes: u64,
}

pub fn topics(hub: &MetricsHub) -> Vec<TopicView> {
    let view = NodeView::of(hub);
    let mut topics: BTreeMap<&str, TopicView> = BTreeMap::new();
    for p in view.partitions() {
        let entry = topics.entry(&p.topic).or_insert_with(|| TopicView {
            topic: p.topic.clone(),
            partitions: Vec::new(),
            size_bytes: 0,
            records_in: 0,
            bytes_in: 0,
            bytes_out: 0,
        });
        entry.size_bytes += p.size_bytes;
        entry.partitions.push(PartitionView {
            partition: p.partition,
            leader: p.replication.map_or(hub.node_id, |r| r.leader),
            replicas: p.replication.map_or(1, |r| r.replicas),
            in_sync: match p.replication {
                None => Some(1),
                Some(r) if r.is_leader => Some(r.in_sync),
                Some(_) => None,
            },
            log_start_offset: p.log_start,
            high_watermark: p.high_watermark,
            log_end_offset: p.log_end,
            size_bytes: p.size_bytes,
        });
    }
    for ((topic, _), traffic) in view.snapshots.iter().flat_map(|s| s.traffic.iter()) {
        if let Some(entry) = topics.get_mut(&**topic) {
            entry.records_in += traffic.records_in;
            entry.bytes_in += traffic.bytes_in;
            entry.bytes_out += traffic.bytes_out;
        }
    }
    let mut topics: Vec<TopicView> = topics.into_values().collect();
    for t in &mut topics {
        t.partitions.sort_by_key(|p| p.partition);
    }
    topics
}

/// `GET /v1/groups`: the groups coordinated here, with their lag.
#[derive(Debug, Serialize)]
pub struct GroupView {
    pub group: String,
    pub state: String,
    pub members: usize,
    /// Summed over the partitions whose lag is known here.
    pub lag: i64,
    pub offsets: Vec<GroupLag>,
}

pub fn groups(hub: &MetricsHub) -> Vec<GroupView> {
    let view = NodeView::of(hub);
    let mut lags: HashMap<String, Vec<GroupLag>> = HashMap::new();
    for lag in view.lags() {
        lags.entry(lag.group.clone()).or_default().push(lag);
    }
    let mut groups: Vec<GroupView> = view
        .snapshots
        .iter()
        .flat_map(|s| s.groups.iter())
        .map(|g| {
            let offsets = lags.remove(&g.group).unwrap_or_default();
            GroupView {
                group: g.group.clone(),
                state: g.state.clone(),
                members: g.members,
                lag: offsets.iter().filter_map(|o| o.lag).sum(),
                offsets,
            }
        })
        .collect();
    groups.sort_by(|a, b| a.group.cmp(&b.group));
    groups
}

/// `GET /v1/latency`: request latency per API, summed over the shards, as cumulative buckets
/// (`le` in seconds, the last one `"+Inf"`), for consoles that compute quantiles between two
/// polls.
#[derive(Debug, Serialize)]
pub struct LatencyView {
    pub count: u64,
    pub sum: f64,
    pub buckets: Vec<(serde_json::Value, u64)>,
}

pub fn latency(hub: &MetricsHub) -> BTreeMap<String, LatencyView> {
    let view = NodeView::of(hub);
    let mut per_api: BTreeMap<i16, sluice_storage::metrics::Histogram> = BTreeMap::new();
    for (api, stats) in view.snapshots.iter().flat_map(|s| s.requests.iter()) {
        match per_api.get_mut(api) {
            Some(sum) => sum.merge(&stats.latency),
            None => {
                per_api.insert(*api, stats.latency.clone());
            }
        }
    }
    per_api
        .into_iter()
        .map(|(api, histogram)| {
            let name = crate::exposition::api_name(api);
            let buckets = histogram
                .cumulative()
                .into_iter()
                .map(|(bound, count)| {
                    let le = if bound.is_finite() {
                        serde_json::json!(bound)
                    } else {
                        serde_json::json!("+Inf")
                    };
                    (le, count)
                })
                .collect();
            (
                name,
                LatencyView {
                    count: histogram.count(),
                    sum: histogram.sum(),
                    buckets,
                },
            )
        })
        .collect()
}
