//! `sluice serve` start-up and shutdown as an operator sees them: configuration from flags,
//! environment and a TOML file with invalid values refused by field name; the data directory
//! created and locked; SIGTERM and SIGINT stop it cleanly.

use std::process::Command;
use std::time::Duration;

use sluice_tests::{sluice_binary, Broker};

/// Runs `sluice serve` expecting it to refuse to start; returns (exit code, stderr).
fn refused(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(sluice_binary())
        .arg("serve")
        .arg("--data-dir")
        .arg(data.path())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn invalid_values_stop_start_up_naming_the_field() {
    let (code, err) = refused(&["--cores", "0"], &[]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("invalid config: cores (from flag --cores)"),
        "{err}"
    );

    let (code, err) = refused(&[], &[("SLUICE_LISTEN", "not-an-address")]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("listen (from environment SLUICE_LISTEN)"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.toml");
    std::fs::write(&file, "frame_bytes_max = 12\n").unwrap();
    let (code, err) = refused(&["--config", &file.display().to_string()], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("frame_bytes_max (from config file"), "{err}");

    std::fs::write(&file, "listen = 9092\n").unwrap();
    let (code, err) = refused(&["--config", &file.display().to_string()], &[]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("listen"),
        "a wrongly typed TOML value is named: {err}"
    );

    let (code, err) = refused(&["--overprovisioned", "sometimes"], &[]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("invalid config: overprovisioned (from flag --overprovisioned)"),
        "{err}"
    );

    let (code, err) = refused(&["--no-such-flag", "1"], &[]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("unexpected argument '--no-such-flag'"),
        "{err}"
    );
}

/// A fault-point control file that does not parse (an unknown point, a line without actions)
/// stops start-up naming the variable, the file and what is wrong, before anything is served.
#[test]
fn a_bad_fault_point_control_file_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("fault-points");
    for (text, named) in [
        ("storage::fsync=return(eio)\n", "storage::fsync"),
        ("storage::fdatasync\n", "is not point=actions"),
    ] {
        std::fs::write(&control, text).unwrap();
        let (code, stderr) = refused(
            &["--listen", "127.0.0.1:0"],
            &[("SLUICE_FAULT_POINTS", control.to_str().unwrap())],
        );
        assert_eq!(code, Some(2), "{stderr}");
        assert!(
            stderr.contains("SLUICE_FAULT_POINTS") && stderr.contains(named),
            "{stderr}"
        );
        assert!(!stderr.contains("listening"), "{stderr}");
    }
}

#[test]
fn sigterm_and_sigint_stop_the_broker_cleanly() {
    for signal in ["TERM", "INT"] {
        let broker = Broker::start(&["--cores", "2"]);
        // A connection is open and idle; shutdown must not wait for it.
        let _idle = std::net::TcpStream::connect(broker.addr).unwrap();
        let (code, stderr) = broker.stop_with(signal, Duration::from_secs(10));
        assert_eq!(code, Some(0), "SIG{signal}: {stderr}");
        assert!(stderr.contains("shard stopped"), "SIG{signal}: {stderr}");
    }
}

#[test]
fn the_data_directory_is_created_and_locked() {
    let broker = Broker::start(&[]);
    assert!(broker.data_dir.path().join(".lock").exists());
    // A second broker on the same data directory refuses to start.
    let out = Command::new(sluice_binary())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(broker.data_dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another sluice process"));
}

/// Kafka refuses to start on an address in use; so must we. Shards bind with SO_REUSEPORT, which
/// would otherwise let a second broker join the port and split clients between two data sets.
#[test]
fn a_second_broker_on_the_same_address_refuses_to_start() {
    let broker = Broker::start(&["--cores", "2"]);
    let (code, err) = refused(&["--listen", &broker.bootstrap(), "--cores", "2"], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot listen on {}", broker.addr))
            && err.contains("address already in use"),
        "{err}"
    );
    // Not a Sluice: any other process listening there (a plain socket, as Kafka's is).
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other_addr = other.local_addr().unwrap().to_string();
    let (code, err) = refused(&["--listen", &other_addr], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("another process listens on {other_addr}")),
        "{err}"
    );
    // The first broker is untouched: it still answers, and every new connection reaches it.
    let out = Command::new(sluice_binary())
        .args([
            "topic",
            "create",
            "still-here",
            "--bootstrap",
            &broker.bootstrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!broker.log().contains("shard failed"));
}

#[test]
fn defaults_put_data_under_dot_data() {
    // README's first command: no flags. Run it from an empty directory (on another port, since
    // 9092 may be taken on a test machine) and check ./data appears there.
    let cwd = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(sluice_binary())
        .arg("serve")
        .current_dir(cwd.path())
        .env("SLUICE_LISTEN", format!("127.0.0.1:{port}"))
        .env("SLUICE_ADMIN_LISTEN", "127.0.0.1:0")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(cwd.path().join("data/.lock").exists());
    // With the relative ./data, everything that writes the data directory works: a topic is
    // created (catalog rewrite), and a producer id reserved.
    {
        use kafka_protocol::messages::create_topics_request::CreatableTopic;
        use kafka_protocol::messages::{
            ApiKey, CreateTopicsRequest, CreateTopicsResponse, InitProducerIdRequest,
            InitProducerIdResponse, TopicName,
        };
        use kafka_protocol::protocol::StrBytes;
        use sluice_tests::wire::{call, connect};
        let mut s = connect(([127, 0, 0, 1], port).into());
        let created: CreateTopicsResponse = call(
            &mut s,
            ApiKey::CreateTopics,
            7,
            &CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("relative")))
                .with_num_partitions(2)
                .with_replication_factor(1)]),
        );
        assert_eq!(
            created.topics[0].error_code, 0,
            "{:?}",
            created.topics[0].error_message
        );
        let id: InitProducerIdResponse = call(
            &mut s,
            ApiKey::InitProducerId,
            4,
            &InitProducerIdRequest::default().with_transactional_id(None),
        );
        assert_eq!(id.error_code, 0);
    }
    assert!(
        std::fs::read_to_string(cwd.path().join("data/metadata.json"))
            .unwrap()
            .contains("\"relative\"")
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// acks=1 data is buffered, not fdatasync'ed, when it is acknowledged; a clean shutdown
/// (SIGTERM) flushes and closes every partition, so it all survives the restart. A corrupt
/// catalog file stops the next start with its path named.
#[test]
fn clean_shutdown_flushes_buffered_data_and_a_corrupt_catalog_is_refused() {
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{
        ApiKey, MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse, TopicName,
    };
    use kafka_protocol::protocol::StrBytes;
    use sluice_tests::wire::{call, connect};

    let broker = Broker::start(&["--default-partitions", "1"]);
    let mut s = connect(broker.addr);
    let topic = TopicName(StrBytes::from_static_str("buffered"));
    // Metadata auto-creates the topic (the default); Produce never creates topics.
    let created: MetadataResponse = call(
        &mut s,
        ApiKey::Metadata,
        12,
        &MetadataRequest::default()
            .with_allow_auto_topic_creation(true)
            .with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(topic.clone()))
            ])),
    );
    assert_eq!(created.topics[0].error_code, 0);
    for n in 0..20i64 {
        let batch = sluice_storage::batch::build_batch(n, &[(n, b"k", b"acks=1, not yet synced")]);
        let request = ProduceRequest::default()
            .with_acks(1)
            .with_timeout_ms(1000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(topic.clone())
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(bytes::Bytes::from(batch)))])]);
        let r: ProduceResponse = call(&mut s, ApiKey::Produce, 9, &request);
        let p = &r.responses[0].partition_responses[0];
        assert_eq!((p.error_code, p.base_offset), (0, n));
    }
    drop(s);
    let data_dir = broker.stop();
    let topic_dir = sluice_tests::topic_dir(data_dir.path(), "buffered");
    let out = Command::new(sluice_binary())
        .args(["log", "verify"])
        .arg(topic_dir.join("0"))
        .output()
        .unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("offsets [0, 20)"), "{summary}");

    std::fs::write(data_dir.path().join("metadata.json"), b"{ torn").unwrap();
    let out = Command::new(sluice_binary())
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir.path())
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("metadata.json"), "{err}");
}

