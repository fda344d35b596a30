//! The `sluice` command: one binary for the broker and its tools.
//!
//! Today it knows `sluice log verify <dir>`, which opens a partition log directory the way the
//! broker will (recovering it: see `docs/on-disk-format.md`) and prints what it holds. `sluice
//! serve` arrives with the broker (issue "A single-node Kafka-compatible broker").

use std::process::ExitCode;

use sluice_storage::{Log, LogConfig};

const USAGE: &str = "usage:
  sluice serve                 start a broker (not built yet: the broker issue adds it)
  sluice log verify <dir>      recover a partition log directory and print what it holds";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["serve", ..] => {
            eprintln!(
                "sluice serve: the broker is not built yet; only the storage engine exists so far"
            );
            ExitCode::from(2)
        }
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
