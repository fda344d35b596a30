//! The write tail of the active segment: appended bytes wait here, in 4 KiB-aligned DMA chunks,
//! until a flush writes them to the file; they stay here, readable, until the write completes.
//!
//! Invariants:
//! - chunks are contiguous in the file: chunk `k + 1` starts where chunk `k` ends, and the first
//!   starts at a 4 KiB-aligned position; every chunk is `chunk_bytes` long in memory;
//! - bytes of a chunk past `filled` are undefined (chunks are not zeroed: a full chunk never
//!   needs it); a partial region is copied out and zero-padded to the 4 KiB boundary;
//! - a chunk is `Sealed` (shared, immutable) exactly when it is full; only the last chunk fills;
//! - `written_pos <= end_pos`; file bytes `[0, written_pos)` hold the data (written, not
//!   necessarily synced); the partial page at `written_pos` is rewritten by the next flush;
//! - a chunk leaves memory only when it is sealed and all of it has been written.

use std::collections::VecDeque;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use glommio::io::{DmaBuffer, DmaFile};

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
    buf: ChunkBuf,
}

/// One aligned write a flush must perform.
pub(crate) enum PlannedWrite {
    /// A whole sealed chunk, written without a copy.
    Shared { pos: u64, buf: Rc<DmaBuffer> },
    /// Part of a chunk, copied into a buffer of its own.
    Owned { pos: u64, buf: DmaBuffer },
}

impl PlannedWrite {
    pub(crate) fn len(&self) -> usize {
        match self {
            PlannedWrite::Shared { buf, .. } => buf.len(),
            PlannedWrite::Owned { buf, .. } => buf.len(),
        }
    }

    /// Submits the write; returns bytes written.
    pub(crate) async fn submit(self, file: &DmaFile) -> glommio::Result<usize, ()> {
        match self {
            PlannedWrite::Shared { pos, buf } => file.write_rc_at(buf, pos).await,
            PlannedWrite::Owned { pos, buf } => file.write_at(buf, pos).await,
        }
    }

    pub(crate) fn pos(&self) -> u64 {
        match self {
            PlannedWrite::Shared { pos, .. } | PlannedWrite::Owned { pos, .. } => *pos,
        }
    }
}

/// What one flush writes, and the logical end it makes written once all writes complete.
pub(crate) struct FlushPlan {
    pub writes: Vec<PlannedWrite>,
    pub end_pos: u64,
}

pub(crate) struct WriteTail {
    chunk_bytes: usize,
    chunks: VecDeque<Chunk>,
    end_pos: u64,
    written_pos: u64,
}

impl WriteTail {
    /// A tail for a segment whose data ends at `end_pos`, all of it already in the file.
    /// `tail_page` holds the file bytes `[align_down(end_pos), end_pos)`.
    pub(crate) fn resume(
        file: &DmaFile,
        chunk_bytes: usize,
        end_pos: u64,
        tail_page: &[u8],
    ) -> WriteTail {
        let file_pos = align_down(end_pos);
        assert_eq!(
            tail_page.len() as u64,
            end_pos - file_pos,
            "tail page must reach end_pos"
        );
        let mut buf = file.alloc_dma_buffer(chunk_bytes);
        buf.as_bytes_mut()[..tail_page.len()].copy_from_slice(tail_page);
        let mut chunks = VecDeque::new();
        chunks.push_back(Chunk {
            file_pos,
            filled: tail_page.len(),
            buf: ChunkBuf::Filling(buf),
        });
        WriteTail {
            chunk_bytes,
            chunks,
            end_pos,
            written_pos: end_pos,
        }
    }

    pub(crate) fn end_pos(&self) -> u64 {
        self.end_pos
    }

    pub(crate) fn unwritten_bytes(&self) -> u64 {
        self.end_pos - self.written_pos
    }

    /// File position from which the data is (also) in memory; reads below it go to the file.
    pub(crate) fn memory_start(&self) -> u64 {
        self.chunks.front().map_or(self.end_pos, |c| c.file_pos)
    }

