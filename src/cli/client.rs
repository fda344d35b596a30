//! A small blocking Kafka client for the command-line tools: connections per broker, version
//! negotiation with ApiVersions (including the KIP-511 v0 fallback), request/response framing
//! with the `kafka-protocol` codecs, and routing of partition requests to their leaders.
//!
//! It speaks to any Kafka-compatible broker, not only Sluice. Each API is used at the highest
//! version both sides implement, within the range this client knows how to fill in
//! ([`ApiUse`]).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, MetadataResponse,
    RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

/// How long connecting and each request may take.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response frame accepted.
const RESPONSE_BYTES_MAX: usize = 256 << 20;

pub type Result<T> = std::result::Result<T, String>;

/// An API and the versions of it this client can fill in.
#[derive(Debug, Clone, Copy)]
pub struct ApiUse {
    pub key: ApiKey,
    pub min: i16,
    pub max: i16,
}

/// One broker connection and the versions it implements.
struct Connection {
    stream: TcpStream,
    addr: String,
    versions: HashMap<i16, (i16, i16)>,
    correlation_id: i32,
}

impl Connection {
    fn open(addr: &str) -> Result<Connection> {
        let target = addr
            .to_socket_addrs()
            .map_err(|e| format!("{addr}: {e}"))?
            .next()
            .ok_or_else(|| format!("{addr}: no address"))?;
        let stream = TcpStream::connect_timeout(&target, IO_TIMEOUT)
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        stream.set_read_timeout(Some(IO_TIMEOUT)).ok();
        stream.set_write_timeout(Some(IO_TIMEOUT)).ok();
        stream.set_nodelay(true).ok();
        let mut conn = Connection {
            stream,
            addr: addr.to_string(),
            versions: HashMap::new(),
            correlation_id: 0,
        };
        // v3 first; a broker that does not know it answers in v0 with its ranges (KIP-511).
        let mut response: ApiVersionsResponse =
            conn.call_raw(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default())?;
        if response.error_code == 35 {
            response = conn.call_raw(ApiKey::ApiVersions, 0, &ApiVersionsRequest::default())?;
        }
        if response.error_code != 0 {
            return Err(format!(
                "{addr}: ApiVersions failed with error {}",
                response.error_code
            ));
        }
        conn.versions = response
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect();
        Ok(conn)
    }

    fn version(&self, api: ApiUse) -> Result<i16> {
        let (lo, hi) = self
            .versions
            .get(&(api.key as i16))
            .copied()
            .ok_or_else(|| format!("{}: the broker does not implement {:?}", self.addr, api.key))?;
        let version = hi.min(api.max);
        if version < lo.max(api.min) {
            return Err(format!(
                "{}: no common version of {:?} (broker {lo}..={hi}, client {}..={})",
                self.addr, api.key, api.min, api.max
            ));
        }
        Ok(version)
    }

