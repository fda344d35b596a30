//! Real `sluice serve` processes on loopback, started, killed, paused and restarted by PID: the
//! cluster that `sluice bench failover` and `sluice chaos run` put under load and faults.
//!
//! Each node gets its own directory (`node-N/data`, its log in `node-N/sluice.log`), free
//! loopback ports picked at start (kept across restarts), `--cores 1` and `--overprovisioned
//! true` (three nodes share the machine's cores; pinned, they would all land on CPU 0). With
//! `seeds` every node is a seed of one cluster; without (one node only) it is the plain single
//! broker a user starts with `sluice serve`.
//!
//! With `disk_mb`, each node's data lives on a filesystem of its own: a sparse image
//! (`node-N/disk.img`, ext4) loop-mounted at `node-N/disk`, data in `node-N/disk/data`, so a
//! node's disk can be filled ([`LocalCluster::fill_disk`]) without touching anyone else's.
//!
//! With `fault_points`, each node arms its storage fault points (EIO, ENOSPC, stalls in its
//! writes, fdatasyncs and fallocates) from `node-N/fault-points`, which
//! [`LocalCluster::arm_faults`] writes while it runs.
//!
//! Invariants: every process started is stopped (SIGCONT if paused, SIGTERM, then SIGKILL after
//! 10 s) when the cluster is dropped, on every path out, and every filesystem mounted is then
//! unmounted and its image removed (kept, unmounted, after [`LocalCluster::keep_disks`]);
//! every wait is bounded and fails with what it waited for.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

use crate::link_proxy::LinkProxy;
use crate::ports::free_port;

/// How to start the nodes.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub nodes: usize,
    /// Every node a seed of one cluster (`--node-id`, `--seeds`); false only for one node.
    pub seeds: bool,
    /// Where the nodes keep their data and logs.
    pub dir: PathBuf,
    /// Arguments every node gets after the ones this module sets.
    pub node_args: Vec<String>,
    /// The `sluice` binary to run (this process's own executable when `None`).
    pub binary: Option<PathBuf>,
    /// Each node's data on a loop-mounted ext4 of this many MiB (needs root, `mkfs.ext4`).
    pub disk_mb: Option<u64>,
    /// Every node reaches every other node's RPC port through a [`LinkProxy`] of its own, so
    /// links can be cut ([`LocalCluster::cut`]).
    pub proxied_links: bool,
    /// Each node arms its storage fault points from `node-N/fault-points`
    /// ([`LocalCluster::arm_faults`]); the binary must have them (the `fault-points` feature).
    pub fault_points: bool,
    /// Each node runs under libfaketime (this library), its wall clock offset by what
    /// `node-N/clock-offset` says ([`LocalCluster::set_clock_offset`]); its monotonic clock
    /// (timers, Raft ticks, timeouts) is left alone.
    pub fake_clock: Option<PathBuf>,
}

/// Replaces `path`'s contents at once (write a neighbour, rename): a node polling the file
/// never reads half of it.
fn replace_file(path: &Path, contents: &str) -> Result<(), String> {
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, contents).map_err(|e| format!("write {}: {e}", temp.display()))?;
    std::fs::rename(&temp, path).map_err(|e| format!("rename to {}: {e}", path.display()))
}

/// Runs `command` under libfaketime (`library`): its wall clock offset by what `clock_file`
/// says (`+3600`, `-600`), read again at every clock call; its monotonic clock left alone.
fn with_fake_clock(command: &mut Command, library: &Path, clock_file: &Path) {
    command
        .env("LD_PRELOAD", library)
        .env("FAKETIME_TIMESTAMP_FILE", clock_file)
        .env("FAKETIME_NO_CACHE", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
}

/// Where Debian's `faketime` package puts the multi-threaded libfaketime.
pub const LIBFAKETIME_PATHS: [&str; 2] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/faketime/libfaketimeMT.so.1",
];

/// The libfaketime on this machine: `SLUICE_LIBFAKETIME` when set (a path that does not exist
/// is an error, not a reason to look elsewhere), else Debian's paths.
pub fn find_libfaketime() -> Result<PathBuf, String> {
    if let Some(named) = std::env::var_os("SLUICE_LIBFAKETIME") {
        let named = PathBuf::from(named);
        return if named.exists() {
            Ok(named)
        } else {
            Err(format!(
                "SLUICE_LIBFAKETIME={}: no such file (clock jumps need libfaketime)",
                named.display()
            ))
        };
    }
    LIBFAKETIME_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| {
            "clock jumps need libfaketime (apt-get install faketime, or SLUICE_LIBFAKETIME=path)"
                .to_string()
        })
}

