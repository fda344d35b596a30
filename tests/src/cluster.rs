//! A local cluster of `sluice serve` processes for black-box tests: N nodes on loopback, each
//! with its own Kafka port, RPC port and data directory, every node a seed (controller voter).
//! Nodes are killed (SIGKILL), paused, restarted on the same ports and directory, and stopped
//! by PID; dropping the cluster kills whatever still runs. Each node arms its storage fault
//! points from a control file of its own (see [`Node::fault_points_file`]).

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kafka_protocol::messages::{ApiKey, MetadataRequest, MetadataResponse};

use crate::ports::free_port;
pub use crate::ports::free_ports;
use crate::sluice_binary;
use crate::wire::{call, connect};

/// One node: its addresses, its directory, its process while it runs.
pub struct Node {
    pub id: i32,
    pub kafka: SocketAddr,
    pub rpc: SocketAddr,
    pub dir: PathBuf,
    /// A second listener, `INTERNAL` (plaintext), when the cluster was started with one.
    pub internal: Option<SocketAddr>,
    /// One of the seeds (a controller voter); otherwise it joined through them
    /// ([`Cluster::join_node`]).
    pub seed: bool,
    child: Option<Child>,
    /// "listening" lines in the log before the current run started.
    runs_before: usize,
}

impl Node {
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("sluice.log")
    }

    /// What the node has written to its standard error, over all its runs.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The control file the node arms its storage fault points from (`SLUICE_FAULT_POINTS`;
    /// missing, as it starts out, disarms every point).
    pub fn fault_points_file(&self) -> PathBuf {
        self.dir.join("fault-points")
    }
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    seeds: String,
    extra_args: Vec<String>,
    /// Shards per node (`--cores`).
    cores: usize,
    _root: tempfile::TempDir,
}

/// Shards of a node listen for RPC on its port + shard id: a base whose next
/// `RPC_PORTS_PER_NODE` ports are free too.
const RPC_PORTS_PER_NODE: u16 = 4;

/// A node's RPC base port and Kafka port.
fn take_node_ports() -> (u16, u16) {
    (free_ports(RPC_PORTS_PER_NODE), free_port())
}

impl Cluster {
    /// Starts `count` nodes with `--cores 1` plus `extra_args`, and waits until every node
    /// lists every broker and knows the controller.
    pub fn start(count: usize, extra_args: &[&str]) -> Cluster {
        Cluster::start_inner(count, 1, extra_args, false)
    }

    /// Like [`Cluster::start`], each node with `cores` shards (each shard talks to the same
    /// shard of the other nodes: what crosses nodes and shards at once is tested so).
    pub fn start_with_cores(count: usize, cores: usize, extra_args: &[&str]) -> Cluster {
        assert!(
            (1..=RPC_PORTS_PER_NODE as usize).contains(&cores),
            "at most {RPC_PORTS_PER_NODE} shards per node"
        );
        Cluster::start_inner(count, cores, extra_args, false)
    }

    /// Like [`Cluster::start`], each node with a second listener named `INTERNAL` (plaintext,
    /// on a port of its own: [`Node::internal`]).
    pub fn start_with_internal_listener(count: usize, extra_args: &[&str]) -> Cluster {
        Cluster::start_inner(count, 1, extra_args, true)
    }

    fn start_inner(count: usize, cores: usize, extra_args: &[&str], internal: bool) -> Cluster {
        let root = tempfile::tempdir().expect("a directory for the cluster");
        let nodes: Vec<Node> = (0..count)
            .map(|id| {
                let dir = root.path().join(format!("node-{id}"));
                std::fs::create_dir_all(&dir).expect("a node directory");
                let (rpc, kafka) = take_node_ports();
                let internal = internal.then(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
                Node {
                    id: id as i32,
                    kafka: ([127, 0, 0, 1], kafka).into(),
                    rpc: ([127, 0, 0, 1], rpc).into(),
                    dir,
                    internal,
                    seed: true,
                    child: None,
                    runs_before: 0,
                }
            })
            .collect();
        let seeds = nodes
            .iter()
            .map(|n| format!("{}@{}", n.id, n.rpc))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            nodes,
            seeds,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            cores,
            _root: root,
        };
        for id in 0..count {
            cluster.spawn(id);
        }
        for id in 0..count {
            cluster.wait_listening(id);
        }
        cluster.wait_until_formed(Duration::from_secs(30));
        cluster
    }

    /// Starts one more node that is not a seed: it joins through the seeds (the controller
    /// registers it and adds it as a learner of the controller group). Returns its id once it
    /// listens; [`wait_until_formed`](Self::wait_until_formed) then waits for the join.
    pub fn join_node(&mut self) -> i32 {
        let (rpc, kafka) = take_node_ports();
        let id = self.nodes.len();
        let dir = self._root.path().join(format!("node-{id}"));
        std::fs::create_dir_all(&dir).expect("a node directory");
        self.nodes.push(Node {
            id: id as i32,
            kafka: ([127, 0, 0, 1], kafka).into(),
            rpc: ([127, 0, 0, 1], rpc).into(),
            dir,
            internal: None,
            seed: false,
            child: None,
            runs_before: 0,
        });
        self.spawn(id);
        self.wait_listening(id);
        id as i32
    }