    /// Sends a request and returns its correlation id.
    fn send<Req: Encodable>(&mut self, api: ApiKey, version: i16, request: &Req) -> Result<i32> {
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("sluice-cli")));
        let mut body = BytesMut::new();
        header
            .encode(&mut body, api.request_header_version(version))
            .map_err(|e| format!("encoding a {api:?} header: {e}"))?;
        request
            .encode(&mut body, version)
            .map_err(|e| format!("encoding {api:?} v{version}: {e}"))?;
        let mut frame = (body.len() as i32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        self.stream
            .write_all(&frame)
            .map_err(|e| format!("{}: {e}", self.addr))?;
        Ok(self.correlation_id)
    }

    fn receive<Resp: Decodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        correlation_id: i32,
    ) -> Result<Resp> {
        let lost = |e: std::io::Error| format!("{}: {e}", self.addr);
        let mut length = [0u8; 4];
        self.stream.read_exact(&mut length).map_err(lost)?;
        let length = i32::from_be_bytes(length);
        let length = usize::try_from(length)
            .ok()
            .filter(|l| *l <= RESPONSE_BYTES_MAX)
            .ok_or_else(|| format!("{}: bad response length {length}", self.addr))?;
        let mut body = vec![0u8; length];
        self.stream.read_exact(&mut body).map_err(lost)?;
        let mut body = Bytes::from(body);
        let header_version = if api == ApiKey::ApiVersions {
            0
        } else {
            api.response_header_version(version)
        };
        let header = ResponseHeader::decode(&mut body, header_version)
            .map_err(|e| format!("{}: bad response header: {e}", self.addr))?;
        if header.correlation_id != correlation_id {
            return Err(format!("{}: response out of order", self.addr));
        }
        let decode_version = if api == ApiKey::ApiVersions && version > 0 {
            // A KIP-511 fallback answer is in v0 whatever was asked: peek at the error code.
            if body.len() >= 2 && i16::from_be_bytes([body[0], body[1]]) == 35 {
                0
            } else {
                version
            }
        } else {
            version
        };
        Resp::decode(&mut body, decode_version)
            .map_err(|e| format!("{}: cannot decode {api:?} v{version}: {e}", self.addr))
    }

    fn call_raw<Req: Encodable, Resp: Decodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        request: &Req,
    ) -> Result<Resp> {
        let id = self.send(api, version, request)?;
        self.receive(api, version, id)
    }
}

/// A client of one cluster.
pub struct Client {
    bootstrap: String,
    connections: HashMap<String, Connection>,
    /// Broker id -> address, from the last Metadata response.
    brokers: HashMap<i32, String>,
}

impl Client {
    /// A client that starts from the first broker of `bootstrap` (`HOST:PORT`, or several,
    /// comma-separated, as Kafka's tools take them) it can connect to.
    pub fn new(bootstrap: &str) -> Result<Client> {
        let mut failures = Vec::new();
        for address in bootstrap
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
        {
            let mut client = Client {
                bootstrap: address.to_string(),
                connections: HashMap::new(),
                brokers: HashMap::new(),
            };
            match client.connection(address) {
                Ok(_) => return Ok(client),
                Err(e) => failures.push(e),
            }
        }
        Err(if failures.is_empty() {
            format!("no broker address in `{bootstrap}`")
        } else {
            failures.join("; ")
        })
    }

    /// Connects to the broker at `addr` unless connected already: whether it can be asked.
    pub fn reach(&mut self, addr: &str) -> Result<()> {
        self.connection(addr).map(|_| ())
    }

    fn connection(&mut self, addr: &str) -> Result<&mut Connection> {
        if !self.connections.contains_key(addr) {
            let conn = Connection::open(addr)?;
            self.connections.insert(addr.to_string(), conn);
        }
        Ok(self.connections.get_mut(addr).expect("just inserted"))
    }

