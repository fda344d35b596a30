//! Client metrics (KIP-714): what clients are asked to push (the node's one subscription,
//! from `client_metrics` and `client_metrics_interval_ms`), and the latest values they pushed,
//! per client instance, for `/metrics`.
//!
//! A push carries OTLP `MetricsData` (protobuf, optionally compressed as a Kafka batch would
//! be). Gauges and sums are kept (monotonic sums as counters, delta sums accumulated);
//! histograms and summaries are skipped (librdkafka and the Java client send none). Only
//! metrics under a subscribed prefix are kept. Names become Prometheus names:
//! `org.apache.kafka.producer.record.queue.time.avg` is
//! `sluice_client_producer_record_queue_time_avg`.
//!
//! Invariants: memory is bounded ([`CLIENTS_MAX`] instances, [`SERIES_PER_CLIENT_MAX`] series
//! each); an instance that has not pushed for [`EXPIRY_INTERVALS`] push intervals is
//! forgotten, its series with it. The store is node-wide behind a mutex taken once per push
//! (every few seconds per client at most) and per scrape, never on the data path. The
//! subscription id is a digest of the subscription, so every shard answers the same one.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::compression::{Decompressor, Gzip, Lz4, Snappy, Zstd};
use kafka_protocol::ResponseError;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, MetricsData, NumberDataPoint,
};
use prost::Message;
use uuid::Uuid;

/// Largest push accepted (compressed size), as Kafka's `telemetry.max.bytes` default.
pub const TELEMETRY_MAX_BYTES: usize = 1 << 20;
/// Client instances remembered at once; pushes from more are refused until some expire.
pub const CLIENTS_MAX: usize = 10_000;
/// Series kept per client instance; further points of a push are dropped.
pub const SERIES_PER_CLIENT_MAX: usize = 1_000;
/// An instance silent for this many push intervals is forgotten.
pub const EXPIRY_INTERVALS: u32 = 3;
/// Compression types accepted for pushes, by preference (Kafka's attribute codes: zstd, lz4,
/// gzip, snappy).
pub const ACCEPTED_COMPRESSION: [i8; 4] = [4, 3, 1, 2];

/// Labels every pushed series carries, ahead of the data point's own attributes.
pub const CLIENT_LABELS: [&str; 2] = ["client_id", "client_instance_id"];

/// A pushed series' type, as `/metrics` exposes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeriesKind {
    Gauge,
    Counter,
}

/// One pushed series' latest value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub kind: SeriesKind,
    pub value: f64,
    /// The metric's description from the client, or its OTLP name.
    pub help: String,
}

/// (Prometheus metric name, data point attributes as sanitized label pairs).
pub type SeriesKey = (String, Vec<(String, String)>);

/// A client instance's pushed series, for exposition.
#[derive(Debug, Clone)]
pub struct ClientSeries {
    pub client_id: String,
    pub client_instance_id: Uuid,
    pub series: BTreeMap<SeriesKey, Sample>,
}

/// Why a push was refused: each maps to the error code KIP-714 names.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PushError {
    #[error("the client instance id is missing")]
    NoInstanceId,
    #[error("subscription {0} is not the current one")]
    UnknownSubscription(i32),
    #[error("pushed sooner than the push interval allows")]
    TooSoon,
    #[error("{0} bytes exceed the {TELEMETRY_MAX_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("compression type {0} is not accepted")]
    UnsupportedCompression(i8),
    #[error("the metrics do not decode: {0}")]
    Undecodable(String),
    #[error("{CLIENTS_MAX} client instances are already tracked")]
    TooManyClients,
}

