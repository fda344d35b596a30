//! The process's global allocator: jemalloc (`tikv-jemallocator`, TiKV's), except that requests
//! of [`RESERVE_ONLY_BYTES`] or more are served by anonymous `MAP_NORESERVE` mappings.
//!
//! Why jemalloc: at thousands of partitions the data path allocates and frees many small and
//! mid-sized blocks per record (request parts, answers, write-tail chunks) on two threads, and
//! blocks cross shards (`Bytes` freed on another thread than the one that made them). With
//! glibc's malloc, `_int_malloc`/`unlink_chunk`/`_int_free` and the kernel zeroing pages that
//! the heap had given back and took again were a quarter of the broker's CPU; with jemalloc,
//! 10,000 partitions at 20,000 records/s ran at publish p99 41 ms instead of 202 ms, with 13 %
//! less peak memory (docs/benchmarks.md, "Allocator").
//!
//! Why: the Kafka codec (`kafka-protocol` 0.18) calls `Vec::with_capacity(n)` with array counts
//! read off the wire before it decodes a single element. A 20-byte request declaring 2^31
//! elements asks for over 100 GiB, and a failed allocation aborts the whole broker. No request
//! can really fill such an array (each element takes at least one byte of a frame that is at
//! most `frame_bytes_max`), so the decoder fails a few bytes later and frees the vector. Mapped
//! with `MAP_NORESERVE`, that allocation costs address space only: pages are backed when
//! touched, and only the few decoded elements are. This covers every API and nested array at
//! once, where per-API count checks would have to follow each request schema by hand.
//! (Upstream fixes, kafka-protocol-rs PRs #152/#161/#200, are unreleased: remove this module
//! when a fixed version ships.)
//!
//! Invariant: whether a block is mapped or from the system allocator is a function of its
//! `Layout` alone ([`is_reserve_only`]), so `dealloc` and `realloc` always free it the way it
//! was obtained. With `vm.overcommit_memory = 2` the kernel refuses such mappings and the
//! allocation fails as before.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};

/// Everything else: jemalloc.
const INNER: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Allocations at least this large are mapped lazily.
pub const RESERVE_ONLY_BYTES: usize = 1 << 30;

/// mmap returns page-aligned memory; larger alignments stay with the system allocator.
const PAGE_BYTES: usize = 4096;

pub struct ReserveOnlyForHuge;

fn is_reserve_only(layout: Layout) -> bool {
    layout.size() >= RESERVE_ONLY_BYTES && layout.align() <= PAGE_BYTES
}

fn map(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping at an address the kernel picks touches no existing
    // memory; the result is checked against MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p.cast()
    }
}

// SAFETY: every block is freed by the same mechanism that produced it (decided by its Layout,
// which callers must pass unchanged); mapped memory is zero-filled, page-aligned and at least
// `size` bytes long, which satisfies `alloc` and `alloc_zeroed`.
unsafe impl GlobalAlloc for ReserveOnlyForHuge {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_reserve_only(layout) {
            map(layout.size())
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { INNER.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_reserve_only(layout) {
            map(layout.size())
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { INNER.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_reserve_only(layout) {
            // SAFETY: `ptr` came from `map(layout.size())` (same layout, see the invariant).
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
        } else {
            // SAFETY: `ptr` came from `System` with this layout.
            unsafe { INNER.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `realloc`'s contract guarantees `new_size`, rounded up to `layout.align()`,
        // does not overflow isize, so this layout is valid.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !is_reserve_only(layout) && !is_reserve_only(new_layout) {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { INNER.realloc(ptr, layout, new_size) };
        }
        // SAFETY: as `alloc`, `dealloc`; the copy stays within both blocks.
        unsafe {
            let moved = self.alloc(new_layout);
            if !moved.is_null() {
                std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            moved
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_impossible_capacity_costs_only_address_space() {
        // 2^31 elements of 72 bytes: what a hostile array count asks the codec for.
        let v: Vec<[u8; 72]> = Vec::with_capacity(1 << 31);
        assert!(v.capacity() >= 1 << 31);
        drop(v);
        let mut grown: Vec<u8> = Vec::with_capacity(16);
        grown.extend_from_slice(b"kept across a move into a mapping");
        grown.reserve(RESERVE_ONLY_BYTES);
        assert_eq!(&grown[..4], b"kept");
        grown.shrink_to_fit();
        assert_eq!(grown.len(), 33);
    }
}
