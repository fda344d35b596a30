//! A leader's process dies: its connections close, and the survivors elect new leaders at once,
//! without waiting out the election timeout. Three nodes on one executor over loopback sockets;
//! after the first elections nobody ticks any more, so no election timeout can ever fire: only
//! the closed connection can start the elections this test waits for.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sluice_replication::node::ReplicationNode;
use sluice_replication::rpc::GroupKey;
use sluice_replication::{ReplicaConfig, Role};
use sluice_storage::LogConfig;

mod common;

const NODES: [u64; 3] = [1, 2, 3];
const GROUPS: i32 = 12;

fn key(partition: i32) -> GroupKey {
    GroupKey {
        topic_id: 0x1ead,
        partition,
    }
}

fn free_address() -> SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap()
}

/// The node leading `partition`, if exactly one live node leads it.
fn leader_of(nodes: &mut [Option<ReplicationNode>], partition: i32) -> Option<u64> {
    let leaders: Vec<u64> = nodes
        .iter_mut()
        .flatten()
        .filter_map(|node| {
            let id = node.node_id();
            let group = node.group(&key(partition))?;
            (group.replica().role() == Role::Leader).then_some(id)
        })
        .collect();
    match leaders.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

#[test]
fn survivors_elect_new_leaders_as_soon_as_a_leaders_connections_close() {
    common::run(|| async {
        let root = tempfile::tempdir().unwrap();
        let peers: HashMap<u64, SocketAddr> =
            NODES.iter().map(|id| (*id, free_address())).collect();
        let config = ReplicaConfig {
            election_ticks: 10,
            election_jitter_ticks: 10,
            heartbeat_ticks: 2,
            ..ReplicaConfig::default()
        };
        let mut nodes: Vec<Option<ReplicationNode>> = Vec::new();
        for id in NODES {
            let dir = root.path().join(format!("node-{id}"));
            std::fs::create_dir_all(&dir).unwrap();
            let mut node = ReplicationNode::start(id, peers[&id], &peers, &dir)
                .await
                .unwrap();
            for partition in 0..GROUPS {
                let group_dir = dir.join(format!("p-{partition}"));
                std::fs::create_dir_all(&group_dir).unwrap();
                node.add_group(
                    key(partition),
                    &group_dir,
                    &NODES,
                    config,
                    LogConfig::default(),
                )
                .await
                .unwrap();
            }
            nodes.push(Some(node));
        }
        // Ticks until every group has a leader, with node 1 leading some (campaigning at once
        // for the first half of the groups: both parities, so their successor orders, rotated
        // by group, start with node 2 for some and node 3 for others; campaigning for every
        // other group gave them all one first successor, and the spread assertion below passed
        // only when node 1 also happened to win another group's election).
        for partition in 0..GROUPS / 2 {
            nodes[0]
                .as_mut()
                .unwrap()
                .group_mut(&key(partition))
                .unwrap()
                .campaign()
                .unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while (0..GROUPS).any(|p| leader_of(&mut nodes, p).is_none()) {
            assert!(Instant::now() < deadline, "first elections");
            for node in nodes.iter_mut().flatten() {
                node.tick().await.unwrap();
            }
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        // A few heartbeats so every follower knows its leader.
        for _ in 0..5 {
            for node in nodes.iter_mut().flatten() {
                node.tick().await.unwrap();
            }
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        let led_by_first: Vec<i32> = (0..GROUPS)
            .filter(|p| leader_of(&mut nodes, *p) == Some(1))
            .collect();
        assert!(
            led_by_first.len() >= 2,
            "node 1 leads {led_by_first:?} only"
        );

        // Node 1 dies (dropped without closing: its sockets close, nothing else happens).
        let killed_at = Instant::now();
        nodes[0] = None;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            for node in nodes.iter_mut().flatten() {
                node.step().await.unwrap();
            }
            if led_by_first
                .iter()
                .all(|p| leader_of(&mut nodes, *p).is_some())
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no tick was given, so only the closed connections can elect: still leaderless {:?}",
                led_by_first
                    .iter()
                    .filter(|p| leader_of(&mut nodes, **p).is_none())
                    .collect::<Vec<_>>()
            );
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        eprintln!(
            "{} groups re-elected {:?} after their leader died, without a tick",
            led_by_first.len(),
            killed_at.elapsed()
        );
        // The new leaderships are spread over both survivors.
        let new_leaders: Vec<u64> = led_by_first
            .iter()
            .filter_map(|p| leader_of(&mut nodes, *p))
            .collect();
        assert!(
            new_leaders.contains(&2) && new_leaders.contains(&3),
            "{new_leaders:?}"
        );
        for node in nodes.into_iter().flatten() {
            node.close().await.unwrap();
        }
    });
}
