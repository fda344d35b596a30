//! Topics: names, ids, partition counts and per-topic configs, under Kafka's config names.
//!
//! Invariants: a [`Topic`] in the catalog has a valid name, at least one partition, and only
//! configs listed in [`TOPIC_CONFIGS`] whose values passed [`validate_config`]. Configs left
//! unset take the default shown by DescribeConfigs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sluice_storage::LogConfig;
use uuid::Uuid;

/// Kafka's limit on topic name length.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

/// Most partitions one topic may have (a bound on the work a single CreateTopics can ask for).
pub const PARTITIONS_MAX: i32 = 10_000;

/// Checks a topic name the way Kafka does: 1..=249 characters from `[a-zA-Z0-9._-]`, and
/// neither `.` nor `..`.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("topic name is empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!("topic name cannot be \"{name}\""));
    }
    if name.len() > TOPIC_NAME_BYTES_MAX {
        return Err(format!(
            "topic name is {} characters long; the limit is {TOPIC_NAME_BYTES_MAX}",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic name {name:?} contains {bad:?}; allowed are ASCII letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// The type of a config value, as DescribeConfigs v3+ reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    Boolean,
    String,
    Short,
    Int,
    Long,
    Double,
    List,
}

impl ConfigType {
    /// The code DescribeConfigs uses (`ConfigType` in Kafka's DescribeConfigsResponse).
    pub fn code(self) -> i8 {
        match self {
            ConfigType::Boolean => 1,
            ConfigType::String => 2,
            ConfigType::Short => 4,
            ConfigType::Int => 3,
            ConfigType::Long => 5,
            ConfigType::Double => 6,
            ConfigType::List => 7,
        }
    }
}

/// A topic config this broker knows: its name, default and the values it accepts.
#[derive(Debug, Clone, Copy)]
pub struct ConfigDef {
    pub name: &'static str,
    pub default: &'static str,
    pub kind: ConfigType,
    /// For numbers: the smallest and largest values accepted. For strings and lists: the
    /// accepted values (empty = any).
    min: i64,
    max: i64,
    choices: &'static [&'static str],
    pub doc: &'static str,
}

const fn long(name: &'static str, default: &'static str, min: i64, doc: &'static str) -> ConfigDef {
    ranged(name, default, ConfigType::Long, min, i64::MAX, doc)
}

const fn ranged(
    name: &'static str,
    default: &'static str,
    kind: ConfigType,
    min: i64,
    max: i64,
    doc: &'static str,
) -> ConfigDef {
    ConfigDef {
        name,
        default,
        kind,
        min,
        max,
        choices: &[],
        doc,
    }
}

const fn int(name: &'static str, default: &'static str, min: i64, doc: &'static str) -> ConfigDef {
    ranged(name, default, ConfigType::Int, min, i32::MAX as i64, doc)
}

const fn choice(
    name: &'static str,
    default: &'static str,
    kind: ConfigType,
    choices: &'static [&'static str],
    doc: &'static str,
) -> ConfigDef {
    ConfigDef {
        name,
        default,
        kind,
        min: 0,
        max: 0,
        choices,
        doc,
    }
}

/// "Accepted and inert": stored, shown by DescribeConfigs, validated, with no effect here.
const INERT: &str = "accepted and validated for compatibility; no effect in Sluice";

/// `Long.MAX_VALUE`, Kafka's "never" for several time and count limits.
const LONG_MAX: &str = "9223372036854775807";

