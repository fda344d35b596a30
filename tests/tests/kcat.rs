//! kcat from the system packages (Debian's links librdkafka 2.0.2, older than the one the
//! other tests build): metadata, produce, consume from the beginning and from the end, and
//! offset lookup by timestamp (`-Q`). `-o beginning` and `-Q` ask ListOffsets v2, which the
//! broker once failed to encode (it closed the connection and kcat never got an answer).

use std::process::Output;

use sluice_tests::{kcat, Broker};

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "kcat failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn kcat_produces_consumes_from_the_beginning_and_looks_up_offsets() {
    let version = stdout(&kcat(&["-V"], None));
    assert!(
        version.contains("librdkafka 2.0"),
        "the system's kcat links an old librdkafka: {version}"
    );
    let broker = Broker::start(&["--cores", "2", "--default-partitions", "1"]);
    let b = broker.bootstrap();

    let records: String = (0..20).map(|i| format!("key-{i}:value-{i}\n")).collect();
    stdout(&kcat(
        &[
            "-b",
            &b,
            "-P",
            "-t",
            "kcat-topic",
            "-K",
            ":",
            "-X",
            "topic.request.required.acks=-1",
        ],
        Some(&records),
    ));

    let metadata = stdout(&kcat(&["-b", &b, "-L", "-t", "kcat-topic"], None));
    assert!(
        metadata.contains("topic \"kcat-topic\" with 1 partitions"),
        "{metadata}"
    );

    // From the beginning (ListOffsets with timestamp -2), to the end of the partition.
    let consumed = stdout(&kcat(
        &[
            "-b",
            &b,
            "-C",
            "-t",
            "kcat-topic",
            "-o",
            "beginning",
            "-e",
            "-f",
            "%o %k=%s\n",
        ],
        None,
    ));
    let expected: String = (0..20)
        .map(|i| format!("{i} key-{i}=value-{i}\n"))
        .collect();
    assert_eq!(consumed, expected);

    // The last two records (ListOffsets latest, then an offset relative to it).
    let tail = stdout(&kcat(
        &[
            "-b",
            &b,
            "-C",
            "-t",
            "kcat-topic",
            "-o",
            "-2",
            "-e",
            "-f",
            "%s\n",
        ],
        None,
    ));
    assert_eq!(tail, "value-18\nvalue-19\n");

    // Offset lookup by timestamp: a time before every record answers the first offset; one
    // after every record answers the end (-1 from the broker; kcat prints the log end).
    let lookup = stdout(&kcat(&["-b", &b, "-Q", "-t", "kcat-topic:0:1000"], None));
    assert!(
        lookup.contains("kcat-topic [0] offset 0"),
        "lookup of an early timestamp: {lookup}"
    );
    // Retries can hide a closed connection from kcat's output; the broker's log cannot.
    let log = broker.log();
    assert!(!log.contains("closing connection"), "{log}");
}
