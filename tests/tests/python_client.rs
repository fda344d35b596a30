//! A client we did not write: kafka-python (pure Python; `.ci/run` installs it) against
//! `sluice serve` with two shards: it creates a topic with its admin client, produces with
//! its default idempotent producer and acks=all (gzip-compressed, so compressed batches pass
//! through untouched), consumes
//! everything back from the beginning, reads end offsets and offsets by timestamp, reads the
//! topic's configs, and deletes the topic.

use std::process::Command;

use sluice_tests::Broker;

const SCRIPT: &str = r#"
import sys
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic, ConfigResource

bootstrap = sys.argv[1]
admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
admin.create_topics([NewTopic("py-topic", 3, 1, topic_configs={"retention.ms": "3600000"})])
print("TOPICS", sorted(admin.list_topics()))

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

configs = admin.describe_configs([ConfigResource("TOPIC", "py-topic")])
print("CONFIGS", configs)
admin.delete_topics(["py-topic"])
print("AFTER_DELETE", sorted(admin.list_topics()))
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
        "AFTER_DELETE []",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in stdout: {stdout}\nstderr: {stderr}"
        );
    }
}