/// Every topic config of Kafka 4.x, accepted by CreateTopics and the config APIs and shown by
/// DescribeConfigs, in name order. Each is validated by type and range; those Sluice honours
/// say what they do, the others say they are inert (`docs/compatibility.md`). Values this
/// broker cannot honour are refused rather than stored and ignored (`message.timestamp.type`
/// LogAppendTime, `remote.storage.enable` true, `unclean.leader.election.enable` true).
pub const TOPIC_CONFIGS: &[ConfigDef] = &[
    choice(
        "cleanup.policy",
        "delete",
        ConfigType::List,
        &["delete", "compact", "compact,delete", "delete,compact"],
        "delete: retention deletes old segments; compact: the latest record of each key is kept (see cleaner.rs); both: both",
    ),
    ranged("compression.gzip.level", "-1", ConfigType::Int, -1, 9, INERT),
    ranged("compression.lz4.level", "9", ConfigType::Int, 1, 17, INERT),
    choice(
        "compression.type",
        "producer",
        ConfigType::String,
        &["producer", "uncompressed", "gzip", "snappy", "lz4", "zstd"],
        "producer: batches stored as the producer compressed them; a codec: batches in another codec are recompressed",
    ),
    ranged("compression.zstd.level", "3", ConfigType::Int, -131072, 22, INERT),
    long(
        "delete.retention.ms",
        "86400000",
        0,
        "how long a tombstone stays readable on a compacted topic once its segment is sealed",
    ),
    long("file.delete.delay.ms", "60000", 0, INERT),
    long(
        "flush.messages",
        LONG_MAX,
        1,
        "inert: acks=all is always fdatasync'ed before the answer, acks=1 is flushed behind",
    ),
    long(
        "flush.ms",
        LONG_MAX,
        0,
        "inert: acks=all is always fdatasync'ed before the answer, acks=1 is flushed behind",
    ),
    choice(
        "follower.replication.throttled.replicas",
        "",
        ConfigType::List,
        &[],
        INERT,
    ),
    int(
        "index.interval.bytes",
        "32768",
        512,
        "bytes of batches between two sparse-index entries",
    ),
    choice(
        "leader.replication.throttled.replicas",
        "",
        ConfigType::List,
        &[],
        INERT,
    ),
    long("local.retention.bytes", "-2", -2, INERT),
    long("local.retention.ms", "-2", -2, INERT),
    long(
        "max.compaction.lag.ms",
        LONG_MAX,
        1,
        "longest a record stays uncompacted: the active segment rolls and cleaning starts by then",
    ),
    int(
        "max.message.bytes",
        "1048588",
        64,
        "largest record batch accepted",
    ),
    long(
        "message.timestamp.after.max.ms",
        "3600000",
        0,
        "records timestamped further ahead of the broker's clock get INVALID_TIMESTAMP",
    ),
    long(
        "message.timestamp.before.max.ms",
        LONG_MAX,
        0,
        "records timestamped further behind the broker's clock get INVALID_TIMESTAMP",
    ),
    choice(
        "message.timestamp.type",
        "CreateTime",
        ConfigType::String,
        &["CreateTime"],
        "timestamps are the producer's (LogAppendTime is not supported)",
    ),
    ranged(
        "min.cleanable.dirty.ratio",
        "0.5",
        ConfigType::Double,
        0,
        1,
        "share of a log uncompacted before compaction starts",
    ),
    long(
        "min.compaction.lag.ms",
        "0",
        0,
        "shortest a record stays uncompacted",
    ),
    int(
        "min.insync.replicas",
        "1",
        1,
        "acks=all produce fails with NOT_ENOUGH_REPLICAS when above the replicas in sync",
    ),
    choice(
        "preallocate",
        "false",
        ConfigType::Boolean,
        &["true", "false"],
        INERT,
    ),
    choice(
        "remote.log.copy.disable",
        "false",
        ConfigType::Boolean,
        &["true", "false"],
        INERT,
    ),
    choice(
        "remote.log.delete.on.disable",
        "false",
        ConfigType::Boolean,
        &["true", "false"],
        INERT,
    ),
    choice(
        "remote.storage.enable",
        "false",
        ConfigType::Boolean,
        &["false"],
        "no tiered storage yet: only false",
    ),
    long(
        "retention.bytes",
        "-1",
        -1,
        "delete the oldest segments while the partition is larger (-1: no limit)",
    ),
    long(
        "retention.ms",
        "604800000",
        -1,
        "delete segments whose newest record is older (-1: keep forever)",
    ),
    long(
        "segment.bytes",
        "1073741824",
        65536,
        "roll a new segment before one grows past this",
    ),
    ranged(
        "segment.index.bytes",
        "10485760",
        ConfigType::Int,
        4,
        i32::MAX as i64,
        INERT,
    ),
    long("segment.jitter.ms", "0", 0, INERT),
    long(
        "segment.ms",
        "604800000",
        1,
        "roll a segment this long after its first append",
    ),
    choice(
        "unclean.leader.election.enable",
        "false",
        ConfigType::Boolean,
        &["false"],
        "never: acknowledged data is not given up",
    ),
];

