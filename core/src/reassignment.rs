//! Moving a partition to other replicas (AlterPartitionReassignments), as its Raft group
//! carries it out: what the partition's leader does next, and where a joining replica starts.
//!
//! The controller's image holds the move ([`Reassignment`]); the leader of the partition's
//! group looks at it and at its group's configuration every [`CHECK_EVERY`] and takes one step
//! at a time, each a Raft configuration change (one in flight at most, raft-rs's rule):
//! 1. the target's new replicas join as **learners** (they receive the log, they do not vote);
//! 2. the leader tells the controller where they start ([`JoinPoint`]: its configuration and
//!    the index of that change), and only then does a joining node open its replica, with
//!    exactly that configuration, so it applies the later changes as every replica does;
//! 3. once every learner answers, holds the change that added it and is within
//!    [`CAUGHT_UP_ENTRIES`] of the leader's log, one **joint** change (Raft's joint consensus, left explicitly) makes the target the incoming voters;
//! 4. a leader that is not among the incoming voters hands its leadership to the one that
//!    holds the most of the log; a leader among them leaves the joint configuration;
//! 5. with the target as the voters and no learner left, the leader reports the move done
//!    ([`MetadataCommand::CompleteReassignment`]); the image then lists the target only, and
//!    the nodes that left close their replica and delete it.
//!
//! Invariants: a node's replica is deleted only once the image (caught up with the
//! controller) no longer lists it, which happens only after the group's voters are exactly
//! the target; while a move is under way every node that may be in the group's configuration
//! stays listed (the image's list only grows until the move is done). Committed entries never
//! depend on a learner: Raft counts voters only.

use std::time::Duration;

use sluice_replication::partition::Membership;
use sluice_replication::{
    ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState,
};
use uuid::Uuid;

use crate::cluster::raft_id;
use crate::cluster_metadata::{JoinPoint, MetadataCommand, Reassignment};

/// How often a leader looks at the moves of the partitions it leads.
pub const CHECK_EVERY: Duration = Duration::from_millis(100);
/// How long a leader waits before telling the controller the same thing again (its command
/// went through another node and may have been lost).
pub const REPORT_AGAIN_AFTER: Duration = Duration::from_secs(1);
/// A learner this close to the leader's last index is caught up enough to become a voter
/// (the joint change does not wait for a partition that never stops taking appends).
pub const CAUGHT_UP_ENTRIES: u64 = 64;

/// A leader's view of its group, as far as a move needs it.
#[derive(Debug, Clone)]
pub struct GroupView {
    /// This replica's Raft id.
    pub me: u64,
    pub conf: ConfState,
    /// The index of the change `conf` reflects.
    pub conf_index: u64,
    /// A configuration change is in the log, not applied yet.
    pub pending: bool,
    /// Every replica's Raft id, the highest index it is known to hold, and whether it
    /// answered recently.
    pub matched: Vec<(u64, u64, bool)>,
    pub last_index: u64,
}

/// What the leader does next for a move.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nothing now (a change in flight, learners catching up).
    Wait,
    Propose(ConfChangeV2),
    /// Hand the leadership to this Raft id (a voter of the incoming configuration).
    TransferLeader(u64),
    /// Tell the controller.
    Report(MetadataCommand),
}

fn change(kind: ConfChangeType, node: u64) -> ConfChangeSingle {
    let mut single = ConfChangeSingle::default();
    single.set_change_type(kind);
    single.node_id = node;
    single
}

/// A simple change (no joint configuration): learners added or removed.
fn simple(changes: Vec<ConfChangeSingle>) -> ConfChangeV2 {
    let mut change = ConfChangeV2::default();
    change.set_transition(ConfChangeTransition::Auto);
    change.set_changes(changes.into());
    change
}

/// The change adding `nodes` (Raft ids) as learners.
pub fn add_learners(nodes: &[u64]) -> ConfChangeV2 {
    simple(
        nodes
            .iter()
            .map(|node| change(ConfChangeType::AddLearnerNode, *node))
            .collect(),
    )
}

