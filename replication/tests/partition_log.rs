//! Three replicas of one partition, each over a real partition log in its own directory, on one
//! glommio executor, with messages carried in process. The log is the Raft log: every replica
//! must end with byte-identical logs, every committed (acknowledged) batch exactly once and in
//! the order it was acknowledged, through leader kills, follower kills and restarts from disk.

mod common;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use common::run;
use sluice_replication::partition::{HardStateHome, RaftPartition};
use sluice_replication::{discard_logger, Message, ReplicaConfig, ReplicationError, Role};
use sluice_storage::batch::{build_batch, control_record, validate_batch};
use sluice_storage::{LogConfig, Offset};

const VOTERS: [u64; 3] = [1, 2, 3];

fn log_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 64 * 1024,
        index_interval_bytes: 1024,
        preallocate_bytes: 128 * 1024,
        batch_bytes_max: 64 * 1024,
        ..LogConfig::default()
    }
}

fn replica_config() -> ReplicaConfig {
    ReplicaConfig {
        election_ticks: 10,
        election_jitter_ticks: 10,
        heartbeat_ticks: 2,
        max_bytes_per_message: 64 * 1024,
        max_inflight_messages: 64,
        quiet_after_ticks: 0,
    }
}

struct Cluster {
    dirs: Vec<PathBuf>,
    nodes: Vec<Option<RaftPartition>>,
    network: VecDeque<Message>,
    /// Replicas that restored a snapshot, and where their log started over.
    started_over: Vec<(u64, Offset)>,
}

impl Cluster {
    async fn start(root: &Path) -> Cluster {
        let mut cluster = Cluster {
            dirs: VOTERS
                .iter()
                .map(|id| root.join(format!("node-{id}")))
                .collect(),
            nodes: Vec::new(),
            network: VecDeque::new(),
            started_over: Vec::new(),
        };
        for id in VOTERS {
            let node = cluster.open(id).await;
            cluster.nodes.push(Some(node));
        }
        cluster
    }

    async fn open(&self, id: u64) -> RaftPartition {
        let dir = &self.dirs[(id - 1) as usize];
        std::fs::create_dir_all(dir).unwrap();
        RaftPartition::open(
            dir,
            id,
            &VOTERS,
            replica_config(),
            log_config(),
            HardStateHome::OwnFile,
            &discard_logger(),
        )
        .await
        .expect("replica opens")
    }

    /// A process crash: the replica is dropped without closing; what was not durable is gone.
    fn kill(&mut self, id: u64) {
        self.nodes[(id - 1) as usize] = None;
    }

    async fn restart(&mut self, id: u64) {
        let node = self.open(id).await;
        self.nodes[(id - 1) as usize] = Some(node);
    }

    /// One tick everywhere, then every message delivered (and the work it causes run) until
    /// the network is quiet.
    async fn step(&mut self) {
        for node in self.nodes.iter_mut().flatten() {
            node.tick();
        }
        self.settle().await;
    }

    async fn settle(&mut self) {
        loop {
            for node in self.nodes.iter_mut().flatten() {
                let outbox = node.run_ready().await.expect("ready work runs");
                self.network.extend(outbox.messages);
                if let Some(at) = outbox.started_over_at {
                    self.started_over.push((node.replica().id(), at));
                }
            }
            if self.network.is_empty() {
                return;
            }
            while let Some(message) = self.network.pop_front() {
                if let Some(node) = self.nodes[(message.to - 1) as usize].as_mut() {
                    let _ = node.receive(message);
                }
            }
        }
    }

    fn leader(&self) -> Option<u64> {
        self.nodes
            .iter()
            .flatten()
            .find(|n| n.replica().role() == Role::Leader)
            .map(|n| n.replica().id())
    }

    async fn wait_for_leader(&mut self) -> u64 {
        for _ in 0..500 {
            if let Some(leader) = self.leader() {
                return leader;
            }
            self.step().await;
        }
        panic!("no leader elected within 500 ticks");
    }

