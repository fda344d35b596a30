//! Hostile input at the wire level, against a running `sluice serve` with two shards: bad
//! lengths, truncated frames, unknown keys and versions, garbage bodies, impossible array
//! counts (top-level and nested), overlong strings, varint overflows, and record batches with
//! a bad CRC, malformed records or damaged compressed data. Each gets a Kafka error code or a closed connection; every
//! other connection keeps being served, and nothing already written is lost.

use std::io::Write;
use std::net::TcpStream;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    FetchRequest, FetchResponse, MetadataRequest, MetadataResponse, ProduceRequest,
    ProduceResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use sluice_storage::batch::build_batch;
use sluice_tests::wire::{assert_closed_after, call, connect, frame, read_frame};
use sluice_tests::Broker;

const TOPIC: &str = "hostile";

fn healthy(s: &mut TcpStream) {
    let r: ApiVersionsResponse = call(s, ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    assert_eq!(r.error_code, 0, "this connection is still served");
}

fn produce(s: &mut TcpStream, records: Vec<u8>) -> (i16, i64) {
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str(TOPIC)))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(Bytes::from(records)))])]);
    let r: ProduceResponse = call(s, ApiKey::Produce, 9, &request);
    let p = &r.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

fn fetch_all(s: &mut TcpStream) -> (i64, Bytes) {
    let request = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str(TOPIC)))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);
    let r: FetchResponse = call(s, ApiKey::Fetch, 12, &request);
    let p = &r.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    (p.high_watermark, p.records.clone().unwrap_or_default())
}

/// `batch` with its CRC recomputed, so only the damage inside the records remains.
fn with_fixed_crc(mut batch: Vec<u8>) -> Vec<u8> {
    let crc = crc32c::crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    batch
}

/// A request header in `version` of the header format, then `body`.
fn raw_request(api: ApiKey, version: i16, body: &[u8]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(77)
        .encode(&mut buf, api.request_header_version(version))
        .unwrap();
    buf.put_slice(body);
    frame(&buf)
}

