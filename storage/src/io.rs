//! The thin I/O layer between the log and glommio: every file operation the log performs goes
//! through here, so a move to another io_uring runtime (or fault injection) touches one module.
//!
//! Invariants: every direct-I/O write is at a position and of a length that are multiples of
//! [`DIRECT_IO_ALIGNMENT`]; small metadata files are replaced atomically (write a `.tmp`,
//! fdatasync, rename, fsync the directory), never rewritten in place.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use glommio::io::{BufferedFile, Directory, DmaFile, OpenOptions};

use crate::error::{Result, StorageError};
use crate::faults::{self, FaultPoint};
use crate::format::TEMP_SUFFIX;

/// Alignment of direct-I/O positions, lengths and buffers. 4 KiB suits every device we target;
/// smaller direct writes fail with EINVAL on this machine's disk.
pub const DIRECT_IO_ALIGNMENT: usize = 4096;
const _: () = assert!(DIRECT_IO_ALIGNMENT.is_power_of_two());

/// File name of the scratch file used by [`prime_iopoll_probe`].
const PROBE_FILE_NAME: &str = ".iopoll-probe.tmp";

pub fn align_down(v: u64) -> u64 {
    v & !(DIRECT_IO_ALIGNMENT as u64 - 1)
}

pub fn align_up(v: u64) -> u64 {
    align_down(v + DIRECT_IO_ALIGNMENT as u64 - 1)
}

/// Works around glommio 0.9's polled-I/O probe (glommio issue #605).
///
/// The first time an executor thread opens a `DmaFile` on a device, glommio probes whether the
/// device supports polled I/O by reading the file's first block, and caches the answer for that
/// device on that thread. On an empty, freshly created file the read short-circuits and the probe
/// wrongly answers "yes"; every later read on that device then fails with EOPNOTSUPP. Opening a
/// file that really holds a block of data first makes the probe see the true answer.
///
/// Call on each executor thread before it creates files in `dir`. Runs once per device per
/// thread (glommio's cache has the same scope); later calls return at once.
pub async fn prime_iopoll_probe(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    thread_local! {
        static PRIMED_DEVICES: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let device = std::fs::metadata(dir)
        .map_err(|e| StorageError::io(dir.display(), e))?
        .dev();
    if PRIMED_DEVICES.with(|d| d.borrow().contains(&device)) {
        return Ok(());
    }
    let path = dir.join(PROBE_FILE_NAME);
    if let Err(e) = std::fs::write(&path, [0x5a_u8; DIRECT_IO_ALIGNMENT]) {
        // A full disk (or a read-only one) must not keep the broker from starting: any file on
        // the same device that already holds a block of data serves the probe as well.
        let _ = std::fs::remove_file(&path);
        let Some(existing) = file_with_data_near(dir, device) else {
            tracing::warn!(dir = %dir.display(), error = %e,
                "cannot write the polled-I/O probe file and no file with data to probe instead");
            return Ok(());
        };
        tracing::warn!(dir = %dir.display(), error = %e, probe = %existing.display(),
            "cannot write the polled-I/O probe file; probing with an existing file");
        probe_with(&existing).await?;
        PRIMED_DEVICES.with(|d| d.borrow_mut().push(device));
        return Ok(());
    }
    probe_with(&path).await?;
    std::fs::remove_file(&path).map_err(|e| StorageError::io(path.display(), e))?;
    PRIMED_DEVICES.with(|d| d.borrow_mut().push(device));
    Ok(())
}

/// Opens `path` with glommio (which runs its polled-I/O probe on it) and closes it.
async fn probe_with(path: &Path) -> Result<()> {
    let file = DmaFile::open(path)
        .await
        .map_err(|e| StorageError::io(path.display(), e))?;
    file.close()
        .await
        .map_err(|e| StorageError::io(path.display(), e))
}

/// Files looked at when searching for one to probe with, at most.
const PROBE_SEARCH_ENTRIES_MAX: usize = 10_000;

/// A regular file on `device` holding at least one direct-I/O block, in `dir` or (breadth
/// first) below its parent and grandparent: the other partitions and topics of a data
/// directory.
fn file_with_data_near(dir: &Path, device: u64) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let roots = [Some(dir), dir.parent(), dir.parent().and_then(Path::parent)];
    let mut seen = 0;
    for root in roots.into_iter().flatten() {
        let mut pending = std::collections::VecDeque::from([root.to_path_buf()]);
        while let Some(next) = pending.pop_front() {
            let Ok(entries) = std::fs::read_dir(&next) else {
                continue;
            };
            for entry in entries.flatten() {
                seen += 1;
                if seen > PROBE_SEARCH_ENTRIES_MAX {
                    return None;
                }
                let Ok(meta) = entry.metadata() else { continue };
                if meta.is_dir() {
                    pending.push_back(entry.path());
                } else if meta.is_file()
                    && meta.dev() == device
                    && meta.len() >= DIRECT_IO_ALIGNMENT as u64
                {
                    return Some(entry.path());
                }
            }
        }
    }
    None
}

