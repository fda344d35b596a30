//! The write tail of the active segment: appended bytes wait here, in 4 KiB-aligned DMA chunks,
//! until they are written to the file; they stay here, readable, until the write completes.
//!
//! Two kinds of write leave the tail:
//! - *streamed* writes of full (sealed) chunks, started as soon as a chunk fills, several in
//!   flight at once, so the device stays busy while appends keep copying;
//! - the *partial* write of the last, filling chunk, done only when someone needs the data in
//!   the file (durability, roll, truncation): it is copied from the last written 4 KiB boundary
//!   and zero-padded, so the partial tail page is rewritten by the next partial write.
//!
//! Invariants:
//! - chunks are contiguous in the file: chunk `k + 1` starts where chunk `k` ends, and the first
//!   starts at a 4 KiB-aligned position; a chunk's length in memory (its capacity) is a multiple
//!   of 4 KiB between [`CHUNK_BYTES_MIN`] and the configured maximum, chosen when it is created:
//!   a tail that fills chunks quickly gets bigger ones (fewer, larger writes), a slow one small
//!   ones (a slow partition holds little memory);
//! - a chunk is `Sealed` (shared, immutable) exactly when it is full; only the last one fills;
//! - at most one write per chunk is in flight, so two writes never overlap in the file (a
//!   zero-padded partial write racing a full one could otherwise land last);
//! - file bytes `[chunk.file_pos, chunk.written_to)` hold the chunk's data; the file holds all
//!   data below [`WriteTail::written_pos`];
//! - a chunk leaves memory only when it is sealed and completely written, and the chunk after it
//!   is too (the newest written chunk keeps serving reads).

use std::collections::VecDeque;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use glommio::io::{DmaBuffer, DmaFile};

use crate::faults::{self, FaultPoint};
use crate::io::{align_down, align_up};

enum ChunkBuf {
    Filling(DmaBuffer),
    Sealed(Rc<DmaBuffer>),
}

impl ChunkBuf {
    fn bytes(&self) -> &[u8] {
        match self {
            ChunkBuf::Filling(b) => b.as_bytes(),
            ChunkBuf::Sealed(b) => b.as_bytes(),
        }
    }
}

struct Chunk {
    file_pos: u64,
    filled: usize,
    /// When the chunk was started (how fast the tail fills decides the next chunk's size).
    started: std::time::Instant,
    buf: ChunkBuf,
    /// The file holds this chunk's data up to here (absolute file position).
    written_to: u64,
    /// A write of this chunk is in flight.
    in_flight: bool,
}

impl Chunk {
    fn capacity(&self) -> usize {
        self.buf.bytes().len()
    }
    fn data_end(&self) -> u64 {
        self.file_pos + self.filled as u64
    }
    fn is_sealed(&self) -> bool {
        matches!(self.buf, ChunkBuf::Sealed(_))
    }
}

/// One aligned write taken from the tail. Report its outcome with [`WriteTail::complete`] or
/// [`WriteTail::abandon`], passing `chunk_pos` and `data_end`.
pub(crate) struct PlannedWrite {
    /// The chunk it belongs to (its file position).
    pub chunk_pos: u64,
    /// The file holds the chunk's data up to here once the write completes.
    pub data_end: u64,
    pub pos: u64,
    buf: WriteBuf,
}

enum WriteBuf {
    /// A whole sealed chunk, written without a copy.
    Shared(Rc<DmaBuffer>),
    /// Part of a chunk, copied into a buffer of its own and zero-padded.
    Owned(DmaBuffer),
}

impl PlannedWrite {
    pub(crate) fn len(&self) -> usize {
        match &self.buf {
            WriteBuf::Shared(b) => b.len(),
            WriteBuf::Owned(b) => b.len(),
        }
    }

    /// Submits the write (through the [`FaultPoint::DataWrite`] fault point); returns the
    /// bytes written.
    pub(crate) async fn submit(self, file: &DmaFile) -> std::io::Result<usize> {
        faults::inject(FaultPoint::DataWrite).await?;
        let written = match self.buf {
            WriteBuf::Shared(buf) => file.write_rc_at(buf, self.pos).await,
            WriteBuf::Owned(buf) => file.write_at(buf, self.pos).await,
        };
        written.map_err(Into::into)
    }
}

