//! Kafka RecordBatch v2: the header layout, validation, and the two fields the broker stamps.
//!
//! Layout (all integers big-endian; see the Kafka protocol guide, "Record Batch"):
//!
//! ```text
//!  0  baseOffset            i64   stamped by the log
//!  8  batchLength           i32   bytes after this field
//! 12  partitionLeaderEpoch  i32   stamped by the log
//! 16  magic                 i8    must be 2
//! 17  crc                   u32   CRC-32C of bytes 21..end
//! 21  attributes            i16   bits 0-2 compression, 3 timestamp type, 4 transactional, 5 control
//! 23  lastOffsetDelta       i32
//! 27  baseTimestamp         i64
//! 35  maxTimestamp          i64
//! 43  producerId            i64
//! 51  producerEpoch         i16
//! 53  baseSequence          i32
//! 57  recordCount           i32
//! 61  records...
//! ```
//!
//! Invariant: the CRC starts at `attributes`, so stamping `baseOffset` and `partitionLeaderEpoch`
//! never invalidates it. A batch that passes [`validate_batch`] is whole, has magic 2, a matching
//! CRC, a known compression codec and `recordCount <= lastOffsetDelta + 1`; one that passes
//! [`validate_batches`] (what produce appends take) also has `recordCount == lastOffsetDelta + 1`.
//! Fewer records than offsets is the shape log compaction leaves (see [`rebuild_batch`],
//! [`empty_batch`]); [`validate_copied_batches`] takes it (a replica copying another's log).

use crate::types::{LeaderEpoch, Offset, TimestampMs};

/// Bytes of the fixed RecordBatch v2 header, up to the first record.
pub const BATCH_HEADER_BYTES: usize = 61;
/// `baseOffset` + `batchLength`: the part of the header not counted in `batchLength`.
pub const LOG_OVERHEAD_BYTES: usize = 12;
/// Where the CRC-covered range begins (the `attributes` field).
pub const CRC_START: usize = 21;
pub const MAGIC_V2: u8 = 2;

const OFF_BATCH_LENGTH: usize = 8;
const OFF_LEADER_EPOCH: usize = 12;
const OFF_MAGIC: usize = 16;
const OFF_CRC: usize = 17;
const OFF_ATTRIBUTES: usize = 21;
const OFF_LAST_OFFSET_DELTA: usize = 23;
const OFF_BASE_TIMESTAMP: usize = 27;
const OFF_MAX_TIMESTAMP: usize = 35;
const OFF_PRODUCER_ID: usize = 43;
const OFF_PRODUCER_EPOCH: usize = 51;
const OFF_BASE_SEQUENCE: usize = 53;
const OFF_RECORD_COUNT: usize = 57;

const COMPRESSION_MASK: i16 = 0x07;
const COMPRESSION_CODEC_MAX: i16 = 4; // none, gzip, snappy, lz4, zstd

/// Why a batch was refused. Every variant says which rule of the format was broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    #[error("batch truncated: {available} bytes available, header needs {BATCH_HEADER_BYTES}")]
    ShortHeader { available: usize },
    #[error("batchLength {batch_length} is below the v2 minimum of {}", BATCH_HEADER_BYTES - LOG_OVERHEAD_BYTES)]
    LengthTooSmall { batch_length: i32 },
    #[error("batch of {size} bytes exceeds the maximum of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("batch truncated: batchLength says {needed} bytes, {available} available")]
    Truncated { needed: usize, available: usize },
    #[error("unsupported magic {magic} (only RecordBatch v2 is accepted)")]
    BadMagic { magic: i8 },
    #[error("CRC-32C mismatch: header says {expected:#010x}, data gives {actual:#010x}")]
    CrcMismatch { expected: u32, actual: u32 },
    #[error("unknown compression codec {codec}")]
    BadCompression { codec: i16 },
    #[error("recordCount {record_count} does not match lastOffsetDelta {last_offset_delta} + 1")]
    RecordCountMismatch {
        record_count: i32,
        last_offset_delta: i32,
    },
    #[error("record {index} is malformed: {reason}")]
    BadRecord { index: i32, reason: &'static str },
}

/// The header fields of a validated batch that the log needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchInfo {
    pub base_offset: Offset,
    /// Whole batch size in bytes, `batchLength + 12`.
    pub size_bytes: usize,
    pub leader_epoch: LeaderEpoch,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: TimestampMs,
    pub max_timestamp: TimestampMs,
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// Sequence number of the first record (idempotent producers), -1 otherwise.
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchInfo {
    /// Offset of the last record in the batch.
    pub fn last_offset(&self) -> Offset {
        self.base_offset.plus(i64::from(self.last_offset_delta))
    }

    /// The offset after this batch.
    pub fn next_offset(&self) -> Offset {
        self.last_offset().plus(1)
    }

    pub fn compression_codec(&self) -> i16 {
        self.attributes & COMPRESSION_MASK
    }

    /// Part of a transaction (attributes bit 4).
    pub fn is_transactional(&self) -> bool {
        self.attributes & 0x10 != 0
    }

    /// A control batch (transaction markers; attributes bit 5).
    pub fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }

    /// Every offset of the batch's range holds a record: true of every batch as produced; a
    /// batch the compactor rewrote may hold fewer.
    pub fn is_full(&self) -> bool {
        i64::from(self.record_count) == i64::from(self.last_offset_delta) + 1
    }

    /// Sequence number of the last record: Kafka's sequences wrap from i32::MAX to 0.
    pub fn last_sequence(&self) -> i32 {
        next_sequence(self.base_sequence, self.last_offset_delta)
    }
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(x)
}

