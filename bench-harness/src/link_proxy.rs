//! A TCP proxy on one direction of a node-to-node link, which can be blocked: the network
//! partition of [`crate::local_cluster`]. Node A reaches node B's RPC port only through the
//! proxy A→B, so blocking A→B and B→A cuts the two apart while clients still reach both.
//!
//! Blocked, the proxy stops moving bytes in either direction of every connection it carries and
//! holds new connections without dialling onwards: to both nodes the link looks like a network
//! dropping every packet (connections stay open, nothing arrives, no error), as an nftables
//! DROP rule would make it. Unblocked, what was held flows on, as TCP's retransmissions would
//! deliver it after the partition heals.
//!
//! Delayed, every chunk of bytes is held for the delay after it was read before it is written
//! on (latency, as netem's delay adds; the bytes behind it keep being read meanwhile). Lossy,
//! each chunk read has the given chance (per mille) of resetting its connection instead: a TCP
//! stream cannot lose bytes and stay usable, so loss on a link shows as connections that break
//! and are dialled again, which is what a lossy network does to a replication stream whose
//! retransmissions time out.
//!
//! Bounded: dropping the proxy stops it; every thread polls the stop flag at least every 50 ms.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(50);

pub struct LinkProxy {
    pub addr: SocketAddr,
    state: Arc<LinkState>,
    acceptor: Option<JoinHandle<()>>,
}

/// What the proxy does to the bytes it carries, changed while it runs.
#[derive(Default)]
struct LinkState {
    blocked: AtomicBool,
    delay_us: AtomicU64,
    reset_per_mille: AtomicU32,
    stop: AtomicBool,
}

impl LinkState {
    fn blocked(&self) -> bool {
        self.blocked.load(Ordering::Acquire)
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

impl LinkProxy {
    /// Listens on a free loopback port and forwards every connection to `target`.
    pub fn start(target: SocketAddr) -> Result<LinkProxy, String> {
        let listener =
            TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind a link proxy: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("link proxy: {e}"))?;
        let state = Arc::new(LinkState::default());
        let acceptor = {
            let state = state.clone();
            std::thread::spawn(move || accept(listener, target, &state))
        };
        Ok(LinkProxy {
            addr,
            state,
            acceptor: Some(acceptor),
        })
    }

    pub fn set_blocked(&self, blocked: bool) {
        self.state.blocked.store(blocked, Ordering::Release);
    }

    pub fn is_blocked(&self) -> bool {
        self.state.blocked()
    }

    /// Holds every chunk for `delay` before passing it on (zero: none).
    pub fn set_delay(&self, delay: Duration) {
        self.state
            .delay_us
            .store(delay.as_micros() as u64, Ordering::Release);
    }

    /// Each chunk read resets its connection with this chance, in thousandths (0: never).
    pub fn set_reset_per_mille(&self, per_mille: u32) {
        self.state
            .reset_per_mille
            .store(per_mille.min(1000), Ordering::Release);
    }

    /// Back to a plain link: not blocked, no delay, no resets.
    pub fn heal(&self) {
        self.set_blocked(false);
        self.set_delay(Duration::ZERO);
        self.set_reset_per_mille(0);
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Release);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept(listener: TcpListener, target: SocketAddr, state: &Arc<LinkState>) {
    let mut pumps = Vec::new();
    let mut connections = 0u64;
    while !state.stopped() {
        match listener.accept() {
            Ok((client, _)) => {
                let state = state.clone();
                connections += 1;
                let seed = connections;
                pumps.push(std::thread::spawn(move || {
                    connect_and_pump(client, target, &state, seed)
                }));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(_) => std::thread::sleep(POLL),
        }
        pumps.retain(|p: &JoinHandle<()>| !p.is_finished());
    }
    for pump in pumps {
        let _ = pump.join();
    }
}

/// Dials `target` once the link is open, then moves bytes both ways until either side closes
/// or the proxy stops.
fn connect_and_pump(client: TcpStream, target: SocketAddr, state: &LinkState, seed: u64) {
    while state.blocked() {
        if state.stopped() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (Ok(client_out), Ok(server_out)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| pump(client, server_out, state, &done, seed * 2));
        pump(server, client_out, state, &done, seed * 2 + 1);
    });
}

/// Copies `from` → `to` while the link is open; stops when either side closes, the other
/// direction ended, the link resets the connection, or the proxy stops. A writer thread of its
/// own passes each chunk on once its delay is over, so reading goes on meanwhile.
fn pump(from: TcpStream, to: TcpStream, state: &LinkState, done: &AtomicBool, seed: u64) {
    let _ = from.set_read_timeout(Some(POLL));
    let _ = to.set_write_timeout(Some(POLL));
    let (chunks, delayed) = mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| write_delayed(to, delayed, state, done));
        read_chunks(from, chunks, state, done, seed);
        let _ = writer.join();
    });
    done.store(true, Ordering::Release);
}

