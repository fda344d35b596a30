use sluice_storage::*;
use std::time::Instant;
fn main() {
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let dir = std::path::Path::new("target/rawtest/log");
            let _ = std::fs::remove_dir_all(dir);
            let cfg = LogConfig {
                segment_bytes_max: 256 << 20,
                batch_bytes_max: 2 << 20,
                ..LogConfig::default()
            };
            let value = vec![0x42u8; 1024];
            let recs: Vec<(i64, &[u8], &[u8])> = (0..62)
                .map(|_| (0i64, &b"key-00000000"[..], value.as_slice()))
                .collect();
            let batch = batch::build_batch(0, &recs);
            let log = Log::open(dir, cfg.clone()).await.unwrap();
            for _ in 0..(400 << 20) / batch.len() {
                log.append(&batch, LeaderEpoch(0)).await.unwrap();
            }
            log.close().await.unwrap();
            let log = Log::open(dir, cfg).await.unwrap();
            for round in 0..2 {
                let start = Instant::now();
                let mut n = 0;
                let mut from = Offset(0);
                let mut reads = 0;
                while from < log.log_end_offset() {
                    let r = log.read(from, 1 << 20).await.unwrap();
                    n += r.bytes.len();
                    from = r.next_offset;
                    reads += 1;
                }
                let e = start.elapsed();
                println!(
                    "round {round} log.read: {:.0} MB/s, {reads} reads, {:.0} us/read",
                    n as f64 / e.as_secs_f64() / 1e6,
                    e.as_micros() as f64 / reads as f64
                );
            }
            let f = glommio::io::DmaFile::open(dir.join("00000000000000000000.log"))
                .await
                .unwrap();
            let start = Instant::now();
            let mut pos = 0u64;
            let mut n = 0;
            while pos + (1 << 20) <= 256 << 20 {
                let r = f.read_at(pos, 1 << 20).await.unwrap();
                n += r.len();
                pos += 1 << 20;
            }
            println!(
                "raw read_at same file: {:.0} MB/s",
                n as f64 / start.elapsed().as_secs_f64() / 1e6
            );
        })
        .unwrap()
        .join()
        .unwrap();
}
