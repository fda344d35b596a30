//! A TCP proxy that cuts connections: each proxied connection lives a pseudo-random time
//! (from a seed, so a failing run can be repeated), then both sides are shut down mid-stream.
//! For the last [`BLACKOUT`] of its life a connection still carries requests to the server but
//! drops the responses, so some requests are processed while their answers are lost: the case
//! that makes clients retry something the server already did.
//!
//! Bounded: the proxy stops accepting and cutting when dropped; each connection uses two
//! threads that end when either side closes.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long before a cut responses are dropped.
pub const BLACKOUT: Duration = Duration::from_millis(25);

pub struct CuttingProxy {
    pub addr: SocketAddr,
    listener: Option<TcpListener>,
    stop: Arc<AtomicBool>,
    cutting: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
    acceptor: Option<JoinHandle<()>>,
}

impl CuttingProxy {
    /// Binds a free loopback port; [`CuttingProxy::start`] begins forwarding.
    pub fn bind() -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        CuttingProxy {
            addr: listener.local_addr().unwrap(),
            listener: Some(listener),
            stop: Arc::default(),
            cutting: Arc::new(AtomicBool::new(true)),
            cuts: Arc::default(),
            acceptor: None,
        }
    }

    /// Forwards every connection to `upstream`, cutting each after a lifetime drawn from
    /// `lifetime_ms` (uniform, from `seed`) while cutting is on.
    pub fn start(&mut self, upstream: SocketAddr, lifetime_ms: (u64, u64), seed: u64) {
        let listener = self.listener.take().expect("started once");
        listener.set_nonblocking(true).unwrap();
        let (stop, cutting, cuts) = (self.stop.clone(), self.cutting.clone(), self.cuts.clone());
        self.acceptor = Some(std::thread::spawn(move || {
            let mut rng = seed.max(1);
            while !stop.load(Ordering::Relaxed) {
                let client = match listener.accept() {
                    Ok((client, _)) => client,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    }
                };
                client.set_nonblocking(false).unwrap();
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                // xorshift64: a small deterministic sequence from the seed.
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let span = lifetime_ms.1.saturating_sub(lifetime_ms.0).max(1);
                let lifetime = Duration::from_millis(lifetime_ms.0 + rng % span);
                connect_pair(client, server, lifetime, &stop, &cutting, &cuts);
            }
        }));
    }

    /// Stops cutting new and existing connections (the network heals).
    pub fn heal(&self) {
        self.cutting.store(false, Ordering::Relaxed);
    }

    /// Connections cut so far.
    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::Relaxed)
    }
}

fn connect_pair(
    client: TcpStream,
    server: TcpStream,
    lifetime: Duration,
    stop: &Arc<AtomicBool>,
    cutting: &Arc<AtomicBool>,
    cuts: &Arc<AtomicUsize>,
) {
    let born = Instant::now();
    for (from, to, carries_responses) in [
        (
            client.try_clone().unwrap(),
            server.try_clone().unwrap(),
            false,
        ),
        (
            server.try_clone().unwrap(),
            client.try_clone().unwrap(),
            true,
        ),
    ] {
        let (stop, cutting, cuts) = (stop.clone(), cutting.clone(), cuts.clone());
        let (a, b) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        std::thread::spawn(move || {
            let mut from = from;
            let mut to = to;
            from.set_read_timeout(Some(Duration::from_millis(5)))
                .unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                if stop.load(Ordering::Relaxed)
                    || (cutting.load(Ordering::Relaxed) && born.elapsed() >= lifetime)
                {
                    if !stop.load(Ordering::Relaxed) {
                        cuts.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = a.shutdown(Shutdown::Both);
                    let _ = b.shutdown(Shutdown::Both);
                    return;
                }
                match from.read(&mut buf) {
                    Ok(0) => {
                        let _ = a.shutdown(Shutdown::Both);
                        let _ = b.shutdown(Shutdown::Both);
                        return;
                    }
                    Ok(n) => {
                        let blackout = carries_responses
                            && cutting.load(Ordering::Relaxed)
                            && born.elapsed() + BLACKOUT >= lifetime;
                        if !blackout && to.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(_) => return,
                }
            }
        });
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}
