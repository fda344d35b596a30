//! DescribeLogDirs (key 35): the one log directory (the data directory), with every asked
//! partition this broker stores and its size in bytes (offset lag 0: no replica is being moved
//! between directories), and from v4 the filesystem's total and usable bytes. Unknown topics
//! and partitions are left out, as Kafka does.

use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::{
    ApiKey, DescribeLogDirsRequest, DescribeLogDirsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use sluice_core::log_dirs::stored_partitions;
use sluice_core::ResponseError;

use crate::apis::ApiRange;
use crate::handlers::Context;
use sluice_core::acls::Operation;

pub const RANGE: ApiRange = ApiRange {
    key: ApiKey::DescribeLogDirs,
    min_version: 1,
    max_version: 4,
};

/// v4 (KIP-827) reports the directory's total and usable bytes.
const SPACE_FROM: i16 = 4;

pub async fn handle(
    request: DescribeLogDirsRequest,
    version: i16,
    ctx: &Context,
) -> DescribeLogDirsResponse {
    // Describing log directories takes DESCRIBE on the cluster.
    if !ctx.allows_cluster(Operation::DESCRIBE) {
        return DescribeLogDirsResponse::default().with_error_code(if version >= 3 {
            sluice_core::ResponseError::ClusterAuthorizationFailed.code()
        } else {
            0
        });
    }
    let wanted = request.topics.map(|topics| {
        topics
            .into_iter()
            .map(|t| (t.topic.0.to_string(), t.partitions))
            .collect()
    });
    let stored = stored_partitions(&ctx.shard, wanted).await;
    let mut topics: Vec<DescribeLogDirsTopic> = Vec::new();
    for p in stored {
        let partition = DescribeLogDirsPartition::default()
            .with_partition_index(p.partition)
            .with_partition_size(p.size_bytes as i64)
            .with_offset_lag(0);
        match topics.last_mut() {
            Some(last) if last.name.0.as_str() == p.topic => last.partitions.push(partition),
            _ => topics.push(
                DescribeLogDirsTopic::default()
                    .with_name(TopicName(StrBytes::from_string(p.topic)))
                    .with_partitions(vec![partition]),
            ),
        }
    }
    let data_dir = ctx.shard.catalog.data_dir();
    let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let mut result = DescribeLogDirsResult::default()
        .with_log_dir(StrBytes::from_string(dir.display().to_string()))
        .with_topics(topics);
    if version >= SPACE_FROM {
        match sluice_storage::io::disk_space(&dir) {
            Ok((total, usable)) => {
                result = result
                    .with_total_bytes(total as i64)
                    .with_usable_bytes(usable as i64);
            }
            Err(_) => result = result.with_error_code(ResponseError::KafkaStorageError.code()),
        }
    }
    DescribeLogDirsResponse::default().with_results(vec![result])
}