/// Spare chunks kept per tail: allocating (and page-faulting) a fresh DMA buffer per chunk
/// costs more than the copy into it.
const SPARE_CHUNKS_MAX: usize = 4;

/// The smallest chunk, and the size every tail starts with.
pub(crate) const CHUNK_BYTES_MIN: usize = 16 * 1024;
/// A chunk that fills faster than this makes the next one twice as big (up to the maximum).
const FAST_FILL: std::time::Duration = std::time::Duration::from_millis(100);
/// A chunk that takes longer than this to fill makes the next one half as big (down to
/// [`CHUNK_BYTES_MIN`]).
const SLOW_FILL: std::time::Duration = std::time::Duration::from_secs(1);

pub(crate) struct WriteTail {
    /// The largest chunk (`write_chunk_bytes`).
    chunk_bytes_max: usize,
    /// Capacity of the next chunk started.
    next_chunk_bytes: usize,
    chunks: VecDeque<Chunk>,
    end_pos: u64,
    /// File position below which everything was written before the first chunk began.
    base_written: u64,
    spare: Vec<DmaBuffer>,
    /// While parked (no chunks): file bytes `[align_down(end_pos), end_pos)`, which the next
    /// partial write must rewrite with the new bytes after them.
    parked_page: Vec<u8>,
}

impl WriteTail {
    /// A tail for a segment whose data ends at `end_pos`, all of it already in the file.
    /// `tail_page` holds the file bytes `[align_down(end_pos), end_pos)`.
    pub(crate) fn resume(
        file: &DmaFile,
        chunk_bytes_max: usize,
        end_pos: u64,
        tail_page: &[u8],
    ) -> WriteTail {
        let file_pos = align_down(end_pos);
        assert_eq!(
            tail_page.len() as u64,
            end_pos - file_pos,
            "tail page must reach end_pos"
        );
        let first_bytes = CHUNK_BYTES_MIN.min(chunk_bytes_max);
        let mut buf = file.alloc_dma_buffer(first_bytes);
        buf.as_bytes_mut()[..tail_page.len()].copy_from_slice(tail_page);
        let mut chunks = VecDeque::new();
        chunks.push_back(Chunk {
            file_pos,
            filled: tail_page.len(),
            started: std::time::Instant::now(),
            buf: ChunkBuf::Filling(buf),
            written_to: end_pos,
            in_flight: false,
        });
        WriteTail {
            chunk_bytes_max,
            next_chunk_bytes: first_bytes,
            parked_page: Vec::new(),
            chunks,
            end_pos,
            base_written: end_pos,
            spare: Vec::new(),
        }
    }

    pub(crate) fn end_pos(&self) -> u64 {
        self.end_pos
    }

    /// The file holds every byte below this position.
    pub(crate) fn written_pos(&self) -> u64 {
        for chunk in &self.chunks {
            if chunk.written_to < chunk.data_end() {
                return chunk.written_to;
            }
        }
        self.chunks
            .back()
            .map_or(self.base_written, Chunk::data_end)
    }

    pub(crate) fn unwritten_bytes(&self) -> u64 {
        self.end_pos - self.written_pos()
    }

    /// File position from which the data is (also) in memory; reads below it go to the file.
    pub(crate) fn memory_start(&self) -> u64 {
        self.chunks.front().map_or(self.end_pos, |c| c.file_pos)
    }

