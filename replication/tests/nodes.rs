//! Three nodes, each on its own executor thread with its own directories, replicating 24
//! partitions over real loopback sockets (one connection per node pair, one frame per step).
//! Leaders propose while one node crashes (dropped without closing) and comes back on the same
//! address. Afterwards every partition's committed log is byte-identical on the three nodes and
//! holds every acknowledged batch exactly once.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::LocalExecutorBuilder;
use sluice_replication::node::ReplicationNode;
use sluice_replication::rpc::GroupKey;
use sluice_replication::{ReplicaConfig, Role};
use sluice_storage::batch::{
    build_batch, control_record, record_views, validate_batch, BATCH_HEADER_BYTES,
};
use sluice_storage::{LogConfig, Offset};

const NODES: [u64; 3] = [1, 2, 3];
const PARTITIONS: i32 = 24;
const PROPOSALS_PER_GROUP_MAX: u64 = 60;
const CRASHING_NODE: u64 = 3;

fn key(partition: i32) -> GroupKey {
    GroupKey {
        topic_id: 0x5eed,
        partition,
    }
}

fn config() -> ReplicaConfig {
    // 10 ms ticks: heartbeats every 20 ms, elections after 200-400 ms of silence.
    ReplicaConfig {
        election_ticks: 20,
        election_jitter_ticks: 20,
        heartbeat_ticks: 2,
        max_bytes_per_message: 256 * 1024,
        max_inflight_messages: 64,
        quiet_after_ticks: 4,
    }
}

fn log_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 256 * 1024,
        preallocate_bytes: 256 * 1024,
        batch_bytes_max: 64 * 1024,
        ..LogConfig::default()
    }
}

/// What a node reports at the end: values it saw acknowledged, and per partition its high
/// watermark and the log bytes below it.
struct Report {
    acknowledged: Vec<(i32, String)>,
    logs: BTreeMap<i32, (Offset, Vec<u8>)>,
}

async fn open(
    id: u64,
    listen: SocketAddr,
    peers: &HashMap<u64, SocketAddr>,
    root: &Path,
) -> ReplicationNode {
    let node_dir = root.join(format!("node-{id}"));
    std::fs::create_dir_all(&node_dir).unwrap();
    let mut node = ReplicationNode::start(id, listen, peers, &node_dir)
        .await
        .expect("node starts");
    for partition in 0..PARTITIONS {
        let dir = root
            .join(format!("node-{id}"))
            .join(format!("p-{partition}"));
        std::fs::create_dir_all(&dir).unwrap();
        node.add_group(key(partition), &dir, &NODES, config(), log_config())
            .await
            .expect("group opens");
    }
    node
}

async fn committed_bytes(node: &mut ReplicationNode, partition: i32) -> (Offset, Vec<u8>) {
    let group = node.group(&key(partition)).unwrap();
    let high_watermark = group.high_watermark();
    let log = group.log();
    let mut bytes = Vec::new();
    let mut next = log.log_start_offset();
    while next < high_watermark {
        let read = log.read(next, 1 << 20).await.unwrap();
        let mut rest = &read.bytes[..];
        while !rest.is_empty() {
            let info = validate_batch(rest, usize::MAX).unwrap();
            if info.base_offset < high_watermark {
                bytes.extend_from_slice(&rest[..info.size_bytes]);
            }
            rest = &rest[info.size_bytes..];
        }
        next = read.next_offset;
    }
    (high_watermark, bytes)
}

