//! ACLs with Kafka's semantics, through clients we did not write: kafka-python users on a
//! SASL listener produce, fetch, join groups and create topics where ACLs allow it and get
//! Kafka's authorization errors where they do not (deny winning over allow, prefixed patterns,
//! Metadata hiding what a user may not describe); `sluice acl` adds, lists and removes them;
//! they survive a restart; without an authorizer the ACL APIs answer SECURITY_DISABLED.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;

use bytes::Bytes;
use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::{
    ApiKey, CreateAclsRequest, CreateAclsResponse, MetadataRequest, MetadataResponse,
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;
use sluice_tests::ports::free_address;
use sluice_tests::{python, sluice_binary, wire, Broker};

/// Runs `sluice <args>` against the broker's PLAINTEXT listener: (success, stdout + stderr).
fn sluice(broker: &Broker, args: &[&str]) -> (bool, String) {
    let out = Command::new(sluice_binary())
        .args(args)
        .args(["--bootstrap", &broker.bootstrap()])
        .output()
        .expect("run sluice");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn sluice_ok(broker: &Broker, args: &[&str]) -> String {
    let (ok, output) = sluice(broker, args);
    assert!(ok, "sluice {args:?}: {output}");
    output
}

/// A broker with ACLs on: its PLAINTEXT listener's `User:ANONYMOUS` is the super user (the
/// operator's local tools), users come in on a SASL_PLAINTEXT listener at `sasl`.
fn acl_broker(data_dir: tempfile::TempDir, sasl: SocketAddr) -> Broker {
    let listeners = format!("SASL_PLAINTEXT://{sasl}");
    Broker::start_on(
        data_dir,
        &[
            "--listeners",
            &listeners,
            "--sasl-enabled-mechanisms",
            "PLAIN,SCRAM-SHA-256",
            "--authorizer",
            "acls",
            "--super-users",
            "User:ANONYMOUS",
        ],
    )
}

/// kafka-python as `user`: each step prints `<step> ok` or `<step> <error class>`.
const STEPS: &str = r#"
import sys, time
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
bootstrap, user, password = sys.argv[1:4]
auth = dict(bootstrap_servers=bootstrap, security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="SCRAM-SHA-256", sasl_plain_username=user, sasl_plain_password=password)

def step(name, action):
    try:
        action()
        print(name, "ok", flush=True)
    except Exception as e:
        print(name, type(e).__name__, flush=True)

def produce(topic):
    def run():
        p = KafkaProducer(acks="all", max_block_ms=4000, retries=0, **auth)
        try:
            p.send(topic, b"from-" + user.encode()).get(timeout=10)
        finally:
            p.close(timeout=2)
    return run

def consume(topic, group):
    def run():
        c = KafkaConsumer(topic, group_id=group, auto_offset_reset="earliest",
                          consumer_timeout_ms=6000, **auth)
        try:
            values = [m.value for m in c]
            if not values:
                raise RuntimeError("NoRecords")
            c.commit()
        finally:
            c.close()
    return run

def create(topic):
    def run():
        a = KafkaAdminClient(**auth)
        try:
            a.create_topics([NewTopic(topic, 1, 1)])
        finally:
            a.close()
    return run

def listed():
    a = KafkaAdminClient(**auth)
    try:
        print("topics", ",".join(sorted(a.list_topics())), flush=True)
    finally:
        a.close()

for name in sys.argv[4:]:
    kind, _, arg = name.partition(":")
    if kind == "produce":
        step(name, produce(arg))
    elif kind == "consume":
        topic, group = arg.split("/")
        step(name, consume(topic, group))
    elif kind == "create":
        step(name, create(arg))
    elif kind == "list":
        listed()
"#;

#[test]
fn acls_decide_what_each_user_may_do_with_kafka_python() {
    let sasl = free_address();
    let broker = acl_broker(tempfile::tempdir().unwrap(), sasl);
    for user in ["alice", "bob"] {
        sluice_ok(&broker, &["user", "create", user, "--password", "pw"]);
    }
    for topic in ["orders", "secret"] {
        sluice_ok(&broker, &["topic", "create", topic, "--partitions", "1"]);
    }
    let acl = |args: &[&str]| {
        let mut all = vec!["acl", "add"];
        all.extend(args);
        sluice_ok(&broker, &all);
    };
    acl(&[
        "--principal",
        "User:alice",
        "--operation",
        "write",
        "--operation",
        "read",
        "--topic",
        "orders",
    ]);
    acl(&[
        "--principal",
        "User:alice",
        "--operation",
        "read",
        "--group",
        "g1",
    ]);
    acl(&[
        "--principal",
        "User:alice",
        "--operation",
        "create",
        "--topic",
        "alice-",
        "--prefixed",
    ]);
    // Everyone may read orders, except bob: deny wins.
    acl(&[
        "--principal",
        "User:*",
        "--operation",
        "read",
        "--topic",
        "orders",
    ]);
    acl(&[
        "--principal",
        "User:*",
        "--operation",
        "read",
        "--group",
        "*",
    ]);
    acl(&[
        "--principal",
        "User:bob",
        "--operation",
        "read",
        "--topic",
        "orders",
        "--deny",
    ]);

    let listed = sluice_ok(&broker, &["acl", "list", "--topic", "orders"]);
    assert_eq!(listed.lines().count(), 4, "{listed}");
    assert!(
        listed.contains("Deny User:bob topic:orders literal READ from *"),
        "{listed}"
    );

    let sasl = sasl.to_string();
    let (_, alice) = python(
        STEPS,
        &[
            &sasl,
            "alice",
            "pw",
            "produce:orders",
            "consume:orders/g1",
            "produce:secret",
            "consume:orders/g2x",
            "create:alice-new",
            "create:other-new",
            "list",
        ],
    );
    let expect = |output: &str, line: &str| {
        assert!(
            output.lines().any(|l| l == line),
            "expected {line:?} in:\n{output}"
        );
    };
    expect(&alice, "produce:orders ok");
    expect(&alice, "consume:orders/g1 ok");
    expect(&alice, "produce:secret TopicAuthorizationFailedError");
    // g2x: the wildcard group ACL lets alice in (READ on every group).
    expect(&alice, "consume:orders/g2x ok");
    expect(&alice, "create:alice-new ok");
    expect(&alice, "create:other-new TopicAuthorizationFailedError");
    // Metadata shows what alice may describe: orders (READ and WRITE imply DESCRIBE); not the
    // topic she created (CREATE does not), nor secret or __consumer_offsets.
    expect(&alice, "topics orders");

    let (_, bob) = python(
        STEPS,
        &[
            &sasl,
            "bob",
            "pw",
            "consume:orders/g1",
            "produce:orders",
            "list",
        ],
    );
    expect(&bob, "consume:orders/g1 TopicAuthorizationFailedError");
    expect(&bob, "produce:orders TopicAuthorizationFailedError");
    // Denying READ does not deny DESCRIBE, which everyone's READ implies (Kafka's rule).
    expect(&bob, "topics orders");

    // Removing the deny lets bob read; the ACLs are where a restart finds them.
    let removed = sluice_ok(
        &broker,
        &[
            "acl",
            "remove",
            "--principal",
            "User:bob",
            "--topic",
            "orders",
        ],
    );
    assert!(removed.contains("1 ACL(s) removed"), "{removed}");
    let data_dir = broker.kill();
    let broker = acl_broker(data_dir, sasl.parse().unwrap());
    let (_, bob) = python(STEPS, &[&sasl, "bob", "pw", "consume:orders/g3"]);
    expect(&bob, "consume:orders/g3 ok");
    let listed = sluice_ok(&broker, &["acl", "list", "--output", "json"]);
    let acls: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(acls.as_array().map(Vec::len), Some(6), "{listed}");
}

/// Logs in with SASL PLAIN on `s`.
fn login(s: &mut TcpStream, user: &str) {
    let _: SaslHandshakeResponse = wire::call(
        s,
        ApiKey::SaslHandshake,
        1,
        &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN")),
    );
    let done: SaslAuthenticateResponse = wire::call(
        s,
        ApiKey::SaslAuthenticate,
        1,
        &SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(format!("\0{user}\0pw"))),
    );
    assert_eq!(done.error_code, 0, "{done:?}");
}

fn create_acl(principal: &str) -> CreateAclsRequest {
    CreateAclsRequest::default().with_creations(vec![AclCreation::default()
        .with_resource_type(2)
        .with_resource_name(StrBytes::from_static_str("t"))
        .with_resource_pattern_type(3)
        .with_principal(StrBytes::from(principal.to_string()))
        .with_host(StrBytes::from_static_str("*"))
        .with_operation(3)
        .with_permission_type(3)])
}

#[test]
fn who_may_change_acls_and_what_a_broker_without_an_authorizer_says() {
    // No authorizer: the ACL APIs answer SECURITY_DISABLED, everything else is open.
    let open = Broker::start(&[]);
    let (ok, output) = sluice(&open, &["acl", "list"]);
    assert!(!ok && output.contains("SecurityDisabled"), "{output}");
    let mut s = wire::connect(open.addr);
    let r: CreateAclsResponse = wire::call(&mut s, ApiKey::CreateAcls, 2, &create_acl("User:x"));
    assert_eq!(r.results[0].error_code, 54, "{r:?}");

    // With ACLs: a user who is no super user cannot change them, nor see topics.
    let sasl = free_address();
    let broker = acl_broker(tempfile::tempdir().unwrap(), sasl);
    sluice_ok(&broker, &["user", "create", "mallory", "--password", "pw"]);
    sluice_ok(&broker, &["topic", "create", "hidden", "--partitions", "1"]);
    let mut s = wire::connect(sasl);
    login(&mut s, "mallory");
    let r: CreateAclsResponse =
        wire::call(&mut s, ApiKey::CreateAcls, 2, &create_acl("User:mallory"));
    assert_eq!(
        r.results[0].error_code, 31,
        "CLUSTER_AUTHORIZATION_FAILED: {r:?}"
    );
    let all: MetadataResponse =
        wire::call(&mut s, ApiKey::Metadata, 12, &MetadataRequest::default());
    assert!(all.topics.is_empty(), "{:?}", all.topics);
    let named: MetadataResponse = wire::call(
        &mut s,
        ApiKey::Metadata,
        4,
        &MetadataRequest::default()
            .with_topics(Some(vec![
                kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                    .with_name(Some(kafka_protocol::messages::TopicName(
                        StrBytes::from_static_str("hidden"),
                    ))),
            ]))
            .with_allow_auto_topic_creation(true),
    );
    assert_eq!(
        named.topics[0].error_code, 29,
        "TOPIC_AUTHORIZATION_FAILED: {named:?}"
    );
    // Nor describe its producers (READ on the topic), nor unregister a broker (ALTER on the
    // cluster).
    let producers: kafka_protocol::messages::DescribeProducersResponse = wire::call(
        &mut s,
        ApiKey::DescribeProducers,
        0,
        &kafka_protocol::messages::DescribeProducersRequest::default().with_topics(vec![
            kafka_protocol::messages::describe_producers_request::TopicRequest::default()
                .with_name(kafka_protocol::messages::TopicName(
                    StrBytes::from_static_str("hidden"),
                ))
                .with_partition_indexes(vec![0]),
        ]),
    );
    let codes: Vec<i16> = producers
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
        .collect();
    assert_eq!(codes, [29], "TOPIC_AUTHORIZATION_FAILED: {producers:?}");
    let unregister: kafka_protocol::messages::UnregisterBrokerResponse = wire::call(
        &mut s,
        ApiKey::UnregisterBroker,
        0,
        &kafka_protocol::messages::UnregisterBrokerRequest::default()
            .with_broker_id(kafka_protocol::messages::BrokerId(3)),
    );
    assert_eq!(
        unregister.error_code, 31,
        "CLUSTER_AUTHORIZATION_FAILED: {unregister:?}"
    );
    let add_voter: kafka_protocol::messages::AddRaftVoterResponse = wire::call(
        &mut s,
        ApiKey::AddRaftVoter,
        0,
        &kafka_protocol::messages::AddRaftVoterRequest::default().with_voter_id(3),
    );
    assert_eq!(add_voter.error_code, 31, "{add_voter:?}");
    let remove_voter: kafka_protocol::messages::RemoveRaftVoterResponse = wire::call(
        &mut s,
        ApiKey::RemoveRaftVoter,
        0,
        &kafka_protocol::messages::RemoveRaftVoterRequest::default().with_voter_id(0),
    );
    assert_eq!(remove_voter.error_code, 31, "{remove_voter:?}");
    // Nor write transaction markers (CLUSTER_ACTION), nor describe a transactional id or see
    // it listed (DESCRIBE on it).
    let markers: kafka_protocol::messages::WriteTxnMarkersResponse = wire::call(
        &mut s,
        ApiKey::WriteTxnMarkers,
        1,
        &kafka_protocol::messages::WriteTxnMarkersRequest::default().with_markers(vec![
            kafka_protocol::messages::write_txn_markers_request::WritableTxnMarker::default()
                .with_producer_id(kafka_protocol::messages::ProducerId(1))
                .with_topics(vec![
                    kafka_protocol::messages::write_txn_markers_request::WritableTxnMarkerTopic::default()
                        .with_name(kafka_protocol::messages::TopicName(
                            StrBytes::from_static_str("hidden"),
                        ))
                        .with_partition_indexes(vec![0]),
                ]),
        ]),
    );
    assert_eq!(
        markers.markers[0].topics[0].partitions[0].error_code, 31,
        "CLUSTER_AUTHORIZATION_FAILED: {markers:?}"
    );
    let described: kafka_protocol::messages::DescribeTransactionsResponse = wire::call(
        &mut s,
        ApiKey::DescribeTransactions,
        0,
        &kafka_protocol::messages::DescribeTransactionsRequest::default().with_transactional_ids(
            vec![kafka_protocol::messages::TransactionalId(
                StrBytes::from_static_str("someone-elses"),
            )],
        ),
    );
    assert_eq!(
        described.transaction_states[0].error_code, 53,
        "TRANSACTIONAL_ID_AUTHORIZATION_FAILED: {described:?}"
    );
    // A bad binding: refused with INVALID_REQUEST, nothing stored.
    let mut admin = wire::connect(broker.addr);
    let bad: CreateAclsResponse =
        wire::call(&mut admin, ApiKey::CreateAcls, 2, &create_acl("mallory"));
    assert_eq!(bad.results[0].error_code, 42, "{bad:?}");
    assert_eq!(sluice_ok(&broker, &["acl", "list"]).trim(), "");
    let _ = s.flush();
}
