//! The audit trail: one JSON line per security-relevant event — authentications (SASL
//! exchanges, client certificates), authorization denials and administrative changes (topics,
//! configs, ACLs, users, quotas) — with who (principal), from where (client address), through
//! which listener and when.
//!
//! Events are handed to [`AuditLog::record`] (a channel send: shards never wait for the disk)
//! and written by one thread to `audit-<seq>.jsonl` files in the audit directory, each named by
//! the sequence number of its first line; a file that would grow past `max_file_bytes` is
//! closed and the next one begun, and the oldest are deleted beyond `max_files`. Every batch of
//! lines is fdatasync'ed before the writer waits for more.
//!
//! Tamper evidence: every line carries `seq` (one more than the line before, across files),
//! `prev` (the previous line's hash; [`GENESIS`] for the very first line) and `hash`, the
//! SHA-256 of the line's bytes without its hash field (the line up to `,"hash":` and a closing
//! brace). Changing, removing or reordering a line breaks the chain at that point;
//! [`verify`] (`sluice audit verify`) walks it. Someone able to rewrite the whole directory can
//! rebuild a chain: anchor the last hash `verify` prints somewhere else to detect that.
//!
//! Invariants: lines are written whole and end with `\n`; a line torn by a crash (no `\n`) is
//! cut when the log is next opened, and the `audit_started` line that follows says how many
//! bytes were cut; the chain continues from the last whole line.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// `prev` of the first line ever written.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Where the trail is written and how it rotates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSettings {
    pub dir: PathBuf,
    /// A file is closed before it would grow past this.
    pub max_file_bytes: u64,
    /// Files kept; the oldest beyond this are deleted.
    pub max_files: usize,
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A client proved (or failed to prove) who it is: SASL, or a client certificate.
    Authentication,
    /// An authenticated principal was refused an operation on a resource.
    Authorization,
    /// An administrative request changed (or tried to change) topics, configs, ACLs, users or
    /// quotas.
    Change,
    /// The broker opened the trail (each start).
    AuditStarted,
}

/// One event, as a shard reports it.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub time: SystemTime,
    pub kind: EventKind,
    /// `success`, `failure`, `denied`, or for a change the Kafka error name (`NONE` on success).
    pub outcome: String,
    pub principal: String,
    /// The client's `ip:port`.
    pub client: String,
    /// The listener's name.
    pub listener: String,
    /// What the event is about (mechanism, operation and resource, the change's request).
    pub detail: Map<String, Value>,
}

/// Why the trail cannot be opened, or a write failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audit log {path}: its last line is not an audit entry ({reason}); check it with `sluice audit verify`, and move the file away to begin a new chain")]
    Corrupt { path: PathBuf, reason: String },
}

/// The shards' handle on the trail: cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct AuditLog {
    events: mpsc::Sender<AuditEvent>,
}

/// The writer thread; [`AuditWriter::finish`] waits for it to write what was recorded.
#[derive(Debug)]
pub struct AuditWriter {
    done: mpsc::Receiver<()>,
}

impl AuditLog {
    /// Opens the trail in `settings.dir` (created if missing), continuing the chain of the
    /// files there, and starts its writer thread. Its first line is an `audit_started` event
    /// with `detail`.
    pub fn open(
        settings: AuditSettings,
        mut detail: Map<String, Value>,
    ) -> Result<(AuditLog, AuditWriter), AuditError> {
        let mut files = TrailFiles::open(settings)?;
        if files.torn_bytes > 0 {
            tracing::warn!(dir = %files.settings.dir.display(), bytes = files.torn_bytes,
                "audit log: cut a line torn by a crash");
            detail.insert("torn_bytes_cut".into(), files.torn_bytes.into());
        }
        let started = AuditEvent {
            time: SystemTime::now(),
            kind: EventKind::AuditStarted,
            outcome: "success".into(),
            principal: String::new(),
            client: String::new(),
            listener: String::new(),
            detail,
        };
        files.write_all_synced(std::slice::from_ref(&started))?;
        let (events, received) = mpsc::channel::<AuditEvent>();
        let (finished, done) = mpsc::channel();
        std::thread::Builder::new()
            .name("sluice-audit".into())
            .spawn(move || {
                // Every sender gone: the broker stopped.
                while let Ok(first) = received.recv() {
                    let mut batch = vec![first];
                    batch.extend(received.try_iter().take(BATCH_EVENTS_MAX));
                    if let Err(e) = files.write_all_synced(&batch) {
                        tracing::error!(error = %e, lost = batch.len(), "audit log: events not written");
                    }
                }
                let _ = finished.send(());
            })
            .map_err(|source| AuditError::Io {
                path: PathBuf::from("(writer thread)"),
                source,
            })?;
        Ok((AuditLog { events }, AuditWriter { done }))
    }