/// Reads the total size of the batch starting at `buf[0]` from its header, checking only that the
/// header is there and the length is plausible. Used to step over batches before validating them.
pub fn peek_batch_size(buf: &[u8], batch_bytes_max: usize) -> Result<usize, BatchError> {
    if buf.len() < BATCH_HEADER_BYTES {
        return Err(BatchError::ShortHeader {
            available: buf.len(),
        });
    }
    let batch_length = be_i32(buf, OFF_BATCH_LENGTH);
    if batch_length < (BATCH_HEADER_BYTES - LOG_OVERHEAD_BYTES) as i32 {
        return Err(BatchError::LengthTooSmall { batch_length });
    }
    let size = batch_length as usize + LOG_OVERHEAD_BYTES;
    if size > batch_bytes_max {
        return Err(BatchError::TooLarge {
            size,
            max: batch_bytes_max,
        });
    }
    Ok(size)
}

/// The base and last offsets in the header at the start of `buf` (at least
/// [`BATCH_HEADER_BYTES`] long), without validating the batch: for stepping over batches.
pub fn batch_offsets(buf: &[u8]) -> (Offset, Offset) {
    let base = be_i64(buf, 0);
    (
        Offset(base),
        Offset(base + i64::from(be_i32(buf, OFF_LAST_OFFSET_DELTA))),
    )
}

/// Validates the batch at the start of `buf` (which may hold more bytes after it) and returns its
/// header. Checks length, magic, CRC-32C, codec and record count; never reads past `buf`.
pub fn validate_batch(buf: &[u8], batch_bytes_max: usize) -> Result<BatchInfo, BatchError> {
    let size = whole_v2_batch(buf, batch_bytes_max)?;
    let expected = be_u32(buf, OFF_CRC);
    let actual = crc32c::crc32c(&buf[CRC_START..size]);
    if expected != actual {
        return Err(BatchError::CrcMismatch { expected, actual });
    }
    header_fields(buf, size)
}

/// [`validate_batch`] without the CRC: the header's structure only (size, magic, codec, record
/// count). For a batch whose CRC was already checked on its way in, where only its fields are
/// needed (a produced batch is checked on the connection's shard and again by the log as it
/// appends; the layers between read it with this).
pub fn read_header(buf: &[u8], batch_bytes_max: usize) -> Result<BatchInfo, BatchError> {
    let size = whole_v2_batch(buf, batch_bytes_max)?;
    header_fields(buf, size)
}

/// The size of the v2 batch at the start of `buf`, once it is known to be all there.
fn whole_v2_batch(buf: &[u8], batch_bytes_max: usize) -> Result<usize, BatchError> {
    let size = peek_batch_size(buf, batch_bytes_max)?;
    if buf.len() < size {
        return Err(BatchError::Truncated {
            needed: size,
            available: buf.len(),
        });
    }
    let magic = buf[OFF_MAGIC] as i8;
    if magic != MAGIC_V2 as i8 {
        return Err(BatchError::BadMagic { magic });
    }
    Ok(size)
}

/// Codec and record-count checks, then the header's fields.
fn header_fields(buf: &[u8], size: usize) -> Result<BatchInfo, BatchError> {
    let attributes = be_i16(buf, OFF_ATTRIBUTES);
    let codec = attributes & COMPRESSION_MASK;
    if codec > COMPRESSION_CODEC_MAX {
        return Err(BatchError::BadCompression { codec });
    }
    let last_offset_delta = be_i32(buf, OFF_LAST_OFFSET_DELTA);
    let record_count = be_i32(buf, OFF_RECORD_COUNT);
    // A batch as produced holds every offset of its range (`record_count == last_offset_delta
    // + 1`, which appends insist on); one the compactor rewrote keeps its range and fewer
    // records, down to none (kept for its producer's sequence, as Kafka's cleaner does).
    if record_count < 0 || last_offset_delta < 0 || record_count > last_offset_delta + 1 {
        return Err(BatchError::RecordCountMismatch {
            record_count,
            last_offset_delta,
        });
    }
    Ok(BatchInfo {
        base_offset: Offset(be_i64(buf, 0)),
        size_bytes: size,
        leader_epoch: LeaderEpoch(be_i32(buf, OFF_LEADER_EPOCH)),
        attributes,
        last_offset_delta,
        base_timestamp: be_i64(buf, OFF_BASE_TIMESTAMP),
        max_timestamp: be_i64(buf, OFF_MAX_TIMESTAMP),
        producer_id: be_i64(buf, OFF_PRODUCER_ID),
        producer_epoch: be_i16(buf, OFF_PRODUCER_EPOCH),
        base_sequence: be_i32(buf, OFF_BASE_SEQUENCE),
        record_count,
    })
}

/// `sequence + increment`, wrapping past i32::MAX to 0 as Kafka's producer sequences do.
pub fn next_sequence(sequence: i32, increment: i32) -> i32 {
    if sequence > i32::MAX - increment {
        increment - (i32::MAX - sequence) - 1
    } else {
        sequence + increment
    }
}

/// Validates every batch in `buf`, which must consist of whole batches and nothing else, each
/// holding every offset of its range (as produced). Returns their headers in order; the first
/// error refuses the whole buffer.
pub fn validate_batches(buf: &[u8], batch_bytes_max: usize) -> Result<Vec<BatchInfo>, BatchError> {
    validate_each(buf, batch_bytes_max, true)
}

/// Like [`validate_batches`], but a batch may hold fewer records than offsets (down to none):
/// the shape compaction leaves, which a replica copying another replica's log receives (Kafka's
/// follower appends whatever the leader's log holds).
pub fn validate_copied_batches(
    buf: &[u8],
    batch_bytes_max: usize,
) -> Result<Vec<BatchInfo>, BatchError> {
    validate_each(buf, batch_bytes_max, false)
}

fn validate_each(
    buf: &[u8],
    batch_bytes_max: usize,
    full_only: bool,
) -> Result<Vec<BatchInfo>, BatchError> {
    let mut infos = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let info = validate_batch(&buf[pos..], batch_bytes_max)?;
        if full_only && !info.is_full() {
            return Err(BatchError::RecordCountMismatch {
                record_count: info.record_count,
                last_offset_delta: info.last_offset_delta,
            });
        }
        pos += info.size_bytes;
        infos.push(info);
    }
    Ok(infos)
}

