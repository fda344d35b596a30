//! `sluice cluster dev`: a local N-node cluster on loopback in one command, the way
//! `rpk container start -n 3` gives one for Redpanda. It starts `sluice serve` processes (this
//! same executable) with distinct Kafka and RPC ports and data directories, every node a seed,
//! prints the bootstrap list, and on Ctrl-C (or SIGTERM) stops every node by PID with SIGTERM,
//! waiting for each. If a node dies on its own, the others are stopped too.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `sluice cluster dev`: a local N-node cluster on loopback.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Nodes, 1 to 9.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=9))]
    nodes: u64,
    /// Where the nodes keep their data and logs (node-0, node-1, ...).
    #[arg(long, value_name = "DIR", default_value = "./data-cluster")]
    dir: PathBuf,
    /// Shards per node, 1 to 10.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=RPC_PORT_STRIDE as u64))]
    cores: u64,
    /// Node i's Kafka port is this + i.
    #[arg(long, value_name = "PORT", default_value_t = 9092, value_parser = clap::value_parser!(u16).range(1..))]
    kafka_port: u16,
    /// Node i's RPC port is this + 10 i (shard s: + s).
    #[arg(long, value_name = "PORT", default_value_t = 33145, value_parser = clap::value_parser!(u16).range(1..))]
    rpc_port: u16,
    /// Node i's admin listener (`/metrics`) is on this port + i.
    #[arg(long, value_name = "PORT", default_value_t = 9644, value_parser = clap::value_parser!(u16).range(1..))]
    admin_port: u16,
}

struct Options {
    nodes: usize,
    dir: PathBuf,
    cores: usize,
    kafka_port: u16,
    rpc_port: u16,
    admin_port: u16,
}

/// RPC ports of consecutive nodes are this far apart (shard `s` uses the node's port + `s`).
const RPC_PORT_STRIDE: u16 = 10;

fn options(args: DevArgs) -> Result<Options, String> {
    let options = Options {
        nodes: args.nodes as usize,
        dir: args.dir,
        cores: args.cores as usize,
        kafka_port: args.kafka_port,
        rpc_port: args.rpc_port,
        admin_port: args.admin_port,
    };
    let last_rpc = u32::from(options.rpc_port) + u32::from(RPC_PORT_STRIDE) * options.nodes as u32;
    let last_kafka = u32::from(options.kafka_port) + options.nodes as u32;
    let last_admin = u32::from(options.admin_port) + options.nodes as u32;
    if [last_rpc, last_kafka, last_admin]
        .iter()
        .any(|last| *last > u32::from(u16::MAX))
    {
        return Err("ports out of range".into());
    }
    Ok(options)
}

/// Runs the cluster until SIGINT/SIGTERM.
pub fn dev(args: DevArgs) -> Result<(), String> {
    let options = options(args)?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|e| format!("cannot handle signal {signal}: {e}"))?;
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let kafka = |i: usize| format!("127.0.0.1:{}", options.kafka_port + i as u16);
    let admin = |i: usize| format!("127.0.0.1:{}", options.admin_port + i as u16);
    let rpc = |i: usize| {
        format!(
            "127.0.0.1:{}",
            options.rpc_port + RPC_PORT_STRIDE * i as u16
        )
    };
    let seeds = (0..options.nodes)
        .map(|i| format!("{i}@{}", rpc(i)))
        .collect::<Vec<_>>()
        .join(",");
    let mut children: Vec<(usize, Child, PathBuf)> = Vec::new();
    let mut started = Ok(());
    for i in 0..options.nodes {
        let dir = options.dir.join(format!("node-{i}"));
        let log = std::fs::create_dir_all(&dir)
            .and_then(|()| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join("sluice.log"))
            })
            .map_err(|e| format!("{}: {e}", dir.display()));
        let spawned = log.and_then(|log| {
            Command::new(&exe)
                .args(["serve", "--node-id", &i.to_string(), "--seeds", &seeds])
                .args(["--listen", &kafka(i), "--cores", &options.cores.to_string()])
                .args(["--admin-listen", &admin(i)])
                // The nodes share this machine's cores: pinned, every node's shard 0 would
                // sit on the same CPU.
                .args(["--overprovisioned", "true"])
                .arg("--data-dir")
                .arg(dir.join("data"))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("cannot start node {i}: {e}"))
        });
        match spawned {
            Ok(child) => {
                println!(
                    "node {i}: pid {}, kafka {}, rpc {}, admin http://{}, log {}",
                    child.id(),
                    kafka(i),
                    rpc(i),
                    admin(i),
                    dir.join("sluice.log").display()
                );
                children.push((i, child, dir));
            }
            Err(e) => {
                started = Err(e);
                break;
            }
        }
    }
    let bootstrap = (0..options.nodes).map(kafka).collect::<Vec<_>>().join(",");
    let outcome = started.and_then(|()| {
        wait_listening(&mut children, &kafka, &stop)?;
        println!("bootstrap: {bootstrap}");
        println!("the cluster runs; Ctrl-C stops every node");
        watch(&mut children, &stop)
    });
    stop_all(&mut children);
    outcome
}

/// Waits until each node's log says it listens (at most a minute).
fn wait_listening(
    children: &mut [(usize, Child, PathBuf)],
    kafka: &dyn Fn(usize) -> String,
    stop: &AtomicBool,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for (i, child, dir) in children.iter_mut() {
        let listening = format!("listening addr={} ", kafka(*i));
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "node {i} exited ({status}); see {}",
                    dir.join("sluice.log").display()
                ));
            }
            let log = std::fs::read_to_string(dir.join("sluice.log")).unwrap_or_default();
            if log.contains(&listening) {
                break;
            }
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("node {i} did not start within a minute"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// Until a signal, or a node exiting on its own (an error).
fn watch(children: &mut [(usize, Child, PathBuf)], stop: &AtomicBool) -> Result<(), String> {
    while !stop.load(Ordering::Relaxed) {
        for (i, child, dir) in children.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "node {i} exited ({status}); see {}",
                    dir.join("sluice.log").display()
                ));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// SIGTERM to every node still running, then waits for each (SIGKILL after 30 s).
fn stop_all(children: &mut [(usize, Child, PathBuf)]) {
    for (_, child, _) in children.iter_mut() {
        if let Ok(None) = child.try_wait() {
            // A child not reaped yet: its pid cannot have been reused.
            let pid = i32::try_from(child.id())
                .ok()
                .and_then(rustix::process::Pid::from_raw);
            if let Some(pid) = pid {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for (i, child, _) in children.iter_mut() {
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    eprintln!("node {i} did not stop within 30 s of SIGTERM: killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        println!("node {i} stopped");
    }
}