    fn node(&mut self, id: u64) -> &mut RaftPartition {
        self.nodes[(id - 1) as usize].as_mut().expect("node is up")
    }
}

/// The value of every data record in a log, in offset order, and the log's raw bytes.
async fn contents(node: &RaftPartition) -> (Vec<String>, Vec<u8>) {
    let log = node.log();
    let mut values = Vec::new();
    let mut raw = Vec::new();
    let mut next = log.log_start_offset();
    while next < log.log_end_offset() {
        let read = log.read(next, 1 << 20).await.expect("log reads");
        raw.extend_from_slice(&read.bytes);
        let mut rest = &read.bytes[..];
        while !rest.is_empty() {
            let info = validate_batch(rest, usize::MAX).expect("valid batch");
            let batch = &rest[..info.size_bytes];
            assert!(info.leader_epoch.0 >= 1, "term stamped as the epoch");
            if control_record(batch).is_none() {
                // Each test batch holds one record whose value names its proposal.
                let value = &batch[batch.len() - 12..batch.len() - 1];
                values.push(String::from_utf8_lossy(value).into_owned());
            }
            rest = &rest[info.size_bytes..];
        }
        next = read.next_offset;
    }
    (values, raw)
}

fn proposal(n: u64) -> Bytes {
    let value = format!("p-{n:09}");
    build_batch(n as i64, &[(n as i64, b"k", value.as_bytes())]).into()
}

