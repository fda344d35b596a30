//! Node-to-node connections carrying RPC frames (`rpc.rs`), on one glommio executor.
//!
//! Sending: for every peer there is one outgoing connection, dialed when there is something to
//! send and redialed after a failure no sooner than a backoff (100 ms doubling to 2 s). Messages
//! queued for a peer between two `flush` calls leave together as one frame; the owner flushes
//! once per tick (or sooner for latency), so the messages of every group between two nodes
//! travel in one frame. A failed write or dial drops what was queued (Raft retransmits) and
//! names the peer in the flush report, so the owner tells its replicas the peer is unreachable.
//! So does a write the peer takes no data for within 200 ms (a hung peer whose socket buffers
//! filled): its connection is dropped, so a flush never waits on a hung peer for longer.
//! An announcement of what the node's shard leads (`announce`) rides along in the next frame to
//! every peer (a frame of its own where nothing else is queued); a failed send drops it too,
//! and the owner announces again.
//!
//! `keep_alive` makes the next flush send every peer a frame even with nothing queued (an empty
//! one): node-level liveness for peers whose groups are all quiet.
//!
//! Receiving: a `Listener` accepts connections and reads them frame by frame; every frame goes
//! to the owner's `deliver` callback. A malformed frame (too long, bad checksum, bad structure,
//! unknown sender) closes that connection with a log line and touches nothing else; the one
//! frame an unknown sender may send is a request to join (`Frame::join`, nothing else in it),
//! which is delivered for the owner to judge (an empty frame, a keep-alive, is skipped). Peers can be added while running (a node that
//! joined): `Transport::add_peer`, `Listener::allow_sender`. When a
//! connection that carried frames from a node closes, the owner's `hung_up` callback names that
//! node (a peer process that died closes its connections at once; the owner can act before any
//! timeout). Dropping the `Listener` closes the socket and every connection it accepted.
//!
//! Invariant: frames on one connection are written whole and in `flush` order (one write at a
//! time per peer), so a peer receives one sender's messages in the order they were queued.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::lock::Mutex;
use futures::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::task::JoinHandle;

use crate::rpc::{
    decode_header, decode_payload, encode_frame, encode_join_frame, Frame, GroupMessage, LeadNote,
    FRAME_HEADER_BYTES,
};

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
const DIAL_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one frame's write may wait for the peer to take data. A peer that is hung (its
/// process stopped, its machine frozen) keeps its connection open but reads nothing: once the
/// socket buffers are full, a write would wait for as long as the hang lasts, and the owner's
/// whole step (every group of the shard, every other peer) with it.
const WRITE_TIMEOUT: Duration = Duration::from_millis(200);

struct Link {
    address: SocketAddr,
    queue: RefCell<Vec<GroupMessage>>,
    /// An announcement of what this shard leads, for the next frame.
    leading: RefCell<Option<Rc<[LeadNote]>>>,
    /// A request to join the cluster (this node's registration), for the next flush.
    join: RefCell<Option<Bytes>>,
    /// The next flush sends a frame even with nothing queued (a keep-alive).
    keep_alive: Cell<bool>,
    stream: Mutex<Option<TcpStream>>,
    /// No dial before this instant (after a failure).
    retry_at: Cell<Option<Instant>>,
    backoff: Cell<Duration>,
}

/// What a flush did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FlushReport {
    pub frames_sent: usize,
    pub messages_sent: usize,
    /// Peers whose queued messages were dropped (unreachable, or in backoff).
    pub unreachable: Vec<u64>,
}

/// The sending side of a node's RPC: one link per peer.
pub struct Transport {
    node_id: u64,
    links: HashMap<u64, Rc<Link>>,
}

impl Transport {
    /// A transport for `node_id` to `peers` (node id -> RPC address; the node's own id, if
    /// present, is ignored).
    pub fn new(node_id: u64, peers: &HashMap<u64, SocketAddr>) -> Transport {
        let mut transport = Transport {
            node_id,
            links: HashMap::new(),
        };
        for (id, address) in peers {
            transport.add_peer(*id, *address);
        }
        transport
    }

    /// Adds peer `id` at `address` (a node that joined after this one started), or moves it
    /// there. False if nothing changed (known at that address, or this node itself).
    pub fn add_peer(&mut self, id: u64, address: SocketAddr) -> bool {
        if id == self.node_id || self.links.get(&id).is_some_and(|l| l.address == address) {
            return false;
        }
        self.links.insert(
            id,
            Rc::new(Link {
                address,
                queue: RefCell::new(Vec::new()),
                leading: RefCell::new(None),
                join: RefCell::new(None),
                keep_alive: Cell::new(false),
                stream: Mutex::new(None),
                retry_at: Cell::new(None),
                backoff: Cell::new(BACKOFF_FIRST),
            }),
        );
        true
    }

