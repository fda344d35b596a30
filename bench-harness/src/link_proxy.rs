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
//! Bounded: dropping the proxy stops it; every thread polls the stop flag at least every 50 ms.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

const POLL: Duration = Duration::from_millis(50);

pub struct LinkProxy {
    pub addr: SocketAddr,
    blocked: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
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
        let blocked = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (blocked, stop) = (blocked.clone(), stop.clone());
            std::thread::spawn(move || accept(listener, target, &blocked, &stop))
        };
        Ok(LinkProxy {
            addr,
            blocked,
            stop,
            acceptor: Some(acceptor),
        })
    }

    pub fn set_blocked(&self, blocked: bool) {
        self.blocked.store(blocked, Ordering::Release);
    }

    pub fn is_blocked(&self) -> bool {
        self.blocked.load(Ordering::Acquire)
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept(
    listener: TcpListener,
    target: SocketAddr,
    blocked: &Arc<AtomicBool>,
    stop: &Arc<AtomicBool>,
) {
    let mut pumps = Vec::new();
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((client, _)) => {
                let (blocked, stop) = (blocked.clone(), stop.clone());
                pumps.push(std::thread::spawn(move || {
                    connect_and_pump(client, target, &blocked, &stop)
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
fn connect_and_pump(
    client: TcpStream,
    target: SocketAddr,
    blocked: &AtomicBool,
    stop: &AtomicBool,
) {
    while blocked.load(Ordering::Acquire) {
        if stop.load(Ordering::Acquire) {
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
        scope.spawn(|| pump(client, server_out, blocked, stop, &done));
        pump(server, client_out, blocked, stop, &done);
    });
}

/// Copies `from` → `to` while the link is open; stops when either side closes, the other
/// direction ended, or the proxy stops.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    blocked: &AtomicBool,
    stop: &AtomicBool,
    done: &AtomicBool,
) {
    let _ = from.set_read_timeout(Some(POLL));
    let _ = to.set_write_timeout(Some(POLL));
    let mut buffer = vec![0u8; 64 << 10];
    while !stop.load(Ordering::Acquire) && !done.load(Ordering::Acquire) {
        if blocked.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        match from.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                if !write_all(&mut to, &buffer[..n], stop) {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    done.store(true, Ordering::Release);
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// Writes all of `bytes`, waiting as long as the receiver takes (a paused node reads nothing),
/// unless the proxy stops. False if the connection failed or the proxy stopped.
fn write_all(to: &mut TcpStream, mut bytes: &[u8], stop: &AtomicBool) -> bool {
    while !bytes.is_empty() {
        match to.write(bytes) {
            Ok(0) => return false,
            Ok(n) => bytes = &bytes[n..],
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if stop.load(Ordering::Acquire) {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
    true
}
