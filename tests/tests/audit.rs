//! The audit trail through clients we did not write: kafka-python logs in with SCRAM (once
//! with a wrong password) and is refused a topic; the operator's `sluice` creates a user, topics
//! and an ACL. Each lands in the trail with principal, client address, listener and time;
//! `sluice audit verify` passes, the chain continues across a restart, and an edited line is
//! named. A trail directory that cannot be opened stops the broker at start-up, naming the field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_tests::ports::free_address;
use sluice_tests::{python, sluice_binary, Broker};

/// A broker with SCRAM users on `sasl`, ACLs (the PLAINTEXT listener's anonymous operator is
/// the super user) and the audit trail on.
fn audited_broker(data_dir: tempfile::TempDir, sasl: SocketAddr) -> Broker {
    let listeners = format!("SASL_PLAINTEXT://{sasl}");
    Broker::start_on(
        data_dir,
        &[
            "--listeners",
            &listeners,
            "--authorizer",
            "acls",
            "--super-users",
            "User:ANONYMOUS",
            "--audit-enabled",
            "true",
        ],
    )
}

fn sluice_ok(broker: &Broker, args: &[&str]) {
    let out = Command::new(sluice_binary())
        .args(args)
        .args(["--bootstrap", &broker.bootstrap()])
        .output()
        .expect("run sluice");
    assert!(
        out.status.success(),
        "sluice {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `sluice audit verify --dir <dir>`: (success, stdout + stderr).
fn verify(dir: &Path) -> (bool, String) {
    let out = Command::new(sluice_binary())
        .args(["audit", "verify", "--dir"])
        .arg(dir)
        .output()
        .expect("run sluice audit verify");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn trail_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

fn entries(dir: &Path) -> Vec<Value> {
    trail_files(dir)
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).expect("a JSON line"))
                .collect::<Vec<Value>>()
        })
        .collect()
}