    /// Hands `event` to the writer.
    pub fn record(&self, event: AuditEvent) {
        // Only fails once the writer is gone (the broker is stopping).
        let _ = self.events.send(event);
    }
}

impl AuditWriter {
    /// Waits (at most `timeout`) for the writer to write everything recorded through handles
    /// dropped before this call; `log` is the caller's own handle.
    pub fn finish(self, log: AuditLog, timeout: Duration) {
        drop(log);
        if self.done.recv_timeout(timeout).is_err() {
            tracing::warn!(
                "audit log: the writer did not finish in time (a handle outlived the broker)"
            );
        }
    }
}

/// Events written (and synced) at once at most.
const BATCH_EVENTS_MAX: usize = 4096;

/// A trail file open for appending.
struct OpenFile {
    file: File,
    path: PathBuf,
    bytes: u64,
}

/// The files of the trail, as the writer holds them.
struct TrailFiles {
    settings: AuditSettings,
    /// The file being appended to (`None` until the first line after a rotation).
    current: Option<OpenFile>,
    next_seq: u64,
    prev_hash: String,
    /// Bytes of a torn last line cut at open.
    torn_bytes: u64,
}

impl TrailFiles {
    fn open(settings: AuditSettings) -> Result<TrailFiles, AuditError> {
        let dir = &settings.dir;
        std::fs::create_dir_all(dir).map_err(|source| io(dir, source))?;
        let mut files = TrailFiles {
            current: None,
            next_seq: 0,
            prev_hash: GENESIS.to_string(),
            torn_bytes: 0,
            settings,
        };
        let existing = trail_files(&files.settings.dir)?;
        // The newest file with a whole line gives the chain's end; a torn tail is cut first.
        for (index, (_, path)) in existing.iter().enumerate().rev() {
            let mut bytes = Vec::new();
            File::open(path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(|source| io(path, source))?;
            let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            if whole < bytes.len() {
                files.torn_bytes += (bytes.len() - whole) as u64;
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|source| io(path, source))?;
                file.set_len(whole as u64)
                    .and_then(|()| file.sync_data())
                    .map_err(|source| io(path, source))?;
            }
            let Some(last) = bytes[..whole]
                .split(|b| *b == b'\n')
                .rev()
                .find(|l| !l.is_empty())
            else {
                continue;
            };
            let entry = parse_line(last).map_err(|reason| AuditError::Corrupt {
                path: path.clone(),
                reason,
            })?;
            files.next_seq = entry.seq + 1;
            files.prev_hash = entry.hash;
            if index + 1 == existing.len() {
                let file = OpenOptions::new()
                    .append(true)
                    .open(path)
                    .map_err(|source| io(path, source))?;
                files.current = Some(OpenFile {
                    file,
                    path: path.clone(),
                    bytes: whole as u64,
                });
            }
            break;
        }
        Ok(files)
    }

    /// Appends `events` as chained lines, rotating as needed, then syncs the file.
    fn write_all_synced(&mut self, events: &[AuditEvent]) -> Result<(), AuditError> {
        for event in events {
            let line = chained_line(self.next_seq, &self.prev_hash, event);
            let full = self.current.as_ref().is_some_and(|open| {
                open.bytes > 0 && open.bytes + line.text.len() as u64 > self.settings.max_file_bytes
            });
            if full {
                self.rotate()?;
            }
            if self.current.is_none() {
                self.begin_file()?;
            }
            let open = self.current.as_mut().expect("a file was just begun");
            open.file
                .write_all(line.text.as_bytes())
                .map_err(|source| io(&open.path, source))?;
            open.bytes += line.text.len() as u64;
            self.next_seq += 1;
            self.prev_hash = line.hash;
        }
        if let Some(open) = &self.current {
            open.file
                .sync_data()
                .map_err(|source| io(&open.path, source))?;
        }
        Ok(())
    }

    fn path_of(&self, seq: u64) -> PathBuf {
        self.settings.dir.join(file_name(seq))
    }

