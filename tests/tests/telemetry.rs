//! Tracing and client metrics as an operator wires them up:
//! - request spans exported over OTLP/HTTP reach a real OTLP receiver (the OpenTelemetry
//!   project's `opentelemetry-proto` messages, decoded in Python: `scripts/otlp_receiver.py`);
//!   a Produce span joins the trace of the `traceparent` header librdkafka's records carry,
//!   with the request's attributes; with the sample ratio at 0 nothing else is exported;
//! - a collector that is not there costs clients nothing;
//! - librdkafka (2.12, KIP-714) asks for its telemetry subscription and pushes its producer and
//!   consumer metrics, which `/metrics` then shows labelled by client, and the exposition
//!   still passes `promtool check metrics`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use sluice_tests::Broker;

/// A producer's trace, as an instrumented application would put it on its records.
const TRACE_ID: &str = "5b8efff798038103d269b633813fc60c";
const PRODUCER_SPAN: &str = "eee19b7ec3c1b174";
/// A second producer trace in the same request: a link.
const OTHER_TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// The OTLP receiver: a Python process printing one JSON line per span it receives.
struct Receiver {
    child: Child,
    port: u16,
    spans: mpsc::Receiver<serde_json::Value>,
}

impl Receiver {
    fn start() -> Receiver {
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/otlp_receiver.py");
        let mut child = Command::new("python3")
            .arg(script)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 with opentelemetry-proto (scripts/test installs it)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("the receiver's first line").unwrap();
        let port = first
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("receiver said {first:?}"));
        let (send, spans) = mpsc::channel();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let span = serde_json::from_str(&line).expect("a JSON span line");
                if send.send(span).is_err() {
                    return;
                }
            }
        });
        Receiver { child, port, spans }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn traceparent(trace_id: &str, span_id: &str) -> String {
    format!("00-{trace_id}-{span_id}-01")
}

/// Produces `records` records to `topic` in one librdkafka batch where possible, each with
/// the headers `headers(i)` gives, and waits for every acknowledgement.
fn produce(broker: &Broker, topic: &str, records: usize, headers: impl Fn(usize) -> OwnedHeaders) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("client.id", "traced-app")
        .set("linger.ms", "100")
        .create()
        .expect("producer");
    for i in 0..records {
        let value = format!("record {i}");
        producer
            .send(
                BaseRecord::<(), _>::to(topic)
                    .payload(&value)
                    .headers(headers(i)),
            )
            .expect("enqueue");
    }
    producer
        .flush(Duration::from_secs(20))
        .expect("every record acknowledged");
}

#[test]
fn a_produce_span_joins_the_producers_trace_at_a_real_otlp_receiver() {
    let receiver = Receiver::start();
    // Sample ratio 0: only requests a sampled producer trace asks for are exported. The SDK's
    // batch exporter sends every 200 ms instead of every 5 s.
    let broker = Broker::start_wrapped(
        tempfile::tempdir().unwrap(),
        &["env", "OTEL_BSP_SCHEDULE_DELAY=200"],
        &[
            "--cores",
            "2",
            "--otlp-endpoint",
            &receiver.endpoint(),
            "--otlp-sample-ratio",
            "0",
        ],
    );
    produce(&broker, "traced", 3, |i| {
        let parent = match i {
            0 => traceparent(TRACE_ID, PRODUCER_SPAN),
            _ => traceparent(OTHER_TRACE_ID, "00f067aa0ba902b7"),
        };
        OwnedHeaders::new().insert(Header {
            key: "traceparent",
            value: Some(&parent),
        })
    });

    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    let span = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match receiver.spans.recv_timeout(left) {
            Ok(span) if span["trace_id"] == TRACE_ID || span["trace_id"] == OTHER_TRACE_ID => {
                if span["trace_id"] == TRACE_ID {
                    break span;
                }
                seen.push(span);
            }
            Ok(span) => panic!("a span no sampled producer trace asked for: {span}"),
            Err(_) => panic!("no Produce span in the producer's trace arrived; saw {seen:?}"),
        }
    };
    assert_eq!(span["name"], "Produce", "{span}");
    assert_eq!(span["parent_span_id"], PRODUCER_SPAN, "{span}");
    assert_eq!(span["kind"], 2, "a server span: {span}");
    let attributes = &span["attributes"];
    assert_eq!(attributes["kafka.api"], "Produce", "{span}");
    assert_eq!(attributes["kafka.client_id"], "traced-app", "{span}");
    assert_eq!(attributes["kafka.partitions"], 1, "{span}");
    assert_eq!(attributes["outcome"], "answered", "{span}");
    assert!(
        attributes["request_bytes"].as_i64().is_some_and(|b| b > 0),
        "{span}"
    );
    assert!(
        attributes["response_bytes"].as_i64().is_some_and(|b| b > 0),
        "{span}"
    );
    assert_eq!(span["resource"]["service.name"], "sluice", "{span}");
    // The other records' trace: linked from this span, or (had librdkafka split the batch)
    // the parent of a Produce span of its own.
    let linked = span["links"]
        .as_array()
        .is_some_and(|links| links.iter().any(|l| l == OTHER_TRACE_ID));
    if !linked {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !seen.iter().any(|s| s["trace_id"] == OTHER_TRACE_ID) {
            let left = deadline.saturating_duration_since(Instant::now());
            seen.push(receiver.spans.recv_timeout(left).unwrap_or_else(|_| {
                panic!("the second trace is neither linked nor a parent: {span}")
            }));
        }
    }
    broker.stop();
}

