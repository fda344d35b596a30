//! A shard: one glommio executor thread, the partitions it owns, and its links to every other
//! shard.
//!
//! Shards share nothing mutable on the data path. Work for another shard travels as a [`Job`]
//! over glommio's channel mesh (the Seastar `invoke_on` pattern): a closure that is `Send`
//! (it carries only `Bytes`, names and numbers), run on the target shard where it builds a local
//! future, whose result comes back over a oneshot channel. Record data crosses shards as
//! `Bytes`, never copied or re-encoded.
//!
//! Partition ownership: partition `p` of topic `t` lives on shard `(crc32c(t) + p) % shards`,
//! so one topic's partitions spread over every shard. Only the owner opens the partition's log.
//!
//! Shard ids are the mesh's peer ids (0..count), not CPU numbers. Shard 0 is the controller:
//! it alone changes the catalog (see `controller`).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use futures::future::{Either, LocalBoxFuture};
use futures::StreamExt;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};
use glommio::sync::Semaphore;
use sluice_storage::LogConfig;
use tracing::{info, warn};
use uuid::Uuid;

use crate::catalog::{Catalog, Image};
use crate::partition::Partition;
use crate::topics::Topic;

/// Work sent to another shard: run there with that shard's state.
pub type Job = Box<dyn FnOnce(Rc<Shard>) -> LocalBoxFuture<'static, ()> + Send>;

/// How many jobs may wait in one shard-to-shard channel before senders wait (back-pressure).
pub const MESH_CHANNEL_JOBS: usize = 1024;

/// Another shard could not run the work: it has stopped (the broker is shutting down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("shard {0} is not running")]
pub struct ShardGone(pub usize);

/// A partition's identity on the data path: topic id and partition index.
pub type PartitionKey = (Uuid, i32);

/// What every shard is started with.
#[derive(Debug, Clone)]
pub struct ShardSettings {
    /// Storage settings topics do not override (I/O sizes, queue depths).
    pub log_defaults: LogConfig,
    /// Create a topic on first Metadata/Produce for it, with `default_partitions`.
    pub auto_create_topics: bool,
    pub default_partitions: i32,
    /// Accept replication factors above 1 on this single node, creating one replica.
    /// When false, such requests fail with INVALID_REPLICATION_FACTOR.
    pub clamp_replication_factor: bool,
    /// How often each shard applies retention to its partitions.
    pub retention_check_ms: u64,
    /// How long a new consumer group waits for more members before its first rebalance
    /// completes (Kafka's `group.initial.rebalance.delay.ms`).
    pub group_initial_rebalance_delay: std::time::Duration,
    /// Log compaction of compacted topics.
    pub cleaner: crate::cleaner::CleanerSettings,
    /// Produce is refused (KAFKA_STORAGE_ERROR) while the data directory's filesystem has less
    /// than this many bytes free, so a full disk is met before a write fails on it.
    pub disk_free_bytes_min: u64,
    /// KIP-890 part 1: a producer's first transactional batch on a partition (none of its
    /// transactions open there) is appended only once its transaction coordinator confirms the
    /// partition is in the producer's ongoing transaction (else INVALID_TXN_STATE), so no
    /// stray batch opens a transaction that nobody would end.
    pub txn_partition_verification: bool,
    /// The shard's durability rounds: one round for all its partitions with this flush mode,
    /// or (`None`) rounds of each partition's own.
    pub sync_flush: Option<sluice_storage::FlushMode>,
    /// Write-buffer memory of the shard's logs beyond which appends wait for their writes
    /// (back-pressure, see `sluice_storage::WriteBudget`).
    pub write_buffer_bytes: usize,
    /// Incremental fetch sessions the broker keeps (Kafka's
    /// `max.incremental.fetch.session.cache.slots`), shared out evenly over the shards; 0: none.
    pub fetch_session_slots: usize,
    /// How long a session must be unused before any new session may evict it (Kafka's
    /// `min.incremental.fetch.session.eviction.ms`).
    pub fetch_session_eviction: std::time::Duration,
    /// Cluster mode (`None`: a single node, today's broker).
    pub cluster: Option<crate::cluster::ClusterSettings>,
}

/// A partition not appended to for this long gives its write buffers back.
const IDLE_TAIL_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// Partitions a clean stop closes at once (each close syncs its log and writes checkpoints).
pub(crate) const PARTITIONS_CLOSED_AT_ONCE: usize = 256;