/// The definition of topic config `name`, if this broker knows it.
pub fn config_def(name: &str) -> Option<&'static ConfigDef> {
    TOPIC_CONFIGS.iter().find(|d| d.name == name)
}

/// Checks one `name=value` topic config; the error says what is wrong.
pub fn validate_config(name: &str, value: &str) -> Result<(), String> {
    let def = config_def(name).ok_or_else(|| format!("unknown topic config {name:?}"))?;
    match def.kind {
        ConfigType::Long | ConfigType::Int | ConfigType::Short => {
            let n: i64 = value
                .trim()
                .parse()
                .map_err(|_| format!("{name}: {value:?} is not an integer"))?;
            if n < def.min {
                return Err(format!("{name}: {n} is below the minimum {}", def.min));
            }
            if n > def.max {
                return Err(format!("{name}: {n} is above the maximum {}", def.max));
            }
            if def.kind == ConfigType::Int && n > i64::from(i32::MAX) {
                return Err(format!("{name}: {n} does not fit a 32-bit int"));
            }
            Ok(())
        }
        ConfigType::Double => {
            let x: f64 = value
                .trim()
                .parse()
                .map_err(|_| format!("{name}: {value:?} is not a number"))?;
            if !(def.min as f64..=def.max as f64).contains(&x) {
                return Err(format!("{name}: {x} is outside [{}, {}]", def.min, def.max));
            }
            Ok(())
        }
        ConfigType::List if def.choices.is_empty() => Ok(()),
        _ => {
            let normalized = value.trim().to_ascii_lowercase().replace(' ', "");
            if def.choices.is_empty()
                || def
                    .choices
                    .iter()
                    .any(|c| c.to_ascii_lowercase() == normalized)
            {
                Ok(())
            } else {
                Err(format!(
                    "{name}: {value:?} is not supported (accepted: {})",
                    def.choices.join(" | ")
                ))
            }
        }
    }
}

/// One topic as the catalog holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topic {
    pub name: String,
    pub id: Uuid,
    pub partitions: i32,
    /// Configs set explicitly; every other known config has its default.
    pub configs: BTreeMap<String, String>,
}

impl Topic {
    /// The value of config `def`, and whether it is the default.
    /// `__consumer_offsets` with `partitions` and a new id. Compacted by the group
    /// coordinator (`groups::compact`) once larger than two segments; Kafka's
    /// `offsets.topic.segment.bytes` is 100 MiB too.
    pub fn offsets(partitions: i32) -> Topic {
        Topic {
            name: crate::groups::OFFSETS_TOPIC.to_string(),
            id: Uuid::new_v4(),
            partitions,
            configs: [
                ("cleanup.policy".to_string(), "compact".to_string()),
                ("segment.bytes".to_string(), "104857600".to_string()),
            ]
            .into_iter()
            .collect(),
        }
    }

    pub fn config_value(&self, def: &ConfigDef) -> (String, bool) {
        match self.configs.get(def.name) {
            Some(v) => (v.clone(), false),
            None => (def.default.to_string(), true),
        }
    }

    fn number(&self, name: &str) -> Option<i64> {
        let def = config_def(name)?;
        self.config_value(def).0.trim().parse().ok()
    }

    /// `max.message.bytes`: the largest batch a producer may send.
    pub fn max_message_bytes(&self) -> usize {
        self.number("max.message.bytes")
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(1_048_588)
    }

    /// The codec batches must be stored in (`compression.type`), or `None` for `producer`
    /// (stored as sent). Codes are RecordBatch attribute values: 0 none, 1 gzip, 2 snappy,
    /// 3 lz4, 4 zstd.
    pub fn required_codec(&self) -> Option<i16> {
        let def = config_def("compression.type")?;
        match self
            .config_value(def)
            .0
            .trim()
            .to_ascii_lowercase()
            .as_str()
        {
            "uncompressed" => Some(0),
            "gzip" => Some(1),
            "snappy" => Some(2),
            "lz4" => Some(3),
            "zstd" => Some(4),
            _ => None,
        }
    }

