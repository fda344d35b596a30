//! `kafka-wire://ADDRESS` targets: the harness's own Kafka producer and consumer, for load
//! shapes librdkafka cannot drive on a small machine.
//!
//! Why not librdkafka here: its broker thread walks every partition of the topic on each
//! wake-up (`rd_kafka_toppar_producer_serve`), so at 10,000 partitions the client used a whole
//! core and fell seconds behind at 20,000 records/s while the broker idled (docs/benchmarks.md);
//! and it has no incremental fetch sessions. No maintained Rust client batches a linger
//! window's records for every partition into one request either (`rskafka` sends a request per
//! partition). This one does the minimum a load generator needs, on one connection to one
//! broker (every partition must be led there: a single node):
//!
//! - **Producer**: records are buffered per partition (keyless records round-robin over the
//!   partitions, keyed ones by FNV-1a of the key); when the oldest buffered record has waited
//!   `linger_ms`, or `batch_size` bytes are buffered, every partition with records goes out as
//!   one batch (of at most `batch_size` bytes) in one Produce request (v9, the workload's acks and compression); up to
//!   [`IN_FLIGHT`] requests are pipelined, answered in order. Publish latency is taken when
//!   the response arrives, from each record's intended send time.
//! - **Consumer**: one fetch session (KIP-227) over its partitions from offset 0: a full fetch
//!   creates it, then each fetch names only the partitions whose position moved.
//!
//! Not supported (refused by name): acks=0 (no response to wait for) and idempotence.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, FetchRequest, FetchResponse, ProduceRequest, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
};

use crate::redis_streams::key_hash;
use crate::run::{new_histogram, Receiver, Sender, Shared};
use crate::wire::{plain_record, whole_batches, Connection};
use crate::workload::Workload;

/// The address scheme of these targets.
pub const SCHEME: &str = "kafka-wire://";

/// Produce requests in flight per producer.
pub const IN_FLIGHT: usize = 5;

const PRODUCE_VERSION: i16 = 9;
const FETCH_VERSION: i16 = 12;

/// Records a producer holds (buffered or in flight) before `send` reports it full.
const QUEUE_RECORDS: usize = 100_000;

/// The bootstrap address of a `kafka-wire://` target.
pub fn address(target_address: &str) -> &str {
    target_address
        .strip_prefix(SCHEME)
        .unwrap_or(target_address)
}

fn compression(name: &str) -> Result<Compression, String> {
    Ok(match name {
        "none" => Compression::None,
        "gzip" => Compression::Gzip,
        "snappy" => Compression::Snappy,
        "lz4" => Compression::Lz4,
        "zstd" => Compression::Zstd,
        other => return Err(format!("producer.compression `{other}` is not known")),
    })
}

#[derive(Default)]
struct PartitionBuffer {
    records: Vec<Record>,
    intended: Vec<u64>,
    bytes: usize,
}

impl PartitionBuffer {
    /// Takes the oldest records up to `max_bytes` (at least one) as one batch's worth; the
    /// rest are renumbered from 0 (offset and sequence) for the next batch.
    fn take(&mut self, max_bytes: usize) -> PartitionBuffer {
        let mut bytes = 0;
        let mut count = 0;
        for record in &self.records {
            let size = record_bytes(record);
            if count > 0 && bytes + size > max_bytes {
                break;
            }
            bytes += size;
            count += 1;
        }
        if count == self.records.len() {
            return std::mem::take(self);
        }
        let rest = self.records.split_off(count);
        let taken = PartitionBuffer {
            records: std::mem::replace(&mut self.records, rest),
            intended: {
                let rest = self.intended.split_off(count);
                std::mem::replace(&mut self.intended, rest)
            },
            bytes,
        };
        self.bytes -= bytes;
        for (i, record) in self.records.iter_mut().enumerate() {
            record.offset = i as i64;
            record.sequence = i as i32 - 1;
        }
        taken
    }
}

fn record_bytes(record: &Record) -> usize {
    record.value.as_ref().map_or(0, |v| v.len()) + record.key.as_ref().map_or(0, |k| k.len())
}

struct InFlight {
    correlation: i32,
    /// Per partition in the request: the intended send times of its records.
    partitions: Vec<(i32, Vec<u64>)>,
}

