//! Three controller replicas (cluster metadata over Raft) on real logs in one process: every
//! replica builds the same image, refusals are the same everywhere, and a restarted replica
//! rebuilds its image from its log and catches up, through a controller leader's death.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};

use glommio::LocalExecutorBuilder;
use sluice_core::cluster_controller::ControllerReplica;
use sluice_core::cluster_metadata::{
    assign_replicas, BrokerRegistration, ClusterImage, MetadataCommand, Refused,
};
use sluice_core::topics::Topic;
use sluice_replication::{Message, ReplicaConfig};

const VOTERS: [u64; 3] = [1, 2, 3];

fn run<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    LocalExecutorBuilder::default()
        .spawn(f)
        .expect("executor starts")
        .join()
        .expect("executor thread finished")
}

struct Controllers {
    dirs: Vec<PathBuf>,
    nodes: Vec<Option<ControllerReplica>>,
    network: VecDeque<Message>,
}

impl Controllers {
    async fn open(&self, id: u64) -> ControllerReplica {
        let dir = &self.dirs[(id - 1) as usize];
        std::fs::create_dir_all(dir).unwrap();
        ControllerReplica::open(dir, id, &VOTERS, ReplicaConfig::default())
            .await
            .expect("controller opens")
    }

    async fn start(root: &Path) -> Controllers {
        let mut controllers = Controllers {
            dirs: VOTERS
                .iter()
                .map(|id| root.join(format!("node-{id}")))
                .collect(),
            nodes: Vec::new(),
            network: VecDeque::new(),
        };
        for id in VOTERS {
            let node = controllers.open(id).await;
            controllers.nodes.push(Some(node));
        }
        controllers
    }

    async fn step(&mut self) {
        for node in self.nodes.iter_mut().flatten() {
            node.partition().tick();
        }
        loop {
            for node in self.nodes.iter_mut().flatten() {
                let outbox = node.run_ready().await.expect("ready work runs");
                self.network.extend(outbox.messages);
            }
            if self.network.is_empty() {
                break;
            }
            while let Some(message) = self.network.pop_front() {
                if let Some(node) = self.nodes[(message.to - 1) as usize].as_mut() {
                    let _ = node.partition().receive(message);
                }
            }
        }
    }

    async fn leader(&mut self) -> u64 {
        for _ in 0..500 {
            if let Some(node) = self.nodes.iter().flatten().find(|n| n.is_leader()) {
                return node.leader_id();
            }
            self.step().await;
        }
        panic!("no controller leader within 500 ticks");
    }

    /// Proposes on the leader and waits for the outcome (retrying through leader changes).
    async fn submit(&mut self, command: MetadataCommand) -> Result<(), Refused> {
        for _ in 0..20 {
            let leader = self.leader().await;
            let node = self.nodes[(leader - 1) as usize].as_mut().unwrap();
            let Ok(index) = node.propose(&command) else {
                self.step().await;
                continue;
            };
            for _ in 0..50 {
                self.step().await;
                if let Some(node) = self.nodes[(leader - 1) as usize].as_mut() {
                    if let Some(outcome) = node.take_outcome(index) {
                        return outcome;
                    }
                }
            }
        }
        panic!("command never committed: {command:?}");
    }

    /// Registers every voter as a broker.
    async fn register_voters(&mut self) {
        for id in VOTERS {
            self.submit(MetadataCommand::RegisterBroker(BrokerRegistration {
                node_id: id as i32,
                host: "127.0.0.1".into(),
                port: 9092 + id as u16,
                rack: None,
                endpoints: Vec::new(),
                rpc: None,
                seed: false,
            }))
            .await
            .unwrap();
        }
    }

    fn images(&self) -> Vec<ClusterImage> {
        self.nodes
            .iter()
            .flatten()
            .map(|n| n.image().clone())
            .collect()
    }
}

fn topic(name: &str, partitions: i32) -> Topic {
    Topic {
        name: name.into(),
        id: uuid::Uuid::new_v4(),
        partitions,
        configs: BTreeMap::new(),
    }
}

