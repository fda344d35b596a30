//! The listeners and shards: one glommio executor per shard, each pinned to a CPU (left to the
//! OS scheduler with `--overprovisioned`, for nodes sharing a machine's cores), each
//! accepting connections on the same address (glommio binds with SO_REUSEPORT, so the kernel
//! spreads connections over the shards). A connection lives on the shard that accepted it;
//! partitions live on their owning shard (`sluice_core::shard`), reached over the mesh.
//!
//! The address is this broker's alone: before the shards bind, [`claim_listen_address`] refuses
//! to start when any process already listens there (SO_REUSEPORT would otherwise let a second
//! broker join the port and the kernel split clients between two brokers with different data).
//!
//! Start-up: every shard joins the mesh and opens (recovers) the partitions it owns, and no
//! shard accepts connections before every shard has (a request forwarded to a shard still
//! replaying its consumer groups would see them without offsets); a partition that cannot be
//! opened stops the broker.
//!
//! Once listening, each shard counts as serving in the node's `MetricsHub` (readiness) and
//! publishes its metrics snapshot there once a second; shutdown marks the hub draining.
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
use sluice_core::metrics::MetricsHub;
use sluice_core::shard::{Shard, ShardSettings, MESH_CHANNEL_JOBS};
use tracing::{error, info};

use crate::handlers::Context;
use crate::sasl::{SaslServer, SaslSettings};
use crate::tls::TlsServer;
pub use sluice_core::cluster_metadata::Endpoint;

/// Who this broker says it is, in Metadata responses.
#[derive(Debug, Clone)]
pub struct BrokerIdentity {
    pub node_id: i32,
    /// Where clients reach this broker, per listener (Kafka's `advertised.listeners`); the
    /// first one answers for a listener without an entry of its own.
    pub endpoints: Vec<Endpoint>,
    pub cluster_id: String,
    /// Start-up settings DescribeConfigs shows read-only under Kafka's broker config names
    /// (`listeners`, `advertised.listeners`, `log.dirs`, ...): name, value, type.
    pub static_configs: Vec<(&'static str, String, sluice_core::topics::ConfigType)>,
}

impl BrokerIdentity {
    /// Where a client that came in on `listener` reaches this broker.
    pub fn endpoint(&self, listener: &str) -> (&str, u16) {
        self.endpoints
            .iter()
            .find(|e| e.listener == listener)
            .or(self.endpoints.first())
            .map_or(("", 0), |e| (e.host.as_str(), e.port))
    }
}

/// Kafka's security protocols a listener may speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    pub fn kafka_name(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        }
    }

    /// Connections are encrypted with TLS.
    pub fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    /// Clients authenticate with SASL.
    pub fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

/// One Kafka listener: every shard accepts on its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Its name (Kafka's `listeners` entry `NAME://host:port`); Metadata answers a client
    /// with the advertised address of the listener it came in on.
    pub name: String,
    pub protocol: SecurityProtocol,
    pub address: SocketAddr,
}

/// How long a client may take to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The buffers under a TLS connection, each way. rustls reads at most 4 KiB from its socket at
/// a time and writes one record (at most 16 KiB) per write: straight on the socket, a 1 MiB
/// produce request or fetch response costs hundreds of syscalls. Buffered, one syscall moves
/// up to this much. (A plaintext connection reads a whole frame and writes a whole response at
/// once and needs none.)
const TLS_SOCKET_BUFFER_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The Kafka listeners, at least one.
    pub listeners: Vec<Listener>,
    /// The TLS configuration of the `SSL` and `SASL_SSL` listeners (required when there is one).
    pub tls: Option<Arc<TlsServer>>,
    /// The SASL settings of the `SASL_*` listeners (required when there is one).
    pub sasl: Option<Arc<SaslSettings>>,
    /// The ACL authorizer (`None`: every client may do everything).
    pub authorizer: Option<Arc<sluice_core::acls::AuthorizerSettings>>,
    /// Where authentications, denials and administrative changes are recorded (`None`: not
    /// recorded).
    pub audit: Option<sluice_core::audit::AuditLog>,
    /// Largest request frame accepted; a longer length prefix closes the connection unread.
    pub frame_bytes_max: usize,
    /// Executors (shards), one per CPU.
    pub shards: usize,
    /// Pin each shard's thread to its own CPU (spread over the machine); when false the OS
    /// schedules them, for nodes that share their cores with others (a local cluster: pinned,
    /// every single-shard node would sit on the same first CPU).
    pub pin_shards: bool,
    /// How long shutdown waits for requests being answered.
    pub drain_timeout: Duration,
    pub shard_settings: ShardSettings,
}