/// Reads chunks into `chunks` (stamped with when they arrived) until the connection ends.
fn read_chunks(
    mut from: TcpStream,
    chunks: mpsc::Sender<(Instant, Vec<u8>)>,
    state: &LinkState,
    done: &AtomicBool,
    seed: u64,
) {
    // xorshift64*: a chance per chunk, no need for more.
    let mut random = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut buffer = vec![0u8; 64 << 10];
    while !state.stopped() && !done.load(Ordering::Acquire) {
        if state.blocked() {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        match from.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                random ^= random >> 12;
                random ^= random << 25;
                random ^= random >> 27;
                let draw = (random.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) % 1000;
                if draw < u64::from(state.reset_per_mille.load(Ordering::Acquire)) {
                    break;
                }
                if chunks.send((Instant::now(), buffer[..n].to_vec())).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    done.store(true, Ordering::Release);
    let _ = from.shutdown(Shutdown::Both);
}

/// Writes each chunk once the link's delay has passed since it was read; ends when the reader
/// does (and the queue is drained) or the connection fails.
fn write_delayed(
    mut to: TcpStream,
    delayed: mpsc::Receiver<(Instant, Vec<u8>)>,
    state: &LinkState,
    done: &AtomicBool,
) {
    loop {
        let (read_at, chunk) = match delayed.recv_timeout(POLL) {
            Ok(next) => next,
            Err(mpsc::RecvTimeoutError::Timeout) if !done.load(Ordering::Acquire) => continue,
            Err(_) => break,
        };
        let delay = Duration::from_micros(state.delay_us.load(Ordering::Acquire));
        if let Some(left) = (read_at + delay).checked_duration_since(Instant::now()) {
            std::thread::sleep(left);
        }
        // A chunk read before a cut stays held while the link is cut.
        while state.blocked() && !state.stopped() {
            std::thread::sleep(Duration::from_millis(5));
        }
        if !write_all(&mut to, &chunk, state) {
            break;
        }
    }
    done.store(true, Ordering::Release);
    let _ = to.shutdown(Shutdown::Both);
}

/// Writes all of `bytes`, waiting as long as the receiver takes (a paused node reads nothing),
/// unless the proxy stops. False if the connection failed or the proxy stopped.
fn write_all(to: &mut TcpStream, mut bytes: &[u8], state: &LinkState) -> bool {
    while !bytes.is_empty() {
        match to.write(bytes) {
            Ok(0) => return false,
            Ok(n) => bytes = &bytes[n..],
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if state.stopped() {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on loopback; its thread ends with the test process.
    fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut stream = stream;
                    let mut buffer = [0u8; 1024];
                    while let Ok(n) = stream.read(&mut buffer) {
                        if n == 0 || stream.write_all(&buffer[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    /// Sends `bytes` through the proxy and waits (≤ `wait`) for the echo; the time it took,
    /// or `None` if nothing (or an end of stream) came back in time.
    fn round_trip(stream: &mut TcpStream, bytes: &[u8], wait: Duration) -> Option<Duration> {
        let started = Instant::now();
        stream.write_all(bytes).ok()?;
        stream.set_read_timeout(Some(wait)).unwrap();
        let mut back = vec![0u8; bytes.len()];
        stream.read_exact(&mut back).ok()?;
        assert_eq!(back, bytes);
        Some(started.elapsed())
    }

    #[test]
    fn a_link_passes_delays_holds_while_cut_and_resets_when_lossy() {
        let proxy = LinkProxy::start(echo_server()).unwrap();
        let mut stream = TcpStream::connect(proxy.addr).unwrap();
        let wait = Duration::from_secs(5);
        assert!(round_trip(&mut stream, b"plain", wait).is_some());

        proxy.set_delay(Duration::from_millis(150));
        let took = round_trip(&mut stream, b"delayed", wait).unwrap();
        // The proxy carries both directions of the connection: delayed there and back.
        assert!(took >= Duration::from_millis(300), "{took:?}");

        proxy.heal();
        proxy.set_blocked(true);
        assert_eq!(
            round_trip(&mut stream, b"cut", Duration::from_millis(300)),
            None,
            "nothing moves while the link is cut"
        );
        proxy.set_blocked(false);
        let mut back = [0u8; 3];
        stream.set_read_timeout(Some(wait)).unwrap();
        stream.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"cut", "what was held flows on after the cut heals");

        proxy.set_reset_per_mille(1000);
        let _ = stream.write_all(b"lost");
        let mut rest = [0u8; 4];
        assert!(
            !matches!(stream.read(&mut rest), Ok(n) if n > 0),
            "a lossy link resets the connection"
        );
        proxy.heal();
        let mut again = TcpStream::connect(proxy.addr).unwrap();
        assert!(round_trip(&mut again, b"redialled", wait).is_some());
    }
}
