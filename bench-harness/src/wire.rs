//! The Kafka protocol over a blocking socket, for the harness's own clients: requests encoded
//! with the `kafka-protocol` codecs, responses read as whole frames (pipelined: a frame reader
//! keeps partial input across timeouts), and the record-batch header fields a client needs to
//! follow its position.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{Record, TimestampType};

/// A response larger than this is refused (the broker's own frame limit is 100 MiB).
const FRAME_LIMIT: usize = 256 << 20;
/// Bytes asked of the socket per read.
const READ_BYTES: usize = 64 << 10;

/// One connection to a broker.
pub struct Connection {
    socket: TcpStream,
    next_correlation: i32,
    input: BytesMut,
    /// What each socket read lands in before it joins `input`. Reading straight into `input`
    /// meant zeroing its whole capacity first: once a large response had grown it to megabytes,
    /// every read of a 10,000-partition run zeroed megabytes (half the client's CPU).
    scratch: Box<[u8]>,
    pub sent_bytes: u64,
    pub received_bytes: u64,
}

impl Connection {
    pub fn connect(address: &str) -> Result<Connection, String> {
        let socket = TcpStream::connect(address).map_err(|e| format!("connect {address}: {e}"))?;
        socket.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(Connection {
            socket,
            next_correlation: 1,
            input: BytesMut::with_capacity(READ_BYTES),
            scratch: vec![0; READ_BYTES].into_boxed_slice(),
            sent_bytes: 0,
            received_bytes: 0,
        })
    }

    /// Sends a request; returns its correlation id.
    pub fn send<R: Encodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        body: &R,
    ) -> Result<i32, String> {
        let correlation = self.next_correlation;
        self.next_correlation = self.next_correlation.wrapping_add(1).max(1);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[0; 4]);
        RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation)
            .with_client_id(Some(StrBytes::from_static_str("sluice-bench")))
            .encode(&mut buf, api.request_header_version(version))
            .map_err(|e| format!("{api:?}: {e}"))?;
        body.encode(&mut buf, version)
            .map_err(|e| format!("{api:?}: {e}"))?;
        let length = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&length.to_be_bytes());
        self.socket
            .write_all(&buf)
            .map_err(|e| format!("{api:?}: {e}"))?;
        self.sent_bytes += buf.len() as u64;
        Ok(correlation)
    }

    /// The next whole response frame (header and body, length removed), waiting at most
    /// `wait`; `None` when none arrived in time. Partial input is kept for the next call.
    /// Waits with poll(2): a socket read timeout would round short waits up to a jiffy.
    pub fn receive_frame(&mut self, wait: Duration) -> Result<Option<Bytes>, String> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(frame) = self.take_frame()? {
                return Ok(Some(frame));
            }
            if self.read_available()? {
                continue;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Ok(None);
            }
            let timeout = rustix::event::Timespec {
                tv_sec: remaining.as_secs() as i64,
                tv_nsec: remaining.subsec_nanos() as i64,
            };
            let mut fds = [rustix::event::PollFd::new(
                &self.socket,
                rustix::event::PollFlags::IN,
            )];
            match rustix::event::poll(&mut fds, Some(&timeout)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(format!("poll: {e}")),
            }
        }
    }

    /// A whole frame from the input already read, if there is one.
    fn take_frame(&mut self) -> Result<Option<Bytes>, String> {
        if self.input.len() < 4 {
            return Ok(None);
        }
        let length = i32::from_be_bytes(self.input[..4].try_into().expect("4 bytes"));
        let length = usize::try_from(length)
            .ok()
            .filter(|l| *l <= FRAME_LIMIT)
            .ok_or_else(|| format!("response frame of {length} bytes"))?;
        if self.input.len() < 4 + length {
            self.input.reserve(4 + length - self.input.len());
            return Ok(None);
        }
        self.input.advance(4);
        self.received_bytes += 4 + length as u64;
        Ok(Some(self.input.split_to(length).freeze()))
    }

    /// Reads what the socket has without waiting; whether anything came.
    fn read_available(&mut self) -> Result<bool, String> {
        self.socket
            .set_nonblocking(true)
            .map_err(|e| e.to_string())?;
        let mut got = false;
        let outcome = loop {
            match self.socket.read(&mut self.scratch) {
                Ok(0) => break Err("the broker closed the connection".to_string()),
                Ok(n) => {
                    self.input.extend_from_slice(&self.scratch[..n]);
                    got = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break Ok(got),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => break Err(format!("read: {e}")),
            }
        };
        self.socket
            .set_nonblocking(false)
            .map_err(|e| e.to_string())?;
        outcome
    }

    /// Decodes a frame from [`Connection::receive_frame`]: its correlation id and body.
    pub fn decode<Resp: Decodable>(
        frame: Bytes,
        api: ApiKey,
        version: i16,
    ) -> Result<(i32, Resp), String> {
        let mut frame = frame;
        let header = ResponseHeader::decode(&mut frame, api.response_header_version(version))
            .map_err(|e| format!("{api:?} response header: {e}"))?;
        let body =
            Resp::decode(&mut frame, version).map_err(|e| format!("{api:?} response: {e}"))?;
        Ok((header.correlation_id, body))
    }

    /// One request and its response (nothing else in flight on this connection).
    pub fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, String> {
        let correlation = self.send(api, version, body)?;
        let frame = self
            .receive_frame(timeout)?
            .ok_or_else(|| format!("{api:?}: no response within {timeout:?}"))?;
        let (answered, response) = Connection::decode(frame, api, version)?;
        if answered != correlation {
            return Err(format!("{api:?}: answer to another request"));
        }
        Ok(response)
    }
}