#[test]
fn controllers_agree_on_the_cluster_through_a_leader_death_and_a_restart() {
    run(|| async {
        let root = tempfile::tempdir().unwrap();
        let mut cluster = Controllers::start(root.path()).await;
        cluster.register_voters().await;
        let orders = topic("orders", 6);
        let replicas = assign_replicas(&[1, 2, 3], 6, 3, 0, 0).unwrap();
        let create = MetadataCommand::CreateTopic {
            topic: orders.clone(),
            replicas,
        };
        cluster.submit(create.clone()).await.unwrap();
        assert_eq!(
            cluster.submit(create).await,
            Err(Refused::TopicExists("orders".into()))
        );

        // The controller leader dies; the others go on.
        let old_leader = cluster.leader().await;
        cluster.nodes[(old_leader - 1) as usize] = None;
        cluster
            .submit(MetadataCommand::CreateTopic {
                topic: topic("payments", 2),
                replicas: assign_replicas(&[1, 2, 3], 2, 3, 1, 0).unwrap(),
            })
            .await
            .unwrap();
        cluster
            .submit(MetadataCommand::DeleteTopic { id: orders.id })
            .await
            .unwrap();
        assert_ne!(cluster.leader().await, old_leader);

        // Back from its log, it catches up to the same image.
        // (Its image is what its log held committed as far as it knew: the commit index is
        // stored with term and vote only, so it may lag until the leader tells it more.)
        let reopened = cluster.open(old_leader).await;
        let current = cluster.images()[0].version;
        assert!(reopened.image().version <= current);
        cluster.nodes[(old_leader - 1) as usize] = Some(reopened);
        for _ in 0..100 {
            cluster.step().await;
        }
        let images = cluster.images();
        assert_eq!(images.len(), 3);
        assert!(images.windows(2).all(|w| w[0] == w[1]), "{images:#?}");
        let image = &images[0];
        assert_eq!(image.brokers.len(), 3);
        assert_eq!(image.topics.keys().collect::<Vec<_>>(), vec!["payments"]);
        assert_eq!(image.replicas_per_broker().values().sum::<usize>(), 6);

        // A clean stop of every node: each reopens with the whole image, from its log alone.
        for node in std::mem::take(&mut cluster.nodes).into_iter().flatten() {
            node.close().await.unwrap();
        }
        for id in VOTERS {
            let node = cluster.open(id).await;
            assert_eq!(node.image(), image, "node {id} rebuilt from its log");
        }
    });
}

/// Snapshots: every replica records its image and cuts its log once enough commands applied;
/// a replica that was down while the others cut gets the leader's image in a Raft snapshot and
/// goes on from it; every replica reopens from its snapshot plus the log after it, to the same
/// image, and commands from before a snapshot never apply twice.
#[test]
fn controller_snapshots_cut_the_log_and_bring_a_lagging_replica_back() {
    run(|| async {
        const EVERY_BYTES: u64 = 2048;
        let root = tempfile::tempdir().unwrap();
        let mut cluster = Controllers::start(root.path()).await;
        cluster.register_voters().await;
        // Node 3 stops; the others take enough commands to snapshot and cut past its log.
        cluster.nodes[2] = None;
        let mut names = Vec::new();
        for n in 0..30 {
            let name = format!("topic-{n}");
            cluster
                .submit(MetadataCommand::CreateTopic {
                    topic: topic(&name, 2),
                    replicas: assign_replicas(&[1, 2, 3], 2, 3, n, 0).unwrap(),
                })
                .await
                .unwrap();
            names.push(name);
            for node in cluster.nodes.iter_mut().flatten() {
                node.snapshot_if_due(EVERY_BYTES).await.unwrap();
            }
        }
        let deleted = cluster.images()[0].topics["topic-0"].topic.id;
        cluster
            .submit(MetadataCommand::DeleteTopic { id: deleted })
            .await
            .unwrap();
        for node in cluster.nodes.iter_mut().flatten() {
            assert!(node.snapshot_if_due(1024).await.unwrap(), "snapshot taken");
            let start = node.partition().log().log_start_offset();
            assert!(start.0 > 20, "the log was cut (starts at {start:?})");
            let files: Vec<_> = std::fs::read_dir(node.partition().log().dir())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            assert!(files.contains(&"state-snapshot".to_string()), "{files:?}");
        }
        // Two more commands after the cut, which node 3 receives as entries.
        cluster
            .submit(MetadataCommand::CreateTopic {
                topic: topic("after", 1),
                replicas: assign_replicas(&[1, 2, 3], 1, 3, 0, 0).unwrap(),
            })
            .await
            .unwrap();

        // Node 3 comes back behind the cut: the leader's snapshot brings the image.
        let lagging = cluster.open(3).await;
        assert_eq!(lagging.image().topics.len(), 0, "node 3 missed every topic");
        cluster.nodes[2] = Some(lagging);
        for _ in 0..100 {
            cluster.step().await;
        }
        let images = cluster.images();
        assert_eq!(images.len(), 3);
        assert!(images.windows(2).all(|w| w[0] == w[1]), "{images:#?}");
        let image = images[0].clone();
        assert_eq!(
            image.topics.len(),
            30,
            "29 of the loop's topics and `after`"
        );
        assert!(!image.topics.contains_key("topic-0"));
        assert!(image.topics.contains_key("after"));
        let node3 = cluster.nodes[2].as_mut().unwrap();
        assert!(
            node3.partition().log().log_start_offset().0 > 20,
            "node 3's log started over at the leader's cut"
        );

        // Every node reopens from its snapshot and the log after it: the same image.
        for node in std::mem::take(&mut cluster.nodes).into_iter().flatten() {
            node.close().await.unwrap();
        }
        for id in VOTERS {
            let node = cluster.open(id).await;
            assert_eq!(node.image(), &image, "node {id} rebuilt from its snapshot");
        }
    });
}
