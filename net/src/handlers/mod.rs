//! One module per Kafka API. Each declares `RANGE` (the versions it implements) and a `handle`
//! function from the decoded request to the response.

use std::rc::Rc;

use sluice_core::shard::Shard;

use crate::server::BrokerIdentity;

pub mod api_versions;
pub mod create_partitions;
pub mod create_topics;
pub mod delete_topics;
pub mod describe_configs;
pub mod fetch;
pub mod init_producer_id;
pub mod list_offsets;
pub mod metadata;
pub mod produce;

/// What a handler can reach: this shard (and through it, every other) and who the broker is.
#[derive(Debug, Clone)]
pub struct Context {
    pub shard: Rc<Shard>,
    pub broker: Rc<BrokerIdentity>,
}

/// Kafka's `ConfigSource`: 1 = set on the topic, 5 = the default.
pub fn config_source(is_default: bool) -> i8 {
    if is_default {
        5
    } else {
        1
    }
}