/// The first 16 bytes of a batch with `baseOffset` and `partitionLeaderEpoch` replaced; the rest of
/// the batch is unchanged, and so is its CRC.
pub fn stamped_prefix(batch: &[u8], base_offset: Offset, epoch: LeaderEpoch) -> [u8; 16] {
    let mut prefix = [0u8; 16];
    prefix.copy_from_slice(&batch[..16]);
    prefix[..8].copy_from_slice(&base_offset.0.to_be_bytes());
    prefix[OFF_LEADER_EPOCH..16].copy_from_slice(&epoch.0.to_be_bytes());
    prefix
}

/// Reads a zig-zag varint (Kafka's `varint`/`varlong`) at `*pos`, advancing it.
fn read_varlong(buf: &[u8], pos: &mut usize) -> Option<i64> {
    let mut value: u64 = 0;
    for shift in (0..70).step_by(7) {
        let byte = *buf.get(*pos)?;
        *pos += 1;
        if shift == 63 && byte > 1 {
            return None; // overflows 64 bits
        }
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    None
}

/// Walks the records of an uncompressed batch that passed [`validate_batch`] and checks each
/// one's structure: every varint within 5 bytes (varlong within 10), lengths inside the record,
/// the record's fields filling exactly its declared length, offset deltas 0, 1, 2, ..., and the
/// records filling exactly the batch. Compressed batches pass unchecked (their records are
/// opaque until decompressed). Kafka's broker parses records the same way before accepting them;
/// a malformed record would otherwise be stored and break every consumer that reads it.
pub fn validate_records(batch: &[u8], info: &BatchInfo) -> Result<(), BatchError> {
    if info.compression_codec() != 0 {
        return Ok(());
    }
    let end = info.size_bytes.min(batch.len());
    let mut pos = BATCH_HEADER_BYTES;
    for index in 0..info.record_count {
        let bad = |reason| BatchError::BadRecord { index, reason };
        let length = read_varint(batch, &mut pos, 5).ok_or(bad("length varint"))?;
        let length = usize::try_from(length).map_err(|_| bad("negative length"))?;
        let record_end = pos
            .checked_add(length)
            .filter(|e| *e <= end)
            .ok_or(bad("length runs past the batch"))?;
        let record = &batch[..record_end];
        pos += 1; // attributes
        read_varint(record, &mut pos, 10).ok_or(bad("timestampDelta varlong"))?;
        let offset_delta = read_varint(record, &mut pos, 5).ok_or(bad("offsetDelta varint"))?;
        if offset_delta != i64::from(index) {
            return Err(bad("offsetDelta out of sequence"));
        }
        skip_bytes_field(record, &mut pos, true).ok_or(bad("key"))?;
        skip_bytes_field(record, &mut pos, true).ok_or(bad("value"))?;
        let headers = read_varint(record, &mut pos, 5).ok_or(bad("header count varint"))?;
        if headers < 0 {
            return Err(bad("negative header count"));
        }
        for _ in 0..headers {
            skip_bytes_field(record, &mut pos, false).ok_or(bad("header key"))?;
            skip_bytes_field(record, &mut pos, true).ok_or(bad("header value"))?;
        }
        if pos != record_end {
            return Err(bad("fields do not fill the record's length"));
        }
    }
    if pos != end {
        return Err(BatchError::BadRecord {
            index: info.record_count,
            reason: "bytes follow the last record",
        });
    }
    Ok(())
}

/// For an uncompressed batch that passed [`validate_records`]: the indexes of its records
/// without a key (a compacted topic refuses them). Empty for compressed batches (the caller
/// checks their decompressed records).
pub fn keyless_records(batch: &[u8], info: &BatchInfo) -> Vec<i32> {
    let mut keyless = Vec::new();
    if info.compression_codec() != 0 {
        return keyless;
    }
    let mut pos = BATCH_HEADER_BYTES;
    for index in 0..info.record_count {
        let (Some(length), start) = (read_varint(batch, &mut pos, 5), pos) else {
            break;
        };
        let mut at = start + 1; // attributes
        let fields = read_varint(batch, &mut at, 10) // timestamp delta
            .and_then(|_| read_varint(batch, &mut at, 5)) // offset delta
            .and_then(|_| read_varint(batch, &mut at, 5)); // key length
        if fields == Some(-1) {
            keyless.push(index);
        }
        pos = start + usize::try_from(length).unwrap_or(0);
    }
    keyless
}

/// A zigzag varint of at most `max_bytes` bytes.
fn read_varint(buf: &[u8], pos: &mut usize, max_bytes: usize) -> Option<i64> {
    let mut value: u64 = 0;
    for i in 0..max_bytes {
        let byte = *buf.get(*pos)?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            if max_bytes == 5 && value > u64::from(u32::MAX) {
                return None;
            }
            return Some(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    None
}

/// Skips a varint length and that many bytes (-1: null, when `nullable`).
fn skip_bytes_field(buf: &[u8], pos: &mut usize, nullable: bool) -> Option<()> {
    let length = read_varint(buf, pos, 5)?;
    if length == -1 && nullable {
        return Some(());
    }
    let length = usize::try_from(length).ok()?;
    *pos = pos.checked_add(length).filter(|e| *e <= buf.len())?;
    Some(())
}

/// For an uncompressed batch that passed [`validate_records`]: every record's timestamp, in
/// order. Empty for compressed batches (the caller checks their decompressed records).
pub fn record_timestamps(batch: &[u8], info: &BatchInfo) -> Vec<TimestampMs> {
    let mut timestamps = Vec::new();
    if info.compression_codec() != 0 {
        return timestamps;
    }
    let mut pos = BATCH_HEADER_BYTES;
    for _ in 0..info.record_count {
        let (Some(length), start) = (read_varint(batch, &mut pos, 5), pos) else {
            break;
        };
        let mut at = start + 1; // attributes
        let Some(delta) = read_varint(batch, &mut at, 10) else {
            break;
        };
        timestamps.push(info.base_timestamp.saturating_add(delta));
        pos = start + usize::try_from(length).unwrap_or(0);
    }
    timestamps
}

/// For an uncompressed, validated batch: the offset of its first record whose timestamp is at
/// least `target`. Returns `None` when no record qualifies, or when the batch is compressed (the
/// records are then opaque here, and the caller falls back to the batch's base offset).
pub fn first_record_at_or_after(
    batch: &[u8],
    info: &BatchInfo,
    target: TimestampMs,
) -> Option<Offset> {
    if info.compression_codec() != 0 {
        return None;
    }
    let mut pos = BATCH_HEADER_BYTES;
    let end = info.size_bytes.min(batch.len());
    for _ in 0..info.record_count {
        let length = read_varlong(batch, &mut pos)?;
        let record_start = pos;
        let _attributes = *batch.get(pos)?;
        pos += 1;
        let timestamp_delta = read_varlong(batch, &mut pos)?;
        let offset_delta = read_varlong(batch, &mut pos)?;
        if info.base_timestamp.saturating_add(timestamp_delta) >= target {
            return Some(info.base_offset.plus(offset_delta));
        }
        pos = record_start.checked_add(usize::try_from(length).ok()?)?;
        if pos > end {
            return None;
        }
    }
    None
}

/// Builds a valid uncompressed RecordBatch v2 from `(timestamp, key, value)` records, for tests,
/// benchmarks and tools. Production batches come from clients; this exists so the storage crate
/// can be exercised without a Kafka client.
pub fn build_batch(
    base_timestamp: TimestampMs,
    records: &[(TimestampMs, &[u8], &[u8])],
) -> Vec<u8> {
    let nullable: Vec<NullableRecord> = records
        .iter()
        .map(|(ts, key, value)| (*ts, Some(*key), Some(*value)))
        .collect();
    build_batch_nullable(base_timestamp, &nullable)
}

/// A record for [`build_batch_nullable`]: timestamp, key, value (`None`: null).
pub type NullableRecord<'a> = (TimestampMs, Option<&'a [u8]>, Option<&'a [u8]>);

/// [`build_batch`] with null keys and values allowed: a null value is a tombstone (the group
/// coordinator writes them), a null key what a compacted topic refuses.
pub fn build_batch_nullable(base_timestamp: TimestampMs, records: &[NullableRecord]) -> Vec<u8> {
    fn put_varlong(out: &mut Vec<u8>, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        loop {
            if z < 0x80 {
                out.push(z as u8);
                return;
            }
            out.push((z as u8 & 0x7f) | 0x80);
            z >>= 7;
        }
    }
    assert!(!records.is_empty(), "a batch holds at least one record");
    let mut body = Vec::new();
    let mut max_timestamp = base_timestamp;
    fn put_nullable(out: &mut Vec<u8>, field: Option<&[u8]>) {
        match field {
            Some(bytes) => {
                put_varlong(out, bytes.len() as i64);
                out.extend_from_slice(bytes);
            }
            None => put_varlong(out, -1),
        }
    }
    for (delta, (ts, key, value)) in records.iter().enumerate() {
        max_timestamp = max_timestamp.max(*ts);
        let mut rec =
            Vec::with_capacity(key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len) + 16);
        rec.push(0); // attributes
        put_varlong(&mut rec, ts - base_timestamp);
        put_varlong(&mut rec, delta as i64);
        put_nullable(&mut rec, *key);
        put_nullable(&mut rec, *value);
        put_varlong(&mut rec, 0); // no headers
        put_varlong(&mut body, rec.len() as i64);
        body.extend_from_slice(&rec);
    }
    let mut b = Vec::with_capacity(BATCH_HEADER_BYTES + body.len());
    b.extend_from_slice(&0i64.to_be_bytes());
    b.extend_from_slice(
        &((BATCH_HEADER_BYTES - LOG_OVERHEAD_BYTES + body.len()) as i32).to_be_bytes(),
    );
    b.extend_from_slice(&0i32.to_be_bytes()); // partitionLeaderEpoch
    b.push(MAGIC_V2);
    b.extend_from_slice(&0u32.to_be_bytes()); // crc, filled below
    b.extend_from_slice(&0i16.to_be_bytes()); // attributes
    b.extend_from_slice(&((records.len() - 1) as i32).to_be_bytes());
    b.extend_from_slice(&base_timestamp.to_be_bytes());
    b.extend_from_slice(&max_timestamp.to_be_bytes());
    b.extend_from_slice(&(-1i64).to_be_bytes()); // producerId
    b.extend_from_slice(&(-1i16).to_be_bytes()); // producerEpoch
    b.extend_from_slice(&(-1i32).to_be_bytes()); // baseSequence
    b.extend_from_slice(&(records.len() as i32).to_be_bytes());
    b.extend_from_slice(&body);
    let crc = crc32c::crc32c(&b[CRC_START..]);
    b[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_be_bytes());
    b
}

/// Attributes bit 5: a control batch (transaction markers; Raft's own entries).
const ATTRIBUTE_CONTROL: i16 = 1 << 5;

/// A control batch of one record, as Kafka writes them: the record key is the control key
/// (version 0, then `control_type`), the value `value`. Consumers skip control batches; the
/// replication layer stores Raft's own entries (a new leader's empty entry, configuration
/// changes) this way so every Raft index is a batch at a known offset.
pub fn build_control_batch(timestamp: TimestampMs, control_type: i16, value: &[u8]) -> Vec<u8> {
    let mut key = [0u8; 4];
    key[2..].copy_from_slice(&control_type.to_be_bytes());
    let mut batch = build_batch(timestamp, &[(timestamp, &key, value)]);
    let attributes = be_i16(&batch, OFF_ATTRIBUTES) | ATTRIBUTE_CONTROL;
    batch[OFF_ATTRIBUTES..OFF_ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
    let crc = crc32c::crc32c(&batch[CRC_START..]);
    batch[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_be_bytes());
    batch
}

/// The control type and value of a control batch's first record (`None`: not a control batch,
/// compressed, or not shaped as one).
pub fn control_record(batch: &[u8]) -> Option<(i16, &[u8])> {
    if batch.len() <= BATCH_HEADER_BYTES
        || be_i16(batch, OFF_ATTRIBUTES) & ATTRIBUTE_CONTROL == 0
        || be_i16(batch, OFF_ATTRIBUTES) & 0x07 != 0
    {
        return None;
    }
    let records = &batch[BATCH_HEADER_BYTES..];
    let mut pos = 0usize;
    let length = usize::try_from(read_varint(records, &mut pos, 5)?).ok()?;
    let record = records.get(..pos.checked_add(length)?)?;
    pos += 1; // attributes
    read_varint(record, &mut pos, 10)?; // timestampDelta
    read_varint(record, &mut pos, 5)?; // offsetDelta
    let key_length = usize::try_from(read_varint(record, &mut pos, 5)?).ok()?;
    let key = record.get(pos..pos.checked_add(key_length)?)?;
    pos += key_length;
    if key.len() < 4 {
        return None;
    }
    let control_type = i16::from_be_bytes([key[2], key[3]]);
    let value_length = usize::try_from(read_varint(record, &mut pos, 5)?).ok()?;
    let value = record.get(pos..pos.checked_add(value_length)?)?;
    Some((control_type, value))
}

/// Attributes bit 4: a transactional batch (its records belong to a transaction of its
/// producer, or it is that transaction's marker).
const ATTRIBUTE_TRANSACTIONAL: i16 = 1 << 4;

/// Control types of transaction markers (Kafka's `ControlRecordType`).
pub const CONTROL_ABORT: i16 = 0;
pub const CONTROL_COMMIT: i16 = 1;

/// A transaction marker: the end of a producer's transaction on one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnMarker {
    pub commit: bool,
    /// The epoch of the coordinator that wrote it (a marker from an older coordinator is
    /// refused: that coordinator was replaced).
    pub coordinator_epoch: i32,
}

/// A transaction marker batch as Kafka writes it: one control record (key: version 0 and the
/// control type; value: `EndTxnMarker`, version 0 and the coordinator epoch) in a batch flagged
/// control and transactional, carrying the producer's id and epoch and no sequence.
pub fn build_txn_marker(
    timestamp: TimestampMs,
    producer_id: i64,
    producer_epoch: i16,
    marker: TxnMarker,
) -> Vec<u8> {
    let control_type = if marker.commit {
        CONTROL_COMMIT
    } else {
        CONTROL_ABORT
    };
    let mut value = [0u8; 6];
    value[2..].copy_from_slice(&marker.coordinator_epoch.to_be_bytes());
    let mut batch = build_control_batch(timestamp, control_type, &value);
    let attributes = be_i16(&batch, OFF_ATTRIBUTES) | ATTRIBUTE_TRANSACTIONAL;
    batch[OFF_ATTRIBUTES..OFF_ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
    batch[OFF_PRODUCER_ID..OFF_PRODUCER_ID + 8].copy_from_slice(&producer_id.to_be_bytes());
    batch[OFF_PRODUCER_EPOCH..OFF_PRODUCER_EPOCH + 2]
        .copy_from_slice(&producer_epoch.to_be_bytes());
    let crc = crc32c::crc32c(&batch[CRC_START..]);
    batch[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_be_bytes());
    batch
}

/// Makes `batch` (a data batch) producer `(producer_id, producer_epoch)`'s transactional batch
/// without a sequence (-1), as Kafka's coordinators write theirs (TxnOffsetCommit's offsets);
/// its CRC is computed again.
pub fn set_transactional_producer(batch: &mut [u8], producer_id: i64, producer_epoch: i16) {
    let attributes = be_i16(batch, OFF_ATTRIBUTES) | ATTRIBUTE_TRANSACTIONAL;
    batch[OFF_ATTRIBUTES..OFF_ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
    batch[OFF_PRODUCER_ID..OFF_PRODUCER_ID + 8].copy_from_slice(&producer_id.to_be_bytes());
    batch[OFF_PRODUCER_EPOCH..OFF_PRODUCER_EPOCH + 2]
        .copy_from_slice(&producer_epoch.to_be_bytes());
    batch[OFF_BASE_SEQUENCE..OFF_BASE_SEQUENCE + 4].copy_from_slice(&(-1i32).to_be_bytes());
    let crc = crc32c::crc32c(&batch[CRC_START..]);
    batch[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_be_bytes());
}

/// The transaction marker a batch holds (`None`: not a marker of a transactional producer, or
/// not shaped as one).
pub fn txn_marker(batch: &[u8]) -> Option<TxnMarker> {
    // `control_record` checks the length before the attributes are read.
    let (control_type, value) = control_record(batch)?;
    if be_i16(batch, OFF_ATTRIBUTES) & ATTRIBUTE_TRANSACTIONAL == 0 {
        return None;
    }
    let commit = match control_type {
        CONTROL_ABORT => false,
        CONTROL_COMMIT => true,
        _ => return None,
    };
    let coordinator_epoch = i32::from_be_bytes(value.get(2..6)?.try_into().ok()?);
    Some(TxnMarker {
        commit,
        coordinator_epoch,
    })
}

/// One record of a batch's (uncompressed) records section, as stored: `bytes` is the whole
/// record including its length varint, so a kept record is copied as is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub bytes: &'a [u8],
    pub timestamp_delta: i64,
    pub offset_delta: i32,
    pub key: Option<&'a [u8]>,
    /// A null value: a tombstone on a compacted topic.
    pub value_is_null: bool,
    /// The value (`None` when null, or when the record is too short to hold it).
    pub value: Option<&'a [u8]>,
}

/// The records of an uncompressed records section (a batch's bytes after its 61-byte header, or
/// a compressed batch's records once decompressed), checked for structure as they are read: a
/// malformed record ends the walk with an error.
pub fn record_views(records: &[u8], record_count: i32) -> Result<Vec<RecordView<'_>>, BatchError> {
    let mut views = Vec::with_capacity(usize::try_from(record_count).unwrap_or(0));
    let mut pos = 0usize;
    for index in 0..record_count {
        let bad = |reason| BatchError::BadRecord { index, reason };
        let start = pos;
        let length = read_varint(records, &mut pos, 5).ok_or(bad("length varint"))?;
        let length = usize::try_from(length).map_err(|_| bad("negative length"))?;
        let end = pos
            .checked_add(length)
            .filter(|e| *e <= records.len())
            .ok_or(bad("length runs past the batch"))?;
        let record = &records[..end];
        pos += 1; // attributes
        let timestamp_delta =
            read_varint(record, &mut pos, 10).ok_or(bad("timestampDelta varlong"))?;
        let offset_delta = read_varint(record, &mut pos, 5).ok_or(bad("offsetDelta varint"))?;
        let key_length = read_varint(record, &mut pos, 5).ok_or(bad("key length"))?;
        let key = match key_length {
            -1 => None,
            n => {
                let n = usize::try_from(n).map_err(|_| bad("negative key length"))?;
                let key_end = pos.checked_add(n).filter(|e| *e <= end).ok_or(bad("key"))?;
                let key = &record[pos..key_end];
                pos = key_end;
                Some(key)
            }
        };
        let value_length = read_varint(record, &mut pos, 5).ok_or(bad("value length"))?;
        let value = usize::try_from(value_length)
            .ok()
            .and_then(|n| record.get(pos..pos.checked_add(n)?));
        views.push(RecordView {
            bytes: &records[start..end],
            timestamp_delta,
            offset_delta: i32::try_from(offset_delta).map_err(|_| bad("offsetDelta range"))?,
            key,
            value_is_null: value_length == -1,
            value,
        });
        pos = end;
    }
    Ok(views)
}

/// A batch with `original`'s header (base offset, offset range, producer, sequence, attributes,
/// base timestamp) around a new records section holding `record_count` records: batchLength,
/// recordCount, maxTimestamp and the CRC are written anew. Records keep their offset and
/// timestamp deltas, so every kept record keeps its offset and timestamp. (With no records, see
/// [`empty_batch`].)
pub fn rebuild_batch(
    original: &[u8],
    records: &[u8],
    record_count: i32,
    max_timestamp: TimestampMs,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(BATCH_HEADER_BYTES + records.len());
    out.extend_from_slice(&original[..BATCH_HEADER_BYTES]);
    out.extend_from_slice(records);
    let batch_length = i32::try_from(out.len() - LOG_OVERHEAD_BYTES).expect("a batch fits i32");
    out[OFF_BATCH_LENGTH..OFF_BATCH_LENGTH + 4].copy_from_slice(&batch_length.to_be_bytes());
    out[OFF_MAX_TIMESTAMP..OFF_MAX_TIMESTAMP + 8].copy_from_slice(&max_timestamp.to_be_bytes());
    out[OFF_RECORD_COUNT..OFF_RECORD_COUNT + 4].copy_from_slice(&record_count.to_be_bytes());
    let crc = crc32c::crc32c(&out[CRC_START..]);
    out[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_be_bytes());
    out
}

/// The empty batch compaction leaves of `original` when none of its records stay but the batch
/// must (an idempotent producer's last sequence; in cluster mode every batch, each one Raft
/// entry): `original`'s header (offset range, producer, sequence, leader epoch, timestamps),
/// no records, and no compression codec, as Kafka's cleaner writes it (`writeEmptyHeader`):
/// there is no records section to decompress.
pub fn empty_batch(original: &[u8]) -> Vec<u8> {
    let max_timestamp = be_i64(original, OFF_MAX_TIMESTAMP);
    let mut out = rebuild_batch(original, &[], 0, max_timestamp);
    let attributes = be_i16(&out, OFF_ATTRIBUTES) & !COMPRESSION_MASK;
    out[OFF_ATTRIBUTES..OFF_ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
    let crc = crc32c::crc32c(&out[CRC_START..]);
    out[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn record_timestamps_are_read_in_order() {
        let b = build_batch(
            1000,
            &[(1000, b"a", b"1"), (1005, b"b", b"2"), (990, b"c", b"3")],
        );
        let info = validate_batch(&b, usize::MAX).unwrap();
        assert_eq!(record_timestamps(&b, &info), [1000, 1005, 990]);
    }

    #[test]
    fn keyless_records_are_found_by_index() {
        let out = build_batch_nullable(
            0,
            &[
                (0, Some(b"k"), Some(b"v")),
                (0, None, Some(b"v")),
                (0, Some(b""), Some(b"v")),
                (0, None, None),
            ],
        );
        let info = validate_batch(&out, usize::MAX).unwrap();
        validate_records(&out, &info).unwrap();
        assert_eq!(keyless_records(&out, &info), [1, 3]);
        let keyed = build_batch(0, &[(0, b"a", b"1"), (0, b"b", b"2")]);
        let info = validate_batch(&keyed, usize::MAX).unwrap();
        assert!(keyless_records(&keyed, &info).is_empty());
    }

    use super::*;

    const MAX: usize = 1 << 20;

    fn sample() -> Vec<u8> {
        build_batch(
            1000,
            &[
                (1000, b"k1", b"v1"),
                (1005, b"k2", b"value-2"),
                (1003, b"", b"x"),
            ],
        )
    }

    /// `batch` with its CRC recomputed, so only the record-level damage remains.
    fn with_fixed_crc(mut batch: Vec<u8>) -> Vec<u8> {
        let crc = crc32c::crc32c(&batch[CRC_START..]);
        batch[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_be_bytes());
        batch
    }

    #[test]
    fn read_header_skips_only_the_crc() {
        let good = sample();
        assert_eq!(
            read_header(&good, MAX).unwrap(),
            validate_batch(&good, MAX).unwrap()
        );
        let mut damaged = good.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 0x40;
        assert!(matches!(
            validate_batch(&damaged, MAX),
            Err(BatchError::CrcMismatch { .. })
        ));
        assert_eq!(read_header(&damaged, MAX).unwrap().record_count, 3);
        // Everything else is still checked.
        let mut bad_magic = good.clone();
        bad_magic[OFF_MAGIC] = 1;
        assert!(matches!(
            read_header(&bad_magic, MAX),
            Err(BatchError::BadMagic { .. })
        ));
        assert!(matches!(
            read_header(&good[..good.len() - 1], MAX),
            Err(BatchError::Truncated { .. })
        ));
        let mut bad_codec = good.clone();
        bad_codec[OFF_ATTRIBUTES + 1] |= 0x07;
        assert!(matches!(
            read_header(&bad_codec, MAX),
            Err(BatchError::BadCompression { .. })
        ));
    }

    #[test]
    fn records_are_walked_and_malformed_ones_refused() {
        let good = sample();
        let info = validate_batch(&good, MAX).unwrap();
        validate_records(&good, &info).unwrap();

        // The first record's length varint (at the first record byte) made endless: an
        // overflowing varint.
        let mut overflow = good.clone();
        overflow.splice(
            BATCH_HEADER_BYTES..BATCH_HEADER_BYTES + 1,
            [0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
        );
        let len = (overflow.len() - LOG_OVERHEAD_BYTES) as i32;
        overflow[OFF_BATCH_LENGTH..OFF_BATCH_LENGTH + 4].copy_from_slice(&len.to_be_bytes());
        let overflow = with_fixed_crc(overflow);
        let info = validate_batch(&overflow, MAX).expect("header and CRC are fine");
        assert!(matches!(
            validate_records(&overflow, &info),
            Err(BatchError::BadRecord { index: 0, .. })
        ));

        // The key length of the first record pointing past the record.
        let mut long_key = good.clone();
        // record: length(1) attributes(1) tsDelta(1) offsetDelta(1) keyLength(1)
        long_key[BATCH_HEADER_BYTES + 4] = 0x7e; // zigzag 63
        let long_key = with_fixed_crc(long_key);
        let info = validate_batch(&long_key, MAX).unwrap();
        assert!(matches!(
            validate_records(&long_key, &info),
            Err(BatchError::BadRecord { index: 0, .. })
        ));
    }

    #[test]
    fn sequences_wrap_like_kafkas() {
        assert_eq!(next_sequence(0, 4), 4);
        assert_eq!(next_sequence(i32::MAX - 1, 1), i32::MAX);
        assert_eq!(next_sequence(i32::MAX, 1), 0);
        assert_eq!(next_sequence(i32::MAX - 1, 3), 1);
    }

    #[test]
    fn built_batch_validates() {
        let b = sample();
        let info = validate_batch(&b, MAX).unwrap();
        assert_eq!(info.size_bytes, b.len());
        assert_eq!(info.record_count, 3);
        assert_eq!(info.last_offset_delta, 2);
        assert_eq!(info.max_timestamp, 1005);
    }

    #[test]
    fn stamping_keeps_crc_valid() {
        let mut b = sample();
        let prefix = stamped_prefix(&b, Offset(42), LeaderEpoch(7));
        b[..16].copy_from_slice(&prefix);
        let info = validate_batch(&b, MAX).unwrap();
        assert_eq!(info.base_offset, Offset(42));
        assert_eq!(info.leader_epoch, LeaderEpoch(7));
        assert_eq!(info.last_offset(), Offset(44));
    }

    #[test]
    fn every_broken_rule_has_its_error() {
        let good = sample();
        assert!(matches!(
            validate_batch(&good[..30], MAX),
            Err(BatchError::ShortHeader { available: 30 })
        ));
        assert!(matches!(
            validate_batch(&good[..good.len() - 1], MAX),
            Err(BatchError::Truncated { .. })
        ));
        assert!(matches!(
            validate_batch(&good, 10),
            Err(BatchError::TooLarge { .. })
        ));

        let mut bad = good.clone();
        bad[8..12].copy_from_slice(&10i32.to_be_bytes());
        assert!(matches!(
            validate_batch(&bad, MAX),
            Err(BatchError::LengthTooSmall { batch_length: 10 })
        ));
        bad[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(matches!(
            validate_batch(&bad, MAX),
            Err(BatchError::LengthTooSmall { .. })
        ));

        let mut bad = good.clone();
        bad[16] = 1;
        assert!(matches!(
            validate_batch(&bad, MAX),
            Err(BatchError::BadMagic { magic: 1 })
        ));

        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x40;
        assert!(matches!(
            validate_batch(&bad, MAX),
            Err(BatchError::CrcMismatch { .. })
        ));

        // Fields inside the CRC range: fix the CRC up so only the rule under test is broken.
        let recrc = |b: &mut Vec<u8>| {
            let crc = crc32c::crc32c(&b[CRC_START..]);
            b[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_be_bytes());
        };
        let mut bad = good.clone();
        bad[22] = 0x06; // codec 6
        recrc(&mut bad);
        assert!(matches!(
            validate_batch(&bad, MAX),
            Err(BatchError::BadCompression { codec: 6 })
        ));

        let mut bad = good.clone();
        bad[OFF_RECORD_COUNT..OFF_RECORD_COUNT + 4].copy_from_slice(&5i32.to_be_bytes());
        recrc(&mut bad);
        assert!(matches!(
            validate_batch(&bad, MAX),
            Err(BatchError::RecordCountMismatch {
                record_count: 5,
                last_offset_delta: 2
            })
        ));
    }

    #[test]
    fn a_rebuilt_batch_keeps_its_range_and_records_and_only_appends_insist_on_full_batches() {
        let original = build_batch_nullable(
            1_000,
            &[
                (1_000, Some(b"a"), Some(b"1")),
                (1_005, Some(b"b"), None),
                (1_009, None, Some(b"3")),
            ],
        );
        let info = validate_batch(&original, MAX).unwrap();
        let views = record_views(&original[BATCH_HEADER_BYTES..], info.record_count).unwrap();
        assert_eq!(views.len(), 3);
        assert_eq!(views[0].key, Some(&b"a"[..]));
        assert!(views[1].value_is_null && !views[0].value_is_null);
        assert_eq!((views[2].key, views[2].offset_delta), (None, 2));
        assert_eq!(views[2].timestamp_delta, 9);

        // Keep the first and the last record: same range, two records, max timestamp anew.
        let kept: Vec<u8> = [views[0].bytes, views[2].bytes].concat();
        let rebuilt = rebuild_batch(&original, &kept, 2, 1_009);
        let r = validate_batch(&rebuilt, MAX).expect("a rebuilt batch is valid");
        assert_eq!(
            (r.base_offset, r.last_offset_delta, r.record_count),
            (info.base_offset, 2, 2)
        );
        assert!(!r.is_full());
        let again = record_views(&rebuilt[BATCH_HEADER_BYTES..], 2).unwrap();
        assert_eq!((again[1].offset_delta, again[1].timestamp_delta), (2, 9));
        assert!(matches!(
            validate_batches(&rebuilt, MAX),
            Err(BatchError::RecordCountMismatch {
                record_count: 2,
                last_offset_delta: 2
            })
        ));
        // No records at all: the empty batch kept for a producer's sequence (or, replicated,
        // for its Raft entry): the whole header but the codec, no records section.
        // (The header says lz4; the empty batch never reads the records section.)
        let mut compressed = original.clone();
        compressed[OFF_ATTRIBUTES..OFF_ATTRIBUTES + 2].copy_from_slice(&3i16.to_be_bytes());
        let crc = crc32c::crc32c(&compressed[CRC_START..]);
        compressed[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_be_bytes());
        let empty = empty_batch(&compressed);
        assert_eq!(empty.len(), BATCH_HEADER_BYTES);
        let e = validate_batch(&empty, MAX).expect("an empty batch is valid");
        let c = validate_batch(&compressed, MAX).unwrap();
        assert_eq!(e.record_count, 0);
        assert_eq!(e.compression_codec(), 0);
        assert_eq!(
            (
                e.base_offset,
                e.last_offset_delta,
                e.max_timestamp,
                e.base_timestamp
            ),
            (
                c.base_offset,
                c.last_offset_delta,
                c.max_timestamp,
                c.base_timestamp
            )
        );
        assert_eq!(
            (
                e.producer_id,
                e.producer_epoch,
                e.base_sequence,
                e.leader_epoch
            ),
            (
                c.producer_id,
                c.producer_epoch,
                c.base_sequence,
                c.leader_epoch
            )
        );
        // Appends from clients refuse it; a replica copying another's log takes it.
        assert!(validate_batches(&empty, MAX).is_err());
        assert_eq!(validate_copied_batches(&empty, MAX).unwrap(), vec![e]);
        // A malformed record is reported, not skipped.
        assert!(record_views(&original[BATCH_HEADER_BYTES..original.len() - 1], 3).is_err());
    }

    #[test]
    fn validate_batches_refuses_trailing_garbage() {
        let mut two = sample();
        two.extend_from_slice(&sample());
        assert_eq!(validate_batches(&two, MAX).unwrap().len(), 2);
        two.extend_from_slice(&[0u8; 5]);
        assert!(validate_batches(&two, MAX).is_err());
    }

    #[test]
    fn timestamp_search_inside_a_batch() {
        let mut b = sample();
        let prefix = stamped_prefix(&b, Offset(100), LeaderEpoch(0));
        b[..16].copy_from_slice(&prefix);
        let info = validate_batch(&b, MAX).unwrap();
        assert_eq!(first_record_at_or_after(&b, &info, 0), Some(Offset(100)));
        assert_eq!(first_record_at_or_after(&b, &info, 1001), Some(Offset(101)));
        assert_eq!(first_record_at_or_after(&b, &info, 1005), Some(Offset(101)));
        assert_eq!(first_record_at_or_after(&b, &info, 1006), None);
    }

    #[test]
    fn a_txn_marker_is_a_valid_transactional_control_batch_of_its_producer() {
        let marker = TxnMarker {
            commit: false,
            coordinator_epoch: 7,
        };
        let batch = build_txn_marker(1_700_000_000_000, 42, 3, marker);
        let info = validate_batch(&batch, 1 << 20).expect("a marker is a valid batch");
        assert!(info.is_control() && info.is_transactional());
        assert_eq!((info.producer_id, info.producer_epoch), (42, 3));
        assert_eq!(info.base_sequence, -1);
        assert_eq!(txn_marker(&batch), Some(marker));
        let commit = TxnMarker {
            commit: true,
            coordinator_epoch: 0,
        };
        assert_eq!(txn_marker(&build_txn_marker(0, 1, 0, commit)), Some(commit));
        // Raft's control batches and data batches are not markers.
        assert_eq!(txn_marker(&build_control_batch(0, 2, b"")), None);
        assert_eq!(txn_marker(&build_batch(0, &[(0, b"k", b"v")])), None);
    }

    #[test]
    fn a_control_batch_is_valid_flagged_and_gives_back_its_type_and_value() {
        let batch = build_control_batch(1_700_000_000_000, 2, b"leader change");
        let info = validate_batch(&batch, 1 << 20).unwrap();
        assert!(info.is_control());
        assert_eq!(info.record_count, 1);
        assert_eq!(control_record(&batch), Some((2, &b"leader change"[..])));
        assert_eq!(control_record(&build_batch(0, &[(0, b"k", b"v")])), None);
        assert_eq!(control_record(&batch[..BATCH_HEADER_BYTES + 3]), None);
    }
}
