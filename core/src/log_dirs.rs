//! The partitions this broker stores and their sizes on disk (DescribeLogDirs), gathered from
//! their owning shards. One log directory holds every partition (the data directory).

use std::rc::Rc;

use crate::shard::Shard;

/// One stored partition: topic name, index, bytes of batch data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPartition {
    pub topic: String,
    pub partition: i32,
    pub size_bytes: u64,
}

/// The partitions asked for (`None`: all of them), in request order (topics, then partitions);
/// partitions this broker does not store are left out, as Kafka does.
pub async fn stored_partitions(
    shard: &Rc<Shard>,
    wanted: Option<Vec<(String, Vec<i32>)>>,
) -> Vec<StoredPartition> {
    let image = shard.image();
    let wanted: Vec<(String, Vec<i32>)> = match wanted {
        Some(list) => list,
        None => image
            .topics()
            .map(|t| (t.name.clone(), (0..t.partitions).collect()))
            .collect(),
    };
    let lookups = wanted.into_iter().flat_map(|(name, partitions)| {
        let topic = image.topic(&name).cloned();
        partitions.into_iter().filter_map(move |p| {
            let topic = topic.clone().filter(|t| (0..t.partitions).contains(&p))?;
            Some((topic, p))
        })
    });
    let sizes = lookups.map(|(topic, partition)| async move {
        let owner = shard.owner_of(&topic.name, partition);
        let name = topic.name.clone();
        let size = shard
            .invoke_on_cancellable(owner, move |owner_shard| async move {
                match owner_shard.partition(&topic, partition).await {
                    Ok(p) => Some(p.log().size_bytes()),
                    Err(_) => None,
                }
            })
            .await
            .ok()
            .flatten();
        size.map(|size_bytes| StoredPartition {
            topic: name,
            partition,
            size_bytes,
        })
    });
    futures::future::join_all(sizes)
        .await
        .into_iter()
        .flatten()
        .collect()
}
