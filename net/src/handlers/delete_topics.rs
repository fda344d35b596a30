//! DeleteTopics (key 20): by name (v1–5) or by name or topic id (v6).

use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{ApiKey, DeleteTopicsRequest, DeleteTopicsResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use sluice_core::acls::Operation;
use sluice_core::{controller, ResponseError, TopicRef};

use crate::apis::ApiRange;
use crate::handlers::{audit_outcome, for_allowed, unauthorized, Context};

pub const RANGE: ApiRange = ApiRange {
    key: ApiKey::DeleteTopics,
    min_version: 1,
    max_version: 6,
};

pub async fn handle(
    request: DeleteTopicsRequest,
    version: i16,
    ctx: &Context,
) -> DeleteTopicsResponse {
    let refs: Vec<TopicRef> = if version >= 6 {
        request
            .topics
            .into_iter()
            .map(|t| match t.name {
                Some(name) => TopicRef::Name(name.0.to_string()),
                None => TopicRef::Id(t.topic_id),
            })
            .collect()
    } else {
        request
            .topic_names
            .into_iter()
            .map(|n| TopicRef::Name(n.0.to_string()))
            .collect()
    };
    // Deleting takes DELETE on the topic (an unknown id is left to the controller's answer).
    let image = ctx.shard.image();
    let results = for_allowed(
        refs.clone(),
        |r| match sluice_core::resolve_topic(&image, r) {
            Some(t) => ctx.allows_topic(Operation::DELETE, &t.name),
            None => match r {
                TopicRef::Name(n) => ctx.allows_topic(Operation::DELETE, n),
                TopicRef::Id(_) => true,
            },
        },
        || Err(unauthorized(ResponseError::TopicAuthorizationFailed)),
        |allowed| controller::delete_topics(&ctx.shard, allowed),
    )
    .await;
    for (asked, result) in refs.iter().zip(&results) {
        let (name, error) = match (asked, result) {
            (_, Ok((name, _))) => (name.clone(), (0, None)),
            (TopicRef::Name(name), Err(e)) => (name.clone(), audit_outcome(Some(e))),
            (TopicRef::Id(id), Err(e)) => (id.to_string(), audit_outcome(Some(e))),
        };
        ctx.audit_change("TOPIC", &name, error, serde_json::json!({}));
    }
    let responses = refs
        .into_iter()
        .zip(results)
        .map(|(asked, result)| match result {
            Ok((name, id)) => DeletableTopicResult::default()
                .with_name(Some(TopicName(StrBytes::from_string(name))))
                .with_topic_id(id),
            Err(e) => {
                let base = DeletableTopicResult::default()
                    .with_error_code(e.code.code())
                    .with_error_message(Some(StrBytes::from_string(e.message)));
                match asked {
                    TopicRef::Name(name) => {
                        base.with_name(Some(TopicName(StrBytes::from_string(name))))
                    }
                    TopicRef::Id(id) => base.with_topic_id(id),
                }
            }
        })
        .collect();
    DeleteTopicsResponse::default().with_responses(responses)
}
