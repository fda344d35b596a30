//! Requests one node makes of another in cluster mode, in Kafka's own inter-broker request and
//! response bodies, carried over the replication mesh (`ShardReplication::call`) from a shard
//! to the same shard of the peer:
//!
//! - WriteTxnMarkers (27) v1: a transaction coordinator's marker for a partition the peer
//!   leads (`transactions::write_markers_here` writes it there).
//! - AddPartitionsToTxn (24) v4, verify only: a partition's leader asks the coordinator of a
//!   transactional id whether the partition is in the producer's ongoing transaction, before
//!   the producer's first transactional batch there (KIP-890 part 1; `transactions::verify`
//!   answers).
//!
//! Why the mesh and not the peer's Kafka listener: nodes already trust each other there (the
//! same trust as their Raft messages), so no node needs client credentials, a listener of its
//! own or ACLs for what is internal traffic. A request is sent from the shard that owns what
//! it is about (the marked partition, the id's `__transaction_state` partition), so it arrives
//! on the shard of the peer that owns it too.
//!
//! Delivery is at most once: a request or its answer is lost with its frame when the peer is
//! unreachable, and the asker sees no answer (`None`) within its wait and decides whether to
//! ask again (a marker: yes, until written; a verification: the producer retries). A request
//! this node does not know (a newer peer) is answered with an empty body, which the asker
//! cannot decode and treats as no answer.

use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::add_partitions_to_txn_request::{
    AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
};
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, ApiKey, ProducerId, TopicName,
    TransactionalId, WriteTxnMarkersRequest, WriteTxnMarkersResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::ResponseError;
use sluice_replication::rpc::PeerCall;
use sluice_storage::batch::TxnMarker;
use tracing::debug;

use crate::shard::Shard;

/// The WriteTxnMarkers version the mesh carries.
const MARKERS_VERSION: i16 = 1;
/// The AddPartitionsToTxn version the mesh carries (the first with `verify_only`).
const VERIFY_VERSION: i16 = 4;

/// How long an asker waits for a peer's answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

fn encoded(message: &impl Encodable, version: i16) -> Bytes {
    let mut body = BytesMut::new();
    message
        .encode(&mut body, version)
        .expect("a request built here encodes");
    body.freeze()
}

/// Sends `body` from the shard owning (`owner`) to the same shard of `node`; its answer.
async fn ask(
    shard: &Rc<Shard>,
    owner: usize,
    node: i32,
    key: ApiKey,
    version: i16,
    body: Bytes,
) -> Option<Bytes> {
    shard
        .invoke_on(owner, move |s| async move {
            let replication = s.replication.as_ref()?;
            replication
                .call(node, key as i16, version, body, ANSWER_WITHIN)
                .await
        })
        .await
        .ok()
        .flatten()
}

/// Asks `node` (the partition's leader) to write `marker` for producer
/// `(producer_id, producer_epoch)` on `topic`/`partition`: `Some(None)` once written there,
/// `Some(Some(code))` when refused, `None` when no answer came.
pub async fn write_marker_on(
    shard: &Rc<Shard>,
    node: i32,
    producer_id: i64,
    producer_epoch: i16,
    marker: TxnMarker,
    topic: &str,
    partition: i32,
) -> Option<Option<ResponseError>> {
    let request =
        WriteTxnMarkersRequest::default().with_markers(vec![WritableTxnMarker::default()
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(producer_epoch)
            .with_transaction_result(marker.commit)
            .with_coordinator_epoch(marker.coordinator_epoch)
            .with_topics(vec![WritableTxnMarkerTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partition_indexes(vec![partition])])]);
    let owner = shard.owner_of(topic, partition);
    let answer = ask(
        shard,
        owner,
        node,
        ApiKey::WriteTxnMarkers,
        MARKERS_VERSION,
        encoded(&request, MARKERS_VERSION),
    )
    .await?;
    marker_outcome(answer)
}

/// The first partition's code of a WriteTxnMarkers answer (`Some(None)`: written); `None` for
/// an answer that does not decode or names no partition (an empty one: the peer could not
/// serve the request).
fn marker_outcome(mut answer: Bytes) -> Option<Option<ResponseError>> {
    let response = WriteTxnMarkersResponse::decode(&mut answer, MARKERS_VERSION).ok()?;
    let code = response
        .markers
        .first()?
        .topics
        .first()?
        .partitions
        .first()?
        .error_code;
    Some(ResponseError::try_from_code(code))
}

