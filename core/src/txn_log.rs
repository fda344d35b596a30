//! The records of `__transaction_state`, in Kafka's own binary schemas (the transaction
//! coordinator's `TransactionLogKey` and `TransactionLogValue`, version 0), so tools that read
//! the topic directly understand it.
//!
//! Layouts (big-endian; `string` = int16 length + UTF-8, arrays = int32 count + items):
//! - key: `int16 version=0, string transactional_id`;
//! - value: `int16 version=0, int64 producer_id, int16 producer_epoch,
//!   int32 transaction_timeout_ms, int8 transaction_status,
//!   [string topic, [int32 partition]] transaction_partitions,
//!   int64 transaction_last_update_timestamp_ms, int64 transaction_start_timestamp_ms`.
//!
//! Status codes are Kafka's (`TransactionState`): Empty 0, Ongoing 1, PrepareCommit 2,
//! PrepareAbort 3, CompleteCommit 4, CompleteAbort 5 (Dead 6 and PrepareEpochFence 7 are
//! never written here).

use std::collections::BTreeSet;

use bytes::{Buf, BufMut};

const KEY_VERSION: i16 = 0;
const VALUE_VERSION: i16 = 0;

/// Where a transaction stands (Kafka's `TransactionState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnStatus {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

impl TxnStatus {
    pub fn code(self) -> i8 {
        match self {
            TxnStatus::Empty => 0,
            TxnStatus::Ongoing => 1,
            TxnStatus::PrepareCommit => 2,
            TxnStatus::PrepareAbort => 3,
            TxnStatus::CompleteCommit => 4,
            TxnStatus::CompleteAbort => 5,
        }
    }

    pub fn from_code(code: i8) -> Option<TxnStatus> {
        Some(match code {
            0 => TxnStatus::Empty,
            1 => TxnStatus::Ongoing,
            2 => TxnStatus::PrepareCommit,
            3 => TxnStatus::PrepareAbort,
            4 => TxnStatus::CompleteCommit,
            5 => TxnStatus::CompleteAbort,
            _ => return None,
        })
    }

    /// Kafka's name, as DescribeTransactions and ListTransactions answer it.
    pub fn name(self) -> &'static str {
        match self {
            TxnStatus::Empty => "Empty",
            TxnStatus::Ongoing => "Ongoing",
            TxnStatus::PrepareCommit => "PrepareCommit",
            TxnStatus::PrepareAbort => "PrepareAbort",
            TxnStatus::CompleteCommit => "CompleteCommit",
            TxnStatus::CompleteAbort => "CompleteAbort",
        }
    }
}

/// One transactional id's state as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnRecord {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub timeout_ms: i32,
    pub status: TxnStatus,
    /// The partitions the transaction wrote to (or will write its markers to).
    pub partitions: BTreeSet<(String, i32)>,
    pub last_update_ms: i64,
    pub start_ms: i64,
}

pub fn encode_key(transactional_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + transactional_id.len());
    key.put_i16(KEY_VERSION);
    put_string(&mut key, transactional_id);
    key
}

pub fn encode_value(record: &TxnRecord) -> Vec<u8> {
    let mut value = Vec::with_capacity(64);
    value.put_i16(VALUE_VERSION);
    value.put_i64(record.producer_id);
    value.put_i16(record.producer_epoch);
    value.put_i32(record.timeout_ms);
    value.put_i8(record.status.code());
    let mut topics: Vec<(&str, Vec<i32>)> = Vec::new();
    for (topic, partition) in &record.partitions {
        match topics.last_mut() {
            Some((last, partitions)) if *last == topic.as_str() => partitions.push(*partition),
            _ => topics.push((topic, vec![*partition])),
        }
    }
    value.put_i32(topics.len() as i32);
    for (topic, partitions) in topics {
        put_string(&mut value, topic);
        value.put_i32(partitions.len() as i32);
        for p in partitions {
            value.put_i32(p);
        }
    }
    value.put_i64(record.last_update_ms);
    value.put_i64(record.start_ms);
    value
}

/// The transactional id of a key (`None`: not a version-0 key).
pub fn decode_key(mut key: &[u8]) -> Option<String> {
    if key.remaining() < 2 || key.get_i16() != KEY_VERSION {
        return None;
    }
    let id = get_string(&mut key)?;
    key.is_empty().then_some(id)
}

/// A value (`None`: malformed, or a version this broker does not read).
pub fn decode_value(mut value: &[u8]) -> Option<TxnRecord> {
    if value.remaining() < 2 || value.get_i16() != VALUE_VERSION {
        return None;
    }
    if value.remaining() < 8 + 2 + 4 + 1 + 4 {
        return None;
    }
    let producer_id = value.get_i64();
    let producer_epoch = value.get_i16();
    let timeout_ms = value.get_i32();
    let status = TxnStatus::from_code(value.get_i8())?;
    let topics = usize::try_from(value.get_i32()).ok()?;
    let mut partitions = BTreeSet::new();
    for _ in 0..topics {
        let topic = get_string(&mut value)?;
        if value.remaining() < 4 {
            return None;
        }
        let count = usize::try_from(value.get_i32()).ok()?;
        if value.remaining() < count.checked_mul(4)? {
            return None;
        }
        for _ in 0..count {
            partitions.insert((topic.clone(), value.get_i32()));
        }
    }
    if value.remaining() < 16 {
        return None;
    }
    Some(TxnRecord {
        producer_id,
        producer_epoch,
        timeout_ms,
        status,
        partitions,
        last_update_ms: value.get_i64(),
        start_ms: value.get_i64(),
    })
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.put_i16(s.len() as i16);
    out.put_slice(s.as_bytes());
}

fn get_string(buf: &mut &[u8]) -> Option<String> {
    if buf.remaining() < 2 {
        return None;
    }
    let len = usize::try_from(buf.get_i16()).ok()?;
    if buf.remaining() < len {
        return None;
    }
    let s = std::str::from_utf8(&buf[..len]).ok()?.to_string();
    buf.advance(len);
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_and_malformed_ones_are_refused() {
        let record = TxnRecord {
            producer_id: 4_000,
            producer_epoch: 7,
            timeout_ms: 60_000,
            status: TxnStatus::PrepareCommit,
            partitions: [
                ("a".to_string(), 0),
                ("a".to_string(), 3),
                ("b".to_string(), 1),
            ]
            .into_iter()
            .collect(),
            last_update_ms: 1_700_000_000_123,
            start_ms: 1_700_000_000_000,
        };
        let value = encode_value(&record);
        assert_eq!(decode_value(&value), Some(record));
        assert_eq!(
            decode_key(&encode_key("payments-1")),
            Some("payments-1".to_string())
        );
        // Kafka's layout, byte for byte, for the key.
        assert_eq!(encode_key("t"), vec![0, 0, 0, 1, b't']);
        for cut in 0..value.len() {
            assert_eq!(decode_value(&value[..cut]), None, "cut at {cut}");
        }
        let mut bad_status = value.clone();
        bad_status[16] = 9;
        assert_eq!(decode_value(&bad_status), None);
        assert_eq!(
            decode_key(&[0, 1, 0, 1, b't']),
            None,
            "a key version not read"
        );
    }
}