pub struct Producer {
    connection: Connection,
    topic: TopicName,
    acks: i16,
    linger: Duration,
    batch_bytes: usize,
    options: RecordEncodeOptions,
    buffers: Vec<PartitionBuffer>,
    /// Partitions with buffered records, in the order they got their first.
    dirty: Vec<i32>,
    buffered_bytes: usize,
    buffered_records: usize,
    oldest: Option<Instant>,
    next_partition: usize,
    in_flight: std::collections::VecDeque<InFlight>,
    in_flight_records: usize,
    shared: Arc<Shared>,
    publish: Histogram<u64>,
    error_reported: bool,
}

impl Producer {
    pub fn new(
        target_address: &str,
        workload: &Workload,
        topic: &str,
        shared: Arc<Shared>,
    ) -> Result<Producer, String> {
        let settings = &workload.producer;
        let acks = match settings.acks.as_str() {
            "all" | "-1" => -1,
            "1" => 1,
            other => {
                return Err(format!(
                    "producer.acks `{other}`: the kafka-wire client supports 1 and all"
                ))
            }
        };
        if settings.idempotence {
            return Err("producer.idempotence: the kafka-wire client does not support it".into());
        }
        if !settings.extra.is_empty() {
            return Err("producer.extra: librdkafka properties do not apply to kafka-wire".into());
        }
        Ok(Producer {
            connection: Connection::connect(address(target_address))?,
            topic: TopicName(StrBytes::from_string(topic.to_string())),
            acks,
            linger: Duration::from_millis(settings.linger_ms),
            batch_bytes: settings.batch_size.max(1) as usize,
            options: RecordEncodeOptions {
                version: 2,
                compression: compression(&settings.compression)?,
            },
            buffers: (0..workload.partitions_per_topic)
                .map(|_| PartitionBuffer::default())
                .collect(),
            dirty: Vec::new(),
            buffered_bytes: 0,
            buffered_records: 0,
            oldest: None,
            next_partition: 0,
            in_flight: Default::default(),
            in_flight_records: 0,
            shared,
            publish: new_histogram(),
            error_reported: false,
        })
    }

    /// Sends every buffered record in one Produce request.
    fn flush(&mut self) -> Result<(), String> {
        if self.dirty.is_empty() {
            return Ok(());
        }
        // One batch per partition (Produce v3+), of at most `batch_size` bytes: a partition
        // with more keeps the rest for the next request (a batch must stay under the topic's
        // `max.message.bytes`).
        let mut data = Vec::with_capacity(self.dirty.len());
        let mut partitions = Vec::with_capacity(self.dirty.len());
        let mut still_dirty = Vec::new();
        let mut sent_records = 0;
        for p in std::mem::take(&mut self.dirty) {
            let buffer = self.buffers[p as usize].take(self.batch_bytes);
            if !self.buffers[p as usize].records.is_empty() {
                still_dirty.push(p);
            }
            let mut batch = BytesMut::new();
            RecordBatchEncoder::encode(&mut batch, &buffer.records, &self.options)
                .map_err(|e| format!("encode a record batch: {e}"))?;
            data.push(
                PartitionProduceData::default()
                    .with_index(p)
                    .with_records(Some(batch.freeze())),
            );
            self.buffered_bytes -= buffer.bytes;
            sent_records += buffer.records.len();
            partitions.push((p, buffer.intended));
        }
        self.dirty = still_dirty;
        let request = ProduceRequest::default()
            .with_acks(self.acks)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(self.topic.clone())
                .with_partition_data(data)]);
        let correlation = self
            .connection
            .send(ApiKey::Produce, PRODUCE_VERSION, &request)?;
        self.in_flight_records += sent_records;
        self.buffered_records -= sent_records;
        self.in_flight.push_back(InFlight {
            correlation,
            partitions,
        });
        if self.buffered_records == 0 {
            self.oldest = None;
        }
        Ok(())
    }

    /// Reads responses that arrive within `wait` (returning at the first).
    fn receive(&mut self, wait: Duration) -> Result<(), String> {
        let Some(frame) = self.connection.receive_frame(wait)? else {
            return Ok(());
        };
        let (correlation, response): (i32, ProduceResponse) =
            Connection::decode(frame, ApiKey::Produce, PRODUCE_VERSION)?;
        let sent = self
            .in_flight
            .pop_front()
            .ok_or("a Produce response with no request in flight")?;
        if sent.correlation != correlation {
            return Err("Produce responses out of order".into());
        }
        let errors: std::collections::HashMap<i32, i16> = response
            .responses
            .iter()
            .flat_map(|t| &t.partition_responses)
            .map(|p| (p.index, p.error_code))
            .collect();
        for (partition, intended) in sent.partitions {
            self.in_flight_records -= intended.len();
            match errors.get(&partition) {
                Some(0) => {
                    for i in intended {
                        self.shared.record_ack(&mut self.publish, i);
                    }
                }
                code => {
                    if !self.error_reported {
                        self.error_reported = true;
                        eprintln!(
                            "kafka-wire producer: partition {partition} answered error {code:?} (reported once)"
                        );
                    }
                    for _ in intended {
                        self.shared.record_error();
                    }
                }
            }
        }
        Ok(())
    }

    fn due(&self) -> bool {
        self.buffered_bytes >= self.batch_bytes
            || self.oldest.is_some_and(|t| t.elapsed() >= self.linger)
    }
}

