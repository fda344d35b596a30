//! The records of `__consumer_offsets`, in Kafka's own binary schemas (the group coordinator's
//! `OffsetCommitKey`/`OffsetCommitValue` and `GroupMetadataKey`/`GroupMetadataValue`), so tools
//! that read the topic directly understand it, and batches built with null values for
//! deletions (tombstones), as Kafka writes them.
//!
//! Layouts (big-endian; `string` = int16 length + UTF-8, `nullable string` with length -1 for
//! null, `bytes` = int32 length + bytes):
//! - offset commit: key `int16 version=1, string group, string topic, int32 partition`;
//!   value `int16 version=3, int64 offset, int32 leader_epoch, string metadata,
//!   int64 commit_timestamp` (versions 0–3 are read).
//! - group: key `int16 version=2, string group`; value `int16 version=3, string protocol_type,
//!   int32 generation, nullable string protocol, nullable string leader,
//!   int64 current_state_timestamp, int32 member count` and no members (membership is not
//!   persisted); versions 0–3 are read, of which only protocol type and generation are used.
//! - a deletion: the key with a null value.
//!
//! Data directories written before this format held JSON records (keys starting with `[`):
//! they are still read, and replay rewrites a partition that holds any in this format
//! (`groups::replay`), so every directory migrates on its first start.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use sluice_storage::batch::{build_batch_nullable, NullableRecord};

use crate::groups::{Committed, GroupRecord};

const OFFSET_KEY_VERSION: i16 = 1;
const GROUP_KEY_VERSION: i16 = 2;
const OFFSET_VALUE_VERSION: i16 = 3;
const GROUP_VALUE_VERSION: i16 = 3;

/// One record of the topic, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum OffsetsRecord {
    /// A committed offset, or its deletion (`None`).
    Offset {
        group: String,
        topic: String,
        partition: i32,
        committed: Option<Committed>,
    },
    /// A group's persisted state, or its deletion (`None`).
    Group {
        group: String,
        state: Option<GroupRecord>,
    },
}

/// What a stored record turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// Kafka's binary schemas.
    Current(OffsetsRecord),
    /// Sluice's earlier JSON records (read for migration).
    Legacy(OffsetsRecord),
    /// Neither (a version we do not know, or damage): skipped.
    Unknown,
}

fn put_string(out: &mut BytesMut, s: &str) {
    out.put_i16(i16::try_from(s.len()).expect("names are shorter than 32 KiB"));
    out.put_slice(s.as_bytes());
}

fn put_nullable_string(out: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => put_string(out, s),
        None => out.put_i16(-1),
    }
}

/// The key of `group`'s committed offset for `topic`/`partition`.
pub fn offset_key(group: &str, topic: &str, partition: i32) -> Bytes {
    let mut out = BytesMut::with_capacity(10 + group.len() + topic.len());
    out.put_i16(OFFSET_KEY_VERSION);
    put_string(&mut out, group);
    put_string(&mut out, topic);
    out.put_i32(partition);
    out.freeze()
}

/// The key of `group`'s metadata record.
pub fn group_key(group: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(4 + group.len());
    out.put_i16(GROUP_KEY_VERSION);
    put_string(&mut out, group);
    out.freeze()
}

pub fn offset_value(c: &Committed) -> Bytes {
    let mut out = BytesMut::with_capacity(24 + c.metadata.len());
    out.put_i16(OFFSET_VALUE_VERSION);
    out.put_i64(c.offset);
    out.put_i32(c.leader_epoch);
    put_string(&mut out, &c.metadata);
    out.put_i64(c.commit_ms);
    out.freeze()
}

pub fn group_value(g: &GroupRecord, now_ms: i64) -> Bytes {
    let protocol_type = g.protocol_type.as_deref().unwrap_or("");
    let mut out = BytesMut::with_capacity(32 + protocol_type.len());
    out.put_i16(GROUP_VALUE_VERSION);
    put_string(&mut out, protocol_type);
    out.put_i32(g.generation);
    put_nullable_string(&mut out, None); // protocol
    put_nullable_string(&mut out, None); // leader
    out.put_i64(now_ms);
    out.put_i32(0); // members
    out.freeze()
}

/// Reads a record's key and value (`None`: a deletion).
pub fn decode(key: &[u8], value: Option<&[u8]>) -> Decoded {
    if key.first() == Some(&b'[') {
        return decode_legacy(key, value).map_or(Decoded::Unknown, Decoded::Legacy);
    }
    decode_binary(key, value).map_or(Decoded::Unknown, Decoded::Current)
}

/// A reader over a record's bytes that fails (`None`) instead of panicking on short input.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn i16(&mut self) -> Option<i16> {
        (self.0.len() >= 2).then(|| self.0.get_i16())
    }
    fn i32(&mut self) -> Option<i32> {
        (self.0.len() >= 4).then(|| self.0.get_i32())
    }
    fn i64(&mut self) -> Option<i64> {
        (self.0.len() >= 8).then(|| self.0.get_i64())
    }
    fn string(&mut self) -> Option<String> {
        let len = usize::try_from(self.i16()?).ok()?;
        let bytes = self.0.get(..len)?;
        let s = std::str::from_utf8(bytes).ok()?.to_string();
        self.0 = &self.0[len..];
        Some(s)
    }
}

