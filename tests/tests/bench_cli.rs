//! `sluice bench` driven as a user would: real workloads through librdkafka against a running
//! broker, results read back from the JSON it writes; `compare` over two brokers; `plot`;
//! the max-rate search; Redis Streams against a real redis-server; bad workloads refused;
//! `fetch-sessions` (incremental beside full fetches); the harness's own Kafka client
//! (`kafka-wire://`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use sluice_tests::{sluice_binary, Broker};

/// Tests that judge latency or pacing (`assert_sane`) share the machine with each other
/// (`paced`), and those that load it as hard as they can (the max-rate search, failover,
/// fetch sessions) run alone (`alone`): beside a max-rate search, a paced run on this 2-core
/// machine stalled 150 ms and fell short of its schedule.
static MACHINE: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn paced() -> std::sync::RwLockReadGuard<'static, ()> {
    MACHINE
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn alone() -> std::sync::RwLockWriteGuard<'static, ()> {
    MACHINE
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn bench(args: &[&str]) -> Output {
    let out = Command::new(sluice_binary())
        .arg("bench")
        .args(args)
        .output()
        .expect("run sluice bench");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn results_in(dir: &Path) -> Vec<(PathBuf, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let v = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            (p, v)
        })
        .collect()
}

fn u(v: &Value, path: &[&str]) -> u64 {
    path.iter()
        .fold(v, |v, k| &v[*k])
        .as_u64()
        .unwrap_or_else(|| panic!("{path:?} missing in {v}"))
}

/// Checks one run's result: it kept its schedule (within 5 %), and everything
/// [`assert_accounted`] checks.
fn assert_sane(result: &Value, expected_records: u64) {
    let published = u(result, &["publish", "messages"]);
    assert!(
        published >= expected_records * 95 / 100 && published <= expected_records * 105 / 100,
        "published {published} of {expected_records} scheduled"
    );
    assert_eq!(u(result, &["unsent_in_window"]), 0, "the broker kept up");
    let sampled = u(result, &["publish_latency_us", "count"]);
    assert!(
        sampled >= expected_records * 95 / 100,
        "{sampled} latency samples"
    );
    assert_accounted(result);
}

/// Checks one run's result whatever the machine did meanwhile: no publish failed, every
/// record published in the window was consumed, latencies are ordered and non-zero, the
/// per-second series covers the run.
fn assert_accounted(result: &Value) {
    let published = u(result, &["publish", "messages"]);
    assert!(published > 0, "nothing published");
    // Throughput counts arrivals inside the window: the two ends differ by the consumers' lag
    // at the window's edges, which a loaded machine stretches. That nothing acknowledged went
    // missing is checked below, record by record (latency samples).
    let consumed = u(result, &["consume", "messages"]);
    assert!(
        consumed.abs_diff(published) <= published / 10,
        "consumed {consumed} of {published}"
    );
    assert_eq!(u(result, &["publish_errors"]), 0);
    let sampled = u(result, &["publish_latency_us", "count"]);
    assert_eq!(
        u(result, &["end_to_end_latency_us", "count"]),
        sampled,
        "every acknowledged record of the window was consumed"
    );
    for kind in ["publish_latency_us", "end_to_end_latency_us"] {
        let l = &result[kind];
        let (p50, p99, p999, max) = (
            u(l, &["p50"]),
            u(l, &["p99"]),
            u(l, &["p99_9"]),
            u(l, &["max"]),
        );
        assert!(
            p50 > 0 && p50 <= p99 && p99 <= p999 && p999 <= max,
            "{kind}: {l}"
        );
        assert!(l["curve"].as_array().unwrap().len() > 10);
    }
    let series = result["series"].as_array().unwrap();
    let acked: u64 = series.iter().map(|s| u(s, &["published"])).sum();
    assert!(acked >= published, "series holds warm-up and window");
}