impl Sender for Producer {
    fn send(
        &mut self,
        partition_hint: Option<i32>,
        key: Option<&[u8]>,
        payload: &[u8],
        intended_ns: u64,
    ) -> Result<bool, String> {
        if self.buffered_records + self.in_flight_records >= QUEUE_RECORDS {
            return Ok(false);
        }
        let partitions = self.buffers.len();
        let p = match (partition_hint, key) {
            (Some(p), _) => p as usize % partitions,
            (None, Some(key)) => (key_hash(key) % partitions as u64) as usize,
            (None, None) => {
                self.next_partition = (self.next_partition + 1) % partitions;
                self.next_partition
            }
        };
        let buffer = &mut self.buffers[p];
        if buffer.records.is_empty() {
            self.dirty.push(p as i32);
        }
        let timestamp_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        buffer.records.push(plain_record(
            buffer.records.len(),
            key.map(Bytes::copy_from_slice),
            Bytes::copy_from_slice(payload),
            timestamp_ms,
        ));
        buffer.intended.push(intended_ns);
        let size = payload.len() + key.map_or(0, |k| k.len());
        buffer.bytes += size;
        self.buffered_bytes += size;
        self.buffered_records += 1;
        self.oldest.get_or_insert_with(Instant::now);
        Ok(true)
    }

    fn service(&mut self, wait: Duration) -> Result<(), String> {
        let deadline = Instant::now() + wait;
        loop {
            if self.due() && self.in_flight.len() < IN_FLIGHT {
                self.flush()?;
            }
            // Answers already here are taken without waiting.
            while !self.in_flight.is_empty() && self.take_ready()? {}
            // Wake for a response, the linger deadline or the caller's, whichever is first.
            let now = Instant::now();
            let mut until = deadline;
            if let Some(oldest) = self.oldest.filter(|_| self.in_flight.len() < IN_FLIGHT) {
                until = until.min(oldest + self.linger);
            }
            if now >= until {
                if now >= deadline {
                    return Ok(());
                }
                continue; // the linger ran out: flush
            }
            if self.in_flight.is_empty() {
                std::thread::sleep(until - now);
            } else {
                self.receive(until - now)?;
            }
        }
    }

    fn finish(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while (self.buffered_records > 0 || !self.in_flight.is_empty()) && Instant::now() < deadline
        {
            if self.buffered_records > 0 && self.in_flight.len() < IN_FLIGHT {
                self.flush()?;
            }
            if !self.in_flight.is_empty() {
                self.receive(deadline.saturating_duration_since(Instant::now()))?;
            }
        }
        for _ in 0..self.buffered_records + self.in_flight_records {
            self.shared.record_error();
        }
        Ok(())
    }

    fn with_publish_latencies(&self, use_it: &mut dyn FnMut(&Histogram<u64>)) {
        use_it(&self.publish);
    }
}

impl Producer {
    /// Takes one response already received, without waiting; false when there is none.
    fn take_ready(&mut self) -> Result<bool, String> {
        let before = self.in_flight.len();
        self.receive(Duration::ZERO)?;
        Ok(self.in_flight.len() < before)
    }
}

pub struct Consumer {
    connection: Connection,
    topic: TopicName,
    partitions: Vec<i32>,
    positions: std::collections::HashMap<i32, i64>,
    session_id: i32,
    epoch: i32,
    moved: Vec<i32>,
}

