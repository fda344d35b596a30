//! One node's replica of the controller group:
//! the cluster-metadata partition, replicated by Raft among the seed nodes, and the
//! [`ClusterImage`] built by applying its commands in log order.
//!
//! The image's version is the offset of the last command applied, identical on every replica
//! (the log is byte-identical). On open, the image is rebuilt by reading the log up to the high
//! watermark; afterwards each `run_ready` applies the commands that became committed. A command
//! is proposed on the leader; its outcome (applied, or refused by the image) is known once it is
//! committed, and is the same on every replica.
//!
//! **Snapshots.** The metadata log would grow forever, so once the commands applied since the
//! last snapshot pass a size, the image (JSON) is recorded as the group's state snapshot and the
//! log is cut below it ([`RaftPartition::compact_with_state`], Kafka's metadata snapshots). A
//! reopened replica starts from that image and applies the log after it; a follower whose log
//! ends below the leader's cut gets the image in raft-rs's snapshot and starts over from it.
//!
//! Invariant: the image holds exactly the committed commands, in order: never one above the
//! high watermark; the commands below `next_offset` are in it, and are never applied twice (a
//! state snapshot may reach past the entries a replica goes on to receive).

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use sluice_replication::partition::{
    for_each_batch, CommittedEntry, HardStateHome, Outbox, RaftPartition, StateSnapshot,
};
use sluice_replication::{ReplicaConfig, ReplicationError, Role};
use sluice_storage::batch::control_record;
use sluice_storage::{LogConfig, Offset};

use crate::cluster_metadata::{
    decode_command, encode_command, ClusterImage, MetadataCommand, Refused,
};

/// Why the controller could not go on.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    #[error("cluster metadata log at offset {offset}: {reason}")]
    BadCommand { offset: i64, reason: String },
    #[error("controller snapshot (through index {index}): {reason}")]
    BadSnapshot { index: u64, reason: String },
}

/// One node's controller replica.
pub struct ControllerReplica {
    partition: RaftPartition,
    state: ControllerState,
}

/// The state machine of the controller group: the image and the outcomes of the commands the
/// leader proposed. Whoever drives the group's partition feeds it the committed entries.
#[derive(Debug, Default)]
pub struct ControllerState {
    image: ClusterImage,
    /// Commands below this offset are in the image (from a snapshot or applied).
    next_offset: Offset,
    /// The last Raft entry applied (its index; the image is the state machine through it).
    applied_index: u64,
    /// Bytes of commands applied since the image was last recorded as a snapshot.
    bytes_since_snapshot: u64,
    /// Outcomes of committed commands, by Raft index, until taken (recorded on the leader).
    outcomes: BTreeMap<u64, Result<(), Refused>>,
    /// Outcomes of commands this node forwarded to the leader, by request, until taken.
    forwarded_outcomes: BTreeMap<u64, Result<(), Refused>>,
}

impl ControllerState {
    /// The image of the commands `partition`'s log holds up to its high watermark: its state
    /// snapshot, then the commands after it.
    pub async fn rebuild(partition: &RaftPartition) -> Result<ControllerState, ControllerError> {
        let mut state = ControllerState::default();
        if let Some(snapshot) = partition.state_snapshot() {
            state.restore(snapshot)?;
        }
        let (start, high_watermark) = (
            partition.log().log_start_offset().max(state.next_offset),
            partition.high_watermark(),
        );
        let mut bytes = 0u64;
        let next_offset = &mut state.next_offset;
        let image = &mut state.image;
        for_each_batch(
            partition.log(),
            start,
            high_watermark,
            usize::MAX,
            |info, batch| {
                if info.base_offset < *next_offset {
                    return Ok(true); // in the snapshot
                }
                if control_record(&batch).is_none() {
                    let command =
                        decode_command(&batch).map_err(|reason| ControllerError::BadCommand {
                            offset: info.base_offset.0,
                            reason,
                        })?;
                    let _ = image.apply(info.base_offset.0 as u64, &command);
                    bytes += batch.len() as u64;
                }
                *next_offset = info.last_offset().plus(1);
                Ok::<_, ControllerError>(true)
            },
        )
        .await?;
        state.bytes_since_snapshot = bytes;
        state.applied_index = partition.applied_index();
        Ok(state)
    }

    /// Replaces the image by a snapshot's (recorded here, or a leader's this replica restored).
    pub fn restore(&mut self, snapshot: &StateSnapshot) -> Result<(), ControllerError> {
        self.image =
            serde_json::from_slice(&snapshot.data).map_err(|e| ControllerError::BadSnapshot {
                index: snapshot.below.index,
                reason: e.to_string(),
            })?;
        self.next_offset = snapshot.below.end_offset;
        self.applied_index = snapshot.below.index;
        self.bytes_since_snapshot = 0;
        Ok(())
    }

    /// Records the image as `partition`'s state snapshot and cuts its log below it, once at
    /// least `every_bytes` of commands were applied since the last one. True if it did.
    pub async fn snapshot_if_due(
        &mut self,
        partition: &mut RaftPartition,
        every_bytes: u64,
    ) -> Result<bool, ControllerError> {
        if self.bytes_since_snapshot < every_bytes || self.applied_index == 0 {
            return Ok(false);
        }
        let data: Bytes = serde_json::to_vec(&self.image)
            .expect("the image serializes")
            .into();
        let taken = partition
            .compact_with_state(self.applied_index, data)
            .await?;
        if taken {
            self.bytes_since_snapshot = 0;
        }
        Ok(taken)
    }

