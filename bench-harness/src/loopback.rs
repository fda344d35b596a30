//! `sluice bench loopback`: the network half of the device limits. Over 127.0.0.1 with plain
//! blocking sockets (no broker, no protocol): one TCP stream's bandwidth (1 MiB writes) and the
//! round-trip latency of a 100-byte ping-pong (TCP_NODELAY), as an HDR histogram. A broker's
//! throughput and latency on loopback are quoted as a fraction of these.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::report::Latency;
use crate::run::new_histogram;

#[derive(Debug, Serialize)]
pub struct LoopbackLimits {
    pub stream_mb_per_s: f64,
    pub ping_pong_100b_us: Latency,
    pub ping_pong_per_s: f64,
}

fn bandwidth(duration: Duration) -> std::io::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut socket, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            match socket.read(&mut buf)? {
                0 => return Ok(total),
                n => total += n as u64,
            }
        }
    });
    let mut socket = TcpStream::connect(address)?;
    let chunk = vec![0x5au8; 1 << 20];
    let start = Instant::now();
    while start.elapsed() < duration {
        socket.write_all(&chunk)?;
    }
    socket.shutdown(std::net::Shutdown::Write)?;
    let total = reader.join().expect("reader thread")?;
    Ok(total as f64 / start.elapsed().as_secs_f64() / 1e6)
}

fn ping_pong(duration: Duration) -> std::io::Result<(Latency, f64)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut socket, _) = listener.accept()?;
        socket.set_nodelay(true)?;
        let mut buf = [0u8; 100];
        loop {
            if socket.read_exact(&mut buf).is_err() {
                return Ok(());
            }
            socket.write_all(&buf)?;
        }
    });
    let mut socket = TcpStream::connect(address)?;
    socket.set_nodelay(true)?;
    let mut hist = new_histogram();
    let mut buf = [0x11u8; 100];
    let start = Instant::now();
    let mut count = 0u64;
    while start.elapsed() < duration {
        let sent = Instant::now();
        socket.write_all(&buf)?;
        socket.read_exact(&mut buf)?;
        hist.saturating_record(sent.elapsed().as_micros() as u64);
        count += 1;
    }
    drop(socket);
    echo.join().expect("echo thread")?;
    Ok((
        Latency::from_histogram(&hist),
        count as f64 / start.elapsed().as_secs_f64(),
    ))
}

pub fn measure(seconds: u64) -> Result<LoopbackLimits, String> {
    let duration = Duration::from_secs(seconds.max(1));
    let stream_mb_per_s = bandwidth(duration).map_err(|e| format!("loopback stream: {e}"))?;
    let (ping_pong_100b_us, ping_pong_per_s) =
        ping_pong(duration).map_err(|e| format!("loopback ping-pong: {e}"))?;
    Ok(LoopbackLimits {
        stream_mb_per_s,
        ping_pong_100b_us,
        ping_pong_per_s,
    })
}
