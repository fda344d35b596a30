//! One client connection: read frames, decode their headers, dispatch to the API handlers,
//! write the responses back in request order (Kafka clients rely on that).
//!
//! Requests are pipelined: the reader keeps reading while earlier requests are being served,
//! each request runs as its own task, and the writer sends their responses in the order the
//! requests came. Produce requests also take effect in that order: each gets the next link of
//! the connection's [`ProduceChain`], so its appends land after the previous request's
//! (decoding, validation and durability waits still overlap). At most [`PIPELINE_DEPTH`]
//! requests of one connection are in progress; the reader waits beyond that (back-pressure).
//! A request task always runs to the end, even if the connection goes away, so an append is
//! never abandoned half-way.
//!
//! A frame that cannot be answered (bad length, truncated, unknown API key, unsupported version
//! of an API other than ApiVersions, undecodable body) closes this connection, after the
//! responses to the requests before it, with a log line; it touches nothing else.
//!
//! Every answered request is timed (frame read to response ready) in the shard's metrics under
//! its API; the connection counts as open there while it lives, and as failed if it ends on
//! an error (`sluice_core::metrics`).
//!
//! Each request with a decodable header also gets a span (`request_trace`), free unless
//! someone traces requests.
//!
//! On a SASL listener the reader authenticates the connection first ([`Auth`]): until then only
//! ApiVersions, SaslHandshake and SaslAuthenticate are served (anything else, or a frame above
//! `sasl::UNAUTHENTICATED_FRAME_BYTES_MAX`, closes the connection), SASL steps run one at a
//! time in the reader, and their answers join the response queue in order. A failed
//! authentication is answered (SASL_AUTHENTICATION_FAILED) and the connection closed. With a
//! session lifetime (KIP-368) the client re-authenticates on the same connection before the
//! session ends, as the same user; a request after the end closes the connection.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use futures::channel::oneshot;
use futures::future::Either;
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddPartitionsToTxnRequest, DescribeTransactionsRequest, EndTxnRequest,
    ListTransactionsRequest, TxnOffsetCommitRequest, WriteTxnMarkersRequest,
};
use kafka_protocol::messages::{
    AddRaftVoterRequest, AlterConfigsRequest, AlterPartitionReassignmentsRequest,
    AlterUserScramCredentialsRequest, ApiKey, ApiVersionsRequest, CreateAclsRequest,
    CreatePartitionsRequest, CreateTopicsRequest, DeleteAclsRequest, DeleteGroupsRequest,
    DeleteRecordsRequest, DeleteTopicsRequest, DescribeAclsRequest, DescribeClusterRequest,
    DescribeConfigsRequest, DescribeGroupsRequest, DescribeLogDirsRequest,
    DescribeProducersRequest, DescribeQuorumRequest, DescribeTopicPartitionsRequest,
    DescribeUserScramCredentialsRequest, ElectLeadersRequest, FetchRequest, FindCoordinatorRequest,
    GetTelemetrySubscriptionsRequest, HeartbeatRequest, IncrementalAlterConfigsRequest,
    InitProducerIdRequest, JoinGroupRequest, LeaveGroupRequest, ListConfigResourcesRequest,
    ListGroupsRequest, ListOffsetsRequest, ListPartitionReassignmentsRequest, MetadataRequest,
    OffsetCommitRequest, OffsetDeleteRequest, OffsetFetchRequest, OffsetForLeaderEpochRequest,
    ProduceRequest, PushTelemetryRequest, RemoveRaftVoterRequest, RequestHeader, ResponseHeader,
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
    SyncGroupRequest, UnregisterBrokerRequest,
};
use kafka_protocol::messages::{AlterClientQuotasRequest, DescribeClientQuotasRequest};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::protocol::{Decodable, Encodable};
use kafka_protocol::ResponseError;
use tracing::{debug, info, warn, Instrument};

use sluice_core::produce::{OrderLink, ProduceChain};

use crate::apis;
use crate::frame::{read_frame, FrameError};
use crate::handlers::{
    acls_api, alter_configs, api_versions, client_quotas, create_partitions, create_topics,
    delete_groups, delete_records, delete_topics, describe_cluster, describe_configs,
    describe_groups, describe_log_dirs, describe_producers, describe_quorum,
    describe_topic_partitions, elect_leaders, fetch, find_coordinator, get_telemetry_subscriptions,
    heartbeat, init_producer_id, join_group, leave_group, list_config_resources, list_groups,
    list_offsets, metadata, offset_commit, offset_delete, offset_fetch, offset_for_leader_epoch,
    partition_reassignments, produce, push_telemetry, raft_voters, sasl, scram_credentials,
    sync_group, txn, txn_tooling, unregister_broker, Context,
};
use crate::quota_meter::{self, Kind};
use crate::request_trace;
use crate::sasl::{SaslExchange, StepOutcome, UNAUTHENTICATED_FRAME_BYTES_MAX};

/// Requests of one connection in progress at once.
pub const PIPELINE_DEPTH: usize = 32;

/// Why a request ended its connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("request of {0} bytes is too short for a header")]
    ShortHeader(usize),
    #[error("unknown API key {0}")]
    UnknownApi(i16),
    #[error("{api:?} v{version} is not implemented")]
    UnsupportedVersion { api: ApiKey, version: i16 },
    #[error("cannot decode {api:?} v{version}: {reason}")]
    Malformed {
        api: ApiKey,
        version: i16,
        reason: String,
    },
    #[error("cannot encode the response: {0}")]
    Encode(String),
    #[error("the request's task ended without an answer")]
    Lost,
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Requests being answered on this shard (read, not yet written back): shutdown waits for
/// them.
pub type InFlight = Rc<Cell<usize>>;

/// Counts one request as in flight until dropped.
struct InFlightGuard(InFlight);