impl PushError {
    /// The Kafka error code of the PushTelemetry response.
    pub fn code(&self) -> i16 {
        match self {
            PushError::NoInstanceId => ResponseError::InvalidRequest.code(),
            PushError::UnknownSubscription(_) => ResponseError::UnknownSubscriptionId.code(),
            PushError::TooSoon | PushError::TooManyClients => {
                ResponseError::ThrottlingQuotaExceeded.code()
            }
            PushError::TooLarge(_) => ResponseError::TelemetryTooLarge.code(),
            PushError::UnsupportedCompression(_) => {
                ResponseError::UnsupportedCompressionType.code()
            }
            PushError::Undecodable(_) => ResponseError::InvalidRecord.code(),
        }
    }
}

/// One push, as PushTelemetry carries it.
#[derive(Debug, Clone)]
pub struct Push<'a> {
    pub client_instance_id: Uuid,
    pub subscription_id: i32,
    /// The request header's client id.
    pub client_id: &'a str,
    pub terminating: bool,
    pub compression: i8,
    pub metrics: Bytes,
}

#[derive(Debug)]
struct ClientState {
    client_id: String,
    last_push: Instant,
    series: BTreeMap<SeriesKey, Sample>,
}

/// The node's subscription and the clients' pushed metrics.
#[derive(Debug)]
pub struct ClientTelemetry {
    prefixes: Vec<String>,
    interval: Duration,
    subscription_id: i32,
    clients: Mutex<HashMap<Uuid, ClientState>>,
}

