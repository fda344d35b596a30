//! The admin HTTP listener as an operator uses it, against `sluice serve` with two shards:
//! `/metrics` counts what real librdkafka clients did and passes `promtool check metrics`; a
//! real Prometheus server scrapes it and answers a query with the produced-records counter;
//! readiness answers 200 while serving and 503 while draining; `/v1/health`, `/v1/topics` and
//! `/v1/groups` show the node, its partitions and a group's lag; a taken or invalid admin
//! address stops start-up naming the field. The shipped alert rules (`deploy/prometheus/`)
//! pass `promtool check rules` and their `promtool test rules` unit tests, and they and the
//! Grafana dashboard (`deploy/grafana/sluice.json`) name only metrics the broker exposes and
//! evaluate in a real Prometheus.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use sluice_tests::Broker;

const TOPIC: &str = "watched";
const ALERTS: &str = "deploy/prometheus/alerts.yml";
const DASHBOARD: &str = "deploy/grafana/sluice.json";
const GROUP: &str = "watchers";
const RECORDS: usize = 300;
const CONSUMED: usize = 120;

/// `(status, body)` of a GET to the admin listener.
fn get(admin: SocketAddr, path: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut response = agent
        .get(format!("http://{admin}{path}"))
        .call()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().expect("a text body");
    (status, body)
}

fn get_json(admin: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = get(admin, path);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// A file of the repository.
fn repository_file(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// Every PromQL expression of the dashboard's panels, with Grafana's variables given values
/// Prometheus can evaluate (every broker, a one-minute rate window).
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repository_file(DASHBOARD)).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        assert!(panel["gridPos"]["w"].as_u64().is_some(), "{panel}");
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().expect("a panel title").to_string();
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for target in targets {
            let expr = target["expr"].as_str().expect("a PromQL expression");
            let expr = expr
                .replace("$instance", ".*")
                .replace("$__rate_interval", "1m");
            queries.push((title.clone(), expr));
        }
    }
    queries
}

/// Every alert rule's expression: (alert name, PromQL), from the YAML's `alert:` and `expr:`
/// lines (single-line or `|` blocks).
fn alert_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repository_file(ALERTS)).unwrap();
    let mut rules = Vec::new();
    let mut lines = text.lines().peekable();
    let mut alert = String::new();
    while let Some(line) = lines.next() {
        let trimmed = line.trim();
        if let Some(name) = trimmed.strip_prefix("- alert: ") {
            alert = name.to_string();
        } else if let Some(expr) = trimmed.strip_prefix("expr: ") {
            let expr = if expr == "|" {
                let indent = |l: &str| l.len() - l.trim_start().len();
                let block_indent = lines.peek().map(|l| indent(l)).unwrap_or(0);
                let mut block = Vec::new();
                while let Some(l) =
                    lines.next_if(|l| l.trim().is_empty() || indent(l) >= block_indent)
                {
                    block.push(l.trim());
                }
                block.join(" ")
            } else {
                expr.to_string()
            };
            rules.push((alert.clone(), expr));
        }
    }
    assert!(rules.len() >= 9, "{rules:?}");
    rules
}

/// The `sluice_...` metric names a PromQL expression reads, without histogram suffixes.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find("sluice_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        names.push(family.to_string());
        rest = &tail[end..];
    }
    names
}

/// The element of a JSON array whose `key` is `name`.
fn entry<'a>(list: &'a serde_json::Value, key: &str, name: &str) -> &'a serde_json::Value {
    list.as_array()
        .expect("an array")
        .iter()
        .find(|e| e[key] == name)
        .unwrap_or_else(|| panic!("no {key} {name} in {list}"))
}

