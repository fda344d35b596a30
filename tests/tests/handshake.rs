//! The connection handshake every Kafka client performs first, against a running
//! `sluice serve`, at the wire level: ApiVersions (incl. the KIP-511 fallback for versions the
//! broker does not know) and Metadata; and hostile frames, each of which closes only its own
//! connection while other connections keep being served.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, MetadataResponse,
    RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use sluice_tests::Broker;

fn connect(broker: &Broker) -> TcpStream {
    let s = TcpStream::connect(broker.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn request<R: Encodable>(api: ApiKey, version: i16, correlation_id: i32, body: &R) -> Vec<u8> {
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("sluice-tests")));
    let mut buf = BytesMut::new();
    header
        .encode(&mut buf, api.request_header_version(version))
        .unwrap();
    body.encode(&mut buf, version).unwrap();
    let mut framed = (buf.len() as i32).to_be_bytes().to_vec();
    framed.extend_from_slice(&buf);
    framed
}

/// Reads one response frame; `None` if the broker closed the connection instead.
fn read_frame(s: &mut TcpStream) -> Option<Bytes> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).ok()?;
    Some(Bytes::from(body))
}

fn api_versions(s: &mut TcpStream, version: i16, correlation_id: i32) -> ApiVersionsResponse {
    s.write_all(&request(
        ApiKey::ApiVersions,
        version,
        correlation_id,
        &ApiVersionsRequest::default(),
    ))
    .unwrap();
    let mut frame = read_frame(s).expect("a response");
    let header = ResponseHeader::decode(&mut frame, 0).unwrap(); // ApiVersions: always header v0
    assert_eq!(header.correlation_id, correlation_id);
    ApiVersionsResponse::decode(&mut frame, version.min(4)).unwrap()
}

#[test]
fn api_versions_at_every_version_lists_what_is_implemented() {
    let broker = Broker::start(&["--cores", "2"]);
    let mut s = connect(&broker);
    for version in 0..=4 {
        let r = api_versions(&mut s, version, 100 + i32::from(version));
        assert_eq!(r.error_code, 0);
        let keys: Vec<(i16, i16, i16)> = r
            .api_keys
            .iter()
            .map(|k| (k.api_key, k.min_version, k.max_version))
            .collect();
        assert!(
            keys.contains(&(ApiKey::ApiVersions as i16, 0, 4)),
            "{keys:?}"
        );
        assert!(keys.contains(&(ApiKey::Metadata as i16, 0, 12)), "{keys:?}");
        assert_eq!(
            keys.len(),
            2,
            "only implemented APIs are advertised: {keys:?}"
        );
    }
}

#[test]
fn unknown_api_versions_version_gets_the_v0_fallback() {
    // KIP-511: a newer client's ApiVersions gets UNSUPPORTED_VERSION in the v0 format.
    let broker = Broker::start(&[]);
    let mut s = connect(&broker);
    let mut raw = BytesMut::new();
    raw.put_i16(ApiKey::ApiVersions as i16);
    raw.put_i16(99);
    raw.put_i32(42);
    raw.put_i16(-1); // null client id
    raw.put_u8(0); // empty tagged fields
    let mut framed = (raw.len() as i32).to_be_bytes().to_vec();
    framed.extend_from_slice(&raw);
    s.write_all(&framed).unwrap();
    let mut frame = read_frame(&mut s).expect("fallback response");
    assert_eq!(frame.get_i32(), 42);
    let r = ApiVersionsResponse::decode(&mut frame, 0).unwrap();
    assert_eq!(r.error_code, 35, "UNSUPPORTED_VERSION");
    assert!(r
        .api_keys
        .iter()
        .any(|k| k.api_key == ApiKey::ApiVersions as i16 && k.max_version == 4));
    // The connection stays usable: the client retries at a version both know.
    assert_eq!(api_versions(&mut s, 3, 43).error_code, 0);
}

