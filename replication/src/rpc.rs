//! Broker-to-broker frames: the Raft messages of many groups between two nodes, in one frame,
//! and the requests and answers (`PeerCall`) one shard makes of the same shard of another node.
//!
//! On the wire: `[u32 payload length][u32 crc32c of the payload][payload]`, little-endian; the
//! payload is a flatbuffers `Frame` (schema `replication/schema/rpc.fbs`, generated code in
//! `rpc_generated.rs`, never edited by hand). A reader checks the length against its maximum
//! before allocating, then the checksum, then the flatbuffers structure (the verifier bounds
//! every offset), and only then converts. Entry data (record batches) is not copied on the way
//! in: each entry's `data` is a slice of the frame's own buffer.
//!
//! Invariant: `decode_payload` never panics and never reads outside the payload, whatever the
//! bytes; anything malformed is a `FrameError`, after which the connection is closed.

use bytes::Bytes;
use flatbuffers::{FlatBufferBuilder, WIPOffset};
use protobuf::ProtobufEnum;
use raft::eraftpb::{ConfState, Entry, EntryType, Message, MessageType, Snapshot};

#[allow(unsafe_code, clippy::all, clippy::pedantic, unused_imports, dead_code)]
#[rustfmt::skip]
#[path = "rpc_generated.rs"]
mod generated;

use generated::sluice::rpc as fb;

/// Bytes before a frame's payload: its length and its CRC-32C.
pub const FRAME_HEADER_BYTES: usize = 8;

/// A Raft group between nodes: a partition, or the controller group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    pub topic_id: u128,
    pub partition: i32,
}

impl GroupKey {
    /// The controller group (cluster metadata).
    pub const CONTROLLER: GroupKey = GroupKey {
        topic_id: 0,
        partition: -1,
    };
}

/// One Raft message and the group it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupMessage {
    pub group: GroupKey,
    pub message: Message,
    /// Part of a group going quiet (a leader's heartbeat asking its followers to, or a
    /// follower's answer that it did): it does not wake a quiet replica (`replica.rs`).
    pub quiet: bool,
}

/// A group its sender's shard leads (and serves), and who is in sync with it there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeadNote {
    pub group: GroupKey,
    pub term: u64,
    /// Raft ids, the leader's own included.
    pub in_sync: Vec<u64>,
    /// The controller group's high watermark (0 for partitions, whose notes leave it out).
    pub high_watermark: i64,
    /// The controller group's voters as its leader tracks them (empty for partitions).
    pub voters: Vec<VoterProgress>,
}

/// A replica of a group as its leader tracks it (see `rpc.fbs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VoterProgress {
    pub id: u64,
    pub log_end_offset: i64,
    pub last_fetch_ms: i64,
    pub last_caught_up_ms: i64,
    /// A replica that does not vote (KRaft's observer).
    pub learner: bool,
}

/// A request a shard makes of the same shard of another node, or the answer to one (see
/// `rpc.fbs`): a Kafka request or response body of `api_key` at `api_version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCall {
    /// The asker's number for the request; an answer carries its request's.
    pub id: u64,
    /// An answer to the receiver's request `id` (false: a request).
    pub answer: bool,
    pub api_key: i16,
    pub api_version: i16,
    pub body: Bytes,
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub from_node: u64,
    pub messages: Vec<GroupMessage>,
    /// Every group the sender's shard leads, whole; `None`: the frame says nothing of them.
    pub leading: Option<Vec<LeadNote>>,
    /// A node that is not a seed asking to join, with its registration (opaque here).
    pub join: Option<Bytes>,
    /// Requests to the receiver and answers to its requests.
    pub calls: Vec<PeerCall>,
}

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {length} bytes is over the maximum of {max}")]
    TooLarge { length: usize, max: usize },
    #[error("frame checksum mismatch: header says {expected:#010x}, payload has {actual:#010x}")]
    Checksum { expected: u32, actual: u32 },
    #[error("frame payload is not a valid flatbuffers Frame: {0}")]
    Malformed(String),
    #[error("frame field {field} has unknown value {value}")]
    UnknownValue { field: &'static str, value: u32 },
}

/// A frame's header, read from its first `FRAME_HEADER_BYTES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub payload_length: usize,
    pub checksum: u32,
}