/// Asks `node` (the coordinator of `transactional_id`, whose state partition is
/// `state_partition`) whether `topic`/`partition` is in the ongoing transaction of producer
/// `(producer_id, producer_epoch)`: the coordinator's code (`None`: it is), or
/// NOT_COORDINATOR when no answer came (the producer looks the coordinator up again and
/// retries).
#[allow(clippy::too_many_arguments)]
pub async fn verify_on(
    shard: &Rc<Shard>,
    node: i32,
    state_partition: i32,
    transactional_id: &str,
    producer_id: i64,
    producer_epoch: i16,
    topic: &str,
    partition: i32,
) -> Option<ResponseError> {
    let request = AddPartitionsToTxnRequest::default().with_transactions(vec![
        AddPartitionsToTxnTransaction::default()
            .with_transactional_id(TransactionalId(StrBytes::from_string(
                transactional_id.to_string(),
            )))
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(producer_epoch)
            .with_verify_only(true)
            .with_topics(vec![AddPartitionsToTxnTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partitions(vec![partition])]),
    ]);
    let owner = shard.owner_of(crate::transactions::TXN_STATE_TOPIC, state_partition);
    let answer = ask(
        shard,
        owner,
        node,
        ApiKey::AddPartitionsToTxn,
        VERIFY_VERSION,
        encoded(&request, VERIFY_VERSION),
    )
    .await;
    verify_outcome(answer)
}

/// The coordinator's code in a verification answer (`None`: the partition is in the
/// transaction); NOT_COORDINATOR when no answer came or it does not decode.
fn verify_outcome(answer: Option<Bytes>) -> Option<ResponseError> {
    let code = answer.and_then(|mut body| {
        let response = AddPartitionsToTxnResponse::decode(&mut body, VERIFY_VERSION).ok()?;
        if response.error_code != 0 {
            return Some(response.error_code);
        }
        Some(
            response
                .results_by_transaction
                .first()?
                .topic_results
                .first()?
                .results_by_partition
                .first()?
                .partition_error_code,
        )
    });
    match code {
        None => Some(ResponseError::NotCoordinator),
        Some(code) => ResponseError::try_from_code(code),
    }
}

/// A peer's request, decoded.
#[derive(Debug)]
enum PeerRequest {
    Markers(WriteTxnMarkersRequest),
    Verify(AddPartitionsToTxnRequest),
}

/// Decodes a peer's request; `None` (with a debug line) for a kind or version not served here
/// or a body that does not decode.
fn decode_request(call: &PeerCall) -> Option<PeerRequest> {
    let mut body = call.body.clone();
    let decoded = match (ApiKey::try_from(call.api_key), call.api_version) {
        (Ok(ApiKey::WriteTxnMarkers), MARKERS_VERSION) => {
            WriteTxnMarkersRequest::decode(&mut body, MARKERS_VERSION).map(PeerRequest::Markers)
        }
        (Ok(ApiKey::AddPartitionsToTxn), VERIFY_VERSION) => {
            AddPartitionsToTxnRequest::decode(&mut body, VERIFY_VERSION).map(PeerRequest::Verify)
        }
        _ => {
            debug!(
                api_key = call.api_key,
                api_version = call.api_version,
                "a peer's request of a kind not served here"
            );
            return None;
        }
    };
    decoded
        .inspect_err(|e| debug!(api_key = call.api_key, error = %e, "undecodable peer request"))
        .ok()
}

/// Serves a peer's request on this shard; the answer to send back (an empty body for a
/// request [`decode_request`] refuses).
pub async fn serve(shard: &Rc<Shard>, call: PeerCall) -> PeerCall {
    let answer = match decode_request(&call) {
        Some(PeerRequest::Markers(request)) => Some(encoded(
            &write_txn_markers(shard, request, None).await,
            MARKERS_VERSION,
        )),
        Some(PeerRequest::Verify(request)) => {
            Some(encoded(&serve_verify(shard, request).await, VERIFY_VERSION))
        }
        None => None,
    };
    PeerCall {
        id: call.id,
        answer: true,
        api_key: call.api_key,
        api_version: call.api_version,
        body: answer.unwrap_or_default(),
    }
}