/// How often the data directory's free space is looked up for the produce floor.
const DISK_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// One shard's state.
pub struct Shard {
    pub id: usize,
    pub count: usize,
    senders: Senders<Job>,
    pub catalog: Arc<Catalog>,
    pub settings: ShardSettings,
    /// This shard's copy of the catalog image, refreshed when the catalog's version moves.
    image: RefCell<Arc<Image>>,
    partitions: RefCell<HashMap<PartitionKey, Rc<Partition>>>,
    /// Free bytes of the data directory's filesystem and when they were looked up.
    disk_free: Cell<(u64, Option<std::time::Instant>)>,
    /// The free bytes last warned about (`u64::MAX`: above the floor), so a full disk is
    /// logged once as it fills, not at every look.
    disk_free_warned: Cell<u64>,
    /// Serializes log opening on this shard, so one partition is never opened twice.
    opening: Semaphore,
    /// Set once shutdown starts closing partitions: from then on none is opened (a request
    /// arriving meanwhile would otherwise open a second instance of a log the shutdown is
    /// still closing, and two instances of one log overwrite each other's segments).
    closing: Cell<bool>,
    /// The controller's lock: catalog changes run one at a time (used on shard 0 only).
    controller_lock: Semaphore,
    /// The consumer groups whose offsets partitions this shard owns.
    pub(crate) groups: crate::groups::Coordinator,
    /// The transactional ids whose `__transaction_state` partitions this shard owns.
    pub(crate) transactions: crate::transactions::TxnCoordinator,
    /// The controller's producer-id block: (next to hand out, end of the reserved block).
    pub(crate) producer_ids: std::cell::Cell<Option<(i64, i64)>>,
    /// Per source shard, the order in which its produce jobs take their places in this shard's
    /// partitions (see [`Shard::dispatch`] and `produce`).
    placements: RefCell<HashMap<usize, Rc<crate::turn::Turn>>>,
    /// Durability rounds shared by this shard's partitions (see `ShardSettings::sync_flush`).
    pub sync_group: Option<sluice_storage::SyncGroup>,
    /// The write-buffer budget shared by this shard's partitions.
    pub write_budget: sluice_storage::WriteBudget,
    /// The incremental fetch sessions whose home is this shard.
    pub fetch_sessions: RefCell<crate::fetch_sessions::FetchSessionCache>,
    /// Which of this shard's partitions changed, in order (fetch sessions read it).
    pub changes: Rc<crate::changes::ChangeFeed>,
    /// This shard's part of fetch sessions (of any home) that have partitions here.
    pub(crate) session_views: RefCell<crate::session_views::SessionViews>,
    /// Cluster mode: this shard's Raft groups (see `cluster`).
    pub replication: Option<crate::cluster::ShardReplication>,
    /// What the request path counts (see `metrics`).
    pub metrics: Rc<crate::metrics::ShardMetrics>,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("id", &self.id)
            .field("count", &self.count)
            .field("partitions", &self.partitions.borrow().len())
            .finish()
    }
}

