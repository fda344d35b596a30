//! A full disk, as an operator meets it: the broker's data directory on a small loop-mounted
//! ext4 of its own, filled by a librdkafka producer.
//! - With no free-space floor, the disk really fills: the broker refuses the produce that does
//!   not fit (KAFKA_STORAGE_ERROR) and goes on serving, without a restart, every acknowledged
//!   record, produce to partitions that still have room, topic deletion, and produce again once
//!   space is back; it also restarts on the full disk.
//! - With the floor (`disk_free_bytes_min`), produce is refused before the disk is full, and
//!   resumes by itself once space comes back.
//!
//! - A write of records already taken (buffered) that the disk refuses (ENOSPC on the data
//!   write itself, here with preallocation off so every write needs new blocks) does not poison
//!   the log: the records stay buffered and readable, new appends are refused, and once space
//!   is back the log writes them by itself and takes appends again; nothing is lost across a
//!   reopen. (At the storage API: the broker preallocates, so its data writes meet this only
//!   when a full ext4 cannot convert an unwritten extent.)
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
const RECORD_BYTES: usize = 500_000;
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

/// Creates `name` (one partition) with `segment.bytes` small enough that each segment reserves
/// little of the small disk.
fn create_topic(bootstrap: &str, name: &str, segment_bytes: u64) {
    let segment_bytes = segment_bytes.to_string();
    let topic =
        NewTopic::new(name, 1, TopicReplication::Fixed(1)).set("segment.bytes", &segment_bytes);
    let created =
        futures::executor::block_on(admin(bootstrap).create_topics([&topic], &options())).unwrap();
    assert!(created[0].is_ok(), "{created:?}");
}

/// Produces records to `topic` one at a time until the broker refuses one; the offsets acked.
fn fill(bootstrap: &str, topic: &str) -> Vec<i64> {
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let producer = acks_all_producer(bootstrap, outcomes.clone());
    let payload = vec![0x42_u8; RECORD_BYTES];
    for _ in 0..RECORDS_MAX {
        producer
            .send(BaseRecord::<(), _, ()>::to(topic).payload(&payload))
            .map_err(|(e, _)| e)
            .expect("queued");
        producer.flush(Duration::from_secs(30)).expect("flush");
        if !outcomes.lock().unwrap().refused.is_empty() {
            break;
        }
    }
    let outcomes = outcomes.lock().unwrap();
    assert_eq!(
        outcomes.refused.first(),
        Some(&RDKafkaErrorCode::KafkaStorageError),
        "the broker refuses once the disk has no room"
    );
    outcomes.acked.clone()
}

