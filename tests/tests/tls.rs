//! SSL listeners with clients we did not write: Debian's kcat (librdkafka 2.0.2, OpenSSL) and
//! kafka-python (Python's ssl module) produce and consume over TLS with client certificates
//! (mutual TLS); Metadata names the listener the client came in on; the client certificate's
//! subject becomes the principal through Kafka-style mapping rules; TLS 1.2 and 1.3 are taken
//! and 1.1 is not; a client without a certificate, and plaintext Kafka bytes sent to the TLS
//! port, are refused without disturbing anyone else, and so are a client certificate from
//! another CA, an expired one, garbage instead of a ClientHello and a client that never
//! finishes its handshake (closed after 10 s); SIGHUP reloads a rotated certificate while connections opened before keep working.
//! Certificates are generated here (rcgen).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use sluice_tests::pki::Pki;
use sluice_tests::ports::free_port;
use sluice_tests::{kcat, python, wait_for_log, Broker};

/// A broker with its PLAINTEXT listener and an SSL one at `ssl_address`, serving `pki`'s server
/// certificate, plus `extra` arguments.
fn ssl_broker(pki: &Pki, ssl_address: SocketAddr, extra: &[&str]) -> Broker {
    let listeners = format!("SSL://{ssl_address}");
    let mut args = vec![
        "--listeners",
        listeners.as_str(),
        "--ssl-certificate",
        path(&pki.server_cert),
        "--ssl-key",
        path(&pki.server_key),
    ];
    args.extend(extra);
    Broker::start(&args)
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "kcat failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// kcat's `-X` settings for TLS, with or without the client certificate.
fn ssl_args(pki: &Pki, with_certificate: bool) -> Vec<String> {
    let mut args = vec![
        "-X".to_string(),
        "security.protocol=ssl".into(),
        "-X".into(),
        format!("ssl.ca.location={}", path(&pki.ca)),
    ];
    if with_certificate {
        args.extend([
            "-X".into(),
            format!("ssl.certificate.location={}", path(&pki.client_cert)),
            "-X".into(),
            format!("ssl.key.location={}", path(&pki.client_key)),
        ]);
    }
    args
}

const KAFKA_PYTHON_SSL: &str = r#"
import ssl, sys, time
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
bootstrap, ca, cert, key = sys.argv[1:5]
tls = dict(security_protocol="SSL", ssl_cafile=ca, ssl_certfile=cert, ssl_keyfile=key)
producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", **tls)
for i in range(50):
    producer.send("py-tls", key=b"k%d" % i, value=b"v%d" % i, partition=0)
producer.flush()
producer.close()
consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                         enable_auto_commit=False, consumer_timeout_ms=5000, **tls)
consumer.assign([TopicPartition("py-tls", 0)])
values = [m.value for m in consumer]
assert values == [b"v%d" % i for i in range(50)], values
print("PY_CONSUMED", len(values))

# Responses larger than the socket's buffers: 12 MB fetched in one response over TLS.
producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20,
                         max_request_size=2_000_000, **tls)
big = b"x" * 60_000
for i in range(200):
    producer.send("py-tls-big", value=big, partition=0)
producer.flush()
producer.close()
consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                         enable_auto_commit=False, consumer_timeout_ms=5000,
                         max_partition_fetch_bytes=16_000_000, fetch_max_bytes=16_000_000,
                         receive_buffer_bytes=65536, **tls)
consumer.assign([TopicPartition("py-tls-big", 0)])
started = time.time()
print("PY_BIG", sum(len(m.value) for m in consumer))

# Protocol versions, with Python's own TLS client: 1.3 and 1.2 are taken, 1.1 is not.
import socket
host, port = bootstrap.rsplit(":", 1)
def handshake(version):
    context = ssl.create_default_context(cafile=ca)
    context.load_cert_chain(cert, key)
    context.minimum_version = version
    context.maximum_version = version
    try:
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls_socket:
                return tls_socket.version()
    except (ssl.SSLError, OSError) as e:
        return "refused"
print("TLS13", handshake(ssl.TLSVersion.TLSv1_3))
print("TLS12", handshake(ssl.TLSVersion.TLSv1_2))
print("TLS11", handshake(ssl.TLSVersion.TLSv1_1))
"#;

