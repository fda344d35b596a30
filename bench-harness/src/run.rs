//! One benchmark run and the max-rate search: topics created fresh, consumers started, producers
//! paced open-loop, progress printed, everything torn down, a [`RunResult`] returned.
//!
//! Timing model (the coordinated-omission correction): producer `k` owns a schedule of intended
//! send times `start + i / rate_k`. When the client blocks (queue full, slow broker), the
//! producer falls behind and then sends the overdue records at once, each still stamped with its
//! *intended* time; publish latency (acknowledgement - intended) and end-to-end latency (consumer
//! receipt - intended) therefore include the time a record waited to be sent. All clocks are one
//! process's monotonic clock, so producer and consumer timestamps compare exactly.
//!
//! Only records whose intended time falls in the measured window (after warm-up) count towards
//! throughput and the histograms; the per-second series covers the whole run.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::report::{Latency, RunResult, SecondSample, Throughput, Trial};
use crate::workload::{KeyDistribution, NamedRate, Rate, Workload, TIMESTAMP_BYTES};
use crate::{kafka, kafka_wire, redis_streams};

/// The first record is due this long after the run's epoch: consumers get a moment to connect.
const START_DELAY_NS: u64 = 500_000_000;

/// Where a run sends its load.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub address: String,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Kafka,
    /// Kafka through the harness's own client (`kafka_wire`), for shapes librdkafka cannot
    /// drive here (thousands of partitions).
    KafkaWire,
    RedisStreams,
}

impl Target {
    /// `NAME=ADDRESS` or `ADDRESS`; an address starting `redis://` is a Redis Streams target,
    /// `kafka-wire://` a Kafka broker driven by the harness's own client, anything else a
    /// Kafka bootstrap list (librdkafka).
    pub fn parse(spec: &str) -> Result<Target, String> {
        let (name, address) = match spec.split_once('=') {
            Some((name, address)) if !name.is_empty() => (name.to_string(), address.to_string()),
            _ => (spec.to_string(), spec.to_string()),
        };
        if address.is_empty() {
            return Err(format!("target `{spec}` has no address"));
        }
        let protocol = if address.starts_with("redis://") {
            Protocol::RedisStreams
        } else if address.starts_with(kafka_wire::SCHEME) {
            Protocol::KafkaWire
        } else {
            Protocol::Kafka
        };
        Ok(Target {
            name,
            address,
            protocol,
        })
    }

    fn protocol_name(&self) -> &'static str {
        match self.protocol {
            Protocol::Kafka => "kafka",
            Protocol::KafkaWire => "kafka-wire",
            Protocol::RedisStreams => "redis-streams",
        }
    }
}

/// State every thread of one run shares.
pub struct Shared {
    epoch: Instant,
    /// Records intended at or after this (ns since epoch) are measured...
    measure_from_ns: u64,
    /// ... and producers stop scheduling at this.
    produce_until_ns: u64,
    pub stop_consumers: AtomicBool,
    pub failed: Mutex<Option<String>>,
    message_size: u64,
    acked: AtomicU64,
    /// Acknowledgements and receipts that arrived inside the window (throughput)...
    acked_in_window: AtomicU64,
    consumed_in_window: AtomicU64,
    /// ... and records intended inside the window that were sent (the rest fell behind).
    sent_measured: AtomicU64,
    scheduled_measured: AtomicU64,
    consumed: AtomicU64,
    errors: AtomicU64,
    sent: AtomicU64,
    /// Per second since the epoch: acknowledged records, consumed records.
    acked_per_second: Vec<AtomicU64>,
    consumed_per_second: Vec<AtomicU64>,
    publish_hist: Mutex<Histogram<u64>>,
    e2e_hist: Mutex<Histogram<u64>>,
}

/// Latencies are recorded in microseconds, 3 significant digits, up to an hour.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

impl Shared {
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Second of the run `ns` falls in, counted from the first scheduled send.
    fn second_of(&self, ns: u64) -> usize {
        ((ns.saturating_sub(START_DELAY_NS) / 1_000_000_000) as usize)
            .min(self.acked_per_second.len() - 1)
    }

