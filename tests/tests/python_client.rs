//! A client we did not write: kafka-python (pure Python; `.ci/run` installs it) against
//! `sluice serve` with two shards: it creates a topic with its admin client, produces with
//! its default idempotent producer and acks=all (gzip-compressed, so compressed batches pass
//! through untouched), consumes
//! everything back from the beginning, reads end offsets and offsets by timestamp, reads the
//! topic's configs, consumes in a consumer group (commit, leave, resume from the committed
//! offsets, list groups and their offsets), and deletes the topic. Its admin client also
//! describes the cluster (DescribeCluster), the log directories (DescribeLogDirs), topics page
//! by page (DescribeTopicPartitions) and finds the record with the largest timestamp
//! (ListOffsets -3, KIP-734); and reads the broker's configs under Kafka's names with their
//! sources and synonyms, and the config resources (ListConfigResources).

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

/// Runs a kafka-python `script` against `broker` (its address as the script's argument) and
/// checks that it succeeded and printed every `expected` line fragment.
fn run_script(broker: &Broker, script: &str, expected: &[String]) {
    let out = Command::new("python3")
        .args(["-c", script, &broker.addr.to_string()])
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kafka-python failed (scripts/test installs it):\n{stdout}\n{stderr}\n{}",
        broker.log()
    );
    for expected in expected {
        assert!(
            stdout.contains(expected.as_str()),
            "missing {expected:?} in stdout: {stdout}\nstderr: {stderr}"
        );
    }
}

#[test]
fn kafka_python_round_trip() {
    let broker = Broker::start(&["--cores", "2"]);
    let expected = [
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
    ];
    run_script(&broker, SCRIPT, &expected.map(String::from));
}

const ADMIN_SCRIPT: &str = r#"
import sys, time
from kafka import KafkaAdminClient, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.protocol.consumer.offsets import OffsetSpec

bootstrap = sys.argv[1]
admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
admin.create_topics([NewTopic("py-admin", 3, 1)])
producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
# Partition 0's largest timestamp is at offset 1 (KIP-734 answers that record).
for ts in [1_700_000_001_000, 1_700_000_003_000, 1_700_000_002_000]:
    producer.send("py-admin", value=b"x" * 100, partition=0, timestamp_ms=ts)
producer.flush()

cluster = admin.describe_cluster()
print("CLUSTER", cluster["cluster_id"], cluster["controller_id"],
      [(b["broker_id"], b["port"]) for b in cluster["brokers"]],
      sorted(cluster.get("authorized_operations") or []))

dirs = admin.describe_log_dirs()
sizes = {}
for d in dirs[0]["log_dirs"]:
    for t in d["topics"]:
        for p in t["partitions"]:
            sizes[(t["name"], p["partition_index"])] = p["partition_size"]
print("LOGDIRS", [(k, v > 0) for k, v in sorted(sizes.items()) if k[0] == "py-admin"])

page = admin.describe_topic_partitions(["py-admin"], response_partition_limit=2)
first = [p["partition_index"] for t in page["topics"] for p in t["partitions"]]
print("PAGE1", first, page["next_cursor"])
page = admin.describe_topic_partitions(["py-admin"], cursor=page["next_cursor"])
print("PAGE2", [p["partition_index"] for t in page["topics"] for p in t["partitions"]], page["next_cursor"])

tp = TopicPartition("py-admin", 0)
found = admin.list_partition_offsets({tp: OffsetSpec.MAX_TIMESTAMP})[tp]
print("MAX_TIMESTAMP", found.offset, found.timestamp)

# The (idempotent) producer above, as partition 0's leader knows it; none on partition 1.
states = admin.describe_producers([TopicPartition("py-admin", 0), TopicPartition("py-admin", 1)])
print("PRODUCERS", sorted((tp.partition, [(p.producer_epoch, p.last_sequence,
    p.last_timestamp >= 1_700_000_002_000, p.coordinator_epoch, p.current_transaction_start_offset)
    for p in s.active_producers]) for tp, s in states.items()))