#[test]
fn ssl_listener_serves_kcat_and_kafka_python_with_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path(), "a");
    let ssl_port = free_port();
    let ssl_address: SocketAddr = ([127, 0, 0, 1], ssl_port).into();
    let broker = ssl_broker(
        &pki,
        ssl_address,
        &[
            "--default-partitions",
            "1",
            "--ssl-client-ca",
            path(&pki.ca),
            "--ssl-client-auth",
            "required",
            "--ssl-principal-mapping-rules",
            "RULE:^CN=([^,]*),OU=ops,.*$/$1/L,DEFAULT",
        ],
    );
    let ssl = ssl_address.to_string();
    let tls = ssl_args(&pki, true);
    let tls: Vec<&str> = tls.iter().map(String::as_str).collect();

    // Metadata answers each client with the address of the listener it came in on.
    let mut args = vec!["-b", &ssl, "-L"];
    args.extend(&tls);
    let listing = ok(&kcat(&args, None));
    assert!(
        listing.contains(&format!("at {ssl}")),
        "over TLS: {listing}"
    );
    let plain = broker.bootstrap();
    let listing = ok(&kcat(&["-b", &plain, "-L"], None));
    assert!(
        listing.contains(&format!("at {plain}")),
        "plaintext: {listing}"
    );

    // librdkafka produces and consumes over mutual TLS.
    let records: String = (0..20).map(|i| format!("key-{i}:value-{i}\n")).collect();
    let mut args = vec![
        "-b",
        &ssl,
        "-P",
        "-t",
        "kcat-tls",
        "-K",
        ":",
        "-X",
        "topic.request.required.acks=-1",
    ];
    args.extend(&tls);
    ok(&kcat(&args, Some(&records)));
    let mut args = vec![
        "-b",
        &ssl,
        "-C",
        "-t",
        "kcat-tls",
        "-o",
        "beginning",
        "-e",
        "-f",
        "%k=%s\n",
    ];
    args.extend(&tls);
    let consumed = ok(&kcat(&args, None));
    let expected: String = (0..20).map(|i| format!("key-{i}=value-{i}\n")).collect();
    assert_eq!(consumed, expected);
    // The mapping rule turned the certificate's subject into the principal.
    wait_for_log(&broker, "principal=User:alice", 1);

    // kafka-python over mutual TLS, and the protocol versions.
    let (success, output) = python(
        KAFKA_PYTHON_SSL,
        &[
            &ssl,
            path(&pki.ca),
            path(&pki.client_cert),
            path(&pki.client_key),
        ],
    );
    assert!(
        success,
        "kafka-python over TLS failed:\n{output}\n{}",
        broker.log()
    );
    assert!(output.contains("PY_CONSUMED 50"), "{output}");
    assert!(output.contains("PY_BIG 12000000"), "{output}");
    assert!(output.contains("TLS13 TLSv1.3"), "{output}");
    assert!(output.contains("TLS12 TLSv1.2"), "{output}");
    assert!(output.contains("TLS11 refused"), "{output}");

    // Without a client certificate the handshake fails (client auth is required): kcat gets
    // no metadata, the broker logs it and goes on serving everyone else.
    let handshakes_failed = broker.log().matches("TLS handshake failed").count();
    let no_cert = ssl_args(&pki, false);
    let mut args: Vec<&str> = vec!["-b", &ssl, "-L", "-m", "3"];
    args.extend(no_cert.iter().map(String::as_str));
    let refused = kcat(&args, None);
    assert!(
        !refused.status.success(),
        "{}",
        String::from_utf8_lossy(&refused.stdout)
    );
    wait_for_log(&broker, "TLS handshake failed", handshakes_failed + 1);

    // Plaintext Kafka bytes on the TLS port: the connection is closed, nothing else happens.
    let mut raw = TcpStream::connect(ssl_address).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let api_versions_v0 = [0u8, 0, 0, 10, 0, 18, 0, 0, 0, 0, 0, 1, 0, 0];
    raw.write_all(&api_versions_v0).unwrap();
    let mut answer = Vec::new();
    let _ = raw.read_to_end(&mut answer);
    assert!(
        !answer.windows(2).any(|w| w == [0, 18]) || answer.len() < 8,
        "a plaintext request got a Kafka answer on the TLS port: {answer:?}"
    );
    wait_for_log(&broker, "TLS handshake failed", handshakes_failed + 2);
    let mut args = vec!["-b", &ssl, "-L"];
    args.extend(&tls);
    assert!(ok(&kcat(&args, None)).contains(&format!("at {ssl}")));
    assert!(ok(&kcat(&["-b", &plain, "-L"], None)).contains("kcat-tls"));
}