    /// Sends `request` to the broker at `addr` (the bootstrap broker when `None`) at the
    /// highest version both implement; `build` fills the request for that version.
    pub fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        addr: Option<&str>,
        api: ApiUse,
        build: impl FnOnce(i16) -> Req,
    ) -> Result<Resp> {
        let addr = addr.unwrap_or(&self.bootstrap).to_string();
        let conn = self.connection(&addr)?;
        let version = conn.version(api)?;
        let request = build(version);
        let id = conn.send(api.key, version, &request)?;
        conn.receive(api.key, version, id)
    }

    /// Like [`Client::call`] for a request that takes no response (Produce with acks=0).
    pub fn send_only<Req: Encodable>(
        &mut self,
        addr: Option<&str>,
        api: ApiUse,
        build: impl FnOnce(i16) -> Req,
    ) -> Result<()> {
        let addr = addr.unwrap_or(&self.bootstrap).to_string();
        let conn = self.connection(&addr)?;
        let version = conn.version(api)?;
        conn.send(api.key, version, &build(version)).map(|_| ())
    }

    /// Metadata for `topics` (every topic when `None`); remembers the brokers' addresses.
    pub fn metadata(&mut self, topics: Option<&[&str]>) -> Result<MetadataResponse> {
        let response = self.metadata_from(None, topics)?;
        self.brokers = response
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
            .collect();
        Ok(response)
    }

    /// Metadata as the broker at `addr` (the bootstrap broker when `None`) answers it.
    pub fn metadata_from(
        &mut self,
        addr: Option<&str>,
        topics: Option<&[&str]>,
    ) -> Result<MetadataResponse> {
        const METADATA: ApiUse = ApiUse {
            key: ApiKey::Metadata,
            min: 1,
            max: 12,
        };
        self.call(addr, METADATA, |_| {
            MetadataRequest::default()
                .with_allow_auto_topic_creation(false)
                .with_topics(topics.map(|names| {
                    names
                        .iter()
                        .map(|n| {
                            MetadataRequestTopic::default()
                                .with_name(Some(TopicName(StrBytes::from_string(n.to_string()))))
                        })
                        .collect()
                }))
        })
    }

    /// The address of the controller (where topics are created and deleted), as Metadata
    /// names it; the bootstrap broker when none is named.
    pub fn controller_address(&mut self) -> Result<Option<String>> {
        let metadata = self.metadata(Some(&[]))?;
        match metadata.controller_id.0 {
            id if id >= 0 => self.broker_address(id).map(Some),
            _ => Ok(None),
        }
    }

    /// Every registered broker, fenced ones (dead: Metadata leaves them out) included, as
    /// DescribeCluster v2 lists them; remembers their addresses. Falls back to Metadata's
    /// brokers where the broker has no DescribeCluster v2.
    pub fn all_brokers(&mut self) -> Result<Vec<(i32, String)>> {
        use kafka_protocol::messages::{DescribeClusterRequest, DescribeClusterResponse};
        const DESCRIBE_CLUSTER: ApiUse = ApiUse {
            key: ApiKey::DescribeCluster,
            min: 2,
            max: 2,
        };
        let listed: Result<DescribeClusterResponse> = self.call(None, DESCRIBE_CLUSTER, |_| {
            DescribeClusterRequest::default()
                .with_endpoint_type(1)
                .with_include_fenced_brokers(true)
        });
        match listed {
            Ok(answer) if answer.error_code == 0 => {
                for b in &answer.brokers {
                    self.brokers
                        .insert(b.broker_id.0, format!("{}:{}", b.host.as_str(), b.port));
                }
                let mut ids: Vec<i32> = answer.brokers.iter().map(|b| b.broker_id.0).collect();
                ids.sort_unstable();
                ids.into_iter()
                    .map(|id| Ok((id, self.broker_address(id)?)))
                    .collect()
            }
            _ => {
                let mut ids: Vec<i32> = self.brokers.keys().copied().collect();
                ids.sort_unstable();
                ids.into_iter()
                    .map(|id| Ok((id, self.broker_address(id)?)))
                    .collect()
            }
        }
    }

    /// The address of broker `node_id`, from the last Metadata response.
    pub fn broker_address(&self, node_id: i32) -> Result<String> {
        self.brokers
            .get(&node_id)
            .cloned()
            .ok_or_else(|| format!("broker {node_id} is not in the cluster metadata"))
    }
}

/// Kafka's default partitioner for keyed records: murmur2 of the key, made positive, modulo
/// the partition count. Matching it puts a key in the same partition the Java client would.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    ((murmur2(key) & 0x7fff_ffff) as i32) % partitions.max(1)
}

/// MurmurHash2 as Kafka's `Utils.murmur2` computes it (seed 0x9747b28c).
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafkas() {
        // Expected values from Apache Kafka's own UtilsTest (Utils.murmur2 returns an int).
        let cases: &[(&str, i32)] = &[
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key.as_bytes()) as i32, *expected, "{key}");
        }
    }
}
