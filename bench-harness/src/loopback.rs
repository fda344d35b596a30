//! `sluice bench loopback`: the network half of the device limits. Over 127.0.0.1 with plain
//! blocking sockets (no broker, no protocol): one TCP stream's bandwidth (1 MiB writes) and the
//! round-trip latency of a 100-byte ping-pong (TCP_NODELAY), as an HDR histogram. A broker's
//! throughput and latency on loopback are quoted as a fraction of these.
//!
//! The latency floor of a paced workload (issue 11's 1,000 records/s, linger 0) is not the
//! back-to-back ping-pong's: between records every thread sleeps, and its wake-up is as late as
//! the machine makes it. Two paced measurements give that floor, with the bench's own rule
//! (latency from the intended time, so a late wake-up is charged):
//! - `timer_wake_late_us`: how late a thread sleeping until each millisecond's deadline wakes;
//! - `paced_ping_pong_1kib_us`: a 1 KiB echo every millisecond, from its intended send time.
//!
//! Each runs for the given seconds (1,000 samples a second, so p99.9 rests on ≥ 10 events
//! from 10 s on).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::report::Latency;
use crate::run::new_histogram;

#[derive(Debug, Serialize)]
pub struct LoopbackLimits {
    pub stream_mb_per_s: f64,
    pub ping_pong_100b_us: Latency,
    pub ping_pong_per_s: f64,
    pub timer_wake_late_us: Latency,
    pub paced_ping_pong_1kib_us: Latency,
}

/// The paced measurements' period: issue 11's latency-floor workload sends a record a millisecond.
const PACED_PERIOD: Duration = Duration::from_millis(1);

/// Sleeps until `deadline` (at once when it passed).
fn sleep_until(deadline: Instant) {
    let now = Instant::now();
    if deadline > now {
        std::thread::sleep(deadline - now);
    }
}

/// The lateness of wake-ups from sleeps to each period's deadline.
fn timer_wake_late(duration: Duration) -> Latency {
    let mut hist = new_histogram();
    let start = Instant::now() + PACED_PERIOD;
    let count = duration.as_millis() as u32 / PACED_PERIOD.as_millis() as u32;
    for i in 0..count {
        let due = start + PACED_PERIOD * i;
        sleep_until(due);
        hist.saturating_record(due.elapsed().as_micros() as u64);
    }
    Latency::from_histogram(&hist)
}

/// 1 KiB echoed once per period, timed from each message's intended send time.
fn paced_ping_pong(duration: Duration) -> std::io::Result<Latency> {
    const SIZE: usize = 1024;
    let (address, echo) = echo_server::<SIZE>()?;
    let mut socket = TcpStream::connect(address)?;
    socket.set_nodelay(true)?;
    let mut hist = new_histogram();
    let mut buf = [0x22u8; SIZE];
    let start = Instant::now() + PACED_PERIOD;
    let count = duration.as_millis() as u32 / PACED_PERIOD.as_millis() as u32;
    for i in 0..count {
        let due = start + PACED_PERIOD * i;
        sleep_until(due);
        socket.write_all(&buf)?;
        socket.read_exact(&mut buf)?;
        hist.saturating_record(due.elapsed().as_micros() as u64);
    }
    drop(socket);
    echo.join().expect("echo thread")?;
    Ok(Latency::from_histogram(&hist))
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
    let (address, echo) = echo_server::<100>()?;
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

/// A thread echoing `N`-byte messages to the one connection it accepts, until it closes.
fn echo_server<const N: usize>(
) -> std::io::Result<(SocketAddr, std::thread::JoinHandle<std::io::Result<()>>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut socket, _) = listener.accept()?;
        socket.set_nodelay(true)?;
        let mut buf = [0u8; N];
        while socket.read_exact(&mut buf).is_ok() {
            socket.write_all(&buf)?;
        }
        Ok(())
    });
    Ok((address, echo))
}

pub fn measure(seconds: u64) -> Result<LoopbackLimits, String> {
    let duration = Duration::from_secs(seconds.max(1));
    let stream_mb_per_s = bandwidth(duration).map_err(|e| format!("loopback stream: {e}"))?;
    let (ping_pong_100b_us, ping_pong_per_s) =
        ping_pong(duration).map_err(|e| format!("loopback ping-pong: {e}"))?;
    let timer_wake_late_us = timer_wake_late(duration);
    let paced_ping_pong_1kib_us =
        paced_ping_pong(duration).map_err(|e| format!("loopback paced ping-pong: {e}"))?;
    Ok(LoopbackLimits {
        stream_mb_per_s,
        ping_pong_100b_us,
        ping_pong_per_s,
        timer_wake_late_us,
        paced_ping_pong_1kib_us,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paced_measurements_take_one_sample_a_millisecond_and_charge_the_wait() {
        let late = timer_wake_late(Duration::from_millis(200));
        assert_eq!(late.count, 200);
        let echo = paced_ping_pong(Duration::from_millis(200)).expect("paced ping-pong");
        assert_eq!(echo.count, 200);
        // A round trip takes time: from the intended send time it is never zero.
        assert!(echo.p50 > 0, "{echo:?}");
    }
}