/// The change making learner `node` (a Raft id) a voter.
pub fn promote_learner(node: u64) -> ConfChangeV2 {
    simple(vec![change(ConfChangeType::AddNode, node)])
}

/// The change removing `nodes` (Raft ids) from the group.
pub fn remove_nodes(nodes: &[u64]) -> ConfChangeV2 {
    simple(
        nodes
            .iter()
            .map(|node| change(ConfChangeType::RemoveNode, *node))
            .collect(),
    )
}

/// The next step of the move of partition `partition` of topic `id` to `moving.target`.
pub fn next_step(view: &GroupView, id: Uuid, partition: i32, moving: &Reassignment) -> Step {
    if view.pending {
        return Step::Wait;
    }
    let target: Vec<u64> = moving.target.iter().map(|n| raft_id(*n)).collect();
    let conf = &view.conf;
    if !conf.voters_outgoing.is_empty() {
        // Joint: only a leader the incoming configuration keeps may leave it.
        if conf.voters.contains(&view.me) {
            return Step::Propose(ConfChangeV2::default());
        }
        let held = |id: &u64| {
            view.matched
                .iter()
                .find(|(r, _, _)| r == id)
                .map_or(0, |(_, m, _)| *m)
        };
        return match conf.voters.iter().max_by_key(|id| held(id)) {
            Some(successor) => Step::TransferLeader(*successor),
            None => Step::Wait,
        };
    }
    let same_voters =
        conf.voters.len() == target.len() && target.iter().all(|t| conf.voters.contains(t));
    if same_voters {
        if !conf.learners.is_empty() {
            let removals = conf
                .learners
                .iter()
                .map(|l| change(ConfChangeType::RemoveNode, *l))
                .collect();
            return Step::Propose(simple(removals));
        }
        return Step::Report(MetadataCommand::CompleteReassignment {
            id,
            partition,
            target: moving.target.clone(),
        });
    }
    let joining: Vec<u64> = target
        .iter()
        .filter(|t| !conf.voters.contains(t) && !conf.learners.contains(t))
        .copied()
        .collect();
    if !joining.is_empty() {
        let additions = joining
            .iter()
            .map(|j| change(ConfChangeType::AddLearnerNode, *j))
            .collect();
        return Step::Propose(simple(additions));
    }
    let point = JoinPoint {
        index: view.conf_index,
        voters: conf.voters.clone(),
        learners: conf.learners.clone(),
        voters_outgoing: Vec::new(),
        learners_next: Vec::new(),
    };
    if moving.joining.as_ref() != Some(&point) {
        return Step::Report(MetadataCommand::SetJoinPoint {
            id,
            partition,
            target: moving.target.clone(),
            point,
        });
    }
    // Caught up: answering, holding at least the change that made it a learner (so it
    // replicates this log, not merely a short one), and close to the leader's end.
    let behind = |learner: &u64| {
        let (held, answering) = view
            .matched
            .iter()
            .find(|(id, _, _)| id == learner)
            .map_or((0, false), |(_, m, a)| (*m, *a));
        !answering || held < view.conf_index || held + CAUGHT_UP_ENTRIES < view.last_index
    };
    if conf
        .learners
        .iter()
        .filter(|l| target.contains(l))
        .any(behind)
    {
        return Step::Wait;
    }
    // One joint change: the target's learners become voters, voters and learners outside the
    // target leave. Left explicitly, so that a leader outside the target hands over first.
    let mut changes: Vec<ConfChangeSingle> = target
        .iter()
        .filter(|t| !conf.voters.contains(t))
        .map(|t| change(ConfChangeType::AddNode, *t))
        .collect();
    changes.extend(
        conf.voters
            .iter()
            .chain(&conf.learners)
            .filter(|v| !target.contains(v))
            .map(|v| change(ConfChangeType::RemoveNode, *v)),
    );
    let mut joint = ConfChangeV2::default();
    joint.set_transition(ConfChangeTransition::Explicit);
    joint.set_changes(changes.into());
    Step::Propose(joint)
}