    /// Inside the measured window: an arrival counted for throughput, or an intended send time
    /// that puts the record in the latency sample.
    fn in_window(&self, ns: u64) -> bool {
        ns >= self.measure_from_ns && ns < self.produce_until_ns
    }

    /// A record's acknowledgement arrived.
    pub fn record_ack(&self, hist: &mut Histogram<u64>, intended_ns: u64) {
        let now = self.now_ns();
        self.acked.fetch_add(1, Ordering::Relaxed);
        self.acked_per_second[self.second_of(now)].fetch_add(1, Ordering::Relaxed);
        if self.in_window(now) {
            self.acked_in_window.fetch_add(1, Ordering::Relaxed);
        }
        if self.in_window(intended_ns) {
            hist.saturating_record(now.saturating_sub(intended_ns) / 1000);
        }
    }

    pub fn record_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// A consumer received a record with this payload.
    pub fn record_consumed(&self, hist: &mut Histogram<u64>, payload: &[u8]) {
        let now = self.now_ns();
        self.consumed.fetch_add(1, Ordering::Relaxed);
        self.consumed_per_second[self.second_of(now)].fetch_add(1, Ordering::Relaxed);
        if self.in_window(now) {
            self.consumed_in_window.fetch_add(1, Ordering::Relaxed);
        }
        let Some(stamp) = payload.get(..TIMESTAMP_BYTES) else {
            return;
        };
        let intended_ns = u64::from_le_bytes(stamp.try_into().expect("8 bytes"));
        if self.in_window(intended_ns) {
            hist.saturating_record(now.saturating_sub(intended_ns) / 1000);
        }
    }

    fn merge_publish(&self, hist: &Histogram<u64>) {
        self.publish_hist
            .lock()
            .unwrap()
            .add(hist)
            .expect("same bounds");
    }

    pub fn merge_end_to_end(&self, hist: &Histogram<u64>) {
        self.e2e_hist
            .lock()
            .unwrap()
            .add(hist)
            .expect("same bounds");
    }

    fn fail(&self, error: String) {
        self.failed.lock().unwrap().get_or_insert(error);
        self.stop_consumers.store(true, Ordering::Relaxed);
    }
}

/// What a producer thread sends through: one client connection of some protocol.
pub trait Sender {
    /// Hands one record to the client. `Ok(false)`: its queue is full, call `service` and retry.
    fn send(
        &mut self,
        partition_hint: Option<i32>,
        key: Option<&[u8]>,
        payload: &[u8],
        intended_ns: u64,
    ) -> Result<bool, String>;
    /// Lets the client make progress (send what was handed over, report acknowledgements), then
    /// waits up to `wait`; acknowledgements must not wait for the next call to be timed.
    fn service(&mut self, wait: Duration) -> Result<(), String>;
    /// Waits up to `timeout` for every record handed over to be acknowledged; what is left is
    /// dropped (and counted as an error), not waited for.
    fn finish(&mut self, timeout: Duration) -> Result<(), String>;
    /// Hands this sender's publish-latency histogram to `use_it` (to merge into the run's).
    fn with_publish_latencies(&self, use_it: &mut dyn FnMut(&Histogram<u64>));
}

/// What a consumer thread reads through.
pub trait Receiver {
    /// Waits up to `wait` for records, handing each payload to `on_record`.
    fn poll(&mut self, wait: Duration, on_record: &mut dyn FnMut(&[u8])) -> Result<(), String>;
}

/// Open-loop schedule of one producer.
#[derive(Clone, Copy)]
struct Pacer {
    start_ns: u64,
    interval_ns: f64,
}

impl Pacer {
    /// Records due by `now_ns`.
    fn due_by(&self, now_ns: u64) -> u64 {
        if now_ns < self.start_ns {
            0
        } else {
            ((now_ns - self.start_ns) as f64 / self.interval_ns) as u64 + 1
        }
    }

