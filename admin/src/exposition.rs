//! `GET /metrics`: the node's metrics in the Prometheus/OpenMetrics text format, encoded by
//! `prometheus-client` from the shards' latest snapshots at each scrape.
//!
//! Names follow Prometheus conventions: a `sluice_` prefix, base units (`_seconds`, `_bytes`),
//! counters exposed with `_total`. Per-shard series carry a `shard` label; traffic and sizes
//! are per topic, or per topic and partition with `per_partition` (more series: a switch, as
//! thousands of partitions make thousands of series). Metrics clients pushed (KIP-714) follow as
//! `sluice_client_*` families labelled by client. docs/operations.md lists every metric.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use sluice_core::client_telemetry::{ClientTelemetry, SeriesKind};
use sluice_core::metrics::{kafka_error_name, MetricsHub, Traffic};
use sluice_storage::metrics::Histogram;

use crate::views::{Disk, NodeView};

type Labels = Vec<(&'static str, String)>;

/// Encodes the node's metrics at each scrape.
#[derive(Debug)]
pub struct NodeCollector {
    pub hub: Arc<MetricsHub>,
    pub per_partition: bool,
}

/// A registry holding the node's collector.
pub fn registry(collector: NodeCollector) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector));
    registry
}

/// The OpenMetrics text exposition of `registry`.
pub fn render(registry: &Registry) -> Result<String, fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    // Both formats spell the last bucket's bound `+Inf` (the encoder writes Rust's `inf`).
    Ok(out.replace("le=\"inf\"", "le=\"+Inf\""))
}

/// The same exposition in Prometheus' classic text format (0.0.4), for scrapers that do not
/// ask for OpenMetrics (`promtool check metrics`, curl, older agents): the two differ only in
/// that OpenMetrics names a counter family without its `_total` suffix, and in the `# UNIT`
/// and `# EOF` lines, which the classic format lacks. Content negotiation as Prometheus' own
/// Go client does it.
pub fn to_classic_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // A family's HELP line comes before its TYPE line: held until the type is known.
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some(held) = help.replace(rest) {
                push_line(&mut out, "# HELP ", held, "");
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let suffix = if kind == "counter" { "_total" } else { "" };
            if let Some(held) = help.take() {
                let text = held.strip_prefix(name).unwrap_or(held);
                out.push_str("# HELP ");
                out.push_str(name);
                push_line(&mut out, suffix, text, "");
            }
            out.push_str("# TYPE ");
            out.push_str(name);
            push_line(&mut out, suffix, " ", kind);
            continue;
        }
        if let Some(held) = help.take() {
            push_line(&mut out, "# HELP ", held, "");
        }
        push_line(&mut out, "", line, "");
    }
    out
}

fn push_line(out: &mut String, a: &str, b: &str, c: &str) {
    out.push_str(a);
    out.push_str(b);
    out.push_str(c);
    out.push('\n');
}

/// One histogram series, as `prometheus-client` encodes it.
struct HistogramSample<'a>(&'a Histogram);

impl EncodeMetric for HistogramSample<'_> {
    fn encode(&self, mut encoder: prometheus_client::encoding::MetricEncoder) -> fmt::Result {
        encoder.encode_histogram::<NoLabelSet>(
            self.0.sum(),
            self.0.count(),
            &self.0.buckets(),
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, u64)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        if labels.is_empty() {
            family.encode_counter::<NoLabelSet, u64, u64>(&value, None)?;
        } else {
            family
                .encode_family(&labels)?
                .encode_counter::<NoLabelSet, u64, u64>(&value, None)?;
        }
    }
    Ok(())
}

fn gauges(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, i64)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        if labels.is_empty() {
            family.encode_gauge(&value)?;
        } else {
            family.encode_family(&labels)?.encode_gauge(&value)?;
        }
    }
    Ok(())
}

fn histograms<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, &'a Histogram)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, histogram) in samples {
        HistogramSample(histogram).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Kafka's name for an API key (`Produce`, `Fetch`, ...), or the number.