/// Opens (or creates) a segment file for direct-I/O reads and writes.
pub async fn open_segment(path: &Path, create: bool) -> Result<DmaFile> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .dma_open(path)
        .await
        .map_err(|e| StorageError::io(path.display(), e))
}

/// fdatasyncs a segment file (through the [`FaultPoint::Fdatasync`] fault point).
pub async fn fdatasync(file: &DmaFile) -> std::io::Result<()> {
    faults::inject(FaultPoint::Fdatasync).await?;
    let started = std::time::Instant::now();
    let synced = file.fdatasync().await.map_err(Into::into);
    crate::metrics::record_fdatasync(started.elapsed());
    synced
}

/// Allocates a segment file's space up to `to` bytes without changing its size (through the
/// [`FaultPoint::Fallocate`] fault point).
pub async fn pre_allocate(file: &DmaFile, to: u64) -> std::io::Result<()> {
    faults::inject(FaultPoint::Fallocate).await?;
    file.pre_allocate(to, false).await.map_err(Into::into)
}

/// Reads `len` bytes at `pos`, or fewer if the file ends first.
pub async fn read_at(file: &DmaFile, path: &Path, pos: u64, len: usize) -> Result<Bytes> {
    if len == 0 {
        return Ok(Bytes::new());
    }
    let got = file
        .read_at(pos, len)
        .await
        .map_err(|e| StorageError::io(path.display(), e))?;
    // glommio's ReadResult is not Send, so it cannot back a `Bytes`: copy once here.
    Ok(Bytes::copy_from_slice(&got))
}

/// Replaces `dir/name` with `contents` atomically and durably.
pub async fn write_file_atomically(dir: &Path, name: &str, contents: &[u8]) -> Result<()> {
    let final_path = dir.join(name);
    let temp_path = dir.join(format!("{name}{TEMP_SUFFIX}"));
    write_file_durably(&temp_path, contents).await?;
    glommio::io::rename(&temp_path, &final_path)
        .await
        .map_err(|e| StorageError::io(final_path.display(), e))?;
    sync_dir(dir).await
}

/// Creates (or replaces) `path` holding `contents`, durably written (fdatasync) but with its
/// directory entry not yet synced: for a file a later rename and [`sync_dir`] publish.
pub async fn write_file_durably(path: &Path, contents: &[u8]) -> Result<()> {
    let io_err = |e: glommio::GlommioError<()>| StorageError::io(path.display(), e);
    let file = BufferedFile::create(path).await.map_err(io_err)?;
    let written = file.write_at(contents.to_vec(), 0).await.map_err(io_err)?;
    if written != contents.len() {
        return Err(StorageError::io(
            path.display(),
            std::io::Error::new(std::io::ErrorKind::WriteZero, "short write"),
        ));
    }
    file.fdatasync().await.map_err(io_err)?;
    file.close().await.map_err(io_err)
}

/// Makes the directory's entries (creations, renames, removals) durable.
pub async fn sync_dir(dir: &Path) -> Result<()> {
    let d = Directory::open(dir)
        .await
        .map_err(|e| StorageError::io(dir.display(), e))?;
    d.sync()
        .await
        .map_err(|e| StorageError::io(dir.display(), e))?;
    d.close()
        .await
        .map_err(|e| StorageError::io(dir.display(), e))
}

/// The size of the filesystem holding `path` and the bytes an unprivileged writer may still use
/// there (`statvfs`: blocks × fragment size, available blocks × fragment size).
pub fn disk_space(path: &Path) -> Result<(u64, u64)> {
    let stats = rustix::fs::statvfs(path).map_err(|e| StorageError::io(path.display(), e))?;
    Ok((
        stats.f_blocks * stats.f_frsize,
        stats.f_bavail * stats.f_frsize,
    ))
}

pub fn remove_file_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::io(path.display(), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_helpers() {
        assert_eq!(align_down(0), 0);
        assert_eq!(align_down(4095), 0);
        assert_eq!(align_down(4096), 4096);
        assert_eq!(align_up(1), 4096);
        assert_eq!(align_up(4096), 4096);
        assert_eq!(align_up(4097), 8192);
    }

    #[test]
    fn disk_space_of_a_real_directory_and_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let (total, usable) = disk_space(dir.path()).unwrap();
        assert!(total > 0 && usable <= total, "{total} {usable}");
        let missing = dir.path().join("missing");
        assert!(matches!(disk_space(&missing), Err(StorageError::Io { .. })));
    }
}
