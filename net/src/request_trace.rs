//! Request spans: one `tracing` span per answered Kafka request (target [`TARGET`], level
//! DEBUG), carrying the API, version, correlation id, client id, partitions touched, request
//! and response bytes, and the outcome. They cost nothing unless a subscriber wants them:
//! `RUST_LOG=sluice::request=debug` prints them, an OTLP exporter (`--otlp-endpoint`) exports
//! them.
//!
//! When spans are exported, a Produce request's span joins the producer's trace: the W3C
//! `traceparent` (and `tracestate`) headers of its records are read (decompressing where the
//! batch is compressed: only while exporting), the first record's context becomes the span's
//! parent and the others' (up to [`LINKS_MAX`]) its links. Records without those headers leave
//! the span a root of its own trace. Invariant: the parent is set before the span's
//! OpenTelemetry context is first built, which is why the exporter's layer runs without
//! context activation (`sluice serve`'s telemetry setup).

use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use kafka_protocol::messages::ProduceRequest;
use kafka_protocol::records::RecordBatchDecoder;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::field::Empty;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `tracing` target of request spans.
pub const TARGET: &str = "sluice::request";

/// Most links one Produce span carries to other producers' traces.
pub const LINKS_MAX: usize = 32;

/// Set once at start-up when request spans are exported: only then are produced records'
/// headers read for a trace context.
static PROPAGATION: AtomicBool = AtomicBool::new(false);

/// Turns on reading `traceparent` from produced records (an exporter is installed).
pub fn enable_propagation() {
    PROPAGATION.store(true, Ordering::Relaxed);
}

/// The span of one request, named after its API (disabled, and free, when nobody listens).
pub fn request_span(
    api: kafka_protocol::messages::ApiKey,
    version: i16,
    correlation_id: i32,
    client_id: Option<&str>,
    shard: usize,
    request_bytes: usize,
) -> Span {
    // Sizes and counts as i64: OpenTelemetry attributes have no unsigned integers (a u64 would
    // be exported as a string).
    let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    tracing::debug_span!(
        target: TARGET,
        "request",
        otel.name = ?api,
        otel.kind = "server",
        otel.status_code = Empty,
        kafka.api = ?api,
        kafka.api_version = version,
        kafka.correlation_id = correlation_id,
        kafka.client_id = client_id,
        kafka.partitions = Empty,
        kafka.error_code = Empty,
        shard = as_i64(shard),
        request_bytes = as_i64(request_bytes),
        response_bytes = Empty,
        outcome = Empty,
    )
}

/// Records the partitions a request touched and the first partition error among them (its
/// Kafka name), if any.
pub fn record_partitions(span: &Span, partitions: usize, first_error: Option<i16>) {
    if span.is_disabled() {
        return; // no error name built on the produce path when nobody traces
    }
    span.record(
        "kafka.partitions",
        i64::try_from(partitions).unwrap_or(i64::MAX),
    );
    if let Some(code) = first_error {
        span.record(
            "kafka.error_code",
            sluice_core::metrics::kafka_error_name(code),
        );
        span.record("otel.status_code", "error");
    }
}

/// Records how the request ended: `answered` with the response size, `no response` (acks=0),
/// or the error that closed the connection.
pub fn record_outcome<E: std::fmt::Display>(span: &Span, answer: &Result<Option<Bytes>, E>) {
    match answer {
        Ok(Some(response)) => {
            span.record(
                "response_bytes",
                i64::try_from(response.len()).unwrap_or(i64::MAX),
            );
            span.record("outcome", "answered");
        }
        Ok(None) => {
            span.record("outcome", "no response");
        }
        Err(e) => {
            span.record("outcome", tracing::field::display(format!("failed: {e}")));
            span.record("otel.status_code", "error");
        }
    }
}