const RELOAD: &str = r#"
import os, shutil, signal, ssl, sys, time
from kafka import KafkaProducer
bootstrap, pid, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
old_ca, new_ca, served_cert, served_key, new_cert, new_key = sys.argv[4:10]

def producer(ca, **extra):
    return KafkaProducer(bootstrap_servers=bootstrap, acks="all", security_protocol="SSL",
                         ssl_cafile=ca, request_timeout_ms=5000, max_block_ms=3000,
                         reconnect_backoff_max_ms=500, **extra)

def send_once(ca, value, **extra):
    p = producer(ca, **extra)
    try:
        return p.send("rotate", value).get(timeout=10).offset
    finally:
        p.close(timeout=1)

def reloads(word):
    with open(log, errors="replace") as f:
        return f.read().count(word)

def sighup_and_wait(word):
    before = reloads(word)
    os.kill(pid, signal.SIGHUP)
    deadline = time.time() + 10
    while reloads(word) == before:
        assert time.time() < deadline, "no %r in the broker's log" % word
        time.sleep(0.05)

opened_before = producer(old_ca)
opened_before.send("rotate", b"before").get(timeout=10)

# Rotate: the served files now hold a certificate from another CA.
shutil.copy(new_cert, served_cert)
shutil.copy(new_key, served_key)
sighup_and_wait("TLS certificate, key and client CA reloaded")

# The connection opened before the reload is still served.
print("OLD_CONNECTION", opened_before.send("rotate", b"after").get(timeout=10).offset)
opened_before.close(timeout=1)
# New connections get the new certificate: trusted with the new CA, not with the old (the
# API version is given so that the refused client does not probe for it at length).
print("NEW_CA", send_once(new_ca, b"new"))
try:
    send_once(old_ca, b"old", api_version=(2, 5))
    print("OLD_CA accepted")
except Exception as e:  # the handshake fails its certificate check: no broker reachable
    print("OLD_CA refused", type(e).__name__)

# Files that do not load: the reload is refused and the previous configuration stays.
with open(served_cert, "w") as f:
    f.write("not a certificate")
sighup_and_wait("TLS files not reloaded")
print("AFTER_BAD_RELOAD", send_once(new_ca, b"still"))
"#;

#[test]
fn sighup_reloads_the_certificate_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let old = Pki::generate(dir.path(), "old");
    let new = Pki::generate(dir.path(), "new");
    let served_cert = dir.path().join("served.pem");
    let served_key = dir.path().join("served.key");
    std::fs::copy(&old.server_cert, &served_cert).unwrap();
    std::fs::copy(&old.server_key, &served_key).unwrap();
    let ssl_address: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let broker = Broker::start(&[
        "--default-partitions",
        "1",
        "--listeners",
        &format!("SSL://{ssl_address}"),
        "--ssl-certificate",
        path(&served_cert),
        "--ssl-key",
        path(&served_key),
    ]);
    let log = broker.data_dir().join("sluice.log");
    let (success, output) = python(
        RELOAD,
        &[
            &ssl_address.to_string(),
            &broker.pid().to_string(),
            path(&log),
            path(&old.ca),
            path(&new.ca),
            path(&served_cert),
            path(&served_key),
            path(&new.server_cert),
            path(&new.server_key),
        ],
    );
    assert!(success, "reload script failed:\n{output}\n{}", broker.log());
    assert!(output.contains("OLD_CONNECTION 1"), "{output}");
    assert!(output.contains("NEW_CA 2"), "{output}");
    assert!(output.contains("OLD_CA refused"), "{output}");
    assert!(output.contains("AFTER_BAD_RELOAD 3"), "{output}");
}

