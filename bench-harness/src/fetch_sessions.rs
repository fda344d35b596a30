//! `sluice bench fetch-sessions`: what incremental fetch sessions (KIP-227) save a consumer of
//! many partitions, beside full fetches, on one broker.
//!
//! One topic of N partitions. Each step appends one record to each of a few partitions (a
//! different few every step, acks=all: a record is readable once it is durable, so the fetch
//! right after the answer finds it) and then fetches once, as a consumer assigned every
//! partition would: in full mode every fetch names all N partitions (epoch -1, the way
//! librdkafka fetches); in incremental mode a session is created first and each fetch names
//! only the partitions whose position moved. Both modes run in alternating blocks; per mode it
//! reports bytes per request and per response, partitions per response, the fetch's round trip,
//! and (with `--broker-pid`) the broker's CPU time per step and per fetch (a step less the
//! same produce run alone, in blocks of its own), read from the scheduler's nanosecond
//! counters of every broker thread (`/proc/PID/task/*/schedstat`; per block, since a running
//! thread's counter moves only at ticks and switches). The topic is deleted at the end. Every record
//! produced must come back through the fetches, in both modes, or the run fails.
//!
//! Speaks the protocol directly through the `kafka-protocol` codecs: librdkafka has no fetch
//! sessions, and a client library would hide the bytes on the wire.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
    FetchRequest, FetchResponse, ProduceRequest, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Compression, RecordBatchEncoder, RecordEncodeOptions};
use serde::Serialize;

use crate::report::Latency;
use crate::run::new_histogram;
use crate::wire::{next_offset_and_count, plain_record, Connection};

const FETCH_VERSION: i16 = 16;
/// Creating or deleting 10,000 partitions takes a while.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
const PRODUCE_VERSION: i16 = 9;

