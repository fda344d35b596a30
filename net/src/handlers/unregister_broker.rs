//! UnregisterBroker (key 64, KIP-500's `kafka-cluster.sh unregister`): removes the
//! registration of a node that does not vote in the controller group (one that joined through
//! the seeds, or a seed RemoveRaftVoter took out), once it is stopped and no partition lists it
//! (move its replicas first: `sluice cluster decommission`). The controller leader then takes it
//! out of the controller group's learners. Refused: a controller voter (INVALID_REQUEST), a
//! node no partition may lose (INVALID_REQUEST, naming a topic), an unknown id
//! (BROKER_ID_NOT_REGISTERED), a single node (INVALID_REQUEST). A node unregistered while it
//! still runs registers again, as a Kafka broker does. Needs ALTER on the cluster.

use kafka_protocol::messages::{ApiKey, UnregisterBrokerRequest, UnregisterBrokerResponse};
use kafka_protocol::protocol::StrBytes;
use sluice_core::acls::Operation;
use sluice_core::{controller, ResponseError};

use crate::apis::ApiRange;
use crate::handlers::Context;

pub const RANGE: ApiRange = ApiRange {
    key: ApiKey::UnregisterBroker,
    min_version: 0,
    max_version: 0,
};

pub async fn handle(request: UnregisterBrokerRequest, ctx: &Context) -> UnregisterBrokerResponse {
    if !ctx.allows_cluster(Operation::ALTER) {
        return UnregisterBrokerResponse::default()
            .with_error_code(ResponseError::ClusterAuthorizationFailed.code())
            .with_error_message(Some(StrBytes::from_static_str("Authorization failed.")));
    }
    match controller::unregister_broker(&ctx.shard, request.broker_id.0).await {
        Ok(()) => UnregisterBrokerResponse::default(),
        Err(e) => UnregisterBrokerResponse::default()
            .with_error_code(e.code.code())
            .with_error_message(Some(StrBytes::from_string(e.message))),
    }
}
