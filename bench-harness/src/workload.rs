//! Workload files: what one benchmark run does, read from YAML in the shape of the
//! OpenMessaging Benchmark's workloads (topics, partitions, message size, producers, consumers,
//! rate), plus the producer settings OMB keeps in its driver file (acks, linger, batch size,
//! compression), so one file describes the whole load.
//!
//! Invariants: a loaded workload has been validated (every count positive, message large enough
//! to carry the send timestamp, rate positive); unknown fields are refused, naming the field, so
//! a typo never silently runs a different benchmark.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Bytes at the start of every payload that carry the intended send time (nanoseconds since the
/// run's epoch, little endian), for end-to-end latency.
pub const TIMESTAMP_BYTES: usize = 8;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub name: String,
    #[serde(default = "one")]
    pub topics: u32,
    #[serde(default = "one")]
    pub partitions_per_topic: u32,
    /// Copies of every partition the topics are created with. A single-node Sluice clamps it
    /// to 1, so one workload file runs on a single node and on a cluster alike.
    #[serde(default = "one")]
    pub replication_factor: u32,
    /// Bytes of record value, timestamp included.
    pub message_size: usize,
    /// Fraction (0.0-1.0) of each payload that is random; the rest is zeros. 1.0 is
    /// incompressible, lower values let compression work.
    #[serde(default = "full")]
    pub payload_randomness: f64,
    #[serde(default)]
    pub key_distribution: KeyDistribution,
    /// Distinct keys for `round_robin`.
    #[serde(default = "thousand")]
    pub key_space: u64,
    #[serde(default = "one")]
    pub producers_per_topic: u32,
    /// Independent readers of every topic (OMB: subscriptionsPerTopic); each reads every record.
    #[serde(default = "one")]
    pub subscriptions_per_topic: u32,
    /// Consumers sharing one subscription's partitions; 0 runs no consumers (publish only).
    #[serde(default = "one")]
    pub consumers_per_subscription: u32,
    /// Records per second over all producers, `max` to find the highest sustainable rate, or
    /// `unpaced`.
    pub producer_rate: Rate,
    pub duration_s: u64,
    #[serde(default)]
    pub warmup_s: u64,
    #[serde(default)]
    pub producer: ProducerSettings,
    #[serde(default)]
    pub consumer: ConsumerSettings,
    #[serde(default)]
    pub max_rate: MaxRateSettings,
    /// Topic configs the run's topics are created with (e.g. `cleanup.policy: compact`), on
    /// Kafka-protocol targets.
    #[serde(default)]
    pub topic_configs: std::collections::BTreeMap<String, String>,
    /// librdkafka properties for every client of the run — admin, producers, consumers — such
    /// as `security.protocol`, `ssl.ca.location`, `sasl.mechanisms`, `sasl.username`,
    /// `sasl.password` (`sluice bench -X KEY=VALUE` adds to them). Results show them with
    /// passwords and secrets masked.
    #[serde(default, serialize_with = "masked")]
    pub client: std::collections::BTreeMap<String, String>,
}

