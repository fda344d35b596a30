//! `sluice cluster add-voter --node N` and `sluice cluster remove-voter --node N`: change the
//! controller group's voters while the cluster runs (KIP-853's AddRaftVoter / RemoveRaftVoter,
//! as `kafka-metadata-quorum.sh add-controller` / `remove-controller`). The change is sent to
//! any node (it forwards it to the controller); the tool then waits until DescribeQuorum lists
//! N among the voters (added) or not (removed), since the controller leader changes the
//! group's configuration only once a new voter has caught up.

use std::time::{Duration, Instant};

use kafka_protocol::messages::describe_quorum_request::{PartitionData, TopicData};
use kafka_protocol::messages::{
    AddRaftVoterRequest, AddRaftVoterResponse, ApiKey, DescribeQuorumRequest,
    DescribeQuorumResponse, RemoveRaftVoterRequest, RemoveRaftVoterResponse,
};

use kafka_protocol::protocol::StrBytes;

use super::client::{ApiUse, Client, Result};
use super::{error_text, name, Connection};

/// `sluice cluster add-voter` and `remove-voter`.
#[derive(Debug, clap::Args)]
pub struct VoterArgs {
    /// The node: for add-voter a registered one (it joined through the seeds), for
    /// remove-voter a voter.
    #[arg(long, value_name = "ID")]
    node: i32,
    /// How long to wait until the controller group's configuration shows the change (0: send
    /// it and return).
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    wait_secs: u64,
    #[command(flatten)]
    connection: Connection,
}

const ADD: ApiUse = ApiUse {
    key: ApiKey::AddRaftVoter,
    min: 0,
    max: 0,
};

const REMOVE: ApiUse = ApiUse {
    key: ApiKey::RemoveRaftVoter,
    min: 0,
    max: 0,
};

const DESCRIBE_QUORUM: ApiUse = ApiUse {
    key: ApiKey::DescribeQuorum,
    min: 0,
    max: 2,
};

/// `sluice cluster add-voter --node N`.
pub fn add_voter(args: VoterArgs) -> Result<()> {
    let mut client = args.connection.client()?;
    let answer: AddRaftVoterResponse = client.call(None, ADD, |_| {
        AddRaftVoterRequest::default().with_voter_id(args.node)
    })?;
    accepted(args.node, answer.error_code, answer.error_message.as_ref())?;
    println!(
        "node {}: to be a controller voter once it has caught up",
        args.node
    );
    wait_for_voters(&mut client, args.node, true, args.wait_secs)
}

/// `sluice cluster remove-voter --node N`.
pub fn remove_voter(args: VoterArgs) -> Result<()> {
    let mut client = args.connection.client()?;
    let answer: RemoveRaftVoterResponse = client.call(None, REMOVE, |_| {
        RemoveRaftVoterRequest::default().with_voter_id(args.node)
    })?;
    accepted(args.node, answer.error_code, answer.error_message.as_ref())?;
    println!("node {}: no longer to be a controller voter", args.node);
    wait_for_voters(&mut client, args.node, false, args.wait_secs)
}

/// An answer's error, naming the node.
fn accepted(node: i32, code: i16, message: Option<&StrBytes>) -> Result<()> {
    match code {
        0 => Ok(()),
        _ => Err(format!("node {node}: {}", error_text(code, message))),
    }
}

/// Waits until DescribeQuorum lists `node` among the voters (`voter`) or not.
fn wait_for_voters(client: &mut Client, node: i32, voter: bool, wait_secs: u64) -> Result<()> {
    if wait_secs == 0 {
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(wait_secs);
    loop {
        let voters = quorum_voters(client)?;
        if voters.contains(&node) == voter {
            println!("controller voters: {voters:?}");
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the controller's voters are still {voters:?} after {wait_secs} s"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The controller group's voters as DescribeQuorum lists them now (empty while no node has
/// heard from a controller leader).
fn quorum_voters(client: &mut Client) -> Result<Vec<i32>> {
    let answer: DescribeQuorumResponse = client.call(None, DESCRIBE_QUORUM, |_| {
        DescribeQuorumRequest::default().with_topics(vec![TopicData::default()
            .with_topic_name(name("__cluster_metadata"))
            .with_partitions(vec![PartitionData::default().with_partition_index(0)])])
    })?;
    if answer.error_code != 0 {
        return Err(error_text(answer.error_code, answer.error_message.as_ref()));
    }
    let partition = answer.topics.first().and_then(|t| t.partitions.first());
    Ok(match partition {
        Some(p) if p.error_code == 0 => p.current_voters.iter().map(|v| v.replica_id.0).collect(),
        _ => Vec::new(),
    })
}