#[test]
fn metadata_names_this_broker_as_controller_and_unknown_topics() {
    let broker = Broker::start(&[]);
    let mut s = connect(&broker);
    for version in [0i16, 1, 4, 9, 12] {
        let mut req = MetadataRequest::default();
        req.topics = Some(vec![MetadataRequestTopic::default()
            .with_name(Some(TopicName(StrBytes::from_static_str("no-such-topic"))))]);
        s.write_all(&request(ApiKey::Metadata, version, 7, &req))
            .unwrap();
        let mut frame = read_frame(&mut s).expect("metadata response");
        let header = ResponseHeader::decode(
            &mut frame,
            ApiKey::Metadata.response_header_version(version),
        )
        .unwrap();
        assert_eq!(header.correlation_id, 7);
        let r = MetadataResponse::decode(&mut frame, version).unwrap();
        assert_eq!(r.brokers.len(), 1);
        assert_eq!(r.brokers[0].port, i32::from(broker.addr.port()));
        if version >= 1 {
            assert_eq!(
                r.controller_id, r.brokers[0].node_id,
                "the controller is a broker that exists"
            );
        }
        assert_eq!(r.topics.len(), 1);
        assert_eq!(r.topics[0].error_code, 3, "UNKNOWN_TOPIC_OR_PARTITION");
    }
}

/// Sends `bytes` on a fresh connection and asserts the broker closes it without answering.
fn assert_closed_after(broker: &Broker, bytes: &[u8], what: &str) {
    let mut s = connect(broker);
    s.write_all(bytes).unwrap();
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut rest = Vec::new();
    let n = s.read_to_end(&mut rest).unwrap_or(0);
    assert_eq!(n, 0, "{what}: expected a closed connection, got {n} bytes");
}

#[test]
fn hostile_frames_close_only_their_own_connection() {
    let broker = Broker::start(&["--cores", "2"]);
    let mut healthy = connect(&broker);
    assert_eq!(api_versions(&mut healthy, 3, 1).error_code, 0);

    assert_closed_after(&broker, &(-5i32).to_be_bytes(), "negative length");
    assert_closed_after(&broker, &0i32.to_be_bytes(), "zero length");
    assert_closed_after(&broker, &i32::MAX.to_be_bytes(), "length over the maximum");
    assert_closed_after(&broker, &[0, 0, 0, 50, 0, 18, 0], "truncated frame");
    let mut unknown = vec![0, 0, 0, 10];
    unknown.extend_from_slice(&[0x7f, 0x00, 0, 0, 0, 0, 0, 1, 0xff, 0xff]);
    assert_closed_after(&broker, &unknown, "unknown API key");
    // Metadata v99: header api=3 version=99 correlation=5 client_id=null, then a topics count.
    let unsupported = [0, 0, 0, 14, 0, 3, 0, 99, 0, 0, 0, 5, 0xff, 0xff, 0, 0, 0, 0];
    assert_closed_after(&broker, &unsupported, "unsupported Metadata version");
    let mut garbage = vec![0, 0, 0, 12];
    garbage.extend_from_slice(&[0, 3, 0, 12, 0, 0, 0, 9, 0x7f, 0xff, 0xff, 0xff]);
    assert_closed_after(
        &broker,
        &garbage,
        "garbage body (client id longer than the frame)",
    );
    let mut huge_array = BytesMut::new();
    huge_array.put_i16(ApiKey::Metadata as i16);
    huge_array.put_i16(4);
    huge_array.put_i32(9);
    huge_array.put_i16(-1);
    huge_array.put_i32(i32::MAX); // topics array count, with no elements behind it
    let mut framed = (huge_array.len() as i32).to_be_bytes().to_vec();
    framed.extend_from_slice(&huge_array);
    assert_closed_after(&broker, &framed, "huge array count");

    // Half-open connections that never send a full frame do not stop service.
    let idle: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut s = connect(&broker);
            s.write_all(&[0, 0]).unwrap();
            s
        })
        .collect();
    assert_eq!(
        api_versions(&mut healthy, 3, 2).error_code,
        0,
        "the healthy connection still works"
    );
    let mut fresh = connect(&broker);
    assert_eq!(
        api_versions(&mut fresh, 0, 3).error_code,
        0,
        "new connections are still served"
    );
    drop(idle);
    assert!(broker.pid() > 0);
}