    fn intended(&self, i: u64) -> u64 {
        self.start_ns + (i as f64 * self.interval_ns) as u64
    }
}

/// Payloads of one producer: a few templates of the workload's randomness, stamped per send.
struct Payloads {
    templates: Vec<Vec<u8>>,
    next: usize,
}

impl Payloads {
    fn new(workload: &Workload, rng: &mut SmallRng) -> Payloads {
        let random_bytes = (workload.message_size as f64 * workload.payload_randomness) as usize;
        let templates = (0..16)
            .map(|_| {
                let mut payload = vec![0u8; workload.message_size];
                rng.fill(&mut payload[..random_bytes]);
                payload
            })
            .collect();
        Payloads { templates, next: 0 }
    }

    fn stamped(&mut self, intended_ns: u64) -> &[u8] {
        self.next = (self.next + 1) % self.templates.len();
        let payload = &mut self.templates[self.next];
        payload[..TIMESTAMP_BYTES].copy_from_slice(&intended_ns.to_le_bytes());
        payload
    }
}

struct Keys {
    distribution: KeyDistribution,
    space: u64,
    next: u64,
    buf: String,
}

impl Keys {
    fn next(&mut self, rng: &mut SmallRng) -> Option<&[u8]> {
        use std::fmt::Write as _;
        self.buf.clear();
        match self.distribution {
            KeyDistribution::NoKey => return None,
            KeyDistribution::Random => {
                let _ = write!(self.buf, "{:016x}", rng.random::<u64>());
            }
            KeyDistribution::RoundRobin => {
                let _ = write!(self.buf, "key-{}", self.next);
                self.next = (self.next + 1) % self.space;
            }
        }
        Some(self.buf.as_bytes())
    }
}

fn producer_loop(
    sender: &mut dyn Sender,
    shared: &Shared,
    workload: &Workload,
    pacer: Option<Pacer>,
    seed: u64,
) -> Result<(), String> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut payloads = Payloads::new(workload, &mut rng);
    let mut keys = Keys {
        distribution: workload.key_distribution,
        space: workload.key_space,
        next: 0,
        buf: String::new(),
    };
    if let Some(p) = pacer {
        // Records of this schedule intended inside the window: what "unsent" is counted against.
        let in_window =
            p.due_by(shared.produce_until_ns - 1) - p.due_by(shared.measure_from_ns - 1);
        shared
            .scheduled_measured
            .fetch_add(in_window, Ordering::Relaxed);
    }
    let mut i = 0u64;
    loop {
        let now = shared.now_ns();
        if shared.stop_consumers.load(Ordering::Relaxed) {
            break;
        }
        // Past the end, the records intended before it still go out (a late wake-up must not
        // drop the last ones); then the loop ends.
        let ended = now >= shared.produce_until_ns;
        if ended && pacer.is_none() {
            break;
        }
        let due = match pacer {
            Some(p) => p.due_by(now),
            None => i + 10_000,
        };
        let mut full = false;
        while i < due {
            let intended = match pacer {
                Some(p) => p.intended(i),
                None => shared.now_ns(),
            };
            if intended >= shared.produce_until_ns {
                break;
            }
            let key = keys.next(&mut rng);
            if !sender.send(None, key, payloads.stamped(intended), intended)? {
                full = true;
                break;
            }
            shared.sent.fetch_add(1, Ordering::Relaxed);
            if shared.in_window(intended) {
                shared.sent_measured.fetch_add(1, Ordering::Relaxed);
            }
            i += 1;
        }
        // One pass after the end only: a producer far behind schedule stops here, and what it
        // never sent counts as unsent.
        if ended {
            break;
        }
        if full {
            sender.service(Duration::from_millis(1))?;
            continue;
        }
        // Hand over what was queued, then sleep until the next record's intended time. Never
        // spin: on a small machine the broker needs the cores. The kernel wakes us 50-100 us
        // late; the records then due go out together, and their latency (from the intended
        // time) includes the lateness, so it is charged, not hidden.
        let wait = match pacer {
            Some(p) => p.intended(i).saturating_sub(shared.now_ns()),
            None => 0,
        };
        sender.service(Duration::from_nanos(wait))?;
    }
    let finished = sender.finish(Duration::from_secs(30));
    sender.with_publish_latencies(&mut |hist| shared.merge_publish(hist));
    finished
}

