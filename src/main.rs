//! The `sluice` command: one binary for the broker and its tools.
//!
//! - `sluice serve`: the broker's listeners, one shard per core. So far they answer the
//!   handshake clients perform first (ApiVersions, Metadata with this broker and no topics);
//!   topics, Produce and Fetch come with the broker issue.
//! - `sluice log verify <dir>`: opens a partition log directory the way the broker will
//!   (recovering it: see `docs/on-disk-format.md`) and prints what it holds.

use std::process::ExitCode;

use sluice_storage::{Log, LogConfig};

const USAGE: &str = "usage:
  sluice serve [--listen ADDR] [--cores N]
                               start the broker's listeners (default 127.0.0.1:9092, all cores);
                               answers ApiVersions and Metadata so far
  sluice log verify <dir>      recover a partition log directory and print what it holds";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["serve", rest @ ..] => serve(rest),
        ["log", "verify", dir] => verify_log(dir.to_string()),
        ["--help"] | ["-h"] | ["help"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// Opens (and so recovers) the log in `dir`, reads every batch back, and prints a summary.
fn verify_log(dir: String) -> ExitCode {
    let outcome = glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let log = Log::open(&dir, LogConfig::default()).await?;
            let mut from = log.log_start_offset();
            let (mut batches, mut bytes) = (0u64, 0u64);
            while from < log.log_end_offset() {
                let read = log.read(from, 1 << 20).await?;
                let mut rest = &read.bytes[..];
                while !rest.is_empty() {
                    let info = sluice_storage::batch::validate_batch(rest, usize::MAX)
                        .expect("read returns validated batches");
                    batches += 1;
                    bytes += info.size_bytes as u64;
                    rest = &rest[info.size_bytes..];
                }
                from = read.next_offset;
            }
            let summary = format!(
                "log {}: offsets [{}, {}), {} segments, {batches} batches, {bytes} bytes, all valid",
                dir,
                log.log_start_offset(),
                log.log_end_offset(),
                log.segment_count()
            );
            log.close().await?;
            Ok::<_, sluice_storage::StorageError>(summary)
        })
        .map_err(|e| e.to_string())
        .and_then(|handle| handle.join().map_err(|e| format!("{e:?}")));
    match outcome {
        Ok(Ok(summary)) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("sluice log verify: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("sluice log verify: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Parses `serve`'s flags and runs the listeners until the process is stopped.
fn serve(args: &[&str]) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut listen: std::net::SocketAddr = ([127, 0, 0, 1], 9092).into();
    let mut cores = std::thread::available_parallelism().map_or(1, usize::from);
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        let value = rest.next();
        let parsed = match (*flag, value) {
            ("--listen", Some(v)) => v
                .parse()
                .map(|a| listen = a)
                .map_err(|e| format!("--listen {v}: {e}")),
            ("--cores", Some(v)) => match v.parse::<usize>() {
                Ok(n) if n > 0 => {
                    cores = n;
                    Ok(())
                }
                _ => Err(format!("--cores {v}: expected a positive number")),
            },
            (flag, None) if flag == "--listen" || flag == "--cores" => {
                Err(format!("{flag}: missing value"))
            }
            (flag, _) => Err(format!("unknown flag {flag}")),
        };
        if let Err(e) = parsed {
            eprintln!("sluice serve: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    let config = sluice_net::ServerConfig {
        listen,
        frame_bytes_max: 100 * 1024 * 1024,
        shards: cores,
    };
    let broker = sluice_net::BrokerIdentity {
        node_id: 0,
        advertised_host: listen.ip().to_string(),
        advertised_port: listen.port(),
        cluster_id: "sluice-single-node-000".into(),
    };
    match sluice_net::server::run(config, broker) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice serve: {e}");
            ExitCode::FAILURE
        }
    }
}