fn decode_binary(key: &[u8], value: Option<&[u8]>) -> Option<OffsetsRecord> {
    let mut k = Reader(key);
    match k.i16()? {
        0 | 1 => {
            let group = k.string()?;
            let topic = k.string()?;
            let partition = k.i32()?;
            let committed = match value {
                None => None,
                Some(v) => {
                    let mut v = Reader(v);
                    let version = v.i16()?;
                    if !(0..=3).contains(&version) {
                        return None;
                    }
                    let offset = v.i64()?;
                    let leader_epoch = if version >= 3 { v.i32()? } else { -1 };
                    let metadata = v.string()?;
                    let commit_ms = v.i64()?;
                    Some(Committed {
                        offset,
                        leader_epoch,
                        metadata,
                        commit_ms,
                    })
                }
            };
            Some(OffsetsRecord::Offset {
                group,
                topic,
                partition,
                committed,
            })
        }
        2 => {
            let group = k.string()?;
            let state = match value {
                None => None,
                Some(v) => {
                    let mut v = Reader(v);
                    if !(0..=3).contains(&v.i16()?) {
                        return None;
                    }
                    let protocol_type = v.string()?;
                    let generation = v.i32()?;
                    Some(GroupRecord {
                        protocol_type: (!protocol_type.is_empty()).then_some(protocol_type),
                        generation,
                    })
                }
            };
            Some(OffsetsRecord::Group { group, state })
        }
        _ => None,
    }
}

/// Sluice's JSON records before the binary format: keys `["offset", group, topic, partition]`
/// and `["group", group]`, values JSON (`null` for a deletion).
fn decode_legacy(key: &[u8], value: Option<&[u8]>) -> Option<OffsetsRecord> {
    let value = value?;
    if let Ok((kind, group, topic, partition)) =
        serde_json::from_slice::<(String, String, String, i32)>(key)
    {
        return (kind == "offset").then_some(OffsetsRecord::Offset {
            group,
            topic,
            partition,
            committed: serde_json::from_slice::<Option<Committed>>(value).ok()?,
        });
    }
    let (kind, group) = serde_json::from_slice::<(String, String)>(key).ok()?;
    (kind == "group").then_some(OffsetsRecord::Group {
        group,
        state: serde_json::from_slice::<Option<GroupRecord>>(value).ok()?,
    })
}

/// One uncompressed batch of `(key, value)` records (a `None` value is a deletion), every
/// record stamped `now_ms`.
pub fn build_batch(now_ms: i64, records: &[(Bytes, Option<Bytes>)]) -> Bytes {
    let records: Vec<NullableRecord> = records
        .iter()
        .map(|(key, value)| (now_ms, Some(&key[..]), value.as_deref()))
        .collect();
    Bytes::from(build_batch_nullable(now_ms, &records))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_in_kafkas_layout() {
        let c = Committed {
            offset: 42,
            leader_epoch: 7,
            metadata: "m".into(),
            commit_ms: 1_700_000_000_000,
        };
        let key = offset_key("g", "t", 3);
        // Kafka's OffsetCommitKey v1, byte for byte.
        assert_eq!(&key[..], b"\x00\x01\x00\x01g\x00\x01t\x00\x00\x00\x03");
        let value = offset_value(&c);
        assert_eq!(&value[..2], b"\x00\x03");
        assert_eq!(value.len(), 2 + 8 + 4 + 3 + 8);
        assert_eq!(
            decode(&key, Some(&value)),
            Decoded::Current(OffsetsRecord::Offset {
                group: "g".into(),
                topic: "t".into(),
                partition: 3,
                committed: Some(c),
            })
        );
        let g = GroupRecord {
            protocol_type: Some("consumer".into()),
            generation: 5,
        };
        assert_eq!(&group_key("g")[..], b"\x00\x02\x00\x01g");
        assert_eq!(
            decode(&group_key("g"), Some(&group_value(&g, 1))),
            Decoded::Current(OffsetsRecord::Group {
                group: "g".into(),
                state: Some(g),
            })
        );
        assert_eq!(
            decode(&group_key("g"), None),
            Decoded::Current(OffsetsRecord::Group {
                group: "g".into(),
                state: None,
            })
        );
    }

    #[test]
    fn legacy_json_records_are_still_read() {
        assert_eq!(
            decode(
                br#"["offset","g","t",0]"#,
                Some(br#"{"offset":5,"leader_epoch":-1,"metadata":"","commit_ms":1}"#)
            ),
            Decoded::Legacy(OffsetsRecord::Offset {
                group: "g".into(),
                topic: "t".into(),
                partition: 0,
                committed: Some(Committed {
                    offset: 5,
                    leader_epoch: -1,
                    metadata: String::new(),
                    commit_ms: 1,
                }),
            })
        );
        assert!(matches!(
            decode(br#"["group","g"]"#, Some(b"null")),
            Decoded::Legacy(OffsetsRecord::Group { state: None, .. })
        ));
    }

    #[test]
    fn damaged_or_unknown_records_are_skipped() {
        assert_eq!(decode(b"", None), Decoded::Unknown);
        assert_eq!(decode(b"\x00\x01\x00\x09g", None), Decoded::Unknown);
        assert_eq!(decode(b"\x00\x07", None), Decoded::Unknown);
        let mut value = offset_value(&Committed {
            offset: 1,
            leader_epoch: 0,
            metadata: String::new(),
            commit_ms: 0,
        })
        .to_vec();
        value[1] = 9; // version 9
        assert_eq!(
            decode(&offset_key("g", "t", 0), Some(&value)),
            Decoded::Unknown
        );
    }

    #[test]
    fn batches_hold_tombstones() {
        let batch = build_batch(
            5,
            &[
                (group_key("a"), Some(Bytes::from_static(b"x"))),
                (group_key("b"), None),
            ],
        );
        let mut bytes = batch.clone();
        let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut bytes).unwrap();
        assert_eq!(set.records.len(), 2);
        assert_eq!(set.records[1].value, None);
        sluice_storage::batch::validate_batch(&batch, usize::MAX).unwrap();
    }
}