fn consumer_loop(receiver: &mut dyn Receiver, shared: &Shared) -> Result<(), String> {
    let mut hist = new_histogram();
    let result = loop {
        if shared.stop_consumers.load(Ordering::Relaxed) {
            break Ok(());
        }
        if let Err(e) = receiver.poll(Duration::from_millis(100), &mut |payload| {
            shared.record_consumed(&mut hist, payload)
        }) {
            break Err(e);
        }
    };
    shared.merge_end_to_end(&hist);
    result
}

/// Topic names of one run: fresh each time, so runs never read each other's records.
fn topic_names(workload: &Workload) -> Vec<String> {
    let stem: String = workload
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let clock = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let suffix = SmallRng::seed_from_u64(clock ^ std::process::id() as u64).random::<u32>();
    (0..workload.topics)
        .map(|t| format!("bench-{stem}-{suffix:08x}-{t}"))
        .collect()
}

/// Runs the workload once at `rate` (records/s over all producers; `None` = unpaced) for
/// `warmup_s` + `duration_s`, printing progress to stderr every two seconds when asked.
pub fn run_once(
    target: &Target,
    workload: &Workload,
    rate: Option<f64>,
    warmup_s: u64,
    duration_s: u64,
    progress: bool,
) -> Result<RunResult, String> {
    let topics = topic_names(workload);
    match target.protocol {
        Protocol::Kafka | Protocol::KafkaWire => kafka::create_topics(
            kafka_wire::address(&target.address),
            &workload.client,
            &topics,
            workload.partitions_per_topic,
            workload.replication_factor,
            &workload.topic_configs,
        )?,
        Protocol::RedisStreams => {}
    }
    let drain = Duration::from_secs(if duration_s <= 10 { 3 } else { 10 });
    let seconds = (warmup_s + duration_s) as usize + drain.as_secs() as usize + 40;
    let epoch = Instant::now();
    let shared = Arc::new(Shared {
        epoch,
        measure_from_ns: (warmup_s * 1_000_000_000) + START_DELAY_NS,
        produce_until_ns: ((warmup_s + duration_s) * 1_000_000_000) + START_DELAY_NS,
        stop_consumers: AtomicBool::new(false),
        failed: Mutex::new(None),
        message_size: workload.message_size as u64,
        acked: AtomicU64::new(0),
        acked_in_window: AtomicU64::new(0),
        consumed_in_window: AtomicU64::new(0),
        sent_measured: AtomicU64::new(0),
        scheduled_measured: AtomicU64::new(0),
        consumed: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        acked_per_second: (0..seconds).map(|_| AtomicU64::new(0)).collect(),
        consumed_per_second: (0..seconds).map(|_| AtomicU64::new(0)).collect(),
        publish_hist: Mutex::new(new_histogram()),
        e2e_hist: Mutex::new(new_histogram()),
    });

    let outcome = std::thread::scope(|scope| {
        let mut consumers = Vec::new();
        for topic in &topics {
            for subscription in 0..workload.subscriptions_per_topic {
                for c in 0..workload.consumers_per_subscription {
                    // Partitions of this subscription, dealt round-robin to its consumers.
                    let partitions: Vec<i32> = (0..workload.partitions_per_topic as i32)
                        .filter(|p| *p as u32 % workload.consumers_per_subscription == c)
                        .collect();
                    let group = format!("{topic}-sub{subscription}");
                    let shared = &shared;
                    consumers.push(scope.spawn(move || {
                        let result = match target.protocol {
                            Protocol::Kafka => kafka::Consumer::new(
                                &target.address,
                                workload,
                                &group,
                                topic,
                                &partitions,
                            )
                            .and_then(|mut r| consumer_loop(&mut r, shared)),
                            Protocol::KafkaWire => {
                                kafka_wire::Consumer::new(&target.address, topic, &partitions)
                                    .and_then(|mut r| consumer_loop(&mut r, shared))
                            }
                            Protocol::RedisStreams => {
                                redis_streams::Consumer::new(&target.address, topic, &partitions)
                                    .and_then(|mut r| consumer_loop(&mut r, shared))
                            }
                        };
                        if let Err(e) = result {
                            shared.fail(format!("consumer of {topic}: {e}"));
                        }
                    }));
                }
            }
        }

        let producers_total = workload.total_producers() as u64;
        let mut producers = Vec::new();
        for (t, topic) in topics.iter().enumerate() {
            for k in 0..workload.producers_per_topic {
                let index = t as u64 * workload.producers_per_topic as u64 + k as u64;
                let pacer = rate.map(|rate| {
                    let interval_ns = 1e9 * producers_total as f64 / rate;
                    Pacer {
                        // Producers interleave their schedules instead of firing together.
                        start_ns: START_DELAY_NS
                            + (interval_ns * index as f64 / producers_total as f64) as u64,
                        interval_ns,
                    }
                });
                let shared = &shared;
                producers.push(scope.spawn(move || {
                    let sender: Result<Box<dyn Sender>, String> = match target.protocol {
                        Protocol::Kafka => {
                            kafka::Producer::new(&target.address, workload, topic, shared.clone())
                                .map(|p| Box::new(p) as Box<dyn Sender>)
                        }
                        _ if workload.producer.transaction_records.is_some() => Err(format!(
                            "transaction_records needs the Kafka protocol through librdkafka, not {:?}",
                            target.protocol
                        )),
                        Protocol::KafkaWire => kafka_wire::Producer::new(
                            &target.address,
                            workload,
                            topic,
                            shared.clone(),
                        )
                        .map(|p| Box::new(p) as Box<dyn Sender>),
                        Protocol::RedisStreams => redis_streams::Producer::new(
                            &target.address,
                            topic,
                            workload.partitions_per_topic,
                            shared.clone(),
                        )
                        .map(|p| Box::new(p) as Box<dyn Sender>),
                    };
                    let result = sender.and_then(|mut sender| {
                        producer_loop(sender.as_mut(), shared, workload, pacer, index)
                    });
                    if let Err(e) = result {
                        shared.fail(format!("producer of {topic}: {e}"));
                    }
                }));
            }
        }

        // Progress while producers run, then while consumers drain.
        let expected_per_ack = if workload.consumers_per_subscription == 0 {
            0
        } else {
            workload.subscriptions_per_topic as u64
        };
        let mut last = (0u64, 0u64, shared.now_ns());
        let mut producers_done_at: Option<Instant> = None;
        loop {
            std::thread::sleep(Duration::from_millis(250));
            let now = shared.now_ns();
            if progress && now - last.2 >= 2_000_000_000 {
                let acked = shared.acked.load(Ordering::Relaxed);
                let consumed = shared.consumed.load(Ordering::Relaxed);
                let secs = (now - last.2) as f64 / 1e9;
                let backlog = shared.sent.load(Ordering::Relaxed).saturating_sub(acked);
                let phase = if now < shared.measure_from_ns {
                    "warm-up"
                } else if now < shared.produce_until_ns {
                    "measure"
                } else {
                    "drain"
                };
                eprintln!(
                    "[{:>5.1}s {phase:<7}] publish {:>9.0} msg/s {:>7.1} MB/s | consume {:>9.0} msg/s | in flight {backlog}",
                    now as f64 / 1e9,
                    (acked - last.0) as f64 / secs,
                    (acked - last.0) as f64 * shared.message_size as f64 / secs / 1e6,
                    (consumed - last.1) as f64 / secs,
                );
                last = (acked, consumed, now);
            }
            let producers_done = producers.iter().all(|p| p.is_finished());
            if producers_done && producers_done_at.is_none() {
                producers_done_at = Some(Instant::now());
            }
            let acked = shared.acked.load(Ordering::Relaxed);
            let all_consumed = shared.consumed.load(Ordering::Relaxed) >= acked * expected_per_ack;
            let drained = producers_done_at.is_some_and(|at| all_consumed || at.elapsed() >= drain);
            if drained || shared.failed.lock().unwrap().is_some() {
                break;
            }
        }
        shared.stop_consumers.store(true, Ordering::Relaxed);
        for p in producers {
            p.join()
                .map_err(|_| "a producer thread panicked".to_string())?;
        }
        for c in consumers {
            c.join()
                .map_err(|_| "a consumer thread panicked".to_string())?;
        }
        Ok::<(), String>(())
    });

    if matches!(target.protocol, Protocol::Kafka | Protocol::KafkaWire) {
        // Best effort: a peer without DeleteTopics keeps them.
        let _ = kafka::delete_topics(
            kafka_wire::address(&target.address),
            &workload.client,
            &topics,
        );
    } else {
        let _ =
            redis_streams::delete_streams(&target.address, &topics, workload.partitions_per_topic);
    }
    outcome?;
    if let Some(error) = shared.failed.lock().unwrap().take() {
        return Err(error);
    }

    let measured_s = duration_s as f64;
    let acked = shared.acked_in_window.load(Ordering::Relaxed);
    let consumed = shared.consumed_in_window.load(Ordering::Relaxed);
    // Open loop: records the schedules put in the window that were never handed to the client
    // fell behind (the target could not take them) and have no latency sample.
    let scheduled_in_window = rate.map(|_| shared.scheduled_measured.load(Ordering::Relaxed));
    let unsent_in_window = scheduled_in_window.map_or(0, |n| {
        n.saturating_sub(shared.sent_measured.load(Ordering::Relaxed))
    });
    let size = workload.message_size as u64;
    let warmup = warmup_s as i64;
    let last_second = shared
        .acked_per_second
        .iter()
        .zip(&shared.consumed_per_second)
        .rposition(|(a, c)| a.load(Ordering::Relaxed) + c.load(Ordering::Relaxed) > 0)
        .unwrap_or(0);
    let series = (0..=last_second)
        .map(|s| {
            let published = shared.acked_per_second[s].load(Ordering::Relaxed);
            SecondSample {
                t: s as i64 - warmup,
                published,
                published_bytes: published * size,
                consumed: shared.consumed_per_second[s].load(Ordering::Relaxed),
            }
        })
        .collect();
    let started_at_unix_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        .saturating_sub(epoch.elapsed().as_secs())
        + warmup_s;
    let publish_hist = shared.publish_hist.lock().unwrap();
    let e2e_hist = shared.e2e_hist.lock().unwrap();
    Ok(RunResult {
        workload: workload.clone(),
        target: target.name.clone(),
        address: target.address.clone(),
        protocol: target.protocol_name().into(),
        started_at_unix_s,
        target_rate: rate,
        max_rate_trials: Vec::new(),
        measured_s,
        publish: Throughput::over(acked, acked * size, measured_s),
        consume: Throughput::over(consumed, consumed * size, measured_s),
        publish_errors: shared.errors.load(Ordering::Relaxed),
        scheduled_in_window,
        unsent_in_window,
        publish_latency_us: Latency::from_histogram(&publish_hist),
        end_to_end_latency_us: Latency::from_histogram(&e2e_hist),
        series,
    })
}