    /// Every node's Kafka address, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.kafka.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn node(&self, id: i32) -> &Node {
        &self.nodes[id as usize]
    }

    fn listening_line(node: &Node) -> String {
        format!("listening addr={} ", node.kafka)
    }

    fn spawn(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        node.runs_before = node.log().matches(&Self::listening_line(node)).count();
        let node = &self.nodes[index];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.log_path())
            .expect("log file");
        let listen = match node.internal {
            None => vec!["--listen".to_string(), node.kafka.to_string()],
            Some(internal) => vec![
                "--listeners".to_string(),
                format!("PLAINTEXT://{},INTERNAL://{internal}", node.kafka),
                "--listener-security-protocol-map".to_string(),
                "INTERNAL:PLAINTEXT".to_string(),
            ],
        };
        let child = Command::new(sluice_binary())
            .args(["serve", "--cores", &self.cores.to_string()])
            .args(["--node-id", &node.id.to_string()])
            .args(["--overprovisioned", "true"])
            .args(&listen)
            .args(["--admin-listen", "127.0.0.1:0"])
            .args(["--seeds", &self.seeds])
            .args(if node.seed {
                vec![]
            } else {
                vec!["--rpc-listen".to_string(), node.rpc.to_string()]
            })
            .arg("--data-dir")
            .arg(node.dir.join("data"))
            .args(&self.extra_args)
            .env("SLUICE_FAULT_POINTS", node.fault_points_file())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sluice serve");
        self.nodes[index].child = Some(child);
    }

    fn wait_listening(&mut self, index: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let node = &mut self.nodes[index];
            let listening = Self::listening_line(node);
            let runs_before = node.runs_before;
            if let Some(child) = node.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    // A killed process's sockets can outlive it briefly (io_uring tears its
                    // requests down after the exit): try the same ports again.
                    let log = node.log();
                    let port_taken = log.lines().last().is_some_and(|l| {
                        l.contains("already in use") || l.contains("Address in use")
                    });
                    if port_taken && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(200));
                        self.spawn(index);
                        continue;
                    }
                    panic!("node {} exited early: {status}\n{log}", node.id);
                }
            }
            if node.log().matches(&listening).count() > runs_before
                && TcpStream::connect(node.kafka).is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not start listening on {}",
                node.id,
                node.kafka
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every running node lists every node as a broker and names a controller.
    pub fn wait_until_formed(&self, within: Duration) {
        let deadline = Instant::now() + within;
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            loop {
                let metadata = metadata(node.kafka);
                if metadata.brokers.len() == self.nodes.len() && metadata.controller_id.0 >= 0 {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {} sees {} brokers, controller {}",
                    node.id,
                    metadata.brokers.len(),
                    metadata.controller_id.0
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// SIGKILL: no chance to flush or hand anything over.
    pub fn kill(&mut self, id: i32) {
        if let Some(mut child) = self.nodes[id as usize].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP (`pause = true`) or SIGCONT: the process stays, silent.
    pub fn pause(&self, id: i32, pause: bool) {
        let pid = self.nodes[id as usize].pid().expect("a running node");
        let signal = if pause { "-STOP" } else { "-CONT" };
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        if pause {
            // SIGSTOP takes effect as each thread next enters the kernel: a thread finishing
            // an fdatasync or a step may still run for a moment. Tests that act on a paused
            // node ("it receives nothing now") wait until every thread has stopped.
            let deadline = Instant::now() + Duration::from_secs(5);
            while !all_threads_stopped(pid) {
                assert!(Instant::now() < deadline, "node {id} did not stop");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// Starts a stopped node again on its ports and directory; waits until it listens.
    pub fn restart(&mut self, id: i32) {
        assert!(!self.nodes[id as usize].is_running(), "node {id} runs");
        self.spawn(id as usize);
        self.wait_listening(id as usize);
    }

    /// SIGTERM and wait (a clean stop).
    pub fn stop(&mut self, id: i32) {
        let node = &mut self.nodes[id as usize];
        let Some(mut child) = node.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().expect("wait").is_none() {
            assert!(
                Instant::now() < deadline,
                "node {id} did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The data directory of node `id`.
    pub fn data_dir(&self, id: i32) -> PathBuf {
        self.nodes[id as usize].dir.join("data")
    }
}

/// A Metadata request (all topics) to `addr`.
pub fn metadata(addr: SocketAddr) -> MetadataResponse {
    let mut s = connect(addr);
    call(
        &mut s,
        ApiKey::Metadata,
        12,
        &MetadataRequest::default().with_topics(None),
    )
}

/// The directory of `topic`'s partition `partition` in a node's data directory.
/// Whether every thread of process `pid` is stopped (state `T` in `/proc/PID/task/*/stat`).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks.filter_map(Result::ok).all(|task| {
        std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
            // The state follows the command name, which is in parentheses.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
                .is_some_and(|state| state == 'T' || state == 't')
        })
    })
}

pub fn partition_dir(data_dir: &Path, topic: &str, partition: i32) -> PathBuf {
    crate::topic_dir(data_dir, topic).join(partition.to_string())
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            for node in &self.nodes {
                let log = node.log();
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(40)..];
                eprintln!(
                    "--- last {} lines of node {}'s log ---\n{}",
                    tail.len(),
                    node.id,
                    tail.join("\n")
                );
            }
        }
    }
}
