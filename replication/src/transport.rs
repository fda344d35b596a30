//! Node-to-node connections carrying RPC frames (`rpc.rs`), on one glommio executor.
//!
//! Sending: for every peer there is one outgoing connection, owned by that peer's **writer
//! task**, dialed when there is something to send and redialed after a failure no sooner than a
//! backoff (100 ms doubling to 2 s). Messages queued for a peer between two `flush` calls leave
//! together as one frame; the owner flushes once per tick (or sooner for latency), so the
//! messages of every group between two nodes travel in one frame. A flush only hands each
//! peer's frame to its writer: it never waits for a dial or a write, so a peer that is slow,
//! hung (its process stopped: the kernel still accepts and buffers) or unreachable (its machine
//! gone: a dial waits out its 1 s timeout) holds up neither the owner's step nor the other
//! peers. A failed dial or write (or a write the peer takes no data for within 200 ms) drops
//! that connection and every frame queued behind it (Raft retransmits), and the peer is named
//! in the next flush report, so the owner tells its replicas the peer is unreachable; so is a
//! peer in backoff (its frames are dropped, not queued) and one whose writer already holds
//! [`PEER_QUEUE_BYTES_MAX`] unwritten (memory stays bounded whatever the peer does).
//! An announcement of what the node's shard leads (`announce`) rides along in the next frame to
//! every peer (a frame of its own where nothing else is queued); a failed send drops it too,
//! and the owner announces again.
//!
//! Requests and answers between shards (`send_call`, see `rpc::PeerCall`) travel in the same
//! frames, under the same rules: dropped with their frame, never retransmitted here.
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
//! Invariant: frames on one connection are written whole and in `flush` order (one writer per
//! peer, writing one frame after another), so a peer receives one sender's messages in the
//! order they were queued; a dropped frame is never followed by an older one.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::task::JoinHandle;

use crate::rpc::{
    decode_header, decode_payload, encode_frame, encode_join_frame, Frame, GroupMessage, LeadNote,
    PeerCall, FRAME_HEADER_BYTES,
};

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
const DIAL_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one frame's write may wait for the peer to take data. A peer that is hung (its
/// process stopped, its machine frozen) keeps its connection open but reads nothing: once the
/// socket buffers are full, a write would wait for as long as the hang lasts, and the owner's
/// whole step (every group of the shard, every other peer) with it.
const WRITE_TIMEOUT: Duration = Duration::from_millis(200);

/// Most bytes a peer's writer may hold unwritten; frames beyond it are dropped (a peer that
/// takes data more slowly than it is sent, or not at all, costs bounded memory). A frame
/// larger than this still goes when nothing else is queued.
pub const PEER_QUEUE_BYTES_MAX: usize = 32 << 20;

struct Link {
    address: SocketAddr,
    queue: RefCell<Vec<GroupMessage>>,
    /// Requests and answers for the peer, for the next frame.
    calls: RefCell<Vec<PeerCall>>,
    /// An announcement of what this shard leads, for the next frame.
    leading: RefCell<Option<Rc<[LeadNote]>>>,
    /// A request to join the cluster (this node's registration), for the next flush.
    join: RefCell<Option<Bytes>>,
    /// The next flush sends a frame even with nothing queued (a keep-alive).
    keep_alive: Cell<bool>,
    /// Frames for the peer's writer task (started with the first frame); dropping the sender
    /// ends the task once it wrote what was handed to it.
    writer: RefCell<Option<UnboundedSender<Vec<u8>>>>,
    state: Rc<WriterState>,
}

/// What a peer's writer task and the flushes share.
#[derive(Default)]
struct WriterState {
    /// Bytes handed to the writer and not yet written (or dropped).
    queued_bytes: Cell<usize>,
    /// A dial or write failed since the last flush looked.
    failed: Cell<bool>,
    /// No frame is handed over before this instant (the writer's backoff after a failure).
    retry_at: Cell<Option<Instant>>,
}

