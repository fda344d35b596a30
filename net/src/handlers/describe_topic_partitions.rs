//! DescribeTopicPartitions (key 75, KIP-966): topics with their partitions, paginated. Topics are
//! answered in name order (all of them when the request names none), starting at the request's
//! cursor; at most `response_partition_limit` partitions (capped at
//! [`PARTITIONS_PER_RESPONSE_MAX`], Kafka's `max.request.partition.size.limit`) per response,
//! and `next_cursor` names where the next page starts. (A cursor naming a topic outside the
//! request starts at the next requested name after it; Kafka refuses it as INVALID_REQUEST.) This broker leads every partition at
//! epoch 0; eligible leader replicas (ELR) are not kept, so they are answered as none.

use std::collections::BTreeSet;

use kafka_protocol::messages::describe_topic_partitions_response::{
    Cursor, DescribeTopicPartitionsResponsePartition, DescribeTopicPartitionsResponseTopic,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, DescribeTopicPartitionsRequest, DescribeTopicPartitionsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use sluice_core::topics::validate_topic_name;
use sluice_core::ResponseError;

use crate::apis::ApiRange;
use crate::authorized;
use crate::handlers::Context;
use sluice_core::acls::{Operation, ResourceType};

pub const RANGE: ApiRange = ApiRange {
    key: ApiKey::DescribeTopicPartitions,
    min_version: 0,
    max_version: 0,
};

/// The most partitions one response carries (Kafka's `max.request.partition.size.limit`).
pub const PARTITIONS_PER_RESPONSE_MAX: i32 = 2000;

pub fn handle(
    request: DescribeTopicPartitionsRequest,
    ctx: &Context,
) -> DescribeTopicPartitionsResponse {
    let image = ctx.shard.image();
    let node = BrokerId(ctx.broker.node_id);
    // Topics the principal may not DESCRIBE are left out of "every topic" and answered
    // TOPIC_AUTHORIZATION_FAILED when named.
    let names: BTreeSet<String> = if request.topics.is_empty() {
        image
            .topics()
            .filter(|t| ctx.allows_unaudited(Operation::DESCRIBE, ResourceType::Topic, &t.name))
            .map(|t| t.name.clone())
            .collect()
    } else {
        request
            .topics
            .iter()
            .map(|t| t.name.0.to_string())
            .collect()
    };
    let (first_topic, mut first_partition) = match &request.cursor {
        Some(c) => (Some(c.topic_name.0.to_string()), c.partition_index.max(0)),
        None => (None, 0),
    };
    let mut budget = request
        .response_partition_limit
        .clamp(1, PARTITIONS_PER_RESPONSE_MAX);
    let mut topics = Vec::new();
    let mut next_cursor = None;
    let mut remaining = names
        .iter()
        .filter(|n| first_topic.as_ref().is_none_or(|first| *n >= first))
        .peekable();
    while let Some(name) = remaining.next() {
        let from = if first_topic.as_ref() == Some(name) {
            std::mem::take(&mut first_partition)
        } else {
            0
        };
        if !ctx.allows_topic(Operation::DESCRIBE, name) {
            topics.push(
                DescribeTopicPartitionsResponseTopic::default()
                    .with_error_code(ResponseError::TopicAuthorizationFailed.code())
                    .with_name(Some(topic_name(name)))
                    .with_topic_authorized_operations(0),
            );
            continue;
        }
        let Some(topic) = image.topic(name) else {
            let code = if validate_topic_name(name).is_err() {
                ResponseError::InvalidTopicException
            } else {
                ResponseError::UnknownTopicOrPartition
            };
            topics.push(
                DescribeTopicPartitionsResponseTopic::default()
                    .with_error_code(code.code())
                    .with_name(Some(topic_name(name)))
                    .with_topic_authorized_operations(authorized::TOPIC),
            );
            continue;
        };
        let to = topic.partitions.min(from.saturating_add(budget));
        let partitions: Vec<_> = (from..to)
            .map(|p| {
                DescribeTopicPartitionsResponsePartition::default()
                    .with_partition_index(p)
                    .with_leader_id(node)
                    .with_leader_epoch(sluice_core::partition::LEADER_EPOCH.0)
                    .with_replica_nodes(vec![node])
                    .with_isr_nodes(vec![node])
                    .with_eligible_leader_replicas(Some(Vec::new()))
                    .with_last_known_elr(Some(Vec::new()))
            })
            .collect();
        budget -= to.saturating_sub(from).max(0);
        topics.push(
            DescribeTopicPartitionsResponseTopic::default()
                .with_name(Some(topic_name(name)))
                .with_topic_id(topic.id)
                .with_is_internal(topic.name == sluice_core::groups::OFFSETS_TOPIC)
                .with_partitions(partitions)
                .with_topic_authorized_operations(authorized::for_resource(
                    ctx,
                    true,
                    authorized::TOPIC,
                    ResourceType::Topic,
                    name,
                )),
        );
        if to < topic.partitions {
            next_cursor = Some(cursor(name, to));
            break;
        }
        if budget == 0 {
            next_cursor = remaining.peek().map(|next| cursor(next, 0));
            break;
        }
    }
    DescribeTopicPartitionsResponse::default()
        .with_topics(topics)
        .with_next_cursor(next_cursor)
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

fn cursor(name: &str, partition: i32) -> Cursor {
    Cursor::default()
        .with_topic_name(topic_name(name))
        .with_partition_index(partition)
}