#[test]
fn run_writes_json_and_summary_with_every_record_accounted_for() {
    let _machine = paced();
    let broker = Broker::start(&["--cores", "2"]);
    let out_dir = tempfile::tempdir().unwrap();
    let workload = workspace().join("bench-harness/workloads/smoke.yaml");
    let target = format!("sluice={}", broker.bootstrap());
    let out = bench(&[
        workload.to_str().unwrap(),
        "--target",
        &target,
        "--out",
        out_dir.path().to_str().unwrap(),
        // Client properties reach every client; a password is masked in the results.
        "-X",
        "client.id=bench-smoke",
        "-X",
        "sasl.password=hunter2",
    ]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.contains("smoke on sluice"), "{text}");
    assert!(text.contains("end-to-end"), "{text}");
    // Progress was shown while it ran.
    assert!(String::from_utf8_lossy(&out.stderr).contains("msg/s"));
    let results = results_in(out_dir.path());
    assert_eq!(results.len(), 1);
    let (json, result) = &results[0];
    // smoke.yaml: 2000 records/s for 3 s measured.
    assert_sane(result, 6000);
    assert_eq!(result["target_rate"].as_f64(), Some(2000.0));
    assert!(json.with_extension("txt").exists());
    let client = &result["workload"]["client"];
    assert_eq!(client["client.id"], "bench-smoke", "{client}");
    assert_eq!(client["sasl.password"], "****", "{client}");
    assert!(!std::fs::read_to_string(json).unwrap().contains("hunter2"));

    // The charts from that result.
    let plots = out_dir.path().join("plots");
    let out = bench(&[
        "plot",
        json.to_str().unwrap(),
        "--out",
        plots.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    for chart in [
        "publish-latency.svg",
        "end-to-end-latency.svg",
        "throughput.svg",
    ] {
        let svg = std::fs::read_to_string(plots.join(chart)).unwrap();
        assert!(svg.contains("<svg") && svg.contains("<polyline"), "{chart}");
        assert!(svg.contains("sluice"), "{chart} has the legend");
    }
    broker.stop();
}

#[test]
fn transactional_producers_commit_every_n_records_and_read_committed_consumers_get_them_all() {
    let _machine = paced();
    let broker = Broker::start(&["--cores", "2"]);
    let out_dir = tempfile::tempdir().unwrap();
    let workload = out_dir.path().join("txn.yaml");
    std::fs::write(
        &workload,
        "name: txn-smoke\ntopics: 1\npartitions_per_topic: 3\nmessage_size: 256\n\
         producers_per_topic: 2\nsubscriptions_per_topic: 1\nconsumers_per_subscription: 1\n\
         producer_rate: 1000\nwarmup_s: 1\nduration_s: 3\n\
         producer:\n  acks: all\n  idempotence: true\n  transaction_records: 50\n\
         consumer:\n  extra:\n    isolation.level: read_committed\n",
    )
    .unwrap();
    let results = out_dir.path().join("results");
    let out = bench(&[
        workload.to_str().unwrap(),
        "--target",
        &format!("sluice={}", broker.bootstrap()),
        "--out",
        results.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let results = results_in(&results);
    assert_eq!(results.len(), 1);
    // 1000 records/s for 3 s, every one consumed read_committed: every transaction committed.
    assert_sane(&results[0].1, 3000);
    // Both producers ran transactions: their ids end committed.
    let listed = Command::new(sluice_binary())
        .args([
            "txn",
            "list",
            "--state",
            "CompleteCommit",
            "--output",
            "json",
        ])
        .args(["--bootstrap", &broker.bootstrap()])
        .output()
        .unwrap();
    assert!(listed.status.success());
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let bench_ids = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| {
            t["transactional_id"]
                .as_str()
                .is_some_and(|id| id.starts_with("sluice-bench-"))
        })
        .count();
    assert_eq!(bench_ids, 2, "{listed}");
    broker.stop();
}

#[test]
fn max_rate_search_probes_then_settles_on_a_sustained_rate() {
    let _machine = alone();
    let broker = Broker::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let workload = dir.path().join("max.yaml");
    std::fs::write(
        &workload,
        "name: max-smoke\npartitions_per_topic: 2\nmessage_size: 512\nproducer_rate: max\n\
         duration_s: 2\nwarmup_s: 1\nproducer: {acks: '1', linger_ms: 5}\n\
         max_rate: {trial_s: 1, max_trials: 3, pass_fraction: 0.5, pass_p99_ms: 5000}\n",
    )
    .unwrap();
    let out = bench(&[
        workload.to_str().unwrap(),
        "--target",
        &broker.bootstrap(),
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let (_, result) = results_in(dir.path()).pop().unwrap();
    let trials = result["max_rate_trials"].as_array().unwrap();
    assert!(
        trials.len() >= 2,
        "probe and at least one paced trial: {trials:?}"
    );
    assert!(
        trials[0]["rate"].is_null(),
        "the first trial is the unpaced probe"
    );
    let probe = trials[0]["published_per_s"].as_f64().unwrap();
    assert!(probe > 1000.0, "probe measured {probe}/s");
    // The workload has a consumer: each trial's end-to-end P99 is recorded (trials can fail
    // on it alone).
    assert!(
        trials
            .iter()
            .all(|t| t["end_to_end_p99_us"].as_u64().is_some())
            && trials
                .iter()
                .any(|t| t["end_to_end_p99_us"].as_u64() > Some(0)),
        "the trials record their end-to-end p99: {trials:?}"
    );
    let rate = result["target_rate"].as_f64().unwrap();
    assert!(
        rate > 0.0 && rate < probe,
        "settled on {rate} under the probe's {probe}"
    );
    assert!(stdout(&out).contains("max-rate trial"));
    broker.stop();
}

#[test]
fn compare_interleaves_targets_and_prints_medians_and_ratios() {
    let _machine = paced();
    let a = Broker::start(&[]);
    let b = Broker::start(&[]);
    let out_dir = tempfile::tempdir().unwrap();
    let workload = workspace().join("bench-harness/workloads/smoke.yaml");
    let (ta, tb) = (
        format!("a={}", a.bootstrap()),
        format!("b={}", b.bootstrap()),
    );
    let out = bench(&[
        "compare",
        workload.to_str().unwrap(),
        "--target",
        &ta,
        "--target",
        &tb,
        "--runs",
        "2",
        "--duration",
        "2",
        "--warmup",
        "0",
        "--out",
        out_dir.path().to_str().unwrap(),
        "--quiet",
    ]);
    assert!(out.status.success());
    let table = stdout(&out);
    assert!(table.contains("medians of 2 interleaved runs"), "{table}");
    let publish_line = table
        .lines()
        .find(|l| l.starts_with("publish msg/s"))
        .unwrap();
    assert!(publish_line.contains("1.00x"), "{publish_line}");
    // Rounds interleave: a1 b1 a2 b2, seen in the order the results were written.
    let mut runs: Vec<(u64, String)> = results_in(out_dir.path())
        .into_iter()
        .map(|(_, v)| {
            (
                u(&v, &["started_at_unix_s"]),
                v["target"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(runs.len(), 4);
    runs.sort();
    let order: Vec<&str> = runs.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(order, ["a", "b", "a", "b"]);
    // Keeping the schedule is for the single-run tests to check: a compare runs four rounds
    // back to back, and a stall of this shared machine in any of them (local CI runs failed
    // here twice, once with a round at 389 of 2,000 records/s) says nothing about the
    // harness.
    for (_, result) in results_in(out_dir.path()) {
        assert_accounted(&result);
    }
    assert!(out_dir.path().join("smoke-compare.txt").exists());
    a.stop();
    b.stop();
}

/// redis-server from the system (CI installs it), on a free port, append-only with fsync always.
fn start_redis(dir: &Path) -> (Child, u16) {
    let port = sluice_tests::ports::free_port();
    let mut child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (apt-get install redis-server)");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return (child, port);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("redis-server did not start");
}

#[test]
fn redis_streams_target_runs_the_same_workload() {
    let _machine = paced();
    let dir = tempfile::tempdir().unwrap();
    let (mut redis, port) = start_redis(dir.path());
    let workload = workspace().join("bench-harness/workloads/smoke.yaml");
    let target = format!("redis=redis://127.0.0.1:{port}");
    let out = bench(&[
        workload.to_str().unwrap(),
        "--target",
        &target,
        "--out",
        dir.path().to_str().unwrap(),
        "--quiet",
    ]);
    redis.kill().unwrap();
    redis.wait().unwrap();
    assert!(out.status.success());
    let (_, result) = results_in(dir.path()).pop().unwrap();
    assert_eq!(result["protocol"], "redis-streams");
    assert_sane(&result, 6000);
}

#[test]
fn bad_workloads_and_unreachable_targets_fail_with_the_reason() {
    let _machine = paced();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "name: x\nmessage_size: 100\nproducer_rate: 10\nduration_s: 1\nconsumers: 3\n",
    )
    .unwrap();
    let out = bench(&[bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `consumers`"));

    let out = bench(&["compare", bad.to_str().unwrap(), "--target", "a=x:1"]);
    assert_eq!(out.status.code(), Some(1));

    // A transaction of no records is refused before any client starts.
    std::fs::write(
        &bad,
        "name: x\nmessage_size: 100\nproducer_rate: 10\nduration_s: 1\n\
         producer:\n  transaction_records: 0\n",
    )
    .unwrap();
    let out = bench(&[bad.to_str().unwrap(), "--target", "127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("producer.transaction_records must be at least 1"),
        "{stderr}"
    );

    // Options are checked before anything runs, each error naming what was wrong: usage
    // errors (clap's) exit 2, a value the harness refuses or a failed run exits 1.
    let workload = workspace().join("bench-harness/workloads/smoke.yaml");
    let w = workload.to_str().unwrap();
    for (args, code, expected) in [
        (
            vec![w, "--rate", "fast"],
            1,
            "--rate: `fast` is not a positive number, max or unpaced",
        ),
        (
            vec![w, "-X", "security.protocol"],
            1,
            "-X security.protocol: expected KEY=VALUE",
        ),
        (
            vec![
                "compare", w, "--target", "a=x:1", "--target", "b=x:2", "--runs", "0",
            ],
            2,
            "--runs",
        ),
        (vec![w, "--duration"], 2, "--duration"),
        (vec![w, "--bogus", "1"], 2, "--bogus"),
        (
            vec!["compare", w, "--target", "a=127.0.0.1:1"],
            1,
            "compare needs at least two --target",
        ),
        (vec!["plot", w], 1, "is not a bench result"),
    ] {
        let out = bench(&args);
        assert_eq!(out.status.code(), Some(code), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }

    // Nothing listens: the admin request times out and the run fails instead of reporting zeros.
    let out = bench(&[
        workload.to_str().unwrap(),
        "--target",
        "127.0.0.1:1",
        "--quiet",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CreateTopics"));
}

#[test]
fn fetch_sessions_reports_incremental_beside_full_fetches() {
    let _machine = alone();
    let broker = Broker::start(&["--cores", "2"]);
    let pid = broker.pid().to_string();
    let out = bench(&[
        "fetch-sessions",
        "--target",
        &broker.bootstrap(),
        "--partitions",
        "50",
        "--active",
        "5",
        "--fetches",
        "20",
        "--blocks",
        "2",
        "--broker-pid",
        &pid,
    ]);
    assert!(out.status.success(), "{}", stdout(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).expect("a JSON report");
    let modes = report["modes"].as_array().unwrap();
    let (full, incremental) = (&modes[0], &modes[1]);
    assert_eq!(
        (full["mode"].as_str(), incremental["mode"].as_str()),
        (Some("full"), Some("incremental"))
    );
    for mode in [full, incremental] {
        assert_eq!(u(mode, &["fetches"]), 40);
        assert_eq!(
            u(mode, &["records_read"]),
            40 * 5,
            "every record read back: {mode}"
        );
        assert!(
            mode["broker_cpu_us_per_step"].as_f64().unwrap() > 0.0,
            "{mode}"
        );
    }
    assert_eq!(full["partitions_per_response"].as_f64(), Some(50.0));
    assert_eq!(
        incremental["partitions_per_response"].as_f64(),
        Some(5.0),
        "only the partitions written to"
    );
    let bytes = |m: &Value, k: &str| m[k].as_f64().unwrap();
    assert!(
        bytes(incremental, "request_bytes_per_fetch") * 5.0
            < bytes(full, "request_bytes_per_fetch"),
        "{full} {incremental}"
    );
    assert!(
        bytes(incremental, "response_bytes_per_fetch") < bytes(full, "response_bytes_per_fetch")
    );

    // The tool deletes its topic at the end (the broker removes the files in the background);
    // a bad option is refused by name.
    let left = || -> Vec<String> {
        std::fs::read_dir(broker.data_dir().join("topics"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("fetch-sessions-"))
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !left().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(left().is_empty(), "{:?}", left());
    let out = bench(&[
        "fetch-sessions",
        "--active",
        "0",
        "--target",
        &broker.bootstrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--active"));
}

#[test]
fn the_kafka_wire_client_runs_the_same_workload() {
    let _machine = paced();
    let broker = Broker::start(&["--cores", "2"]);
    let out_dir = tempfile::tempdir().unwrap();
    let workload = workspace().join("bench-harness/workloads/smoke.yaml");
    let target = format!("wire=kafka-wire://{}", broker.bootstrap());
    let out = bench(&[
        workload.to_str().unwrap(),
        "--target",
        &target,
        "--out",
        out_dir.path().to_str().unwrap(),
        "--quiet",
    ]);
    assert!(out.status.success(), "{}", stdout(&out));
    let results = results_in(out_dir.path());
    let (_, result) = &results[0];
    assert_eq!(result["protocol"].as_str(), Some("kafka-wire"));
    // Every record acknowledged and consumed (lz4 batches, keyed), latencies sane.
    assert_sane(result, 6000);
    assert_eq!(u(result, &["publish_errors"]), 0);

    // What it does not do is refused by name.
    let idempotent = out_dir.path().join("idempotent.yaml");
    std::fs::write(
        &idempotent,
        std::fs::read_to_string(&workload).unwrap().replace(
            "  compression: lz4",
            "  compression: lz4\n  idempotence: true",
        ),
    )
    .unwrap();
    let out = bench(&[idempotent.to_str().unwrap(), "--target", &target, "--quiet"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("producer.idempotence"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nor transactions: those go through librdkafka.
    let transactional = out_dir.path().join("transactional.yaml");
    std::fs::write(
        &transactional,
        std::fs::read_to_string(&workload).unwrap().replace(
            "  compression: lz4",
            "  compression: lz4\n  transaction_records: 10",
        ),
    )
    .unwrap();
    let out = bench(&[
        transactional.to_str().unwrap(),
        "--target",
        &target,
        "--quiet",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("transaction_records needs the Kafka protocol through librdkafka"),
        "{stderr}"
    );
}

/// `sluice bench failover`: three real node processes, the leader SIGKILLed twice, a report
/// with one time per kill, every record delivered, the nodes stopped and the data removed.
#[test]
fn failover_kills_the_leader_and_reports_each_round() {
    let _machine = alone();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("failover");
    let out = bench(&["failover", "--kills", "2", "--dir", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stdout(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).expect("a JSON report");
    let rounds = report["failover_ms"].as_array().unwrap();
    assert_eq!(rounds.len(), 2, "{report}");
    assert!(
        rounds
            .iter()
            .all(|ms| ms.as_f64().is_some_and(|ms| ms > 0.0 && ms < 60_000.0)),
        "{report}"
    );
    assert_eq!(u(&report, &["delivery_failures"]), 0, "{report}");
    assert!(u(&report, &["acknowledged"]) > 0, "{report}");
    assert!(!dir.exists(), "the nodes' data is removed");

    // The directory must be new (a leftover cluster's data is never reused), and options are
    // checked by name.
    std::fs::create_dir_all(&dir).unwrap();
    let out = bench(&["failover", "--dir", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exists"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = bench(&["failover", "--kils", "3"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--kils"));
}