/// What a flush did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FlushReport {
    /// Frames handed to the peers' writers.
    pub frames_sent: usize,
    pub messages_sent: usize,
    /// Peers whose queued messages were dropped (in backoff after a failure, or their writer
    /// already holds [`PEER_QUEUE_BYTES_MAX`]), or whose writer failed since the last flush.
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
                calls: RefCell::new(Vec::new()),
                leading: RefCell::new(None),
                join: RefCell::new(None),
                keep_alive: Cell::new(false),
                writer: RefCell::new(None),
                state: Rc::default(),
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

    /// Queues a request or an answer for `peer` until the next flush. False for an unknown
    /// peer. Like a message, it is dropped with its frame when the peer cannot be reached:
    /// the asker's wait for an answer has a deadline of its own.
    pub fn send_call(&self, peer: u64, call: PeerCall) -> bool {
        match self.links.get(&peer) {
            Some(link) => {
                link.calls.borrow_mut().push(call);
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

    /// Hands every peer's queued messages (and a pending announcement) to that peer's writer
    /// as one frame. Never waits for the network: a slow, hung or unreachable peer costs the
    /// caller nothing but the frames it drops (see [`FlushReport::unreachable`]).
    pub async fn flush(&self) -> FlushReport {
        let mut report = FlushReport::default();
        let now = Instant::now();
        for (peer, link) in &self.links {
            let messages = std::mem::take(&mut *link.queue.borrow_mut());
            let calls = std::mem::take(&mut *link.calls.borrow_mut());
            let leading = link.leading.borrow_mut().take();
            let join = link.join.borrow_mut().take();
            let keep_alive = link.keep_alive.replace(false);
            let failed = link.state.failed.replace(false);
            let tried = !messages.is_empty()
                || !calls.is_empty()
                || leading.is_some()
                || join.is_some()
                || keep_alive;
            let handed = tried
                && self.hand_over(
                    link,
                    Outgoing {
                        messages: &messages,
                        calls: &calls,
                        leading: leading.as_deref(),
                        join: join.as_deref(),
                    },
                    now,
                );
            if handed {
                report.frames_sent += 1;
                report.messages_sent += messages.len();
            }
            if failed || (tried && !handed) {
                report.unreachable.push(*peer);
            }
        }
        report.unreachable.sort_unstable();
        report
    }

    /// Encodes one frame for `link` and hands it to the peer's writer (started with the first
    /// frame). False if it was dropped instead: the peer is in backoff after a failure, or its
    /// writer already holds [`PEER_QUEUE_BYTES_MAX`] (the peer takes data more slowly than this
    /// node sends it, or not at all); Raft retransmits.
    fn hand_over(&self, link: &Link, outgoing: Outgoing<'_>, now: Instant) -> bool {
        let Outgoing {
            messages,
            calls,
            leading,
            join,
        } = outgoing;
        let state = &link.state;
        if state.retry_at.get().is_some_and(|at| now < at) {
            return false;
        }
        let mut frame = Vec::new();
        if let Some(registration) = join {
            encode_join_frame(self.node_id, registration, &mut frame);
        }
        if !messages.is_empty() || !calls.is_empty() || leading.is_some() || join.is_none() {
            encode_frame(self.node_id, messages, leading, calls, &mut frame);
        }
        let queued = state.queued_bytes.get();
        if queued > 0 && queued + frame.len() > PEER_QUEUE_BYTES_MAX {
            return false;
        }
        let mut writer = link.writer.borrow_mut();
        let writer = writer.get_or_insert_with(|| {
            let (frames_tx, frames_rx) = futures::channel::mpsc::unbounded();
            glommio::spawn_local(write_frames(link.address, state.clone(), frames_rx)).detach();
            frames_tx
        });
        let length = frame.len();
        if writer.unbounded_send(frame).is_err() {
            return false;
        }
        state.queued_bytes.set(queued + length);
        true
    }
}

/// What one flush hands a peer's writer.
struct Outgoing<'a> {
    messages: &'a [GroupMessage],
    calls: &'a [PeerCall],
    leading: Option<&'a [LeadNote]>,
    join: Option<&'a [u8]>,
}

/// A peer's writer: dials when there is something to send (no sooner than the backoff after
/// a failure), writes the frames in the order they were handed over, and on a failed dial or
/// write (or a write the peer takes no data for within [`WRITE_TIMEOUT`]) drops the
/// connection and whatever is queued behind it, notes the failure for the next flush and
/// backs off. Ends when the link's sender is dropped and the queue is written.
async fn write_frames(
    address: SocketAddr,
    state: Rc<WriterState>,
    mut frames: UnboundedReceiver<Vec<u8>>,
) {
    let mut stream: Option<TcpStream> = None;
    let mut backoff = BACKOFF_FIRST;
    while let Some(first) = frames.next().await {
        let mut batch = vec![first];
        while let Ok(more) = frames.try_recv() {
            batch.push(more);
        }
        let bytes: usize = batch.iter().map(Vec::len).sum();
        let written = write_batch(&mut stream, address, &batch).await;
        let mut done = bytes;
        match written {
            Ok(()) => {
                backoff = BACKOFF_FIRST;
                state.retry_at.set(None);
            }
            Err(e) => {
                tracing::debug!(peer = %address, error = %e, "rpc write failed");
                stream = None;
                state.failed.set(true);
                state.retry_at.set(Some(Instant::now() + backoff));
                backoff = (backoff * 2).min(BACKOFF_MAX);
                // Frames queued behind the failure are stale by the time a redial could
                // carry them: dropped (Raft retransmits what still matters).
                while let Ok(stale) = frames.try_recv() {
                    done += stale.len();
                }
            }
        }
        state
            .queued_bytes
            .set(state.queued_bytes.get().saturating_sub(done));
    }
}

/// Writes `batch` whole and in order on `stream`, dialing first if there is no connection.
async fn write_batch(
    stream: &mut Option<TcpStream>,
    address: SocketAddr,
    batch: &[Vec<u8>],
) -> std::io::Result<()> {
    if stream.is_none() {
        let connected = TcpStream::connect_timeout(address, DIAL_TIMEOUT).await?;
        let _ = connected.set_nodelay(true);
        *stream = Some(connected);
    }
    let connection = stream.as_mut().expect("connected above");
    // Each frame gets the write timeout of its own: a batch of many frames to a peer that
    // reads steadily is not a hung peer.
    for frame in batch {
        let write = async {
            connection.write_all(frame).await?;
            connection.flush().await
        };
        let (write, deadline) = (
            std::pin::pin!(write),
            std::pin::pin!(glommio::timer::sleep(WRITE_TIMEOUT)),
        );
        match futures::future::select(write, deadline).await {
            futures::future::Either::Left((result, _)) => result?,
            futures::future::Either::Right(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the peer took no data (hung?)",
                ))
            }
        }
    }
    Ok(())
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
            let empty =
                frame.messages.is_empty() && frame.leading.is_none() && frame.calls.is_empty();
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