impl InFlightGuard {
    fn new(counter: &InFlight) -> InFlightGuard {
        counter.set(counter.get() + 1);
        InFlightGuard(counter.clone())
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

type Answer = Result<Option<Bytes>, RequestError>;

/// Serves one connection until the peer closes it or sends something unanswerable.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin + 'static>(
    stream: S,
    peer: String,
    ctx: Context,
    frame_bytes_max: usize,
    in_flight: InFlight,
) {
    let _open = ctx.shard.metrics.connection_opened();
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let (queue, answers) = glommio::channels::local_channel::new_bounded::<(
        InFlightGuard,
        oneshot::Receiver<Answer>,
    )>(PIPELINE_DEPTH);
    let read_loop = std::pin::pin!(async {
        // Owned here: the queue closes when the reader stops, which ends the writer's loop.
        let queue = queue;
        let mut produce_chain = ProduceChain::default();
        // The principal changes as the client authenticates (SASL).
        let mut connection_ctx = ctx.clone();
        let mut auth = if ctx.sasl.is_some() {
            Auth::AwaitingHandshake
        } else {
            Auth::NotRequired
        };
        let mut attempt = Attempt::default();
        loop {
            let frame_max = match auth {
                Auth::NotRequired | Auth::Authenticated { .. } => frame_bytes_max,
                _ => frame_bytes_max.min(UNAUTHENTICATED_FRAME_BYTES_MAX),
            };
            match read_frame(&mut reader, frame_max).await {
                Ok(Some(frame)) => {
                    if !matches!(auth, Auth::NotRequired) {
                        match authenticate(&mut auth, &mut attempt, &frame, &mut connection_ctx)
                            .await
                        {
                            Gate::Pass => {}
                            Gate::Answer { response, close } => {
                                let guard = InFlightGuard::new(&in_flight);
                                let (reply, answer) = oneshot::channel();
                                let _ = reply.send(Ok(Some(response)));
                                if queue.send((guard, answer)).await.is_err() {
                                    return;
                                }
                                if let Some(reason) = close {
                                    info!(%peer, listener = %ctx.listener, %reason, "SASL authentication failed; closing connection");
                                    attempt.audit_failure(&connection_ctx, &reason);
                                    ctx.shard.metrics.connection_failed();
                                    return;
                                }
                                continue;
                            }
                            Gate::Close(reason) => {
                                warn!(%peer, listener = %ctx.listener, %reason, "closing connection");
                                attempt.audit_failure(&connection_ctx, &reason);
                                ctx.shard.metrics.connection_failed();
                                return;
                            }
                        }
                    }
                    let guard = InFlightGuard::new(&in_flight);
                    let (reply, answer) = oneshot::channel();
                    let mut ctx = connection_ctx.clone();
                    ctx.api = frame
                        .get(..2)
                        .and_then(|k| ApiKey::try_from(i16::from_be_bytes([k[0], k[1]])).ok());
                    let is_produce = ctx.api == Some(ApiKey::Produce);
                    let link = if is_produce {
                        produce_chain.link()
                    } else {
                        OrderLink::unordered()
                    };
                    glommio::spawn_local(async move {
                        let started = std::time::Instant::now();
                        let api = frame.get(..2).map(|k| i16::from_be_bytes([k[0], k[1]]));
                        let answer = respond(frame, &ctx, link).await;
                        if let (Ok(_), Some(api)) = (&answer, api) {
                            ctx.shard.metrics.record_request(api, started.elapsed());
                        }
                        let _ = reply.send(answer);
                    })
                    .detach();
                    if queue.send((guard, answer)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => {
                    debug!(%peer, "connection closed by peer");
                    return;
                }
                Err(e) => {
                    warn!(%peer, error = %e, "closing connection");
                    ctx.shard.metrics.connection_failed();
                    return;
                }
            }
        }
    });
    let write_loop = std::pin::pin!(async {
        while let Some((_guard, answer)) = answers.recv().await {
            let written = match answer.await.unwrap_or(Err(RequestError::Lost)) {
                // The flush matters under TLS only (a no-op on glommio's plain stream): the TLS
                // stream may keep the end of a response in its buffer when the socket is busy,
                // and nothing else would push it out before the next response.
                Ok(Some(response)) => async {
                    writer.write_all(&response).await?;
                    writer.flush().await
                }
                .await
                .map_err(RequestError::Io),
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                warn!(%peer, error = %e, "closing connection");
                ctx.shard.metrics.connection_failed();
                break;
            }
        }
        let _ = writer.close().await;
    });
    if let Either::Left(((), write_loop)) = futures::future::select(read_loop, write_loop).await {
        // The reader stopped (peer closed, or a bad frame): answer what was read, then close.
        write_loop.await;
    }
}

/// Builds the complete response frame (length prefix included) for one request frame, or
/// `None` when the request takes no response (Produce with acks=0). A Produce request's
/// appends land after those of `link`'s previous request.
pub async fn respond(mut frame: Bytes, ctx: &Context, link: OrderLink) -> Answer {
    if frame.len() < 8 {
        return Err(RequestError::ShortHeader(frame.len()));
    }
    let request_bytes = frame.len();
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api = ApiKey::try_from(raw_key).map_err(|_| RequestError::UnknownApi(raw_key))?;
    let supported =
        apis::implemented(api).is_some_and(|r| (r.min_version..=r.max_version).contains(&version));
    if !supported {
        if api == ApiKey::ApiVersions {
            // KIP-511: answer in the v0 format, which every client can read.
            return encode(
                api,
                0,
                correlation_id,
                &api_versions::response(api_versions::UNSUPPORTED_VERSION),
            )
            .map(Some);
        }
        return Err(RequestError::UnsupportedVersion { api, version });
    }
    let header =
        RequestHeader::decode(&mut frame, api.request_header_version(version)).map_err(|e| {
            RequestError::Malformed {
                api,
                version,
                reason: e.to_string(),
            }
        })?;
    debug!(?api, version, correlation_id, client_id = ?header.client_id, "request");
    let span = request_trace::request_span(
        api,
        version,
        correlation_id,
        header.client_id.as_deref(),
        ctx.shard.id,
        request_bytes,
    );
    // Kafka's request quota: the throttle the client has earned with the shard time of its
    // earlier requests; this request's time is measured below and counts for the next ones.
    let request_quota = (api != ApiKey::ApiVersions)
        .then(|| ctx.quota(Kind::Request, client_id(&header)))
        .flatten();
    let throttle = match request_quota {
        Some(_) => ctx.quota_throttle(Kind::Request, client_id(&header), 0.0),
        None => std::time::Duration::ZERO,
    };
    let answering = async {
        if span.is_disabled() {
            return dispatch(api, version, &header, frame, ctx, link, &span, throttle).await;
        }
        let answer = dispatch(api, version, &header, frame, ctx, link, &span, throttle)
            .instrument(span.clone())
            .await;
        request_trace::record_outcome(&span, &answer);
        answer
    };
    let answer = match request_quota {
        None => answering.await,
        Some(_) => {
            let (answer, spent) = timed(answering).await;
            let spent = quota_meter::percent_seconds(spent);
            ctx.quota_throttle(Kind::Request, client_id(&header), spent);
            answer
        }
    };
    // Produce and Fetch waited out their throttle already (the larger of theirs and this).
    if !matches!(api, ApiKey::Produce | ApiKey::Fetch) && answer.is_ok() {
        throttled(throttle).await;
    }
    answer
}

/// Runs `work`, measuring the time this thread spent polling it (not the time it waited).
async fn timed<F: std::future::Future>(work: F) -> (F::Output, std::time::Duration) {
    let mut work = std::pin::pin!(work);
    let mut spent = std::time::Duration::ZERO;
    let output = std::future::poll_fn(|cx| {
        let polled = Instant::now();
        let poll = work.as_mut().poll(cx);
        spent += polled.elapsed();
        poll
    })
    .await;
    (output, spent)
}

/// Decodes the request body and answers it; `span` is the request's span (disabled unless
/// someone traces requests); `throttle` is the request quota's, answered in the response's
/// `throttle_time_ms`.
#[allow(clippy::too_many_arguments)]
async fn dispatch(
    api: ApiKey,
    version: i16,
    header: &RequestHeader,
    mut frame: Bytes,
    ctx: &Context,
    link: OrderLink,
    span: &tracing::Span,
    throttle: std::time::Duration,
) -> Answer {
    let correlation_id = header.correlation_id;
    match api {
        ApiKey::ApiVersions => {
            decode::<ApiVersionsRequest>(&mut frame, api, version)?;
            reply(
                throttle,
                api,
                version,
                correlation_id,
                &api_versions::response(0),
            )
            .map(Some)
        }
        ApiKey::Metadata => {
            let request = decode::<MetadataRequest>(&mut frame, api, version)?;
            reply(
                throttle,
                api,
                version,
                correlation_id,
                &metadata::handle(request, version, ctx).await,
            )
            .map(Some)
        }
        ApiKey::CreateTopics => {
            let request = decode::<CreateTopicsRequest>(&mut frame, api, version)?;
            reply(
                throttle,
                api,
                version,
                correlation_id,
                &create_topics::handle(request, ctx).await,
            )
            .map(Some)
        }
        ApiKey::DeleteTopics => {
            let request = decode::<DeleteTopicsRequest>(&mut frame, api, version)?;
            reply(
                throttle,
                api,
                version,
                correlation_id,
                &delete_topics::handle(request, version, ctx).await,
            )
            .map(Some)
        }
        ApiKey::CreatePartitions => {
            let request = decode::<CreatePartitionsRequest>(&mut frame, api, version)?;
            reply(
                throttle,
                api,
                version,
                correlation_id,
                &create_partitions::handle(request, ctx).await,
            )
            .map(Some)
        }
        ApiKey::DescribeConfigs => {
            let request = decode::<DescribeConfigsRequest>(&mut frame, api, version)?;
            reply(
                throttle,
                api,
                version,
                correlation_id,
                &describe_configs::handle(request, ctx),
            )
            .map(Some)
        }
        ApiKey::Produce => {
            let request = decode::<ProduceRequest>(&mut frame, api, version)?;
            request_trace::join_producer_traces(span, &request);
            let bytes: usize = request
                .topic_data
                .iter()
                .flat_map(|t| &t.partition_data)
                .filter_map(|p| p.records.as_ref().map(Bytes::len))
                .sum();
            let (response, outcome) = produce::handle(request, version, ctx, link).await;
            request_trace::record_partitions(span, outcome.partitions, outcome.first_error);
            let throttle = ctx
                .quota_throttle(Kind::Produce, client_id(header), bytes as f64)
                .max(throttle);
            match response {
                Some(mut response) => {
                    response.throttle_time_ms = throttled(throttle).await;
                    reply(throttle, api, version, correlation_id, &response).map(Some)
                }
                None => Ok(None),
            }
        }
        ApiKey::Fetch => {
            let request = decode::<FetchRequest>(&mut frame, api, version)?;
            let response = fetch::handle(request, version, ctx).await;
            if !span.is_disabled() {
                let partitions = response.responses.iter().flat_map(|t| &t.partitions);
                let first_error = partitions
                    .clone()
                    .map(|p| p.error_code)
                    .find(|&code| code != 0);
                request_trace::record_partitions(span, partitions.count(), first_error);
            }
            let bytes: usize = response
                .responses
                .iter()
                .flat_map(|t| &t.partitions)
                .filter_map(|p| p.records.as_ref().map(Bytes::len))
                .sum();
            let throttle = ctx
                .quota_throttle(Kind::Fetch, client_id(header), bytes as f64)
                .max(throttle);
            let mut response = response;
            response.throttle_time_ms = throttled(throttle).await;
            reply(throttle, api, version, correlation_id, &response).map(Some)
        }
        ApiKey::AddPartitionsToTxn => {
            let request = decode::<AddPartitionsToTxnRequest>(&mut frame, api, version)?;
            reply(
                throttle,
                api,
                version,
                correlation_id,
                &txn::add_partitions(request, ctx).await,
            )
            .map(Some)
        }
        ApiKey::AddOffsetsToTxn => {
            let request = decode::<AddOffsetsToTxnRequest>(&mut frame, api, version)?;
            reply(
                throttle,
                api,
                version,
                correlation_id,
                &txn::add_offsets(request, ctx).await,
            )
            .map(Some)
        }
        ApiKey::TxnOffsetCommit => {
            let request = decode::<TxnOffsetCommitRequest>(&mut frame, api, version)?;
            reply(
                throttle,
                api,
                version,
                correlation_id,
                &txn::commit_offsets(request, ctx).await,
            )
            .map(Some)
        }
        ApiKey::EndTxn => {
            let request = decode::<EndTxnRequest>(&mut frame, api, version)?;
            reply(
                throttle,
                api,
                version,
                correlation_id,
                &txn::end(request, ctx).await,
            )
            .map(Some)
        }
        ApiKey::WriteTxnMarkers => {
            let request = decode::<WriteTxnMarkersRequest>(&mut frame, api, version)?;
            reply(
                throttle,
                api,
                version,
                correlation_id,
                &txn_tooling::write_markers(request, ctx).await,
            )
            .map(Some)
        }
        ApiKey::DescribeTransactions => {
            let request = decode::<DescribeTransactionsRequest>(&mut frame, api, version)?;
            reply(
                throttle,
                api,
                version,
                correlation_id,
                &txn_tooling::describe(request, ctx).await,
            )
            .map(Some)
        }
        ApiKey::ListTransactions => {
            let request = decode::<ListTransactionsRequest>(&mut frame, api, version)?;
            reply(
                throttle,
                api,
                version,
                correlation_id,
                &txn_tooling::list(request, ctx).await,
            )
            .map(Some)
        }
        ApiKey::InitProducerId => {
            let request = decode::<InitProducerIdRequest>(&mut frame, api, version)?;
            reply(
                throttle,
                api,
                version,
                correlation_id,
                &init_producer_id::handle(request, ctx).await,
            )
            .map(Some)
        }
        ApiKey::DescribeProducers => {
            let request = decode::<DescribeProducersRequest>(&mut frame, api, version)?;
            reply(
                throttle,
                api,
                version,
                correlation_id,
                &describe_producers::handle(request, ctx).await,
            )
            .map(Some)
        }
        ApiKey::OffsetForLeaderEpoch => {
            let request = decode::<OffsetForLeaderEpochRequest>(&mut frame, api, version)?;
            reply(
                throttle,
                api,
                version,
                correlation_id,
                &offset_for_leader_epoch::handle(request, ctx).await,
            )
            .map(Some)
        }
        ApiKey::ListOffsets => {
            let request = decode::<ListOffsetsRequest>(&mut frame, api, version)?;
            reply(
                throttle,
                api,
                version,
                correlation_id,
                &list_offsets::handle(request, version, ctx).await,
            )
            .map(Some)
        }
        ApiKey::FindCoordinator => {
            let request = decode::<FindCoordinatorRequest>(&mut frame, api, version)?;
            let response = find_coordinator::handle(request, version, ctx);
            reply(throttle, api, version, correlation_id, &response).map(Some)
        }
        ApiKey::JoinGroup => {
            let request = decode::<JoinGroupRequest>(&mut frame, api, version)?;
            let client_id = header.client_id.as_ref().map_or("", |c| c.as_str());
            let response = join_group::handle(request, version, client_id, ctx).await;
            reply(throttle, api, version, correlation_id, &response).map(Some)
        }
        ApiKey::SyncGroup => {
            let request = decode::<SyncGroupRequest>(&mut frame, api, version)?;
            let response = sync_group::handle(request, ctx).await;
            reply(throttle, api, version, correlation_id, &response).map(Some)
        }
        ApiKey::Heartbeat => {
            let request = decode::<HeartbeatRequest>(&mut frame, api, version)?;
            let response = heartbeat::handle(request, ctx).await;
            reply(throttle, api, version, correlation_id, &response).map(Some)
        }
        ApiKey::LeaveGroup => {
            let request = decode::<LeaveGroupRequest>(&mut frame, api, version)?;
            let response = leave_group::handle(request, version, ctx).await;
            reply(throttle, api, version, correlation_id, &response).map(Some)
        }
        ApiKey::OffsetCommit => {
            let request = decode::<OffsetCommitRequest>(&mut frame, api, version)?;
            let response = offset_commit::handle(request, ctx).await;
            reply(throttle, api, version, correlation_id, &response).map(Some)
        }
        ApiKey::OffsetFetch => {
            let request = decode::<OffsetFetchRequest>(&mut frame, api, version)?;
            let response = offset_fetch::handle(request, version, ctx).await;
            reply(throttle, api, version, correlation_id, &response).map(Some)
        }
        ApiKey::ListGroups => {
            let request = decode::<ListGroupsRequest>(&mut frame, api, version)?;
            let response = list_groups::handle(request, ctx).await;
            reply(throttle, api, version, correlation_id, &response).map(Some)
        }
        ApiKey::DescribeGroups => {
            let request = decode::<DescribeGroupsRequest>(&mut frame, api, version)?;
            let response = describe_groups::handle(request, version, ctx).await;
            reply(throttle, api, version, correlation_id, &response).map(Some)
        }
        ApiKey::AlterConfigs => {
            let request = decode::<AlterConfigsRequest>(&mut frame, api, version)?;
            let response = alter_configs::handle(request, ctx).await;
            reply(throttle, api, version, correlation_id, &response).map(Some)
        }
        ApiKey::IncrementalAlterConfigs => {
            let request = decode::<IncrementalAlterConfigsRequest>(&mut frame, api, version)?;
            let response = alter_configs::handle_incremental(request, ctx).await;
            reply(throttle, api, version, correlation_id, &response).map(Some)
        }
        ApiKey::DeleteRecords => {
            let request = decode::<DeleteRecordsRequest>(&mut frame, api, version)?;
            let response = delete_records::handle(request, ctx).await;
            reply(throttle, api, version, correlation_id, &response).map(Some)
        }
        ApiKey::DeleteGroups => {
            let request = decode::<DeleteGroupsRequest>(&mut frame, api, version)?;
            let response = delete_groups::handle(request, ctx).await;
            reply(throttle, api, version, correlation_id, &response).map(Some)
        }
        ApiKey::OffsetDelete => {
            let request = decode::<OffsetDeleteRequest>(&mut frame, api, version)?;
            let response = offset_delete::handle(request, ctx).await;
            reply(throttle, api, version, correlation_id, &response).map(Some)
        }
        ApiKey::DescribeLogDirs => {
            let request = decode::<DescribeLogDirsRequest>(&mut frame, api, version)?;
            let response = describe_log_dirs::handle(request, version, ctx).await;
            reply(throttle, api, version, correlation_id, &response).map(Some)
        }
        ApiKey::AlterPartitionReassignments => {
            let request = decode::<AlterPartitionReassignmentsRequest>(&mut frame, api, version)?;
            let response = partition_reassignments::handle_alter(request, version, ctx).await;
            reply(throttle, api, version, correlation_id, &response).map(Some)
        }
        ApiKey::ListPartitionReassignments => {
            let request = decode::<ListPartitionReassignmentsRequest>(&mut frame, api, version)?;
            let response = partition_reassignments::handle_list(request, ctx);
            reply(throttle, api, version, correlation_id, &response).map(Some)
        }
        ApiKey::ElectLeaders => {
            let request = decode::<ElectLeadersRequest>(&mut frame, api, version)?;
            let response = elect_leaders::handle(request, version, ctx).await;
            reply(throttle, api, version, correlation_id, &response).map(Some)
        }
        ApiKey::AddRaftVoter => {
            let request = decode::<AddRaftVoterRequest>(&mut frame, api, version)?;
            let response = raft_voters::handle_add(request, ctx).await;
            reply(throttle, api, version, correlation_id, &response).map(Some)
        }
        ApiKey::RemoveRaftVoter => {
            let request = decode::<RemoveRaftVoterRequest>(&mut frame, api, version)?;
            let response = raft_voters::handle_remove(request, ctx).await;
            reply(throttle, api, version, correlation_id, &response).map(Some)
        }
        ApiKey::UnregisterBroker => {
            let request = decode::<UnregisterBrokerRequest>(&mut frame, api, version)?;
            let response = unregister_broker::handle(request, ctx).await;
            reply(throttle, api, version, correlation_id, &response).map(Some)
        }
        ApiKey::DescribeQuorum => {
            let request = decode::<DescribeQuorumRequest>(&mut frame, api, version)?;
            let response = describe_quorum::handle(request, version, ctx);
            reply(throttle, api, version, correlation_id, &response).map(Some)
        }
        ApiKey::DescribeCluster => {
            let request = decode::<DescribeClusterRequest>(&mut frame, api, version)?;
            let response = describe_cluster::handle(request, ctx);
            reply(throttle, api, version, correlation_id, &response).map(Some)
        }
        ApiKey::ListConfigResources => {
            let request = decode::<ListConfigResourcesRequest>(&mut frame, api, version)?;
            let response = list_config_resources::handle(request, version, ctx);
            reply(throttle, api, version, correlation_id, &response).map(Some)
        }
        ApiKey::GetTelemetrySubscriptions => {
            let request = decode::<GetTelemetrySubscriptionsRequest>(&mut frame, api, version)?;
            let response = get_telemetry_subscriptions::handle(request, ctx);
            reply(throttle, api, version, correlation_id, &response).map(Some)
        }
        ApiKey::PushTelemetry => {
            let request = decode::<PushTelemetryRequest>(&mut frame, api, version)?;
            let client_id = header.client_id.as_ref().map_or("", |c| c.as_str());
            let response = push_telemetry::handle(request, client_id, ctx);
            reply(throttle, api, version, correlation_id, &response).map(Some)
        }
        ApiKey::DescribeTopicPartitions => {
            let request = decode::<DescribeTopicPartitionsRequest>(&mut frame, api, version)?;
            let response = describe_topic_partitions::handle(request, ctx);
            reply(throttle, api, version, correlation_id, &response).map(Some)
        }
        ApiKey::SaslHandshake => {
            decode::<SaslHandshakeRequest>(&mut frame, api, version)?;
            let offered = ctx
                .sasl
                .as_ref()
                .map(|s| s.mechanism_names())
                .unwrap_or_default();
            let response = sasl::handshake_refused(&offered);
            reply(throttle, api, version, correlation_id, &response).map(Some)
        }
        ApiKey::SaslAuthenticate => {
            decode::<SaslAuthenticateRequest>(&mut frame, api, version)?;
            let reason = if ctx.sasl.is_some() {
                "SaslAuthenticate request received after successful authentication"
            } else {
                "this listener does not use SASL"
            };
            let response = sasl::authenticate_refused(reason);
            reply(throttle, api, version, correlation_id, &response).map(Some)
        }
        ApiKey::DescribeClientQuotas => {
            let request = decode::<DescribeClientQuotasRequest>(&mut frame, api, version)?;
            let response = client_quotas::describe(request, ctx);
            reply(throttle, api, version, correlation_id, &response).map(Some)
        }
        ApiKey::AlterClientQuotas => {
            let request = decode::<AlterClientQuotasRequest>(&mut frame, api, version)?;
            let response = client_quotas::alter(request, ctx).await;
            reply(throttle, api, version, correlation_id, &response).map(Some)
        }
        ApiKey::CreateAcls => {
            let request = decode::<CreateAclsRequest>(&mut frame, api, version)?;
            let response = acls_api::create(request, ctx).await;
            reply(throttle, api, version, correlation_id, &response).map(Some)
        }
        ApiKey::DescribeAcls => {
            let request = decode::<DescribeAclsRequest>(&mut frame, api, version)?;
            let response = acls_api::describe(request, ctx);
            reply(throttle, api, version, correlation_id, &response).map(Some)
        }
        ApiKey::DeleteAcls => {
            let request = decode::<DeleteAclsRequest>(&mut frame, api, version)?;
            let response = acls_api::delete(request, ctx).await;
            reply(throttle, api, version, correlation_id, &response).map(Some)
        }
        ApiKey::DescribeUserScramCredentials => {
            let request = decode::<DescribeUserScramCredentialsRequest>(&mut frame, api, version)?;
            let response = scram_credentials::describe(request, ctx);
            reply(throttle, api, version, correlation_id, &response).map(Some)
        }
        ApiKey::AlterUserScramCredentials => {
            let request = decode::<AlterUserScramCredentialsRequest>(&mut frame, api, version)?;
            let response = scram_credentials::alter(request, ctx).await;
            reply(throttle, api, version, correlation_id, &response).map(Some)
        }
        _ => Err(RequestError::UnsupportedVersion { api, version }),
    }
}

/// The request's client id ("" when none).
fn client_id(header: &RequestHeader) -> &str {
    header.client_id.as_ref().map_or("", |c| c.as_str())
}

/// Waits out a quota throttle (Kafka's pacing of a client over its quota) and answers it as
/// the response's `throttle_time_ms`.
async fn throttled(throttle: std::time::Duration) -> i32 {
    if throttle.is_zero() {
        return 0;
    }
    glommio::timer::sleep(throttle).await;
    i32::try_from(throttle.as_millis()).unwrap_or(i32::MAX)
}

/// What the audit trail says of a SASL attempt that fails: the mechanism asked for and the
/// user the client's first token named (unverified).
#[derive(Default)]
struct Attempt {
    mechanism: Option<String>,
    user: Option<String>,
}

impl Attempt {
    fn audit_failure(&self, ctx: &Context, reason: &str) {
        let mut detail: Vec<(&str, serde_json::Value)> = vec![("reason", reason.into())];
        if let Some(user) = &self.user {
            detail.push(("user", user.as_str().into()));
        }
        let mechanism = self.mechanism.as_deref().unwrap_or("SASL");
        ctx.audit_authentication_with(false, mechanism, detail);
    }

    /// Notes the user an exchange's first token names.
    fn first_token(&mut self, mechanism: crate::sasl::SaslMechanism, token: &[u8]) {
        if self.user.is_none() {
            self.user = crate::sasl::claimed_user(mechanism, token);
        }
    }
}

/// Where a connection on a SASL listener stands.
enum Auth {
    /// Not a SASL listener: every request is served.
    NotRequired,
    /// Nothing but ApiVersions and SaslHandshake yet.
    AwaitingHandshake,
    /// A mechanism was chosen; SaslAuthenticate carries its tokens. `reauth_of`: the user of
    /// the session being renewed (KIP-368), who must stay the same.
    Exchanging {
        exchange: SaslExchange,
        reauth_of: Option<String>,
        /// After a v0 handshake: tokens are bare frames, answered as bare frames.
        bare_tokens: bool,
    },
    /// Authenticated as `user` until `expires` (never when `None`).
    Authenticated {
        user: String,
        expires: Option<Instant>,
    },
    /// Between two states while a step runs.
    Stepping,
}

/// What the authentication gate does with one frame.
enum Gate {
    /// Served as any request.
    Pass,
    /// Answered here; with `close`, the connection then closes for that reason.
    Answer {
        response: Bytes,
        close: Option<String>,
    },
    /// Not answerable: the connection closes.
    Close(String),
}

/// The principal of a SASL user, as Kafka names it.
const USER_PRINCIPAL_PREFIX: &str = "User:";

/// Runs one frame of a SASL listener's connection through its authentication state: the SASL
/// requests are answered here, others pass once the connection has authenticated.
async fn authenticate(
    auth: &mut Auth,
    attempt: &mut Attempt,
    frame: &Bytes,
    ctx: &mut Context,
) -> Gate {
    let Some(sasl) = ctx.sasl.clone() else {
        return Gate::Pass;
    };
    if let Auth::Exchanging {
        bare_tokens: true, ..
    } = auth
    {
        let Auth::Exchanging {
            exchange,
            reauth_of,
            ..
        } = std::mem::replace(auth, Auth::Stepping)
        else {
            unreachable!("matched above")
        };
        attempt.first_token(exchange.mechanism, frame);
        return bare_token_step(auth, exchange, reauth_of, frame, ctx, &sasl).await;
    }
    let api = frame
        .get(..2)
        .and_then(|k| ApiKey::try_from(i16::from_be_bytes([k[0], k[1]])).ok());
    let now = Instant::now();
    match (&*auth, api) {
        (Auth::Authenticated { expires, .. }, Some(api))
            if api != ApiKey::SaslHandshake && expires.is_some_and(|e| now >= e) =>
        {
            return Gate::Close(format!(
                "{api:?} after the SASL session ended: the client did not re-authenticate in time"
            ));
        }
        (Auth::Authenticated { .. } | Auth::NotRequired, _)
            if api != Some(ApiKey::SaslHandshake) =>
        {
            return Gate::Pass;
        }
        (Auth::AwaitingHandshake, Some(ApiKey::ApiVersions)) => return Gate::Pass,
        _ => {}
    }
    let Some(api) = api else {
        return Gate::Close("a request before SASL authentication".into());
    };
    let (version, header, mut body) = match split_request(frame.clone(), api) {
        Ok(parts) => parts,
        Err(e) => return Gate::Close(e.to_string()),
    };
    let correlation_id = header.correlation_id;
    let answer = |response: Result<Bytes, RequestError>, close: Option<String>| match response {
        Ok(response) => Gate::Answer { response, close },
        Err(e) => Gate::Close(e.to_string()),
    };
    match (std::mem::replace(auth, Auth::Stepping), api) {
        (state @ (Auth::AwaitingHandshake | Auth::Authenticated { .. }), ApiKey::SaslHandshake) => {
            let request = match decode::<SaslHandshakeRequest>(&mut body, api, version) {
                Ok(r) => r,
                Err(e) => return Gate::Close(e.to_string()),
            };
            let reauth_of = match state {
                Auth::Authenticated { user, .. } => Some(user),
                _ => None,
            };
            *attempt = Attempt {
                mechanism: Some(request.mechanism.to_string()),
                user: None,
            };
            let offered: Vec<StrBytes> = sasl
                .mechanism_names()
                .into_iter()
                .map(StrBytes::from_static_str)
                .collect();
            let response = SaslHandshakeResponse::default().with_mechanisms(offered);
            match sasl.start(request.mechanism.as_str()) {
                Some(exchange) => {
                    *auth = Auth::Exchanging {
                        exchange,
                        reauth_of,
                        bare_tokens: version == 0,
                    };
                    answer(encode(api, version, correlation_id, &response), None)
                }
                None => answer(
                    encode(
                        api,
                        version,
                        correlation_id,
                        &response.with_error_code(ResponseError::UnsupportedSaslMechanism.code()),
                    ),
                    Some(format!(
                        "the client asked for SASL mechanism {:?}, which this listener does not offer",
                        request.mechanism.as_str()
                    )),
                ),
            }
        }
        (
            Auth::Exchanging {
                exchange,
                reauth_of,
                ..
            },
            ApiKey::SaslAuthenticate,
        ) => {
            let request = match decode::<SaslAuthenticateRequest>(&mut body, api, version) {
                Ok(r) => r,
                Err(e) => return Gate::Close(e.to_string()),
            };
            let mechanism = exchange.mechanism;
            attempt.first_token(mechanism, &request.auth_bytes);
            let (exchange, outcome) = exchange.step(request.auth_bytes.to_vec()).await;
            let failed = |message: String| {
                let response = SaslAuthenticateResponse::default()
                    .with_error_code(ResponseError::SaslAuthenticationFailed.code())
                    .with_error_message(Some(StrBytes::from(message.clone())));
                answer(
                    encode(api, version, correlation_id, &response),
                    Some(message),
                )
            };
            match outcome {
                StepOutcome::Continue(bytes) => {
                    *auth = Auth::Exchanging {
                        exchange: exchange.expect("a running exchange comes back"),
                        reauth_of,
                        bare_tokens: false,
                    };
                    let response =
                        SaslAuthenticateResponse::default().with_auth_bytes(Bytes::from(bytes));
                    answer(encode(api, version, correlation_id, &response), None)
                }
                StepOutcome::Failed(message) => failed(message),
                StepOutcome::Authenticated { user, .. }
                    if reauth_of.as_ref().is_some_and(|previous| *previous != user) =>
                {
                    failed(format!(
                        "re-authentication as {user} on a connection of {}: a connection keeps its principal",
                        reauth_of.unwrap_or_default()
                    ))
                }
                StepOutcome::Authenticated { user, last } => {
                    let lifetime = sasl.settings.session_lifetime;
                    authenticated(auth, ctx, user, mechanism.name(), reauth_of.is_some(), lifetime.map(|l| now + l));
                    let mut response =
                        SaslAuthenticateResponse::default().with_auth_bytes(Bytes::from(last));
                    if version >= 1 {
                        // KIP-368: the client re-authenticates before this many ms have passed.
                        response.session_lifetime_ms =
                            lifetime.map_or(0, |l| l.as_millis().try_into().unwrap_or(i64::MAX));
                    }
                    answer(encode(api, version, correlation_id, &response), None)
                }
            }
        }
        (Auth::AwaitingHandshake, ApiKey::SaslAuthenticate) => {
            let response = sasl::authenticate_refused("SaslAuthenticate before SaslHandshake");
            answer(
                encode(api, version, correlation_id, &response),
                Some("SaslAuthenticate before SaslHandshake".into()),
            )
        }
        (Auth::Exchanging { .. }, api) => {
            Gate::Close(format!("{api:?} during SASL authentication"))
        }
        (_, api) => Gate::Close(format!("{api:?} before SASL authentication")),
    }
}

/// The connection authenticated as `user`: its principal from now on.
fn authenticated(
    auth: &mut Auth,
    ctx: &mut Context,
    user: String,
    mechanism: &str,
    renewed: bool,
    expires: Option<Instant>,
) {
    info!(client = %ctx.client_host, listener = %ctx.listener, %user, mechanism, renewed,
        "SASL client authenticated");
    ctx.principal = Rc::from(format!("{USER_PRINCIPAL_PREFIX}{user}"));
    ctx.audit_authentication(true, mechanism, [("reauthentication", renewed.into())]);
    *auth = Auth::Authenticated { user, expires };
}

/// One token of an exchange begun with SaslHandshake v0: the frame is the token, the answer a
/// bare length-prefixed token; a failure closes the connection without an answer, as Kafka does.
async fn bare_token_step(
    auth: &mut Auth,
    exchange: SaslExchange,
    reauth_of: Option<String>,
    frame: &Bytes,
    ctx: &mut Context,
    sasl: &crate::sasl::SaslServer,
) -> Gate {
    let mechanism = exchange.mechanism;
    let (exchange, outcome) = exchange.step(frame.to_vec()).await;
    let bare = |token: Vec<u8>| {
        let mut out = BytesMut::with_capacity(4 + token.len());
        out.put_u32(token.len() as u32);
        out.put_slice(&token);
        out.freeze()
    };
    match outcome {
        StepOutcome::Continue(token) => {
            *auth = Auth::Exchanging {
                exchange: exchange.expect("a running exchange comes back"),
                reauth_of,
                bare_tokens: true,
            };
            Gate::Answer {
                response: bare(token),
                close: None,
            }
        }
        StepOutcome::Failed(message) => Gate::Close(message),
        StepOutcome::Authenticated { user, .. }
            if reauth_of.as_ref().is_some_and(|previous| *previous != user) =>
        {
            Gate::Close(format!("re-authentication as {user} changes the principal"))
        }
        StepOutcome::Authenticated { user, last } => {
            let expires = sasl.settings.session_lifetime.map(|l| Instant::now() + l);
            authenticated(
                auth,
                ctx,
                user,
                mechanism.name(),
                reauth_of.is_some(),
                expires,
            );
            Gate::Answer {
                response: bare(last),
                close: None,
            }
        }
    }
}

/// A request frame's version, header and body, for an API this broker serves at that version.
fn split_request(
    mut frame: Bytes,
    api: ApiKey,
) -> Result<(i16, RequestHeader, Bytes), RequestError> {
    if frame.len() < 8 {
        return Err(RequestError::ShortHeader(frame.len()));
    }
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let supported =
        apis::implemented(api).is_some_and(|r| (r.min_version..=r.max_version).contains(&version));
    if !supported {
        return Err(RequestError::UnsupportedVersion { api, version });
    }
    let header =
        RequestHeader::decode(&mut frame, api.request_header_version(version)).map_err(|e| {
            RequestError::Malformed {
                api,
                version,
                reason: e.to_string(),
            }
        })?;
    Ok((version, header, frame))
}

/// Decodes a request body. Bytes after it are ignored, as Kafka does.
fn decode<R: Decodable>(frame: &mut Bytes, api: ApiKey, version: i16) -> Result<R, RequestError> {
    R::decode(frame, version).map_err(|e| RequestError::Malformed {
        api,
        version,
        reason: e.to_string(),
    })
}

/// Encodes a handler's response, with the request quota's `throttle` (when larger than what
/// the handler set) as its `throttle_time_ms`.
fn reply<R: Encodable + Clone + ThrottleTime>(
    throttle: std::time::Duration,
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &R,
) -> Result<Bytes, RequestError> {
    let ms = i32::try_from(throttle.as_millis()).unwrap_or(i32::MAX);
    if ms == 0 || body.throttle_time_ms().is_none_or(|set| set >= ms) {
        return encode(api, version, correlation_id, body);
    }
    let mut throttled = body.clone();
    throttled.set_throttle_time_ms(ms);
    encode(api, version, correlation_id, &throttled)
}

/// A response's `throttle_time_ms`, for the responses that have one.
trait ThrottleTime {
    fn throttle_time_ms(&self) -> Option<i32>;
    fn set_throttle_time_ms(&mut self, ms: i32);
}

macro_rules! throttle_time {
    ($($response:ty),* $(,)?) => {$(
        impl ThrottleTime for $response {
            fn throttle_time_ms(&self) -> Option<i32> {
                Some(self.throttle_time_ms)
            }
            fn set_throttle_time_ms(&mut self, ms: i32) {
                self.throttle_time_ms = ms;
            }
        }
    )*};
}

throttle_time!(
    kafka_protocol::messages::ApiVersionsResponse,
    kafka_protocol::messages::MetadataResponse,
    kafka_protocol::messages::CreateTopicsResponse,
    kafka_protocol::messages::DeleteTopicsResponse,
    kafka_protocol::messages::CreatePartitionsResponse,
    kafka_protocol::messages::DescribeConfigsResponse,
    kafka_protocol::messages::AlterConfigsResponse,
    kafka_protocol::messages::IncrementalAlterConfigsResponse,
    kafka_protocol::messages::ProduceResponse,
    kafka_protocol::messages::FetchResponse,
    kafka_protocol::messages::InitProducerIdResponse,
    kafka_protocol::messages::AddPartitionsToTxnResponse,
    kafka_protocol::messages::EndTxnResponse,
    kafka_protocol::messages::AddOffsetsToTxnResponse,
    kafka_protocol::messages::TxnOffsetCommitResponse,
    kafka_protocol::messages::OffsetForLeaderEpochResponse,
    kafka_protocol::messages::DescribeProducersResponse,
    kafka_protocol::messages::DescribeTransactionsResponse,
    kafka_protocol::messages::ListTransactionsResponse,
    kafka_protocol::messages::ListOffsetsResponse,
    kafka_protocol::messages::FindCoordinatorResponse,
    kafka_protocol::messages::JoinGroupResponse,
    kafka_protocol::messages::SyncGroupResponse,
    kafka_protocol::messages::HeartbeatResponse,
    kafka_protocol::messages::LeaveGroupResponse,
    kafka_protocol::messages::OffsetCommitResponse,
    kafka_protocol::messages::OffsetFetchResponse,
    kafka_protocol::messages::DescribeGroupsResponse,
    kafka_protocol::messages::ListGroupsResponse,
    kafka_protocol::messages::DeleteGroupsResponse,
    kafka_protocol::messages::OffsetDeleteResponse,
    kafka_protocol::messages::DeleteRecordsResponse,
    kafka_protocol::messages::DescribeLogDirsResponse,
    kafka_protocol::messages::DescribeClusterResponse,
    kafka_protocol::messages::ElectLeadersResponse,
    kafka_protocol::messages::AlterPartitionReassignmentsResponse,
    kafka_protocol::messages::ListPartitionReassignmentsResponse,
    kafka_protocol::messages::DescribeTopicPartitionsResponse,
    kafka_protocol::messages::DescribeAclsResponse,
    kafka_protocol::messages::CreateAclsResponse,
    kafka_protocol::messages::DeleteAclsResponse,
    kafka_protocol::messages::DescribeClientQuotasResponse,
    kafka_protocol::messages::AlterClientQuotasResponse,
    kafka_protocol::messages::DescribeUserScramCredentialsResponse,
    kafka_protocol::messages::AlterUserScramCredentialsResponse,
    kafka_protocol::messages::GetTelemetrySubscriptionsResponse,
    kafka_protocol::messages::PushTelemetryResponse,
    kafka_protocol::messages::ListConfigResourcesResponse,
    kafka_protocol::messages::UnregisterBrokerResponse,
    kafka_protocol::messages::AddRaftVoterResponse,
    kafka_protocol::messages::RemoveRaftVoterResponse,
);

/// The SASL, DescribeQuorum and WriteTxnMarkers responses have no `throttle_time_ms`.
macro_rules! no_throttle_time {
    ($($response:ty),* $(,)?) => {$(
        impl ThrottleTime for $response {
            fn throttle_time_ms(&self) -> Option<i32> {
                None
            }
            fn set_throttle_time_ms(&mut self, _: i32) {}
        }
    )*};
}

no_throttle_time!(
    SaslHandshakeResponse,
    SaslAuthenticateResponse,
    kafka_protocol::messages::DescribeQuorumResponse,
    kafka_protocol::messages::WriteTxnMarkersResponse,
);

/// Encodes `[length][response header][body]`.
fn encode<R: Encodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &R,
) -> Result<Bytes, RequestError> {
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let header_version = api.response_header_version(version);
    // Sized up front: grown by doubling, a response of thousands of partitions was copied
    // again at every step, each time into freshly faulted pages.
    let size = header
        .compute_size(header_version)
        .and_then(|h| Ok(h + body.compute_size(version)?))
        .map_err(|e| RequestError::Encode(e.to_string()))?;
    let mut out = BytesMut::with_capacity(4 + size);
    out.put_i32(0); // length, patched below
    header
        .encode(&mut out, header_version)
        .map_err(|e| RequestError::Encode(e.to_string()))?;
    body.encode(&mut out, version)
        .map_err(|e| RequestError::Encode(e.to_string()))?;
    debug_assert_eq!(out.len(), 4 + size, "{api:?} v{version}: computed size");
    let length = i32::try_from(out.len() - 4)
        .map_err(|_| RequestError::Encode("response too large".into()))?;
    out[..4].copy_from_slice(&length.to_be_bytes());
    Ok(out.freeze())
}
