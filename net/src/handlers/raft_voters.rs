//! AddRaftVoter (key 80) and RemoveRaftVoter (key 81), KIP-853's `kafka-metadata-quorum.sh
//! add-controller` / `remove-controller`: change the voters of the controller group, so the
//! seeds a cluster formed with can be replaced while it runs. A node to add must be registered
//! (it joined through the seeds); it catches up as a learner and the controller leader then
//! promotes it. A voter removed becomes a learner (an observer while it runs; unregister it to
//! take it out of the group). The answer comes once the new voter set is committed to the
//! metadata log; DescribeQuorum shows when the group's configuration follows.
//!
//! Refused: adding a voter (DUPLICATE_VOTER), removing a node that is no voter
//! (VOTER_NOT_FOUND), the last voter or a single node (INVALID_REQUEST), an unregistered node
//! (BROKER_ID_NOT_REGISTERED). `cluster_id` is checked when sent and not empty (INCONSISTENT_CLUSTER_ID); the
//! directory id and listeners are not used (a node's RPC address is in its registration).
//! Needs ALTER on the cluster.

use kafka_protocol::messages::{
    AddRaftVoterRequest, AddRaftVoterResponse, ApiKey, RemoveRaftVoterRequest,
    RemoveRaftVoterResponse,
};
use kafka_protocol::protocol::StrBytes;
use sluice_core::acls::Operation;
use sluice_core::controller::{self, VoterChange};
use sluice_core::ResponseError;

use crate::apis::ApiRange;
use crate::handlers::Context;

pub const ADD_RANGE: ApiRange = ApiRange {
    key: ApiKey::AddRaftVoter,
    min_version: 0,
    max_version: 0,
};

pub const REMOVE_RANGE: ApiRange = ApiRange {
    key: ApiKey::RemoveRaftVoter,
    min_version: 0,
    max_version: 0,
};

/// The error code and message of a voter change, checked and carried out.
async fn change(
    ctx: &Context,
    cluster_id: Option<&StrBytes>,
    change: VoterChange,
) -> (i16, Option<StrBytes>) {
    if !ctx.allows_cluster(Operation::ALTER) {
        return (
            ResponseError::ClusterAuthorizationFailed.code(),
            Some(StrBytes::from_static_str("Authorization failed.")),
        );
    }
    if let Some(asked) = cluster_id.filter(|id| !id.is_empty()) {
        let ours = &ctx.broker.cluster_id;
        if asked.as_str() != ours {
            return (
                ResponseError::InconsistentClusterId.code(),
                Some(StrBytes::from_string(format!(
                    "this is cluster {ours}, not {}",
                    asked.as_str()
                ))),
            );
        }
    }
    match controller::change_controller_voters(&ctx.shard, change).await {
        Ok(()) => (0, None),
        Err(e) => (e.code.code(), Some(StrBytes::from_string(e.message))),
    }
}

pub async fn handle_add(request: AddRaftVoterRequest, ctx: &Context) -> AddRaftVoterResponse {
    let (code, message) = change(
        ctx,
        request.cluster_id.as_ref(),
        VoterChange::Add(request.voter_id),
    )
    .await;
    AddRaftVoterResponse::default()
        .with_error_code(code)
        .with_error_message(message)
}

pub async fn handle_remove(
    request: RemoveRaftVoterRequest,
    ctx: &Context,
) -> RemoveRaftVoterResponse {
    let (code, message) = change(
        ctx,
        request.cluster_id.as_ref(),
        VoterChange::Remove(request.voter_id),
    )
    .await;
    RemoveRaftVoterResponse::default()
        .with_error_code(code)
        .with_error_message(message)
}
