//! The listeners: one glommio executor per shard, each pinned to a CPU, each accepting
//! connections on the same address (glommio binds with SO_REUSEPORT, so the kernel spreads
//! connections over the shards). A connection lives on the shard that accepted it.
//!
//! Shutdown: when the `shutdown` flag is raised (SIGINT/SIGTERM in `sluice serve`), every shard
//! stops accepting, waits (up to `drain_timeout`) for the requests it is answering to be written
//! back, and ends; open connections are then closed.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::net::TcpListener;
use glommio::{LocalExecutorPoolBuilder, PoolPlacement};
use tracing::{error, info};

/// Who this broker says it is, in Metadata responses.
#[derive(Debug, Clone)]
pub struct BrokerIdentity {
    pub node_id: i32,
    pub advertised_host: String,
    pub advertised_port: u16,
    pub cluster_id: String,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Largest request frame accepted; a longer length prefix closes the connection unread.
    pub frame_bytes_max: usize,
    /// Executors (shards), one per CPU.
    pub shards: usize,
    /// How long shutdown waits for requests being answered.
    pub drain_timeout: Duration,
}

/// How often a shard checks the shutdown flag.
const SHUTDOWN_POLL: Duration = Duration::from_millis(20);

/// Why the server stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
    #[error("shard failed: {0}")]
    Shard(String),
}

/// Runs the server until `shutdown` is raised and every shard has drained.
pub fn run(
    config: ServerConfig,
    broker: BrokerIdentity,
    shutdown: Arc<AtomicBool>,
) -> Result<(), ServerError> {
    let shards = config.shards.max(1);
    let handles = LocalExecutorPoolBuilder::new(PoolPlacement::MaxSpread(shards, None))
        .on_all_shards(move || async move {
            let listener = TcpListener::bind(config.listen).map_err(|e| ServerError::Listen {
                addr: config.listen,
                reason: e.to_string(),
            })?;
            let shard = glommio::executor().id();
            info!(addr = %config.listen, shard, "listening");
            let broker = Rc::new(broker);
            let in_flight: crate::connection::InFlight = Rc::default();
            let accept = async {
                loop {
                    let stream = match listener.accept().await {
                        Ok(s) => s,
                        Err(e) => {
                            error!(error = %e, "accept failed");
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let peer = stream
                        .peer_addr()
                        .map_or_else(|_| "?".to_string(), |a| a.to_string());
                    glommio::spawn_local(crate::connection::serve(
                        stream,
                        peer,
                        broker.clone(),
                        config.frame_bytes_max,
                        in_flight.clone(),
                    ))
                    .detach();
                }
            };
            let stop = async {
                while !shutdown.load(Ordering::Relaxed) {
                    glommio::timer::sleep(SHUTDOWN_POLL).await;
                }
            };
            futures_lite::future::or(accept, stop).await;
            drop(listener);
            let deadline = Instant::now() + config.drain_timeout;
            while in_flight.get() > 0 && Instant::now() < deadline {
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            info!(shard, unfinished = in_flight.get(), "shard stopped");
            Ok::<(), ServerError>(())
        })
        .map_err(|e| ServerError::Shard(e.to_string()))?;
    for result in handles.join_all() {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(ServerError::Shard(e.to_string())),
        }
    }
    Ok(())
}
