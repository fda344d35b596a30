//! A full disk, as an operator meets it (issue 11, the start-up part): the broker's data
//! directory on a small loop-mounted ext4 of its own; a producer fills it until the broker
//! refuses with KAFKA_STORAGE_ERROR; the broker is restarted on the full disk and must start,
//! serve every acknowledged record, and let the operator delete a topic, after which writes
//! work again.
//!
//! Needs root (mount) and mkfs.ext4, as `scripts/test` runs in CI.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use sluice_tests::Broker;

/// The filesystem's size: small, so filling it takes a second.
const DISK_BYTES: u64 = 96 << 20;
const RECORD_BYTES: usize = 100_000;
/// More than the disk holds; the loop ends at the first refusal long before.
const RECORDS_MAX: u64 = 2_000;

/// An ext4 image mounted on a directory of its own; unmounted and removed when dropped.
struct LoopMount {
    dir: tempfile::TempDir,
}

impl LoopMount {
    fn new() -> LoopMount {
        let dir = tempfile::tempdir().expect("a directory for the image");
        let image = dir.path().join("disk.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(DISK_BYTES))
            .expect("a sparse image file");
        run("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()]);
        std::fs::create_dir(dir.path().join("mnt")).unwrap();
        let mount = LoopMount { dir };
        run(
            "mount",
            &[
                "-o",
                "loop",
                image.to_str().unwrap(),
                mount.path().to_str().unwrap(),
            ],
        );
        mount
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.path()).status();
    }
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} must be installed: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed (this test needs root for a loop mount): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Offsets of acknowledged records, and the errors of refused ones.
#[derive(Default)]
struct Outcomes {
    acked: Vec<i64>,
    refused: Vec<RDKafkaErrorCode>,
}

struct Recorder(Arc<Mutex<Outcomes>>);

impl ClientContext for Recorder {}

impl ProducerContext for Recorder {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let mut outcomes = self.0.lock().unwrap();
        match result {
            Ok(m) => outcomes.acked.push(m.offset()),
            Err((e, _)) => outcomes
                .refused
                .push(e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail)),
        }
    }
}

fn acks_all_producer(bootstrap: &str, outcomes: Arc<Mutex<Outcomes>>) -> BaseProducer<Recorder> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "false")
        .set("retries", "0")
        .set("linger.ms", "0")
        .set("message.timeout.ms", "20000")
        .create_with_context(Recorder(outcomes))
        .expect("producer")
}

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client")
}

fn options() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)))
}

/// Reads partition 0 of `topic` from the beginning to its high watermark: the offsets seen.
fn read_all(bootstrap: &str, topic: &str) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "full-disk")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let (_, high) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .expect("watermarks");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let mut offsets = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while offsets.last().map_or(0, |o| o + 1) < high && Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.expect("no consume error");
            assert_eq!(m.payload().map(<[u8]>::len), Some(RECORD_BYTES));
            offsets.push(m.offset());
        }
    }
    offsets
}

fn free_bytes(path: &Path) -> u64 {
    sluice_storage::io::disk_space(path).expect("statvfs").1
}

#[test]
fn a_broker_restarts_on_a_full_disk_serves_what_it_acknowledged_and_recovers() {
    let disk = LoopMount::new();
    // The data on the small disk; the broker's own log (in the harness's directory) elsewhere.
    let data_dir = disk.path().join("data");
    let args = ["--cores", "1", "--data-dir", data_dir.to_str().unwrap()];
    let broker = Broker::start(&args);
    let bootstrap = broker.bootstrap();
    let created = futures::executor::block_on(admin(&bootstrap).create_topics(
        [&NewTopic::new("filler", 1, TopicReplication::Fixed(1))],
        &options(),
    ))
    .unwrap();
    assert!(created[0].is_ok(), "{created:?}");

    // Fill the disk: one record at a time, until the broker refuses one.
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let producer = acks_all_producer(&bootstrap, outcomes.clone());
    let payload = vec![0x42_u8; RECORD_BYTES];
    for _ in 0..RECORDS_MAX {
        producer
            .send(BaseRecord::<(), _, ()>::to("filler").payload(&payload))
            .map_err(|(e, _)| e)
            .expect("queued");
        producer.flush(Duration::from_secs(30)).expect("flush");
        if !outcomes.lock().unwrap().refused.is_empty() {
            break;
        }
    }
    let acked = {
        let outcomes = outcomes.lock().unwrap();
        assert_eq!(
            outcomes.refused.first(),
            Some(&RDKafkaErrorCode::KafkaStorageError),
            "the broker refuses once the disk is full"
        );
        outcomes.acked.clone()
    };
    assert!(acked.len() > 100, "{} records fit", acked.len());
    drop(producer);
    assert!(free_bytes(&disk.path()) < 4 << 20, "the disk is full");

    // A restart on the full disk: it must start and serve every acknowledged record.
    let broker = Broker::start_on(broker.stop(), &args);
    let bootstrap = broker.bootstrap();
    let read = read_all(&bootstrap, "filler");
    let expected: Vec<i64> = (0..acked.len() as i64).collect();
    assert_eq!(read, expected, "every acknowledged record, once, in order");

    // The operator deletes the topic; space comes back and writes work again.
    let deleted =
        futures::executor::block_on(admin(&bootstrap).delete_topics(&["filler"], &options()))
            .unwrap();
    assert!(deleted[0].is_ok(), "{deleted:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while free_bytes(&disk.path()) < 32 << 20 {
        assert!(
            Instant::now() < deadline,
            "the deleted topic's space came back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let producer = acks_all_producer(&bootstrap, outcomes.clone());
    producer
        .send(BaseRecord::<(), _, ()>::to("after").payload(&payload))
        .map_err(|(e, _)| e)
        .expect("queued");
    producer.flush(Duration::from_secs(30)).expect("flush");
    assert_eq!(outcomes.lock().unwrap().acked, [0], "writes work again");
    drop(broker);
}
