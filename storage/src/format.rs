//! Every file name, magic number and byte layout the log writes, in one place.
//! `docs/on-disk-format.md` draws the same layouts; keep the two in step.
//!
//! A log directory holds:
//! - `<base_offset:020>.log`: a segment, RecordBatch v2 batches back to back from byte 0. The file
//!   may run on past the last batch (zero padding of the last 4 KiB page, preallocated space);
//!   the data ends at the first position that does not hold a valid batch with the expected offset.
//! - `<base_offset:020>.index`: the sparse index of a *sealed* segment, written once when the
//!   segment is sealed. Missing or invalid: rebuilt by scanning the segment.
//! - `log-start-offset`: checkpoint of the log start offset (set by `truncate_prefix`).
//! - `*.tmp`: a file being written atomically (write, fdatasync, rename). A stray one is debris of
//!   a crash and is deleted on open.
//! - `<base:020>.active-index`: the active segment's index as of a point its data was durable
//!   (same layout as `.index`, `segmentBytes` = the bytes it covers), written at a clean close
//!   and every `active_index_checkpoint_bytes` made durable; at open only the bytes after it are
//!   scanned. Used once and deleted at open; deleted by suffix truncation.
//! - `cleaned-to-offset`: checkpoint of how far compaction has cleaned the log (the first dirty
//!   offset), same layout as `log-start-offset` with its own magic.
//! - `<first:020>.cleaned`: a compacted replacement for the sealed segments from `first` on,
//!   being written. Debris of a crash: deleted on open, the old segments still stand.
//! - `<first:020>.index.cleaned`: that replacement's index, written and fdatasync'ed before the
//!   swap commits, renamed to `<first:020>.index` by the swap. Deleted on open like any
//!   `.cleaned` file (a missing index is rebuilt by a scan).
//! - `<first:020>-<end:020>.swap`: that replacement complete and durable, covering the segments
//!   with base offsets in `[first, end)`. On open the swap is finished: those segments (and
//!   `first`'s index) are deleted and the file is renamed to `<first:020>.log`.

use crate::types::{Offset, TimestampMs};

pub const SEGMENT_SUFFIX: &str = ".log";
pub const INDEX_SUFFIX: &str = ".index";
pub const TEMP_SUFFIX: &str = ".tmp";
pub const LOG_START_FILE: &str = "log-start-offset";

pub const INDEX_MAGIC: [u8; 4] = *b"SLIX";
pub const INDEX_VERSION: u16 = 1;
pub const INDEX_HEADER_BYTES: usize = 44;
pub const INDEX_ENTRY_BYTES: usize = 16;
pub const CHECKSUM_BYTES: usize = 4;

pub const ACTIVE_INDEX_SUFFIX: &str = ".active-index";
pub const CLEANED_TO_FILE: &str = "cleaned-to-offset";
pub const CLEANED_SUFFIX: &str = ".cleaned";
pub const SWAP_SUFFIX: &str = ".swap";
pub const CLEANED_TO_MAGIC: [u8; 4] = *b"SLCL";

pub const LOG_START_MAGIC: [u8; 4] = *b"SLSO";
pub const LOG_START_VERSION: u16 = 1;
pub const LOG_START_FILE_BYTES: usize = 20;

pub fn segment_file_name(base: Offset) -> String {
    format!("{:020}{SEGMENT_SUFFIX}", base.0)
}

pub fn index_file_name(base: Offset) -> String {
    format!("{:020}{INDEX_SUFFIX}", base.0)
}

/// The base offset named by a segment file name, or `None` if the name is not one.
pub fn parse_segment_file_name(name: &str) -> Option<Offset> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<i64>().ok().map(Offset)
}

/// The checkpointed index of the active segment: how much of it a restart need not scan.
pub fn active_index_file_name(base: Offset) -> String {
    format!("{:020}{ACTIVE_INDEX_SUFFIX}", base.0)
}

pub fn cleaned_file_name(first: Offset) -> String {
    format!("{:020}{CLEANED_SUFFIX}", first.0)
}

/// The index of a compacted replacement, written before its swap commits.
pub fn cleaned_index_file_name(first: Offset) -> String {
    format!("{:020}{INDEX_SUFFIX}{CLEANED_SUFFIX}", first.0)
}

