//! One module per Kafka API. Each declares `RANGE` (the versions it implements) and a `handle`
//! function from the decoded request to the response.

use std::rc::Rc;
use std::sync::Arc;

use sluice_core::client_telemetry::ClientTelemetry;

use sluice_core::shard::Shard;

use crate::server::BrokerIdentity;

pub mod alter_configs;
pub mod api_versions;
pub mod create_partitions;
pub mod create_topics;
pub mod delete_groups;
pub mod delete_records;
pub mod delete_topics;
pub mod describe_cluster;
pub mod describe_configs;
pub mod describe_groups;
pub mod describe_log_dirs;
pub mod describe_topic_partitions;
pub mod fetch;
pub mod find_coordinator;
pub mod get_telemetry_subscriptions;
pub mod heartbeat;
pub mod init_producer_id;
pub mod join_group;
pub mod leave_group;
pub mod list_config_resources;
pub mod list_groups;
pub mod list_offsets;
pub mod metadata;
pub mod offset_commit;
pub mod offset_delete;
pub mod offset_fetch;
pub mod offset_for_leader_epoch;
pub mod produce;
pub mod push_telemetry;
pub mod sasl;
pub mod scram_credentials;
pub mod sync_group;

/// What a handler can reach: this shard (and through it, every other) and who the broker is.
#[derive(Debug, Clone)]
pub struct Context {
    pub shard: Rc<Shard>,
    pub broker: Rc<BrokerIdentity>,
    /// The peer's address (host part), as DescribeGroups shows it.
    pub client_host: Rc<str>,
    /// KIP-714: the node's client-metrics subscription and what clients pushed.
    pub client_telemetry: Arc<ClientTelemetry>,
    /// The name of the listener the connection came in on: Metadata, FindCoordinator and
    /// DescribeCluster answer with the brokers' addresses on that listener.
    pub listener: Rc<str>,
    /// Who the client is (`User:ANONYMOUS` on a plaintext listener, the certificate's mapped
    /// subject with mutual TLS).
    pub principal: Rc<str>,
    /// On a `SASL_*` listener: the mechanisms and the credential store the connection
    /// authenticates against (`None` elsewhere).
    pub sasl: Option<crate::sasl::SaslServer>,
}

/// Kafka's `ConfigSource`: 1 = set on the topic, 5 = the default.
pub fn config_source(is_default: bool) -> i8 {
    if is_default {
        5
    } else {
        1
    }
}
