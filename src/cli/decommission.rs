//! `sluice cluster decommission --node N`: moves every partition replica off node N (topics
//! and `__consumer_offsets`), as an operator does before retiring a broker
//! (`kafka-reassign-partitions.sh --generate` with the node left out, then `--execute`).
//!
//! Each list keeps its order with N replaced, in place, by the live node (not already in the
//! list) that holds the fewest replicas so far: the moves spread over the others, and N's
//! preferred leaderships go to its replacements. The moves are sent as one
//! AlterPartitionReassignments to the controller; the tool then waits until
//! ListPartitionReassignments lists none of them and Metadata names N in no replica list.
//! The node stays registered (and, if it is one, a controller voter): new topics may be
//! placed on it again until it is stopped. A node that does not vote (`sluice cluster
//! remove-voter` first, for a voter) then leaves for good with `sluice cluster unregister
//! --node N` once stopped (UnregisterBroker).
//!
//! `--throttle B` paces the copies as `kafka-reassign-partitions.sh --throttle` does: the
//! cluster-wide dynamic broker config `leader.replication.throttled.rate` is set to B bytes
//! per second before the moves are sent and deleted once they are done (left in place when
//! the wait ends first, with a line saying so).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kafka_protocol::messages::alter_partition_reassignments_request::{
    ReassignablePartition, ReassignableTopic,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, ApiKey, BrokerId,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse,
};

use super::client::{ApiUse, Client, Result};
use super::{error_text, name, Connection};

/// `sluice cluster decommission`.
#[derive(Debug, clap::Args)]
pub struct DecommissionArgs {
    /// The node whose replicas move to the other nodes.
    #[arg(long, value_name = "ID")]
    node: i32,
    #[command(flatten)]
    moving: MoveOptions,
    #[command(flatten)]
    connection: Connection,
}

/// How moves are carried out (`decommission`, `rebalance`).
#[derive(Debug, clap::Args)]
pub struct MoveOptions {
    /// How long to wait for the moves to finish (0: send them and return).
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    wait_secs: u64,
    /// Pace the copies at this many bytes per second per node (Kafka's
    /// `leader.replication.throttled.rate`), removed again once the moves are done.
    #[arg(long, value_name = "BYTES_PER_SEC", value_parser = clap::value_parser!(u64).range(1..))]
    throttle: Option<u64>,
}

/// A partition and its replica list.
pub type Placement = (String, i32, Vec<i32>);

/// The new lists of the partitions that have a replica on `leaving`: each with `leaving`
/// replaced in place by the node of `nodes` not in the list that holds the fewest replicas
/// (counting the moves already chosen), the lower id on a tie.
pub fn moves_off(leaving: i32, nodes: &[i32], placements: &[Placement]) -> Result<Vec<Placement>> {
    let mut held: BTreeMap<i32, usize> = nodes
        .iter()
        .filter(|n| **n != leaving)
        .map(|n| (*n, 0))
        .collect();
    for (_, _, replicas) in placements {
        for node in replicas {
            if let Some(count) = held.get_mut(node) {
                *count += 1;
            }
        }
    }
    let mut moves = Vec::new();
    for (topic, partition, replicas) in placements {
        let Some(at) = replicas.iter().position(|n| *n == leaving) else {
            continue;
        };
        let replacement = held
            .iter()
            .filter(|(node, _)| !replicas.contains(node))
            .min_by_key(|(node, count)| (**count, **node))
            .map(|(node, _)| *node)
            .ok_or_else(|| {
                format!(
                    "{topic}-{partition} has replicas {replicas:?}: no other live node can take \
                     node {leaving}'s replica"
                )
            })?;
        *held.get_mut(&replacement).expect("a candidate") += 1;
        let mut list = replicas.clone();
        list[at] = replacement;
        moves.push((topic.clone(), *partition, list));
    }
    Ok(moves)
}

const ALTER: ApiUse = ApiUse {
    key: ApiKey::AlterPartitionReassignments,
    min: 0,
    max: 0,
};
const LIST: ApiUse = ApiUse {
    key: ApiKey::ListPartitionReassignments,
    min: 0,
    max: 0,
};
const INCREMENTAL_ALTER_CONFIGS: ApiUse = ApiUse {
    key: ApiKey::IncrementalAlterConfigs,
    min: 0,
    max: 1,
};

/// The dynamic broker config `--throttle` sets.
const THROTTLE_CONFIG: &str = "leader.replication.throttled.rate";

