//! One hard-state log per node executor: the term, vote and commit of every Raft group it
//! holds, so that a step in which many groups vote or change term costs one write and one
//! fdatasync, not a file and two syncs per group (10,000 groups electing after a restart).
//!
//! File `raft-hard-state` in the node's directory: records appended back to back, each
//! `[u32 length of the rest][u32 crc32c of the rest][u128 topic id][i32 partition][u64 term]
//! [u64 vote][u64 commit]`, little-endian. On open every record is read and the last one of
//! each group wins; a torn or corrupt tail is cut off (a record is acknowledged only after its
//! fdatasync, so the tail was never promised to anyone). When the file grows past
//! `REWRITE_BYTES`, it is replaced (write, sync, rename, sync the directory) by one record per
//! group.
//!
//! Writes are group-committed: `store` stages a record and waits for the round that writes
//! and syncs it; records staged while a round runs share the next round.
//!
//! Invariant: when `store` returns Ok, the record is durable, and so is every record staged
//! before it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use futures::channel::oneshot;
use glommio::io::{BufferedFile, OpenOptions};
use raft::eraftpb::HardState;

use crate::error::{ReplicationError, Result};
use crate::rpc::GroupKey;

const FILE: &str = "raft-hard-state";
const RECORD_BYTES: usize = 8 + 16 + 4 + 3 * 8;
/// The file is rewritten compactly past this size.
pub const REWRITE_BYTES: u64 = 16 << 20;

struct Inner {
    dir: PathBuf,
    file: RefCell<Option<Rc<BufferedFile>>>,
    end: Cell<u64>,
    states: RefCell<HashMap<GroupKey, HardState>>,
    staged: RefCell<Vec<u8>>,
    in_flight: Cell<bool>,
    waiters: RefCell<Vec<oneshot::Sender<Result<(), String>>>>,
    rounds: Cell<u64>,
}

/// The hard states of a node executor's groups. Cheap to clone (a handle); `!Send`.
#[derive(Clone)]
pub struct HardStateLog {
    inner: Rc<Inner>,
}

fn encode(key: &GroupKey, state: &HardState, out: &mut Vec<u8>) {
    let mut body = Vec::with_capacity(RECORD_BYTES - 8);
    body.extend_from_slice(&key.topic_id.to_le_bytes());
    body.extend_from_slice(&key.partition.to_le_bytes());
    body.extend_from_slice(&state.term.to_le_bytes());
    body.extend_from_slice(&state.vote.to_le_bytes());
    body.extend_from_slice(&state.commit.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&body);
}

