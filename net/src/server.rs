//! The listeners: one glommio executor per shard, each pinned to a CPU, each accepting
//! connections on the same address (glommio binds with SO_REUSEPORT, so the kernel spreads
//! connections over the shards). A connection lives on the shard that accepted it.

use std::net::SocketAddr;
use std::rc::Rc;

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
}

/// Why the server stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
    #[error("shard failed: {0}")]
    Shard(String),
}

/// Runs the server until every shard stops (today: until the process is ended).
pub fn run(config: ServerConfig, broker: BrokerIdentity) -> Result<(), ServerError> {
    let shards = config.shards.max(1);
    let handles = LocalExecutorPoolBuilder::new(PoolPlacement::MaxSpread(shards, None))
        .on_all_shards(move || async move {
            let listener = TcpListener::bind(config.listen).map_err(|e| ServerError::Listen {
                addr: config.listen,
                reason: e.to_string(),
            })?;
            info!(addr = %config.listen, shard = glommio::executor().id(), "listening");
            let broker = Rc::new(broker);
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
                let broker = broker.clone();
                glommio::spawn_local(crate::connection::serve(
                    stream,
                    peer,
                    broker,
                    config.frame_bytes_max,
                ))
                .detach();
            }
            #[allow(unreachable_code)]
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
