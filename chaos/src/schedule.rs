//! The fault schedule: derived from the seed alone, so a seed replays the same faults at the
//! same moments against the same nodes.
//!
//! One fault at a time: it starts after a quiet gap, holds for a while, and is healed before
//! the next one starts (a 3-node cluster then always keeps a majority between faults, and the
//! run tests recovery from each fault rather than from a pile of them). Nothing starts in the
//! last second of the run; the harness heals whatever is still in force at the end.
//!
//! The generator is ChaCha8, whose output for a seed is fixed by its specification (rand's
//! `StdRng` may change between versions).

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// A kind of fault the harness can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// SIGKILL the node, restart it when the fault ends.
    Kill,
    /// SIGSTOP the node, SIGCONT it when the fault ends.
    Pause,
    /// Fill the node's own filesystem, free it when the fault ends.
    DiskFull,
    /// Cut the node off from every other node (clients still reach it all): a minority of one,
    /// a lone leader when it leads.
    Partition,
    /// Cut the node off from the next node only (by id, wrapping); the third node still reaches
    /// both: a bridge.
    Bridge,
    /// SIGKILL whichever node is the controller (the controller Raft group's leader), restart
    /// it when the fault ends.
    KillController,
    /// Every data write of the node fails with EIO (a storage fault point); the node is then
    /// restarted, as an operator restarts a broker whose log went offline.
    WriteEio,
    /// Every fdatasync of a segment fails with EIO; restarted as for `WriteEio`.
    FdatasyncEio,
    /// Every fallocate (the space reserved ahead of appends) fails with ENOSPC; healed by
    /// disarming alone: writes must resume by themselves.
    FallocateEnospc,
    /// Every fdatasync of a segment takes 100 ms longer (a slow device); healed by disarming.
    SlowDisk,
    /// Every byte between the node and the others takes 100 ms longer each way (through the
    /// link proxies).
    SlowLink,
    /// The node's links to the others reset a connection on 2 % of the chunks they carry (a
    /// lossy network, as a TCP stream can show it).
    LossyLink,
    /// The node's wall clock jumps an hour (ahead when the fault starts at an even
    /// millisecond, behind otherwise) and back when it ends (libfaketime).
    ClockJump,
    /// Every partition of the workload's topic the node holds a replica of moves off it
    /// (AlterPartitionReassignments to its list without the node: a Raft joint configuration
    /// change, the node handing its leaderships over first), and back when the fault ends
    /// (the node rejoins as a learner, catches up and becomes a voter again).
    Move,
    /// SIGKILL whichever node coordinates the first transactional producer's transactions (the
    /// leader of its `__transaction_state` partition, as FindCoordinator names it), restart it
    /// when the fault ends. Needs transactional producers.
    KillCoordinator,
    /// The node stops voting in the controller group (RemoveRaftVoter: a voter leading it
    /// hands the leadership over first) and votes again when the fault ends (AddRaftVoter: it
    /// catches up as a learner, then is promoted).
    RemoveVoter,
}

impl FaultKind {
    /// Whether the fault works on the links between nodes (through the link proxies).
    pub fn cuts_links(self) -> bool {
        matches!(
            self,
            FaultKind::Partition | FaultKind::Bridge | FaultKind::SlowLink | FaultKind::LossyLink
        )
    }

    /// Whether the fault arms the node's storage fault points.
    pub fn uses_fault_points(self) -> bool {
        self.fault_points().is_some()
    }

    /// What the node's fault-point control file says while the fault holds.
    pub fn fault_points(self) -> Option<&'static str> {
        match self {
            FaultKind::WriteEio => Some("storage::data_write=return(eio)"),
            FaultKind::FdatasyncEio => Some("storage::fdatasync=return(eio)"),
            FaultKind::FallocateEnospc => Some("storage::fallocate=return(enospc)"),
            FaultKind::SlowDisk => Some("storage::fdatasync=return(stall:100)"),
            _ => None,
        }
    }

    pub const ALL: [FaultKind; 16] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::DiskFull,
        FaultKind::Partition,
        FaultKind::Bridge,
        FaultKind::KillController,
        FaultKind::WriteEio,
        FaultKind::FdatasyncEio,
        FaultKind::FallocateEnospc,
        FaultKind::SlowDisk,
        FaultKind::SlowLink,
        FaultKind::LossyLink,
        FaultKind::ClockJump,
        FaultKind::Move,
        FaultKind::RemoveVoter,
        FaultKind::KillCoordinator,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::DiskFull => "disk_full",
            FaultKind::Partition => "partition",
            FaultKind::Bridge => "bridge",
            FaultKind::KillController => "kill_controller",
            FaultKind::WriteEio => "write_eio",
            FaultKind::FdatasyncEio => "fdatasync_eio",
            FaultKind::FallocateEnospc => "fallocate_enospc",
            FaultKind::SlowDisk => "slow_disk",
            FaultKind::SlowLink => "slow_link",
            FaultKind::LossyLink => "lossy_link",
            FaultKind::ClockJump => "clock_jump",
            FaultKind::Move => "move",
            FaultKind::RemoveVoter => "remove_voter",
            FaultKind::KillCoordinator => "kill_coordinator",
        }
    }

    pub fn parse(name: &str) -> Result<FaultKind, String> {
        FaultKind::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown fault {name:?} (known: {})", known.join(", "))
            })
    }
}