pub(crate) fn api_name(key: i16) -> String {
    kafka_protocol::messages::ApiKey::try_from(key)
        .map_or_else(|_| key.to_string(), |api| format!("{api:?}"))
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let hub = &self.hub;
        let view = NodeView::of(hub);
        let shard = |s: usize| ("shard", s.to_string());
        let e = &mut encoder;

        gauges(
            e,
            "sluice_ready",
            "1 while every shard serves and the node is not draining, else 0.",
            [(vec![], i64::from(hub.ready()))],
        )?;
        gauges(
            e,
            "sluice_shards_serving",
            "Shards accepting connections.",
            [(vec![], gauge_i64(hub.shards_serving() as u64))],
        )?;

        // Requests.
        histograms(
            e,
            "sluice_request_duration_seconds",
            "Requests answered, by API: from the request read to its response ready.",
            view.snapshots.iter().flat_map(|s| {
                s.requests.iter().map(move |(api, stats)| {
                    (
                        vec![shard(s.shard), ("api", api_name(*api))],
                        &stats.latency,
                    )
                })
            }),
        )?;
        counters(
            e,
            "sluice_request_errors",
            "Responses (or partitions of a Produce or Fetch response) carrying a Kafka error code.",
            view.snapshots.iter().flat_map(|s| {
                s.errors.iter().map(move |((api, code), count)| {
                    (
                        vec![
                            shard(s.shard),
                            ("api", api_name(*api)),
                            ("error", kafka_error_name(*code)),
                        ],
                        *count,
                    )
                })
            }),
        )?;
        gauges(
            e,
            "sluice_requests_in_flight",
            "Requests read and not yet answered.",
            view.snapshots
                .iter()
                .map(|s| (vec![shard(s.shard)], gauge_i64(s.requests_in_flight))),
        )?;
        gauges(
            e,
            "sluice_connections",
            "Client connections open.",
            view.snapshots
                .iter()
                .map(|s| (vec![shard(s.shard)], gauge_i64(s.connections_open))),
        )?;
        counters(
            e,
            "sluice_connections_accepted",
            "Client connections accepted.",
            view.snapshots
                .iter()
                .map(|s| (vec![shard(s.shard)], s.connections_accepted)),
        )?;
        counters(
            e,
            "sluice_connections_failed",
            "Client connections closed on an error (a malformed or unsupported request, or I/O).",
            view.snapshots
                .iter()
                .map(|s| (vec![shard(s.shard)], s.connections_failed)),
        )?;

        // Traffic, per topic (or partition).
        let mut traffic: BTreeMap<(String, Option<i32>), Traffic> = BTreeMap::new();
        for ((topic, partition), t) in view.snapshots.iter().flat_map(|s| s.traffic.iter()) {
            let key = (topic.to_string(), self.per_partition.then_some(*partition));
            let sum = traffic.entry(key).or_default();
            sum.records_in += t.records_in;
            sum.bytes_in += t.bytes_in;
            sum.bytes_out += t.bytes_out;
        }
        let topic_labels = |(topic, partition): &(String, Option<i32>)| -> Labels {
            let mut labels = vec![("topic", topic.clone())];
            if let Some(p) = partition {
                labels.push(("partition", p.to_string()));
            }
            labels
        };
        counters(
            e,
            "sluice_produced_records",
            "Records appended by Produce requests.",
            traffic.iter().map(|(k, t)| (topic_labels(k), t.records_in)),
        )?;
        counters(
            e,
            "sluice_produced_bytes",
            "Record-batch bytes appended by Produce requests.",
            traffic.iter().map(|(k, t)| (topic_labels(k), t.bytes_in)),
        )?;
        counters(
            e,
            "sluice_fetched_bytes",
            "Record-batch bytes sent in Fetch responses.",
            traffic.iter().map(|(k, t)| (topic_labels(k), t.bytes_out)),
        )?;

        // Partitions held here.
        let mut sizes: BTreeMap<(String, Option<i32>), u64> = BTreeMap::new();
        for p in view.partitions() {
            let key = (p.topic.clone(), self.per_partition.then_some(p.partition));
            *sizes.entry(key).or_default() += p.size_bytes;
        }
        gauges(
            e,
            "sluice_partition_size_bytes",
            "Bytes of the partitions' logs held on this node.",
            sizes
                .iter()
                .map(|(k, size)| (topic_labels(k), gauge_i64(*size))),
        )?;
        let counts = view.partition_counts();
        gauges(
            e,
            "sluice_partitions",
            "Partitions held on this node, by state: all held, led here, led here with replicas out of sync (under_replicated), without a known leader (offline).",
            [
                ("held", counts.total),
                ("led", counts.led),
                ("under_replicated", counts.under_replicated),
                ("offline", counts.offline),
            ]
            .map(|(state, n)| (vec![("state", state.to_string())], gauge_i64(n as u64))),
        )?;
        counters(
            e,
            "sluice_leader_elections",
            "Times a replica on this node became its partition's leader.",
            view.snapshots
                .iter()
                .map(|s| (vec![shard(s.shard)], s.leader_elections)),
        )?;
        gauges(
            e,
            "sluice_raft_groups",
            "Raft groups (partitions, the controller) with a replica on this node, by state: quiet (idle, no ticks or heartbeats until something happens) or awake.",
            view.snapshots.iter().flat_map(|s| {
                [
                    ("quiet", s.raft_groups_quiet),
                    ("awake", s.raft_groups.saturating_sub(s.raft_groups_quiet)),
                ]
                .map(|(state, n)| {
                    (
                        vec![shard(s.shard), ("state", state.to_string())],
                        gauge_i64(n),
                    )
                })
            }),
        )?;
        counters(
            e,
            "sluice_raft_steps",
            "Replication steps taken (each runs the Raft groups that may have work, and sends what they produced).",
            view.snapshots
                .iter()
                .map(|s| (vec![shard(s.shard)], s.raft_steps)),
        )?;
        counters(
            e,
            "sluice_raft_step_groups",
            "Raft groups the replication steps looked at (divided by sluice_raft_steps_total: groups per step, which follows the groups with work, not the groups held).",
            view.snapshots
                .iter()
                .map(|s| (vec![shard(s.shard)], s.raft_step_groups)),
        )?;

        // Consumer groups coordinated here.
        gauges(
            e,
            "sluice_consumer_group_lag",
            "Records between a group's committed offset and the partition's high watermark (partitions held on this node).",
            view.lags().into_iter().filter_map(|l| {
                let lag = l.lag?;
                Some((
                    vec![
                        ("group", l.group),
                        ("topic", l.topic),
                        ("partition", l.partition.to_string()),
                    ],
                    lag,
                ))
            }),
        )?;
        gauges(
            e,
            "sluice_consumer_group_members",
            "Members of each consumer group coordinated on this node.",
            view.snapshots.iter().flat_map(|s| {
                s.groups.iter().map(|g| {
                    (
                        vec![("group", g.group.clone()), ("state", g.state.clone())],
                        gauge_i64(g.members as u64),
                    )
                })
            }),
        )?;

        // Transactions coordinated here.
        let mut by_state: std::collections::BTreeMap<&str, u64> = Default::default();
        for s in view.snapshots.iter() {
            for (state, count) in &s.transactions {
                *by_state.entry(state).or_default() += count;
            }
        }
        gauges(
            e,
            "sluice_transactions",
            "Transactional ids coordinated on this node, by state.",
            by_state
                .into_iter()
                .map(|(state, count)| (vec![("state", state.to_string())], gauge_i64(count))),
        )?;
        counters(
            e,
            "sluice_transaction_marker_retries",
            "Transaction markers a coordinator here tried again (the partition's leader did not answer, failed the write, or was being elected).",
            view.snapshots
                .iter()
                .map(|s| (vec![shard(s.shard)], s.txn_marker_retries)),
        )?;

        // Storage.
        histograms(
            e,
            "sluice_fdatasync_duration_seconds",
            "fdatasyncs that make appended records durable.",
            view.snapshots
                .iter()
                .map(|s| (vec![shard(s.shard)], &s.fdatasync_seconds)),
        )?;
        counters(
            e,
            "sluice_sync_rounds",
            "Durability rounds shared by a shard's partitions.",
            view.snapshots
                .iter()
                .map(|s| (vec![shard(s.shard)], s.sync_rounds)),
        )?;
        counters(
            e,
            "sluice_sync_round_partitions",
            "Partitions made durable by the rounds (divided by sluice_sync_rounds_total: partitions per round).",
            view.snapshots
                .iter()
                .map(|s| (vec![shard(s.shard)], s.sync_round_partitions)),
        )?;
        gauges(
            e,
            "sluice_write_buffer_bytes",
            "Write-buffer memory the shard's logs hold.",
            view.snapshots
                .iter()
                .map(|s| (vec![shard(s.shard)], gauge_i64(s.write_buffer.used as u64))),
        )?;
        gauges(
            e,
            "sluice_write_buffer_limit_bytes",
            "Write-buffer memory beyond which the shard's appends wait for their writes.",
            view.snapshots
                .iter()
                .map(|s| (vec![shard(s.shard)], gauge_i64(s.write_buffer.limit as u64))),
        )?;
        counters(
            e,
            "sluice_write_buffer_waits",
            "Appends that waited because the shard's write buffers were over their limit.",
            view.snapshots
                .iter()
                .map(|s| (vec![shard(s.shard)], s.write_buffer.waits)),
        )?;
        let disk = Disk::of(hub);
        gauges(
            e,
            "sluice_disk_total_bytes",
            "Size of the filesystem holding the data directory.",
            disk.total_bytes.map(|b| (vec![], gauge_i64(b))),
        )?;
        gauges(
            e,
            "sluice_disk_free_bytes",
            "Bytes still usable on the filesystem holding the data directory.",
            disk.free_bytes.map(|b| (vec![], gauge_i64(b))),
        )?;
        gauges(
            e,
            "sluice_disk_free_min_bytes",
            "Produce is refused while free bytes are below this (disk_free_bytes_min).",
            [(vec![], gauge_i64(disk.free_bytes_min))],
        )?;
        client_metrics(e, &hub.client_telemetry)
    }
}