/// Sets (`Some`) or deletes the cluster-wide `leader.replication.throttled.rate`.
fn set_throttle(client: &mut Client, controller: &str, rate: Option<u64>) -> Result<()> {
    use kafka_protocol::messages::incremental_alter_configs_request::{
        AlterConfigsResource, AlterableConfig,
    };
    use kafka_protocol::messages::{
        IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
    };
    use kafka_protocol::protocol::StrBytes;
    const BROKER: i8 = 4;
    const SET: i8 = 0;
    const DELETE: i8 = 1;
    let config = AlterableConfig::default()
        .with_name(StrBytes::from_static_str(THROTTLE_CONFIG))
        .with_config_operation(if rate.is_some() { SET } else { DELETE })
        .with_value(rate.map(|r| StrBytes::from_string(r.to_string())));
    // The resource "" is the cluster-wide default.
    let request = IncrementalAlterConfigsRequest::default().with_resources(vec![
        AlterConfigsResource::default()
            .with_resource_type(BROKER)
            .with_resource_name(StrBytes::from_static_str(""))
            .with_configs(vec![config]),
    ]);
    let answer: IncrementalAlterConfigsResponse =
        client.call(Some(controller), INCREMENTAL_ALTER_CONFIGS, |_| request)?;
    match answer.responses.first() {
        Some(r) if r.error_code != 0 => Err(format!(
            "setting {THROTTLE_CONFIG}: {}",
            error_text(r.error_code, r.error_message.as_ref())
        )),
        Some(_) => Ok(()),
        None => Err(format!(
            "setting {THROTTLE_CONFIG}: no answer for the resource"
        )),
    }
}

pub fn decommission(args: DecommissionArgs) -> Result<()> {
    let mut client = args.connection.client()?;
    let metadata = client.metadata(None)?;
    let nodes: Vec<i32> = metadata.brokers.iter().map(|b| b.node_id.0).collect();
    let placements = placements_of(&metadata);
    let moves = moves_off(args.node, &nodes, &placements)?;
    if moves.is_empty() {
        println!("node {}: no replicas to move", args.node);
        return Ok(());
    }
    let node = args.node;
    let moved = carry_out(
        &mut client,
        &moves,
        &args.moving,
        |placements| {
            placements
                .iter()
                .filter(|(_, _, replicas)| replicas.contains(&node))
                .count()
        },
        &format!("partition(s) still on node {node}"),
    )?;
    if !moved {
        return Ok(());
    }
    println!(
        "node {}: every replica moved ({} partitions)",
        args.node,
        moves.len()
    );
    Ok(())
}

/// Sends `moves` to the controller, then (unless `--wait-secs 0`) waits until they are done:
/// no move under way and `unsettled` 0 (see [`wait_for_moves`]). True once waited for.
fn carry_out(
    client: &mut Client,
    moves: &[Placement],
    moving: &MoveOptions,
    unsettled: impl Fn(&[Placement]) -> usize,
    what: &str,
) -> Result<bool> {
    let controller = client
        .controller_address()?
        .ok_or("no controller is known: is this a cluster?")?;
    send_moves(client, &controller, moves, moving.throttle)?;
    if moving.wait_secs == 0 {
        return Ok(false);
    }
    wait_for_moves(
        client,
        &controller,
        moving.wait_secs,
        moving.throttle,
        unsettled,
        what,
    )?;
    Ok(true)
}

/// Sends `moves` to the controller as one AlterPartitionReassignments (after setting the
/// catch-up throttle, if any); an error names the partitions refused.
fn send_moves(
    client: &mut Client,
    controller: &str,
    moves: &[Placement],
    throttle: Option<u64>,
) -> Result<()> {
    let mut topics: BTreeMap<&str, Vec<ReassignablePartition>> = BTreeMap::new();
    for (topic, partition, list) in moves {
        topics.entry(topic).or_default().push(
            ReassignablePartition::default()
                .with_partition_index(*partition)
                .with_replicas(Some(list.iter().map(|n| BrokerId(*n)).collect())),
        );
    }
    let request = AlterPartitionReassignmentsRequest::default()
        .with_timeout_ms(30_000)
        .with_topics(
            topics
                .into_iter()
                .map(|(topic, partitions)| {
                    ReassignableTopic::default()
                        .with_name(name(topic))
                        .with_partitions(partitions)
                })
                .collect(),
        );
    if let Some(rate) = throttle {
        set_throttle(client, controller, Some(rate))?;
        println!("catch-up throttle: {THROTTLE_CONFIG}={rate}");
    }
    let answer: AlterPartitionReassignmentsResponse =
        client.call(Some(controller), ALTER, |_| request)?;
    if answer.error_code != 0 {
        return Err(format!(
            "AlterPartitionReassignments: {}",
            error_text(answer.error_code, answer.error_message.as_ref())
        ));
    }
    let mut refused = Vec::new();
    for topic in &answer.responses {
        for p in &topic.partitions {
            let label = format!("{}-{}", topic.name.as_str(), p.partition_index);
            let list = moves
                .iter()
                .find(|(t, n, _)| t == topic.name.as_str() && *n == p.partition_index)
                .map(|(_, _, l)| l.clone())
                .unwrap_or_default();
            match p.error_code {
                0 => println!("moving {label} to {list:?}"),
                code => {
                    let why = error_text(code, p.error_message.as_ref());
                    println!("not moving {label}: {why}");
                    refused.push(label);
                }
            }
        }
    }
    if !refused.is_empty() {
        return Err(format!(
            "{} move(s) refused: {}",
            refused.len(),
            refused.join(", ")
        ));
    }
    Ok(())
}

