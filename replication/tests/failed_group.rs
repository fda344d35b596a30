//! A node holds many groups; one group whose log failed (an fdatasync failed with EIO, through
//! the storage fault points) must not cost the others their step: their committed entries still
//! reach the owner, and the failure is reported for that group alone.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::LocalExecutorBuilder;
use sluice_replication::node::ReplicationNode;
use sluice_replication::rpc::GroupKey;
use sluice_replication::{ReplicaConfig, Role};
use sluice_storage::batch::build_batch;
use sluice_storage::faults;
use sluice_storage::LogConfig;

fn key(partition: i32) -> GroupKey {
    GroupKey {
        topic_id: 0xfa11,
        partition,
    }
}

fn batch(value: &str) -> Bytes {
    build_batch(0, &[(0, b"k", value.as_bytes())]).into()
}

/// Lets the shard's other tasks (durability rounds, pipelined writes) run between steps.
async fn pause() {
    glommio::timer::sleep(Duration::from_millis(1)).await;
}

#[test]
fn a_group_whose_log_failed_does_not_cost_the_others_their_step() {
    LocalExecutorBuilder::default()
        .spawn(|| async {
            let root = tempfile::tempdir().unwrap();
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let listen = probe.local_addr().unwrap();
            drop(probe);
            let peers = HashMap::from([(1, listen)]);
            let node_dir = root.path().join("node");
            std::fs::create_dir_all(&node_dir).unwrap();
            let mut node = ReplicationNode::start(1, listen, &peers, &node_dir)
                .await
                .unwrap();
            let config = ReplicaConfig {
                election_ticks: 5,
                election_jitter_ticks: 5,
                heartbeat_ticks: 1,
                max_bytes_per_message: 256 * 1024,
                max_inflight_messages: 64,
                quiet_after_ticks: 4,
            };
            for partition in [0, 1] {
                let dir = root.path().join(format!("p-{partition}"));
                std::fs::create_dir_all(&dir).unwrap();
                node.add_group(key(partition), &dir, &[1], config, LogConfig::default())
                    .await
                    .unwrap();
            }
            // A single voter elects itself.
            let deadline = Instant::now() + Duration::from_secs(10);
            while [0, 1]
                .iter()
                .any(|&p| node.group(&key(p)).unwrap().replica().role() != Role::Leader)
            {
                assert!(Instant::now() < deadline, "no leaders");
                let _ = node.tick().await;
                pause().await;
            }
            for _ in 0..20 {
                let _ = node.step().await;
                pause().await;
            }
            assert!(node.take_step_failures().is_empty());

            // Group 0's log fails: its fdatasync meets EIO.
            faults::arm("storage::fdatasync=return(eio)").unwrap();
            node.group_mut(&key(0))
                .unwrap()
                .propose(batch("doomed"))
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            let failures = loop {
                let _ = node.step().await;
                pause().await;
                let failures = node.take_step_failures();
                if !failures.is_empty() {
                    break failures;
                }
                assert!(
                    Instant::now() < deadline,
                    "group 0's fdatasync never failed"
                );
            };
            faults::arm("").unwrap();
            assert!(
                failures.iter().all(|(group, _)| *group == key(0)),
                "{failures:?}"
            );

            // Both groups get work in the same steps: group 0 fails each time, group 1 commits
            // and its entry reaches the owner.
            node.group_mut(&key(1))
                .unwrap()
                .propose(batch("fine"))
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut delivered = false;
            let mut failed_again = false;
            while !delivered {
                assert!(
                    Instant::now() < deadline,
                    "group 1's entry never reached the owner (failed again: {failed_again})"
                );
                // Work for group 0 in every step, so that it fails in each of them.
                let _ = node
                    .group_mut(&key(0))
                    .unwrap()
                    .propose(batch("doomed too"));
                let stepped = node.step().await;
                pause().await;
                if let Ok(applied) = stepped {
                    delivered = applied.iter().any(|(group, outbox)| {
                        *group == key(1)
                            && outbox
                                .committed
                                .iter()
                                .any(|e| e.data.windows(4).any(|w| w == b"fine"))
                    });
                }
                let failures = node.take_step_failures();
                failed_again |= !failures.is_empty();
                assert!(
                    failures.iter().all(|(group, _)| *group == key(0)),
                    "{failures:?}"
                );
            }
            assert!(failed_again, "group 0 kept failing beside it");
        })
        .unwrap()
        .join()
        .unwrap();
}