/// A record of a plain (not idempotent, not transactional) producer, the `index`-th of its
/// batch. The sequence follows the offset because the codec's encoder starts a new batch
/// wherever `offset - sequence` changes; the batch's base sequence stays -1.
pub fn plain_record(index: usize, key: Option<Bytes>, value: Bytes, timestamp_ms: i64) -> Record {
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: index as i64,
        sequence: index as i32 - 1,
        timestamp: timestamp_ms,
        key,
        value: Some(value),
        headers: Default::default(),
    }
}

/// For the whole batches at the start of `records`: the offset after the last one and the
/// records they hold; `None` when there is no whole batch. A partial batch at the end (Kafka
/// may cut one at `max_bytes`) is left for the next fetch.
pub fn next_offset_and_count(records: &[u8]) -> Option<(i64, u64)> {
    whole_batches(records).map(|(next, count, _)| (next, count))
}

/// Like [`next_offset_and_count`], also giving the length of the whole batches.
pub fn whole_batches(records: &[u8]) -> Option<(i64, u64, usize)> {
    let mut at = 0;
    let mut next = None;
    let mut count = 0u64;
    while records.len() >= at + 61 {
        let base = i64::from_be_bytes(records[at..at + 8].try_into().ok()?);
        let length = i32::from_be_bytes(records[at + 8..at + 12].try_into().ok()?) as usize;
        let last_delta = i32::from_be_bytes(records[at + 23..at + 27].try_into().ok()?);
        let in_batch = i32::from_be_bytes(records[at + 57..at + 61].try_into().ok()?);
        if records.len() < at + 12 + length {
            break;
        }
        next = Some(base + i64::from(last_delta) + 1);
        count += in_batch.max(0) as u64;
        at += 12 + length;
    }
    next.map(|n| (n, count, at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::{Compression, RecordBatchEncoder, RecordEncodeOptions};

    fn one_record_batch() -> Vec<u8> {
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &[plain_record(0, None, Bytes::from_static(b"v"), 0)],
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .unwrap();
        buf.to_vec()
    }

    #[test]
    fn positions_follow_the_last_whole_batch() {
        let one = one_record_batch();
        let mut two = one.clone();
        // A second batch at base offset 5.
        let mut second = one.clone();
        second[..8].copy_from_slice(&5i64.to_be_bytes());
        two.extend_from_slice(&second);
        assert_eq!(next_offset_and_count(&one), Some((1, 1)));
        assert_eq!(next_offset_and_count(&two), Some((6, 2)));
        assert_eq!(whole_batches(&two).map(|w| w.2), Some(two.len()));
        // A partial batch at the end is not counted.
        assert_eq!(next_offset_and_count(&two[..two.len() - 3]), Some((1, 1)));
        assert_eq!(next_offset_and_count(&[]), None);
    }
}