#[derive(Debug, Clone)]
pub struct Options {
    pub target: String,
    pub partitions: i32,
    /// Fetches per mode and block.
    pub fetches: u32,
    /// Blocks per mode (alternating full, incremental).
    pub blocks: u32,
    /// Partitions appended to before each fetch.
    pub active: i32,
    pub broker_pid: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct ModeResult {
    pub mode: &'static str,
    pub fetches: u64,
    pub request_bytes_per_fetch: f64,
    pub response_bytes_per_fetch: f64,
    pub partitions_per_response: f64,
    pub records_read: u64,
    pub fetch_round_trip_us: Latency,
    /// Broker CPU per step (produce `active` records, then fetch), all threads; `None`
    /// without `--broker-pid`.
    pub broker_cpu_us_per_step: Option<f64>,
    /// The same less a step's produce alone (measured in blocks of its own).
    pub broker_cpu_us_per_fetch: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub partitions: i32,
    pub active_per_step: i32,
    pub modes: Vec<ModeResult>,
}

/// CPU time of every thread of `pid` so far, in nanoseconds.
fn cpu_ns(pid: u32) -> Result<u64, String> {
    let tasks = format!("/proc/{pid}/task");
    let mut total = 0;
    for task in std::fs::read_dir(&tasks).map_err(|e| format!("{tasks}: {e}"))? {
        let path = task.map_err(|e| e.to_string())?.path().join("schedstat");
        // A thread may end between listing and reading.
        if let Ok(text) = std::fs::read_to_string(&path) {
            total += text
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(total)
}

fn one_record_batch(n: u64) -> Result<Bytes, String> {
    let record = plain_record(
        0,
        None,
        Bytes::from(format!("record {n:>16}").into_bytes()),
        1_700_000_000_000,
    );
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &[record],
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .map_err(|e| format!("encode a record batch: {e}"))?;
    Ok(buf.freeze())
}

struct Bench {
    client: Connection,
    topic: TopicName,
    topic_id: uuid::Uuid,
    partitions: i32,
    positions: Vec<i64>,
    next_active: i32,
    produced: u64,
}

impl Bench {
    fn produce_step(&mut self, active: i32) -> Result<(), String> {
        let mut data = Vec::with_capacity(active as usize);
        for _ in 0..active {
            let p = self.next_active;
            self.next_active = (self.next_active + 7919) % self.partitions;
            data.push(
                PartitionProduceData::default()
                    .with_index(p)
                    .with_records(Some(one_record_batch(self.produced)?)),
            );
            self.produced += 1;
        }
        let request = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(self.topic.clone())
                .with_partition_data(data)]);
        let response: ProduceResponse =
            self.client
                .call(ApiKey::Produce, PRODUCE_VERSION, &request, CALL_TIMEOUT)?;
        for p in response
            .responses
            .iter()
            .flat_map(|t| &t.partition_responses)
        {
            if p.error_code != 0 {
                return Err(format!(
                    "produce: error {} on partition {}",
                    p.error_code, p.index
                ));
            }
        }
        Ok(())
    }

    fn fetch_request(&self, partitions: &[i32], session_id: i32, epoch: i32) -> FetchRequest {
        FetchRequest::default()
            .with_max_wait_ms(0)
            .with_min_bytes(0)
            .with_max_bytes(64 << 20)
            .with_session_id(session_id)
            .with_session_epoch(epoch)
            .with_topics(if partitions.is_empty() {
                Vec::new()
            } else {
                vec![FetchTopic::default()
                    .with_topic_id(self.topic_id)
                    .with_partitions(
                        partitions
                            .iter()
                            .map(|&p| {
                                FetchPartition::default()
                                    .with_partition(p)
                                    .with_fetch_offset(self.positions[p as usize])
                                    .with_partition_max_bytes(1 << 20)
                            })
                            .collect(),
                    )]
            })
    }

    /// Sends one fetch; moves the positions of partitions that returned records. Returns the
    /// response, the partitions that moved and the records read.
    fn fetch(&mut self, request: &FetchRequest) -> Result<(FetchResponse, Vec<i32>, u64), String> {
        let response: FetchResponse =
            self.client
                .call(ApiKey::Fetch, FETCH_VERSION, request, CALL_TIMEOUT)?;
        if response.error_code != 0 {
            return Err(format!("fetch: error {}", response.error_code));
        }
        let mut moved = Vec::new();
        let mut read = 0;
        for p in response.responses.iter().flat_map(|t| &t.partitions) {
            if p.error_code != 0 {
                return Err(format!(
                    "fetch: error {} on partition {}",
                    p.error_code, p.partition_index
                ));
            }
            if let Some((next, count)) = p.records.as_deref().and_then(next_offset_and_count) {
                self.positions[p.partition_index as usize] = next;
                moved.push(p.partition_index);
                read += count;
            }
        }
        Ok((response, moved, read))
    }
}

impl Bench {
    /// A fetch counted in `tally`: bytes both ways, partitions answered, records, round trip.
    /// Returns the partitions whose position moved.
    fn counted_fetch(
        &mut self,
        request: &FetchRequest,
        tally: &mut Tally,
    ) -> Result<Vec<i32>, String> {
        let (sent, received) = (self.client.sent_bytes, self.client.received_bytes);
        let started = Instant::now();
        let (response, moved, read) = self.fetch(request)?;
        tally
            .round_trips
            .saturating_record(started.elapsed().as_micros() as u64);
        tally.fetches += 1;
        tally.request_bytes += self.client.sent_bytes - sent;
        tally.response_bytes += self.client.received_bytes - received;
        tally.partitions_answered += response
            .responses
            .iter()
            .map(|t| t.partitions.len() as u64)
            .sum::<u64>();
        tally.records_read += read;
        Ok(moved)
    }
}

struct Tally {
    fetches: u64,
    request_bytes: u64,
    response_bytes: u64,
    partitions_answered: u64,
    records_read: u64,
    cpu_ns: u64,
    round_trips: hdrhistogram::Histogram<u64>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            fetches: 0,
            request_bytes: 0,
            response_bytes: 0,
            partitions_answered: 0,
            records_read: 0,
            cpu_ns: 0,
            round_trips: new_histogram(),
        }
    }

    fn result(&self, mode: &'static str, with_cpu: bool, produce_only_ns: u64) -> ModeResult {
        let per = |n: u64| n as f64 / self.fetches.max(1) as f64;
        ModeResult {
            mode,
            fetches: self.fetches,
            request_bytes_per_fetch: per(self.request_bytes),
            response_bytes_per_fetch: per(self.response_bytes),
            partitions_per_response: per(self.partitions_answered),
            records_read: self.records_read,
            fetch_round_trip_us: Latency {
                curve: Vec::new(),
                ..Latency::from_histogram(&self.round_trips)
            },
            broker_cpu_us_per_step: with_cpu.then(|| per(self.cpu_ns) / 1000.0),
            broker_cpu_us_per_fetch: with_cpu
                .then(|| (per(self.cpu_ns) - per(produce_only_ns)).max(0.0) / 1000.0),
        }
    }
}