/// WriteTxnMarkers answered by this node, for a peer's coordinator or a client (its handler):
/// each marker's partitions written here ([`crate::transactions::write_markers_here`]), or,
/// with `refused` (a client without CLUSTER_ACTION), each partition refused with that code.
pub async fn write_txn_markers(
    shard: &Rc<Shard>,
    request: WriteTxnMarkersRequest,
    refused: Option<ResponseError>,
) -> WriteTxnMarkersResponse {
    let mut results = Vec::with_capacity(request.markers.len());
    for marker in request.markers {
        let partitions: Vec<(String, i32)> = marker
            .topics
            .iter()
            .flat_map(|t| {
                let name = t.name.0.to_string();
                t.partition_indexes.iter().map(move |p| (name.clone(), *p))
            })
            .collect();
        let outcomes = match refused {
            Some(code) => partitions.into_iter().map(|tp| (tp, Some(code))).collect(),
            None => {
                crate::transactions::write_markers_here(
                    shard,
                    marker.producer_id.0,
                    marker.producer_epoch,
                    TxnMarker {
                        commit: marker.transaction_result,
                        coordinator_epoch: marker.coordinator_epoch,
                    },
                    partitions,
                )
                .await
            }
        };
        // One topic result per run of partitions of the same topic, in the order asked.
        let mut topics: Vec<WritableTxnMarkerTopicResult> = Vec::new();
        for ((topic, partition), code) in outcomes {
            let result = WritableTxnMarkerPartitionResult::default()
                .with_partition_index(partition)
                .with_error_code(code.map_or(0, |c| c.code()));
            match topics.last_mut() {
                Some(last) if last.name.0.as_str() == topic => last.partitions.push(result),
                _ => topics.push(
                    WritableTxnMarkerTopicResult::default()
                        .with_name(TopicName(StrBytes::from_string(topic)))
                        .with_partitions(vec![result]),
                ),
            }
        }
        results.push(
            WritableTxnMarkerResult::default()
                .with_producer_id(marker.producer_id)
                .with_topics(topics),
        );
    }
    WriteTxnMarkersResponse::default().with_markers(results)
}