/// Client properties as results show them: a value whose key names a password or secret is
/// masked.
fn masked<S: serde::Serializer>(
    properties: &std::collections::BTreeMap<String, String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = serializer.serialize_map(Some(properties.len()))?;
    for (key, value) in properties {
        let secret = key.contains("password") || key.contains("secret");
        map.serialize_entry(key, if secret { "****" } else { value.as_str() })?;
    }
    map.end()
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Rate {
    PerSecond(f64),
    Named(NamedRate),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NamedRate {
    /// Find the highest sustainable rate, then measure at it.
    Max,
    /// No pacing: every producer sends as fast as its client accepts records (closed loop;
    /// latencies then are not corrected for coordinated omission).
    Unpaced,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyDistribution {
    /// No key: the client's partitioner spreads records (librdkafka: sticky random).
    #[default]
    NoKey,
    /// A fresh random key per record.
    Random,
    /// Keys cycle through `key_space` values.
    RoundRobin,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProducerSettings {
    /// `0`, `1` or `all`.
    #[serde(default = "acks_all")]
    pub acks: String,
    #[serde(default = "default_linger")]
    pub linger_ms: u64,
    #[serde(default = "default_batch")]
    pub batch_size: u64,
    /// `none`, `gzip`, `snappy`, `lz4` or `zstd`.
    #[serde(default = "no_compression")]
    pub compression: String,
    #[serde(default)]
    pub idempotence: bool,
    /// A transactional producer (each its own `transactional.id`) that commits a transaction
    /// every N records it sends (and the last, partly filled one at the end). Kafka protocol
    /// through librdkafka only. Publish latency stays send-to-acknowledgement per record; the
    /// end-to-end latency of a `read_committed` consumer (`consumer.extra`) includes the wait
    /// for the commit.
    #[serde(default)]
    pub transaction_records: Option<u64>,
    /// Further librdkafka producer properties, passed through as given.
    #[serde(default)]
    pub extra: std::collections::BTreeMap<String, String>,
}

impl Default for ProducerSettings {
    fn default() -> Self {
        ProducerSettings {
            acks: acks_all(),
            linger_ms: default_linger(),
            batch_size: default_batch(),
            compression: no_compression(),
            idempotence: false,
            transaction_records: None,
            extra: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSettings {
    /// Further librdkafka consumer properties, passed through as given.
    #[serde(default)]
    pub extra: std::collections::BTreeMap<String, String>,
}

/// How `producer_rate: max` searches.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaxRateSettings {
    /// Length of each trial.
    #[serde(default = "five")]
    pub trial_s: u64,
    /// Seconds each trial runs at its rate before measuring. Every trial creates its topics
    /// afresh, and a fresh topic's first seconds are its partitions' first writes (segment
    /// files created, space reserved): at thousands of partitions a short trial measures only
    /// those unless it warms up first.
    #[serde(default = "one_s")]
    pub trial_warmup_s: u64,
    /// Trials after the unpaced probe before giving up and taking the last rate.
    #[serde(default = "six")]
    pub max_trials: u32,
    /// A trial passes when at least this fraction of the scheduled records were acknowledged
    /// (and, with consumers, consumed) within the trial and a short drain.
    #[serde(default = "pass_fraction")]
    pub pass_fraction: f64,
    /// ... and its publish P99 stays under this.
    #[serde(default = "pass_p99_ms")]
    pub pass_p99_ms: u64,
}

impl Default for MaxRateSettings {
    fn default() -> Self {
        MaxRateSettings {
            trial_s: five(),
            trial_warmup_s: one_s(),
            max_trials: six(),
            pass_fraction: pass_fraction(),
            pass_p99_ms: pass_p99_ms(),
        }
    }
}

fn one() -> u32 {
    1
}
fn one_s() -> u64 {
    1
}
fn full() -> f64 {
    1.0
}
fn thousand() -> u64 {
    1000
}
fn five() -> u64 {
    5
}
fn six() -> u32 {
    6
}
fn pass_fraction() -> f64 {
    0.97
}
fn pass_p99_ms() -> u64 {
    1000
}
fn acks_all() -> String {
    "all".into()
}
fn default_linger() -> u64 {
    1
}
fn default_batch() -> u64 {
    128 * 1024
}
fn no_compression() -> String {
    "none".into()
}

impl Workload {
    pub fn load(path: &Path) -> Result<Workload, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read workload {}: {e}", path.display()))?;
        Workload::parse(&text).map_err(|e| format!("workload {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Workload, String> {
        let workload: Workload = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        workload.validate()?;
        Ok(workload)
    }

    fn validate(&self) -> Result<(), String> {
        let positive = [
            ("topics", self.topics as u64),
            ("partitions_per_topic", self.partitions_per_topic as u64),
            ("replication_factor", self.replication_factor as u64),
            ("producers_per_topic", self.producers_per_topic as u64),
            (
                "subscriptions_per_topic",
                self.subscriptions_per_topic as u64,
            ),
            ("duration_s", self.duration_s),
            ("key_space", self.key_space),
            ("max_rate.trial_s", self.max_rate.trial_s),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(format!("{field} must be at least 1"));
            }
        }
        if self.producer.transaction_records == Some(0) {
            return Err("producer.transaction_records must be at least 1".into());
        }
        if self.message_size < TIMESTAMP_BYTES {
            return Err(format!(
                "message_size must be at least {TIMESTAMP_BYTES} (the send timestamp)"
            ));
        }
        if !(0.0..=1.0).contains(&self.payload_randomness) {
            return Err("payload_randomness must be between 0.0 and 1.0".into());
        }
        if let Rate::PerSecond(rate) = self.producer_rate {
            if !(rate.is_finite() && rate > 0.0) {
                return Err("producer_rate must be a positive number, `max` or `unpaced`".into());
            }
        }
        if !["0", "1", "all", "-1"].contains(&self.producer.acks.as_str()) {
            return Err("producer.acks must be 0, 1 or all".into());
        }
        if !["none", "gzip", "snappy", "lz4", "zstd"].contains(&self.producer.compression.as_str())
        {
            return Err("producer.compression must be none, gzip, snappy, lz4 or zstd".into());
        }
        if !(0.0..=1.0).contains(&self.max_rate.pass_fraction) {
            return Err("max_rate.pass_fraction must be between 0.0 and 1.0".into());
        }
        Ok(())
    }

    pub fn total_producers(&self) -> u32 {
        self.topics * self.producers_per_topic
    }

    pub fn consumers_per_topic(&self) -> u32 {
        self.subscriptions_per_topic * self.consumers_per_subscription
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_file_parses_and_defaults_fill_the_rest() {
        let w = Workload::parse(
            "name: t\nmessage_size: 1024\nproducer_rate: max\nduration_s: 10\n\
             producer: {acks: '1', compression: zstd}\n",
        )
        .unwrap();
        assert_eq!(w.producer_rate, Rate::Named(NamedRate::Max));
        assert_eq!(w.partitions_per_topic, 1);
        assert_eq!(w.replication_factor, 1);
        assert_eq!(w.producer.acks, "1");
        assert_eq!(w.producer.linger_ms, 1);
        assert_eq!(w.max_rate.trial_warmup_s, 1);
        let w = Workload::parse(
            "name: t\nmessage_size: 100\nproducer_rate: max\nduration_s: 1\n\
             max_rate: {trial_s: 10, trial_warmup_s: 15}\n",
        )
        .unwrap();
        assert_eq!((w.max_rate.trial_s, w.max_rate.trial_warmup_s), (10, 15));
        assert_eq!(w.max_rate.max_trials, 6);
        let w = Workload::parse("name: t\nmessage_size: 100\nproducer_rate: 5000\nduration_s: 1\n")
            .unwrap();
        assert_eq!(w.producer_rate, Rate::PerSecond(5000.0));
    }

    #[test]
    fn every_shipped_workload_parses() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads");
        let mut parsed = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(&path).unwrap();
                Workload::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                parsed += 1;
            }
        }
        assert!(parsed >= 6, "{parsed} workloads");
        let compacted =
            Workload::parse(&std::fs::read_to_string(dir.join("compaction-on.yaml")).unwrap())
                .unwrap();
        assert_eq!(compacted.topic_configs["cleanup.policy"], "compact");
    }

    #[test]
    fn bad_fields_are_named() {
        let base = "name: t\nmessage_size: 100\nproducer_rate: 10\nduration_s: 1\n";
        let err = Workload::parse(&format!("{base}partitons_per_topic: 3\n")).unwrap_err();
        assert!(err.contains("partitons_per_topic"), "{err}");
        let err = Workload::parse(&format!("{base}topics: 0\n")).unwrap_err();
        assert!(err.contains("topics must be at least 1"), "{err}");
        let err = Workload::parse(&format!("{base}replication_factor: 0\n")).unwrap_err();
        assert!(
            err.contains("replication_factor must be at least 1"),
            "{err}"
        );
        let err = Workload::parse("name: t\nmessage_size: 4\nproducer_rate: 10\nduration_s: 1\n")
            .unwrap_err();
        assert!(err.contains("message_size"), "{err}");
        let err =
            Workload::parse(&format!("{base}producer: {{compression: brotli}}\n")).unwrap_err();
        assert!(err.contains("producer.compression"), "{err}");
        let err = Workload::parse("name: t\nmessage_size: 100\nproducer_rate: -3\nduration_s: 1\n")
            .unwrap_err();
        assert!(err.contains("producer_rate"), "{err}");
    }
}