/// Waits (at most 10 s; the writer is a thread of its own) for an entry `matches` accepts.
fn wait_for_entry(dir: &Path, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(found) = entries(dir).into_iter().find(|e| matches(e)) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "no audit entry for {what}:\n{:#?}",
            entries(dir)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// kafka-python as alice, with `password`: produces one record to each topic named, printing
/// `<topic> ok` or `<topic> <error class>`.
const PRODUCE_AS_ALICE: &str = r#"
import sys
from kafka import KafkaProducer
bootstrap, password = sys.argv[1:3]
for topic in sys.argv[3:]:
    try:
        p = KafkaProducer(bootstrap_servers=bootstrap, security_protocol="SASL_PLAINTEXT",
                          sasl_mechanism="SCRAM-SHA-256", sasl_plain_username="alice",
                          sasl_plain_password=password, acks="all", max_block_ms=4000,
                          bootstrap_timeout_ms=3000, retries=0)
        try:
            p.send(topic, b"x").get(timeout=10)
        finally:
            p.close(timeout=2)
        print(topic, "ok", flush=True)
    except Exception as e:
        print(topic, type(e).__name__, flush=True)
"#;

#[test]
fn authentications_denials_and_changes_are_recorded_and_verifiable() {
    let sasl = free_address();
    let broker = audited_broker(tempfile::tempdir().unwrap(), sasl);
    let trail = broker.data_dir().join("audit");
    sluice_ok(&broker, &["user", "create", "alice", "--password", "pw"]);
    for topic in ["orders", "secret"] {
        sluice_ok(&broker, &["topic", "create", topic, "--partitions", "1"]);
    }
    sluice_ok(
        &broker,
        &[
            "acl",
            "add",
            "--principal",
            "User:alice",
            "--operation",
            "write",
            "--topic",
            "orders",
        ],
    );
    let sasl_address = sasl.to_string();
    let (_, refused) = python(PRODUCE_AS_ALICE, &[&sasl_address, "wrong", "orders"]);
    assert!(!refused.contains("orders ok"), "{refused}");
    let (_, produced) = python(PRODUCE_AS_ALICE, &[&sasl_address, "pw", "orders", "secret"]);
    assert!(produced.contains("orders ok"), "{produced}");
    assert!(
        produced.contains("secret TopicAuthorizationFailedError"),
        "{produced}"
    );

    // Every entry says who, from where, through which listener and when.
    let started = wait_for_entry(&trail, "the start", |e| e["event"] == "audit_started");
    assert_eq!(started["seq"], 0);
    assert_eq!(started["prev"].as_str().unwrap(), "0".repeat(64));
    let user = wait_for_entry(&trail, "the user's creation", |e| {
        e["event"] == "change" && e["detail"]["resource_type"] == "USER"
    });
    assert_eq!(user["outcome"], "success");
    assert_eq!(user["principal"], "User:ANONYMOUS");
    assert_eq!(user["listener"], "PLAINTEXT");
    assert_eq!(user["detail"]["resource"], "alice");
    assert_eq!(user["detail"]["api"], "AlterUserScramCredentials");
    assert!(
        user["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{user}"
    );
    assert!(user["time"].as_str().unwrap().starts_with("20"), "{user}");
    assert!(
        !user.to_string().contains("salt"),
        "no credential material: {user}"
    );
    let topic = wait_for_entry(&trail, "the topic's creation", |e| {
        e["event"] == "change" && e["detail"]["resource"] == "orders"
    });
    assert_eq!(topic["detail"]["api"], "CreateTopics");
    assert_eq!(topic["detail"]["request"]["partitions"], 1);
    let acl = wait_for_entry(&trail, "the ACL", |e| {
        e["event"] == "change" && e["detail"]["resource_type"] == "ACL"
    });
    assert_eq!(
        acl["detail"]["request"]["create"]["principal"],
        "User:alice"
    );
    assert_eq!(acl["detail"]["request"]["create"]["operation"], "WRITE");

    let failed = wait_for_entry(&trail, "the wrong password", |e| {
        e["event"] == "authentication" && e["outcome"] == "failure"
    });
    assert_eq!(failed["detail"]["user"], "alice");
    assert_eq!(failed["detail"]["mechanism"], "SCRAM-SHA-256");
    assert_eq!(failed["listener"], "SASL_PLAINTEXT");
    let logged_in = wait_for_entry(&trail, "alice's login", |e| {
        e["event"] == "authentication" && e["outcome"] == "success"
    });
    assert_eq!(logged_in["principal"], "User:alice");
    let denied = wait_for_entry(&trail, "the refused topic", |e| {
        e["event"] == "authorization" && e["detail"]["resource"] == "secret"
    });
    assert_eq!(denied["outcome"], "denied");
    assert_eq!(denied["principal"], "User:alice");
    assert_eq!(denied["detail"]["resource_type"], "TOPIC");
    assert!(denied["detail"]["api"].is_string(), "{denied}");

    let (ok, report) = verify(&trail);
    assert!(ok, "{report}");
    assert!(report.contains("chain intact"), "{report}");
    let before = entries(&trail).len();

    // The chain goes on across a restart.
    let data_dir = broker.stop();
    let broker = audited_broker(data_dir, sasl);
    let trail = broker.data_dir().join("audit");
    wait_for_entry(&trail, "the second start", |e| {
        e["event"] == "audit_started" && e["seq"].as_u64() >= Some(before as u64)
    });
    let (ok, report) = verify(&trail);
    assert!(ok, "{report}");

    // An edited line is found, and named.
    let file = trail_files(&trail).pop().unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    let line = text
        .lines()
        .position(|l| l.contains("\"outcome\":\"denied\""))
        .unwrap();
    std::fs::write(
        &file,
        text.replacen("\"outcome\":\"denied\"", "\"outcome\":\"allowed\"", 1),
    )
    .unwrap();
    let (ok, report) = verify(&trail);
    assert!(!ok, "{report}");
    assert!(
        report.contains(&format!("line {}: its hash does not match", line + 1)),
        "{report}"
    );
    drop(broker);
}

#[test]
fn an_audit_directory_that_cannot_be_opened_stops_the_start() {
    let data_dir = tempfile::tempdir().unwrap();
    let not_a_dir = data_dir.path().join("file");
    std::fs::write(&not_a_dir, b"x").unwrap();
    let out = Command::new(sluice_binary())
        .args(["serve", "--listen", &free_address().to_string()])
        .args(["--admin-listen", "127.0.0.1:0", "--audit-enabled", "true"])
        .arg("--data-dir")
        .arg(data_dir.path())
        .arg("--audit-log-dir")
        .arg(&not_a_dir)
        .output()
        .expect("run sluice serve");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("audit_log_dir"), "{stderr}");
}