    /// The oldest and newest record timestamps accepted now, from
    /// `message.timestamp.before.max.ms` (`None`: no lower bound, Kafka's default) and
    /// `message.timestamp.after.max.ms`.
    pub fn timestamp_window(&self, now_ms: i64) -> (Option<i64>, i64) {
        let before = self
            .number("message.timestamp.before.max.ms")
            .unwrap_or(i64::MAX);
        let after = self
            .number("message.timestamp.after.max.ms")
            .unwrap_or(i64::MAX);
        let oldest = (before < i64::MAX).then(|| now_ms.saturating_sub(before));
        (oldest, now_ms.saturating_add(after))
    }

    /// `cleanup.policy` includes `compact`: every record needs a key.
    pub fn is_compacted(&self) -> bool {
        config_def("cleanup.policy").is_some_and(|def| {
            self.config_value(def)
                .0
                .split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("compact"))
        })
    }

    /// `cleanup.policy` includes `delete`: retention removes old segments.
    pub fn deletes_by_retention(&self) -> bool {
        config_def("cleanup.policy").is_some_and(|def| {
            self.config_value(def)
                .0
                .split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("delete"))
        })
    }

    /// How this topic is compacted, when `cleanup.policy` includes `compact`.
    pub fn compaction(&self) -> Option<Compaction> {
        if !self.is_compacted() {
            return None;
        }
        let ms = |name, default: i64| self.number(name).filter(|n| *n >= 0).unwrap_or(default);
        let ratio = config_def("min.cleanable.dirty.ratio")
            .and_then(|def| self.config_value(def).0.trim().parse::<f64>().ok())
            .unwrap_or(0.5);
        Some(Compaction {
            delete_retention_ms: ms("delete.retention.ms", 86_400_000),
            min_lag_ms: ms("min.compaction.lag.ms", 0),
            max_lag_ms: ms("max.compaction.lag.ms", i64::MAX),
            min_cleanable_dirty_ratio: ratio,
        })
    }

    /// `min.insync.replicas`.
    pub fn min_insync_replicas(&self) -> i64 {
        self.number("min.insync.replicas").unwrap_or(1)
    }

    /// The storage settings of this topic's partition logs: `base` (the broker's defaults for
    /// what topics do not set, such as I/O sizes) with this topic's configs applied.
    pub fn log_config(&self, base: &LogConfig) -> LogConfig {
        let mut config = base.clone();
        let positive = |v: Option<i64>| v.filter(|n| *n >= 0).map(|n| n as u64);
        if let Some(n) = positive(self.number("segment.bytes")) {
            config.segment_bytes_max = n;
        }
        config.segment_ms_max = positive(self.number("segment.ms"));
        if let Some(compaction) = self.compaction() {
            // The active segment is never cleaned: roll it within max.compaction.lag.ms, as
            // Kafka does, so every record becomes cleanable in time.
            let max_lag = u64::try_from(compaction.max_lag_ms).unwrap_or(u64::MAX);
            config.segment_ms_max =
                Some(config.segment_ms_max.map_or(max_lag, |ms| ms.min(max_lag)))
                    .filter(|ms| *ms < i64::MAX as u64);
        }
        // A compact-only topic keeps every key's latest record however old: no retention.
        let retained = self.deletes_by_retention();
        config.retention_bytes = positive(self.number("retention.bytes")).filter(|_| retained);
        config.retention_ms = positive(self.number("retention.ms")).filter(|_| retained);
        if let Some(n) = positive(self.number("max.message.bytes")) {
            config.batch_bytes_max = u32::try_from(n).unwrap_or(u32::MAX);
        }
        if let Some(n) = positive(self.number("index.interval.bytes")) {
            config.index_interval_bytes = u32::try_from(n).unwrap_or(u32::MAX);
        }
        config
    }

    /// The directory of partition `partition`'s log under the data directory. The topic id is
    /// part of the name, so a topic deleted and created again never meets the old files.
    pub fn partition_dir(&self, data_dir: &std::path::Path, partition: i32) -> std::path::PathBuf {
        topic_dir(data_dir, &self.name, self.id).join(partition.to_string())
    }
}