    /// Appends bytes at the logical end.
    pub(crate) fn push(&mut self, file: &DmaFile, mut data: &[u8]) {
        while !data.is_empty() {
            let needs_chunk = self
                .chunks
                .back()
                .is_none_or(|c| c.filled == self.chunk_bytes);
            if needs_chunk {
                let file_pos = self.chunks.back().map_or(align_down(self.end_pos), |c| {
                    c.file_pos + self.chunk_bytes as u64
                });
                self.chunks.push_back(Chunk {
                    file_pos,
                    filled: 0,
                    buf: ChunkBuf::Filling(file.alloc_dma_buffer(self.chunk_bytes)),
                });
            }
            let chunk_bytes = self.chunk_bytes;
            let chunk = self.chunks.back_mut().expect("a chunk was just ensured");
            let ChunkBuf::Filling(buf) = &mut chunk.buf else {
                unreachable!("only full chunks are sealed");
            };
            let n = data.len().min(chunk_bytes - chunk.filled);
            buf.as_bytes_mut()[chunk.filled..chunk.filled + n].copy_from_slice(&data[..n]);
            chunk.filled += n;
            data = &data[n..];
            self.end_pos += n as u64;
            if chunk.filled == chunk_bytes {
                let full = self.chunks.pop_back().expect("the chunk just filled");
                let ChunkBuf::Filling(buf) = full.buf else {
                    unreachable!("only full chunks are sealed");
                };
                self.chunks.push_back(Chunk {
                    file_pos: full.file_pos,
                    filled: full.filled,
                    buf: ChunkBuf::Sealed(Rc::new(buf)),
                });
            }
        }
    }

    /// Plans the writes that put every buffered byte into the file. Copies only partial regions
    /// (at most the unwritten part of a chunk); whole sealed chunks go out as they are.
    pub(crate) fn plan_flush(&mut self, file: &DmaFile) -> FlushPlan {
        let mut writes = Vec::new();
        let rewrite_from = align_down(self.written_pos);
        for chunk in &self.chunks {
            let chunk_end = chunk.file_pos + chunk.filled as u64;
            if chunk_end <= self.written_pos {
                continue;
            }
            let start = chunk.file_pos.max(rewrite_from);
            let end = align_up(chunk_end);
            match &chunk.buf {
                ChunkBuf::Sealed(rc) if start == chunk.file_pos => {
                    writes.push(PlannedWrite::Shared {
                        pos: start,
                        buf: rc.clone(),
                    })
                }
                buf => {
                    let from = (start - chunk.file_pos) as usize;
                    let data_len = chunk.filled - from;
                    let mut owned = file.alloc_dma_buffer((end - start) as usize);
                    let out = owned.as_bytes_mut();
                    out[..data_len].copy_from_slice(&buf.bytes()[from..chunk.filled]);
                    out[data_len..].fill(0);
                    writes.push(PlannedWrite::Owned {
                        pos: start,
                        buf: owned,
                    });
                }
            }
        }
        FlushPlan {
            writes,
            end_pos: self.end_pos,
        }
    }

    /// Records that every write of a plan ending at `end_pos` completed.
    pub(crate) fn complete_flush(&mut self, end_pos: u64) {
        assert!(end_pos >= self.written_pos && end_pos <= self.end_pos);
        self.written_pos = end_pos;
        while let Some(front) = self.chunks.front() {
            let sealed = matches!(front.buf, ChunkBuf::Sealed(_));
            if sealed && front.file_pos + self.chunk_bytes as u64 <= self.written_pos {
                self.chunks.pop_front();
            } else {
                break;
            }
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
            let chunk_end = chunk.file_pos + chunk.filled as u64;
            if chunk_end <= pos || chunk.file_pos >= end {
                continue;
            }
            let from = pos.max(chunk.file_pos) - chunk.file_pos;
            let to = end.min(chunk_end) - chunk.file_pos;
            out.extend_from_slice(&chunk.buf.bytes()[from as usize..to as usize]);
        }
        debug_assert_eq!(out.len(), len);
        out.freeze()
    }
}
