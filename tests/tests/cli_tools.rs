//! `sluice topic|produce|consume|group`, run as a user would against a running broker: create,
//! list, describe, produce lines from stdin with keys, consume with a print format from the
//! beginning / an offset / the latest, reset a group's offsets, describe its lag, delete it,
//! delete the topic; errors exit non-zero with Kafka's error named.
//! A `--bootstrap` list falls through to the first broker that answers.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use sluice_tests::{sluice_binary, Broker};

fn sluice(broker: &Broker, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(sluice_binary())
        .args(args)
        .args(["--bootstrap", &broker.bootstrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sluice");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn ok(broker: &Broker, args: &[&str], stdin: &str) -> String {
    let out = sluice(broker, args, stdin);
    assert!(
        out.status.success(),
        "sluice {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn topic_produce_and_consume_tools_round_trip() {
    let broker = Broker::start(&["--cores", "2"]);
    let created = ok(
        &broker,
        &[
            "topic",
            "create",
            "tools",
            "--partitions",
            "3",
            "--config",
            "retention.ms=86400000",
        ],
        "",
    );
    assert_eq!(created.trim(), "created topic tools");
    assert_eq!(ok(&broker, &["topic", "list"], "").trim(), "tools");
    let described = ok(&broker, &["topic", "describe", "tools"], "");
    assert!(described.contains("partitions 3"), "{described}");
    assert!(described.contains("partition 2 leader 0"), "{described}");
    assert!(described.contains("retention.ms=86400000\n"), "{described}");
    assert!(
        described.contains("cleanup.policy=delete (default)"),
        "{described}"
    );

    // Keys pick partitions with Kafka's murmur2 partitioner, so a key always lands in the
    // same partition; lines without the separator have no key.
    let input = "user-1:login\nuser-2:login\nuser-1:click\nuser-1:logout\nno key here\n";
    ok(
        &broker,
        &["produce", "tools", "--key-separator", ":"],
        input,
    );
    let all = ok(
        &broker,
        &[
            "consume",
            "tools",
            "--format",
            "%p|%o|%k|%v\\n",
            "--idle-exit-ms",
            "1000",
        ],
        "",
    );
    let mut lines: Vec<&str> = all.lines().collect();
    lines.sort();
    assert_eq!(lines.len(), 5, "{all}");
    let user1: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains("|user-1|"))
        .collect();
    let partition = user1[0].split('|').next().unwrap();
    assert!(
        user1
            .iter()
            .all(|l| l.starts_with(&format!("{partition}|"))),
        "one key, one partition: {user1:?}"
    );
    let values: Vec<&str> = user1
        .iter()
        .map(|l| l.rsplit('|').next().unwrap())
        .collect();
    assert_eq!(values, ["login", "click", "logout"], "in order");
    assert!(lines.iter().any(|l| l.ends_with("||no key here")), "{all}");

    // From an offset, on one partition, and a bounded count.
    let from_one = ok(
        &broker,
        &[
            "consume",
            "tools",
            "--partition",
            partition,
            "--from",
            "1",
            "--count",
            "2",
        ],
        "",
    );
    let mut expected: Vec<(i64, &str)> = lines
        .iter()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            let offset: i64 = f[1].parse().unwrap();
            (f[0] == partition && offset >= 1).then_some((offset, f[3]))
        })
        .collect();
    expected.sort_unstable();
    let expected: String = expected
        .iter()
        .take(2)
        .map(|(_, v)| format!("{v}\n"))
        .collect();
    assert_eq!(from_one, expected);
    // From the latest offset: nothing old is printed.
    let latest = ok(
        &broker,
        &[
            "consume",
            "tools",
            "--from",
            "latest",
            "--idle-exit-ms",
            "500",
        ],
        "",
    );
    assert_eq!(latest, "");

    // Groups: offsets set for a group without members create it; describe shows the lag per
    // partition like kafka-consumer-groups.sh; delete removes it.
    let reset = ok(
        &broker,
        &[
            "group",
            "reset-offsets",
            "ops",
            "--topic",
            "tools",
            "--to",
            "earliest",
        ],
        "",
    );
    assert_eq!(reset.lines().count(), 3, "{reset}");
    assert_eq!(ok(&broker, &["group", "list"], "").trim(), "ops Empty");
    let described = ok(&broker, &["group", "describe", "ops"], "");
    let rows: Vec<&str> = described
        .lines()
        .filter(|l| l.starts_with("tools "))
        .collect();
    assert_eq!(rows.len(), 3, "{described}");
    let total_lag: i64 = rows
        .iter()
        .map(|r| r.split(' ').nth(4).unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(total_lag, 5, "every record not yet consumed: {described}");
    // The same for scripts, as JSON.
    let json = |args: &[&str]| -> serde_json::Value {
        let mut args = args.to_vec();
        args.extend(["--output", "json"]);
        let text = ok(&broker, &args, "");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
    };
    let described = json(&["group", "describe", "ops"]);
    let lags: i64 = described["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["lag"].as_i64().unwrap())
        .sum();
    assert_eq!(lags, 5, "{described}");
    assert_eq!(described["state"], "Empty", "{described}");
    assert_eq!(
        json(&["group", "list"]),
        serde_json::json!([{ "group": "ops", "state": "Empty" }])
    );
    assert_eq!(json(&["topic", "list"]), serde_json::json!(["tools"]));
    let topic = json(&["topic", "describe", "tools"]);
    assert_eq!(topic["partitions"].as_array().unwrap().len(), 3, "{topic}");
    assert!(
        topic["configs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "cleanup.policy" && c["default"] == true),
        "{topic}"
    );
    ok(
        &broker,
        &[
            "group",
            "reset-offsets",
            "ops",
            "--topic",
            "tools",
            "--to",
            "latest",
        ],
        "",
    );
    let described = ok(&broker, &["group", "describe", "ops"], "");
    assert!(
        described
            .lines()
            .filter(|l| l.starts_with("tools "))
            .all(|l| l.split(' ').nth(4) == Some("0")),
        "no lag at the latest offsets: {described}"
    );
    assert_eq!(
        ok(&broker, &["group", "delete", "ops"], "").trim(),
        "deleted group ops"
    );
    assert_eq!(ok(&broker, &["group", "list"], "").trim(), "");

    assert_eq!(
        ok(&broker, &["topic", "delete", "tools"], "").trim(),
        "deleted topic tools"
    );
    let again = sluice(&broker, &["topic", "delete", "tools"], "");
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("UnknownTopicOrPartition"), "{err}");
    let bad = sluice(
        &broker,
        &["topic", "create", "x", "--replication-factor", "3"],
        "",
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("InvalidReplicationFactor"));
}

/// `--bootstrap` takes a comma-separated list, as Kafka's tools do: the first broker that
/// answers is used; when none does, each failure is named, exit status 1; a list with no
/// address in it says so.
#[test]
fn a_bootstrap_list_uses_the_first_broker_that_answers_and_names_every_failure() {
    let broker = Broker::start(&[]);
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_address = dead.local_addr().unwrap().to_string();
    drop(dead); // nothing listens there now
    let run = |bootstrap: &str| {
        Command::new(sluice_binary())
            .args(["topic", "list", "--bootstrap", bootstrap])
            .output()
            .expect("run sluice")
    };
    let listed = run(&format!("{dead_address},{}", broker.bootstrap()));
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let none = run(&format!("{dead_address}, 127.0.0.1:1"));
    assert_eq!(none.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&none.stderr);
    assert!(
        stderr.contains(&format!("cannot connect to {dead_address}"))
            && stderr.contains("cannot connect to 127.0.0.1:1"),
        "{stderr}"
    );
    let empty = run(" , ");
    assert_eq!(empty.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&empty.stderr).contains("no broker address"),
        "{}",
        String::from_utf8_lossy(&empty.stderr)
    );
    broker.stop();
}