    /// Appends bytes at the logical end.
    pub(crate) fn push(&mut self, file: &DmaFile, mut data: &[u8]) {
        while !data.is_empty() {
            let needs_chunk = self.chunks.back().is_none_or(|c| c.filled == c.capacity());
            if needs_chunk {
                let (file_pos, page) = match self.chunks.back() {
                    Some(c) => (c.file_pos + c.capacity() as u64, Vec::new()),
                    // Parked (or every chunk written and freed): start at the tail page.
                    None => (
                        align_down(self.end_pos),
                        std::mem::take(&mut self.parked_page),
                    ),
                };
                debug_assert_eq!(file_pos + page.len() as u64, self.end_pos);
                let size = self.next_chunk_bytes;
                let mut buf = match self.spare.iter().position(|b| b.len() == size) {
                    Some(i) => self.spare.swap_remove(i),
                    None => file.alloc_dma_buffer(size),
                };
                buf.as_bytes_mut()[..page.len()].copy_from_slice(&page);
                self.chunks.push_back(Chunk {
                    file_pos,
                    filled: page.len(),
                    started: std::time::Instant::now(),
                    buf: ChunkBuf::Filling(buf),
                    written_to: file_pos + page.len() as u64,
                    in_flight: false,
                });
            }
            let chunk = self.chunks.back_mut().expect("a chunk was just ensured");
            let capacity = chunk.capacity();
            let ChunkBuf::Filling(buf) = &mut chunk.buf else {
                unreachable!("only full chunks are sealed");
            };
            let n = data.len().min(capacity - chunk.filled);
            buf.as_bytes_mut()[chunk.filled..chunk.filled + n].copy_from_slice(&data[..n]);
            chunk.filled += n;
            data = &data[n..];
            self.end_pos += n as u64;
            if chunk.filled == capacity {
                let took = chunk.started.elapsed();
                if took <= FAST_FILL {
                    self.next_chunk_bytes = (capacity * 2).min(self.chunk_bytes_max);
                } else if took >= SLOW_FILL {
                    let half = align_down(capacity as u64 / 2) as usize;
                    self.next_chunk_bytes = half.max(CHUNK_BYTES_MIN.min(self.chunk_bytes_max));
                }
                let full = self.chunks.pop_back().expect("the chunk just filled");
                let ChunkBuf::Filling(buf) = full.buf else {
                    unreachable!("only full chunks are sealed");
                };
                self.chunks.push_back(Chunk {
                    buf: ChunkBuf::Sealed(Rc::new(buf)),
                    ..full
                });
            }
        }
    }

    /// Frees the tail's memory when everything in it is written and no write is in flight:
    /// only the bytes of the last, partly filled 4 KiB page are kept (on the heap), so an idle
    /// partition holds at most 4 KiB here. The next push starts a new chunk from them. Returns
    /// whether it parked (false: something is unwritten or in flight, or already parked).
    pub(crate) fn park(&mut self) -> bool {
        if self
            .chunks
            .iter()
            .any(|c| c.in_flight || c.written_to < c.data_end())
        {
            return false;
        }
        let Some(last) = self.chunks.back() else {
            return false;
        };
        let page_start = align_down(self.end_pos).max(last.file_pos);
        let from = (page_start - last.file_pos) as usize;
        self.parked_page = last.buf.bytes()[from..last.filled].to_vec();
        debug_assert_eq!(page_start + self.parked_page.len() as u64, self.end_pos);
        self.base_written = self.end_pos;
        self.chunks.clear();
        self.spare.clear();
        self.next_chunk_bytes = CHUNK_BYTES_MIN.min(self.chunk_bytes_max);
        true
    }

    /// Whether the tail fills chunks of the largest size: a fast writer (at the default
    /// sizes, over ~2.5 MB/s for a while).
    pub(crate) fn is_fast(&self) -> bool {
        self.next_chunk_bytes >= self.chunk_bytes_max
    }

    /// Bytes of DMA memory the tail holds (chunks and spares).
    pub(crate) fn memory_bytes(&self) -> usize {
        self.chunks.iter().map(Chunk::capacity).sum::<usize>()
            + self.spare.iter().map(|b| b.len()).sum::<usize>()
    }

    /// Takes the next sealed chunk that can be written now (none of it in flight, some of it
    /// unwritten), or `None`.
    pub(crate) fn next_sealed_write(&mut self, file: &DmaFile) -> Option<PlannedWrite> {
        let chunk = self
            .chunks
            .iter_mut()
            .find(|c| c.is_sealed() && !c.in_flight && c.written_to < c.data_end())?;
        chunk.in_flight = true;
        Some(plan_chunk_write(file, chunk))
    }

