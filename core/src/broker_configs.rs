//! Broker configs that can be changed at runtime (AlterConfigs / IncrementalAlterConfigs on the
//! broker resource), under Kafka's names. A value set at runtime is kept in the catalog and
//! overrides the start-up setting of the same meaning; deleting it restores the start-up value.
//!
//! Only configs whose new value every shard can apply at once are dynamic here.

use std::time::Duration;

use crate::catalog::Image;
use crate::shard::ShardSettings;
use crate::topics::{ConfigType, PARTITIONS_MAX};

/// Dynamic broker configs: name, type, and the start-up field each overrides.
pub const DYNAMIC: &[(&str, ConfigType)] = &[
    ("auto.create.topics.enable", ConfigType::Boolean),
    ("num.partitions", ConfigType::Int),
    ("group.initial.rebalance.delay.ms", ConfigType::Int),
    ("leader.replication.throttled.rate", ConfigType::Long),
    ("follower.replication.throttled.rate", ConfigType::Long),
];

/// Kafka's value for "not throttled" (`Long.MAX_VALUE`).
pub const UNTHROTTLED: u64 = i64::MAX as u64;

/// The broker configs that give topic configs their defaults, under Kafka's names (the
/// synonyms DescribeConfigs lists): topic config, broker config.
pub const TOPIC_DEFAULTS: &[(&str, &str)] = &[
    ("cleanup.policy", "log.cleanup.policy"),
    ("compression.type", "compression.type"),
    ("delete.retention.ms", "log.cleaner.delete.retention.ms"),
    ("file.delete.delay.ms", "log.segment.delete.delay.ms"),
    ("flush.messages", "log.flush.interval.messages"),
    ("flush.ms", "log.flush.interval.ms"),
    ("index.interval.bytes", "log.index.interval.bytes"),
    ("local.retention.bytes", "log.local.retention.bytes"),
    ("local.retention.ms", "log.local.retention.ms"),
    ("max.compaction.lag.ms", "log.cleaner.max.compaction.lag.ms"),
    ("max.message.bytes", "message.max.bytes"),
    (
        "message.timestamp.after.max.ms",
        "log.message.timestamp.after.max.ms",
    ),
    (
        "message.timestamp.before.max.ms",
        "log.message.timestamp.before.max.ms",
    ),
    ("message.timestamp.type", "log.message.timestamp.type"),
    (
        "min.cleanable.dirty.ratio",
        "log.cleaner.min.cleanable.ratio",
    ),
    ("min.compaction.lag.ms", "log.cleaner.min.compaction.lag.ms"),
    ("min.insync.replicas", "min.insync.replicas"),
    ("preallocate", "log.preallocate"),
    ("retention.bytes", "log.retention.bytes"),
    ("retention.ms", "log.retention.ms"),
    ("segment.bytes", "log.segment.bytes"),
    ("segment.index.bytes", "log.index.size.max.bytes"),
    ("segment.jitter.ms", "log.roll.jitter.ms"),
    ("segment.ms", "log.roll.ms"),
    (
        "unclean.leader.election.enable",
        "unclean.leader.election.enable",
    ),
];

/// The broker config that gives topic config `name` its default, if any.
pub fn broker_default_of(topic_config: &str) -> Option<&'static str> {
    TOPIC_DEFAULTS
        .iter()
        .find(|(t, _)| *t == topic_config)
        .map(|(_, b)| *b)
}

