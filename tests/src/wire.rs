//! Raw Kafka requests over a blocking socket, for wire-level tests: encode with the
//! `kafka-protocol` codecs (or hand-built bytes for hostile input), read one response frame.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect to the broker");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// The client id of the requests built here (unless a test names another).
pub const CLIENT_ID: &str = "sluice-tests";

/// A whole request frame: `[length][header][body]`.
pub fn request<R: Encodable>(api: ApiKey, version: i16, correlation_id: i32, body: &R) -> Vec<u8> {
    request_as(CLIENT_ID, api, version, correlation_id, body)
}

/// [`request`] with another client id.
pub fn request_as<R: Encodable>(
    client_id: &str,
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &R,
) -> Vec<u8> {
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from(client_id.to_string())));
    let mut buf = BytesMut::new();
    header
        .encode(&mut buf, api.request_header_version(version))
        .unwrap();
    body.encode(&mut buf, version).unwrap();
    frame(&buf)
}

/// Prefixes `body` with its length.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut framed = (body.len() as i32).to_be_bytes().to_vec();
    framed.extend_from_slice(body);
    framed
}

/// Reads one response frame; `None` if the broker closed the connection instead.
pub fn read_frame(s: &mut TcpStream) -> Option<Bytes> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).ok()?;
    Some(Bytes::from(body))
}

/// Sends a request and decodes its response (checking the correlation id).
pub fn call<Req: Encodable, Resp: Decodable>(
    s: &mut TcpStream,
    api: ApiKey,
    version: i16,
    body: &Req,
) -> Resp {
    call_as(s, CLIENT_ID, api, version, body)
}

/// [`call`] with another client id.
pub fn call_as<Req: Encodable, Resp: Decodable>(
    s: &mut TcpStream,
    client_id: &str,
    api: ApiKey,
    version: i16,
    body: &Req,
) -> Resp {
    let correlation_id = 4242;
    s.write_all(&request_as(client_id, api, version, correlation_id, body))
        .unwrap();
    let mut frame = read_frame(s).unwrap_or_else(|| panic!("{api:?} v{version}: no response"));
    let header = ResponseHeader::decode(&mut frame, api.response_header_version(version)).unwrap();
    assert_eq!(header.correlation_id, correlation_id);
    Resp::decode(&mut frame, version).unwrap()
}

/// Sends `bytes` on a fresh connection and asserts the broker closes it without answering.
pub fn assert_closed_after(addr: SocketAddr, bytes: &[u8], what: &str) {
    let mut s = connect(addr);
    s.write_all(bytes).unwrap();
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut rest = Vec::new();
    let n = s.read_to_end(&mut rest).unwrap_or(0);
    assert_eq!(n, 0, "{what}: expected a closed connection, got {n} bytes");
}

/// A batch of `records` records (values `seq-N`) from idempotent producer `(id, epoch)`,
/// starting at `sequence`.
pub fn idempotent_batch(id: i64, epoch: i16, sequence: i32, records: usize) -> Vec<u8> {
    let values: Vec<String> = (0..records)
        .map(|i| format!("seq-{}", sequence as usize + i))
        .collect();
    let recs: Vec<(i64, &[u8], &[u8])> = values
        .iter()
        .map(|v| (1, &b"k"[..], v.as_bytes()))
        .collect();
    let mut batch = sluice_storage::batch::build_batch(1, &recs);
    set_producer(&mut batch, id, epoch, sequence);
    batch
}

/// One record `value` (key `k`) of transactional producer `(id, epoch)` at `sequence`,
/// stamped now.
pub fn transactional_batch(id: i64, epoch: i16, sequence: i32, value: &[u8]) -> Vec<u8> {
    let now = sluice_storage::types::now_ms();
    let mut batch = sluice_storage::batch::build_batch(now, &[(now, b"k", value)]);
    // Attributes at bytes 21..23; bit 4 is "transactional".
    let attributes = i16::from_be_bytes([batch[21], batch[22]]) | 0x10;
    batch[21..23].copy_from_slice(&attributes.to_be_bytes());
    set_producer(&mut batch, id, epoch, sequence);
    batch
}

/// Sets a batch's producer id, epoch and base sequence and computes its CRC again (Kafka's
/// layout: producer id at byte 43, epoch at 51, base sequence at 53, the CRC at 17 over bytes
/// 21..).
fn set_producer(batch: &mut [u8], id: i64, epoch: i16, sequence: i32) {
    batch[43..51].copy_from_slice(&id.to_be_bytes());
    batch[51..53].copy_from_slice(&epoch.to_be_bytes());
    batch[53..57].copy_from_slice(&sequence.to_be_bytes());
    let crc = crc32c::crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// Produce v9 of `batch` to `topic` partition `partition` with `acks` and
/// `transactional_id` on the request: the partition's answer.
pub fn produce(
    s: &mut TcpStream,
    acks: i16,
    transactional_id: Option<&str>,
    topic: &str,
    partition: i32,
    batch: Vec<u8>,
) -> kafka_protocol::messages::produce_response::PartitionProduceResponse {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName, TransactionalId};
    let mut response: ProduceResponse = call(
        s,
        ApiKey::Produce,
        9,
        &ProduceRequest::default()
            .with_acks(acks)
            .with_timeout_ms(10_000)
            .with_transactional_id(
                transactional_id.map(|id| TransactionalId(StrBytes::from_string(id.to_string()))),
            )
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(partition)
                    .with_records(Some(Bytes::from(batch)))])]),
    );
    response.responses.remove(0).partition_responses.remove(0)
}