/// The records of `bytes` up to the first torn or corrupt one, and where that one starts.
fn decode(bytes: &[u8]) -> (HashMap<GroupKey, HardState>, usize) {
    let mut states = HashMap::new();
    let mut pos = 0;
    while let Some(record) = bytes.get(pos..pos + RECORD_BYTES) {
        let length = u32::from_le_bytes(record[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(record[4..8].try_into().expect("4 bytes"));
        let body = &record[8..];
        if length != RECORD_BYTES - 8 || crc32c::crc32c(body) != crc {
            break;
        }
        let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8"));
        let key = GroupKey {
            topic_id: u128::from_le_bytes(body[0..16].try_into().expect("16 bytes")),
            partition: i32::from_le_bytes(body[16..20].try_into().expect("4 bytes")),
        };
        let state = HardState {
            term: u64_at(20),
            vote: u64_at(28),
            commit: u64_at(36),
            ..HardState::default()
        };
        states.insert(key, state);
        pos += RECORD_BYTES;
    }
    (states, pos)
}

impl HardStateLog {
    /// Opens (or creates) the log in `dir`, cutting a torn tail.
    pub async fn open(dir: impl AsRef<Path>) -> Result<HardStateLog> {
        let dir = dir.as_ref().to_path_buf();
        let path = dir.join(FILE);
        let io = |e: glommio::GlommioError<()>| ReplicationError::Io {
            path: path.clone(),
            source: e.into(),
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .buffered_open(&path)
            .await
            .map_err(io)?;
        let size = file.file_size().await.map_err(io)?;
        let bytes = file.read_at(0, size as usize).await.map_err(io)?;
        let (states, valid) = decode(&bytes);
        if (valid as u64) < size {
            tracing::warn!(path = %path.display(), valid, size, "hard-state log: torn tail cut");
            file.truncate(valid as u64).await.map_err(io)?;
            file.fdatasync().await.map_err(io)?;
        }
        Ok(HardStateLog {
            inner: Rc::new(Inner {
                dir,
                file: RefCell::new(Some(Rc::new(file))),
                end: Cell::new(valid as u64),
                states: RefCell::new(states),
                staged: RefCell::new(Vec::new()),
                in_flight: Cell::new(false),
                waiters: RefCell::new(Vec::new()),
                rounds: Cell::new(0),
            }),
        })
    }

    /// The last stored hard state of `key`, if any.
    pub fn get(&self, key: &GroupKey) -> Option<HardState> {
        self.inner.states.borrow().get(key).cloned()
    }

    /// Write-and-sync rounds so far (tests, metrics).
    pub fn rounds(&self) -> u64 {
        self.inner.rounds.get()
    }

    /// Stores `state` for `key` durably: returns once a round has written and synced it.
    pub async fn store(&self, key: GroupKey, state: &HardState) -> Result<()> {
        self.inner.states.borrow_mut().insert(key, state.clone());
        encode(&key, state, &mut self.inner.staged.borrow_mut());
        let (sender, receiver) = oneshot::channel();
        self.inner.waiters.borrow_mut().push(sender);
        if !self.inner.in_flight.get() {
            self.run_rounds().await;
        }
        match receiver.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(ReplicationError::BadState {
                path: self.inner.dir.join(FILE),
                reason,
            }),
            Err(_) => Err(ReplicationError::BadState {
                path: self.inner.dir.join(FILE),
                reason: "the round writing this record was dropped".into(),
            }),
        }
    }

    /// Runs rounds until nothing is staged: each writes everything staged so far and syncs.
    async fn run_rounds(&self) {
        self.inner.in_flight.set(true);
        loop {
            let staged = std::mem::take(&mut *self.inner.staged.borrow_mut());
            let waiters = std::mem::take(&mut *self.inner.waiters.borrow_mut());
            if waiters.is_empty() {
                break;
            }
            let outcome = self.write_round(staged).await.map_err(|e| e.to_string());
            self.inner.rounds.set(self.inner.rounds.get() + 1);
            for waiter in waiters {
                let _ = waiter.send(outcome.clone());
            }
        }
        self.inner.in_flight.set(false);
    }

    async fn write_round(&self, staged: Vec<u8>) -> std::io::Result<()> {
        if self.inner.end.get() + staged.len() as u64 > REWRITE_BYTES {
            return self.rewrite().await;
        }
        let file = self.file()?;
        let length = staged.len() as u64;
        let at = self.inner.end.get();
        let written = file
            .write_at(staged, at)
            .await
            .map_err(std::io::Error::from)?;
        if written as u64 != length {
            return Err(std::io::Error::other("short write"));
        }
        file.fdatasync().await.map_err(std::io::Error::from)?;
        self.inner.end.set(at + length);
        Ok(())
    }

    fn file(&self) -> std::io::Result<Rc<BufferedFile>> {
        self.inner
            .file
            .borrow()
            .clone()
            .ok_or_else(|| std::io::Error::other("hard-state log closed after a failed rewrite"))
    }

    /// Replaces the file by one record per group (the current states already include every
    /// staged record).
    async fn rewrite(&self) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        for (key, state) in self.inner.states.borrow().iter() {
            encode(key, state, &mut bytes);
        }
        let path = self.inner.dir.join(FILE);
        let temporary = self.inner.dir.join(format!("{FILE}.tmp"));
        let mut file = BufferedFile::create(&temporary).await?;
        let length = bytes.len() as u64;
        file.write_at(bytes, 0).await?;
        file.fdatasync().await?;
        file.rename(&path).await?;
        std::fs::File::open(&self.inner.dir)?.sync_all()?;
        let reopened = OpenOptions::new()
            .read(true)
            .write(true)
            .buffered_open(&path)
            .await?;
        drop(file);
        *self.inner.file.borrow_mut() = Some(Rc::new(reopened));
        self.inner.end.set(length);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(term: u64, vote: u64, commit: u64) -> HardState {
        HardState {
            term,
            vote,
            commit,
            ..HardState::default()
        }
    }

    fn key(partition: i32) -> GroupKey {
        GroupKey {
            topic_id: 0xabc,
            partition,
        }
    }

    fn run<F: std::future::Future<Output = ()> + 'static>(f: impl FnOnce() -> F + Send + 'static) {
        glommio::LocalExecutorBuilder::default()
            .spawn(f)
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn many_groups_voting_at_once_share_rounds_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        run(move || async move {
            let log = HardStateLog::open(&path).await.unwrap();
            let stores = (0..1_000).map(|p| {
                let log = log.clone();
                async move { log.store(key(p), &state(3, 2, p as u64)).await }
            });
            for outcome in futures::future::join_all(stores).await {
                outcome.unwrap();
            }
            assert!(
                log.rounds() <= 3,
                "{} rounds for 1,000 groups",
                log.rounds()
            );
            log.store(key(7), &state(4, 0, 9)).await.unwrap();
            drop(log);

            let reopened = HardStateLog::open(&path).await.unwrap();
            assert_eq!(reopened.get(&key(7)), Some(state(4, 0, 9)));
            assert_eq!(reopened.get(&key(999)), Some(state(3, 2, 999)));
            assert_eq!(reopened.get(&key(1_000)), None);
        });
    }

    #[test]
    fn a_torn_or_corrupt_tail_is_cut_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        run(move || async move {
            let log = HardStateLog::open(&path).await.unwrap();
            log.store(key(1), &state(5, 1, 0)).await.unwrap();
            log.store(key(2), &state(6, 2, 0)).await.unwrap();
            drop(log);
            let file = path.join(FILE);
            let mut bytes = std::fs::read(&file).unwrap();
            let whole = bytes.len();
            bytes[whole - 3] ^= 0xff; // the second record is corrupt
            bytes.extend_from_slice(&[1, 2, 3]); // and a torn one follows
            std::fs::write(&file, &bytes).unwrap();

            let reopened = HardStateLog::open(&path).await.unwrap();
            assert_eq!(reopened.get(&key(1)), Some(state(5, 1, 0)));
            assert_eq!(reopened.get(&key(2)), None);
            assert_eq!(std::fs::metadata(&file).unwrap().len(), (whole / 2) as u64);
            reopened.store(key(2), &state(7, 3, 1)).await.unwrap();
            drop(reopened);
            let again = HardStateLog::open(&path).await.unwrap();
            assert_eq!(again.get(&key(2)), Some(state(7, 3, 1)));
        });
    }

    #[test]
    fn a_long_log_is_rewritten_with_one_record_per_group() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        run(move || async move {
            let log = HardStateLog::open(&path).await.unwrap();
            let records = REWRITE_BYTES / RECORD_BYTES as u64 + 10;
            // Big rounds: many records staged at once.
            for chunk in 0..(records / 4_096 + 1) {
                let stores = (0..4_096).map(|i| {
                    let log = log.clone();
                    let term = chunk * 4_096 + i;
                    async move { log.store(key((i % 8) as i32), &state(term, 1, 0)).await }
                });
                for outcome in futures::future::join_all(stores).await {
                    outcome.unwrap();
                }
            }
            let size = std::fs::metadata(path.join(FILE)).unwrap().len();
            assert!(size < REWRITE_BYTES / 2, "rewritten: {size} bytes");
            let last = log.get(&key(7)).unwrap();
            drop(log);
            let reopened = HardStateLog::open(&path).await.unwrap();
            assert_eq!(reopened.get(&key(7)), Some(last));
        });
    }
}