pub fn measure(options: &Options) -> Result<Report, String> {
    if options.partitions < 1 || options.active < 1 || options.active > options.partitions {
        return Err("need 1 <= --active <= --partitions".into());
    }
    let mut client = Connection::connect(&options.target)?;
    let name = format!(
        "fetch-sessions-{}-{}",
        options.partitions,
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    );
    let topic = TopicName(StrBytes::from_string(name.clone()));
    let created: CreateTopicsResponse = client.call(
        ApiKey::CreateTopics,
        7,
        &CreateTopicsRequest::default()
            .with_timeout_ms(120_000)
            .with_topics(vec![CreatableTopic::default()
                .with_name(topic.clone())
                .with_num_partitions(options.partitions)
                .with_replication_factor(1)]),
        CALL_TIMEOUT,
    )?;
    let answer = created.topics.first().ok_or("CreateTopics: no answer")?;
    if answer.error_code != 0 {
        return Err(format!("CreateTopics {name}: error {}", answer.error_code));
    }
    let mut bench = Bench {
        client,
        topic,
        topic_id: answer.topic_id,
        partitions: options.partitions,
        positions: vec![0; options.partitions as usize],
        next_active: 0,
        produced: 0,
    };
    let all: Vec<i32> = (0..options.partitions).collect();
    let mut full = Tally::new();
    let mut incremental = Tally::new();
    let cpu = |pid: Option<u32>| pid.map_or(Ok(0), cpu_ns);
    let mut produce_only_ns = 0;
    for _ in 0..options.blocks {
        // The produce half of a step alone: its CPU is taken off both modes' steps. Records
        // produced here are read by the next fetch and not counted.
        let cpu_before = cpu(options.broker_pid)?;
        for _ in 0..options.fetches {
            bench.produce_step(options.active)?;
        }
        produce_only_ns += cpu(options.broker_pid)? - cpu_before;
        bench.fetch(&bench.fetch_request(&all, 0, -1))?;

        // Full fetches, as librdkafka sends them.
        let produced_before = bench.produced;
        let read_before = full.records_read;
        let cpu_before = cpu(options.broker_pid)?;
        for _ in 0..options.fetches {
            bench.produce_step(options.active)?;
            let request = bench.fetch_request(&all, 0, -1);
            bench.counted_fetch(&request, &mut full)?;
        }
        full.cpu_ns += cpu(options.broker_pid)? - cpu_before;
        let read = full.records_read - read_before;
        let produced = bench.produced - produced_before;
        if read != produced {
            return Err(format!("full fetches read {read} of {produced} records"));
        }

        // A session: one full fetch creates it (not counted), then incremental fetches.
        let request = bench.fetch_request(&all, 0, 0);
        let (created, _, _) = bench.fetch(&request)?;
        let session_id = created.session_id;
        if session_id == 0 {
            return Err("the broker created no fetch session".into());
        }
        let produced_before = bench.produced;
        let read_before = incremental.records_read;
        let cpu_before = cpu(options.broker_pid)?;
        let mut moved: Vec<i32> = Vec::new();
        for epoch in 1..=options.fetches as i32 {
            bench.produce_step(options.active)?;
            let request = bench.fetch_request(&moved, session_id, epoch);
            moved = bench.counted_fetch(&request, &mut incremental)?;
        }
        incremental.cpu_ns += cpu(options.broker_pid)? - cpu_before;
        let read = incremental.records_read - read_before;
        let produced = bench.produced - produced_before;
        if read != produced {
            return Err(format!(
                "incremental fetches read {read} of {produced} records"
            ));
        }
        // Close the session, as a consumer leaving does.
        let request = bench.fetch_request(&[], session_id, -1);
        bench.fetch(&request)?;
    }
    let deleted: DeleteTopicsResponse = bench.client.call(
        ApiKey::DeleteTopics,
        4,
        &DeleteTopicsRequest::default()
            .with_timeout_ms(120_000)
            .with_topic_names(vec![bench.topic.clone()]),
        CALL_TIMEOUT,
    )?;
    if let Some(error) = deleted
        .responses
        .first()
        .map(|r| r.error_code)
        .filter(|c| *c != 0)
    {
        return Err(format!("DeleteTopics {name}: error {error}"));
    }
    Ok(Report {
        partitions: options.partitions,
        active_per_step: options.active,
        modes: vec![
            full.result("full", options.broker_pid.is_some(), produce_only_ns),
            incremental.result("incremental", options.broker_pid.is_some(), produce_only_ns),
        ],
    })
}
