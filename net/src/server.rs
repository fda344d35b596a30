//! The listeners and shards: one glommio executor per shard, each pinned to a CPU, each
//! accepting connections on the same address (glommio binds with SO_REUSEPORT, so the kernel
//! spreads connections over the shards). A connection lives on the shard that accepted it;
//! partitions live on their owning shard (`sluice_core::shard`), reached over the mesh.
//!
//! Start-up: every shard joins the mesh and opens (recovers) the partitions it owns before it
//! accepts connections; a partition that cannot be opened stops the broker.
//!
//! Shutdown: when the `shutdown` flag is raised (SIGINT/SIGTERM in `sluice serve`), every shard
//! stops accepting and waits (up to `drain_timeout`) for the requests it is answering to be
//! written back. Once every shard has drained, each closes its partitions (flushing buffered
//! data) and ends; open connections are then closed.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::TcpListener;
use glommio::{LocalExecutorPoolBuilder, PoolPlacement};
use sluice_core::catalog::Catalog;
use sluice_core::shard::{Shard, ShardSettings, MESH_CHANNEL_JOBS};
use tracing::{error, info};

use crate::handlers::Context;

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
    pub shard_settings: ShardSettings,
}

/// How often a shard checks the shutdown flag.
const SHUTDOWN_POLL: Duration = Duration::from_millis(20);

/// Why the server stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
    #[error("shard cannot start: {0}")]
    Start(String),
    #[error("shard failed: {0}")]
    Shard(String),
}

/// Runs the broker until `shutdown` is raised and every shard has drained and closed its
/// partitions.
pub fn run(
    config: ServerConfig,
    broker: BrokerIdentity,
    catalog: Arc<Catalog>,
    shutdown: Arc<AtomicBool>,
) -> Result<(), ServerError> {
    let shards = config.shards.max(1);
    let mesh = MeshBuilder::full(shards, MESH_CHANNEL_JOBS);
    let drained = Arc::new(AtomicUsize::new(0));
    let handles = LocalExecutorPoolBuilder::new(PoolPlacement::MaxSpread(shards, None))
        .on_all_shards(move || async move {
            let shard = Shard::start(mesh, catalog, config.shard_settings.clone())
                .await
                .map_err(ServerError::Start)?;
            let listener = TcpListener::bind(config.listen).map_err(|e| ServerError::Listen {
                addr: config.listen,
                reason: e.to_string(),
            })?;
            info!(addr = %config.listen, shard = shard.id, "listening");
            glommio::spawn_local(shard.clone().retention_loop()).detach();
            let ctx = Context {
                shard: shard.clone(),
                broker: Rc::new(broker),
                client_host: Rc::from(""),
            };
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
                    let peer_addr = stream.peer_addr().ok();
                    let peer = peer_addr.map_or_else(|| "?".to_string(), |a| a.to_string());
                    let mut connection_ctx = ctx.clone();
                    connection_ctx.client_host = Rc::from(
                        peer_addr.map_or_else(|| "?".to_string(), |a| format!("/{}", a.ip())),
                    );
                    glommio::spawn_local(crate::connection::serve(
                        stream,
                        peer,
                        connection_ctx,
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
            // Other shards may still be finishing requests that reach this shard's partitions:
            // close them only once every shard has drained (this shard keeps serving jobs
            // from the mesh meanwhile).
            drained.fetch_add(1, Ordering::AcqRel);
            while drained.load(Ordering::Acquire) < shards && Instant::now() < deadline {
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            shard.close_all().await;
            info!(
                shard = shard.id,
                unfinished = in_flight.get(),
                "shard stopped"
            );
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