/// How often a shard checks the shutdown flag.
const SHUTDOWN_POLL: Duration = Duration::from_millis(20);

/// Runs `accept_loops`, each in a task of its own, until `stop` completes, then ends them.
///
/// Why tasks of their own: glommio 0.9's accept keeps a new clone of the polling task's waker
/// every time it is polled (`Source::collect_rw`), and drops them only when a connection
/// arrives. Polled in the same task as the shutdown check, which wakes every
/// [`SHUTDOWN_POLL`], it gained 50 clones a second, and the task's reference count (an `i16`)
/// overflowed after about 11 minutes without a new connection: the shard panicked. In a task
/// of its own, an accept is polled only when its socket wakes it.
async fn accept_until<A, S>(accept_loops: Vec<A>, stop: S)
where
    A: std::future::Future<Output = ()> + 'static,
    S: std::future::Future<Output = ()>,
{
    let tasks: Vec<_> = accept_loops.into_iter().map(glommio::spawn_local).collect();
    stop.await;
    for task in tasks {
        task.cancel().await;
    }
}

/// Scheduler shares of background work (compaction) against the 1000 of the default queue
/// that serves requests.
const BACKGROUND_SHARES: usize = 50;

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

/// Makes sure no other process listens on `addr`, and keeps it so while the returned claim is
/// held: (1) the kernel's table of listening TCP sockets (`/proc/net/tcp`, `tcp6`) must hold
/// none on a conflicting address (a bind probe would not do: it also trips over the TIME_WAIT
/// connections a restarted broker leaves behind, which the shards' SO_REUSEPORT binds accept);
/// (2) an abstract Unix socket named after the address, which only one process can hold,
/// closes the window between that check and the shards' own binds against another Sluice
/// starting at the same moment.
fn claim_listen_address(
    addr: SocketAddr,
) -> Result<Option<std::os::unix::net::UnixListener>, ServerError> {
    use std::os::linux::net::SocketAddrExt;
    if addr.port() == 0 {
        // Any free port: nothing to share, nothing to claim.
        return Ok(None);
    }
    let in_use = |what: &str| ServerError::Listen {
        addr,
        reason: format!("address already in use ({what}); is another broker running there?"),
    };
    let name = format!("sluice/listen/{addr}");
    let lock_addr =
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).map_err(|e| {
            ServerError::Listen {
                addr,
                reason: e.to_string(),
            }
        })?;
    let claim = std::os::unix::net::UnixListener::bind_addr(&lock_addr).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            in_use("another sluice process holds it")
        } else {
            ServerError::Listen {
                addr,
                reason: format!("cannot claim the address: {e}"),
            }
        }
    })?;
    if let Some(other) = tcp_listeners()
        .into_iter()
        .find(|other| other.port() == addr.port() && addresses_overlap(other.ip(), addr.ip()))
    {
        return Err(in_use(&format!("another process listens on {other}")));
    }
    Ok(Some(claim))
}

/// Two binds on one port conflict when their addresses are equal or either is a wildcard.
fn addresses_overlap(a: std::net::IpAddr, b: std::net::IpAddr) -> bool {
    a == b || a.is_unspecified() || b.is_unspecified()
}

/// The local addresses of every listening TCP socket in this network namespace, from
/// `/proc/net/tcp` and `/proc/net/tcp6` (lines `sl local rem st ...`, addresses in hex as the
/// kernel stores them: 32-bit words in host byte order, port big-endian; state 0A is LISTEN).
fn tcp_listeners() -> Vec<SocketAddr> {
    const LISTEN: &str = "0A";
    let mut found = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state)) = (fields.get(1), fields.get(3)) else {
                continue;
            };
            if *state != LISTEN {
                continue;
            }
            if let Some(parsed) = parse_proc_address(local) {
                found.push(parsed);
            }
        }
    }
    found
}