impl Shard {
    /// Joins the mesh (every shard must call this with a clone of the same builder), starts
    /// the loops that run jobs sent here, and opens (recovers) the partitions this shard owns.
    pub async fn start(
        mesh: MeshBuilder<Job, Full>,
        catalog: Arc<Catalog>,
        settings: ShardSettings,
    ) -> Result<Rc<Shard>, String> {
        let (senders, mut receivers) = mesh
            .join()
            .await
            .map_err(|e| format!("cannot join the shard mesh: {e}"))?;
        let settings_sync_group = settings.sync_flush.map(sluice_storage::SyncGroup::new);
        let settings_write_buffer_bytes = settings.write_buffer_bytes;
        let (id, count) = (senders.peer_id(), senders.nr_consumers());
        let (replication, driver) = match &settings.cluster {
            Some(cluster) => {
                let (replication, driver) =
                    crate::cluster::ShardReplication::start(id, cluster.clone(), catalog.clone())
                        .await?;
                (Some(replication), Some(driver))
            }
            None => (None, None),
        };
        let fetch_sessions = crate::fetch_sessions::FetchSessionCache::new(
            id,
            count,
            settings.fetch_session_slots.div_ceil(count.max(1)),
            settings.fetch_session_eviction,
        );
        let shard = Rc::new(Shard {
            id,
            count,
            fetch_sessions: RefCell::new(fetch_sessions),
            changes: Rc::new(crate::changes::ChangeFeed::default()),
            session_views: RefCell::default(),
            senders,
            image: RefCell::new(catalog.image()),
            catalog,
            settings,
            partitions: RefCell::default(),
            disk_free: Cell::new((u64::MAX, None)),
            disk_free_warned: Cell::new(u64::MAX),
            opening: Semaphore::new(1),
            closing: Cell::new(false),
            controller_lock: Semaphore::new(1),
            producer_ids: std::cell::Cell::new(None),
            placements: RefCell::default(),
            groups: crate::groups::Coordinator::default(),
            transactions: crate::transactions::TxnCoordinator::default(),
            sync_group: settings_sync_group,
            write_budget: sluice_storage::WriteBudget::new(settings_write_buffer_bytes),
            replication,
            metrics: Rc::default(),
        });
        if let Some(driver) = driver {
            glommio::spawn_local(driver.run(Rc::downgrade(&shard))).detach();
        }
        for (_, mut stream) in receivers.streams() {
            let weak = Rc::downgrade(&shard);
            glommio::spawn_local(async move {
                while let Some(job) = stream.next().await {
                    let Some(shard) = weak.upgrade() else { break };
                    glommio::spawn_local(job(shard)).detach();
                }
            })
            .detach();
        }
        let image = shard.image();
        let mut opened = 0;
        // Cluster mode: the replicas open as the controller's image assigns them (`reconcile`).
        let single_node = shard.replication.is_none();
        for topic in image.topics().filter(|_| single_node) {
            for p in 0..topic.partitions {
                if shard.owner_of(&topic.name, p) == shard.id {
                    shard
                        .partition(topic, p)
                        .await
                        .map_err(|e| format!("topic {} partition {p}: {e}", topic.name))?;
                    opened += 1;
                }
            }
        }
        if let Some(offsets) = image
            .topic(crate::groups::OFFSETS_TOPIC)
            .filter(|_| single_node)
        {
            let mut records = 0;
            for p in 0..offsets.partitions {
                if shard.owner_of(&offsets.name, p) == shard.id {
                    records += crate::groups::replay(&shard, offsets, p)
                        .await
                        .map_err(|e| format!("replaying {} partition {p}: {e}", offsets.name))?;
                }
            }
            if records > 0 {
                info!(
                    shard = shard.id,
                    records, "consumer groups and offsets restored"
                );
            }
        }
        if let Some(state) = image
            .topic(crate::transactions::TXN_STATE_TOPIC)
            .filter(|_| single_node)
        {
            let mut loaded = 0;
            for p in 0..state.partitions {
                if shard.owner_of(&state.name, p) == shard.id {
                    let replayed = crate::transactions::replay(&shard, state, p)
                        .await
                        .map_err(|e| format!("replaying {} partition {p}: {e}", state.name))?;
                    loaded += replayed.ids;
                    crate::transactions::finish_prepared(&shard, state, p, replayed);
                }
            }
            if loaded > 0 {
                info!(
                    shard = shard.id,
                    transactional_ids = loaded,
                    "transactions restored"
                );
            }
        }
        glommio::spawn_local(crate::groups::reaper(shard.clone())).detach();
        glommio::spawn_local(crate::transactions::timeouts(shard.clone())).detach();
        glommio::spawn_local(shard.clone().park_idle_tails_loop()).detach();
        info!(shard = shard.id, partitions = opened, "shard ready");
        Ok(shard)
    }

    /// The shard that owns partition `partition` of `topic`.
    pub fn owner_of(&self, topic: &str, partition: i32) -> usize {
        let hash = crc32c::crc32c(topic.as_bytes()) as usize;
        hash.wrapping_add(partition.max(0) as usize) % self.count
    }

    /// The current catalog image (refreshed with one atomic load when unchanged).
    pub fn image(&self) -> Arc<Image> {
        let version = self.catalog.version();
        let mut image = self.image.borrow_mut();
        if image.version != version {
            *image = self.catalog.image();
        }
        image.clone()
    }