/// Which node a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Node(usize),
    /// Whichever node leads this partition of the workload's topic when the fault starts
    /// (the interesting node to kill: the one producers and consumers talk to).
    LeaderOf(i32),
    /// Whichever node leads the controller Raft group when the fault starts.
    Controller,
    /// Whichever node coordinates the workload's first transactional id when the fault starts.
    TransactionCoordinator,
}

/// One planned fault.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Planned {
    pub kind: FaultKind,
    pub target: Target,
    /// From the start of the run.
    pub at_ms: u64,
    pub hold_ms: u64,
}

/// Gap before each fault.
const GAP_MS: (u64, u64) = (1_000, 3_000);
/// How long a fault holds.
const HOLD_MS: (u64, u64) = (300, 3_000);

/// The faults of a run of `duration` over `nodes` nodes whose topic has `partitions`
/// partitions, drawn from `kinds`. On several nodes, half the faults hit a partition's leader.
pub fn plan(
    seed: u64,
    kinds: &[FaultKind],
    nodes: usize,
    partitions: i32,
    duration: Duration,
) -> Vec<Planned> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let end = duration.as_millis() as u64;
    let mut planned = Vec::new();
    if kinds.is_empty() || nodes == 0 {
        return planned;
    }
    let mut now = 0;
    loop {
        let at = now + rng.random_range(GAP_MS.0..=GAP_MS.1);
        let hold = rng.random_range(HOLD_MS.0..=HOLD_MS.1);
        let kind = kinds[rng.random_range(0..kinds.len())];
        let mut target = if nodes > 1 && partitions > 0 && rng.random_bool(0.5) {
            Target::LeaderOf(rng.random_range(0..partitions))
        } else {
            Target::Node(rng.random_range(0..nodes))
        };
        // (The target is drawn all the same: the draws that follow stay where they were.)
        if kind == FaultKind::KillController {
            target = Target::Controller;
        }
        if kind == FaultKind::KillCoordinator {
            target = Target::TransactionCoordinator;
        }
        if at + 1_000 > end {
            return planned;
        }
        planned.push(Planned {
            kind,
            target,
            at_ms: at,
            hold_ms: hold.min(end - at),
        });
        now = at + hold;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_schedule_and_another_seed_another() {
        let kinds = [FaultKind::Kill, FaultKind::Pause];
        let a = plan(7, &kinds, 3, 3, Duration::from_secs(60));
        assert_eq!(a, plan(7, &kinds, 3, 3, Duration::from_secs(60)));
        assert_ne!(a, plan(8, &kinds, 3, 3, Duration::from_secs(60)));
        assert!(a.len() >= 10, "{} faults in 60 s", a.len());
        assert!(a.iter().any(|p| p.kind == FaultKind::Kill));
        assert!(a.iter().any(|p| p.kind == FaultKind::Pause));
        assert!(a.iter().any(|p| matches!(p.target, Target::LeaderOf(_))));
        assert!(a.iter().any(|p| matches!(p.target, Target::Node(_))));
    }

    #[test]
    fn faults_never_overlap_and_end_within_the_run() {
        let planned = plan(3, &[FaultKind::Kill], 3, 3, Duration::from_secs(30));
        for pair in planned.windows(2) {
            assert!(pair[0].at_ms + pair[0].hold_ms < pair[1].at_ms, "{pair:?}");
        }
        for p in &planned {
            assert!(
                p.at_ms + 1_000 <= 30_000 && p.at_ms + p.hold_ms <= 30_000,
                "{p:?}"
            );
            match p.target {
                Target::Node(node) => assert!(node < 3),
                Target::LeaderOf(partition) => assert!(partition < 3),
                Target::Controller => panic!("only kill_controller targets the controller"),
                Target::TransactionCoordinator => {
                    panic!("only kill_coordinator targets the coordinator")
                }
            }
        }
    }

    #[test]
    fn controller_kills_hit_the_controller() {
        let with_controller = plan(
            11,
            &[FaultKind::Kill, FaultKind::Pause, FaultKind::KillController],
            3,
            3,
            Duration::from_secs(60),
        );
        assert!(with_controller
            .iter()
            .any(|p| p.kind == FaultKind::KillController));
        for p in &with_controller {
            assert_eq!(
                p.kind == FaultKind::KillController,
                p.target == Target::Controller,
                "{p:?}"
            );
        }
    }

    #[test]
    fn coordinator_kills_hit_the_coordinator() {
        let planned = plan(
            4,
            &[FaultKind::Kill, FaultKind::KillCoordinator],
            3,
            3,
            Duration::from_secs(60),
        );
        assert!(planned.iter().any(|p| p.kind == FaultKind::KillCoordinator));
        for p in &planned {
            assert_eq!(
                p.kind == FaultKind::KillCoordinator,
                p.target == Target::TransactionCoordinator,
                "{p:?}"
            );
        }
    }

    #[test]
    fn a_single_node_is_always_the_target() {
        for p in plan(
            5,
            &[FaultKind::Kill, FaultKind::Pause],
            1,
            3,
            Duration::from_secs(60),
        ) {
            assert_eq!(p.target, Target::Node(0));
        }
    }

    #[test]
    fn fault_names_parse_back() {
        for kind in FaultKind::ALL {
            assert_eq!(FaultKind::parse(kind.name()), Ok(kind));
        }
    }

    #[test]
    fn unknown_faults_are_refused_by_name() {
        let e = FaultKind::parse("flood").unwrap_err();
        assert!(e.contains("flood"), "{e}");
    }
}