/// The value of the first sample named exactly `series` (name and labels as printed).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// Polls `/metrics` until `done` holds (snapshots are published once a second), at most 20 s.
fn metrics_until(admin: SocketAddr, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, text) = get(admin, "/metrics");
        assert_eq!(status, 200);
        if done(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never got there:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Produces RECORDS records (acks=all) over 3 partitions, then consumes CONSUMED of them in
/// GROUP and commits their offsets; returns each partition's committed offset (partitions the
/// consumer read from).
fn produce_and_consume(broker: &Broker) -> std::collections::BTreeMap<i32, i64> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("acks", "all")
        .set("linger.ms", "2")
        .create()
        .expect("producer");
    for i in 0..RECORDS {
        let payload = format!("record-{i:04}");
        let mut record = BaseRecord::<str, str>::to(TOPIC)
            .payload(&payload)
            .partition((i % 3) as i32);
        while let Err((_, back)) = producer.send(record) {
            record = back;
            producer.poll(Duration::from_millis(10));
        }
    }
    producer.flush(Duration::from_secs(30)).expect("flush");

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", GROUP)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[TOPIC]).expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut consumed = 0;
    let mut committed = std::collections::BTreeMap::new();
    while consumed < CONSUMED {
        assert!(Instant::now() < deadline, "consumed only {consumed}");
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.expect("a record");
            assert!(message.payload().is_some());
            consumer
                .commit_message(&message, CommitMode::Sync)
                .expect("commit");
            committed.insert(message.partition(), message.offset() + 1);
            consumed += 1;
        }
    }
    committed
}

