//! Consumer groups with real clients, against `sluice serve` with two shards.
//!
//! Three librdkafka consumers, each its own process, share 6 partitions in one group and
//! commit what they process. One is killed with SIGKILL (no LeaveGroup, no more heartbeats):
//! within its session timeout its partitions move to the other two, which resume from the
//! committed offsets; no record is lost. The group's offsets survive a SIGKILL of the broker.
//! Run with librdkafka's eager (range) and cooperative-sticky assignors.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientContext;
use sluice_tests::wire::{call, connect};
use sluice_tests::Broker;

const TOPIC: &str = "grouped";
const GROUP: &str = "workers";
const PARTITIONS: i32 = 6;
const SESSION_TIMEOUT_MS: u64 = 4000;

fn create_topic(broker: &Broker) {
    use kafka_protocol::messages::create_topics_request::CreatableTopic;
    use kafka_protocol::messages::{ApiKey, CreateTopicsRequest, CreateTopicsResponse, TopicName};
    use kafka_protocol::protocol::StrBytes;
    let r: CreateTopicsResponse = call(
        &mut connect(broker.addr),
        ApiKey::CreateTopics,
        7,
        &CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_static_str(TOPIC)))
            .with_num_partitions(PARTITIONS)
            .with_replication_factor(1)]),
    );
    assert_eq!(r.topics[0].error_code, 0);
}

fn produce(bootstrap: &str, seqs: std::ops::Range<u64>) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    for seq in seqs {
        let payload = seq.to_string();
        let mut record = BaseRecord::<str, str>::to(TOPIC)
            .payload(&payload)
            .partition((seq % PARTITIONS as u64) as i32);
        while let Err((_, back)) = producer.send(record) {
            record = back;
            producer.poll(Duration::from_millis(10));
        }
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

struct Printer;
impl ClientContext for Printer {}
impl ConsumerContext for Printer {
    /// Prints the member's whole assignment after every change (with the cooperative assignor
    /// a rebalance hands out or takes back only some partitions).
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if matches!(rebalance, Rebalance::Assign(_) | Rebalance::Revoke(_)) {
            let parts: Vec<String> = consumer
                .assignment()
                .map(|list| {
                    list.elements()
                        .iter()
                        .map(|e| e.partition().to_string())
                        .collect()
                })
                .unwrap_or_default();
            println!("ASSIGNED {}", parts.join(","));
        }
    }
}

/// The group member process: consumes, prints each record, commits synchronously after each
/// poll that returned data. Not a test on its own (run by the test below as a child process).
#[test]
#[ignore]
fn group_member_child() {
    let Ok(bootstrap) = std::env::var("SLUICE_TEST_BOOTSTRAP") else {
        return;
    };
    let consumer: BaseConsumer<Printer> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", GROUP)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", SESSION_TIMEOUT_MS.to_string())
        .set("heartbeat.interval.ms", "500")
        .set("fetch.wait.max.ms", "100")
        .set(
            "partition.assignment.strategy",
            std::env::var("SLUICE_TEST_ASSIGNOR").unwrap_or_else(|_| "range".into()),
        )
        .set(
            "group.instance.id",
            std::env::var("SLUICE_TEST_INSTANCE").unwrap_or_default(),
        )
        .create_with_context(Printer)
        .expect("consumer");
    consumer.subscribe(&[TOPIC]).expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let seq = std::str::from_utf8(m.payload().unwrap()).unwrap();
            println!("GOT {} {} {seq}", m.partition(), m.offset());
            consumer
                .commit_message(&m, CommitMode::Sync)
                .expect("commit");
        }
    }
}

struct Member {
    child: Child,
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the members reported: (member index, line).
fn start_member(
    index: usize,
    bootstrap: &str,
    assignor: &str,
    tx: mpsc::Sender<(usize, String)>,
) -> Member {
    start_member_as(index, bootstrap, assignor, "", tx)
}

/// A member with `group.instance.id` = `instance` (static membership, KIP-345) when not empty.
fn start_member_as(
    index: usize,
    bootstrap: &str,
    assignor: &str,
    instance: &str,
    tx: mpsc::Sender<(usize, String)>,
) -> Member {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "group_member_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("SLUICE_TEST_BOOTSTRAP", bootstrap)
        .env("SLUICE_TEST_ASSIGNOR", assignor)
        .env("SLUICE_TEST_INSTANCE", instance)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start a member");
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send((index, line)).is_err() {
                return;
            }
        }
    });
    Member { child }
}

#[derive(Default)]
struct Seen {
    /// The latest assignment of each member.
    assigned: HashMap<usize, Vec<i32>>,
    /// How many assignment changes each member has reported.
    rebalances: HashMap<usize, usize>,
    /// Every record seen, by which member, at what time.
    records: Vec<(usize, i32, u64, Instant)>,
}