/// Produces one record to `topic`, retrying for up to 10 s; its offset once acknowledged.
fn produce_one(bootstrap: &str, topic: &str) -> Option<i64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let payload = vec![0x42_u8; RECORD_BYTES];
    while Instant::now() < deadline {
        let outcomes = Arc::new(Mutex::new(Outcomes::default()));
        let producer = acks_all_producer(bootstrap, outcomes.clone());
        producer
            .send(BaseRecord::<(), _, ()>::to(topic).payload(&payload))
            .map_err(|(e, _)| e)
            .expect("queued");
        producer.flush(Duration::from_secs(30)).expect("flush");
        if let Some(offset) = outcomes.lock().unwrap().acked.first() {
            return Some(*offset);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

fn delete_topic_and_wait_for_space(bootstrap: &str, topic: &str, disk: &LoopMount) {
    let deleted =
        futures::executor::block_on(admin(bootstrap).delete_topics(&[topic], &options())).unwrap();
    assert!(deleted[0].is_ok(), "{deleted:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while free_bytes(&disk.path()) < 32 << 20 {
        assert!(
            Instant::now() < deadline,
            "the deleted topic's space came back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Removes the index files of `topic`'s sealed segments; how many.
fn remove_sealed_indexes(data_dir: &Path, topic: &str) -> usize {
    let topics = data_dir.join("topics");
    let mut removed = 0;
    for entry in std::fs::read_dir(&topics).unwrap().flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with(&format!("{topic}-"))
        {
            continue;
        }
        for file in std::fs::read_dir(entry.path().join("0")).unwrap().flatten() {
            if file.file_name().to_string_lossy().ends_with(".index") {
                std::fs::remove_file(file.path()).unwrap();
                removed += 1;
            }
        }
    }
    removed
}

/// One shard, data on the small disk, the given free-space floor.
fn broker_args(data_dir: &Path, disk_free_bytes_min: u64) -> Vec<String> {
    vec![
        "--cores".into(),
        "1".into(),
        "--data-dir".into(),
        data_dir.to_str().unwrap().into(),
        "--disk-free-bytes-min".into(),
        disk_free_bytes_min.to_string(),
    ]
}

#[test]
fn a_full_disk_refuses_produce_and_everything_else_goes_on_without_a_restart() {
    let disk = LoopMount::new();
    // The data on the small disk; the broker's own log (in the harness's directory) elsewhere.
    let data_dir = disk.path().join("data");
    let args = broker_args(&data_dir, 0);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let broker = Broker::start(&args);
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "other", 8 << 20);
    create_topic(&bootstrap, "filler", 8 << 20);
    // Two records: the second's reservation (which doubles with the segment) leaves room for
    // a third.
    assert_eq!(produce_one(&bootstrap, "other"), Some(0));
    assert_eq!(produce_one(&bootstrap, "other"), Some(1));

    let acked = fill(&bootstrap, "filler");
    assert!(acked.len() > 50, "{} records fit", acked.len());
    assert!(free_bytes(&disk.path()) < 8 << 20, "the disk is full");

    // No restart: every acknowledged record is served, once, in order; the partition that has
    // room left takes records; the log says nothing was poisoned.
    let expected: Vec<i64> = (0..acked.len() as i64).collect();
    assert_eq!(
        read_all(&bootstrap, "filler"),
        expected,
        "every acknowledged record"
    );
    assert_eq!(
        produce_one(&bootstrap, "other"),
        Some(2),
        "other partitions go on"
    );
    assert!(!broker.log().contains("poisoned"), "{}", broker.log());

    // Not a block left: creating a topic is refused, and does not spend the space reserve
    // that deleting one needs.
    let last_blocks = fill_disk(&disk.path());
    let late = NewTopic::new("late", 1, TopicReplication::Fixed(1));
    let created =
        futures::executor::block_on(admin(&bootstrap).create_topics([&late], &options())).unwrap();
    assert!(created[0].is_err(), "no room for a new topic: {created:?}");

    // The operator deletes the topic; space comes back and writes work again, still without
    // a restart; the filled partition's neighbour kept everything.
    delete_topic_and_wait_for_space(&bootstrap, "filler", &disk);
    std::fs::remove_file(last_blocks).unwrap();
    create_topic(&bootstrap, "after", 8 << 20);
    assert_eq!(
        produce_one(&bootstrap, "after"),
        Some(0),
        "writes work again"
    );
    assert_eq!(read_all(&bootstrap, "other"), [0, 1, 2]);

    // Filled again, then restarted on the full disk: it starts and serves what it acknowledged.
    // (This time the refusal may come from a write into the reserved space, which a full ext4
    // can refuse too, converting an unwritten extent; the log keeps the record buffered and
    // refuses appends then, and the refused record may reach the disk: Kafka promises nothing
    // about a failed produce.)
    let acked = fill(&bootstrap, "after");
    let stopped = broker.stop();
    // A sealed segment's index may be missing (a roll on the full disk could not write it): the
    // restart rebuilds it in memory, and cannot write it.
    let removed = remove_sealed_indexes(&disk.path().join("data"), "after");
    assert!(removed > 0, "the filled partition rolled segments");
    // (Not filled to the last block: glommio's polled-I/O probe then has to use an existing
    // file, and one that holds no data block misfires and fails every read with EOPNOTSUPP.)
    let broker = Broker::start_on(stopped, &args);
    let read = read_all(&broker.bootstrap(), "after");
    let expected: Vec<i64> = (0..acked.len() as i64).collect();
    assert_eq!(read[..acked.len()], expected, "every acknowledged record");
    assert!(
        read.len() <= acked.len() + 1,
        "at most the refused record besides"
    );
    broker.stop();
}

#[test]
fn the_free_space_floor_refuses_produce_before_the_disk_is_full_and_lets_it_resume() {
    let disk = LoopMount::new();
    let data_dir = disk.path().join("data");
    let floor: u64 = 24 << 20;
    let args = broker_args(&data_dir, floor);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let broker = Broker::start(&args);
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "filler", 4 << 20);
    let acked = fill(&bootstrap, "filler");
    assert!(acked.len() > 50, "{} records fit", acked.len());
    let free = free_bytes(&disk.path());
    assert!(
        free > 12 << 20 && free < floor,
        "refused below the floor, well before the disk is full: {free} bytes free"
    );
    assert!(broker.log().contains("nearly full"), "{}", broker.log());
    let expected: Vec<i64> = (0..acked.len() as i64).collect();
    assert_eq!(read_all(&bootstrap, "filler"), expected);

    delete_topic_and_wait_for_space(&bootstrap, "filler", &disk);
    assert_eq!(
        produce_one(&bootstrap, "resumed"),
        Some(0),
        "produce resumes by itself"
    );
    broker.stop();
}

/// Fills the filesystem at `dir` with a file of its own until the filesystem refuses more;
/// returns the file's path (removing it gives the space back).
fn fill_disk(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    for chunk in [1 << 20, 4096] {
        let zeros = vec![0u8; chunk];
        while file.write_all(&zeros).is_ok() {}
    }
    let _ = file.sync_all();
    path
}

/// One RecordBatch v2 of `count` records of `value_bytes` each.
fn storage_batch(seed: u8, count: usize, value_bytes: usize) -> Vec<u8> {
    let value = vec![seed; value_bytes];
    let records: Vec<(i64, &[u8], &[u8])> = (0..count)
        .map(|i| (1_700_000_000_000 + i as i64, &b"k"[..], &value[..]))
        .collect();
    sluice_storage::batch::build_batch(1_700_000_000_000, &records)
}

#[test]
fn a_write_the_full_disk_refuses_keeps_the_records_and_goes_through_once_space_is_back() {
    use sluice_storage::{LeaderEpoch, Log, LogConfig, Offset, StorageError};
    let disk = LoopMount::new();
    let dir = disk.path().join("log");
    let disk_dir = disk.path();
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let config = LogConfig {
                preallocate_bytes: 0,
                zero_ahead: false,
                write_chunk_bytes: 64 * 1024,
                unwritten_bytes_max: 1 << 20,
                ..LogConfig::default()
            };
            let log = Log::open(&dir, config.clone()).await.expect("open");
            log.append_durable(&storage_batch(1, 4, 1000), LeaderEpoch(0))
                .await
                .expect("an append with room");
            let filler = fill_disk(&disk_dir);

            // Taken while the disk is full: buffered, then the write is refused.
            let taken = log
                .append(&storage_batch(2, 100, 2000), LeaderEpoch(0))
                .await
                .expect("buffered");
            assert_eq!(taken.base_offset, Offset(4));
            let refused = log.sync().await.expect_err("no room to write");
            assert!(
                matches!(refused, StorageError::NoSpace(_)),
                "refused for lack of space, not poisoned: {refused}"
            );
            assert!(refused.to_string().contains("No space left"), "{refused}");
            // Not poisoned: what the log holds is served, the refused records included.
            let read = log.read(Offset(0), 1 << 20).await.expect("reads go on");
            assert_eq!(read.next_offset, Offset(104));
            // New appends are refused, cleanly, while the write waits.
            let again = log
                .append(&storage_batch(3, 1, 10), LeaderEpoch(0))
                .await
                .expect_err("refused while the disk is full");
            assert!(matches!(again, StorageError::NoSpace(_)), "{again}");
            assert_eq!(log.log_end_offset(), Offset(104), "nothing of it taken");

            // Space comes back: the log writes the buffered records by itself (nobody asks it
            // to) and takes appends again.
            std::fs::remove_file(&filler).unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            let appended = loop {
                match log.append(&storage_batch(4, 1, 10), LeaderEpoch(0)).await {
                    Ok(a) => break a,
                    Err(StorageError::NoSpace(_)) if std::time::Instant::now() < deadline => {
                        glommio::timer::sleep(Duration::from_millis(100)).await
                    }
                    Err(e) => panic!("appends resume once space is back: {e}"),
                }
            };
            assert_eq!(appended.base_offset, Offset(104));
            log.sync().await.expect("durable now");
            log.close().await.expect("close");

            // Reopened: every record, in order.
            let log = Log::open(&dir, config).await.expect("reopen");
            assert_eq!(log.log_end_offset(), Offset(105));
            let mut from = Offset(0);
            let mut seeds = Vec::new();
            while from < log.log_end_offset() {
                let read = log.read(from, 1 << 20).await.unwrap();
                let mut rest = &read.bytes[..];
                while !rest.is_empty() {
                    let info = sluice_storage::batch::validate_batch(rest, usize::MAX).unwrap();
                    // A batch ends with its last record's value, then that record's header
                    // count (0): the byte before it is the seed.
                    seeds.push((info.base_offset.0, rest[info.size_bytes - 2]));
                    rest = &rest[info.size_bytes..];
                }
                from = read.next_offset;
            }
            assert_eq!(seeds, vec![(0, 1), (4, 2), (104, 4)]);
            log.close().await.unwrap();
        })
        .unwrap()
        .join()
        .unwrap();
}