/// A compacted topic's cleaning settings (Kafka's names, in ms).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Compaction {
    /// `delete.retention.ms`: how long a tombstone stays readable once its segment is sealed.
    pub delete_retention_ms: i64,
    /// `min.compaction.lag.ms`: records younger than this are never cleaned.
    pub min_lag_ms: i64,
    /// `max.compaction.lag.ms`: a record older than this gets cleaned whatever the dirty ratio.
    pub max_lag_ms: i64,
    /// `min.cleanable.dirty.ratio`: the share of uncleaned bytes that starts a cleaning.
    pub min_cleanable_dirty_ratio: f64,
}

/// `<data_dir>/topics/<name>-<id>`: where a topic's partition logs live.
pub fn topic_dir(data_dir: &std::path::Path, name: &str, id: Uuid) -> std::path::PathBuf {
    data_dir
        .join(TOPICS_DIR)
        .join(format!("{name}-{}", id.simple()))
}

/// The directory (under the data directory) holding every topic's directory.
pub const TOPICS_DIR: &str = "topics";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafkas_rules() {
        for ok in ["a", "orders.v1", "A_b-c", &"x".repeat(249)] {
            assert!(validate_topic_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a b", "a/b", "é", &"x".repeat(250)] {
            assert!(validate_topic_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn configs_are_checked_by_type_and_range() {
        assert!(validate_config("retention.ms", "-1").is_ok());
        assert!(validate_config("retention.ms", "-2").is_err());
        assert!(validate_config("retention.ms", "soon").is_err());
        assert!(validate_config("cleanup.policy", "compact").is_ok());
        assert!(validate_config("cleanup.policy", "archive").is_err());
        assert!(validate_config("max.message.bytes", "99999999999").is_err());
        assert!(validate_config("no.such.config", "1").is_err());
        // Kafka 4.x configs accepted by name and range, inert ones included.
        assert!(validate_config("delete.retention.ms", "1000").is_ok());
        assert!(validate_config("delete.retention.ms", "-1").is_err());
        assert!(validate_config("min.cleanable.dirty.ratio", "0.2").is_ok());
        assert!(validate_config("min.cleanable.dirty.ratio", "1.5").is_err());
        assert!(validate_config("min.cleanable.dirty.ratio", "half").is_err());
        assert!(validate_config("compression.zstd.level", "22").is_ok());
        assert!(validate_config("compression.zstd.level", "23").is_err());
        assert!(validate_config("preallocate", "true").is_ok());
        assert!(validate_config("preallocate", "maybe").is_err());
        assert!(validate_config("remote.storage.enable", "true").is_err());
        assert!(validate_config("leader.replication.throttled.replicas", "0:1,1:1").is_ok());
        assert!(validate_config("flush.ms", LONG_MAX).is_ok());
    }

    #[test]
    fn the_table_is_in_name_order_and_every_default_is_valid() {
        for pair in TOPIC_CONFIGS.windows(2) {
            assert!(
                pair[0].name < pair[1].name,
                "{} {}",
                pair[0].name,
                pair[1].name
            );
        }
        for def in TOPIC_CONFIGS {
            assert!(
                validate_config(def.name, def.default).is_ok(),
                "{} default {:?}",
                def.name,
                def.default
            );
        }
    }

    #[test]
    fn configs_reach_the_log_config() {
        let topic = Topic {
            name: "t".into(),
            id: Uuid::nil(),
            partitions: 1,
            configs: [
                ("segment.bytes".to_string(), "1048576".to_string()),
                ("retention.ms".to_string(), "-1".to_string()),
            ]
            .into_iter()
            .collect(),
        };
        let config = topic.log_config(&LogConfig::default());
        assert_eq!(config.segment_bytes_max, 1 << 20);
        assert_eq!(config.retention_ms, None);
        assert_eq!(config.retention_bytes, None);
        assert_eq!(config.batch_bytes_max, 1_048_588);
    }
}
