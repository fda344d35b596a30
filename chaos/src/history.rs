//! The history of a chaos run: every operation the workload performed and every fault the
//! harness injected, one JSON object per line (`history.jsonl`), in the order they were
//! recorded. Times are milliseconds since the run started.
//!
//! A record's value names who sent it and in what order (`p<producer>-<seq>`, see
//! [`record_value`]), so the checker can tell a duplicate, a stranger and a reordering apart
//! from the value alone.

use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A producer of the workload, before it sends anything. A plain (not idempotent) producer
    /// may store a record twice when it retries, or out of order: Kafka promises neither. A
    /// transactional one (idempotent too) sends its records in transactions
    /// ([`Event::Transaction`]); only committed ones may be seen.
    Producer {
        producer: u32,
        idempotent: bool,
        #[serde(default)]
        transactional: bool,
    },
    /// A record handed to a producer (the invocation).
    Send {
        t_ms: f64,
        producer: u32,
        value: String,
    },
    /// The broker acknowledged the record at this offset.
    Acked {
        t_ms: f64,
        producer: u32,
        value: String,
        partition: i32,
        offset: i64,
    },
    /// The producer gave up on the record: it may be stored or not (a timeout after the request
    /// left cannot tell), but at most once.
    Unknown {
        t_ms: f64,
        producer: u32,
        value: String,
        error: String,
    },
    /// A transactional producer ended the transaction holding its records `first_seq` to
    /// `last_seq` (values `p<producer>-<seq>`, both ends included).
    Transaction {
        t_ms: f64,
        producer: u32,
        first_seq: u64,
        last_seq: u64,
        outcome: TransactionOutcome,
        /// What the client said when the outcome is not committed (empty otherwise).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        error: String,
    },
    /// A consumer read the record during the run.
    Read {
        t_ms: f64,
        consumer: u32,
        partition: i32,
        offset: i64,
        value: String,
    },
    /// The group coordinator acknowledged a commit of this offset (the next one to read).
    Committed {
        t_ms: f64,
        partition: i32,
        offset: i64,
    },
    /// The group's committed offset as read back after the run.
    FinalCommitted { partition: i32, offset: i64 },
    /// What the partition holds at this offset, read back after every fault was healed.
    Final {
        partition: i32,
        offset: i64,
        value: String,
    },
    /// A fault injected (`kill`, `pause`) or healed (`restart`, `resume`).
    Fault {
        t_ms: f64,
        action: String,
        node: usize,
    },
}

/// How a transaction ended, as its producer knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransactionOutcome {
    /// `commit_transaction` succeeded: every record must be visible, once.
    Committed,
    /// The producer aborted it (on purpose or after an abortable error) and the coordinator
    /// acknowledged the abort: no record may be visible.
    Aborted,
    /// The producer failed without knowing (a fatal error, or the run ended): all of its
    /// records visible or none.
    Unknown,
}

/// The value of producer `producer`'s `seq`-th record.
pub fn record_value(producer: u32, seq: u64) -> String {
    format!("p{producer}-{seq}")
}

/// The producer and sequence a value names, if it is one of ours.
pub fn parse_value(value: &str) -> Option<(u32, u64)> {
    let (producer, seq) = value.strip_prefix('p')?.split_once('-')?;
    Some((producer.parse().ok()?, seq.parse().ok()?))
}

pub fn write_history(path: &Path, events: &[Event]) -> Result<(), String> {
    let file =
        std::fs::File::create(path).map_err(|e| format!("create {}: {e}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    for event in events {
        let line = serde_json::to_string(event).map_err(|e| e.to_string())?;
        writeln!(out, "{line}").map_err(|e| format!("write {}: {e}", path.display()))?;
    }
    out.flush()
        .map_err(|e| format!("write {}: {e}", path.display()))
}

pub fn read_history(path: &Path) -> Result<Vec<Event>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let mut events = Vec::new();
    for (number, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| format!("read {}: {e}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        events.push(
            serde_json::from_str(&line)
                .map_err(|e| format!("{} line {}: {e}", path.display(), number + 1))?,
        );
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_name_their_producer_and_sequence() {
        assert_eq!(parse_value(&record_value(3, 1234)), Some((3, 1234)));
        assert_eq!(parse_value("hello"), None);
        assert_eq!(parse_value("p1-x"), None);
    }

    #[test]
    fn a_history_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        let events = vec![
            Event::Send {
                t_ms: 1.5,
                producer: 0,
                value: record_value(0, 0),
            },
            Event::Fault {
                t_ms: 2.0,
                action: "kill".into(),
                node: 1,
            },
            Event::Transaction {
                t_ms: 2.5,
                producer: 0,
                first_seq: 0,
                last_seq: 0,
                outcome: TransactionOutcome::Aborted,
                error: "on purpose".into(),
            },
            Event::Final {
                partition: 0,
                offset: 0,
                value: record_value(0, 0),
            },
        ];
        write_history(&path, &events).unwrap();
        assert_eq!(read_history(&path).unwrap(), events);
    }

    #[test]
    fn a_history_from_before_transactions_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        std::fs::write(
            &path,
            "{\"type\":\"producer\",\"producer\":2,\"idempotent\":true}\n",
        )
        .unwrap();
        assert_eq!(
            read_history(&path).unwrap(),
            vec![Event::Producer {
                producer: 2,
                idempotent: true,
                transactional: false
            }]
        );
    }
}