/// `0100007F:2384` (IPv4) or 32 hex digits and a port (IPv6), as `/proc/net/tcp*` prints them.
fn parse_proc_address(field: &str) -> Option<SocketAddr> {
    let (ip_hex, port_hex) = field.split_once(':')?;
    let port = u16::from_str_radix(port_hex, 16).ok()?;
    let words: Vec<u32> = (0..ip_hex.len() / 8)
        .map(|i| u32::from_str_radix(&ip_hex[i * 8..i * 8 + 8], 16))
        .collect::<Result<_, _>>()
        .ok()?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let ip = match bytes.len() {
        4 => std::net::IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
        16 => std::net::IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Serves one accepted connection: on a plaintext listener (`tls` is `None`) at once; on an
/// `SSL` or `SASL_SSL` one after the TLS handshake (bounded in time; a client that fails it is logged and
/// dropped, nothing else is touched) and with the principal its certificate maps to.
async fn serve_accepted(
    tls: Option<Arc<TlsServer>>,
    stream: glommio::net::TcpStream,
    peer: String,
    mut ctx: Context,
    frame_bytes_max: usize,
    in_flight: crate::connection::InFlight,
) {
    let Some(tls) = tls else {
        crate::connection::serve(stream, peer, ctx, frame_bytes_max, in_flight).await;
        return;
    };
    let buffered = futures::io::BufWriter::with_capacity(
        TLS_SOCKET_BUFFER_BYTES,
        stream.buffered_with(glommio::net::Preallocated::new(TLS_SOCKET_BUFFER_BYTES)),
    );
    let handshake = tls.acceptor().accept(buffered);
    let timeout = async {
        glommio::timer::sleep(TLS_HANDSHAKE_TIMEOUT).await;
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "handshake not finished in time",
        ))
    };
    let stream = match futures_lite::future::or(handshake, timeout).await {
        Ok(stream) => stream,
        Err(e) => {
            ctx.shard.metrics.connection_failed();
            info!(%peer, listener = %ctx.listener, error = %e, "TLS handshake failed; connection closed");
            ctx.audit_authentication(false, "TLS", [("reason", e.to_string().into())]);
            return;
        }
    };
    let (principal, certified) = {
        let (_, session) = stream.get_ref();
        (
            tls.principal_of(session.peer_certificates()),
            session.peer_certificates().is_some_and(|c| !c.is_empty()),
        )
    };
    match principal {
        Ok(principal) => {
            info!(%peer, listener = %ctx.listener, %principal, "TLS client connected");
            ctx.principal = Rc::from(principal);
            // A client certificate is an authentication; a TLS client without one is not.
            if certified {
                ctx.audit_authentication(true, "TLS", []);
            }
        }
        Err(e) => {
            ctx.shard.metrics.connection_failed();
            info!(%peer, listener = %ctx.listener, error = %e, "TLS client refused; connection closed");
            ctx.audit_authentication(false, "TLS", [("reason", e.to_string().into())]);
            return;
        }
    }
    crate::connection::serve(stream, peer, ctx, frame_bytes_max, in_flight).await;
}

/// What a shard that waited for the others reports when one of them failed to start.
const ANOTHER_SHARD_FAILED: &str = "another shard failed to start";