impl ClientTelemetry {
    /// A subscription to the metrics under `prefixes` (none: clients push nothing; an empty
    /// prefix: every metric), pushed every `interval`.
    pub fn new(prefixes: Vec<String>, interval: Duration) -> ClientTelemetry {
        let mut digest = crc32c::crc32c(&interval.as_millis().to_be_bytes());
        for prefix in &prefixes {
            digest = crc32c::crc32c_append(digest, prefix.as_bytes());
            digest = crc32c::crc32c_append(digest, &[0]);
        }
        ClientTelemetry {
            prefixes,
            interval,
            subscription_id: i32::from_be_bytes(digest.to_be_bytes()),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// No subscription: what a node without a configuration answers.
    pub fn unsubscribed() -> ClientTelemetry {
        ClientTelemetry::new(Vec::new(), Duration::from_secs(300))
    }

    pub fn requested_metrics(&self) -> &[String] {
        &self.prefixes
    }

    pub fn push_interval(&self) -> Duration {
        self.interval
    }

    pub fn subscription_id(&self) -> i32 {
        self.subscription_id
    }

    fn subscribed(&self, name: &str) -> bool {
        self.prefixes.iter().any(|p| name.starts_with(p.as_str()))
    }

    /// Validates and stores a push; answers how many data points were kept.
    pub fn push(&self, push: Push<'_>, now: Instant) -> Result<usize, PushError> {
        if push.client_instance_id.is_nil() {
            return Err(PushError::NoInstanceId);
        }
        if push.subscription_id != self.subscription_id {
            return Err(PushError::UnknownSubscription(push.subscription_id));
        }
        if push.metrics.len() > TELEMETRY_MAX_BYTES {
            return Err(PushError::TooLarge(push.metrics.len()));
        }
        // Decoded before the store is locked: other shards' pushes and scrapes do not wait.
        let payload = decompress(push.compression, push.metrics)?;
        let data =
            MetricsData::decode(payload).map_err(|e| PushError::Undecodable(e.to_string()))?;
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        self.expire(&mut clients, now);
        match clients.get(&push.client_instance_id) {
            // Half the interval: clients jitter their pushes around it.
            Some(state)
                if !push.terminating && now.duration_since(state.last_push) < self.interval / 2 =>
            {
                return Err(PushError::TooSoon)
            }
            None if clients.len() >= CLIENTS_MAX => return Err(PushError::TooManyClients),
            _ => {}
        }
        let state = clients
            .entry(push.client_instance_id)
            .or_insert_with(|| ClientState {
                client_id: String::new(),
                last_push: now,
                series: BTreeMap::new(),
            });
        state.client_id = push.client_id.to_string();
        state.last_push = now;
        let mut kept = 0;
        let metrics = data
            .resource_metrics
            .into_iter()
            .flat_map(|r| r.scope_metrics)
            .flat_map(|s| s.metrics)
            .filter(|m| self.subscribed(&m.name));
        for m in metrics {
            let (kind, delta, points) = match m.data {
                Some(metric::Data::Gauge(g)) => (SeriesKind::Gauge, false, g.data_points),
                Some(metric::Data::Sum(s)) => (
                    if s.is_monotonic {
                        SeriesKind::Counter
                    } else {
                        SeriesKind::Gauge
                    },
                    s.aggregation_temporality == AggregationTemporality::Delta as i32,
                    s.data_points,
                ),
                _ => continue,
            };
            let name = prometheus_name(&m.name, kind);
            let help = if m.description.is_empty() {
                format!("{} (pushed by clients, KIP-714)", m.name)
            } else {
                m.description.clone()
            };
            for point in &points {
                let Some(value) = point_value(point) else {
                    continue;
                };
                let key = (name.clone(), labels_of(&point.attributes));
                let known = state.series.contains_key(&key);
                if !known && state.series.len() >= SERIES_PER_CLIENT_MAX {
                    continue;
                }
                let sample = state.series.entry(key).or_insert(Sample {
                    kind,
                    value: 0.0,
                    help: help.clone(),
                });
                if sample.kind != kind {
                    continue; // a name that changed type: keep the first
                }
                sample.value = if delta { sample.value + value } else { value };
                kept += 1;
            }
        }
        Ok(kept)
    }

    /// Every live client instance's series (expired instances are dropped first).
    pub fn clients(&self, now: Instant) -> Vec<ClientSeries> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        self.expire(&mut clients, now);
        clients
            .iter()
            .map(|(id, state)| ClientSeries {
                client_id: state.client_id.clone(),
                client_instance_id: *id,
                series: state.series.clone(),
            })
            .collect()
    }

    fn expire(&self, clients: &mut HashMap<Uuid, ClientState>, now: Instant) {
        let ttl = self.interval * EXPIRY_INTERVALS;
        clients.retain(|_, state| now.duration_since(state.last_push) < ttl);
    }
}

/// The push's payload, decompressed as its compression type says.
fn decompress(compression: i8, metrics: Bytes) -> Result<Bytes, PushError> {
    let mut compressed = metrics;
    let decompressed = match compression {
        0 => return Ok(compressed),
        1 => Gzip::decompress(&mut compressed, |out| Ok(std::mem::take(out))),
        2 => Snappy::decompress(&mut compressed, |out| Ok(std::mem::take(out))),
        3 => Lz4::decompress(&mut compressed, |out| Ok(std::mem::take(out))),
        4 => Zstd::decompress(&mut compressed, |out| Ok(std::mem::take(out))),
        other => return Err(PushError::UnsupportedCompression(other)),
    };
    decompressed.map_err(|e| PushError::Undecodable(format!("{e:#}")))
}

fn point_value(point: &NumberDataPoint) -> Option<f64> {
    match point.value? {
        number_data_point::Value::AsDouble(v) => Some(v),
        // Counts far beyond 2^53 lose precision, as any Prometheus sample does.
        number_data_point::Value::AsInt(v) => Some(v as f64),
    }
}

/// `org.apache.kafka.producer.record.queue.time.avg` → `sluice_client_producer_record_queue_time_avg`.
/// A counter's trailing `total` is dropped: the exposition adds `_total` itself.
pub fn prometheus_name(otlp_name: &str, kind: SeriesKind) -> String {
    let short = otlp_name
        .strip_prefix("org.apache.kafka.")
        .unwrap_or(otlp_name);
    let mut name = String::from("sluice_client_");
    name.push_str(&underscored(short));
    if kind == SeriesKind::Counter {
        if let Some(stripped) = name.strip_suffix("_total") {
            name.truncate(stripped.len());
        }
    }
    name
}

/// `s` with every character Prometheus names do not allow turned into `_`.
fn underscored(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// A data point's attributes as Prometheus label pairs: names sanitized, names that clash
/// with [`CLIENT_LABELS`] prefixed `attr_`, values of non-scalar types skipped.
fn labels_of(attributes: &[KeyValue]) -> Vec<(String, String)> {
    let mut labels: Vec<(String, String)> = attributes
        .iter()
        .filter_map(|kv| {
            let value = match kv.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => s.clone(),
                any_value::Value::IntValue(i) => i.to_string(),
                any_value::Value::DoubleValue(d) => d.to_string(),
                any_value::Value::BoolValue(b) => b.to_string(),
                _ => return None,
            };
            let mut name = underscored(&kv.key);
            if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
                name.insert(0, '_');
            }
            if CLIENT_LABELS.contains(&name.as_str()) || name.starts_with("__") {
                name.insert_str(0, "attr_");
            }
            Some((name, value))
        })
        .collect();
    labels.sort();
    labels.dedup_by(|a, b| a.0 == b.0);
    labels
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::AnyValue;
    use opentelemetry_proto::tonic::metrics::v1::{
        Gauge, Metric, ResourceMetrics, ScopeMetrics, Sum,
    };