#[test]
fn replicas_keep_identical_logs_and_every_committed_batch_through_kills_and_restarts() {
    run(|| async {
        let root = tempfile::tempdir().unwrap();
        let mut cluster = Cluster::start(root.path()).await;
        let mut acknowledged: Vec<String> = Vec::new();
        let mut pending: Vec<(u64, u64, Offset)> = Vec::new(); // (proposal, leader, end offset)
        let mut next_proposal = 0u64;
        let mut leader_kills = 0;
        let mut lost_on_purpose = 0;
        for round in 0..12u64 {
            let leader = cluster.wait_for_leader().await;
            for _ in 0..15 {
                next_proposal += 1;
                if let Ok(index) = cluster.node(leader).propose(proposal(next_proposal)) {
                    cluster.settle().await;
                    let end = cluster.node(leader).end_offset_of(index).unwrap();
                    pending.push((next_proposal, leader, end));
                }
                cluster.step().await;
                // A proposal is acknowledged when its leader's high watermark passes it.
                pending.retain(|&(n, at, end)| match &cluster.nodes[(at - 1) as usize] {
                    Some(node)
                        if node.high_watermark() >= end
                            && node.replica().role() == Role::Leader =>
                    {
                        acknowledged.push(format!("p-{n:09}"));
                        false
                    }
                    Some(node) => node.replica().role() == Role::Leader,
                    None => false,
                });
            }
            // A burst the leader writes but does not get committed before a fault.
            for _ in 0..5 {
                next_proposal += 1;
                let _ = cluster.node(leader).propose(proposal(next_proposal));
            }
            let outbox = cluster.node(leader).run_ready().await.unwrap();
            let follower = VOTERS.iter().copied().find(|&id| id != leader).unwrap();
            let victim = match round % 3 {
                // Only the leader holds the burst: the group must lose it, and the old leader,
                // back, must truncate it.
                0 => {
                    lost_on_purpose += 5;
                    leader
                }
                // One follower holds it too: a majority of the group does.
                1 => {
                    for message in outbox.messages.into_iter().filter(|m| m.to == follower) {
                        let _ = cluster.node(follower).receive(message);
                    }
                    let _ = cluster.node(follower).run_ready().await.unwrap();
                    leader
                }
                // The burst goes everywhere, and a follower dies.
                _ => {
                    cluster.network.extend(outbox.messages);
                    cluster.settle().await;
                    follower
                }
            };
            if victim == leader {
                leader_kills += 1;
            }
            cluster.network.clear();
            cluster.kill(victim);
            pending.retain(|&(_, at, _)| at != victim);
            // The survivors elect a leader (split votes can take longer than any fixed count
            // of ticks) and commit its term's first entry before the victim comes back: only
            // then is a burst that only the dead leader held certain to be truncated.
            cluster.wait_for_leader().await;
            for _ in 0..10 {
                cluster.step().await;
            }
            cluster.restart(victim).await;
        }
        // Heal: everyone up, a final proposal committed everywhere.
        let leader = cluster.wait_for_leader().await;
        let index = loop {
            let leader = cluster.wait_for_leader().await;
            if let Ok(index) = cluster.node(leader).propose(proposal(0)) {
                break index;
            }
            cluster.step().await;
        };
        let _ = leader;
        for _ in 0..200 {
            cluster.step().await;
            let ends: Vec<_> = cluster
                .nodes
                .iter()
                .flatten()
                .map(|n| (n.high_watermark(), n.end_offset_of(index)))
                .collect();
            if ends.iter().all(|(hw, end)| end.is_some_and(|e| *hw >= e)) {
                break;
            }
        }
        let mut logs = Vec::new();
        for node in cluster.nodes.iter().flatten() {
            assert!(node.high_watermark() >= node.end_offset_of(index).unwrap());
            logs.push(contents(node).await);
        }
        assert_eq!(logs.len(), 3);
        assert!(
            logs[0].1 == logs[1].1 && logs[1].1 == logs[2].1,
            "logs differ byte for byte"
        );
        let values = &logs[0].0;
        // Every acknowledged proposal exactly once, in acknowledgement order.
        let positions: Vec<usize> = acknowledged
            .iter()
            .map(|value| {
                let found: Vec<usize> = values
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| *v == value)
                    .map(|(i, _)| i)
                    .collect();
                assert_eq!(found.len(), 1, "{value} appears {} times", found.len());
                found[0]
            })
            .collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "acknowledged order kept"
        );
        eprintln!(
            "{} proposed, {} acknowledged, {} records in the log, {leader_kills} leader kills",
            next_proposal,
            acknowledged.len(),
            values.len()
        );
        assert!(
            acknowledged.len() >= 100,
            "only {} acknowledged",
            acknowledged.len()
        );
        // The bursts only a dead leader held are gone from every replica (the old leader
        // truncated them when it came back: the logs are identical).
        assert!(
            values.len() + lost_on_purpose <= next_proposal as usize + 1,
            "{} records, {lost_on_purpose} lost on purpose, {next_proposal} proposed",
            values.len()
        );
        assert!(leader_kills >= 6);
        for node in cluster.nodes.into_iter().flatten() {
            node.close().await.unwrap();
        }
    });
}

fn large_proposal(n: u64) -> Bytes {
    let value = format!("p-{n:09}");
    let padding = vec![b'x'; 1000];
    build_batch(n as i64, &[(n as i64, &padding, value.as_bytes())]).into()
}

