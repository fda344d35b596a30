//! DescribeProducers (key 61, KIP-664): each asked partition's active idempotent producers as
//! its leader knows them (`kafka-transactions.sh describe-producers`, admin clients'
//! `describe_producers`). Takes READ on the topic, as Kafka's does. A producer's coordinator
//! epoch is that of its last transaction marker on the partition, its open transaction's first
//! offset that of its first batch in the transaction (-1 for none). See
//! `sluice_core::producers::describe_producers`.

use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::{
    ApiKey, DescribeProducersRequest, DescribeProducersResponse, ProducerId,
};
use sluice_core::producers::{self, ProducersAnswer, ProducersQuery};

use crate::apis::ApiRange;
use crate::handlers::{for_allowed, Context};
use sluice_core::acls::Operation;
use sluice_core::ResponseError;

pub const RANGE: ApiRange = ApiRange {
    key: ApiKey::DescribeProducers,
    min_version: 0,
    max_version: 0,
};

pub async fn handle(request: DescribeProducersRequest, ctx: &Context) -> DescribeProducersResponse {
    let queries = request
        .topics
        .iter()
        .flat_map(|t| {
            t.partition_indexes.iter().map(|p| ProducersQuery {
                topic: t.name.0.to_string(),
                partition: *p,
            })
        })
        .collect();
    let mut answers = for_allowed(
        queries,
        |q: &ProducersQuery| ctx.allows_topic(Operation::READ, &q.topic),
        || -> ProducersAnswer { Err(ResponseError::TopicAuthorizationFailed) },
        |allowed| producers::describe_producers(&ctx.shard, allowed),
    )
    .await
    .into_iter();
    let topics = request
        .topics
        .into_iter()
        .map(|t| {
            let partitions = t
                .partition_indexes
                .iter()
                .map(|p| {
                    let answer = answers.next().expect("one answer per partition");
                    let response = PartitionResponse::default().with_partition_index(*p);
                    match answer {
                        Ok(active) => response.with_active_producers(
                            active
                                .into_iter()
                                .map(|a| {
                                    ProducerState::default()
                                        .with_producer_id(ProducerId(a.producer_id))
                                        .with_producer_epoch(i32::from(a.epoch))
                                        .with_last_sequence(a.last_sequence)
                                        .with_last_timestamp(a.last_timestamp)
                                        .with_coordinator_epoch(a.coordinator_epoch)
                                        .with_current_txn_start_offset(a.txn_start_offset)
                                })
                                .collect(),
                        ),
                        Err(code) => response.with_error_code(code.code()),
                    }
                })
                .collect();
            TopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    DescribeProducersResponse::default().with_topics(topics)
}