impl Consumer {
    pub fn new(target_address: &str, topic: &str, partitions: &[i32]) -> Result<Consumer, String> {
        Ok(Consumer {
            connection: Connection::connect(address(target_address))?,
            topic: TopicName(StrBytes::from_string(topic.to_string())),
            partitions: partitions.to_vec(),
            positions: partitions.iter().map(|p| (*p, 0)).collect(),
            session_id: 0,
            epoch: 0,
            moved: Vec::new(),
        })
    }

    fn request(&self, wait: Duration) -> FetchRequest {
        // Epoch 0: a full fetch naming every partition (and creating a session); later, only
        // the partitions whose position moved.
        let named: &[i32] = if self.epoch == 0 {
            &self.partitions
        } else {
            &self.moved
        };
        let partitions: Vec<FetchPartition> = named
            .iter()
            .map(|p| {
                FetchPartition::default()
                    .with_partition(*p)
                    .with_fetch_offset(self.positions[p])
                    .with_partition_max_bytes(1 << 20)
            })
            .collect();
        FetchRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_max_wait_ms(wait.as_millis().clamp(1, 30_000) as i32)
            .with_min_bytes(1)
            .with_max_bytes(50 << 20)
            .with_session_id(self.session_id)
            .with_session_epoch(self.epoch)
            .with_topics(if partitions.is_empty() {
                Vec::new()
            } else {
                vec![FetchTopic::default()
                    .with_topic(self.topic.clone())
                    .with_partitions(partitions)]
            })
    }
}

impl Receiver for Consumer {
    fn poll(&mut self, wait: Duration, on_record: &mut dyn FnMut(&[u8])) -> Result<(), String> {
        if self.partitions.is_empty() {
            std::thread::sleep(wait);
            return Ok(());
        }
        let request = self.request(wait);
        let response: FetchResponse = self.connection.call(
            ApiKey::Fetch,
            FETCH_VERSION,
            &request,
            wait + Duration::from_secs(30),
        )?;
        if response.error_code != 0 {
            // A lost or stale session: start again with a full fetch.
            self.session_id = 0;
            self.epoch = 0;
            return Ok(());
        }
        if self.epoch == 0 {
            self.session_id = response.session_id;
        }
        // Without a session (id 0) every fetch stays full.
        self.epoch = if self.session_id == 0 {
            0
        } else {
            self.epoch.wrapping_add(1).max(1)
        };
        self.moved.clear();
        for partition in response.responses.iter().flat_map(|t| &t.partitions) {
            if partition.error_code != 0 {
                return Err(format!(
                    "fetch: error {} on partition {}",
                    partition.error_code, partition.partition_index
                ));
            }
            let Some(records) = &partition.records else {
                continue;
            };
            let Some((next, _, whole)) = whole_batches(records) else {
                continue;
            };
            let mut batches = records.slice(..whole);
            while !batches.is_empty() {
                let set = RecordBatchDecoder::decode(&mut batches)
                    .map_err(|e| format!("decode a fetched batch: {e}"))?;
                for record in &set.records {
                    if record.offset >= self.positions[&partition.partition_index] {
                        if let Some(value) = &record.value {
                            on_record(value);
                        }
                    }
                }
            }
            self.positions.insert(partition.partition_index, next);
            self.moved.push(partition.partition_index);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: i64, value: &'static [u8]) -> Record {
        plain_record(i as usize, None, Bytes::from_static(value), 0)
    }

    #[test]
    fn a_partition_sends_at_most_a_batch_size_and_renumbers_the_rest() {
        let mut buffer = PartitionBuffer::default();
        for i in 0..5 {
            buffer.records.push(record(i, b"0123456789"));
            buffer.intended.push(i as u64);
            buffer.bytes += 10;
        }
        let first = buffer.take(25);
        assert_eq!(
            (first.records.len(), first.bytes, first.intended),
            (2, 20, vec![0, 1])
        );
        assert_eq!(buffer.bytes, 30);
        let renumbered: Vec<(i64, i32)> = buffer
            .records
            .iter()
            .map(|r| (r.offset, r.sequence))
            .collect();
        assert_eq!(
            renumbered,
            vec![(0, -1), (1, 0), (2, 1)],
            "one batch with base sequence -1"
        );
        // One record is always taken, even over the limit; the last take empties the buffer.
        assert_eq!(buffer.take(1).records.len(), 1);
        let rest = buffer.take(1 << 20);
        assert_eq!((rest.records.len(), rest.intended), (2, vec![3, 4]));
        assert!(buffer.records.is_empty() && buffer.bytes == 0);
    }
}