#[test]
fn a_follower_far_behind_catches_up_from_the_leaders_log_with_memory_bounded() {
    run(|| async {
        const BUDGET: u64 = 16 * 1024;
        let root = tempfile::tempdir().unwrap();
        let mut cluster = Cluster::start(root.path()).await;
        for node in cluster.nodes.iter_mut().flatten() {
            node.set_data_budget(BUDGET);
        }
        let leader = cluster.wait_for_leader().await;
        let lagging = VOTERS.iter().copied().find(|&id| id != leader).unwrap();
        cluster.kill(lagging);
        let mut last_index = 0;
        for n in 1..=400 {
            last_index = cluster.node(leader).propose(large_proposal(n)).unwrap();
            cluster.step().await;
        }
        cluster.settle().await;
        let stats = cluster.node(leader).window_stats();
        // 400 KB went through the leader; only the budget's worth of data stays in memory,
        // although one replica has none of it.
        assert!(stats.resident_bytes <= BUDGET, "{stats:?}");
        assert_eq!(stats.log_fetches, 0, "{stats:?}");

        cluster.restart(lagging).await;
        cluster.node(lagging).set_data_budget(BUDGET);
        let end = cluster.node(leader).end_offset_of(last_index).unwrap();
        for _ in 0..2_000 {
            cluster.step().await;
            if cluster.node(lagging).high_watermark() >= end {
                break;
            }
        }
        assert!(
            cluster.node(lagging).high_watermark() >= end,
            "the lagging replica caught up"
        );
        let stats = cluster.node(leader).window_stats();
        assert!(stats.log_fetches > 0, "caught up from the log: {stats:?}");
        assert!(stats.resident_bytes <= BUDGET, "{stats:?}");
        assert!(cluster.node(lagging).window_stats().resident_bytes <= BUDGET);

        let mut logs = Vec::new();
        for node in cluster.nodes.iter().flatten() {
            logs.push(contents(node).await);
        }
        assert!(
            logs[0].1 == logs[1].1 && logs[1].1 == logs[2].1,
            "logs differ byte for byte"
        );
        assert_eq!(logs[0].0.len(), 400);
        for node in cluster.nodes.into_iter().flatten() {
            node.close().await.unwrap();
        }
    });
}

/// Steps until every live replica's log starts at `start`.
async fn until_log_start(cluster: &mut Cluster, start: Offset) {
    for _ in 0..500 {
        if cluster
            .nodes
            .iter()
            .flatten()
            .all(|n| n.log().log_start_offset() == start)
        {
            return;
        }
        cluster.step().await;
    }
    panic!("the log start did not reach {start} everywhere");
}

#[test]
fn a_log_start_cut_moves_every_replica_and_a_follower_behind_it_starts_over() {
    run(|| async {
        let root = tempfile::tempdir().unwrap();
        let mut cluster = Cluster::start(root.path()).await;
        let leader = cluster.wait_for_leader().await;
        let lagging = VOTERS.iter().copied().find(|&id| id != leader).unwrap();
        let other = VOTERS
            .iter()
            .copied()
            .find(|&id| id != leader && id != lagging)
            .unwrap();
        // The lagging replica holds the first 20 entries, then misses the next 300.
        for n in 1..=20 {
            cluster.node(leader).propose(large_proposal(n)).unwrap();
            cluster.step().await;
        }
        cluster.settle().await;
        cluster.kill(lagging);
        for n in 21..=320 {
            cluster.node(leader).propose(large_proposal(n)).unwrap();
            cluster.step().await;
        }
        cluster.settle().await;
        let segments = cluster.node(leader).log().segment_base_offsets();
        assert!(segments.len() > 4, "{segments:?}");
        let start = segments[3];
        // Refused above the high watermark: only committed records may be cut.
        let beyond = cluster.node(leader).high_watermark().plus(1);
        assert!(cluster.node(leader).propose_log_start(beyond).is_err());
        cluster.node(leader).propose_log_start(start).unwrap();
        until_log_start(&mut cluster, start).await;
        for id in [leader, other] {
            let node = cluster.node(id);
            let below = node.replica().storage().below();
            assert_eq!(
                below.end_offset, start,
                "replica {id}: the window's floor is the cut"
            );
            assert!(
                node.log().segment_count() < segments.len(),
                "segments deleted"
            );
        }

        // Back, the lagging replica is below the leader's window: it gets the snapshot, starts
        // its log over at the cut and catches up above it.
        cluster.restart(lagging).await;
        let leader = cluster.wait_for_leader().await;
        let index = cluster.node(leader).propose(large_proposal(321)).unwrap();
        let end = loop {
            cluster.step().await;
            if let Some(end) = cluster.node(leader).end_offset_of(index) {
                if cluster
                    .nodes
                    .iter()
                    .flatten()
                    .all(|n| n.high_watermark() >= end)
                {
                    break end;
                }
            }
        };
        assert_eq!(cluster.node(lagging).log().log_start_offset(), start);
        assert_eq!(
            cluster.started_over,
            vec![(lagging, start)],
            "one snapshot restored"
        );
        let mut logs = Vec::new();
        for node in cluster.nodes.iter().flatten() {
            assert!(node.high_watermark() >= end);
            logs.push(contents(node).await);
        }
        assert!(
            logs[0].1 == logs[1].1 && logs[1].1 == logs[2].1,
            "logs from the cut differ byte for byte"
        );
        // Offset 0 holds the first leader's own entry: proposal n sits at offset n.
        let expected: Vec<String> = (start.0..=321).map(|n| format!("p-{n:09}")).collect();
        assert_eq!(
            logs[0].0, expected,
            "the records from the cut on, each once"
        );

        // Everything holds across a clean restart of all three.
        for id in VOTERS {
            let node = cluster.nodes[(id - 1) as usize].take().unwrap();
            node.close().await.unwrap();
        }
        for id in VOTERS {
            cluster.restart(id).await;
        }
        let leader = cluster.wait_for_leader().await;
        let index = loop {
            if let Ok(index) = cluster.node(leader).propose(large_proposal(322)) {
                break index;
            }
            cluster.step().await;
        };
        for _ in 0..200 {
            cluster.step().await;
        }
        let end = cluster.node(leader).end_offset_of(index).unwrap();
        for node in cluster.nodes.iter().flatten() {
            assert_eq!(node.log().log_start_offset(), start);
            assert!(node.high_watermark() >= end);
            assert_eq!(node.replica().storage().below().end_offset, start);
        }
        for node in cluster.nodes.into_iter().flatten() {
            node.close().await.unwrap();
        }
    });
}