#[test]
fn a_collector_that_is_not_there_costs_clients_nothing() {
    // Port 1 on loopback: nothing listens, every export fails.
    let broker = Broker::start(&[
        "--otlp-endpoint",
        "http://127.0.0.1:1",
        "--otlp-sample-ratio",
        "1",
    ]);
    produce(&broker, "untraced", 50, |_| OwnedHeaders::new());
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", "readers")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&["untraced"]).unwrap();
    let mut read = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while read < 50 && Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            message.expect("a record");
            read += 1;
        }
    }
    assert_eq!(read, 50);
    // Closed while the broker still answers (a consumer closing against a stopped broker waits
    // for its group session).
    drop(consumer);
    broker.stop();
}

/// `/metrics`, once `ready` holds, within 30 s.
fn metrics_until(admin: SocketAddr, ready: impl Fn(&str) -> bool, poll: impl Fn()) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = ureq::get(format!("http://{admin}/metrics"))
            .call()
            .expect("GET /metrics")
            .body_mut()
            .read_to_string()
            .unwrap();
        if ready(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never got there:\n{text}"
        );
        poll();
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn librdkafka_pushes_its_metrics_and_metrics_shows_them_by_client() {
    let broker = Broker::start(&["--client-metrics-interval-ms", "500"]);
    let admin = broker.admin_addr();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("client.id", "metered-producer")
        .create()
        .expect("producer");
    for i in 0..20 {
        producer
            .send(BaseRecord::<(), _>::to("metered").payload(&format!("{i}")))
            .expect("enqueue");
    }
    producer
        .flush(Duration::from_secs(20))
        .expect("acknowledged");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("client.id", "metered-consumer")
        .set("group.id", "metered-group")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&["metered"]).unwrap();

    let from = |client: &str, prefix: &str, text: &str| {
        text.lines()
            .any(|l| l.starts_with(prefix) && l.contains(&format!("client_id=\"{client}\"")))
    };
    let text = metrics_until(
        admin,
        |text| {
            from("metered-producer", "sluice_client_producer_", text)
                && from("metered-consumer", "sluice_client_consumer_", text)
        },
        || {
            producer.poll(Duration::ZERO);
            let _ = consumer.poll(Duration::from_millis(50));
        },
    );
    // librdkafka's own measurement of records waiting in its queue, per client instance.
    let queue_time: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("sluice_client_producer_record_queue_time_avg{"))
        .collect();
    assert!(
        queue_time
            .iter()
            .any(|l| l.contains("client_id=\"metered-producer\"")
                && l.contains("client_instance_id=\"")),
        "{text}"
    );

    sluice_tests::assert_promtool_accepts(&text);
    drop(consumer);
    drop(producer);
    broker.stop();
}