/// Makes a Produce request's span part of its records' traces (see the module docs). A no-op
/// unless spans are exported.
pub fn join_producer_traces(span: &Span, request: &ProduceRequest) {
    if !PROPAGATION.load(Ordering::Relaxed) || span.is_disabled() {
        return;
    }
    let contexts = producer_contexts(request);
    let Some((parent, links)) = contexts.split_first() else {
        return;
    };
    let parent = opentelemetry::Context::new().with_remote_span_context(parent.clone());
    if let Err(e) = span.set_parent(parent) {
        tracing::debug!(error = %e, "request span cannot join the producer's trace");
        return;
    }
    for link in links {
        span.add_link(link.clone());
    }
}

/// The distinct valid trace contexts found in the request's records' headers, in record order,
/// at most `LINKS_MAX + 1`.
fn producer_contexts(request: &ProduceRequest) -> Vec<SpanContext> {
    let propagator = TraceContextPropagator::new();
    let mut found: Vec<SpanContext> = Vec::new();
    let records = request
        .topic_data
        .iter()
        .flat_map(|t| &t.partition_data)
        .filter_map(|p| p.records.clone());
    for mut batches in records {
        // A batch that does not decode is the append path's to refuse; tracing skips it.
        let Ok(sets) = RecordBatchDecoder::decode_all(&mut batches) else {
            continue;
        };
        for record in sets.iter().flat_map(|set| &set.records) {
            let carrier = RecordHeaders(&record.headers);
            if carrier.get("traceparent").is_none() {
                continue;
            }
            let cx = propagator.extract(&carrier);
            let span_context = cx.span().span_context().clone();
            if span_context.is_valid() && !found.contains(&span_context) {
                found.push(span_context);
                if found.len() > LINKS_MAX {
                    return found;
                }
            }
        }
    }
    found
}

/// A record's headers as an OpenTelemetry propagation carrier.
struct RecordHeaders<'a>(
    &'a kafka_protocol::indexmap::IndexMap<kafka_protocol::protocol::StrBytes, Option<Bytes>>,
);

impl Extractor for RecordHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let (_, value) = self.0.iter().find(|(k, _)| k.as_str() == key)?;
        let value = value.as_ref()?;
        std::str::from_utf8(value).ok()
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::indexmap::IndexMap;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    fn record(offset: i64, traceparent: Option<&str>) -> Record {
        let mut headers = IndexMap::new();
        if let Some(tp) = traceparent {
            headers.insert(
                StrBytes::from_static_str("traceparent"),
                Some(Bytes::copy_from_slice(tp.as_bytes())),
            );
        }
        Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset,
            sequence: -1,
            timestamp: 0,
            key: None,
            value: Some(Bytes::from_static(b"v")),
            headers,
        }
    }

    fn request(records: &[Record], compression: Compression) -> ProduceRequest {
        let mut buf = bytes::BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            records,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .unwrap();
        ProduceRequest::default()
            .with_topic_data(vec![TopicProduceData::default().with_partition_data(vec![
                PartitionProduceData::default().with_records(Some(buf.freeze())),
            ])])
    }

    const A: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    const B: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn contexts_come_from_traceparent_headers_in_record_order_without_repeats() {
        for compression in [Compression::None, Compression::Zstd] {
            let records = [
                record(0, None),
                record(1, Some(A)),
                record(2, Some(B)),
                record(3, Some(A)),
                record(4, Some("00-garbage")),
            ];
            let found = producer_contexts(&request(&records, compression));
            let ids: Vec<String> = found.iter().map(|c| c.trace_id().to_string()).collect();
            assert_eq!(
                ids,
                [
                    "0af7651916cd43dd8448eb211c80319c",
                    "4bf92f3577b34da6a3ce929d0e0e4736"
                ],
                "{compression:?}"
            );
            assert!(found[0].is_remote() && found[0].is_sampled());
        }
    }

    #[test]
    fn records_without_headers_or_undecodable_batches_give_no_context() {
        assert!(producer_contexts(&request(&[record(0, None)], Compression::None)).is_empty());
        let garbage = ProduceRequest::default().with_topic_data(vec![TopicProduceData::default()
            .with_partition_data(vec![PartitionProduceData::default()
                .with_records(Some(Bytes::from_static(b"not a batch")))])]);
        assert!(producer_contexts(&garbage).is_empty());
    }
}