/// Finds the highest rate the target sustains for this workload: an unpaced probe measures the
/// ceiling, then open-loop trials start just under it and step down 15% at a time until one
/// passes (enough records acknowledged and consumed in time, P99s under the bound).
pub fn find_max_rate(
    target: &Target,
    workload: &Workload,
    progress: bool,
) -> Result<(f64, Vec<Trial>), String> {
    let settings = &workload.max_rate;
    let trial = |rate: Option<f64>| -> Result<(RunResult, Trial), String> {
        let result = run_once(
            target,
            workload,
            rate,
            settings.trial_warmup_s,
            settings.trial_s,
            false,
        )?;
        let wanted = rate.unwrap_or(result.publish.msg_per_s) * settings.trial_s as f64;
        let consumers = workload.consumers_per_subscription > 0;
        let bound_us = settings.pass_p99_ms * 1000;
        // Counted by intended time: records scheduled in the window, acknowledged and consumed.
        let acked = result.publish_latency_us.count;
        let passed = acked as f64 >= settings.pass_fraction * wanted
            && result.publish_latency_us.p99 <= bound_us
            && (!consumers
                || (result.end_to_end_latency_us.count as f64
                    >= settings.pass_fraction
                        * (acked * workload.subscriptions_per_topic as u64) as f64
                    && result.end_to_end_latency_us.p99 <= bound_us));
        let record = Trial {
            rate,
            published_per_s: result.publish.msg_per_s,
            consumed_per_s: result.consume.msg_per_s,
            publish_p99_us: result.publish_latency_us.p99,
            end_to_end_p99_us: result.end_to_end_latency_us.p99,
            passed,
        };
        if progress {
            eprintln!(
                "max-rate trial at {}: published {:.0}/s, consumed {:.0}/s, publish p99 {:.3} ms, e2e p99 {:.3} ms -> {}",
                rate.map(|r| format!("{r:.0}/s")).unwrap_or_else(|| "unpaced".into()),
                record.published_per_s,
                record.consumed_per_s,
                record.publish_p99_us as f64 / 1000.0,
                record.end_to_end_p99_us as f64 / 1000.0,
                match (rate, passed) {
                    (None, _) => "ceiling probe",
                    (Some(_), true) => "sustained",
                    (Some(_), false) => "not sustained",
                }
            );
        }
        Ok((result, record))
    };
    let mut trials = Vec::new();
    let (probe, record) = trial(None)?;
    trials.push(record);
    let ceiling = probe.publish.msg_per_s.max(1.0);
    let mut rate = ceiling * 0.95;
    for _ in 0..settings.max_trials {
        let (_, record) = trial(Some(rate))?;
        let passed = record.passed;
        trials.push(record);
        if passed {
            return Ok((rate, trials));
        }
        rate *= 0.85;
    }
    Ok((rate, trials))
}