impl Seen {
    fn take(&mut self, rx: &mpsc::Receiver<(usize, String)>, wait: Duration) {
        while let Ok((who, line)) = rx.recv_timeout(wait) {
            // The test harness prints "test group_member_child ... " before the child's first
            // line, without a newline: look for the markers anywhere in the line.
            let after = |marker: &str| line.find(marker).map(|i| &line[i + marker.len()..]);
            if let Some(list) = after("ASSIGNED ") {
                let parts = list
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|p| p.parse().unwrap());
                self.assigned.insert(who, parts.collect());
                *self.rebalances.entry(who).or_default() += 1;
            } else if let Some(rest) = after("GOT ") {
                let f: Vec<&str> = rest.split(' ').collect();
                self.records.push((
                    who,
                    f[0].parse().unwrap(),
                    f[2].parse().unwrap(),
                    Instant::now(),
                ));
            }
        }
    }

    fn seqs(&self) -> HashSet<u64> {
        self.records.iter().map(|r| r.2).collect()
    }
}

#[test]
fn eager_members_share_partitions_and_survive_a_killed_member() {
    group_survives_a_killed_member("range");
}

#[test]
fn cooperative_sticky_members_share_partitions_and_survive_a_killed_member() {
    group_survives_a_killed_member("cooperative-sticky");
}

/// Three members with `assignor` (librdkafka's `partition.assignment.strategy`).
fn group_survives_a_killed_member(assignor: &str) {
    let broker = Broker::start(&["--cores", "2", "--group-initial-rebalance-delay-ms", "500"]);
    let bootstrap = broker.bootstrap();
    create_topic(&broker);
    produce(&bootstrap, 0..3000);

    let (tx, rx) = mpsc::channel();
    let mut members: Vec<Option<Member>> = (0..3)
        .map(|i| Some(start_member(i, &bootstrap, assignor, tx.clone())))
        .collect();
    let mut seen = Seen::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        seen.take(&rx, Duration::from_millis(200));
        let mut all: Vec<i32> = seen.assigned.values().flatten().copied().collect();
        all.sort_unstable();
        let balanced = seen.assigned.len() == 3 && seen.assigned.values().all(|a| a.len() == 2);
        if balanced && all == (0..PARTITIONS).collect::<Vec<_>>() && seen.seqs().len() == 3000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no balanced group that consumed everything: {:?}, {} records",
            seen.assigned,
            seen.seqs().len()
        );
    }

    // `sluice group describe` shows the stable group: every partition, its member, no lag.
    let out = Command::new(sluice_tests::sluice_binary())
        .args(["group", "describe", GROUP, "--bootstrap", &bootstrap])
        .output()
        .unwrap();
    let described = String::from_utf8_lossy(&out.stdout);
    assert!(described.contains("state Stable"), "{described}");
    let rows: Vec<&str> = described.lines().filter(|l| l.starts_with(TOPIC)).collect();
    assert_eq!(rows.len(), PARTITIONS as usize, "{described}");
    assert!(
        rows.iter()
            .all(|r| r.split(' ').nth(4) == Some("0") && !r.ends_with(" - - -")),
        "no lag, every partition owned: {described}"
    );

    // Kill member 0: no LeaveGroup, its heartbeats stop.
    let orphaned = seen.assigned[&0].clone();
    let killed_at = Instant::now();
    members[0] = None;
    produce(&bootstrap, 3000..4500);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        seen.take(&rx, Duration::from_millis(200));
        if (0..4500).all(|s| seen.seqs().contains(&s)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "records lost after a member died: {} of 4500 seen; assignments {:?}",
            seen.seqs().len(),
            seen.assigned
        );
    }
    // The dead member's partitions moved to the survivors within the session timeout (plus a
    // rebalance round and the test's own polling).
    let taken_over = seen
        .records
        .iter()
        .filter(|(who, p, _, at)| *who != 0 && orphaned.contains(p) && *at > killed_at)
        .map(|r| r.3)
        .min()
        .expect("survivors consumed the dead member's partitions");
    let took = taken_over.duration_since(killed_at);
    assert!(
        took < Duration::from_millis(SESSION_TIMEOUT_MS + 6000),
        "partitions moved after {took:?}"
    );
    // Resumed from committed offsets: the survivors did not start those partitions over.
    let replayed = seen
        .records
        .iter()
        .filter(|(who, p, seq, at)| {
            *who != 0 && orphaned.contains(p) && *at > killed_at && *seq < 3000
        })
        .count();
    assert!(replayed < 100, "{replayed} old records were consumed again");
    drop(members);

    // The group's offsets survive a SIGKILL of the broker: a new member starts at the end.
    let broker = Broker::start_on(
        broker.kill(),
        &["--cores", "2", "--group-initial-rebalance-delay-ms", "200"],
    );
    let (tx, rx) = mpsc::channel();
    let _member = start_member(9, &broker.bootstrap(), assignor, tx);
    produce(&broker.bootstrap(), 4500..4510);
    let mut after = Seen::default();
    let deadline = Instant::now() + Duration::from_secs(30);
    while after.seqs().len() < 10 && Instant::now() < deadline {
        after.take(&rx, Duration::from_millis(200));
    }
    let old: Vec<u64> = after.seqs().into_iter().filter(|s| *s < 4500).collect();
    assert_eq!(
        after.seqs().len() - old.len(),
        10,
        "the new records arrived"
    );
    assert!(
        old.len() < 100,
        "resumed from the committed offsets, not the start: {} old",
        old.len()
    );
}

