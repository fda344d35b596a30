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
//! Invariant: the image holds exactly the committed commands, in order: never one above the
//! high watermark.

use std::collections::BTreeMap;
use std::path::Path;

use sluice_replication::partition::{
    for_each_batch, CommittedEntry, HardStateHome, Outbox, RaftPartition,
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
    /// Outcomes of committed commands, by Raft index, until taken (recorded on the leader).
    outcomes: BTreeMap<u64, Result<(), Refused>>,
    /// Outcomes of commands this node forwarded to the leader, by request, until taken.
    forwarded_outcomes: BTreeMap<u64, Result<(), Refused>>,
}

impl ControllerState {
    /// The image of the commands `partition`'s log holds up to its high watermark.
    pub async fn rebuild(partition: &RaftPartition) -> Result<ControllerState, ControllerError> {
        let mut image = ClusterImage::default();
        let (start, high_watermark) = (
            partition.log().log_start_offset(),
            partition.high_watermark(),
        );
        for_each_batch(
            partition.log(),
            start,
            high_watermark,
            usize::MAX,
            |info, batch| {
                if control_record(&batch).is_none() {
                    let command =
                        decode_command(&batch).map_err(|reason| ControllerError::BadCommand {
                            offset: info.base_offset.0,
                            reason,
                        })?;
                    let _ = image.apply(info.base_offset.0 as u64, &command);
                }
                Ok::<_, ControllerError>(true)
            },
        )
        .await?;
        Ok(ControllerState {
            image,
            outcomes: BTreeMap::new(),
            forwarded_outcomes: BTreeMap::new(),
        })
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
            if entry.data.is_empty() {
                continue;
            }
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

    /// Runs the partition's ready work and applies what became committed.
    pub async fn run_ready(&mut self) -> Result<Outbox, ControllerError> {
        let mut outbox = self.partition.run_ready().await?;
        let leader = self.is_leader();
        self.state
            .apply(std::mem::take(&mut outbox.committed), leader, -1)?;
        Ok(outbox)
    }
}