    /// After `partition` restored a leader's snapshot (its log started over): the image is
    /// the snapshot's.
    pub fn restored(&mut self, partition: &RaftPartition) -> Result<(), ControllerError> {
        match partition.state_snapshot() {
            Some(snapshot) => self.restore(snapshot),
            None => Err(ControllerError::BadSnapshot {
                index: partition.applied_index(),
                reason: "a leader's snapshot without the image".into(),
            }),
        }
    }

    pub fn image(&self) -> &ClusterImage {
        &self.image
    }

    /// Applies newly committed entries in order; with `leader`, keeps their outcomes for
    /// [`take_outcome`](Self::take_outcome), and those of commands node `me` forwarded for
    /// [`take_forwarded_outcome`](Self::take_forwarded_outcome).
    pub fn apply(
        &mut self,
        committed: Vec<CommittedEntry>,
        leader: bool,
        me: i32,
    ) -> Result<(), ControllerError> {
        for entry in committed {
            self.applied_index = self.applied_index.max(entry.index);
            if entry.data.is_empty() || entry.base_offset < self.next_offset {
                continue; // Raft's own entry, or a command the image has from a snapshot
            }
            self.next_offset = entry.end_offset;
            self.bytes_since_snapshot += entry.data.len() as u64;
            let offset: Offset = entry.base_offset;
            let command =
                decode_command(&entry.data).map_err(|reason| ControllerError::BadCommand {
                    offset: offset.0,
                    reason,
                })?;
            let outcome = self.image.apply(offset.0 as u64, &command);
            if let MetadataCommand::Forwarded {
                origin, request, ..
            } = &command
            {
                if *origin == me {
                    self.forwarded_outcomes.insert(*request, outcome.clone());
                }
            }
            if leader {
                self.outcomes.insert(entry.index, outcome);
            }
        }
        Ok(())
    }

    /// The outcome of the command committed at `index`, once.
    pub fn take_outcome(&mut self, index: u64) -> Option<Result<(), Refused>> {
        self.outcomes.remove(&index)
    }

    /// The outcomes of the commands this node forwarded that committed since the last call,
    /// by request.
    pub fn take_forwarded_outcomes(&mut self) -> BTreeMap<u64, Result<(), Refused>> {
        std::mem::take(&mut self.forwarded_outcomes)
    }
}

impl ControllerReplica {
    /// Opens the metadata partition in `dir` as replica `node_id` of `voters`, and rebuilds the
    /// image from its committed commands.
    pub async fn open(
        dir: impl AsRef<Path>,
        node_id: u64,
        voters: &[u64],
        config: ReplicaConfig,
    ) -> Result<ControllerReplica, ControllerError> {
        let log_config = LogConfig {
            // Metadata is small: small segments and reservations.
            segment_bytes_max: 16 << 20,
            preallocate_bytes: 1 << 20,
            ..LogConfig::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let partition = RaftPartition::open(
            dir,
            node_id,
            voters,
            config,
            log_config,
            HardStateHome::OwnFile,
            &logger,
        )
        .await?;
        let state = ControllerState::rebuild(&partition).await?;
        Ok(ControllerReplica { partition, state })
    }

    pub fn image(&self) -> &ClusterImage {
        self.state.image()
    }

    pub fn is_leader(&self) -> bool {
        self.partition.replica().role() == Role::Leader
    }

    /// The controller leader this replica knows of (0: none).
    pub fn leader_id(&self) -> u64 {
        self.partition.replica().leader_id()
    }

    pub fn partition(&mut self) -> &mut RaftPartition {
        &mut self.partition
    }

    /// Proposes a command (on the leader); returns its Raft index, whose outcome
    /// `take_outcome` gives once committed.
    pub fn propose(&mut self, command: &MetadataCommand) -> Result<u64, ControllerError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        Ok(self.partition.propose(encode_command(command, now))?)
    }

    /// Closes cleanly: a reopened replica's image is then everything it knew committed.
    pub async fn close(self) -> Result<(), ControllerError> {
        Ok(self.partition.close().await?)
    }

    /// The outcome of the command committed at `index`, once.
    pub fn take_outcome(&mut self, index: u64) -> Option<Result<(), Refused>> {
        self.state.take_outcome(index)
    }

    /// Runs the partition's ready work and applies what became committed (after the leader's
    /// snapshot, if this replica restored one).
    pub async fn run_ready(&mut self) -> Result<Outbox, ControllerError> {
        let mut outbox = self.partition.run_ready().await?;
        if outbox.started_over_at.is_some() {
            self.state.restored(&self.partition)?;
        }
        let leader = self.is_leader();
        self.state
            .apply(std::mem::take(&mut outbox.committed), leader, -1)?;
        Ok(outbox)
    }

    /// Records the image as the group's snapshot and cuts the log below it, once at least
    /// `every_bytes` of commands were applied since the last one. True if it did.
    pub async fn snapshot_if_due(&mut self, every_bytes: u64) -> Result<bool, ControllerError> {
        self.state
            .snapshot_if_due(&mut self.partition, every_bytes)
            .await
    }
}
