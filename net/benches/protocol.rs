//! The protocol path's codec costs, with the `kafka-protocol` crate as the broker uses it:
//! - decode a Produce request (v9, flexible) carrying 16 partitions of one 16 KiB batch each,
//!   from `Bytes`, so the record batches stay slices of the frame (no copy);
//! - encode a Fetch response (v12) carrying 16 partitions of 64 KiB of stored batches through the
//!   codec (which copies the records: the broker will write stored batches out separately).

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{FetchResponse, ProduceRequest, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use sluice_storage::batch::build_batch;

const PARTITIONS: i32 = 16;

fn batch_of(bytes: usize) -> Bytes {
    let value = vec![0x61u8; 1000];
    let records: Vec<(i64, &[u8], &[u8])> = (0..bytes / 1024)
        .map(|_| (0i64, &b"key"[..], value.as_slice()))
        .collect();
    Bytes::from(build_batch(0, &records))
}

fn produce_request_bytes() -> (Bytes, usize) {
    let batch = batch_of(16 * 1024);
    let partitions = (0..PARTITIONS)
        .map(|i| {
            PartitionProduceData::default()
                .with_index(i)
                .with_records(Some(batch.clone()))
        })
        .collect();
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str("bench-topic")))
            .with_partition_data(partitions)]);
    let mut buf = BytesMut::new();
    request.encode(&mut buf, 9).unwrap();
    (buf.freeze(), batch.len() * PARTITIONS as usize)
}

fn fetch_response(batch: &Bytes) -> FetchResponse {
    let partitions = (0..PARTITIONS)
        .map(|i| {
            PartitionData::default()
                .with_partition_index(i)
                .with_high_watermark(1_000_000)
                .with_records(Some(batch.clone()))
        })
        .collect();
    FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
        .with_topic(TopicName(StrBytes::from_static_str("bench-topic")))
        .with_partitions(partitions)])
}

fn protocol(c: &mut Criterion) {
    let (request, record_bytes) = produce_request_bytes();
    let mut group = c.benchmark_group("protocol");
    group.throughput(Throughput::Bytes(record_bytes as u64));
    group.bench_function("decode_produce_v9_16_partitions_16KiB", |b| {
        b.iter(|| {
            let mut buf = request.clone();
            let decoded = ProduceRequest::decode(&mut buf, 9).unwrap();
            black_box(decoded)
        })
    });
    let batch = batch_of(64 * 1024);
    let response = fetch_response(&batch);
    group.throughput(Throughput::Bytes(batch.len() as u64 * PARTITIONS as u64));
    group.bench_function("encode_fetch_v12_16_partitions_64KiB", |b| {
        let mut out = BytesMut::with_capacity(2 << 20);
        b.iter(|| {
            out.clear();
            response.encode(&mut out, 12).unwrap();
            black_box(out.len())
        })
    });
    group.finish();
}

criterion_group!(benches, protocol);
criterion_main!(benches);
