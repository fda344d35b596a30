//! Metadata (key 3): the brokers of the cluster (this one), the controller, and topics.
//!
//! No topics exist yet (topic creation comes with the broker issue), so a request for all topics
//! gets an empty list and a request naming topics gets UNKNOWN_TOPIC_OR_PARTITION for each.

use kafka_protocol::messages::metadata_response::{MetadataResponseBroker, MetadataResponseTopic};
use kafka_protocol::messages::{ApiKey, BrokerId, MetadataRequest, MetadataResponse};
use kafka_protocol::protocol::StrBytes;

use crate::apis::ApiRange;
use crate::server::BrokerIdentity;

pub const RANGE: ApiRange = ApiRange {
    key: ApiKey::Metadata,
    min_version: 0,
    max_version: 12,
};

const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;

/// The request's `topics` array count, checked before decoding (see `guard`). It is the first
/// field of the body at every version.
pub fn check_counts(body: &[u8], version: i16) -> Result<(), String> {
    crate::guard::array_count_fits(body, version >= 9)
}

pub fn handle(request: &MetadataRequest, broker: &BrokerIdentity) -> MetadataResponse {
    let brokers = vec![MetadataResponseBroker::default()
        .with_node_id(BrokerId(broker.node_id))
        .with_host(StrBytes::from_string(broker.advertised_host.clone()))
        .with_port(i32::from(broker.advertised_port))];
    let topics = request
        .topics
        .iter()
        .flatten()
        .map(|t| {
            MetadataResponseTopic::default()
                .with_error_code(UNKNOWN_TOPIC_OR_PARTITION)
                .with_name(t.name.clone())
                .with_topic_id(t.topic_id)
        })
        .collect();
    MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(StrBytes::from_string(broker.cluster_id.clone())))
        .with_controller_id(BrokerId(broker.node_id))
        .with_topics(topics)
}