    /// Closes the current file (synced) and deletes the oldest beyond `max_files`, counting the
    /// one the next line begins.
    fn rotate(&mut self) -> Result<(), AuditError> {
        if let Some(open) = self.current.take() {
            open.file
                .sync_data()
                .map_err(|source| io(&open.path, source))?;
        }
        let existing = trail_files(&self.settings.dir)?;
        let keep = self.settings.max_files.saturating_sub(1);
        for (_, path) in existing.iter().take(existing.len().saturating_sub(keep)) {
            std::fs::remove_file(path).map_err(|source| io(path, source))?;
        }
        Ok(())
    }

    fn begin_file(&mut self) -> Result<(), AuditError> {
        let path = self.path_of(self.next_seq);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| io(&path, source))?;
        // The new name must survive a crash along with its lines.
        File::open(&self.settings.dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| io(&self.settings.dir, source))?;
        let bytes = file.metadata().map_err(|source| io(&path, source))?.len();
        self.current = Some(OpenFile { file, path, bytes });
        Ok(())
    }
}

fn io(path: &Path, source: std::io::Error) -> AuditError {
    AuditError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `audit-<seq, 20 digits>.jsonl`.
fn file_name(seq: u64) -> String {
    format!("audit-{seq:020}.jsonl")
}

/// The trail's files in `dir`, oldest first, with the sequence number their names carry.
fn trail_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, AuditError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|source| io(dir, source))? {
        let entry = entry.map_err(|source| io(dir, source))?;
        let name = entry.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_prefix("audit-"))
            .and_then(|n| n.strip_suffix(".jsonl"))
            .filter(|n| n.len() == 20)
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        files.push((seq, entry.path()));
    }
    files.sort();
    Ok(files)
}

/// The part of a line its hash covers.
#[derive(Serialize)]
struct LineHead<'a> {
    seq: u64,
    time: String,
    event: EventKind,
    outcome: &'a str,
    principal: &'a str,
    client: &'a str,
    listener: &'a str,
    detail: &'a Map<String, Value>,
    prev: &'a str,
}

/// A line ready to write (`\n` included) and its hash.
struct ChainedLine {
    text: String,
    hash: String,
}

/// The hash field every line ends with: `,"hash":"<64 hex digits>"}`.
const HASH_FIELD: &str = ",\"hash\":\"";
const HASH_SUFFIX_BYTES: usize = HASH_FIELD.len() + 64 + 2;

fn chained_line(seq: u64, prev: &str, event: &AuditEvent) -> ChainedLine {
    let time = time::OffsetDateTime::from(event.time)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let head = serde_json::to_string(&LineHead {
        seq,
        time,
        event: event.kind,
        outcome: &event.outcome,
        principal: &event.principal,
        client: &event.client,
        listener: &event.listener,
        detail: &event.detail,
        prev,
    })
    .expect("an audit line serializes");
    let hash = hex(&Sha256::digest(head.as_bytes()));
    let mut text = head;
    text.pop(); // the closing brace: the hash field goes before it
    text.push_str(HASH_FIELD);
    text.push_str(&hash);
    text.push_str("\"}\n");
    ChainedLine { text, hash }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the chain needs of a line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    seq: u64,
    prev: String,
    hash: String,
}

/// Checks a line (without its `\n`) against its own hash and reads its chain fields.
fn parse_line(line: &[u8]) -> Result<Entry, String> {
    let line = std::str::from_utf8(line).map_err(|_| "not UTF-8".to_string())?;
    let split = line
        .len()
        .checked_sub(HASH_SUFFIX_BYTES)
        .filter(|at| line.is_char_boundary(*at))
        .ok_or("too short for an audit line")?;
    let (head_open, suffix) = line.split_at(split);
    let hash = suffix
        .strip_prefix(HASH_FIELD)
        .and_then(|s| s.strip_suffix("\"}"))
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or("it does not end with a hash field")?;
    let head = format!("{head_open}}}");
    if hex(&Sha256::digest(head.as_bytes())) != hash {
        return Err("its hash does not match its content: the line was changed".into());
    }
    let fields: Value = serde_json::from_str(&head).map_err(|e| format!("not JSON: {e}"))?;
    let seq = fields["seq"].as_u64().ok_or("no seq")?;
    let prev = fields["prev"].as_str().ok_or("no prev")?.to_string();
    Ok(Entry {
        seq,
        prev,
        hash: hash.to_string(),
    })
}