#[test]
fn a_static_member_restarted_within_its_session_gets_its_partitions_back_without_a_rebalance() {
    let broker = Broker::start(&["--cores", "2", "--group-initial-rebalance-delay-ms", "500"]);
    let bootstrap = broker.bootstrap();
    create_topic(&broker);
    produce(&bootstrap, 0..600);
    let (tx, rx) = mpsc::channel();
    let mut a = Some(start_member_as(
        0,
        &bootstrap,
        "range",
        "static-a",
        tx.clone(),
    ));
    let _b = start_member_as(1, &bootstrap, "range", "static-b", tx.clone());
    let mut seen = Seen::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(seen.assigned.len() == 2
        && seen.assigned.values().all(|p| p.len() == 3)
        && seen.seqs().len() == 600)
    {
        assert!(
            Instant::now() < deadline,
            "no balanced static group: {:?}",
            seen.assigned
        );
        seen.take(&rx, Duration::from_millis(200));
    }
    let a_partitions = seen.assigned[&0].clone();
    let b_partitions = seen.assigned[&1].clone();
    let b_rebalances = seen.rebalances[&1];

    // SIGKILL member a and start it again at once, with the same group.instance.id.
    a.take();
    seen.assigned.remove(&0);
    let _a = start_member_as(0, &bootstrap, "range", "static-a", tx);
    produce(&bootstrap, 600..900);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(0..900).all(|s| seen.seqs().contains(&s)) {
        assert!(
            Instant::now() < deadline,
            "records lost: {} of 900",
            seen.seqs().len()
        );
        seen.take(&rx, Duration::from_millis(200));
    }
    assert_eq!(
        seen.assigned.get(&0),
        Some(&a_partitions),
        "a got its own partitions back"
    );
    assert_eq!(
        seen.assigned.get(&1),
        Some(&b_partitions),
        "b kept its partitions"
    );
    assert_eq!(
        seen.rebalances[&1], b_rebalances,
        "b saw no rebalance while a restarted"
    );
}

/// KIP-345: a second consumer joining with a `group.instance.id` already in use takes the
/// instance over, and the first one is fenced: librdkafka reports FENCED_INSTANCE_ID to it as a
/// fatal error (it must not keep consuming partitions now assigned to its successor).
#[test]
fn a_second_consumer_with_the_same_instance_id_fences_the_first() {
    let broker = Broker::start(&["--group-initial-rebalance-delay-ms", "0"]);
    create_topic(&broker);
    let static_consumer = || -> BaseConsumer {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap())
            .set("group.id", "fencing")
            .set("group.instance.id", "the-one")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "200")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("consumer");
        consumer.subscribe(&[TOPIC]).expect("subscribe");
        consumer
    };
    let assigned = |c: &BaseConsumer, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.assignment().map_or(0, |a| a.count()) == 0 {
            assert!(Instant::now() < deadline, "{what} never got partitions");
            if let Some(Err(e)) = c.poll(Duration::from_millis(100)) {
                panic!("{what}: {e}");
            }
        }
    };
    let first = static_consumer();
    assigned(&first, "the first incarnation");
    let second = static_consumer();
    assigned(&second, "the second incarnation");

    // The first keeps heartbeating with its old member id: the broker fences it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let fenced = loop {
        assert!(
            Instant::now() < deadline,
            "the first incarnation was never fenced"
        );
        second.poll(Duration::from_millis(50));
        if let Some(Err(e)) = first.poll(Duration::from_millis(100)) {
            break e;
        }
    };
    assert_eq!(
        fenced.rdkafka_error_code(),
        Some(rdkafka::types::RDKafkaErrorCode::FencedInstanceId),
        "{fenced}"
    );
    // The new incarnation goes on undisturbed.
    produce(&broker.bootstrap(), 0..6);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = 0;
    while got < 6 && Instant::now() < deadline {
        match second.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => got += 1,
            Some(Err(e)) => panic!("the second incarnation: {e}"),
            None => {}
        }
    }
    assert_eq!(got, 6, "the second incarnation consumes every partition");
}