    /// Takes the write of the filling chunk's unwritten bytes, zero-padded to 4 KiB, if there
    /// are any and no write of that chunk is in flight.
    pub(crate) fn partial_write(&mut self, file: &DmaFile) -> Option<PlannedWrite> {
        let chunk = self.chunks.back_mut()?;
        if chunk.is_sealed() || chunk.in_flight || chunk.written_to >= chunk.data_end() {
            return None;
        }
        chunk.in_flight = true;
        Some(plan_chunk_write(file, chunk))
    }

    /// Records that a write completed: the file holds its chunk's data up to `data_end`.
    pub(crate) fn complete(&mut self, chunk_pos: u64, data_end: u64) {
        let chunk = self
            .chunks
            .iter_mut()
            .find(|c| c.file_pos == chunk_pos)
            .expect("a chunk with a write in flight stays in the tail");
        assert!(chunk.in_flight, "completed a write that was not in flight");
        chunk.in_flight = false;
        chunk.written_to = chunk.written_to.max(data_end);
        while let Some(front) = self.chunks.front() {
            // The newest written chunk stays (until the next one is written too): consumers
            // reading just behind the log end then read from memory, not from the file, even
            // when chunks are small.
            let newest_written = self.chunks.len() <= 2;
            if !(front.is_sealed() && front.written_to == front.data_end()) || newest_written {
                break;
            }
            let done = self.chunks.pop_front().expect("front exists");
            self.base_written = done.data_end();
            if let ChunkBuf::Sealed(rc) = done.buf {
                // Unshared once its write completed; keep it for a later chunk.
                if let Ok(buf) = Rc::try_unwrap(rc) {
                    if self.spare.len() < SPARE_CHUNKS_MAX && buf.len() == self.next_chunk_bytes {
                        self.spare.push(buf);
                    }
                }
            }
        }
    }

    /// Records that a write failed; the chunk may be written again.
    pub(crate) fn abandon(&mut self, chunk_pos: u64) {
        if let Some(chunk) = self.chunks.iter_mut().find(|c| c.file_pos == chunk_pos) {
            chunk.in_flight = false;
        }
    }

    /// Copies `[pos, pos + len)` out of memory. `pos` must be at or after [`Self::memory_start`]
    /// and the range inside the data.
    pub(crate) fn copy_range(&self, pos: u64, len: usize) -> Bytes {
        assert!(
            pos >= self.memory_start() && pos + len as u64 <= self.end_pos,
            "range not in memory"
        );
        let mut out = BytesMut::with_capacity(len);
        let end = pos + len as u64;
        for chunk in &self.chunks {
            if chunk.data_end() <= pos || chunk.file_pos >= end {
                continue;
            }
            let from = pos.max(chunk.file_pos) - chunk.file_pos;
            let to = end.min(chunk.data_end()) - chunk.file_pos;
            out.extend_from_slice(&chunk.buf.bytes()[from as usize..to as usize]);
        }
        debug_assert_eq!(out.len(), len);
        out.freeze()
    }
}

/// The write of a chunk's unwritten bytes: the whole chunk without a copy when none of it was
/// written before, else a zero-padded copy from the last written 4 KiB boundary.
fn plan_chunk_write(file: &DmaFile, chunk: &Chunk) -> PlannedWrite {
    let data_end = chunk.data_end();
    if let ChunkBuf::Sealed(rc) = &chunk.buf {
        if chunk.written_to == chunk.file_pos {
            return PlannedWrite {
                chunk_pos: chunk.file_pos,
                data_end,
                pos: chunk.file_pos,
                buf: WriteBuf::Shared(rc.clone()),
            };
        }
    }
    let start = align_down(chunk.written_to).max(chunk.file_pos);
    let end = align_up(data_end);
    let from = (start - chunk.file_pos) as usize;
    let data_len = chunk.filled - from;
    let mut owned = file.alloc_dma_buffer((end - start) as usize);
    let out = owned.as_bytes_mut();
    out[..data_len].copy_from_slice(&chunk.buf.bytes()[from..chunk.filled]);
    out[data_len..].fill(0);
    PlannedWrite {
        chunk_pos: chunk.file_pos,
        data_end,
        pos: start,
        buf: WriteBuf::Owned(owned),
    }
}
