//! SASL listeners with clients we did not write: kafka-python (PLAIN and SCRAM, over plaintext
//! and TLS), confluent-kafka (librdkafka 2.16: SCRAM-SHA-512 over SASL_SSL, and KIP-368
//! re-authentication) and Debian's kcat (librdkafka 2.0.2: PLAIN) produce and consume as users
//! made with `sluice user`; users survive a restart and a deleted one is refused; hostile or
//! out-of-order SASL input closes only its own connection, with Kafka's error code where Kafka
//! answers one; a session that is not renewed ends.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, MetadataRequest, MetadataResponse, SaslAuthenticateRequest, SaslAuthenticateResponse,
    SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;
use sluice_tests::pki::Pki;
use sluice_tests::ports::free_address;
use sluice_tests::{kcat, python, sluice_binary, wait_for_log, wire, Broker};

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A broker with its PLAINTEXT listener, a SASL_PLAINTEXT one at `sasl` and, with `pki`, a
/// SASL_SSL one at `sasl_ssl`; every mechanism on; plus `extra`.
fn sasl_broker(
    data_dir: tempfile::TempDir,
    sasl: SocketAddr,
    tls: Option<(&Pki, SocketAddr)>,
    extra: &[&str],
) -> Broker {
    let mut listeners = format!("SASL_PLAINTEXT://{sasl}");
    let mut args: Vec<String> = vec![
        "--sasl-enabled-mechanisms".into(),
        "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512".into(),
    ];
    if let Some((pki, address)) = tls {
        listeners.push_str(&format!(",SASL_SSL://{address}"));
        args.extend([
            "--ssl-certificate".into(),
            path(&pki.server_cert).into(),
            "--ssl-key".into(),
            path(&pki.server_key).into(),
        ]);
    }
    args.extend(["--listeners".into(), listeners]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Broker::start_on(data_dir, &args)
}

/// Runs `sluice user ...` against the broker's PLAINTEXT listener; its stdout.
fn sluice_user(broker: &Broker, args: &[&str]) -> String {
    let out = Command::new(sluice_binary())
        .arg("user")
        .args(args)
        .args(["--bootstrap", &broker.bootstrap()])
        .output()
        .expect("run sluice user");
    assert!(
        out.status.success(),
        "sluice user {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// kafka-python: produces 20 records to `topic` and reads them back as `user`, over
/// `protocol` with `mechanism` (`ca` empty: no TLS). Prints `PY_OK 20`, or `PY_REFUSED` when
/// it cannot get in (kafka-python retries a refused authentication until its bootstrap times
/// out; the broker's log says why).
const KAFKA_PYTHON: &str = r#"
import sys
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaTimeoutError
bootstrap, protocol, mechanism, user, password, ca, topic = sys.argv[1:8]
settings = dict(bootstrap_servers=bootstrap, security_protocol=protocol, sasl_mechanism=mechanism,
                sasl_plain_username=user, sasl_plain_password=password)
if ca:
    settings["ssl_cafile"] = ca
try:
    producer = KafkaProducer(acks="all", max_block_ms=5000, bootstrap_timeout_ms=3000, **settings)
except KafkaTimeoutError as e:
    print("PY_REFUSED", repr(e))
    sys.exit(0)
for i in range(20):
    producer.send(topic, value=b"v%d" % i, partition=0)
producer.flush()
producer.close()
consumer = KafkaConsumer(auto_offset_reset="earliest", enable_auto_commit=False,
                         consumer_timeout_ms=5000, **settings)
consumer.assign([TopicPartition(topic, 0)])
values = [m.value for m in consumer]
assert values == [b"v%d" % i for i in range(20)], values
print("PY_OK", len(values))
"#;

/// confluent-kafka (librdkafka 2.16): produces `count` records to `topic`, one every
/// `interval_ms`, then reads them back; prints `CK_OK <count>`.
const CONFLUENT_KAFKA: &str = r#"
import sys, time
from confluent_kafka import Consumer, Producer, TopicPartition
bootstrap, protocol, mechanism, user, password, ca, topic, count, interval_ms = sys.argv[1:10]
count, interval = int(count), int(interval_ms) / 1000
settings = {"bootstrap.servers": bootstrap, "security.protocol": protocol,
            "sasl.mechanisms": mechanism, "sasl.username": user, "sasl.password": password}
if ca:
    settings["ssl.ca.location"] = ca
errors = []
producer = Producer(dict(settings, **{"acks": "all", "message.timeout.ms": 10000}))
def delivered(err, msg):
    if err is not None:
        errors.append(err)
for i in range(count):
    producer.produce(topic, value=b"ck%d" % i, partition=0, on_delivery=delivered)
    producer.poll(0)
    time.sleep(interval)
assert producer.flush(15) == 0, "undelivered records"
assert not errors, errors
consumer = Consumer(dict(settings, **{"group.id": "ck-" + topic, "enable.auto.commit": False}))
consumer.assign([TopicPartition(topic, 0, 0)])
values = []
deadline = time.time() + 15
while len(values) < count and time.time() < deadline:
    m = consumer.poll(0.5)
    if m is not None and m.error() is None:
        values.append(m.value())
consumer.close()
assert values == [b"ck%d" % i for i in range(count)], values
print("CK_OK", len(values))
"#;

#[test]
fn real_clients_authenticate_with_plain_and_scram_over_plaintext_and_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path(), "sasl");
    let (sasl, sasl_ssl) = (free_address(), free_address());
    let broker = sasl_broker(
        tempfile::tempdir().unwrap(),
        sasl,
        Some((&pki, sasl_ssl)),
        &[],
    );
    let created = sluice_user(&broker, &["create", "alice", "--password", "alice-secret"]);
    assert!(created.contains("user alice set"), "{created}");
    let (sasl, sasl_ssl) = (sasl.to_string(), sasl_ssl.to_string());
    let ca = path(&pki.ca);

    // kafka-python: PLAIN and SCRAM, over plaintext and over TLS.
    for (protocol, address, mechanism, ca) in [
        ("SASL_PLAINTEXT", &sasl, "PLAIN", ""),
        ("SASL_PLAINTEXT", &sasl, "SCRAM-SHA-256", ""),
        ("SASL_SSL", &sasl_ssl, "PLAIN", ca),
        ("SASL_SSL", &sasl_ssl, "SCRAM-SHA-512", ca),
    ] {
        let topic = format!("py-{}-{}", protocol, mechanism).to_lowercase();
        let (success, output) = python(
            KAFKA_PYTHON,
            &[
                address,
                protocol,
                mechanism,
                "alice",
                "alice-secret",
                ca,
                &topic,
            ],
        );
        assert!(
            success && output.contains("PY_OK 20"),
            "kafka-python {protocol} {mechanism}:\n{output}\n{}",
            broker.log()
        );
    }

    // librdkafka 2.16 (confluent-kafka): SCRAM-SHA-512 over TLS.
    let (success, output) = python(
        CONFLUENT_KAFKA,
        &[
            &sasl_ssl,
            "SASL_SSL",
            "SCRAM-SHA-512",
            "alice",
            "alice-secret",
            ca,
            "ck-scram",
            "30",
            "0",
        ],
    );
    assert!(
        success && output.contains("CK_OK 30"),
        "confluent-kafka SASL_SSL SCRAM-SHA-512:\n{output}\n{}",
        broker.log()
    );

    // Debian's kcat (librdkafka 2.0.2): PLAIN. (Its SCRAM repeats the client nonce in the final
    // message, a librdkafka bug fixed in 2.6.1 that Kafka 4 refuses too.)
    let sasl_args = [
        "-X",
        "security.protocol=SASL_PLAINTEXT",
        "-X",
        "sasl.mechanisms=PLAIN",
        "-X",
        "sasl.username=alice",
        "-X",
        "sasl.password=alice-secret",
    ];
    let mut args = vec!["-b", &sasl, "-P", "-t", "kcat-sasl"];
    args.extend(sasl_args);
    let records: String = (0..10).map(|i| format!("rec-{i}\n")).collect();
    let out = kcat(&args, Some(&records));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut args = vec![
        "-b",
        &sasl,
        "-C",
        "-t",
        "kcat-sasl",
        "-o",
        "beginning",
        "-e",
    ];
    args.extend(sasl_args);
    let out = kcat(&args, None);
    assert_eq!(String::from_utf8_lossy(&out.stdout), records);
    wait_for_log(&broker, "user=alice mechanism=\"SCRAM-SHA-512\"", 1);

    // A wrong password: refused with SASL_AUTHENTICATION_FAILED, logged, nothing else touched.
    let failures = broker.log().matches("SASL authentication failed").count();
    let (success, output) = python(
        KAFKA_PYTHON,
        &[
            &sasl,
            "SASL_PLAINTEXT",
            "SCRAM-SHA-512",
            "alice",
            "wrong",
            "",
            "py-wrong",
        ],
    );
    assert!(success && output.contains("PY_REFUSED"), "{output}");
    wait_for_log(&broker, "SASL authentication failed", failures + 1);
    assert!(
        !broker.log().contains("py-wrong"),
        "a refused client created nothing"
    );
}

#[test]
fn users_survive_a_restart_and_a_deleted_user_is_refused() {
    let sasl = free_address();
    let broker = sasl_broker(tempfile::tempdir().unwrap(), sasl, None, &[]);
    sluice_user(
        &broker,
        &[
            "create",
            "bob",
            "--password",
            "bob-secret",
            "--mechanism",
            "SCRAM-SHA-256",
            "--iterations",
            "8192",
        ],
    );
    let listed = sluice_user(&broker, &["list", "--output", "json"]);
    let users: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(
        users,
        serde_json::json!([{ "user": "bob", "credentials": [
            { "mechanism": "SCRAM-SHA-256", "iterations": 8192 }
        ]}]),
        "{listed}"
    );
    // Only the keys are stored: neither the password nor the salted password.
    let metadata = std::fs::read_to_string(broker.data_dir().join("metadata.json")).unwrap();
    assert!(metadata.contains("stored_key") && !metadata.contains("bob-secret"));

    // SIGKILL, restart: the user is still there and can authenticate.
    let data_dir = broker.kill();
    let broker = sasl_broker(data_dir, sasl, None, &[]);
    let sasl = sasl.to_string();
    let args = |mechanism, topic| {
        [
            sasl.clone(),
            "SASL_PLAINTEXT".into(),
            mechanism,
            "bob".into(),
            "bob-secret".into(),
            String::new(),
            topic,
        ]
    };
    let run = |mechanism: &str, topic: &str| {
        let args = args(mechanism.to_string(), topic.to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        python(KAFKA_PYTHON, &args)
    };
    let (success, output) = run("SCRAM-SHA-256", "bob-topic");
    assert!(success && output.contains("PY_OK 20"), "{output}");
    // No SCRAM-SHA-512 credential: that mechanism is refused for bob.
    let (_, output) = run("SCRAM-SHA-512", "bob-512");
    assert!(output.contains("PY_REFUSED"), "{output}");
    wait_for_log(&broker, "mechanism SCRAM-SHA-512", 1);

    assert!(sluice_user(&broker, &["delete", "bob"]).contains("user bob deleted"));
    assert_eq!(sluice_user(&broker, &["list"]).trim(), "");
    let (_, output) = run("SCRAM-SHA-256", "bob-gone");
    assert!(output.contains("PY_REFUSED"), "{output}");
    wait_for_log(&broker, "mechanism SCRAM-SHA-256", 1);
}

/// SaslHandshake v1 for `mechanism` and SaslAuthenticate with a PLAIN token, on `s`.
fn plain_login(s: &mut TcpStream, user: &str, password: &str) -> SaslAuthenticateResponse {
    let handshake: SaslHandshakeResponse = wire::call(
        s,
        ApiKey::SaslHandshake,
        1,
        &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN")),
    );
    assert_eq!(handshake.error_code, 0, "{handshake:?}");
    wire::call(
        s,
        ApiKey::SaslAuthenticate,
        2,
        &SaslAuthenticateRequest::default()
            .with_auth_bytes(Bytes::from(format!("\0{user}\0{password}"))),
    )
}

/// Sends `frame` and reads what comes back: responses until the broker closes the connection.
fn answers_then_closed(s: &mut TcpStream, frame: &[u8], what: &str) -> Vec<Bytes> {
    s.write_all(frame).unwrap();
    let mut answers = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Some(answer) = wire::read_frame(s) {
        answers.push(answer);
        assert!(
            Instant::now() < deadline,
            "{what}: the connection stayed open"
        );
    }
    answers
}

/// The error code of a response frame whose body starts with it (after a v0 response header).
fn leading_error_code(frame: &Bytes) -> i16 {
    i16::from_be_bytes([frame[4], frame[5]])
}

fn metadata(s: &mut TcpStream) -> MetadataResponse {
    wire::call(s, ApiKey::Metadata, 1, &MetadataRequest::default())
}

#[test]
fn hostile_sasl_input_closes_only_its_own_connection() {
    let sasl = free_address();
    let broker = sasl_broker(tempfile::tempdir().unwrap(), sasl, None, &[]);
    sluice_user(&broker, &["create", "alice", "--password", "pw"]);
    sluice_user(&broker, &["create", "mallory", "--password", "pw2"]);

    // A client that authenticated first, and keeps working through everything below.
    let mut good = wire::connect(sasl);
    let login = plain_login(&mut good, "alice", "pw");
    assert_eq!(login.error_code, 0, "{login:?}");
    assert_eq!(
        login.session_lifetime_ms, 0,
        "no re-authentication configured"
    );

    // A request before authenticating: closed unanswered.
    let mut s = wire::connect(sasl);
    let answers = answers_then_closed(
        &mut s,
        &wire::request(ApiKey::Metadata, 1, 1, &MetadataRequest::default()),
        "Metadata before SASL",
    );
    assert!(answers.is_empty(), "{answers:?}");

    // SaslAuthenticate before SaslHandshake: ILLEGAL_SASL_STATE, then closed.
    let mut s = wire::connect(sasl);
    let answers = answers_then_closed(
        &mut s,
        &wire::request(
            ApiKey::SaslAuthenticate,
            1,
            1,
            &SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from_static(b"\0a\0b")),
        ),
        "SaslAuthenticate first",
    );
    assert_eq!(answers.len(), 1);
    assert_eq!(leading_error_code(&answers[0]), 34, "ILLEGAL_SASL_STATE");

    // A mechanism not offered: UNSUPPORTED_SASL_MECHANISM with the offered ones, then closed.
    let mut s = wire::connect(sasl);
    let answers = answers_then_closed(
        &mut s,
        &wire::request(
            ApiKey::SaslHandshake,
            1,
            1,
            &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("GSSAPI")),
        ),
        "unknown mechanism",
    );
    assert_eq!(answers.len(), 1);
    assert_eq!(
        leading_error_code(&answers[0]),
        33,
        "UNSUPPORTED_SASL_MECHANISM"
    );
    assert!(answers[0].windows(13).any(|w| w == b"SCRAM-SHA-512"));

    // A wrong password: SASL_AUTHENTICATION_FAILED with Kafka's message, then closed.
    let mut s = wire::connect(sasl);
    let refused = plain_login(&mut s, "alice", "not-it");
    assert_eq!(refused.error_code, 58, "{refused:?}");
    assert!(refused
        .error_message
        .as_deref()
        .is_some_and(|m| m.contains("invalid credentials")));
    assert!(
        wire::read_frame(&mut s).is_none(),
        "closed after the failure"
    );

    // A huge token (a frame above 512 KiB before authenticating): closed unread.
    let mut s = wire::connect(sasl);
    let handshake: SaslHandshakeResponse = wire::call(
        &mut s,
        ApiKey::SaslHandshake,
        1,
        &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN")),
    );
    assert_eq!(handshake.error_code, 0);
    let mut huge = (600_000i32).to_be_bytes().to_vec();
    huge.extend_from_slice(&[0u8; 64]);
    let answers = answers_then_closed(&mut s, &huge, "huge SASL frame");
    assert!(answers.is_empty());

    // Another request in the middle of an exchange: closed.
    let mut s = wire::connect(sasl);
    let _: SaslHandshakeResponse = wire::call(
        &mut s,
        ApiKey::SaslHandshake,
        1,
        &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN")),
    );
    let answers = answers_then_closed(
        &mut s,
        &wire::request(ApiKey::Metadata, 1, 2, &MetadataRequest::default()),
        "Metadata mid-exchange",
    );
    assert!(answers.is_empty());

    // SaslHandshake v0: the token and its answer travel as bare frames.
    let mut s = wire::connect(sasl);
    let _: SaslHandshakeResponse = wire::call(
        &mut s,
        ApiKey::SaslHandshake,
        0,
        &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN")),
    );
    s.write_all(&wire::frame(b"\0alice\0pw")).unwrap();
    let answer = wire::read_frame(&mut s).expect("an empty token back");
    assert!(answer.is_empty(), "{answer:?}");
    assert!(!metadata(&mut s).brokers.is_empty());

    // Re-authenticating as someone else: refused, closed.
    let mut s = wire::connect(sasl);
    assert_eq!(plain_login(&mut s, "alice", "pw").error_code, 0);
    let switched = plain_login(&mut s, "mallory", "pw2");
    assert_eq!(switched.error_code, 58, "{switched:?}");
    assert!(wire::read_frame(&mut s).is_none());

    // SaslAuthenticate after authenticating: ILLEGAL_SASL_STATE, and the connection goes on.
    let again: SaslAuthenticateResponse = wire::call(
        &mut good,
        ApiKey::SaslAuthenticate,
        1,
        &SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from_static(b"\0a\0b")),
    );
    assert_eq!(again.error_code, 34);
    assert!(!metadata(&mut good).brokers.is_empty());
    assert!(broker.log().contains("before SASL authentication"));
}