/// Waits up to `wait_secs` until no move is under way and `unsettled` (counted over the
/// partitions' replica lists, as `what`) is 0; then deletes the throttle if one was set.
fn wait_for_moves(
    client: &mut Client,
    controller: &str,
    wait_secs: u64,
    throttle: Option<u64>,
    unsettled: impl Fn(&[Placement]) -> usize,
    what: &str,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(wait_secs);
    loop {
        let listed: ListPartitionReassignmentsResponse =
            client.call(Some(controller), LIST, |_| {
                ListPartitionReassignmentsRequest::default()
                    .with_timeout_ms(30_000)
                    .with_topics(None)
            })?;
        let under_way: usize = listed.topics.iter().map(|t| t.partitions.len()).sum();
        let left = unsettled(&placements_of(
            &client.metadata_from(Some(controller), None)?,
        ));
        if under_way == 0 && left == 0 {
            if throttle.is_some() {
                set_throttle(client, controller, None)?;
                println!("catch-up throttle removed");
            }
            return Ok(());
        }
        if Instant::now() >= deadline {
            let throttle = match throttle {
                Some(_) => format!(" ({THROTTLE_CONFIG} stays set: delete it when they are done)"),
                None => String::new(),
            };
            return Err(format!(
                "after {wait_secs} s: {under_way} move(s) under way, {left} {what}{throttle}"
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `sluice cluster rebalance`.
#[derive(Debug, clap::Args)]
pub struct RebalanceArgs {
    #[command(flatten)]
    moving: MoveOptions,
    #[command(flatten)]
    connection: Connection,
}

/// The new lists that even out how many replicas each of `nodes` holds (to within one): while
/// the fullest node holds at least two more than the emptiest, one replica of a partition on
/// the fullest (and not on the emptiest) moves there, in place (a preferred leadership moves
/// with it). The fullest node is the lowest id among equals, and so is the emptiest; the
/// partition is the first in `placements`' order.
pub fn rebalance_moves(nodes: &[i32], placements: &[Placement]) -> Vec<Placement> {
    let mut held: BTreeMap<i32, usize> = nodes.iter().map(|n| (*n, 0)).collect();
    for (_, _, replicas) in placements {
        for node in replicas {
            if let Some(count) = held.get_mut(node) {
                *count += 1;
            }
        }
    }
    let mut lists: Vec<Vec<i32>> = placements.iter().map(|(_, _, l)| l.clone()).collect();
    loop {
        let fullest = held
            .iter()
            .max_by_key(|(node, count)| (**count, std::cmp::Reverse(**node)));
        let emptiest = held.iter().min_by_key(|(node, count)| (**count, **node));
        let (Some((&full, &most)), Some((&empty, &least))) = (fullest, emptiest) else {
            break;
        };
        if most < least + 2 {
            break;
        }
        let Some(list) = lists
            .iter_mut()
            .find(|list| list.contains(&full) && !list.contains(&empty))
        else {
            break;
        };
        let at = list.iter().position(|n| *n == full).expect("it holds one");
        list[at] = empty;
        *held.get_mut(&full).expect("a node") -= 1;
        *held.get_mut(&empty).expect("a node") += 1;
    }
    placements
        .iter()
        .zip(lists)
        .filter(|((_, _, before), after)| before != after)
        .map(|((topic, partition, _), after)| (topic.clone(), *partition, after))
        .collect()
}

/// `sluice cluster rebalance`: evens out the replicas over the registered nodes (after a node
/// joined, it holds none of the partitions made before it), as `kafka-reassign-partitions.sh
/// --generate` with every broker then `--execute` do; waits until the moves are done.
pub fn rebalance(args: RebalanceArgs) -> Result<()> {
    let mut client = args.connection.client()?;
    let metadata = client.metadata(None)?;
    let nodes: Vec<i32> = metadata.brokers.iter().map(|b| b.node_id.0).collect();
    let moves = rebalance_moves(&nodes, &placements_of(&metadata));
    if moves.is_empty() {
        println!("balanced: nothing to move");
        return Ok(());
    }
    let targets = moves.clone();
    let moved = carry_out(
        &mut client,
        &moves,
        &args.moving,
        |placements| {
            targets
                .iter()
                .filter(|target| !placements.contains(target))
                .count()
        },
        "partition(s) not at their new replicas yet",
    )?;
    if !moved {
        return Ok(());
    }
    println!("balanced: {} partition(s) moved", moves.len());
    Ok(())
}

/// Every partition of `metadata` with its replica list.
fn placements_of(metadata: &kafka_protocol::messages::MetadataResponse) -> Vec<Placement> {
    let mut placements = Vec::new();
    for topic in &metadata.topics {
        let Some(topic_name) = topic.name.as_ref() else {
            continue;
        };
        for p in &topic.partitions {
            placements.push((
                topic_name.to_string(),
                p.partition_index,
                p.replica_nodes.iter().map(|n| n.0).collect(),
            ));
        }
    }
    placements.sort();
    placements
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebalancing_evens_out_replicas_in_place_onto_a_new_node() {
        // Three nodes hold six partitions of three replicas; node 3 joined with none.
        let placements: Vec<Placement> = (0..6)
            .map(|p| ("t".to_string(), p, vec![p % 3, (p + 1) % 3, (p + 2) % 3]))
            .collect();
        let moves = rebalance_moves(&[0, 1, 2, 3], &placements);
        let mut held: BTreeMap<i32, usize> = BTreeMap::new();
        let after: Vec<Vec<i32>> = placements
            .iter()
            .map(|(t, p, before)| {
                moves
                    .iter()
                    .find(|(mt, mp, _)| mt == t && mp == p)
                    .map_or_else(|| before.clone(), |(_, _, l)| l.clone())
            })
            .collect();
        for list in &after {
            let mut sorted = list.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), 3, "no node twice in {list:?}");
            for node in list {
                *held.entry(*node).or_default() += 1;
            }
        }
        // 18 replicas over 4 nodes: 4 or 5 each; node 3 took 4.
        assert!(held.values().all(|c| (4..=5).contains(c)), "{held:?}");
        assert_eq!(held[&3], 4);
        assert_eq!(moves.len(), 4, "one replica per move: {moves:?}");
        // Balanced already: nothing.
        let balanced: Vec<Placement> = after
            .into_iter()
            .enumerate()
            .map(|(p, l)| ("t".to_string(), p as i32, l))
            .collect();
        assert_eq!(rebalance_moves(&[0, 1, 2, 3], &balanced), vec![]);
    }

    #[test]
    fn replicas_leave_to_the_least_loaded_nodes_in_place() {
        let placements: Vec<Placement> = vec![
            ("a".into(), 0, vec![0, 1, 2]),
            ("a".into(), 1, vec![1, 2, 3]),
            ("a".into(), 2, vec![2, 3, 0]),
            ("b".into(), 0, vec![2, 0, 1]),
        ];
        let moves = moves_off(2, &[0, 1, 2, 3], &placements).unwrap();
        // Held before: 0 -> 3, 1 -> 3, 3 -> 2. Node 3 takes the first it can, then ties go
        // to the lower id among those not in the list.
        assert_eq!(
            moves,
            vec![
                ("a".to_string(), 0, vec![0, 1, 3]),
                ("a".to_string(), 1, vec![1, 0, 3]),
                ("a".to_string(), 2, vec![1, 3, 0]),
                ("b".to_string(), 0, vec![3, 0, 1]),
            ]
        );
        // Three nodes, three replicas: nowhere to go.
        let error = moves_off(2, &[0, 1, 2], &placements[..1])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("a-0") && error.contains("no other live node"),
            "{error}"
        );
    }
}

/// `sluice cluster unregister`.
#[derive(Debug, clap::Args)]
pub struct UnregisterArgs {
    /// The node to remove: one that joined through the seeds, stopped, with no replica left.
    #[arg(long, value_name = "ID")]
    node: i32,
    #[command(flatten)]
    connection: Connection,
}

const UNREGISTER: ApiUse = ApiUse {
    key: ApiKey::UnregisterBroker,
    min: 0,
    max: 0,
};

/// `sluice cluster unregister --node N`: removes N's registration (UnregisterBroker, as
/// `kafka-cluster.sh unregister --id N`), after `decommission` moved its replicas and the node
/// was stopped. The controller then drops it from its learners; Metadata no longer lists it.
pub fn unregister(args: UnregisterArgs) -> Result<()> {
    use kafka_protocol::messages::{UnregisterBrokerRequest, UnregisterBrokerResponse};
    let mut client = args.connection.client()?;
    let answer: UnregisterBrokerResponse = client.call(None, UNREGISTER, |_| {
        UnregisterBrokerRequest::default().with_broker_id(BrokerId(args.node))
    })?;
    if answer.error_code != 0 {
        return Err(format!(
            "node {}: {}",
            args.node,
            error_text(answer.error_code, answer.error_message.as_ref())
        ));
    }
    println!("node {}: unregistered", args.node);
    Ok(())
}