/// The metrics clients pushed (KIP-714), one family per metric name, one series per client
/// instance and data point (labels `client_id`, `client_instance_id`, then the point's own).
fn client_metrics(encoder: &mut DescriptorEncoder, telemetry: &ClientTelemetry) -> fmt::Result {
    type Family = (SeriesKind, String, Vec<(Vec<(String, String)>, f64)>);
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for client in telemetry.clients(std::time::Instant::now()) {
        for ((name, attributes), sample) in client.series {
            let family = families
                .entry(name)
                .or_insert_with(|| (sample.kind, sample.help.clone(), Vec::new()));
            if family.0 != sample.kind {
                continue; // clients disagreeing on a metric's type: the first one seen wins
            }
            let mut labels = vec![
                ("client_id".to_string(), client.client_id.clone()),
                (
                    "client_instance_id".to_string(),
                    client.client_instance_id.to_string(),
                ),
            ];
            labels.extend(attributes);
            family.2.push((labels, sample.value));
        }
    }
    for (name, (kind, help, samples)) in families {
        let metric_type = match kind {
            SeriesKind::Gauge => MetricType::Gauge,
            SeriesKind::Counter => MetricType::Counter,
        };
        let mut family = encoder.encode_descriptor(&name, &help, None, metric_type)?;
        for (labels, value) in samples {
            let mut sample = family.encode_family(&labels)?;
            match kind {
                SeriesKind::Gauge => sample.encode_gauge(&value)?,
                SeriesKind::Counter => {
                    sample.encode_counter::<NoLabelSet, f64, u64>(&value, None)?
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_names_counter_families_with_their_suffix() {
        let openmetrics = "# HELP a_bytes Bytes.\n# TYPE a_bytes counter\n# UNIT a_bytes bytes\na_bytes_total{t=\"x\"} 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n# EOF\n";
        assert_eq!(
            to_classic_text(openmetrics),
            "# HELP a_bytes_total Bytes.\n# TYPE a_bytes_total counter\na_bytes_total{t=\"x\"} 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n"
        );
    }

    #[test]
    fn error_codes_get_kafkas_names() {
        assert_eq!(api_name(0), "Produce");
        assert_eq!(api_name(-5), "-5");
    }
}