#[test]
fn a_session_ends_unless_the_client_re_authenticates() {
    let sasl = free_address();
    let broker = sasl_broker(
        tempfile::tempdir().unwrap(),
        sasl,
        None,
        &["--connections-max-reauth-ms", "1500"],
    );
    sluice_user(&broker, &["create", "alice", "--password", "pw"]);

    // The session lifetime is announced; a request after it ends closes the connection.
    let mut s = wire::connect(sasl);
    let login = plain_login(&mut s, "alice", "pw");
    assert_eq!((login.error_code, login.session_lifetime_ms), (0, 1500));
    assert!(!metadata(&mut s).brokers.is_empty());
    std::thread::sleep(Duration::from_millis(1700));
    let answers = answers_then_closed(
        &mut s,
        &wire::request(ApiKey::Metadata, 1, 3, &MetadataRequest::default()),
        "after the session",
    );
    assert!(answers.is_empty());
    wait_for_log(&broker, "did not re-authenticate in time", 1);

    // Renewed in time, as the same user: the connection lives on past the first lifetime.
    let mut s = wire::connect(sasl);
    assert_eq!(plain_login(&mut s, "alice", "pw").error_code, 0);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(plain_login(&mut s, "alice", "pw").error_code, 0);
    std::thread::sleep(Duration::from_millis(1000));
    assert!(!metadata(&mut s).brokers.is_empty());

    // librdkafka 2.16 re-authenticates by itself (KIP-368): 5 s of producing over 1.5 s
    // sessions loses nothing.
    let sasl = sasl.to_string();
    let (success, output) = python(
        CONFLUENT_KAFKA,
        &[
            &sasl,
            "SASL_PLAINTEXT",
            "SCRAM-SHA-256",
            "alice",
            "pw",
            "",
            "ck-reauth",
            "25",
            "200",
        ],
    );
    assert!(
        success && output.contains("CK_OK 25"),
        "confluent-kafka across re-authentications:\n{output}\n{}",
        broker.log()
    );
    wait_for_log(&broker, "renewed=true", 3);
}