/// Why a node may not open its replica of a moving partition yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotYet;

/// How node `node` starts a replica it does not hold yet of a partition listed on `replicas`
/// (the image's list) with `moving` under way, if any: a node the move adds joins as the
/// learner the join point says, once the leader has set one naming it; any other starts a new
/// group of the listed nodes (or, during a move, of the list the move started from).
pub fn membership_for(
    node: i32,
    replicas: &[i32],
    moving: Option<&Reassignment>,
) -> Result<Membership, NotYet> {
    let Some(moving) = moving else {
        let voters: Vec<u64> = replicas.iter().map(|n| raft_id(*n)).collect();
        return Ok(Membership::voters(&voters));
    };
    if moving.original.contains(&node) {
        let voters: Vec<u64> = moving.original.iter().map(|n| raft_id(*n)).collect();
        return Ok(Membership::voters(&voters));
    }
    let point = moving
        .joining
        .as_ref()
        .filter(|p| p.learners.contains(&raft_id(node)))
        .ok_or(NotYet)?;
    let conf_state = ConfState {
        voters: point.voters.clone(),
        learners: point.learners.clone(),
        voters_outgoing: point.voters_outgoing.clone(),
        learners_next: point.learners_next.clone(),
        ..ConfState::default()
    };
    Ok(Membership {
        conf_state,
        index: point.index,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::node_of;

    /// Node ids of the Raft ids in `ids`.
    fn nodes_of(ids: &[u64]) -> Vec<i32> {
        ids.iter().map(|id| node_of(*id)).collect()
    }

    fn conf(voters: &[i32], learners: &[i32], outgoing: &[i32]) -> ConfState {
        let ids = |nodes: &[i32]| nodes.iter().map(|n| raft_id(*n)).collect::<Vec<_>>();
        ConfState {
            voters: ids(voters),
            learners: ids(learners),
            voters_outgoing: ids(outgoing),
            ..ConfState::default()
        }
    }

    fn view(me: i32, conf: ConfState, matched: &[(i32, u64)]) -> GroupView {
        GroupView {
            me: raft_id(me),
            conf,
            conf_index: 40,
            pending: false,
            matched: matched
                .iter()
                .map(|(n, m)| (raft_id(*n), *m, true))
                .collect(),
            last_index: 500,
        }
    }

    fn moving(target: &[i32], original: &[i32], joining: Option<JoinPoint>) -> Reassignment {
        Reassignment {
            target: target.to_vec(),
            original: original.to_vec(),
            joining,
        }
    }

    fn kinds(step: &Step) -> Vec<(ConfChangeType, i32)> {
        let Step::Propose(change) = step else {
            panic!("not a proposal: {step:?}");
        };
        change
            .changes
            .iter()
            .map(|c| (c.get_change_type(), node_of(c.node_id)))
            .collect()
    }

    /// A move of [1, 2, 3] to [2, 3, 4] led by node 1, step by step.
    #[test]
    fn a_leader_moves_its_group_one_change_at_a_time() {
        let id = Uuid::from_u128(7);
        let mut plan = moving(&[2, 3, 4], &[1, 2, 3], None);
        // 1. Node 4 joins as a learner.
        let start = view(
            1,
            conf(&[1, 2, 3], &[], &[]),
            &[(1, 500), (2, 500), (3, 500)],
        );
        let step = next_step(&start, id, 0, &plan);
        assert_eq!(kinds(&step), vec![(ConfChangeType::AddLearnerNode, 4)]);
        // Nothing while that change is in flight.
        let in_flight = GroupView {
            pending: true,
            ..start.clone()
        };
        assert_eq!(next_step(&in_flight, id, 0, &plan), Step::Wait);
        // 2. The controller hears where node 4 starts.
        let learning = view(1, conf(&[1, 2, 3], &[4], &[]), &[(1, 500), (4, 0)]);
        let Step::Report(MetadataCommand::SetJoinPoint { point, .. }) =
            next_step(&learning, id, 0, &plan)
        else {
            panic!("expected a join point");
        };
        assert_eq!(
            (point.index, point.learners.clone()),
            (40, vec![raft_id(4)])
        );
        plan.joining = Some(point);
        // Membership of the joining node: that very configuration.
        let joined = membership_for(4, &[2, 3, 4, 1], Some(&plan)).unwrap();
        assert_eq!(
            (joined.index, joined.conf_state.learners.clone()),
            (40, vec![raft_id(4)])
        );
        assert_eq!(membership_for(5, &[2, 3, 4, 1], Some(&plan)), Err(NotYet));
        // 3. Behind: wait (also with a short log: the learner must hold the change that added
        // it, and answer); caught up: one joint change.
        assert_eq!(next_step(&learning, id, 0, &plan), Step::Wait);
        let short_log = GroupView {
            last_index: 41,
            ..learning.clone()
        };
        assert_eq!(next_step(&short_log, id, 0, &plan), Step::Wait);
        let mut silent = view(1, conf(&[1, 2, 3], &[4], &[]), &[(1, 500), (4, 500)]);
        silent.matched[1].2 = false;
        assert_eq!(next_step(&silent, id, 0, &plan), Step::Wait);
        let caught_up = view(1, conf(&[1, 2, 3], &[4], &[]), &[(1, 500), (4, 480)]);
        let step = next_step(&caught_up, id, 0, &plan);
        assert_eq!(
            kinds(&step),
            vec![
                (ConfChangeType::AddNode, 4),
                (ConfChangeType::RemoveNode, 1)
            ]
        );
        let Step::Propose(joint) = &step else {
            unreachable!()
        };
        assert_eq!(joint.enter_joint(), Some(false), "left explicitly");
        // 4. Joint, the leader leaving: hand over to the incoming voter holding the most.
        let joint_conf = conf(&[2, 3, 4], &[], &[1, 2, 3]);
        let handing = view(
            1,
            joint_conf.clone(),
            &[(1, 500), (2, 499), (3, 450), (4, 500)],
        );
        assert_eq!(
            next_step(&handing, id, 0, &plan),
            Step::TransferLeader(raft_id(4))
        );
        // ... whose leader leaves the joint configuration.
        let leaving = view(4, joint_conf, &[]);
        let Step::Propose(leave) = next_step(&leaving, id, 0, &plan) else {
            panic!("expected a proposal");
        };
        assert!(leave.leave_joint());
        // 5. Done.
        let done = view(4, conf(&[2, 3, 4], &[], &[]), &[]);
        assert_eq!(
            next_step(&done, id, 0, &plan),
            Step::Report(MetadataCommand::CompleteReassignment {
                id,
                partition: 0,
                target: vec![2, 3, 4]
            })
        );
    }

    /// A cancelled move: the learner that joined leaves, and the move reports done.
    #[test]
    fn a_cancelled_move_removes_its_learners_then_is_done() {
        let id = Uuid::from_u128(8);
        let back = moving(&[1, 2, 3], &[1, 2, 3], None);
        let with_learner = view(1, conf(&[1, 2, 3], &[4], &[]), &[]);
        assert_eq!(
            kinds(&next_step(&with_learner, id, 0, &back)),
            vec![(ConfChangeType::RemoveNode, 4)]
        );
        let clean = view(1, conf(&[1, 2, 3], &[], &[]), &[]);
        assert!(matches!(
            next_step(&clean, id, 0, &back),
            Step::Report(MetadataCommand::CompleteReassignment { .. })
        ));
    }

    #[test]
    fn a_node_of_the_original_list_starts_a_group_of_that_list() {
        let plan = moving(&[4, 5, 6], &[1, 2, 3], None);
        let membership = membership_for(2, &[4, 5, 6, 1, 2, 3], Some(&plan)).unwrap();
        assert_eq!(nodes_of(&membership.conf_state.voters), vec![1, 2, 3]);
        let plain = membership_for(2, &[2, 3], None).unwrap();
        assert_eq!(nodes_of(&plain.conf_state.voters), vec![2, 3]);
    }
}