    /// Whether `id` is a peer this transport can reach.
    pub fn knows(&self, id: u64) -> bool {
        self.links.contains_key(&id)
    }

    /// Asks `peer` to let this node join the cluster, with its `registration`, in a frame of
    /// its own with the next flush. False for an unknown peer.
    pub fn send_join(&self, peer: u64, registration: Bytes) -> bool {
        match self.links.get(&peer) {
            Some(link) => {
                *link.join.borrow_mut() = Some(registration);
                true
            }
            None => false,
        }
    }

    /// Queues a message for `peer` until the next flush. False for an unknown peer.
    pub fn send(&self, peer: u64, message: GroupMessage) -> bool {
        match self.links.get(&peer) {
            Some(link) => {
                link.queue.borrow_mut().push(message);
                true
            }
            None => false,
        }
    }

    /// Announces `leading` (every group this shard leads) to every peer with the next flush,
    /// replacing an announcement not sent yet.
    pub fn announce(&self, leading: Rc<[LeadNote]>) {
        for link in self.links.values() {
            *link.leading.borrow_mut() = Some(leading.clone());
        }
    }

    /// Makes the next flush send every peer a frame, an empty one where nothing is queued, so
    /// that peers hear this node is up although none of its groups has anything to say.
    pub fn keep_alive(&self) {
        for link in self.links.values() {
            link.keep_alive.set(true);
        }
    }

    /// Sends every peer's queued messages (and a pending announcement) as one frame each, to
    /// all peers concurrently.
    pub async fn flush(&self) -> FlushReport {
        let sends = self.links.iter().filter_map(|(peer, link)| {
            let messages = std::mem::take(&mut *link.queue.borrow_mut());
            let leading = link.leading.borrow_mut().take();
            let join = link.join.borrow_mut().take();
            let keep_alive = link.keep_alive.replace(false);
            (!messages.is_empty() || leading.is_some() || join.is_some() || keep_alive).then(|| {
                let link = link.clone();
                let peer = *peer;
                async move {
                    let count = messages.len();
                    let sent = self
                        .send_frame(&link, &messages, leading.as_deref(), join.as_deref())
                        .await;
                    (peer, count, sent)
                }
            })
        });
        let mut report = FlushReport::default();
        for (peer, count, sent) in futures::future::join_all(sends).await {
            if sent {
                report.frames_sent += 1;
                report.messages_sent += count;
            } else {
                report.unreachable.push(peer);
            }
        }
        report.unreachable.sort_unstable();
        report
    }

    async fn send_frame(
        &self,
        link: &Link,
        messages: &[GroupMessage],
        leading: Option<&[LeadNote]>,
        join: Option<&[u8]>,
    ) -> bool {
        let mut frame = Vec::new();
        if let Some(registration) = join {
            encode_join_frame(self.node_id, registration, &mut frame);
        }
        if !messages.is_empty() || leading.is_some() || join.is_none() {
            encode_frame(self.node_id, messages, leading, &mut frame);
        }
        let mut stream = link.stream.lock().await;
        if stream.is_none() {
            if link.retry_at.get().is_some_and(|at| Instant::now() < at) {
                return false;
            }
            match TcpStream::connect_timeout(link.address, DIAL_TIMEOUT).await {
                Ok(connected) => {
                    let _ = connected.set_nodelay(true);
                    *stream = Some(connected);
                }
                Err(e) => {
                    tracing::debug!(peer = %link.address, error = %e, "rpc dial failed");
                    back_off(link);
                    return false;
                }
            }
        }
        let connection = stream.as_mut().expect("connected above");
        let write = async {
            connection.write_all(&frame).await?;
            connection.flush().await
        };
        let (write, deadline) = (
            std::pin::pin!(write),
            std::pin::pin!(glommio::timer::sleep(WRITE_TIMEOUT)),
        );
        let written = match futures::future::select(write, deadline).await {
            futures::future::Either::Left((result, _)) => result,
            futures::future::Either::Right(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the peer took no data (hung?)",
            )),
        };
        match written {
            Ok(()) => {
                link.retry_at.set(None);
                link.backoff.set(BACKOFF_FIRST);
                true
            }
            Err(e) => {
                tracing::debug!(peer = %link.address, error = %e, "rpc write failed");
                *stream = None;
                back_off(link);
                false
            }
        }
    }
}

fn back_off(link: &Link) {
    let backoff = link.backoff.get();
    link.retry_at.set(Some(Instant::now() + backoff));
    link.backoff.set((backoff * 2).min(BACKOFF_MAX));
}