    /// The controller's turn: catalog changes run one at a time while it is held (shard 0).
    pub(crate) async fn controller_turn(&self) -> glommio::sync::Permit<'_> {
        self.controller_lock
            .acquire_permit(1)
            .await
            .expect("the controller lock is never closed")
    }

    /// The broker settings in force (start-up settings with runtime overrides).
    pub fn effective(&self) -> crate::broker_configs::Effective {
        crate::broker_configs::Effective::of(&self.settings, &self.image())
    }

    /// Runs `work` on shard `target` and returns its result. Local work runs in place; remote
    /// work is sent over the mesh.
    pub async fn invoke_on<R, F, Fut>(
        self: &Rc<Self>,
        target: usize,
        work: F,
    ) -> Result<R, ShardGone>
    where
        R: Send + 'static,
        F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
        Fut: Future<Output = R> + 'static,
    {
        if target == self.id {
            return Ok(work(self.clone()).await);
        }
        let (reply, result) = futures::channel::oneshot::channel();
        let job: Job = Box::new(move |shard| {
            Box::pin(async move {
                let _ = reply.send(work(shard).await);
            })
        });
        self.send_job(target, job, result).await
    }

    /// Like [`Shard::invoke_on`], for work that may be abandoned: when the caller stops waiting
    /// (drops the returned future), the remote shard drops the work at its next poll instead of
    /// running it to the end. Only for work that changes nothing (waits, reads); appends and
    /// catalog changes always run to completion.
    pub async fn invoke_on_cancellable<R, F, Fut>(
        self: &Rc<Self>,
        target: usize,
        work: F,
    ) -> Result<R, ShardGone>
    where
        R: Send + 'static,
        F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
        Fut: Future<Output = R> + 'static,
    {
        if target == self.id {
            return Ok(work(self.clone()).await);
        }
        let (mut reply, result) = futures::channel::oneshot::channel();
        let job: Job = Box::new(move |shard| {
            Box::pin(async move {
                let work = std::pin::pin!(work(shard));
                let value = match futures::future::select(work, reply.cancellation()).await {
                    Either::Left((value, cancellation)) => {
                        drop(cancellation);
                        value
                    }
                    Either::Right(_) => return,
                };
                let _ = reply.send(value);
            })
        });
        self.send_job(target, job, result).await
    }

    /// Hands `work` to shard `target` and returns once it is on its way, with the future of its
    /// result. `work` itself (not the future it returns) runs synchronously: here at once for a
    /// local target, or on the target as it takes the job off this shard's channel. Jobs from one
    /// shard to another travel in one FIFO channel, so the target calls the `work` of successive
    /// `dispatch` calls in the order they were made, without a round trip: what `work` does
    /// synchronously (take a ticket) keeps the caller's order.
    pub async fn dispatch<R, F, Fut>(
        self: &Rc<Self>,
        target: usize,
        work: F,
    ) -> Result<LocalBoxFuture<'static, Result<R, ShardGone>>, ShardGone>
    where
        R: Send + 'static,
        F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
        Fut: Future<Output = R> + 'static,
    {
        if target == self.id {
            let running = work(self.clone());
            return Ok(Box::pin(async move { Ok(running.await) }));
        }
        let (reply, result) = futures::channel::oneshot::channel();
        let job: Job = Box::new(move |shard| {
            let running = work(shard);
            Box::pin(async move {
                let _ = reply.send(running.await);
            })
        });
        self.senders
            .send_to(target, job)
            .await
            .map_err(|_| ShardGone(target))?;
        Ok(Box::pin(async move {
            result.await.map_err(|_| ShardGone(target))
        }))
    }

    /// The turn in which produce jobs from shard `source` take their places on this shard.
    pub(crate) fn placement_turn(&self, source: usize) -> Rc<crate::turn::Turn> {
        self.placements
            .borrow_mut()
            .entry(source)
            .or_insert_with(|| Rc::new(crate::turn::Turn::new()))
            .clone()
    }

    /// Sends `job` to shard `target` and waits for the answer it sends back on `result`.
    async fn send_job<R>(
        &self,
        target: usize,
        job: Job,
        result: futures::channel::oneshot::Receiver<R>,
    ) -> Result<R, ShardGone> {
        self.senders
            .send_to(target, job)
            .await
            .map_err(|_| ShardGone(target))?;
        result.await.map_err(|_| ShardGone(target))
    }

    /// Runs `work` on every shard (concurrently) and gathers the results in shard order.
    pub async fn invoke_on_all<R, F, Fut>(self: &Rc<Self>, work: F) -> Vec<Result<R, ShardGone>>
    where
        R: Send + 'static,
        F: FnOnce(Rc<Shard>) -> Fut + Send + Clone + 'static,
        Fut: Future<Output = R> + 'static,
    {
        futures::future::join_all((0..self.count).map(|s| self.invoke_on(s, work.clone()))).await
    }

    /// The open partition `partition` of `topic`, opening (recovering) its log on first use.
    /// Must run on the owning shard.
    pub async fn partition(
        &self,
        topic: &Topic,
        partition: i32,
    ) -> Result<Rc<Partition>, sluice_storage::StorageError> {
        debug_assert_eq!(self.owner_of(&topic.name, partition), self.id);
        let key = (topic.id, partition);
        if let Some(p) = self.partitions.borrow().get(&key) {
            return Ok(p.clone());
        }
        let _permit = self
            .opening
            .acquire_permit(1)
            .await
            .expect("the opening semaphore is never closed");
        if let Some(p) = self.partitions.borrow().get(&key) {
            return Ok(p.clone());
        }
        // Checked under the permit: an open that waited for it while the stop emptied the
        // map must not open the partition again.
        if self.closing.get() {
            return Err(sluice_storage::StorageError::Closed);
        }
        // Only a partition of the current catalog is opened. A request that resolved its topic
        // before a DeleteTopics (a long-poll fetch woken by the close, a late produce) would
        // otherwise reopen the deleted partition, recreating its directory after the controller
        // removed it and holding its files open for good. The catalog is published before the
        // partitions are dropped, and the drop takes the `opening` permit, so the check and the
        // insert below cannot straddle a drop.
        let current = self
            .catalog
            .image()
            .topic_by_id(topic.id)
            .is_some_and(|t| partition < t.partitions);
        if !current {
            return Err(sluice_storage::StorageError::Closed);
        }
        let dir = topic.partition_dir(self.catalog.data_dir(), partition);
        let config = topic.log_config(&self.settings.log_defaults);
        let opened = match &self.replication {
            None => Rc::new(Partition::open(&dir, config).await?),
            Some(replication) => {
                let membership = self.membership_here(topic, partition)?;
                let (log, link) = replication
                    .open_group(key, dir.clone(), membership, config)
                    .await
                    .map_err(|e| replication_failure(&dir, e))?;
                Rc::new(Partition::replicated(log, link).await?)
            }
        };
        // No await from here to the insert: a replica's producer state covers what committed
        // up to the end of its rebuild, and entries committing later are applied to it only
        // once it is in the map (see `Partition::over_log`).
        if let Some(group) = &self.sync_group {
            opened.log().join_sync_group(group);
        }
        opened.log().join_write_budget(&self.write_budget);
        opened.attach_changes(self.changes.clone(), key);
        self.partitions.borrow_mut().insert(key, opened.clone());
        // Sessions that looked at this partition before it was open saw nothing here.
        self.changes.push(key);
        Ok(opened)
    }

    /// This node's id in cluster mode; 0 elsewhere (unused there).
    pub fn node_id(&self) -> i32 {
        self.replication.as_ref().map_or(0, |r| r.settings.node_id)
    }

    /// Cluster mode: the nodes holding partition `partition` of `topic` in `image`, preferred
    /// leader first; `None` on a single node (or for a partition the image lacks).
    pub fn replicas_of<'a>(
        &self,
        image: &'a Image,
        topic: &str,
        partition: i32,
    ) -> Option<&'a [i32]> {
        image
            .cluster
            .as_ref()?
            .topics
            .get(topic)?
            .replicas
            .get(usize::try_from(partition).ok()?)
            .map(Vec::as_slice)
    }

    /// Cluster mode: how this node's replica of partition `partition` starts if it is new
    /// (see `reassignment::membership_for`); `Closed` when this node holds none, or joins a
    /// moving partition whose leader has not said yet where it starts (the caller's request
    /// goes to a replica).
    fn membership_here(
        &self,
        topic: &Topic,
        partition: i32,
    ) -> Result<sluice_replication::partition::Membership, sluice_storage::StorageError> {
        let image = self.catalog.image();
        let replicas = self
            .replicas_of(&image, &topic.name, partition)
            .filter(|replicas| replicas.contains(&self.node_id()))
            .ok_or(sluice_storage::StorageError::Closed)?;
        let moving = image
            .cluster
            .as_ref()
            .and_then(|c| c.topics.get(&topic.name))
            .and_then(|t| t.reassignments.get(&partition));
        crate::reassignment::membership_for(self.node_id(), replicas, moving)
            .map_err(|_| sluice_storage::StorageError::Closed)
    }

    /// Whether the data directory's filesystem has at least `disk_free_bytes_min` free; the
    /// reason when not. Looked up at most every `DISK_CHECK_INTERVAL` (one statvfs).
    pub fn disk_has_room(&self) -> Result<(), String> {
        let min = self.settings.disk_free_bytes_min;
        if min == 0 {
            return Ok(());
        }
        let now = std::time::Instant::now();
        let (free, checked) = self.disk_free.get();
        let free = match checked {
            Some(at) if now.duration_since(at) < DISK_CHECK_INTERVAL => free,
            _ => {
                let free = sluice_storage::io::disk_space(self.catalog.data_dir())
                    .map_or(u64::MAX, |(_, usable)| usable);
                self.disk_free.set((free, Some(now)));
                if free < min && free < self.disk_free_warned.get() {
                    warn!(free_bytes = free, disk_free_bytes_min = min,
                        "the data directory's disk is nearly full: produce is refused until space comes back");
                }
                self.disk_free_warned
                    .set(if free < min { free } else { u64::MAX });
                free
            }
        };
        if free < min {
            return Err(format!(
                "the broker's disk has {free} bytes free, below disk_free_bytes_min ({min}): \
                 produce is refused until space comes back (delete records or topics, or add space)"
            ));
        }
        Ok(())
    }

    /// Every partition this shard has open.
    pub fn open_partitions(&self) -> Vec<(PartitionKey, Rc<Partition>)> {
        self.partitions
            .borrow()
            .iter()
            .map(|(k, p)| (*k, p.clone()))
            .collect()
    }

    /// The partition if this shard has it open.
    pub fn open_partition(&self, key: PartitionKey) -> Option<Rc<Partition>> {
        self.partitions.borrow().get(&key).cloned()
    }

    /// Closes and forgets every partition of topic `id` on this shard, then removes `dir`
    /// entries it owned. Used by topic deletion.
    pub(crate) async fn drop_topic_partitions(&self, id: Uuid) {
        self.drop_partitions(|key| key.0 == id).await;
    }

    /// Closes and forgets the open partitions `which` picks (a deleted topic's, or replicas
    /// a reassignment moved away from this node), in cluster mode their replicas too.
    pub(crate) async fn drop_partitions(&self, which: impl Fn(&PartitionKey) -> bool) {
        // An open in progress finishes (and lands in the map) before the drop looks; opens that
        // start later see the topic gone from the catalog, or this node gone from the
        // partition's replicas (see `partition`).
        let opening = self
            .opening
            .acquire_permit(1)
            .await
            .expect("the opening semaphore is never closed");
        let dropped: Vec<(PartitionKey, Rc<Partition>)> = {
            let mut map = self.partitions.borrow_mut();
            let keys: Vec<PartitionKey> = map.keys().filter(|k| which(k)).copied().collect();
            keys.into_iter()
                .filter_map(|k| map.remove(&k).map(|p| (k, p)))
                .collect()
        };
        drop(opening);
        for ((id, index), partition) in dropped {
            if let Err(e) = partition.close().await {
                warn!(topic_id = %id, partition = index, error = %e, "closing a dropped partition");
            }
            if let Some(replication) = &self.replication {
                if let Err(e) = replication.close_group((id, index)).await {
                    warn!(topic_id = %id, partition = index, error = %e, "closing a dropped replica");
                }
            }
        }
    }

    /// Applies `topic`'s (changed) configs to its partitions open on this shard.
    pub(crate) fn reconfigure_topic(&self, topic: &Topic) {
        self.reconfigure_topics(std::slice::from_ref(topic));
    }

    /// Applies each of `topics`' (changed) configs to its partitions open on this shard, in
    /// one pass over them.
    pub(crate) fn reconfigure_topics(&self, topics: &[Topic]) {
        if topics.is_empty() {
            return;
        }
        let configs: HashMap<Uuid, LogConfig> = topics
            .iter()
            .map(|t| (t.id, t.log_config(&self.settings.log_defaults)))
            .collect();
        for (key, partition) in self.partitions.borrow().iter() {
            if let Some(config) = configs.get(&key.0) {
                if let Err(e) = partition.log().update_config(config.clone()) {
                    warn!(dir = %partition.dir().display(), error = %e, "new topic configs refused");
                }
            }
        }
    }

    /// Closes every partition this shard owns (flushing what is buffered), and in cluster
    /// mode every Raft group. Shutdown.
    pub async fn close_all(&self) {
        self.closing.set(true);
        if let Some(replication) = &self.replication {
            // A clean stop hands leaderships over first, so clients see retriable errors only.
            replication.hand_off().await;
        }
        // An open under way finishes (and is closed below) before the map is emptied; later
        // ones are refused (`closing`), so no partition is opened again while it closes.
        let opening = self
            .opening
            .acquire_permit(1)
            .await
            .expect("the opening semaphore is never closed");
        let all: Vec<Rc<Partition>> = self
            .partitions
            .borrow_mut()
            .drain()
            .map(|(_, p)| p)
            .collect();
        drop(opening);
        info!(
            shard = self.id,
            partitions = all.len(),
            "closing the partitions"
        );
        // Concurrently, so that their syncs share durability rounds and filesystem journal
        // commits: one after another, 10,000 partitions took 15.7 s to close (6.8 s now,
        // docs/benchmarks.md).
        futures::stream::iter(all)
            .for_each_concurrent(PARTITIONS_CLOSED_AT_ONCE, |partition| async move {
                if let Err(e) = partition.close().await {
                    warn!(dir = %partition.dir().display(), error = %e, "closing a partition");
                }
            })
            .await;
        if let Some(replication) = &self.replication {
            replication.shutdown().await;
        }
    }

    /// Frees the write buffers of partitions idle for [`IDLE_TAIL_AFTER`], forever, once a
    /// second: memory then follows the partitions being written, not all partitions ever
    /// written (issue 11: ≤ 16 KiB per idle partition).
    async fn park_idle_tails_loop(self: Rc<Self>) {
        loop {
            glommio::timer::sleep(std::time::Duration::from_secs(1)).await;
            let all: Vec<Rc<Partition>> = self.partitions.borrow().values().cloned().collect();
            for partition in all {
                partition.log().park_if_idle(IDLE_TAIL_AFTER);
            }
        }
    }

    /// Applies retention to every partition of this shard, forever, every
    /// `retention_check_ms`. Spawned once per shard.
    pub async fn retention_loop(self: Rc<Self>) {
        let period = std::time::Duration::from_millis(self.settings.retention_check_ms.max(1));
        loop {
            glommio::timer::sleep(period).await;
            let all: Vec<Rc<Partition>> = self.partitions.borrow().values().cloned().collect();
            let now = sluice_storage::types::now_ms();
            for partition in all {
                if let Some(link) = partition.replica() {
                    // Replicated: the leader names retention's cut and every replica makes it
                    // as it applies the entry (a cut on one replica alone would strand a
                    // follower catching up from it); followers wait for it.
                    if let Some(start) = link
                        .is_leader()
                        .then(|| partition.log().retention_point(now))
                        .flatten()
                        .filter(|start| *start <= partition.high_watermark())
                    {
                        info!(dir = %partition.dir().display(), log_start = %start,
                            "retention: proposing the replicas' new log start");
                        drop(link.propose_log_start(start));
                    }
                    continue;
                }
                match partition.log().enforce_retention(now).await {
                    Ok(outcome) if outcome.segments_deleted > 0 => {
                        partition.note_changed();
                        info!(
                            dir = %partition.dir().display(),
                            segments = outcome.segments_deleted,
                            bytes = outcome.bytes_deleted,
                            log_start = %outcome.log_start,
                            "retention deleted segments"
                        )
                    }
                    Ok(_) => {}
                    Err(e) => warn!(dir = %partition.dir().display(), error = %e, "retention"),
                }
            }
        }
    }
}

/// Removes a directory tree without blocking the shard's reactor (on glommio's blocking pool).
pub(crate) async fn remove_dir_all(dir: PathBuf) -> std::io::Result<()> {
    glommio::executor()
        .spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        })
        .await
}

/// A replication failure opening a partition, as the storage error the request path reports.
fn replication_failure(
    dir: &std::path::Path,
    e: sluice_replication::ReplicationError,
) -> sluice_storage::StorageError {
    match e {
        sluice_replication::ReplicationError::Storage(e) => e,
        other => sluice_storage::StorageError::Io {
            path: dir.display().to_string(),
            source: std::io::Error::other(other.to_string()),
        },
    }
}