/// Reads a header and refuses a length over `max_payload_bytes` before anything is allocated.
pub fn decode_header(
    header: &[u8; FRAME_HEADER_BYTES],
    max_payload_bytes: usize,
) -> Result<FrameHeader, FrameError> {
    let payload_length = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
    let checksum = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    if payload_length > max_payload_bytes {
        return Err(FrameError::TooLarge {
            length: payload_length,
            max: max_payload_bytes,
        });
    }
    Ok(FrameHeader {
        payload_length,
        checksum,
    })
}

/// Checks and converts a payload; entry and snapshot data are slices of `payload`.
pub fn decode_payload(header: FrameHeader, payload: Bytes) -> Result<Frame, FrameError> {
    let actual = crc32c::crc32c(&payload);
    if actual != header.checksum {
        return Err(FrameError::Checksum {
            expected: header.checksum,
            actual,
        });
    }
    let frame = fb::root_as_frame(&payload).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let mut messages = Vec::new();
    for message in frame.messages().iter().flat_map(|m| m.iter()) {
        messages.push(decode_message(&payload, message)?);
    }
    let leading = match frame.leading() {
        None => None,
        Some(notes) => {
            let mut leading = Vec::with_capacity(notes.len());
            for note in notes.iter() {
                let group = note
                    .group()
                    .ok_or_else(|| FrameError::Malformed("lead note without a group".into()))?;
                let voters = note
                    .voters()
                    .map(|voters| {
                        voters
                            .iter()
                            .map(|v| VoterProgress {
                                id: v.id(),
                                log_end_offset: v.log_end_offset(),
                                last_fetch_ms: v.last_fetch_ms(),
                                last_caught_up_ms: v.last_caught_up_ms(),
                                learner: v.learner(),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                leading.push(LeadNote {
                    group: group_key_of(group),
                    term: note.term(),
                    in_sync: note
                        .in_sync()
                        .map(|v| v.iter().collect())
                        .unwrap_or_default(),
                    high_watermark: note.high_watermark(),
                    voters,
                });
            }
            Some(leading)
        }
    };
    let join = frame.join().map(|bytes| share(&payload, Some(bytes)));
    let calls = frame
        .calls()
        .iter()
        .flat_map(|calls| calls.iter())
        .map(|call| PeerCall {
            id: call.id(),
            answer: call.answer(),
            api_key: call.api_key(),
            api_version: call.api_version(),
            body: share(&payload, call.body()),
        })
        .collect();
    Ok(Frame {
        from_node: frame.from_node(),
        messages,
        leading,
        join,
        calls,
    })
}

fn group_key_of(group: &fb::GroupId) -> GroupKey {
    GroupKey {
        topic_id: (u128::from(group.topic_id_high()) << 64) | u128::from(group.topic_id_low()),
        partition: group.partition(),
    }
}

fn group_id_of(group: GroupKey) -> fb::GroupId {
    fb::GroupId::new(
        (group.topic_id >> 64) as u64,
        group.topic_id as u64,
        group.partition,
    )
}

/// Appends one whole frame asking to join the cluster (see [`Frame::join`]) to `out`.
pub fn encode_join_frame(from_node: u64, registration: &[u8], out: &mut Vec<u8>) {
    let mut builder = FlatBufferBuilder::with_capacity(64 + registration.len());
    let join = builder.create_vector(registration);
    let frame = fb::Frame::create(
        &mut builder,
        &fb::FrameArgs {
            from_node,
            join: Some(join),
            ..fb::FrameArgs::default()
        },
    );
    fb::finish_frame_buffer(&mut builder, frame);
    finish_frame(builder.finished_data(), out);
}

fn finish_frame(payload: &[u8], out: &mut Vec<u8>) {
    let length = u32::try_from(payload.len()).expect("a frame payload fits in 4 GiB");
    out.reserve(FRAME_HEADER_BYTES + payload.len());
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Appends one whole frame (header and payload) to `out`; `leading`, when given, is every
/// group the sending shard leads.
pub fn encode_frame(
    from_node: u64,
    messages: &[GroupMessage],
    leading: Option<&[LeadNote]>,
    calls: &[PeerCall],
    out: &mut Vec<u8>,
) {
    let hint = encoded_size_hint(messages)
        + leading.map_or(0, |l| l.len() * 64)
        + calls.iter().map(|c| 48 + c.body.len()).sum::<usize>();
    let mut builder = FlatBufferBuilder::with_capacity(1024 + hint);
    let encoded: Vec<_> = messages
        .iter()
        .map(|m| encode_message(&mut builder, m))
        .collect();
    let messages = builder.create_vector(&encoded);
    let leading = leading.map(|notes| {
        let encoded: Vec<_> = notes
            .iter()
            .map(|note| {
                let in_sync = builder.create_vector(&note.in_sync);
                let voters = (!note.voters.is_empty()).then(|| {
                    let voters: Vec<_> = note
                        .voters
                        .iter()
                        .map(|v| {
                            fb::VoterProgress::create(
                                &mut builder,
                                &fb::VoterProgressArgs {
                                    id: v.id,
                                    log_end_offset: v.log_end_offset,
                                    last_fetch_ms: v.last_fetch_ms,
                                    last_caught_up_ms: v.last_caught_up_ms,
                                    learner: v.learner,
                                },
                            )
                        })
                        .collect();
                    builder.create_vector(&voters)
                });
                let group = group_id_of(note.group);
                fb::LeadNote::create(
                    &mut builder,
                    &fb::LeadNoteArgs {
                        group: Some(&group),
                        term: note.term,
                        in_sync: Some(in_sync),
                        high_watermark: note.high_watermark,
                        voters,
                    },
                )
            })
            .collect();
        builder.create_vector(&encoded)
    });
    let calls = (!calls.is_empty()).then(|| {
        let encoded: Vec<_> = calls
            .iter()
            .map(|call| {
                let body = builder.create_vector(&call.body[..]);
                fb::PeerCall::create(
                    &mut builder,
                    &fb::PeerCallArgs {
                        id: call.id,
                        answer: call.answer,
                        api_key: call.api_key,
                        api_version: call.api_version,
                        body: Some(body),
                    },
                )
            })
            .collect();
        builder.create_vector(&encoded)
    });
    let frame = fb::Frame::create(
        &mut builder,
        &fb::FrameArgs {
            from_node,
            messages: Some(messages),
            leading,
            join: None,
            calls,
        },
    );
    fb::finish_frame_buffer(&mut builder, frame);
    finish_frame(builder.finished_data(), out);
}

fn encoded_size_hint(messages: &[GroupMessage]) -> usize {
    messages
        .iter()
        .map(|m| {
            128 + m
                .message
                .entries
                .iter()
                .map(|e| 48 + e.data.len() + e.context.len())
                .sum::<usize>()
        })
        .sum()
}

fn encode_message<'b>(
    builder: &mut FlatBufferBuilder<'b>,
    message: &GroupMessage,
) -> WIPOffset<fb::RaftMessage<'b>> {
    let m = &message.message;
    let entries: Vec<_> = m
        .entries
        .iter()
        .map(|entry| {
            let data = builder.create_vector(&entry.data[..]);
            let context = builder.create_vector(&entry.context[..]);
            fb::Entry::create(
                builder,
                &fb::EntryArgs {
                    entry_type: entry.entry_type.value() as u8,
                    term: entry.term,
                    index: entry.index,
                    data: Some(data),
                    context: Some(context),
                },
            )
        })
        .collect();
    let entries = builder.create_vector(&entries);
    let snapshot = m.snapshot.as_ref().map(|s| encode_snapshot(builder, s));
    let context = builder.create_vector(&m.context[..]);
    let group = group_id_of(message.group);
    fb::RaftMessage::create(
        builder,
        &fb::RaftMessageArgs {
            group: Some(&group),
            msg_type: m.msg_type.value() as u8,
            to: m.to,
            from: m.from,
            term: m.term,
            log_term: m.log_term,
            index: m.index,
            entries: Some(entries),
            commit: m.commit,
            commit_term: m.commit_term,
            snapshot,
            request_snapshot: m.request_snapshot,
            reject: m.reject,
            reject_hint: m.reject_hint,
            context: Some(context),
            priority: m.priority,
            quiet: message.quiet,
        },
    )
}

fn encode_snapshot<'b>(
    builder: &mut FlatBufferBuilder<'b>,
    snapshot: &Snapshot,
) -> WIPOffset<fb::Snapshot<'b>> {
    let metadata = snapshot.get_metadata();
    let conf = metadata.get_conf_state();
    let voters = builder.create_vector(&conf.voters);
    let learners = builder.create_vector(&conf.learners);
    let voters_outgoing = builder.create_vector(&conf.voters_outgoing);
    let learners_next = builder.create_vector(&conf.learners_next);
    let conf_state = fb::ConfState::create(
        builder,
        &fb::ConfStateArgs {
            voters: Some(voters),
            learners: Some(learners),
            voters_outgoing: Some(voters_outgoing),
            learners_next: Some(learners_next),
            auto_leave: conf.auto_leave,
        },
    );
    let data = builder.create_vector(&snapshot.data[..]);
    fb::Snapshot::create(
        builder,
        &fb::SnapshotArgs {
            index: metadata.index,
            term: metadata.term,
            conf_state: Some(conf_state),
            data: Some(data),
        },
    )
}

/// `part` as a slice of `payload`'s buffer, without copying.
fn share(payload: &Bytes, part: Option<flatbuffers::Vector<'_, u8>>) -> Bytes {
    match part {
        Some(part) if !part.is_empty() => payload.slice_ref(part.bytes()),
        _ => Bytes::new(),
    }
}

fn decode_message(payload: &Bytes, m: fb::RaftMessage<'_>) -> Result<GroupMessage, FrameError> {
    let group = m
        .group()
        .ok_or_else(|| FrameError::Malformed("message without a group".into()))?;
    let mut message = Message {
        msg_type: MessageType::from_i32(i32::from(m.msg_type())).ok_or(
            FrameError::UnknownValue {
                field: "msg_type",
                value: u32::from(m.msg_type()),
            },
        )?,
        to: m.to(),
        from: m.from(),
        term: m.term(),
        log_term: m.log_term(),
        index: m.index(),
        commit: m.commit(),
        commit_term: m.commit_term(),
        request_snapshot: m.request_snapshot(),
        reject: m.reject(),
        reject_hint: m.reject_hint(),
        context: share(payload, m.context()),
        priority: m.priority(),
        ..Message::default()
    };
    for entry in m.entries().iter().flat_map(|e| e.iter()) {
        message.entries.push(Entry {
            entry_type: EntryType::from_i32(i32::from(entry.entry_type())).ok_or(
                FrameError::UnknownValue {
                    field: "entry_type",
                    value: u32::from(entry.entry_type()),
                },
            )?,
            term: entry.term(),
            index: entry.index(),
            data: share(payload, entry.data()),
            context: share(payload, entry.context()),
            ..Entry::default()
        });
    }
    if let Some(snapshot) = m.snapshot() {
        let mut decoded = Snapshot {
            data: share(payload, snapshot.data()),
            ..Snapshot::default()
        };
        let metadata = decoded.mut_metadata();
        metadata.index = snapshot.index();
        metadata.term = snapshot.term();
        if let Some(conf) = snapshot.conf_state() {
            let ids = |v: Option<flatbuffers::Vector<'_, u64>>| -> Vec<u64> {
                v.map(|v| v.iter().collect()).unwrap_or_default()
            };
            metadata.set_conf_state(ConfState {
                voters: ids(conf.voters()),
                learners: ids(conf.learners()),
                voters_outgoing: ids(conf.voters_outgoing()),
                learners_next: ids(conf.learners_next()),
                auto_leave: conf.auto_leave(),
                ..ConfState::default()
            });
        }
        message.set_snapshot(decoded);
    }
    Ok(GroupMessage {
        group: group_key_of(group),
        message,
        quiet: m.quiet(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode(bytes: &[u8], max: usize) -> Result<Frame, FrameError> {
        let header = decode_header(bytes[..FRAME_HEADER_BYTES].try_into().unwrap(), max)?;
        assert_eq!(header.payload_length, bytes.len() - FRAME_HEADER_BYTES);
        decode_payload(header, Bytes::copy_from_slice(&bytes[FRAME_HEADER_BYTES..]))
    }

    fn append(to: u64, entries: Vec<Vec<u8>>) -> Message {
        let mut message = Message {
            msg_type: MessageType::MsgAppend,
            to,
            from: 1,
            term: 7,
            log_term: 6,
            index: 41,
            commit: 40,
            ..Message::default()
        };
        for (i, data) in entries.into_iter().enumerate() {
            message.entries.push(Entry {
                term: 7,
                index: 42 + i as u64,
                data: data.into(),
                ..Entry::default()
            });
        }
        message
    }

    fn frame_of(messages: &[GroupMessage]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(3, messages, None, &[], &mut out);
        out
    }

    fn arb_message() -> impl Strategy<Value = GroupMessage> {
        let entry = (
            0u8..3,
            any::<u64>(),
            any::<u64>(),
            prop::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(kind, term, index, data)| Entry {
                entry_type: EntryType::from_i32(i32::from(kind)).unwrap(),
                term,
                index,
                data: data.into(),
                ..Entry::default()
            });
        let ids = prop::collection::vec(any::<u64>(), 0..4);
        let snapshot =
            prop::option::of((any::<u64>(), any::<u64>(), ids.clone(), ids, any::<bool>()))
                .prop_map(|s| {
                    s.map(|(index, term, voters, learners, auto_leave)| {
                        let mut snapshot = Snapshot {
                            data: Bytes::from_static(b"snapshot"),
                            ..Snapshot::default()
                        };
                        let metadata = snapshot.mut_metadata();
                        metadata.index = index;
                        metadata.term = term;
                        metadata.set_conf_state(ConfState {
                            voters,
                            learners,
                            auto_leave,
                            ..ConfState::default()
                        });
                        snapshot
                    })
                });
        (
            (any::<u128>(), any::<i32>(), 0i32..19),
            prop::array::uniform8(any::<u64>()),
            (any::<bool>(), any::<i64>(), any::<bool>()),
            prop::collection::vec(entry, 0..5),
            snapshot,
        )
            .prop_map(
                |((topic_id, partition, kind), n, (reject, priority, quiet), entries, snapshot)| {
                    let mut message = Message {
                        msg_type: MessageType::from_i32(kind).unwrap(),
                        to: n[0],
                        from: n[1],
                        term: n[2],
                        log_term: n[3],
                        index: n[4],
                        commit: n[5],
                        commit_term: n[6],
                        reject_hint: n[7],
                        reject,
                        priority,
                        ..Message::default()
                    };
                    message.entries = entries.into();
                    if let Some(snapshot) = snapshot {
                        message.set_snapshot(snapshot);
                    }
                    GroupMessage {
                        group: GroupKey {
                            topic_id,
                            partition,
                        },
                        message,
                        quiet,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn frames_round_trip(
            messages in prop::collection::vec(arb_message(), 0..8),
            from in any::<u64>(),
            leading in prop::option::of(prop::collection::vec(
                (
                    (any::<u128>(), any::<i32>()),
                    any::<u64>(),
                    prop::collection::vec(any::<u64>(), 0..4),
                    any::<i64>(),
                    prop::collection::vec(prop::array::uniform4(any::<i64>()), 0..3),
                ),
                0..6,
            )),
            calls in prop::collection::vec(
                (any::<u64>(), any::<bool>(), any::<i16>(), any::<i16>(), prop::collection::vec(any::<u8>(), 0..64)),
                0..4,
            ),
        ) {
            let calls: Vec<PeerCall> = calls
                .into_iter()
                .map(|(id, answer, api_key, api_version, body)| PeerCall {
                    id,
                    answer,
                    api_key,
                    api_version,
                    body: body.into(),
                })
                .collect();
            let leading: Option<Vec<LeadNote>> = leading.map(|notes| {
                notes
                    .into_iter()
                    .map(|((topic_id, partition), term, in_sync, high_watermark, voters)| LeadNote {
                        group: GroupKey { topic_id, partition },
                        term,
                        in_sync,
                        high_watermark,
                        voters: voters
                            .into_iter()
                            .map(|v| VoterProgress {
                                id: v[0] as u64,
                                log_end_offset: v[1],
                                last_fetch_ms: v[2],
                                last_caught_up_ms: v[3],
                                learner: v[0] % 2 == 0,
                            })
                            .collect(),
                    })
                    .collect()
            });
            let mut out = Vec::new();
            encode_frame(from, &messages, leading.as_deref(), &calls, &mut out);
            let frame = decode(&out, usize::MAX).unwrap();
            prop_assert_eq!(frame.from_node, from);
            prop_assert_eq!(frame.messages, messages);
            prop_assert_eq!(frame.leading, leading);
            prop_assert_eq!(frame.calls, calls);
        }

        /// Whatever the payload bytes, with a matching checksum, decoding returns (no panic).
        #[test]
        fn garbage_payloads_are_refused_not_panicked_on(payload in prop::collection::vec(any::<u8>(), 0..512)) {
            let header = FrameHeader { payload_length: payload.len(), checksum: crc32c::crc32c(&payload) };
            let _ = decode_payload(header, Bytes::from(payload));
        }
    }

    #[test]
    fn entry_data_is_a_slice_of_the_frame_not_a_copy() {
        let bytes = frame_of(&[GroupMessage {
            group: GroupKey {
                topic_id: 9,
                partition: 2,
            },
            message: append(2, vec![vec![0xab; 4096], vec![0xcd; 100]]),
            quiet: false,
        }]);
        let payload = Bytes::copy_from_slice(&bytes[FRAME_HEADER_BYTES..]);
        let header = decode_header(bytes[..8].try_into().unwrap(), 1 << 20).unwrap();
        let frame = decode_payload(header, payload.clone()).unwrap();
        let range = payload.as_ptr_range();
        for entry in &frame.messages[0].message.entries {
            assert!(
                range.contains(&entry.data.as_ptr()),
                "entry data was copied"
            );
        }
        assert_eq!(frame.messages[0].message.entries[0].data, vec![0xab; 4096]);
    }

    #[test]
    fn a_length_over_the_maximum_is_refused_before_reading_the_payload() {
        let mut header = [0u8; FRAME_HEADER_BYTES];
        header[..4].copy_from_slice(&(64u32 << 20).to_le_bytes());
        assert_eq!(
            decode_header(&header, 16 << 20),
            Err(FrameError::TooLarge {
                length: 64 << 20,
                max: 16 << 20
            })
        );
    }

    #[test]
    fn a_flipped_payload_bit_fails_the_checksum() {
        let mut bytes = frame_of(&[GroupMessage {
            group: GroupKey::CONTROLLER,
            message: append(2, vec![b"batch".to_vec()]),
            quiet: false,
        }]);
        let last = bytes.len() - 3;
        bytes[last] ^= 0x10;
        assert!(matches!(
            decode(&bytes, 1 << 20),
            Err(FrameError::Checksum { .. })
        ));
    }

    #[test]
    fn a_truncated_payload_with_its_own_checksum_is_malformed() {
        let bytes = frame_of(&[GroupMessage {
            group: GroupKey::CONTROLLER,
            message: append(2, vec![vec![1; 200]]),
            quiet: false,
        }]);
        let payload = &bytes[FRAME_HEADER_BYTES..bytes.len() - 150];
        let header = FrameHeader {
            payload_length: payload.len(),
            checksum: crc32c::crc32c(payload),
        };
        assert!(matches!(
            decode_payload(header, Bytes::copy_from_slice(payload)),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn a_join_frame_carries_the_registration_and_nothing_else() {
        let mut out = Vec::new();
        encode_join_frame(4, b"{\"node_id\":3}", &mut out);
        let frame = decode(&out, 1 << 20).unwrap();
        assert_eq!(frame.from_node, 4);
        assert_eq!(frame.join.as_deref(), Some(&b"{\"node_id\":3}"[..]));
        assert!(frame.messages.is_empty() && frame.leading.is_none());
        let plain = decode(&frame_of(&[]), 1 << 20).unwrap();
        assert_eq!(plain.join, None);
    }

    #[test]
    fn an_unknown_message_type_is_refused_by_name() {
        let mut builder = FlatBufferBuilder::new();
        let group = fb::GroupId::new(0, 0, -1);
        let message = fb::RaftMessage::create(
            &mut builder,
            &fb::RaftMessageArgs {
                group: Some(&group),
                msg_type: 200,
                ..Default::default()
            },
        );
        let messages = builder.create_vector(&[message]);
        let frame = fb::Frame::create(
            &mut builder,
            &fb::FrameArgs {
                from_node: 1,
                messages: Some(messages),
                ..Default::default()
            },
        );
        fb::finish_frame_buffer(&mut builder, frame);
        let payload = builder.finished_data();
        let header = FrameHeader {
            payload_length: payload.len(),
            checksum: crc32c::crc32c(payload),
        };
        assert_eq!(
            decode_payload(header, Bytes::copy_from_slice(payload)),
            Err(FrameError::UnknownValue {
                field: "msg_type",
                value: 200
            })
        );
    }
}