#[test]
fn hostile_input_gets_an_error_or_a_closed_connection_and_loses_nothing() {
    let broker = Broker::start(&["--cores", "2"]);
    let addr = broker.addr;
    let mut s = connect(addr);
    let created: CreateTopicsResponse = call(
        &mut s,
        ApiKey::CreateTopics,
        7,
        &CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_static_str(TOPIC)))
            .with_num_partitions(1)
            .with_replication_factor(1)]),
    );
    assert_eq!(created.topics[0].error_code, 0);
    let good = build_batch(1000, &[(1000, b"key", b"acknowledged before the attack")]);
    assert_eq!(produce(&mut s, good.clone()), (0, 0));

    // Framing.
    assert_closed_after(addr, &(-5i32).to_be_bytes(), "negative length");
    assert_closed_after(addr, &0i32.to_be_bytes(), "zero length");
    assert_closed_after(addr, &i32::MAX.to_be_bytes(), "length over the maximum");
    assert_closed_after(addr, &[0, 0, 0, 50, 0, 18, 0], "truncated frame");

    // Headers.
    let unknown_key = frame(&[0x7f, 0x00, 0, 0, 0, 0, 0, 1, 0xff, 0xff]);
    assert_closed_after(addr, &unknown_key, "unknown API key");
    let metadata_v99 = frame(&[0, 3, 0, 99, 0, 0, 0, 5, 0xff, 0xff, 0, 0, 0, 0]);
    assert_closed_after(addr, &metadata_v99, "unsupported Metadata version");
    let produce_v2 = frame(&[0, 0, 0, 2, 0, 0, 0, 5, 0xff, 0xff, 0, 1, 0, 0, 0, 0]);
    assert_closed_after(addr, &produce_v2, "Produce below the KIP-896 minimum");
    let overlong_client_id = frame(&[0, 3, 0, 12, 0, 0, 0, 9, 0x7f, 0xff, 0xff, 0xff]);
    assert_closed_after(addr, &overlong_client_id, "client id longer than the frame");

    // Bodies.
    let mut garbage = BytesMut::new();
    garbage.put_i16(-1); // transactional id: null
    garbage.put_i16(1); // acks
    garbage.put_slice(b"\x01\x02"); // then the frame ends inside timeout_ms
    assert_closed_after(
        addr,
        &raw_request(ApiKey::Produce, 3, &garbage),
        "garbage body",
    );
    let mut huge = BytesMut::new();
    huge.put_i32(i32::MAX); // Metadata v4 topics: 2^31-1 elements, none behind
    assert_closed_after(
        addr,
        &raw_request(ApiKey::Metadata, 4, &huge),
        "huge array count",
    );
    let mut nested = BytesMut::new();
    nested.put_i16(-1); // transactional id
    nested.put_i16(-1); // acks
    nested.put_i32(5000); // timeout
    nested.put_i32(1); // one topic
    nested.put_i16(TOPIC.len() as i16);
    nested.put_slice(TOPIC.as_bytes());
    nested.put_i32(i32::MAX); // its partitions: 2^31-1, none behind
    assert_closed_after(
        addr,
        &raw_request(ApiKey::Produce, 3, &nested),
        "huge nested array count (Produce partitions)",
    );
    let mut nested_compact = BytesMut::new();
    nested_compact.put_u8(2); // compact array: one topic
    nested_compact.put_u8(2); // compact string "x"
    nested_compact.put_u8(b'x');
    nested_compact.put_i32(1); // num_partitions
    nested_compact.put_i16(1); // replication_factor
    nested_compact.put_slice(&[0xfe, 0xff, 0xff, 0xff, 0x07]); // assignments: 2^31-2 elements
    assert_closed_after(
        addr,
        &raw_request(ApiKey::CreateTopics, 7, &nested_compact),
        "huge nested compact array count (CreateTopics assignments)",
    );
    let varint_overflow = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
    assert_closed_after(
        addr,
        &raw_request(ApiKey::Metadata, 12, &varint_overflow),
        "varint overflow (Metadata v12 topics count)",
    );

    // Record batches: refused per partition with Kafka's error code; the connection lives.
    let mut bad_crc = build_batch(2000, &[(2000, b"k", b"flipped")]);
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0x55;
    assert_eq!(
        produce(&mut s, bad_crc).0,
        2,
        "CORRUPT_MESSAGE for a bad CRC"
    );
    let mut record_varint = build_batch(3000, &[(3000, b"k", b"v")]);
    record_varint.splice(61..62, [0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
    let batch_length = (record_varint.len() - 12) as i32;
    record_varint[8..12].copy_from_slice(&batch_length.to_be_bytes());
    let record_varint = with_fixed_crc(record_varint);
    assert_eq!(
        produce(&mut s, record_varint).0,
        87,
        "INVALID_RECORD for a varint overflow inside a record"
    );
    // A gzip batch whose compressed bytes are damaged (CRC recomputed to match): refused
    // when the broker decompresses it to check its records.
    let mut gzip = bytes::BytesMut::new();
    let record = kafka_protocol::records::Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: kafka_protocol::records::TimestampType::Creation,
        offset: 0,
        sequence: 0,
        timestamp: 4000,
        key: None,
        value: Some(Bytes::from(vec![b'z'; 500])),
        headers: Default::default(),
    };
    kafka_protocol::records::RecordBatchEncoder::encode(
        &mut gzip,
        [&record],
        &kafka_protocol::records::RecordEncodeOptions {
            version: 2,
            compression: kafka_protocol::records::Compression::Gzip,
        },
    )
    .unwrap();
    let mut gzip = gzip.to_vec();
    for byte in &mut gzip[70..80] {
        *byte ^= 0xa5;
    }
    assert_eq!(
        produce(&mut s, with_fixed_crc(gzip)).0,
        2,
        "CORRUPT_MESSAGE for damaged compressed data"
    );
    let mut torn = good.clone();
    torn.truncate(good.len() - 3);
    assert_eq!(
        produce(&mut s, torn).0,
        2,
        "CORRUPT_MESSAGE for a torn batch"
    );
    healthy(&mut s);

    // A long but valid client id is served.
    let long_client = "c".repeat(30_000);
    let mut buf = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(ApiKey::Metadata as i16)
        .with_request_api_version(12)
        .with_correlation_id(5)
        .with_client_id(Some(StrBytes::from_string(long_client)))
        .encode(&mut buf, 2)
        .unwrap();
    MetadataRequest::default()
        .with_topics(None)
        .encode(&mut buf, 12)
        .unwrap();
    s.write_all(&frame(&buf)).unwrap();
    let mut response = read_frame(&mut s).expect("a long client id is answered");
    let header = ResponseHeader::decode(&mut response, 1).unwrap();
    assert_eq!(header.correlation_id, 5);
    let metadata = MetadataResponse::decode(&mut response, 12).unwrap();
    assert!(metadata
        .topics
        .iter()
        .any(|t| t.name.as_deref() == Some(&StrBytes::from_static_str(TOPIC))));

    // Half-open connections that never send a full frame do not stop service.
    let idle: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut c = connect(addr);
            c.write_all(&[0, 0]).unwrap();
            c
        })
        .collect();
    healthy(&mut s);
    healthy(&mut connect(addr));
    drop(idle);

    // Nothing written before was lost, nothing refused was written.
    let (high_watermark, records) = fetch_all(&mut s);
    assert_eq!(high_watermark, 1, "only the good batch is in the log");
    assert_eq!(
        &records[12..],
        &good[12..],
        "stored bytes unchanged but the offset"
    );
    assert!(
        !broker.log().contains("panicked"),
        "no shard panicked:\n{}",
        broker.log()
    );
}