/// Every open partition holds descriptors: the broker lifts its soft open-file limit to the
/// hard one, so a low default soft limit does not fail partition opens with EMFILE.
#[test]
fn the_soft_open_file_limit_is_raised_to_the_hard_one() {
    // prlimit (util-linux) execs the broker with these limits: the child's pid is the broker's.
    let broker = Broker::start_wrapped(
        tempfile::tempdir().unwrap(),
        &["prlimit", "--nofile=256:4096", "--"],
        &["--cores", "1"],
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", broker.pid())).unwrap();
    broker.stop();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("an open-file limit line");
    let numbers: Vec<&str> = open_files.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, ["4096", "4096"], "{open_files}");
}

/// The CPUs each thread of process `pid` may run on (`Cpus_allowed_list`), the main thread
/// left out.
fn thread_cpus(pid: u32) -> Vec<String> {
    let mut cpus = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().file_name().into_string().unwrap();
        if task == pid.to_string() {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/task/{task}/status")) else {
            continue;
        };
        if let Some(line) = status.lines().find(|l| l.starts_with("Cpus_allowed_list:")) {
            cpus.push(line.split_whitespace().nth(1).unwrap_or("").to_string());
        }
    }
    cpus
}

/// A shard is pinned to one CPU by default; `--overprovisioned true` leaves it to the OS
/// scheduler (nodes of a local cluster would otherwise all sit on the first CPU).
#[test]
fn shards_are_pinned_unless_overprovisioned() {
    let all = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Cpus_allowed_list:"))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        .unwrap();
    if std::thread::available_parallelism().map_or(1, usize::from) < 2 {
        eprintln!("one CPU: pinned and unpinned look alike, nothing to tell apart");
        return;
    }
    let pinned = Broker::start(&["--cores", "1"]);
    let cpus = thread_cpus(pinned.pid());
    pinned.stop();
    assert!(
        cpus.iter().any(|c| !c.contains(['-', ','])),
        "some thread (the shard's) runs on one CPU: {cpus:?}"
    );
    let free = Broker::start(&["--cores", "1", "--overprovisioned", "true"]);
    let cpus = thread_cpus(free.pid());
    free.stop();
    assert!(
        !cpus.is_empty() && cpus.iter().all(|c| *c == all),
        "every thread may run on every CPU ({all}): {cpus:?}"
    );
}

/// A cluster node whose second shard cannot take its RPC port (port + shard id) stops at
/// start-up naming that shard, the address and why, not only that "another shard failed".
#[test]
fn a_cluster_nodes_busy_rpc_port_is_named_at_start_up() {
    let (base, _busy) = loop {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = probe.local_addr().unwrap().port();
        drop(probe);
        if let Ok(busy) = std::net::TcpListener::bind(("127.0.0.1", base + 1)) {
            break (base, busy);
        }
    };
    let kafka = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let kafka_addr = kafka.local_addr().unwrap().to_string();
    drop(kafka);
    let seeds = format!("0@127.0.0.1:{base}");
    let (code, err) = refused(
        &[
            "--cores",
            "2",
            "--node-id",
            "0",
            "--listen",
            &kafka_addr,
            "--seeds",
            &seeds,
        ],
        &[],
    );
    assert_eq!(code, Some(1), "{err}");
    let busy = format!("replication on shard 1 (127.0.0.1:{})", base + 1);
    assert!(err.contains(&busy) && err.contains("in use"), "{err}");
}