    fn attr(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.into())),
            }),
            ..Default::default()
        }
    }

    fn point(value: f64, attributes: Vec<KeyValue>) -> NumberDataPoint {
        NumberDataPoint {
            attributes,
            value: Some(number_data_point::Value::AsDouble(value)),
            ..Default::default()
        }
    }

    fn payload(delta_sum: f64, gauge: f64) -> Bytes {
        let metrics = vec![
            Metric {
                name: "org.apache.kafka.producer.record.queue.time.avg".into(),
                data: Some(metric::Data::Gauge(Gauge {
                    data_points: vec![point(gauge, vec![attr("client_id", "clash")])],
                })),
                ..Default::default()
            },
            Metric {
                name: "org.apache.kafka.producer.connection.creation.total".into(),
                data: Some(metric::Data::Sum(Sum {
                    data_points: vec![point(delta_sum, vec![attr("node.id", "1")])],
                    aggregation_temporality: AggregationTemporality::Delta as i32,
                    is_monotonic: true,
                })),
                ..Default::default()
            },
            Metric {
                name: "org.apache.kafka.consumer.poll.idle.ratio.avg".into(),
                data: Some(metric::Data::Gauge(Gauge {
                    data_points: vec![point(0.5, vec![])],
                })),
                ..Default::default()
            },
        ];
        let data = MetricsData {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        Bytes::from(data.encode_to_vec())
    }

    fn push(t: &ClientTelemetry, id: Uuid, metrics: Bytes) -> Push<'static> {
        Push {
            client_instance_id: id,
            subscription_id: t.subscription_id(),
            client_id: "app",
            terminating: false,
            compression: 0,
            metrics,
        }
    }

    #[test]
    fn pushes_keep_subscribed_gauges_and_accumulate_delta_counters() {
        let t = ClientTelemetry::new(
            vec!["org.apache.kafka.producer.".into()],
            Duration::from_secs(10),
        );
        let id = Uuid::new_v4();
        let start = Instant::now();
        assert_eq!(t.push(push(&t, id, payload(2.0, 7.5)), start), Ok(2));
        let later = start + Duration::from_secs(10);
        assert_eq!(t.push(push(&t, id, payload(3.0, 1.5)), later), Ok(2));
        let clients = t.clients(later);
        assert_eq!(clients.len(), 1);
        let series = &clients[0].series;
        let names: Vec<&str> = series.keys().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "sluice_client_producer_connection_creation",
                "sluice_client_producer_record_queue_time_avg"
            ]
        );
        let (key, counter) = series.iter().next().unwrap();
        assert_eq!(key.1, [("node_id".to_string(), "1".to_string())]);
        assert_eq!((counter.kind, counter.value), (SeriesKind::Counter, 5.0));
        let (key, gauge) = series.iter().nth(1).unwrap();
        assert_eq!(key.1, [("attr_client_id".to_string(), "clash".to_string())]);
        assert_eq!((gauge.kind, gauge.value), (SeriesKind::Gauge, 1.5));
        // Forgotten after three silent intervals.
        assert!(t.clients(later + Duration::from_secs(30)).is_empty());
    }

    #[test]
    fn bad_pushes_get_kip_714_errors() {
        let t = ClientTelemetry::new(vec![String::new()], Duration::from_secs(10));
        let id = Uuid::new_v4();
        let now = Instant::now();
        let code = |r: Result<usize, PushError>| r.unwrap_err().code();
        assert_eq!(
            code(t.push(push(&t, Uuid::nil(), payload(1.0, 1.0)), now)),
            42
        );
        let mut stale = push(&t, id, payload(1.0, 1.0));
        stale.subscription_id ^= 1;
        assert_eq!(code(t.push(stale, now)), 117);
        let big = Bytes::from(vec![0u8; TELEMETRY_MAX_BYTES + 1]);
        assert_eq!(code(t.push(push(&t, id, big), now)), 118);
        let mut odd = push(&t, id, payload(1.0, 1.0));
        odd.compression = 9;
        assert_eq!(code(t.push(odd, now)), 76);
        let garbage = Bytes::from_static(b"\xff\xff\xff not protobuf");
        assert_eq!(code(t.push(push(&t, id, garbage), now)), 87);
        // Every metric subscribed (the empty prefix): all three kept.
        assert_eq!(t.push(push(&t, id, payload(1.0, 1.0)), now), Ok(3));
        let soon = now + Duration::from_secs(1);
        assert_eq!(code(t.push(push(&t, id, payload(1.0, 1.0)), soon)), 89);
        let mut last = push(&t, id, payload(1.0, 1.0));
        last.terminating = true;
        assert_eq!(t.push(last, soon), Ok(3));
    }

    #[test]
    fn instances_beyond_the_cap_are_refused_until_some_expire() {
        let t = ClientTelemetry::new(vec![String::new()], Duration::from_secs(10));
        let now = Instant::now();
        for _ in 0..CLIENTS_MAX {
            assert_eq!(t.push(push(&t, Uuid::new_v4(), Bytes::new()), now), Ok(0));
        }
        let late = push(&t, Uuid::new_v4(), Bytes::new());
        assert_eq!(t.push(late.clone(), now), Err(PushError::TooManyClients));
        assert_eq!(PushError::TooManyClients.code(), 89);
        // Three intervals later the silent ones are forgotten and the newcomer is taken.
        assert_eq!(t.push(late, now + Duration::from_secs(30)), Ok(0));
        assert_eq!(t.clients(now + Duration::from_secs(30)).len(), 1);
    }

    #[test]
    fn compressed_pushes_decode() {
        use kafka_protocol::compression::Compressor;
        let t = ClientTelemetry::new(vec![String::new()], Duration::from_secs(10));
        let raw = payload(1.0, 1.0);
        let mut compressed = bytes::BytesMut::new();
        Zstd::compress(&mut compressed, |buf: &mut bytes::BytesMut| {
            buf.extend_from_slice(&raw);
            Ok(())
        })
        .unwrap();
        let mut p = push(&t, Uuid::new_v4(), compressed.freeze());
        p.compression = 4;
        assert_eq!(t.push(p, Instant::now()), Ok(3));
    }

    #[test]
    fn names_follow_prometheus_conventions() {
        assert_eq!(
            prometheus_name(
                "org.apache.kafka.consumer.fetch.manager.fetch.latency.max",
                SeriesKind::Gauge
            ),
            "sluice_client_consumer_fetch_manager_fetch_latency_max"
        );
        assert_eq!(
            prometheus_name("custom.requests-total", SeriesKind::Counter),
            "sluice_client_custom_requests"
        );
    }
}