/// Runs the broker until `shutdown` is raised and every shard has drained and closed its
/// partitions. Every shard publishes its metrics and readiness to `hub`.
pub fn run(
    config: ServerConfig,
    broker: BrokerIdentity,
    catalog: Arc<Catalog>,
    shutdown: Arc<AtomicBool>,
    hub: Arc<MetricsHub>,
) -> Result<(), ServerError> {
    if config.listeners.is_empty() {
        return Err(ServerError::Start("no listener configured".into()));
    }
    if config.listeners.iter().any(|l| l.protocol.uses_tls()) && config.tls.is_none() {
        return Err(ServerError::Start(
            "an SSL or SASL_SSL listener needs a TLS configuration".into(),
        ));
    }
    if config.listeners.iter().any(|l| l.protocol.uses_sasl()) && config.sasl.is_none() {
        return Err(ServerError::Start(
            "a SASL listener needs SASL settings".into(),
        ));
    }
    let _address_claims = config
        .listeners
        .iter()
        .map(|l| claim_listen_address(l.address))
        .collect::<Result<Vec<_>, _>>()?;
    let shards = config.shards.max(1);
    let mesh = MeshBuilder::full(shards, MESH_CHANNEL_JOBS);
    let drained = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    let start_failed = Arc::new(AtomicBool::new(false));
    let placement = if config.pin_shards {
        PoolPlacement::MaxSpread(shards, None)
    } else {
        PoolPlacement::Unbound(shards)
    };
    let handles = LocalExecutorPoolBuilder::new(placement)
        .on_all_shards(move || async move {
            let shard = match Shard::start(mesh, catalog, config.shard_settings.clone()).await {
                Ok(shard) => shard,
                Err(e) => {
                    start_failed.store(true, Ordering::Release);
                    return Err(ServerError::Start(e));
                }
            };
            // No shard serves before every shard has recovered its partitions and replayed
            // its consumer groups: a request forwarded to a shard still replaying would see
            // groups without their offsets.
            started.fetch_add(1, Ordering::AcqRel);
            while started.load(Ordering::Acquire) < shards {
                if start_failed.load(Ordering::Acquire) {
                    return Err(ServerError::Start(ANOTHER_SHARD_FAILED.into()));
                }
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            let mut bound = Vec::with_capacity(config.listeners.len());
            for listener in &config.listeners {
                let socket =
                    TcpListener::bind(listener.address).map_err(|e| ServerError::Listen {
                        addr: listener.address,
                        reason: e.to_string(),
                    })?;
                info!(addr = %listener.address, listener = %listener.name,
                    protocol = listener.protocol.kafka_name(), shard = shard.id, "listening");
                bound.push((Rc::new(socket), listener.clone()));
            }
            glommio::spawn_local(shard.clone().retention_loop()).detach();
            // Compaction runs in a task queue of its own with few shares: whenever produce or
            // fetch work is runnable, it goes first.
            let background = glommio::executor().create_task_queue(
                glommio::Shares::Static(BACKGROUND_SHARES),
                glommio::Latency::NotImportant,
                "compaction",
            );
            match glommio::spawn_local_into(
                sluice_core::cleaner::cleaner_loop(shard.clone()),
                background,
            ) {
                Ok(task) => task.detach(),
                Err(e) => return Err(ServerError::Start(format!("cannot start compaction: {e}"))),
            };
            let ctx = Context {
                shard: shard.clone(),
                broker: Rc::new(broker),
                client_host: Rc::from(""),
                client_address: Rc::from(""),
                client_telemetry: hub.client_telemetry.clone(),
                listener: Rc::from(""),
                principal: Rc::from(crate::tls::ANONYMOUS),
                sasl: None,
                authorizer: config.authorizer.clone(),
                audit: config.audit.clone(),
                api: None,
            };
            let in_flight: crate::connection::InFlight = Rc::default();
            let publishing = {
                let in_flight = in_flight.clone();
                sluice_core::metrics::publish_loop(shard.clone(), hub.clone(), move || {
                    in_flight.get() as u64
                })
            };
            glommio::spawn_local(publishing).detach();
            hub.shard_serving();
            let accepts = bound.iter().map(|(socket, listener)| {
                let listener_name: Rc<str> = Rc::from(listener.name.as_str());
                let tls = if listener.protocol.uses_tls() {
                    config.tls.clone()
                } else {
                    None
                };
                let sasl = if listener.protocol.uses_sasl() {
                    config
                        .sasl
                        .clone()
                        .map(|settings| SaslServer::new(shard.catalog.clone(), settings))
                } else {
                    None
                };
                let (socket, ctx, in_flight) = (socket.clone(), ctx.clone(), in_flight.clone());
                let frame_bytes_max = config.frame_bytes_max;
                async move {
                    loop {
                        let stream = match socket.accept().await {
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
                        connection_ctx.client_address = Rc::from(peer.as_str());
                        connection_ctx.listener = listener_name.clone();
                        connection_ctx.sasl = sasl.clone();
                        let in_flight = in_flight.clone();
                        glommio::spawn_local(serve_accepted(
                            tls.clone(),
                            stream,
                            peer,
                            connection_ctx,
                            frame_bytes_max,
                            in_flight,
                        ))
                        .detach();
                    }
                }
            });
            let stop = async {
                while !shutdown.load(Ordering::Relaxed) {
                    glommio::timer::sleep(SHUTDOWN_POLL).await;
                }
            };
            accept_until(accepts.collect(), stop).await;
            hub.draining();
            drop(bound);
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
    // The first shard's error need not be the cause: a shard that waited for the others
    // says only that another failed. Report the cause.
    let (mut cause, mut waited) = (None, None);
    for result in handles.join_all() {
        let error = match result {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            Err(e) => ServerError::Shard(e.to_string()),
        };
        if matches!(&error, ServerError::Start(m) if m == ANOTHER_SHARD_FAILED) {
            waited.get_or_insert(error);
        } else {
            cause.get_or_insert(error);
        }
    }
    cause.or(waited).map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn proc_net_tcp_addresses_parse() {
        // 127.0.0.1:9092 and [::]:9644 as a little-endian x86 kernel prints them.
        if cfg!(target_endian = "little") {
            assert_eq!(
                parse_proc_address("0100007F:2384"),
                Some("127.0.0.1:9092".parse().unwrap())
            );
        }
        assert_eq!(
            parse_proc_address("00000000000000000000000000000000:25AC"),
            Some("[::]:9644".parse().unwrap())
        );
        assert_eq!(parse_proc_address("zz:1"), None);
    }

    #[test]
    fn a_listening_socket_of_this_process_is_seen() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert!(tcp_listeners().contains(&addr));
        assert!(claim_listen_address(addr).is_err());
        drop(listener);
        let claim = claim_listen_address(addr).unwrap();
        assert!(claim.is_some());
        assert!(
            claim_listen_address(addr).is_err(),
            "held by the first claim"
        );
        drop(claim);
        assert!(claim_listen_address(addr).unwrap().is_some());
        // Port 0 (any free port) is never in use.
        let any = "127.0.0.1:0".parse().unwrap();
        assert!(claim_listen_address(any).unwrap().is_none());
        assert!(claim_listen_address(any).unwrap().is_none());
    }

    /// A shard's accept loops run beside its shutdown check, which wakes the shard's task every
    /// 20 ms. glommio keeps a waker clone per poll of a pending accept, and its reference count
    /// holds 32,767: 40,000 wake-ups of the stopping future must neither panic the executor
    /// nor stop the listener from accepting.
    #[test]
    fn accepting_survives_more_wakeups_of_the_shutdown_check_than_a_waker_count_holds() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let listener = Rc::new(TcpListener::bind("127.0.0.1:0").unwrap());
                let address = listener.local_addr().unwrap();
                let accepted = Rc::new(Cell::new(0));
                let accept_loop = {
                    let (listener, accepted) = (listener.clone(), accepted.clone());
                    async move {
                        loop {
                            if listener.accept().await.is_ok() {
                                accepted.set(accepted.get() + 1);
                            }
                        }
                    }
                };
                let stop = {
                    let accepted = accepted.clone();
                    async move {
                        for _ in 0..40_000 {
                            futures_lite::future::yield_now().await;
                        }
                        let _client = std::net::TcpStream::connect(address).unwrap();
                        for _ in 0..5_000 {
                            if accepted.get() == 1 {
                                return;
                            }
                            glommio::timer::sleep(Duration::from_millis(1)).await;
                        }
                    }
                };
                accept_until(vec![accept_loop], stop).await;
                assert_eq!(accepted.get(), 1, "the listener stopped accepting");
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