fn create_topic(broker: &Broker) {
    let out = Command::new(sluice_tests::sluice_binary())
        .args(["topic", "create", TOPIC, "--partitions", "3"])
        .args(["--bootstrap", &broker.bootstrap()])
        .output()
        .expect("sluice topic create");
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn metrics_count_what_real_clients_did_and_pass_promtool() {
    let broker = Broker::start(&["--cores", "2"]);
    let admin = broker.admin_addr();
    create_topic(&broker);
    let committed = produce_and_consume(&broker);

    let produced = format!("sluice_produced_records_total{{topic=\"{TOPIC}\"}}");
    // The group's lag on each partition it committed: what it did not consume there (each
    // partition holds RECORDS / 3). Waited for too: a snapshot (published once a second) can
    // predate the last commits.
    let per_partition = (RECORDS / 3) as i64;
    let lags: Vec<(String, f64)> = committed
        .iter()
        .map(|(p, offset)| {
            (
                format!(
                    "sluice_consumer_group_lag{{group=\"{GROUP}\",topic=\"{TOPIC}\",partition=\"{p}\"}}"
                ),
                (per_partition - offset) as f64,
            )
        })
        .collect();
    let text = metrics_until(admin, |text| {
        sample(text, &produced) == Some(RECORDS as f64)
            && lags
                .iter()
                .all(|(series, lag)| sample(text, series) == Some(*lag))
    });
    assert!(
        sample(
            &text,
            &format!("sluice_fetched_bytes_total{{topic=\"{TOPIC}\"}}")
        )
        .is_some_and(|bytes| bytes > 0.0),
        "{text}"
    );
    // Produce requests were timed on some shard.
    let produce_requests: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("sluice_request_duration_seconds_count{") && l.contains("api=\"Produce\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(produce_requests >= 1.0, "{text}");
    for (series, lag) in &lags {
        assert_eq!(sample(&text, series), Some(*lag), "{series}\n{text}");
    }
    let lag_series = text
        .lines()
        .filter(|l| l.starts_with("sluice_consumer_group_lag{"))
        .count();
    assert_eq!(lag_series, committed.len(), "{text}");
    let expected_lag: i64 = committed.values().map(|o| per_partition - o).sum();
    assert_eq!(sample(&text, "sluice_ready"), Some(1.0));
    assert!(sample(
        &text,
        "sluice_fdatasync_duration_seconds_count{shard=\"0\"}"
    )
    .is_some());
    assert!(sample(&text, "sluice_disk_free_bytes").is_some_and(|b| b > 0.0));

    // Prometheus' own linter accepts the exposition.
    sluice_tests::assert_promtool_accepts(&text);

    // The JSON API shows the same.
    let topics = get_json(admin, "/v1/topics");
    let topic = entry(&topics, "topic", TOPIC);
    let ends: i64 = topic["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["high_watermark"].as_i64().unwrap())
        .sum();
    assert_eq!(ends, RECORDS as i64, "{topic}");
    assert_eq!(topic["records_in"], RECORDS);
    let groups = get_json(admin, "/v1/groups");
    let group = entry(&groups, "group", GROUP);
    assert_eq!(group["lag"], expected_lag, "{group}");
    let health = get_json(admin, "/v1/health");
    assert_eq!(health["ready"], true, "{health}");
    assert_eq!(health["shards_serving"], 2, "{health}");
    assert_eq!(health["disk"]["state"], "ok", "{health}");
    assert!(
        health["partitions"]["led"].as_u64().unwrap() >= 3,
        "{health}"
    );
    assert_eq!(health["partitions"]["offline"], 0, "{health}");

    // A deleted topic's series end with it.
    let out = Command::new(sluice_tests::sluice_binary())
        .args(["topic", "delete", TOPIC, "--bootstrap", &broker.bootstrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let topic_label = format!("topic=\"{TOPIC}\"");
    metrics_until(admin, |text| {
        !text
            .lines()
            .any(|l| l.starts_with("sluice_produced_") && l.contains(&topic_label))
    });
}

/// A real Prometheus server scrapes the broker and answers a query with the produced-records
/// counter.
#[test]
fn a_prometheus_server_scrapes_the_produced_records() {
    let broker = Broker::start(&["--cores", "2"]);
    let admin = broker.admin_addr();
    create_topic(&broker);
    produce_and_consume(&broker);

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: sluice\n    static_configs:\n      - targets: ['{admin}']\n"
        ),
    )
    .unwrap();
    let web = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let mut prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("prometheus (Debian's prometheus package; scripts/test installs it)");
    let query =
        format!("/api/v1/query?query=sluice_produced_records_total%7Btopic%3D%22{TOPIC}%22%7D");
    let deadline = Instant::now() + Duration::from_secs(60);
    let value = loop {
        let answer = std::panic::catch_unwind(|| get(web, &query)).ok();
        if let Some((200, body)) = answer {
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            if let Some(v) = json["data"]["result"][0]["value"][1].as_str() {
                break v.to_string();
            }
        }
        if Instant::now() > deadline {
            let _ = prometheus.kill();
            let log =
                std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
            panic!("Prometheus never had the series:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    // Every dashboard panel's and alert rule's query evaluates there.
    for (owner, expr) in dashboard_queries().into_iter().chain(alert_queries()) {
        let url = format!("/api/v1/query?query={}", percent_encoded(&expr));
        let (status, body) = get(web, &url);
        assert_eq!(status, 200, "{owner}: {expr}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["status"], "success", "{owner}: {expr}: {body}");
    }
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    assert_eq!(value, RECORDS.to_string());
}

/// `text` as a URL query value.
fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Ready while serving; 503 "draining" while SIGTERM waits for a request in progress.
#[test]
fn readiness_follows_the_brokers_lifecycle() {
    let broker = Broker::start(&["--cores", "1", "--shutdown-drain-ms", "10000"]);
    let admin = broker.admin_addr();
    let (status, body) = get(admin, "/v1/status/ready");
    assert_eq!((status, body.as_str()), (200, "{\"status\":\"ready\"}"));
    create_topic(&broker);
    // A long-polling fetch at the end of an empty partition holds shutdown's drain.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", "drain")
        .set("fetch.wait.max.ms", "5000")
        .create()
        .expect("consumer");
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment
        .add_partition_offset(TOPIC, 0, rdkafka::Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let _ = consumer.poll(Duration::from_millis(1500));
    broker.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        match std::panic::catch_unwind(|| get(admin, "/v1/status/ready")) {
            Ok((status, body)) => {
                if status == 503 && body.contains("draining") {
                    return;
                }
                seen.push(status);
            }
            Err(_) => break, // the process ended
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("never saw 503 draining; saw {seen:?}");
}

#[test]
fn a_bad_or_taken_admin_address_stops_start_up_naming_the_field() {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(sluice_tests::sluice_binary())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "nowhere",
        ])
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("admin_listen"), "{err}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let out = Command::new(sluice_tests::sluice_binary())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            &address,
        ])
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("admin_listen") && err.contains(&address) && err.contains("in use"),
        "{err}"
    );
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let rules_dir = repository_file("deploy/prometheus");
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&rules_dir)
            .output()
            .expect("promtool (Debian's prometheus package; scripts/test installs it)");
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every metric the alert rules and the dashboard read is one the broker exposes (a renamed
/// metric would leave an alert that can never fire).
#[test]
fn alerts_and_the_dashboard_read_metrics_the_broker_exposes() {
    let broker = Broker::start(&["--cores", "1"]);
    let (_, text) = get(broker.admin_addr(), "/metrics");
    let exposed: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let queries: Vec<(String, String)> = dashboard_queries()
        .into_iter()
        .chain(alert_queries())
        .collect();
    let mut read = 0;
    for (owner, expr) in &queries {
        for name in metric_names(expr) {
            assert!(
                exposed.contains(&name.as_str()),
                "{owner} reads {name}, which /metrics does not expose"
            );
            read += 1;
        }
    }
    assert!(read >= 20, "{queries:?}");
}

/// The console, opened in headless Chromium as an operator would: the page's own JavaScript
/// fills in the topic created here and the group's lag from the admin API. The screenshot goes
/// to target/console.png (docs/console.png is one of these).
#[test]
fn the_console_shows_topics_and_group_lag_in_a_browser() {
    let broker = Broker::start(&["--cores", "2"]);
    let admin = broker.admin_addr();
    create_topic(&broker);
    let committed = produce_and_consume(&broker);
    let per_partition = (RECORDS / 3) as i64;
    let expected_lag: i64 = committed.values().map(|o| per_partition - o).sum();
    // Snapshots are published once a second: wait until the API shows the commits.
    let deadline = Instant::now() + Duration::from_secs(20);
    while entry_lag(&get_json(admin, "/v1/groups")) != Some(expected_lag) {
        assert!(Instant::now() < deadline, "the API never showed the lag");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, page) = get(admin, "/");
    assert_eq!(status, 200);
    assert!(page.contains("<title>Sluice console</title>"));

    let profile = tempfile::tempdir().unwrap();
    let browse = |extra: &[&str]| {
        Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            // Long enough for the page's first polls (every 2 s) to land.
            .arg("--virtual-time-budget=6000")
            .args(extra)
            .arg(format!("http://{admin}/"))
            .output()
            .expect("chromium (Debian's chromium package; scripts/test installs it)")
    };
    let dom = browse(&["--dump-dom"]);
    let dom_text = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom_text.contains(&format!("data-topic=\"{TOPIC}\"")),
        "the topic is not on the page: {dom_text}\n{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    assert!(
        dom_text.contains(&format!("data-group=\"{GROUP}\""))
            && dom_text.contains(&format!("data-lag=\"{expected_lag}\"")),
        "the group's lag ({expected_lag}) is not on the page: {dom_text}"
    );
    assert!(dom_text.contains(">ready<"), "{dom_text}");

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console.png");
    let _ = std::fs::remove_file(&shot);
    let out = browse(&[
        &format!("--screenshot={}", shot.display()),
        "--window-size=1280,900",
        "--hide-scrollbars",
    ]);
    let png = std::fs::read(&shot).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
}

/// The summed lag of GROUP in a `/v1/groups` answer.
fn entry_lag(groups: &serde_json::Value) -> Option<i64> {
    groups.as_array()?.iter().find(|g| g["group"] == GROUP)?["lag"].as_i64()
}