/// Checks one dynamic broker config; the error names what is wrong.
pub fn validate(name: &str, value: &str) -> Result<(), String> {
    let value = value.trim();
    match name {
        "auto.create.topics.enable" => value
            .parse::<bool>()
            .map(|_| ())
            .map_err(|_| format!("{name}: {value:?} is not true or false")),
        "num.partitions" => match value.parse::<i32>() {
            Ok(n) if (1..=PARTITIONS_MAX).contains(&n) => Ok(()),
            _ => Err(format!("{name}: {value:?} is not in 1..={PARTITIONS_MAX}")),
        },
        "group.initial.rebalance.delay.ms" => match value.parse::<i32>() {
            Ok(n) if n >= 0 => Ok(()),
            _ => Err(format!("{name}: {value:?} is not a non-negative int")),
        },
        "leader.replication.throttled.rate" | "follower.replication.throttled.rate" => {
            match value.parse::<i64>() {
                Ok(n) if n >= 1 => Ok(()),
                _ => Err(format!(
                    "{name}: {value:?} is not a rate of at least 1 byte per second"
                )),
            }
        }
        _ => Err(format!(
            "{name} cannot be changed at runtime (dynamic broker configs: {})",
            DYNAMIC
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The settings in force: the start-up ones with the runtime overrides of `image` applied.
#[derive(Debug, Clone, Copy)]
pub struct Effective {
    pub auto_create_topics: bool,
    pub default_partitions: i32,
    pub group_initial_rebalance_delay: Duration,
    /// Bytes per second this node's leaders send learners catching up (a moving
    /// partition's new replicas): the lower of Kafka's leader and follower throttled rates;
    /// `None`: unthrottled.
    pub replication_throttled_rate: Option<u64>,
    leader_throttled_rate: u64,
    follower_throttled_rate: u64,
}

impl Effective {
    pub fn of(settings: &ShardSettings, image: &Image) -> Effective {
        let get = |name: &str| image.broker_configs.get(name).map(|v| v.trim().to_string());
        Effective {
            auto_create_topics: get("auto.create.topics.enable")
                .and_then(|v| v.parse().ok())
                .unwrap_or(settings.auto_create_topics),
            default_partitions: get("num.partitions")
                .and_then(|v| v.parse().ok())
                .unwrap_or(settings.default_partitions),
            group_initial_rebalance_delay: get("group.initial.rebalance.delay.ms")
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_millis)
                .unwrap_or(settings.group_initial_rebalance_delay),
            ..Effective::startup(settings)
        }
        .with_throttles(
            get("leader.replication.throttled.rate").and_then(|v| v.parse().ok()),
            get("follower.replication.throttled.rate").and_then(|v| v.parse().ok()),
        )
    }

    fn with_throttles(mut self, leader: Option<u64>, follower: Option<u64>) -> Effective {
        self.leader_throttled_rate = leader.unwrap_or(UNTHROTTLED);
        self.follower_throttled_rate = follower.unwrap_or(UNTHROTTLED);
        let rate = self.leader_throttled_rate.min(self.follower_throttled_rate);
        self.replication_throttled_rate = (rate < UNTHROTTLED).then_some(rate);
        self
    }

    /// The start-up settings, before any runtime override.
    pub fn startup(settings: &ShardSettings) -> Effective {
        Effective {
            auto_create_topics: settings.auto_create_topics,
            default_partitions: settings.default_partitions,
            group_initial_rebalance_delay: settings.group_initial_rebalance_delay,
            replication_throttled_rate: None,
            leader_throttled_rate: UNTHROTTLED,
            follower_throttled_rate: UNTHROTTLED,
        }
    }

    /// Each dynamic config's value, in [`DYNAMIC`]'s order.
    pub fn values(&self) -> [String; 5] {
        [
            self.auto_create_topics.to_string(),
            self.default_partitions.to_string(),
            self.group_initial_rebalance_delay.as_millis().to_string(),
            self.leader_throttled_rate.to_string(),
            self.follower_throttled_rate.to_string(),
        ]
    }

    /// Each dynamic config's value, and whether it was set at runtime.
    pub fn describe(&self, image: &Image) -> Vec<(&'static str, String, ConfigType, bool)> {
        DYNAMIC
            .iter()
            .zip(self.values())
            .map(|((name, kind), value)| {
                (
                    *name,
                    value,
                    *kind,
                    image.broker_configs.contains_key(*name),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_throttles_are_validated_and_the_lower_one_counts() {
        for name in [
            "leader.replication.throttled.rate",
            "follower.replication.throttled.rate",
        ] {
            assert!(validate(name, "1048576").is_ok());
            for bad in ["0", "-5", "fast", ""] {
                let e = validate(name, bad).unwrap_err();
                assert!(e.contains(name) && e.contains("at least 1 byte"), "{e}");
            }
        }
        let base = Effective {
            auto_create_topics: true,
            default_partitions: 1,
            group_initial_rebalance_delay: Duration::ZERO,
            replication_throttled_rate: None,
            leader_throttled_rate: UNTHROTTLED,
            follower_throttled_rate: UNTHROTTLED,
        };
        assert_eq!(
            base.with_throttles(None, None).replication_throttled_rate,
            None
        );
        let both = base.with_throttles(Some(5_000), Some(2_000));
        assert_eq!(both.replication_throttled_rate, Some(2_000));
        assert_eq!(&both.values()[3..], ["5000", "2000"]);
        assert_eq!(
            base.with_throttles(Some(7), None)
                .replication_throttled_rate,
            Some(7)
        );
    }

    #[test]
    fn every_topic_default_names_a_known_topic_config() {
        for (topic, broker) in TOPIC_DEFAULTS {
            assert!(
                crate::topics::config_def(topic).is_some(),
                "{topic} ({broker})"
            );
        }
    }
}