async fn serve_verify(
    shard: &Rc<Shard>,
    request: AddPartitionsToTxnRequest,
) -> AddPartitionsToTxnResponse {
    let mut results = Vec::with_capacity(request.transactions.len());
    for txn in request.transactions {
        let mut topic_results = Vec::with_capacity(txn.topics.len());
        for topic in &txn.topics {
            let mut partitions = Vec::with_capacity(topic.partitions.len());
            for &partition in &topic.partitions {
                let code = if txn.verify_only {
                    crate::transactions::verify_here(
                        shard,
                        txn.transactional_id.0.to_string(),
                        txn.producer_id.0,
                        txn.producer_epoch,
                        topic.name.0.to_string(),
                        partition,
                    )
                    .await
                    .err()
                } else {
                    // Only verification travels between nodes; a client adds partitions
                    // through its own request.
                    Some(ResponseError::InvalidRequest)
                };
                partitions.push(
                    AddPartitionsToTxnPartitionResult::default()
                        .with_partition_index(partition)
                        .with_partition_error_code(code.map_or(0, |c| c.code())),
                );
            }
            topic_results.push(
                AddPartitionsToTxnTopicResult::default()
                    .with_name(topic.name.clone())
                    .with_results_by_partition(partitions),
            );
        }
        results.push(
            AddPartitionsToTxnResult::default()
                .with_transactional_id(txn.transactional_id)
                .with_topic_results(topic_results),
        );
    }
    AddPartitionsToTxnResponse::default().with_results_by_transaction(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(api_key: ApiKey, api_version: i16, body: Bytes) -> PeerCall {
        PeerCall {
            id: 1,
            answer: false,
            api_key: api_key as i16,
            api_version,
            body,
        }
    }

    fn marker_request() -> WriteTxnMarkersRequest {
        WriteTxnMarkersRequest::default().with_markers(vec![WritableTxnMarker::default()
            .with_producer_id(ProducerId(7))
            .with_coordinator_epoch(3)
            .with_topics(vec![WritableTxnMarkerTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partition_indexes(vec![2])])])
    }

    #[test]
    fn requests_of_the_kinds_served_decode_and_nothing_else_does() {
        let markers = encoded(&marker_request(), MARKERS_VERSION);
        match decode_request(&call(
            ApiKey::WriteTxnMarkers,
            MARKERS_VERSION,
            markers.clone(),
        )) {
            Some(PeerRequest::Markers(request)) => assert_eq!(request, marker_request()),
            other => panic!("{other:?}"),
        }
        let verify = AddPartitionsToTxnRequest::default().with_transactions(vec![
            AddPartitionsToTxnTransaction::default().with_verify_only(true),
        ]);
        assert!(matches!(
            decode_request(&call(
                ApiKey::AddPartitionsToTxn,
                VERIFY_VERSION,
                encoded(&verify, VERIFY_VERSION)
            )),
            Some(PeerRequest::Verify(_))
        ));
        // Another version, another kind, a truncated body: refused.
        assert!(decode_request(&call(ApiKey::WriteTxnMarkers, 0, markers.clone())).is_none());
        assert!(decode_request(&call(ApiKey::Produce, 9, markers.clone())).is_none());
        let truncated = markers.slice(..markers.len() - 3);
        assert!(
            decode_request(&call(ApiKey::WriteTxnMarkers, MARKERS_VERSION, truncated)).is_none()
        );
        // (Not arbitrary bytes: kafka-protocol sizes some vectors by the count it reads,
        // so 16 bytes of 0xff make it try to allocate hundreds of GB. Peers are trusted
        // nodes sending what this code encoded; see the stop's note.)
    }

    #[test]
    fn answers_that_say_nothing_are_no_answer() {
        // A written marker, a refused one, and the empty body of a peer that could not serve.
        let answer = |code: i16| {
            encoded(
                &WriteTxnMarkersResponse::default().with_markers(vec![
                    WritableTxnMarkerResult::default().with_topics(vec![
                        WritableTxnMarkerTopicResult::default().with_partitions(vec![
                            WritableTxnMarkerPartitionResult::default().with_error_code(code),
                        ]),
                    ]),
                ]),
                MARKERS_VERSION,
            )
        };
        assert_eq!(marker_outcome(answer(0)), Some(None));
        assert_eq!(
            marker_outcome(answer(ResponseError::InvalidProducerEpoch.code())),
            Some(Some(ResponseError::InvalidProducerEpoch))
        );
        assert_eq!(marker_outcome(Bytes::new()), None);
        assert_eq!(
            marker_outcome(encoded(
                &WriteTxnMarkersResponse::default(),
                MARKERS_VERSION
            )),
            None,
            "no partition named"
        );

        let verified = |code: i16| {
            encoded(
                &AddPartitionsToTxnResponse::default().with_results_by_transaction(vec![
                    AddPartitionsToTxnResult::default().with_topic_results(vec![
                        AddPartitionsToTxnTopicResult::default().with_results_by_partition(vec![
                            AddPartitionsToTxnPartitionResult::default()
                                .with_partition_error_code(code),
                        ]),
                    ]),
                ]),
                VERIFY_VERSION,
            )
        };
        assert_eq!(verify_outcome(Some(verified(0))), None);
        assert_eq!(
            verify_outcome(Some(verified(ResponseError::InvalidTxnState.code()))),
            Some(ResponseError::InvalidTxnState)
        );
        assert_eq!(
            verify_outcome(Some(encoded(
                &AddPartitionsToTxnResponse::default()
                    .with_error_code(ResponseError::ClusterAuthorizationFailed.code()),
                VERIFY_VERSION
            ))),
            Some(ResponseError::ClusterAuthorizationFailed),
            "a top-level error is the answer"
        );
        assert_eq!(verify_outcome(None), Some(ResponseError::NotCoordinator));
        assert_eq!(
            verify_outcome(Some(Bytes::new())),
            Some(ResponseError::NotCoordinator)
        );
    }
}
