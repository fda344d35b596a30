//! The Redis Streams side of a run, a different-protocol comparison: each Kafka partition becomes
//! one stream (`<topic>-<partition>`), a producer sends `XADD` commands and a consumer reads with
//! blocking `XREAD` from the start of its streams.
//!
//! Batching: a producer pipelines every record that is due (up to 1000) into one round trip, as a
//! Kafka client batches records into one request; with `appendfsync always` Redis fsyncs its
//! append-only file once per event-loop pass, so a pipeline is one group commit. Latencies are
//! taken from intended send times exactly as for Kafka (see `run`).

use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use redis::{Connection, Value};

use crate::run::{new_histogram, Receiver, Sender, Shared};

const PIPELINE_LIMIT: usize = 1000;

fn connect(address: &str) -> Result<Connection, String> {
    redis::Client::open(address)
        .and_then(|client| client.get_connection())
        .map_err(|e| format!("connect to {address}: {e}"))
}

fn stream(topic: &str, partition: u32) -> String {
    format!("{topic}-{partition}")
}

pub fn delete_streams(address: &str, topics: &[String], partitions: u32) -> Result<(), String> {
    let mut connection = connect(address)?;
    let mut del = redis::cmd("DEL");
    for topic in topics {
        for p in 0..partitions {
            del.arg(stream(topic, p));
        }
    }
    del.exec(&mut connection).map_err(|e| format!("DEL: {e}"))
}

pub struct Producer {
    connection: Connection,
    streams: Vec<String>,
    next_stream: usize,
    pipeline: redis::Pipeline,
    pending: Vec<u64>,
    shared: Arc<Shared>,
    publish: Histogram<u64>,
}

impl Producer {
    pub fn new(
        address: &str,
        topic: &str,
        partitions: u32,
        shared: Arc<Shared>,
    ) -> Result<Producer, String> {
        Ok(Producer {
            connection: connect(address)?,
            streams: (0..partitions).map(|p| stream(topic, p)).collect(),
            next_stream: 0,
            pipeline: redis::pipe(),
            pending: Vec::new(),
            shared,
            publish: new_histogram(),
        })
    }
}

/// FNV-1a: a keyed record always lands in the same stream (or partition, for the harness's
/// own Kafka client).
pub(crate) fn key_hash(key: &[u8]) -> u64 {
    key.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Sender for Producer {
    fn send(
        &mut self,
        partition_hint: Option<i32>,
        key: Option<&[u8]>,
        payload: &[u8],
        intended_ns: u64,
    ) -> Result<bool, String> {
        if self.pending.len() >= PIPELINE_LIMIT {
            return Ok(false);
        }
        let index = match (partition_hint, key) {
            (Some(p), _) => p as usize % self.streams.len(),
            (None, Some(key)) => (key_hash(key) % self.streams.len() as u64) as usize,
            (None, None) => {
                self.next_stream = (self.next_stream + 1) % self.streams.len();
                self.next_stream
            }
        };
        let command = self.pipeline.cmd("XADD").arg(&self.streams[index]).arg("*");
        if let Some(key) = key {
            command.arg("k").arg(key);
        }
        command.arg("v").arg(payload);
        self.pending.push(intended_ns);
        Ok(true)
    }

    fn service(&mut self, wait: Duration) -> Result<(), String> {
        if self.pending.is_empty() {
            std::thread::sleep(wait);
            return Ok(());
        }
        let outcome = self.pipeline.exec(&mut self.connection);
        self.pipeline.clear();
        match outcome {
            Ok(()) => {
                for intended in self.pending.drain(..) {
                    self.shared.record_ack(&mut self.publish, intended);
                }
                Ok(())
            }
            Err(e) => {
                for _ in self.pending.drain(..) {
                    self.shared.record_error();
                }
                Err(format!("XADD: {e}"))
            }
        }
    }

    fn with_publish_latencies(&self, use_it: &mut dyn FnMut(&Histogram<u64>)) {
        use_it(&self.publish);
    }

    fn finish(&mut self, _timeout: Duration) -> Result<(), String> {
        self.service(Duration::ZERO)
    }
}

pub struct Consumer {
    connection: Connection,
    streams: Vec<String>,
    last_ids: Vec<Vec<u8>>,
}

impl Consumer {
    pub fn new(address: &str, topic: &str, partitions: &[i32]) -> Result<Consumer, String> {
        Ok(Consumer {
            connection: connect(address)?,
            streams: partitions
                .iter()
                .map(|&p| stream(topic, p as u32))
                .collect(),
            last_ids: partitions.iter().map(|_| b"0".to_vec()).collect(),
        })
    }
}

fn bytes(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn array(value: &Value) -> &[Value] {
    match value {
        Value::Array(items) => items,
        _ => &[],
    }
}

impl Receiver for Consumer {
    fn poll(&mut self, wait: Duration, on_record: &mut dyn FnMut(&[u8])) -> Result<(), String> {
        if self.streams.is_empty() {
            std::thread::sleep(wait);
            return Ok(());
        }
        let mut xread = redis::cmd("XREAD");
        xread
            .arg("COUNT")
            .arg(PIPELINE_LIMIT)
            .arg("BLOCK")
            .arg(wait.as_millis().max(1) as u64)
            .arg("STREAMS");
        for s in &self.streams {
            xread.arg(s);
        }
        for id in &self.last_ids {
            xread.arg(id.as_slice());
        }
        let reply: Value = xread
            .query(&mut self.connection)
            .map_err(|e| format!("XREAD: {e}"))?;
        // [[stream, [[id, [field, value, ...]], ...]], ...]; nil when the block timed out.
        for per_stream in array(&reply) {
            let [name, entries] = array(per_stream) else {
                continue;
            };
            let Some(index) =
                bytes(name).and_then(|n| self.streams.iter().position(|s| s.as_bytes() == n))
            else {
                continue;
            };
            for entry in array(entries) {
                let [id, fields] = array(entry) else {
                    continue;
                };
                if let Some(id) = bytes(id) {
                    self.last_ids[index] = id.to_vec();
                }
                let fields = array(fields);
                let value = fields
                    .chunks(2)
                    .find(|pair| pair.first().and_then(bytes) == Some(b"v"))
                    .and_then(|pair| pair.get(1))
                    .and_then(bytes);
                if let Some(payload) = value {
                    on_record(payload);
                }
            }
        }
        Ok(())
    }
}