"#;

#[test]
fn kafka_python_admin_describes_cluster_log_dirs_partitions_max_timestamp_and_producers() {
    let broker = Broker::start(&["--cores", "2"]);
    let port = broker.addr.port();
    let expected = [
        format!(
            "CLUSTER sluice-single-node-000 0 [(0, {port})] ['ALTER', 'ALTER_CONFIGS', \
             'CLUSTER_ACTION', 'CREATE', 'DESCRIBE', 'DESCRIBE_CONFIGS', 'IDEMPOTENT_WRITE']"
        ),
        "LOGDIRS [(('py-admin', 0), True), (('py-admin', 1), False), (('py-admin', 2), False)]"
            .to_string(),
        "PAGE1 [0, 1] {'topic_name': 'py-admin', 'partition_index': 2}".to_string(),
        "PAGE2 [2] None".to_string(),
        "MAX_TIMESTAMP 1 1700000003000".to_string(),
        "PRODUCERS [(0, [(0, 2, True, -1, -1)]), (1, [])]".to_string(),
    ];
    run_script(&broker, ADMIN_SCRIPT, &expected);
}

const CONFIG_SCRIPT: &str = r#"
import sys
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, NewTopic
admin = KafkaAdminClient(bootstrap_servers=sys.argv[1])
admin.create_topics([NewTopic("cfg-topic", 1, 1, topic_configs={"retention.ms": "1000"})])
r = admin.describe_configs([ConfigResource("BROKER", "0")], include_synonyms=True, config_filter="all")
broker = r["broker"]["0"]
for key in ["advertised.listeners", "listeners", "log.dirs", "message.max.bytes", "num.partitions",
            "default.replication.factor", "log.retention.ms"]:
    e = broker[key]
    print("BROKER", key, e["value"], e["config_source"], e["read_only"],
          [(s["name"], s["source"]) for s in e["synonyms"]])
r = admin.describe_configs([ConfigResource("TOPIC", "cfg-topic")], include_synonyms=True)
e = r["topic"]["cfg-topic"]["retention.ms"]
print("TOPIC retention.ms", e["value"], [(s["name"], s["value"], s["source"]) for s in e["synonyms"]])
print("RESOURCES", admin.list_config_resources())
"#;

#[test]
fn kafka_python_reads_broker_configs_by_kafka_name_with_synonyms() {
    let broker = Broker::start(&[]);
    let addr = broker.addr;
    let data_dir = std::fs::canonicalize(broker.data_dir.path()).unwrap();
    let expected = [
        format!(
            "BROKER advertised.listeners PLAINTEXT://{addr} STATIC_BROKER_CONFIG True \
             [('advertised.listeners', 'STATIC_BROKER_CONFIG')]"
        ),
        format!("BROKER listeners PLAINTEXT://{addr} STATIC_BROKER_CONFIG True"),
        format!(
            "BROKER log.dirs {} STATIC_BROKER_CONFIG True",
            data_dir.display()
        ),
        "BROKER message.max.bytes 1048588 DEFAULT_CONFIG True".to_string(),
        "BROKER num.partitions 1 STATIC_BROKER_CONFIG False".to_string(),
        "BROKER default.replication.factor 1 STATIC_BROKER_CONFIG True".to_string(),
        "BROKER log.retention.ms 604800000 DEFAULT_CONFIG True".to_string(),
        "TOPIC retention.ms 1000 [('retention.ms', '1000', 'DYNAMIC_TOPIC_CONFIG'), \
         ('log.retention.ms', '604800000', 'DEFAULT_CONFIG')]"
            .to_string(),
        "RESOURCES {'topic': ['__consumer_offsets', 'cfg-topic'], 'broker': ['0']}".to_string(),
    ];
    run_script(&broker, CONFIG_SCRIPT, &expected);
}