struct Node {
    kafka: SocketAddr,
    dir: PathBuf,
    /// Where `--data-dir` points.
    data: PathBuf,
    /// The node's own filesystem's mount point, if it has one.
    mount: Option<PathBuf>,
    child: Option<Child>,
    paused: bool,
}

/// The file that fills a node's disk.
const FILLER: &str = "chaos-filler";

fn run_tool(program: &str, args: &[&std::ffi::OsStr]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("run {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Creates a sparse `mb` MiB ext4 image at `image` and loop-mounts it at `at`.
fn mount_disk(image: &Path, at: &Path, mb: u64) -> Result<(), String> {
    let file =
        std::fs::File::create(image).map_err(|e| format!("create {}: {e}", image.display()))?;
    file.set_len(mb << 20)
        .map_err(|e| format!("size {}: {e}", image.display()))?;
    drop(file);
    run_tool(
        "mkfs.ext4",
        &["-q".as_ref(), "-F".as_ref(), image.as_os_str()],
    )?;
    std::fs::create_dir_all(at).map_err(|e| format!("create {}: {e}", at.display()))?;
    run_tool(
        "mount",
        &[
            "-o".as_ref(),
            "loop".as_ref(),
            image.as_os_str(),
            at.as_os_str(),
        ],
    )
}

/// The nodes under test; dropping it stops every process.
pub struct LocalCluster {
    nodes: Vec<Node>,
    /// Each node's `--seeds` (they differ when links are proxied: node i names node j by the
    /// address of the proxy i→j).
    seeds: Option<Vec<String>>,
    /// `links[i][j]`: the proxy node i reaches node j through.
    links: Vec<Vec<Option<LinkProxy>>>,
    node_args: Vec<String>,
    binary: PathBuf,
    fault_points: bool,
    fake_clock: Option<PathBuf>,
    /// Leave the nodes' disk images (unmounted) when dropped.
    keep_disks: bool,
}

impl LocalCluster {
    /// Starts every node and waits until each accepts Kafka connections.
    pub fn start(options: &ClusterOptions) -> Result<LocalCluster, String> {
        if !options.seeds && options.nodes != 1 {
            return Err("nodes without seeds: only one node can run alone".into());
        }
        let binary = match &options.binary {
            Some(binary) => binary.clone(),
            None => std::env::current_exe().map_err(|e| format!("this binary's path: {e}"))?,
        };
        let mut nodes = Vec::new();
        let mut rpcs = Vec::new();
        for id in 0..options.nodes {
            let dir = options.dir.join(format!("node-{id}"));
            std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
            let kafka: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            rpcs.push(SocketAddr::from(([127, 0, 0, 1], free_port())));
            let mount = options.disk_mb.map(|_| dir.join("disk"));
            let data = match &mount {
                Some(mount) => mount.join("data"),
                None => dir.join("data"),
            };
            nodes.push(Node {
                kafka,
                dir,
                data,
                mount,
                child: None,
                paused: false,
            });
        }
        let mut links: Vec<Vec<Option<LinkProxy>>> = Vec::new();
        for from in 0..options.nodes {
            let mut row = Vec::new();
            for (to, rpc) in rpcs.iter().enumerate() {
                row.push(if options.proxied_links && from != to {
                    Some(LinkProxy::start(*rpc)?)
                } else {
                    None
                });
            }
            links.push(row);
        }
        let seeds: Vec<String> = (0..options.nodes)
            .map(|from| {
                let named: Vec<String> = (0..options.nodes)
                    .map(|to| {
                        let address = links[from][to].as_ref().map_or(rpcs[to], |p| p.addr);
                        format!("{to}@{address}")
                    })
                    .collect();
                named.join(",")
            })
            .collect();
        // From here on, dropping the cluster unmounts what was mounted.
        let mut cluster = LocalCluster {
            nodes,
            seeds: options.seeds.then_some(seeds),
            links,
            node_args: options.node_args.clone(),
            binary,
            fault_points: options.fault_points,
            fake_clock: options.fake_clock.clone(),
            keep_disks: false,
        };
        if cluster.fake_clock.is_some() {
            for id in 0..cluster.nodes.len() {
                cluster.set_clock_offset(id, 0)?;
            }
        }
        if let Some(mb) = options.disk_mb {
            for node in &mut cluster.nodes {
                let mount = node.mount.take().expect("a mount point per node");
                mount_disk(&node.dir.join("disk.img"), &mount, mb)?;
                node.mount = Some(mount);
            }
        }
        for id in 0..options.nodes {
            cluster.spawn(id)?;
        }
        for id in 0..options.nodes {
            cluster.wait_listening(id)?;
        }
        Ok(cluster)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The `sluice` binary the nodes run (its tools can look at them).
    pub fn binary(&self) -> &std::path::Path {
        &self.binary
    }

    /// Every node's Kafka address, comma-separated.
    pub fn bootstrap(&self) -> String {
        let addresses: Vec<String> = self.nodes.iter().map(|n| n.kafka.to_string()).collect();
        addresses.join(",")
    }

    pub fn kafka_address(&self, id: usize) -> SocketAddr {
        self.nodes[id].kafka
    }

    /// Node `id`'s directory (its log in `sluice.log`).
    pub fn node_dir(&self, id: usize) -> &Path {
        &self.nodes[id].dir
    }

    /// Node `id`'s data directory.
    pub fn data_dir(&self, id: usize) -> &Path {
        &self.nodes[id].data
    }

    /// Whether node `id`'s process runs (paused or not).
    pub fn is_running(&self, id: usize) -> bool {
        self.nodes[id].child.is_some()
    }

    pub fn is_paused(&self, id: usize) -> bool {
        self.nodes[id].paused
    }

    fn spawn(&mut self, id: usize) -> Result<(), String> {
        let node = &self.nodes[id];
        let log_path = node.dir.join("sluice.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("open {}: {e}", log_path.display()))?;
        let mut command = Command::new(&self.binary);
        command
            .args(["serve", "--cores", "1", "--overprovisioned", "true"])
            .args(["--listen", &node.kafka.to_string()])
            .args(["--admin-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&node.data);
        if let Some(seeds) = &self.seeds {
            command.args(["--node-id", &id.to_string(), "--seeds", &seeds[id]]);
        }
        if self.fault_points {
            command.env("SLUICE_FAULT_POINTS", self.fault_file(id));
        }
        if let Some(library) = &self.fake_clock {
            with_fake_clock(&mut command, library, &self.clock_file(id));
        }
        let child = command
            .args(&self.node_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start node {id}: {e}"))?;
        self.nodes[id].child = Some(child);
        self.nodes[id].paused = false;
        Ok(())
    }

    /// Waits until node `id` accepts Kafka connections. A node killed a moment ago can find its
    /// ports still held (io_uring tears a dead process's sockets down after it exits): one
    /// that exits early is started again until the deadline.
    pub fn wait_listening(&mut self, id: usize) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let node = &mut self.nodes[id];
            let exited = match node.child.as_mut() {
                Some(child) => child.try_wait().map_err(|e| e.to_string())?,
                None => return Err(format!("node {id} is not running")),
            };
            if let Some(status) = exited {
                node.child = None;
                if Instant::now() >= deadline {
                    return Err(format!(
                        "node {id} keeps exiting ({status}); see {}",
                        node.dir.join("sluice.log").display()
                    ));
                }
                std::thread::sleep(Duration::from_millis(200));
                self.spawn(id)?;
                continue;
            }
            // Listening, and still alive after that (not a dead predecessor's socket).
            if TcpStream::connect(node.kafka).is_ok()
                && node
                    .child
                    .as_mut()
                    .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("node {id} did not listen on {}", node.kafka));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, id: usize, signal: Signal) {
        if let Some(child) = &self.nodes[id].child {
            if let Some(pid) = Pid::from_raw(child.id() as i32) {
                let _ = kill_process(pid, signal);
            }
        }
    }

    /// Waits (≤ 60 s) until the cluster has formed: every node registered, and the controller
    /// has created `__consumer_offsets` (which it does once every seed registered) with a
    /// leader for each of its partitions. At once for a node without seeds.
    pub fn wait_formed(&self) -> Result<(), String> {
        use rdkafka::consumer::Consumer;
        if self.seeds.is_none() {
            return Ok(());
        }
        let bootstrap = self.bootstrap();
        let client: rdkafka::consumer::BaseConsumer = rdkafka::config::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .map_err(|e| format!("client for {bootstrap}: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = String::from("no answer");
        while Instant::now() < deadline {
            match client.fetch_metadata(None, Duration::from_secs(5)) {
                Ok(metadata) => {
                    let offsets_led = metadata
                        .topics()
                        .iter()
                        .find(|t| t.name() == "__consumer_offsets")
                        .is_some_and(|t| {
                            !t.partitions().is_empty()
                                && t.partitions().iter().all(|p| p.leader() >= 0)
                        });
                    if metadata.brokers().len() == self.nodes.len() && offsets_led {
                        return Ok(());
                    }
                    last = format!(
                        "{} brokers, __consumer_offsets led: {offsets_led}",
                        metadata.brokers().len()
                    );
                }
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(format!("the cluster did not form within 60 s ({last})"))
    }

    /// Fills node `id`'s own filesystem (all its free space taken by one file). Needs
    /// `disk_mb`.
    pub fn fill_disk(&self, id: usize) -> Result<(), String> {
        let mount = self.nodes[id]
            .mount
            .as_ref()
            .ok_or("the nodes have no disks of their own (disk_mb)")?;
        let path = mount.join(FILLER);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("create {}: {e}", path.display()))?;
        // Take everything: ask for the free space, then for whatever is left, until nothing is.
        for _ in 0..8 {
            let free = rustix::fs::statvfs(mount.as_path())
                .map(|s| s.f_bavail * s.f_frsize)
                .map_err(|e| format!("statvfs {}: {e}", mount.display()))?;
            if free < 4096 {
                break;
            }
            let have = file.metadata().map_or(0, |m| m.len());
            let _ = rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), have, free);
        }
        Ok(())
    }

    /// Frees what [`fill_disk`](Self::fill_disk) took.
    pub fn free_disk(&self, id: usize) -> Result<(), String> {
        let Some(mount) = &self.nodes[id].mount else {
            return Ok(());
        };
        match std::fs::remove_file(mount.join(FILLER)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(format!("remove the filler on node {id}: {e}"))
            }
            _ => Ok(()),
        }
    }

    /// The node the running nodes name as the controller (Metadata's `controller_id`; node
    /// ids are node indexes), asking each running, unpaused node in turn (each bounded by 2 s).
    pub fn controller(&self) -> Option<usize> {
        use kafka_protocol::messages::{ApiKey, MetadataRequest, MetadataResponse};
        (0..self.nodes.len())
            .filter(|&id| self.is_running(id) && !self.is_paused(id))
            .find_map(|id| {
                let mut connection =
                    crate::wire::Connection::connect(&self.nodes[id].kafka.to_string()).ok()?;
                let answer: MetadataResponse = connection
                    .call(
                        ApiKey::Metadata,
                        12,
                        &MetadataRequest::default().with_topics(Some(Vec::new())),
                        Duration::from_secs(2),
                    )
                    .ok()?;
                usize::try_from(answer.controller_id.0)
                    .ok()
                    .filter(|&node| node < self.nodes.len())
            })
    }

    /// Whether the nodes run under libfaketime.
    pub fn has_fake_clock(&self) -> bool {
        self.fake_clock.is_some()
    }

    fn clock_file(&self, id: usize) -> PathBuf {
        self.nodes[id].dir.join("clock-offset")
    }

    /// Sets node `id`'s wall clock `seconds` ahead of the real one (behind if negative), at
    /// once: a clock jump (needs `fake_clock`).
    pub fn set_clock_offset(&self, id: usize, seconds: i64) -> Result<(), String> {
        if self.fake_clock.is_none() {
            return Err("the nodes do not run under libfaketime (fake_clock)".into());
        }
        replace_file(&self.clock_file(id), &format!("{seconds:+}\n"))
    }

    fn fault_file(&self, id: usize) -> PathBuf {
        self.nodes[id].dir.join("fault-points")
    }

    /// Arms node `id`'s storage fault points as `spec` says (`point=actions` lines, see
    /// `sluice_storage::faults`), replacing what was armed; the node picks it up within its
    /// poll interval (20 ms). Needs `fault_points`.
    pub fn arm_faults(&self, id: usize, spec: &str) -> Result<(), String> {
        if !self.fault_points {
            return Err("the nodes do not watch fault points (fault_points)".into());
        }
        replace_file(&self.fault_file(id), spec)
    }

    /// Disarms every fault point of node `id`.
    pub fn disarm_faults(&self, id: usize) -> Result<(), String> {
        if !self.fault_points {
            return Ok(());
        }
        match std::fs::remove_file(self.fault_file(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(format!("disarm node {id}'s fault points: {e}"))
            }
            _ => Ok(()),
        }
    }

    /// Cuts the links between nodes `a` and `b`, both ways (needs `proxied_links`).
    pub fn cut(&self, a: usize, b: usize) -> Result<(), String> {
        self.on_link(a, b, |proxy| proxy.set_blocked(true))
    }

    /// Applies `change` to the proxies of both directions between nodes `a` and `b`.
    fn on_link(&self, a: usize, b: usize, change: impl Fn(&LinkProxy)) -> Result<(), String> {
        for (from, to) in [(a, b), (b, a)] {
            change(
                self.links[from][to]
                    .as_ref()
                    .ok_or("the nodes' links are not proxied (proxied_links)")?,
            );
        }
        Ok(())
    }

    /// Delays every byte between nodes `a` and `b` by `delay`, both ways (needs
    /// `proxied_links`).
    pub fn delay_link(&self, a: usize, b: usize, delay: Duration) -> Result<(), String> {
        self.on_link(a, b, |proxy| proxy.set_delay(delay))
    }

    /// Makes the link between nodes `a` and `b` lossy, both ways: each chunk resets its
    /// connection with this chance in thousandths (needs `proxied_links`).
    pub fn make_link_lossy(&self, a: usize, b: usize, per_mille: u32) -> Result<(), String> {
        self.on_link(a, b, |proxy| proxy.set_reset_per_mille(per_mille))
    }

    /// Restores every link: no cut, no delay, no loss.
    pub fn heal_links(&self) {
        for proxy in self.links.iter().flatten().flatten() {
            proxy.heal();
        }
    }

    /// SIGKILLs node `id` and reaps it.
    ///
    /// Returns once its Kafka port stops accepting connections (bounded by 10 s): the kernel
    /// tears a dead process's io_uring sockets down a moment after it is reaped, and until then
    /// a connection to the port still succeeds, which would make a restarted node that could
    /// not bind look as if it listened.
    pub fn kill(&mut self, id: usize) {
        if let Some(mut child) = self.nodes[id].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.nodes[id].paused = false;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline
            && TcpStream::connect_timeout(&self.nodes[id].kafka, Duration::from_millis(100)).is_ok()
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops node `id` as an operator would (SIGTERM), and SIGKILLs it if it has not exited
    /// within `grace`. Returns whether it exited by itself.
    pub fn stop(&mut self, id: usize, grace: Duration) -> bool {
        self.resume(id);
        self.signal(id, Signal::TERM);
        let Some(mut child) = self.nodes[id].child.take() else {
            return true;
        };
        let deadline = Instant::now() + grace;
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let exited = !matches!(child.try_wait(), Ok(None));
        let _ = child.kill();
        let _ = child.wait();
        exited
    }

    /// Starts node `id` again on its ports and directory, and waits until it listens.
    pub fn restart(&mut self, id: usize) -> Result<(), String> {
        self.spawn(id)?;
        self.wait_listening(id)
    }

    /// SIGSTOPs node `id`: its sockets stay open, nothing answers.
    pub fn pause(&mut self, id: usize) {
        if self.nodes[id].child.is_some() {
            self.signal(id, Signal::STOP);
            self.nodes[id].paused = true;
        }
    }

    /// SIGCONTs node `id` if paused.
    pub fn resume(&mut self, id: usize) {
        if self.nodes[id].paused {
            self.signal(id, Signal::CONT);
            self.nodes[id].paused = false;
        }
    }
}

impl LocalCluster {
    /// When dropped, leave each node's disk image (`node-N/disk.img`, unmounted; `mount -o
    /// loop` it to read the node's data), as a failed run needs them looked at.
    pub fn keep_disks(&mut self) {
        self.keep_disks = true;
    }
}

impl Drop for LocalCluster {
    /// SIGCONT whoever is paused, SIGTERM everyone, then SIGKILL whoever is still there after
    /// 10 s.
    fn drop(&mut self) {
        for id in 0..self.nodes.len() {
            self.resume(id);
            self.signal(id, Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
            if let Some(mount) = node.mount.take() {
                let _ = run_tool("umount", &[mount.as_os_str()]);
                if !self.keep_disks {
                    let _ = std::fs::remove_file(node.dir.join("disk.img"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wall clock a process sees under [`with_fake_clock`] follows its clock file.
    #[test]
    fn a_fake_clock_follows_its_offset_file() {
        let library = find_libfaketime().expect("libfaketime (scripts/test installs faketime)");
        let dir = tempfile::tempdir().unwrap();
        let clock_file = dir.path().join("clock-offset");
        let seconds_seen = |offset: &str| -> i64 {
            std::fs::write(&clock_file, offset).unwrap();
            let mut date = Command::new("date");
            date.arg("+%s");
            with_fake_clock(&mut date, &library, &clock_file);
            let out = date.output().unwrap();
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        let now = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64
        };
        let ahead = seconds_seen("+3600") - now();
        assert!((3590..=3610).contains(&ahead), "{ahead}");
        let behind = seconds_seen("-600") - now();
        assert!((-610..=-590).contains(&behind), "{behind}");
    }
}