/// The whole of `sluice bench run`: resolve `max` if asked, then the measured run.
pub fn run_workload(
    target: &Target,
    workload: &Workload,
    progress: bool,
) -> Result<RunResult, String> {
    let (rate, trials) = match workload.producer_rate {
        Rate::PerSecond(rate) => (Some(rate), Vec::new()),
        Rate::Named(NamedRate::Unpaced) => (None, Vec::new()),
        Rate::Named(NamedRate::Max) => {
            let (rate, trials) = find_max_rate(target, workload, progress)?;
            (Some(rate), trials)
        }
    };
    let mut result = run_once(
        target,
        workload,
        rate,
        workload.warmup_s,
        workload.duration_s,
        progress,
    )?;
    result.max_rate_trials = trials;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_schedules_evenly_and_counts_due_records() {
        let p = Pacer {
            start_ns: 1_000,
            interval_ns: 100.0,
        };
        assert_eq!(p.due_by(999), 0);
        assert_eq!(p.due_by(1_000), 1);
        assert_eq!(p.due_by(1_250), 3);
        assert_eq!(p.intended(0), 1_000);
        assert_eq!(p.intended(3), 1_300);
    }

    #[test]
    fn targets_parse_with_and_without_names() {
        let t = Target::parse("sluice=127.0.0.1:9092").unwrap();
        assert_eq!(
            (t.name.as_str(), t.address.as_str()),
            ("sluice", "127.0.0.1:9092")
        );
        assert_eq!(t.protocol, Protocol::Kafka);
        let t = Target::parse("redis://127.0.0.1:6390").unwrap();
        assert_eq!(t.protocol, Protocol::RedisStreams);
        assert!(Target::parse("x=").is_err());
    }
}