/// The receiving side: accepts connections and hands every frame to `deliver`. Dropping it
/// closes the listening socket and every accepted connection.
pub struct Listener {
    address: SocketAddr,
    accept: JoinHandle<()>,
    connections: Rc<RefCell<HashMap<u64, JoinHandle<()>>>>,
    senders: Rc<RefCell<HashSet<u64>>>,
}

impl Listener {
    /// Listens on `address`. Frames larger than `max_frame_bytes` or from a node not in
    /// `senders` (see [`allow_sender`](Self::allow_sender)) close their connection, except
    /// a frame asking to join ([`Frame::join`], nothing else in it), which is delivered.
    pub fn bind<F>(
        address: SocketAddr,
        senders: Vec<u64>,
        max_frame_bytes: usize,
        deliver: F,
    ) -> std::io::Result<Listener>
    where
        F: Fn(Frame) + 'static,
    {
        Self::bind_with_hang_up(address, senders, max_frame_bytes, deliver, |_| {})
    }

    /// [`bind`](Self::bind), calling `hung_up(node)` when a connection that carried frames
    /// from `node` closes, for whatever reason.
    pub fn bind_with_hang_up<F, H>(
        address: SocketAddr,
        senders: Vec<u64>,
        max_frame_bytes: usize,
        deliver: F,
        hung_up: H,
    ) -> std::io::Result<Listener>
    where
        F: Fn(Frame) + 'static,
        H: Fn(u64) + 'static,
    {
        let listener = TcpListener::bind(address)?;
        let address = listener.local_addr()?;
        let connections: Rc<RefCell<HashMap<u64, JoinHandle<()>>>> = Rc::default();
        let deliver = Rc::new(deliver);
        let hung_up = Rc::new(hung_up);
        let senders: Rc<RefCell<HashSet<u64>>> =
            Rc::new(RefCell::new(senders.into_iter().collect()));
        let allowed = senders.clone();
        let accepted = connections.clone();
        let accept = glommio::spawn_local(async move {
            let mut next_id = 0u64;
            loop {
                let stream = match listener.accept().await {
                    Ok(stream) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "rpc accept failed");
                        glommio::timer::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                next_id += 1;
                let id = next_id;
                let deliver = deliver.clone();
                let hung_up = hung_up.clone();
                let senders = allowed.clone();
                let registry = accepted.clone();
                let handle = glommio::spawn_local(async move {
                    let peer = stream.peer_addr().ok();
                    let sender = Cell::new(None);
                    if let Err(reason) =
                        read_frames(stream, &senders, max_frame_bytes, &*deliver, &sender).await
                    {
                        tracing::warn!(?peer, %reason, "rpc connection closed");
                    }
                    registry.borrow_mut().remove(&id);
                    if let Some(node) = sender.get() {
                        hung_up(node);
                    }
                })
                .detach();
                accepted.borrow_mut().insert(id, handle);
            }
        })
        .detach();
        Ok(Listener {
            address,
            accept,
            connections,
            senders,
        })
    }

    /// Accepts frames from node `id` from now on (a node that joined the cluster).
    pub fn allow_sender(&self, id: u64) {
        self.senders.borrow_mut().insert(id);
    }

    /// The address it listens on (the port chosen when bound to port 0).
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.accept.cancel();
        for (_, connection) in self.connections.borrow_mut().drain() {
            connection.cancel();
        }
    }
}

/// Reads frames until the peer closes (Ok) or sends something malformed (Err, with why);
/// `sender` is the node whose frames the connection carried.
async fn read_frames(
    mut stream: TcpStream,
    senders: &RefCell<HashSet<u64>>,
    max_frame_bytes: usize,
    deliver: &dyn Fn(Frame),
    sender: &Cell<Option<u64>>,
) -> Result<(), String> {
    loop {
        let mut header = [0u8; FRAME_HEADER_BYTES];
        match stream.read_exact(&mut header).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.to_string()),
        }
        let header = decode_header(&header, max_frame_bytes).map_err(|e| e.to_string())?;
        let mut payload = BytesMut::zeroed(header.payload_length);
        stream
            .read_exact(&mut payload)
            .await
            .map_err(|e| format!("frame payload: {e}"))?;
        let frame = decode_payload(header, Bytes::from(payload)).map_err(|e| e.to_string())?;
        if !senders.borrow().contains(&frame.from_node) {
            let empty = frame.messages.is_empty() && frame.leading.is_none();
            if empty && frame.join.is_none() {
                // A keep-alive from a node that is no peer (yet): it says nothing.
                continue;
            }
            let only_join = frame.join.is_some() && empty;
            if !only_join {
                return Err(format!("frame from unknown node {}", frame.from_node));
            }
            // A node asking to join: the owner decides; it is no peer (yet).
            deliver(frame);
            continue;
        }
        sender.set(Some(frame.from_node));
        deliver(frame);
    }
}