#[test]
fn an_ssl_listener_without_usable_files_stops_start_up_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "junk").unwrap();
    let ssl = format!("SSL://127.0.0.1:{}", free_port());
    for (args, field) in [
        (vec!["--listeners", ssl.as_str()], "ssl_certificate"),
        (
            vec![
                "--listeners",
                ssl.as_str(),
                "--ssl-certificate",
                path(&junk),
                "--ssl-key",
                path(&junk),
            ],
            "ssl_certificate",
        ),
        (
            vec!["--listeners", "SASL_SSL://127.0.0.1:1"],
            "ssl_certificate",
        ),
    ] {
        let out = Command::new(sluice_tests::sluice_binary())
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(field), "{args:?}: {stderr}");
    }
}

#[test]
fn requested_client_auth_takes_clients_without_a_certificate_as_anonymous() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path(), "a");
    let stranger = Pki::generate(dir.path(), "stranger");
    let ssl_address: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let broker = ssl_broker(
        &pki,
        ssl_address,
        &[
            "--ssl-client-ca",
            path(&pki.ca),
            "--ssl-client-auth",
            "requested",
        ],
    );
    // A client that connects and never starts its handshake: closed after 10 s.
    let idle = std::thread::spawn(move || {
        let mut s = TcpStream::connect(ssl_address).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let connected = Instant::now();
        let read = s.read(&mut [0u8; 16]);
        (read.map_err(|e| e.kind()), connected.elapsed())
    });
    let ssl = ssl_address.to_string();
    let listed = |tls: Vec<String>| {
        let mut args = vec!["-b", ssl.as_str(), "-L", "-m", "5"];
        args.extend(tls.iter().map(String::as_str));
        kcat(&args, None)
    };
    // No certificate: served, as User:ANONYMOUS.
    ok(&listed(ssl_args(&pki, false)));
    wait_for_log(&broker, "principal=User:ANONYMOUS", 1);
    // A certificate from the client CA: served, its subject as it is (DEFAULT rule).
    ok(&listed(ssl_args(&pki, true)));
    wait_for_log(&broker, "principal=User:CN=Alice,OU=ops,O=Example", 1);
    // A certificate the client CA did not sign: refused, even though one is only requested.
    let failed = broker.log().matches("TLS handshake failed").count();
    let mut foreign = ssl_args(&pki, false);
    foreign.extend([
        "-X".into(),
        format!("ssl.certificate.location={}", path(&stranger.client_cert)),
        "-X".into(),
        format!("ssl.key.location={}", path(&stranger.client_key)),
    ]);
    assert!(!listed(foreign).status.success());
    wait_for_log(&broker, "TLS handshake failed", failed + 1);
    // An expired certificate from the client CA: refused, and the log says why.
    let mut expired = ssl_args(&pki, false);
    expired.extend([
        "-X".into(),
        format!("ssl.certificate.location={}", path(&pki.expired_cert)),
        "-X".into(),
        format!("ssl.key.location={}", path(&pki.expired_key)),
    ]);
    assert!(!listed(expired).status.success());
    wait_for_log(&broker, "TLS handshake failed", failed + 2);
    assert!(
        broker.log().contains("certificate expired"),
        "{}",
        broker.log()
    );
    // Garbage where the ClientHello belongs (a TLS record header, then nonsense): closed.
    let mut raw = TcpStream::connect(ssl_address).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut garbage = vec![0x16, 0x03, 0x01, 0x01, 0x00];
    garbage.extend((0..256u32).map(|i| (i * 73 % 251) as u8));
    raw.write_all(&garbage).unwrap();
    let mut answer = Vec::new();
    let _ = raw.read_to_end(&mut answer);
    assert!(answer.len() < 16, "a TLS alert at most: {answer:?}");
    wait_for_log(&broker, "TLS handshake failed", failed + 3);

    let (read, after) = idle.join().unwrap();
    assert_eq!(read, Ok(0), "the idle connection is closed, unanswered");
    assert!(
        (Duration::from_secs(9)..Duration::from_secs(20)).contains(&after),
        "closed after {after:?}"
    );
    assert!(broker.log().contains("handshake not finished in time"));
    // Everyone else is still served.
    ok(&listed(ssl_args(&pki, true)));
}
