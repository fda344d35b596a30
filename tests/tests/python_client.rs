//! A client we did not write: kafka-python (pure Python; `.ci/run` installs it) connects to
//! `sluice serve`, negotiates versions with ApiVersions, and lists topics with Metadata.

use std::process::Command;

use sluice_tests::Broker;

const SCRIPT: &str = r#"
import sys
from kafka import KafkaConsumer
consumer = KafkaConsumer(bootstrap_servers=sys.argv[1], request_timeout_ms=10000)
topics = consumer.topics()
consumer.close()
print("TOPICS", sorted(topics))
"#;

#[test]
fn kafka_python_connects_and_lists_topics() {
    let broker = Broker::start(&["--cores", "2"]);
    let out = Command::new("python3")
        .args(["-c", SCRIPT, &broker.addr.to_string()])
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kafka-python failed (is it installed? `pip install kafka-python`):\n{stderr}"
    );
    assert!(
        stdout.contains("TOPICS []"),
        "stdout: {stdout}\nstderr: {stderr}"
    );
}