#[test]
fn bad_proposals_and_a_damaged_state_file_get_clear_errors() {
    run(|| async {
        let root = tempfile::tempdir().unwrap();
        let mut cluster = Cluster::start(root.path()).await;
        let leader = cluster.wait_for_leader().await;
        let follower = VOTERS.iter().copied().find(|&id| id != leader).unwrap();

        let refused = cluster.node(follower).propose(proposal(1)).unwrap_err();
        assert!(
            matches!(refused, ReplicationError::NotLeader { leader: l } if l == leader),
            "{refused}"
        );
        let mut two = proposal(2).to_vec();
        two.extend_from_slice(&proposal(3));
        let refused = cluster.node(leader).propose(two.into()).unwrap_err();
        assert!(
            refused.to_string().contains("one record batch at a time"),
            "{refused}"
        );
        let refused = cluster
            .node(leader)
            .propose(Bytes::from_static(b"not a batch"))
            .unwrap_err();
        assert!(
            matches!(refused, ReplicationError::BadEntry { .. }),
            "{refused}"
        );
        // Nothing of the refused proposals reached any log.
        cluster.settle().await;
        for node in cluster.nodes.iter().flatten() {
            assert!(contents(node).await.0.is_empty());
        }

        // A damaged raft-state file stops the replica from opening, naming the file.
        cluster.kill(follower);
        let state = cluster.dirs[(follower - 1) as usize].join("raft-state");
        let mut bytes = std::fs::read(&state).unwrap();
        bytes[8] ^= 0xff;
        std::fs::write(&state, bytes).unwrap();
        let error = RaftPartition::open(
            &cluster.dirs[(follower - 1) as usize],
            follower,
            &VOTERS,
            replica_config(),
            log_config(),
            HardStateHome::OwnFile,
            &discard_logger(),
        )
        .await
        .err()
        .expect("a damaged state file is refused");
        assert!(
            matches!(error, ReplicationError::BadState { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("raft-state"), "{error}");
    });
}
