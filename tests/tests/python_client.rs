//! A client we did not write: kafka-python (pure Python; `.ci/run` installs it) against
//! `sluice serve` with two shards: it creates a topic with its admin client, produces with
//! its default idempotent producer and acks=all (gzip-compressed, so compressed batches pass
//! through untouched), consumes
//! everything back from the beginning, reads end offsets and offsets by timestamp, reads the
//! topic's configs, consumes in a consumer group (commit, leave, resume from the committed
//! offsets, list groups and their offsets), and deletes the topic.

use std::process::Command;

use sluice_tests::Broker;

const SCRIPT: &str = r#"
import sys
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic, ConfigResource

bootstrap = sys.argv[1]
admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
admin.create_topics([NewTopic("py-topic", 3, 1, topic_configs={"retention.ms": "3600000"})])
print("TOPICS", sorted(t for t in admin.list_topics() if not t.startswith("__")))

# kafka-python 3 producers are idempotent by default (InitProducerId, sequence numbers).
producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all",
                         compression_type="gzip", linger_ms=5)
futures = [producer.send("py-topic", key=b"k%d" % i, value=b"v%d" % i, partition=i % 3,
                         timestamp_ms=1_700_000_000_000 + i) for i in range(300)]
producer.flush()
offsets = [f.get(timeout=10).offset for f in futures]
assert sorted(offsets[0::3]) == list(range(100)), offsets[0::3]

consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                         enable_auto_commit=False, consumer_timeout_ms=5000)
partitions = [TopicPartition("py-topic", p) for p in range(3)]
consumer.assign(partitions)
got = sorted((m.partition, m.offset, m.key, m.value, m.timestamp) for m in consumer)
assert len(got) == 300, len(got)
for partition, offset, key, value, timestamp in got:
    i = int(key[1:])
    assert partition == i % 3 and value == b"v%d" % i, (partition, key, value)
    assert timestamp == 1_700_000_000_000 + i
print("CONSUMED", len(got))
print("END", [consumer.end_offsets(partitions)[tp] for tp in partitions])
by_time = consumer.offsets_for_times({partitions[0]: 1_700_000_000_000 + 150})
print("BY_TIME", by_time[partitions[0]].offset)

# A consumer group: consume everything, commit, leave; the next member resumes after it.
member = KafkaConsumer("py-topic", bootstrap_servers=bootstrap, group_id="py-group",
                       auto_offset_reset="earliest", enable_auto_commit=False,
                       consumer_timeout_ms=5000)
in_group = sum(1 for _ in member)
member.commit()
print("GROUP_CONSUMED", in_group, sorted(tp.partition for tp in member.assignment()))
member.close()
producer.send("py-topic", key=b"k300", value=b"v300", partition=0).get(timeout=10)
member = KafkaConsumer("py-topic", bootstrap_servers=bootstrap, group_id="py-group",
                       auto_offset_reset="earliest", consumer_timeout_ms=5000)
print("RESUMED", [m.value for m in member])
member.close()
print("GROUPS", [g["group_id"] for g in admin.list_groups()])
committed = admin.list_group_offsets("py-group")["py-group"]
print("COMMITTED", sorted((tp.partition, o.offset) for tp, o in committed.items()))

configs = admin.describe_configs([ConfigResource("TOPIC", "py-topic")])
print("CONFIGS", configs)
admin.delete_topics(["py-topic"])
print("AFTER_DELETE", sorted(t for t in admin.list_topics() if not t.startswith("__")))
"#;

#[test]
fn kafka_python_round_trip() {
    let broker = Broker::start(&["--cores", "2"]);
    let out = Command::new("python3")
        .args(["-c", SCRIPT, &broker.addr.to_string()])
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kafka-python failed (is it installed? `pip install kafka-python`):\n{stdout}\n{stderr}\n{}",
        broker.log()
    );
    for expected in [
        "TOPICS ['py-topic']",
        "CONSUMED 300",
        "END [100, 100, 100]",
        // Record 150 is in partition 0 at offset 50 (records 0, 3, 6, ... live there).
        "BY_TIME 50",
        "'retention.ms'",
        "GROUP_CONSUMED 300 [0, 1, 2]",
        "RESUMED [b'v300']",
        "GROUPS ['py-group']",
        "COMMITTED [(0, 101), (1, 100), (2, 100)]",
        "AFTER_DELETE []",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in stdout: {stdout}\nstderr: {stderr}"
        );
    }
}