pub fn swap_file_name(first: Offset, end: Offset) -> String {
    format!("{:020}-{:020}{SWAP_SUFFIX}", first.0, end.0)
}

/// The `[first, end)` range of segments a swap file replaces, or `None` if the name is not one.
pub fn parse_swap_file_name(name: &str) -> Option<(Offset, Offset)> {
    let stem = name.strip_suffix(SWAP_SUFFIX)?;
    let (first, end) = stem.split_once('-')?;
    let parse = |digits: &str| {
        (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| digits.parse::<i64>().ok().map(Offset))
            .flatten()
    };
    let (first, end) = (parse(first)?, parse(end)?);
    (first < end).then_some((first, end))
}

/// One sparse-index entry: the batch starting at `position` has base offset
/// `segment_base + relative_offset`, and every batch before it in the segment has a max timestamp
/// below or equal to `max_timestamp_before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub relative_offset: u32,
    pub position: u32,
    pub max_timestamp_before: TimestampMs,
}

/// What a sealed segment's index file records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexFile {
    pub base_offset: Offset,
    pub next_offset: Offset,
    pub segment_bytes: u64,
    pub max_timestamp: TimestampMs,
    pub entries: Vec<IndexEntry>,
}

/// Why an index or checkpoint file was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("file is {0} bytes, too short")]
    TooShort(usize),
    #[error("bad magic")]
    BadMagic,
    #[error("unsupported version {0}")]
    BadVersion(u16),
    #[error("checksum mismatch")]
    BadChecksum,
    #[error("entry count {0} does not fit the file")]
    BadCount(u32),
}

fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn get_i64(b: &[u8], at: usize) -> i64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(x)
}