/// What a whole trail holds, once verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub files: usize,
    pub entries: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// The hash of the last line: anchor it elsewhere to detect a rewritten trail.
    pub last_hash: String,
    /// Whether the trail starts at its first line ever (`false`: rotation deleted older files).
    pub from_genesis: bool,
}

/// Where and why a trail failed verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {reason}", path.display(), line.map(|l| format!(" line {l}")).unwrap_or_default())]
pub struct VerifyError {
    pub path: PathBuf,
    /// 1-based; `None` for the directory or the file as a whole.
    pub line: Option<usize>,
    pub reason: String,
}

/// Walks every line of the trail in `dir`: each line's hash matches its content, sequence
/// numbers follow one another across files, each `prev` is the hash of the line before, and
/// each file's name is its first line's sequence number.
pub fn verify(dir: &Path) -> Result<VerifyReport, VerifyError> {
    let files = trail_files(dir).map_err(|e| VerifyError {
        path: dir.to_path_buf(),
        line: None,
        reason: e.to_string(),
    })?;
    if files.is_empty() {
        return Err(VerifyError {
            path: dir.to_path_buf(),
            line: None,
            reason: "no audit files (audit-<seq>.jsonl) here".into(),
        });
    }
    let mut previous: Option<Entry> = None;
    let mut report = VerifyReport {
        files: files.len(),
        entries: 0,
        first_seq: 0,
        last_seq: 0,
        last_hash: String::new(),
        from_genesis: false,
    };
    for (name_seq, path) in &files {
        let bytes = std::fs::read(path).map_err(|e| VerifyError {
            path: path.clone(),
            line: None,
            reason: e.to_string(),
        })?;
        let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
        let torn = lines.pop().filter(|rest| !rest.is_empty()).is_some();
        for (index, line) in lines.iter().enumerate() {
            let fail = |reason: String| VerifyError {
                path: path.clone(),
                line: Some(index + 1),
                reason,
            };
            let entry = parse_line(line).map_err(fail)?;
            match &previous {
                None => {
                    report.first_seq = entry.seq;
                    report.from_genesis = entry.seq == 0;
                    if entry.seq == 0 && entry.prev != GENESIS {
                        return Err(fail("the first line's prev is not the genesis hash".into()));
                    }
                }
                Some(before) => {
                    if entry.seq != before.seq + 1 {
                        return Err(fail(format!(
                            "sequence number {} where {} was expected: lines were removed or reordered",
                            entry.seq,
                            before.seq + 1
                        )));
                    }
                    if entry.prev != before.hash {
                        return Err(fail(
                            "prev is not the previous line's hash: lines were removed, inserted or reordered"
                                .into(),
                        ));
                    }
                }
            }
            if index == 0 && entry.seq != *name_seq {
                return Err(fail(format!(
                    "the file's name says its first line is number {name_seq}, but it is {}",
                    entry.seq
                )));
            }
            report.entries += 1;
            report.last_seq = entry.seq;
            report.last_hash = entry.hash.clone();
            previous = Some(entry);
        }
        if torn {
            return Err(VerifyError {
                path: path.clone(),
                line: Some(lines.len() + 1),
                reason: "the last line has no end: a write torn by a crash (the broker cuts it when it next starts)".into(),
            });
        }
    }
    if previous.is_none() {
        return Err(VerifyError {
            path: dir.to_path_buf(),
            line: None,
            reason: "the audit files hold no line".into(),
        });
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: usize) -> AuditEvent {
        let mut detail = Map::new();
        detail.insert("n".into(), n.into());
        AuditEvent {
            time: SystemTime::now(),
            kind: EventKind::Authorization,
            outcome: "denied".into(),
            principal: "User:mallory".into(),
            client: "127.0.0.1:5000".into(),
            listener: "PLAINTEXT".into(),
            detail,
        }
    }

    fn settings(dir: &Path, max_file_bytes: u64, max_files: usize) -> AuditSettings {
        AuditSettings {
            dir: dir.to_path_buf(),
            max_file_bytes,
            max_files,
        }
    }

    fn write(settings: AuditSettings, events: usize) {
        let (log, writer) = AuditLog::open(settings, Map::new()).unwrap();
        for n in 0..events {
            log.record(event(n));
        }
        writer.finish(log, Duration::from_secs(10));
    }

    fn lines_of(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn a_written_trail_verifies_and_continues_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        write(settings(dir.path(), 1 << 20, 10), 5);
        write(settings(dir.path(), 1 << 20, 10), 3);
        let report = verify(dir.path()).unwrap();
        // Two audit_started lines and eight events, in one file.
        assert_eq!(report.entries, 10);
        assert_eq!((report.first_seq, report.last_seq), (0, 9));
        assert!(report.from_genesis);
        assert_eq!(report.files, 1);
        let lines = lines_of(&dir.path().join(file_name(0)));
        let first: Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(first["event"], "authorization");
        assert_eq!(first["principal"], "User:mallory");
        assert_eq!(first["detail"]["n"], 0);
        let restarted: Value = serde_json::from_str(&lines[6]).unwrap();
        assert_eq!(restarted["event"], "audit_started");
    }

    #[test]
    fn rotation_keeps_the_newest_files_and_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        // About 300 bytes a line: a few lines per file.
        write(settings(dir.path(), 1000, 3), 40);
        let files = trail_files(dir.path()).unwrap();
        assert_eq!(files.len(), 3);
        for (_, path) in &files {
            assert!(std::fs::metadata(path).unwrap().len() <= 1000);
        }
        let report = verify(dir.path()).unwrap();
        assert!(!report.from_genesis, "the oldest files were deleted");
        assert_eq!(report.last_seq, 40);
        assert_eq!(report.first_seq, files[0].0);
    }

    #[test]
    fn a_changed_removed_or_reordered_line_is_found() {
        let dir = tempfile::tempdir().unwrap();
        write(settings(dir.path(), 1 << 20, 10), 6);
        let path = dir.path().join(file_name(0));
        let original = lines_of(&path);
        let rewrite = |lines: &[String]| std::fs::write(&path, lines.join("\n") + "\n").unwrap();

        let mut changed = original.clone();
        changed[3] = changed[3].replace("mallory", "alice");
        rewrite(&changed);
        let e = verify(dir.path()).unwrap_err();
        assert_eq!(e.line, Some(4));
        assert!(e.reason.contains("was changed"), "{e}");

        let mut removed = original.clone();
        removed.remove(2);
        rewrite(&removed);
        let e = verify(dir.path()).unwrap_err();
        assert_eq!(e.line, Some(3));
        assert!(e.reason.contains("removed or reordered"), "{e}");

        let mut swapped = original.clone();
        swapped.swap(4, 5);
        rewrite(&swapped);
        assert_eq!(verify(dir.path()).unwrap_err().line, Some(5));

        rewrite(&original);
        assert_eq!(verify(dir.path()).unwrap().entries, 7);
    }

    #[test]
    fn a_torn_last_line_fails_verification_and_is_cut_at_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        write(settings(dir.path(), 1 << 20, 10), 2);
        let path = dir.path().join(file_name(0));
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"seq\":3,\"time\":").unwrap();
        drop(file);
        let e = verify(dir.path()).unwrap_err();
        assert!(e.reason.contains("torn"), "{e}");
        write(settings(dir.path(), 1 << 20, 10), 1);
        let report = verify(dir.path()).unwrap();
        assert_eq!(report.last_seq, 4);
        let lines = lines_of(&path);
        let started: Value = serde_json::from_str(&lines[3]).unwrap();
        assert_eq!(started["detail"]["torn_bytes_cut"], 16);
    }

    #[test]
    fn a_directory_without_a_trail_fails_verification() {
        let dir = tempfile::tempdir().unwrap();
        let e = verify(dir.path()).unwrap_err();
        assert!(e.reason.contains("no audit files"), "{e}");
        std::fs::write(dir.path().join(file_name(0)), b"").unwrap();
        let e = verify(dir.path()).unwrap_err();
        assert!(e.reason.contains("hold no line"), "{e}");
        let e = verify(&dir.path().join("missing")).unwrap_err();
        assert_eq!(e.line, None, "{e}");
    }

    #[test]
    fn a_last_line_that_is_not_an_entry_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        write(settings(dir.path(), 1 << 20, 10), 1);
        let path = dir.path().join(file_name(0));
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"hello\n").unwrap();
        drop(file);
        let e = AuditLog::open(settings(dir.path(), 1 << 20, 10), Map::new()).unwrap_err();
        assert!(matches!(e, AuditError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("sluice audit verify"));
    }
}
