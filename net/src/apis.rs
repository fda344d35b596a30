//! The Kafka APIs this broker implements, with their version ranges. ApiVersions advertises
//! exactly this table; a request outside it gets UNSUPPORTED_VERSION (or, for an unknown API
//! key, a closed connection: there is no response format to answer in).

use kafka_protocol::messages::ApiKey;

use crate::handlers;

/// One implemented API: its key and the versions its handler accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiRange {
    pub key: ApiKey,
    pub min_version: i16,
    pub max_version: i16,
}

/// Every API with a handler, in key order.
pub const IMPLEMENTED: &[ApiRange] = &[
    handlers::produce::RANGE,
    handlers::fetch::RANGE,
    handlers::list_offsets::RANGE,
    handlers::metadata::RANGE,
    handlers::offset_commit::RANGE,
    handlers::offset_fetch::RANGE,
    handlers::find_coordinator::RANGE,
    handlers::join_group::RANGE,
    handlers::heartbeat::RANGE,
    handlers::leave_group::RANGE,
    handlers::sync_group::RANGE,
    handlers::describe_groups::RANGE,
    handlers::list_groups::RANGE,
    handlers::sasl::HANDSHAKE_RANGE,
    handlers::api_versions::RANGE,
    handlers::create_topics::RANGE,
    handlers::delete_topics::RANGE,
    handlers::delete_records::RANGE,
    handlers::init_producer_id::RANGE,
    handlers::offset_for_leader_epoch::RANGE,
    handlers::txn::ADD_PARTITIONS_RANGE,
    handlers::txn::ADD_OFFSETS_RANGE,
    handlers::txn::END_RANGE,
    handlers::txn_tooling::WRITE_MARKERS_RANGE,
    handlers::txn::OFFSET_COMMIT_RANGE,
    handlers::acls_api::DESCRIBE_RANGE,
    handlers::acls_api::CREATE_RANGE,
    handlers::acls_api::DELETE_RANGE,
    handlers::describe_configs::RANGE,
    handlers::alter_configs::RANGE,
    handlers::describe_log_dirs::RANGE,
    handlers::sasl::AUTHENTICATE_RANGE,
    handlers::create_partitions::RANGE,
    handlers::delete_groups::RANGE,
    handlers::elect_leaders::RANGE,
    handlers::alter_configs::INCREMENTAL_RANGE,
    handlers::partition_reassignments::ALTER_RANGE,
    handlers::partition_reassignments::LIST_RANGE,
    handlers::offset_delete::RANGE,
    handlers::client_quotas::DESCRIBE_RANGE,
    handlers::client_quotas::ALTER_RANGE,
    handlers::scram_credentials::DESCRIBE_RANGE,
    handlers::scram_credentials::ALTER_RANGE,
    handlers::describe_quorum::RANGE,
    handlers::describe_cluster::RANGE,
    handlers::describe_producers::RANGE,
    handlers::unregister_broker::RANGE,
    handlers::txn_tooling::DESCRIBE_RANGE,
    handlers::txn_tooling::LIST_RANGE,
    handlers::get_telemetry_subscriptions::RANGE,
    handlers::push_telemetry::RANGE,
    handlers::list_config_resources::RANGE,
    handlers::describe_topic_partitions::RANGE,
    handlers::raft_voters::ADD_RANGE,
    handlers::raft_voters::REMOVE_RANGE,
];

/// The range implemented for `key`, if any.
pub fn implemented(key: ApiKey) -> Option<ApiRange> {
    IMPLEMENTED.iter().copied().find(|r| r.key == key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_in_key_order_without_duplicates() {
        for pair in IMPLEMENTED.windows(2) {
            assert!((pair[0].key as i16) < (pair[1].key as i16), "{pair:?}");
        }
    }

    #[test]
    fn every_range_is_one_the_codec_supports() {
        for r in IMPLEMENTED {
            let codec = r.key.valid_versions();
            assert!(
                r.min_version >= codec.min && r.max_version <= codec.max,
                "{r:?} vs codec {codec:?}"
            );
            assert!(r.min_version <= r.max_version);
        }
    }
}