impl IndexFile {
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(INDEX_HEADER_BYTES + self.entries.len() * INDEX_ENTRY_BYTES + 4);
        out.extend_from_slice(&INDEX_MAGIC);
        out.extend_from_slice(&INDEX_VERSION.to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
        out.extend_from_slice(&self.base_offset.0.to_be_bytes());
        out.extend_from_slice(&self.next_offset.0.to_be_bytes());
        out.extend_from_slice(&self.segment_bytes.to_be_bytes());
        out.extend_from_slice(&self.max_timestamp.to_be_bytes());
        out.extend_from_slice(&(self.entries.len() as u32).to_be_bytes());
        for e in &self.entries {
            out.extend_from_slice(&e.relative_offset.to_be_bytes());
            out.extend_from_slice(&e.position.to_be_bytes());
            out.extend_from_slice(&e.max_timestamp_before.to_be_bytes());
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// Decodes an index file. Bytes after the checksum are ignored.
    pub fn decode(b: &[u8]) -> Result<IndexFile, FormatError> {
        if b.len() < INDEX_HEADER_BYTES + CHECKSUM_BYTES {
            return Err(FormatError::TooShort(b.len()));
        }
        if b[..4] != INDEX_MAGIC {
            return Err(FormatError::BadMagic);
        }
        let version = get_u16(b, 4);
        if version != INDEX_VERSION {
            return Err(FormatError::BadVersion(version));
        }
        let count = get_u32(b, 40);
        let body = INDEX_HEADER_BYTES
            .checked_add(
                (count as usize)
                    .checked_mul(INDEX_ENTRY_BYTES)
                    .ok_or(FormatError::BadCount(count))?,
            )
            .ok_or(FormatError::BadCount(count))?;
        if b.len() < body + CHECKSUM_BYTES {
            return Err(FormatError::BadCount(count));
        }
        if crc32c::crc32c(&b[..body]) != get_u32(b, body) {
            return Err(FormatError::BadChecksum);
        }
        let entries = (0..count as usize)
            .map(|i| {
                let at = INDEX_HEADER_BYTES + i * INDEX_ENTRY_BYTES;
                IndexEntry {
                    relative_offset: get_u32(b, at),
                    position: get_u32(b, at + 4),
                    max_timestamp_before: get_i64(b, at + 8),
                }
            })
            .collect();
        Ok(IndexFile {
            base_offset: Offset(get_i64(b, 8)),
            next_offset: Offset(get_i64(b, 16)),
            segment_bytes: get_i64(b, 24) as u64,
            max_timestamp: get_i64(b, 32),
            entries,
        })
    }
}

pub fn encode_log_start(offset: Offset) -> Vec<u8> {
    encode_checkpoint(LOG_START_MAGIC, offset)
}

pub fn decode_log_start(b: &[u8]) -> Result<Offset, FormatError> {
    decode_checkpoint(LOG_START_MAGIC, b)
}

pub fn encode_cleaned_to(offset: Offset) -> Vec<u8> {
    encode_checkpoint(CLEANED_TO_MAGIC, offset)
}

pub fn decode_cleaned_to(b: &[u8]) -> Result<Offset, FormatError> {
    decode_checkpoint(CLEANED_TO_MAGIC, b)
}

/// An offset checkpoint file: magic, version, reserved, offset, CRC-32C of what precedes it.
fn encode_checkpoint(magic: [u8; 4], offset: Offset) -> Vec<u8> {
    let mut out = Vec::with_capacity(LOG_START_FILE_BYTES);
    out.extend_from_slice(&magic);
    out.extend_from_slice(&LOG_START_VERSION.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&offset.0.to_be_bytes());
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

fn decode_checkpoint(magic: [u8; 4], b: &[u8]) -> Result<Offset, FormatError> {
    if b.len() < LOG_START_FILE_BYTES {
        return Err(FormatError::TooShort(b.len()));
    }
    if b[..4] != magic {
        return Err(FormatError::BadMagic);
    }
    let version = get_u16(b, 4);
    if version != LOG_START_VERSION {
        return Err(FormatError::BadVersion(version));
    }
    if crc32c::crc32c(&b[..16]) != get_u32(b, 16) {
        return Err(FormatError::BadChecksum);
    }
    Ok(Offset(get_i64(b, 8)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_names_round_trip_and_refuse_lookalikes() {
        let name = swap_file_name(Offset(42), Offset(4711));
        assert_eq!(name, "00000000000000000042-00000000000000004711.swap");
        assert_eq!(
            parse_swap_file_name(&name),
            Some((Offset(42), Offset(4711)))
        );
        assert_eq!(parse_swap_file_name("00000000000000000042.swap"), None);
        assert_eq!(
            parse_swap_file_name("00000000000000004711-00000000000000000042.swap"),
            None
        );
        assert_eq!(parse_segment_file_name(&name), None);
        assert_eq!(parse_segment_file_name(&cleaned_file_name(Offset(7))), None);
        let checkpoint = encode_cleaned_to(Offset(99));
        assert_eq!(decode_cleaned_to(&checkpoint), Ok(Offset(99)));
        assert_eq!(decode_log_start(&checkpoint), Err(FormatError::BadMagic));
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(segment_file_name(Offset(42)), "00000000000000000042.log");
        assert_eq!(
            parse_segment_file_name("00000000000000000042.log"),
            Some(Offset(42))
        );
        assert_eq!(parse_segment_file_name("42.log"), None);
        assert_eq!(parse_segment_file_name("00000000000000000042.index"), None);
        assert_eq!(parse_segment_file_name("0000000000000000004x.log"), None);
    }

    #[test]
    fn index_round_trips_and_rejects_damage() {
        let f = IndexFile {
            base_offset: Offset(100),
            next_offset: Offset(250),
            segment_bytes: 123_456,
            max_timestamp: 99,
            entries: vec![
                IndexEntry {
                    relative_offset: 0,
                    position: 0,
                    max_timestamp_before: i64::MIN,
                },
                IndexEntry {
                    relative_offset: 70,
                    position: 40_000,
                    max_timestamp_before: 50,
                },
            ],
        };
        let bytes = f.encode();
        assert_eq!(IndexFile::decode(&bytes).unwrap(), f);
        let mut padded = bytes.clone();
        padded.extend_from_slice(&[0u8; 100]);
        assert_eq!(IndexFile::decode(&padded).unwrap(), f);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(IndexFile::decode(&bad).is_err(), "flip at {i} accepted");
        }
        assert!(IndexFile::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn log_start_round_trips() {
        let b = encode_log_start(Offset(7));
        assert_eq!(decode_log_start(&b), Ok(Offset(7)));
        let mut bad = b.clone();
        bad[10] ^= 4;
        assert_eq!(decode_log_start(&bad), Err(FormatError::BadChecksum));
    }
}