fn run_node(
    id: u64,
    root: PathBuf,
    start: Instant,
    address_out: mpsc::Sender<(u64, SocketAddr)>,
    peers_in: mpsc::Receiver<HashMap<u64, SocketAddr>>,
) -> Report {
    LocalExecutorBuilder::default()
        .spawn(move || async move {
            // Bind first, tell the others, learn theirs.
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let listen = probe.local_addr().unwrap();
            drop(probe);
            address_out.send((id, listen)).unwrap();
            let peers = peers_in.recv().unwrap();
            let mut node = Some(open(id, listen, &peers, &root).await);

            let propose_until = start + Duration::from_millis(3_000);
            let crash_at = start + Duration::from_millis(1_200);
            let back_at = start + Duration::from_millis(1_700);
            let end_at = start + Duration::from_millis(4_500);
            let mut crashed = false;
            let mut next_tick = Instant::now();
            let mut proposed: HashMap<i32, u64> = HashMap::new();
            // (partition, value, term it was proposed in, Raft index)
            let mut pending: Vec<(i32, String, u64, u64)> = Vec::new();
            let mut acknowledged = Vec::new();
            while Instant::now() < end_at {
                let now = Instant::now();
                if id == CRASHING_NODE && !crashed && now >= crash_at {
                    node = None; // a crash: nothing closed, nothing flushed
                    pending.clear();
                    crashed = true;
                }
                if id == CRASHING_NODE && node.is_none() && now >= back_at {
                    node = Some(open(id, listen, &peers, &root).await);
                }
                let Some(live) = node.as_mut() else {
                    glommio::timer::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                if now < propose_until {
                    for partition in 0..PARTITIONS {
                        let group = live.group_mut(&key(partition)).unwrap();
                        let count = proposed.entry(partition).or_default();
                        let in_flight = pending.iter().filter(|p| p.0 == partition).count();
                        if group.replica().role() != Role::Leader
                            || *count >= PROPOSALS_PER_GROUP_MAX
                            || in_flight >= 4
                        {
                            continue;
                        }
                        *count += 1;
                        let value = format!("n{id}-p{partition:02}-{count:04}");
                        let batch: Bytes = build_batch(0, &[(0, b"k", value.as_bytes())]).into();
                        if let Ok(index) = group.propose(batch) {
                            let term = group.replica().term();
                            pending.push((partition, value, term, index));
                        }
                    }
                }
                if now >= next_tick {
                    live.tick().await.expect("tick");
                    next_tick = now + Duration::from_millis(10);
                } else {
                    live.step().await.expect("step");
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
                // Acknowledged: committed while this node still leads in the term it was
                // proposed in (the index's entry is then the proposal).
                pending.retain(|(partition, value, term, index)| {
                    let group = live.group(&key(*partition)).unwrap();
                    let replica = group.replica();
                    if replica.role() != Role::Leader || replica.term() != *term {
                        return false;
                    }
                    match group.end_offset_of(*index) {
                        Some(end) if group.high_watermark() >= end => {
                            acknowledged.push((*partition, value.clone()));
                            false
                        }
                        _ => true,
                    }
                });
            }
            let mut node = node.expect("node is up at the end");
            let mut logs = BTreeMap::new();
            for partition in 0..PARTITIONS {
                logs.insert(partition, committed_bytes(&mut node, partition).await);
            }
            node.close().await.unwrap();
            Report { acknowledged, logs }
        })
        .expect("executor starts")
        .join()
        .expect("node thread finished")
}

fn values(log: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = log;
    while !rest.is_empty() {
        let info = validate_batch(rest, usize::MAX).unwrap();
        let batch = &rest[..info.size_bytes];
        if control_record(batch).is_none() {
            let records = record_views(&batch[BATCH_HEADER_BYTES..], info.record_count).unwrap();
            out.push(String::from_utf8_lossy(records[0].value.unwrap()).into_owned());
        }
        rest = &rest[info.size_bytes..];
    }
    out
}

#[test]
fn three_nodes_replicate_many_partitions_over_sockets_through_a_node_crash() {
    let root = tempfile::tempdir().unwrap();
    let start = Instant::now() + Duration::from_millis(500);
    let (address_tx, address_rx) = mpsc::channel();
    let mut peer_senders = Vec::new();
    let mut threads = Vec::new();
    for id in NODES {
        let (peers_tx, peers_rx) = mpsc::channel();
        peer_senders.push(peers_tx);
        let root = root.path().to_path_buf();
        let address_tx = address_tx.clone();
        threads.push(std::thread::spawn(move || {
            run_node(id, root, start, address_tx, peers_rx)
        }));
    }
    let peers: HashMap<u64, SocketAddr> = (0..NODES.len())
        .map(|_| address_rx.recv().unwrap())
        .collect();
    for sender in peer_senders {
        sender.send(peers.clone()).unwrap();
    }
    let reports: Vec<Report> = threads.into_iter().map(|t| t.join().unwrap()).collect();

    let mut acknowledged_total = 0;
    for partition in 0..PARTITIONS {
        let logs: Vec<&(Offset, Vec<u8>)> = reports.iter().map(|r| &r.logs[&partition]).collect();
        assert!(
            logs.windows(2).all(|w| w[0] == w[1]),
            "partition {partition}: committed logs differ (high watermarks {:?})",
            logs.iter().map(|l| l.0).collect::<Vec<_>>()
        );
        let stored = values(&logs[0].1);
        for report in &reports {
            for (_, value) in report.acknowledged.iter().filter(|(p, _)| *p == partition) {
                acknowledged_total += 1;
                let copies = stored.iter().filter(|v| *v == value).count();
                assert_eq!(
                    copies, 1,
                    "partition {partition}: {value} stored {copies} times"
                );
            }
        }
    }
    eprintln!("{acknowledged_total} batches acknowledged over {PARTITIONS} partitions");
    // Leadership spread over the nodes, the crashing one included (it led groups when it died).
    for (report, id) in reports.iter().zip(NODES) {
        assert!(!report.acknowledged.is_empty(), "node {id} never led");
    }
    assert!(
        acknowledged_total >= 500,
        "{acknowledged_total} acknowledged"
    );
}
