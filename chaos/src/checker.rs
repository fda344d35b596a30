//! The checker: what a chaos run's history must satisfy, and the verdict.
//!
//! The final read-back (every partition read from its start to its high watermark after every
//! fault was healed) is the truth the operations are checked against:
//! - every acknowledged record is there, once, at the offset its acknowledgement named
//!   (else **lost**, **duplicated** or **wrong offset**). An acknowledgement may name no offset
//!   (librdkafka's idempotent producer reports offset -1001 for records it acknowledges
//!   implicitly: a later batch of the partition succeeded, so the broker holds them); such a
//!   record must be there once, anywhere (counted as **acknowledged without offset**);
//! - no record is there twice (**duplicated**; a plain producer's retries may store one twice,
//!   counted apart as **duplicated, plain**) and none that nobody sent (**unexpected**);
//! - a record whose outcome the producer could not know (timed out) is there at most once
//!   (present or absent are both fine, and counted);
//! - every record a consumer read during the run is still at the offset it was read at: an
//!   offset never held two records, and nothing read was lost later (**inconsistent read**);
//! - one idempotent producer's acknowledged records of a partition sit in the order they were
//!   sent (**reordered**: the idempotent producer's guarantee; a plain one has none);
//! - the group's committed offset at the end is at least every commit the coordinator
//!   acknowledged (**commit lost**);
//! - a transactional producer's records (the read-back reads committed records only) are
//!   visible exactly when their transaction committed: a committed transaction's records are
//!   all there once, at their acknowledged offsets (**lost** otherwise, as above); none of an
//!   aborted one is there (**aborted visible**); of a transaction whose outcome its producer
//!   could not know, all records or none (**torn transaction**). An acknowledgement of a
//!   record in a transaction that did not commit promises nothing, so those are not counted
//!   as acknowledged.
//!
//! Counts per class as Jepsen reports them, and a few examples of each bad class.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write;

use serde::Serialize;

use crate::history::{parse_value, Event, TransactionOutcome};

/// Examples kept per bad class.
const EXAMPLES: usize = 10;

/// The verdict on one history.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Verdict {
    /// No bad class has a member.
    pub valid: bool,
    pub sent: u64,
    pub acknowledged: u64,
    /// Acknowledged and found once at the acknowledged offset (or anywhere, for an
    /// acknowledgement without offset).
    pub ok: u64,
    /// Acknowledged without an offset (librdkafka's implicit acknowledgement), of `ok` or
    /// `lost`.
    pub acknowledged_without_offset: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// Stored twice, sent by a plain producer (allowed: at least once).
    pub duplicated_plain: u64,
    pub wrong_offset: u64,
    pub unexpected: u64,
    pub inconsistent_read: u64,
    pub reordered: u64,
    pub commit_lost: u64,
    /// Records of an aborted transaction in the read-back.
    pub aborted_visible: u64,
    /// Transactions of unknown outcome of which some records are visible and some not.
    pub torn_transactions: u64,
    pub transactions_committed: u64,
    pub transactions_aborted: u64,
    /// Outcome unknown to the producer (including one still open when the run ended).
    pub transactions_unknown: u64,
    /// Outcome unknown to the producer, found once in the log.
    pub unknown_present: u64,
    /// Outcome unknown to the producer, not in the log.
    pub unknown_absent: u64,
    /// Records consumers read during the run.
    pub read: u64,
    /// Records in the final read-back.
    pub stored: u64,
    /// A few members of each bad class, to start looking from.
    pub examples: BTreeMap<String, Vec<String>>,
}

impl Verdict {
    fn note(&mut self, class: &str, example: String) {
        let examples = self.examples.entry(class.to_string()).or_default();
        if examples.len() < EXAMPLES {
            examples.push(example);
        }
    }

    /// The verdict as text, one class per line.
    pub fn summary(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(
            text,
            "verdict: {}",
            if self.valid { "VALID" } else { "INVALID" }
        );
        for (name, count) in [
            ("sent", self.sent),
            ("acknowledged", self.acknowledged),
            ("ok", self.ok),
            ("without offset", self.acknowledged_without_offset),
            ("lost", self.lost),
            ("duplicated", self.duplicated),
            ("duplicated, plain", self.duplicated_plain),
            ("wrong offset", self.wrong_offset),
            ("unexpected", self.unexpected),
            ("inconsistent read", self.inconsistent_read),
            ("reordered", self.reordered),
            ("commit lost", self.commit_lost),
            ("aborted visible", self.aborted_visible),
            ("torn transactions", self.torn_transactions),
            ("txns committed", self.transactions_committed),
            ("txns aborted", self.transactions_aborted),
            ("txns unknown", self.transactions_unknown),
            ("unknown, present", self.unknown_present),
            ("unknown, absent", self.unknown_absent),
            ("read during the run", self.read),
            ("stored at the end", self.stored),
        ] {
            let _ = writeln!(text, "  {name:<22} {count}");
        }
        for (class, examples) in &self.examples {
            let _ = writeln!(text, "  e.g. {class}: {}", examples.join("; "));
        }
        text
    }
}

/// Checks `history` (see the module docs).
pub fn check(history: &[Event]) -> Verdict {
    let mut verdict = Verdict::default();
    let mut sent: HashSet<&str> = HashSet::new();
    let mut acked: Vec<(u32, &str, i32, i64)> = Vec::new();
    let mut unknown: HashSet<&str> = HashSet::new();
    let mut reads: Vec<(u32, i32, i64, &str)> = Vec::new();
    let mut committed: HashMap<i32, i64> = HashMap::new();
    let mut final_committed: HashMap<i32, i64> = HashMap::new();
    let mut stored_at: BTreeMap<(i32, i64), &str> = BTreeMap::new();
    let mut positions: HashMap<&str, Vec<(i32, i64)>> = HashMap::new();
    let mut plain: HashSet<u32> = HashSet::new();
    let mut transactional: HashSet<u32> = HashSet::new();
    // (producer, first sequence, last sequence, outcome) of each ended transaction.
    let mut transactions: Vec<(u32, u64, u64, TransactionOutcome)> = Vec::new();
    for event in history {
        match event {
            Event::Producer {
                producer,
                idempotent,
                transactional: in_transactions,
            } => {
                if !idempotent {
                    plain.insert(*producer);
                }
                if *in_transactions {
                    transactional.insert(*producer);
                }
            }
            Event::Transaction {
                producer,
                first_seq,
                last_seq,
                outcome,
                ..
            } => transactions.push((*producer, *first_seq, *last_seq, *outcome)),
            Event::Send { value, .. } => {
                sent.insert(value);
            }
            Event::Acked {
                producer,
                value,
                partition,
                offset,
                ..
            } => acked.push((*producer, value, *partition, *offset)),
            Event::Unknown { value, .. } => {
                unknown.insert(value);
            }
            Event::Read {
                consumer,
                partition,
                offset,
                value,
                ..
            } => reads.push((*consumer, *partition, *offset, value)),
            Event::Committed {
                partition, offset, ..
            } => {
                let highest = committed.entry(*partition).or_insert(*offset);
                *highest = (*highest).max(*offset);
            }
            Event::FinalCommitted { partition, offset } => {
                final_committed.insert(*partition, *offset);
            }
            Event::Final {
                partition,
                offset,
                value,
            } => {
                if let Some(earlier) = stored_at.insert((*partition, *offset), value) {
                    if earlier != value {
                        verdict.inconsistent_read += 1;
                        verdict.note(
                            "inconsistent read",
                            format!("{partition}@{offset} read back as {earlier} and {value}"),
                        );
                    }
                    continue;
                }
                positions
                    .entry(value)
                    .or_default()
                    .push((*partition, *offset));
            }
            Event::Fault { .. } => {}
        }
    }
    verdict.sent = sent.len() as u64;
    verdict.stored = stored_at.len() as u64;
    verdict.read = reads.len() as u64;

    let mut values: Vec<(&&str, &Vec<(i32, i64)>)> = positions.iter().collect();
    values.sort();
    for (value, at) in values {
        if !sent.contains(*value) {
            verdict.unexpected += 1;
            verdict.note("unexpected", format!("{value} at {}@{}", at[0].0, at[0].1));
        }
        let by_plain = parse_value(value).is_some_and(|(producer, _)| plain.contains(&producer));
        if at.len() > 1 && by_plain {
            verdict.duplicated_plain += 1;
        } else if at.len() > 1 {
            verdict.duplicated += 1;
            let places: Vec<String> = at.iter().map(|(p, o)| format!("{p}@{o}")).collect();
            verdict.note("duplicated", format!("{value} at {}", places.join(", ")));
        }
    }

    // A transactional producer's record: the outcome of its transaction (`None`: it never
    // ended, as good as unknown).
    let mut outcome_of: HashMap<(u32, u64), TransactionOutcome> = HashMap::new();
    for &(producer, first, last, outcome) in &transactions {
        for seq in first..=last {
            outcome_of.insert((producer, seq), outcome);
        }
    }
    let in_transaction = |value: &str| -> Option<Option<TransactionOutcome>> {
        let (producer, seq) = parse_value(value)?;
        transactional
            .contains(&producer)
            .then(|| outcome_of.get(&(producer, seq)).copied())
    };

    let mut acked_values: HashSet<&str> = HashSet::new();
    for &(_, value, partition, offset) in &acked {
        if !acked_values.insert(value) {
            continue;
        }
        match in_transaction(value) {
            None | Some(Some(TransactionOutcome::Committed)) => {}
            // Checked with its transaction below.
            Some(_) => continue,
        }
        verdict.acknowledged += 1;
        let offset_named = offset >= 0;
        if !offset_named {
            verdict.acknowledged_without_offset += 1;
        }
        match positions.get(value) {
            None => {
                verdict.lost += 1;
                verdict.note(
                    "lost",
                    format!("{value} (acknowledged at {partition}@{offset})"),
                );
            }
            Some(at) if offset_named && !at.contains(&(partition, offset)) => {
                verdict.wrong_offset += 1;
                verdict.note(
                    "wrong offset",
                    format!("{value} acknowledged at {partition}@{offset}, stored at {at:?}"),
                );
            }
            Some(_) => verdict.ok += 1,
        }
    }
    // Sent and never acknowledged: the producer gave up, or never answered before the end.
    let mut unacknowledged: Vec<&str> = sent
        .iter()
        .copied()
        .filter(|v| !acked_values.contains(v) && in_transaction(v).is_none())
        .collect();
    unacknowledged.extend(unknown.iter().copied().filter(|v| !sent.contains(v)));
    for value in unacknowledged {
        match positions.get(value) {
            None => verdict.unknown_absent += 1,
            Some(_) => verdict.unknown_present += 1,
        }
    }

    check_transactions(
        &mut verdict,
        &sent,
        &acked_values,
        &positions,
        &transactional,
        &transactions,
        &outcome_of,
    );

    for &(consumer, partition, offset, value) in &reads {
        match stored_at.get(&(partition, offset)) {
            Some(stored) if *stored == value => {}
            other => {
                verdict.inconsistent_read += 1;
                verdict.note(
                    "inconsistent read",
                    format!(
                        "consumer {consumer} read {value} at {partition}@{offset}, the log holds {}",
                        other.map_or("nothing there".to_string(), |v| v.to_string())
                    ),
                );
            }
        }
    }

    // One producer's acknowledged records of a partition, in send order, must have rising
    // offsets.
    // (producer, partition) -> (sequence, offset, value) of its acknowledged records.
    type Acknowledged<'a> = Vec<(u64, i64, &'a str)>;
    let mut by_producer: BTreeMap<(u32, i32), Acknowledged> = BTreeMap::new();
    for &(producer, value, partition, offset) in &acked {
        if plain.contains(&producer) || offset < 0 {
            continue;
        }
        if let Some((_, seq)) = parse_value(value) {
            by_producer
                .entry((producer, partition))
                .or_default()
                .push((seq, offset, value));
        }
    }
    for ((producer, partition), mut records) in by_producer {
        records.sort_unstable();
        records.dedup_by_key(|r| r.0);
        for pair in records.windows(2) {
            if pair[1].1 <= pair[0].1 {
                verdict.reordered += 1;
                verdict.note(
                    "reordered",
                    format!(
                        "producer {producer} partition {partition}: {} at {} after {} at {}",
                        pair[1].2, pair[1].1, pair[0].2, pair[0].1
                    ),
                );
            }
        }
    }

    let mut partitions: Vec<&i32> = committed.keys().collect();
    partitions.sort();
    for partition in partitions {
        let highest = committed[partition];
        let at_end = final_committed.get(partition).copied().unwrap_or(-1);
        if at_end < highest {
            verdict.commit_lost += 1;
            verdict.note(
                "commit lost",
                format!("partition {partition}: {highest} acknowledged, {at_end} at the end"),
            );
        }
    }

    verdict.valid = verdict.lost
        + verdict.duplicated
        + verdict.wrong_offset
        + verdict.unexpected
        + verdict.inconsistent_read
        + verdict.reordered
        + verdict.commit_lost
        + verdict.aborted_visible
        + verdict.torn_transactions
        == 0;
    verdict
}

/// The transactional producers' records against their transactions' outcomes (see the module
/// docs). Sent records of no ended transaction (the run ended inside one) form one transaction
/// of unknown outcome per producer.
fn check_transactions(
    verdict: &mut Verdict,
    sent: &HashSet<&str>,
    acked_values: &HashSet<&str>,
    positions: &HashMap<&str, Vec<(i32, i64)>>,
    transactional: &HashSet<u32>,
    transactions: &[(u32, u64, u64, TransactionOutcome)],
    outcome_of: &HashMap<(u32, u64), TransactionOutcome>,
) {
    let mut groups: Vec<(u32, Vec<String>, TransactionOutcome, bool)> = Vec::new();
    for &(producer, first, last, outcome) in transactions {
        let values = (first..=last)
            .map(|seq| crate::history::record_value(producer, seq))
            .filter(|v| sent.contains(v.as_str()))
            .collect();
        groups.push((producer, values, outcome, true));
    }
    // In send order (by sequence, not by the values' text).
    let mut open: Vec<(u32, u64)> = sent
        .iter()
        .filter_map(|value| parse_value(value))
        .filter(|key| transactional.contains(&key.0) && !outcome_of.contains_key(key))
        .collect();
    open.sort_unstable();
    let mut unended: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for (producer, seq) in open {
        let value = crate::history::record_value(producer, seq);
        unended.entry(producer).or_default().push(value);
    }
    for (producer, values) in unended {
        groups.push((producer, values, TransactionOutcome::Unknown, false));
    }
    for (producer, values, outcome, ended) in groups {
        let visible: Vec<&String> = values
            .iter()
            .filter(|v| positions.contains_key(v.as_str()))
            .collect();
        let span = match (values.first(), values.last()) {
            (Some(first), Some(last)) => format!("{first}..{last}"),
            _ => format!("an empty transaction of producer {producer}"),
        };
        match outcome {
            TransactionOutcome::Committed => {
                verdict.transactions_committed += 1;
                // Acknowledged ones were checked with every acknowledgement.
                for value in &values {
                    if !acked_values.contains(value.as_str())
                        && !positions.contains_key(value.as_str())
                    {
                        verdict.lost += 1;
                        verdict.note(
                            "lost",
                            format!("{value} (committed in {span}, never acknowledged)"),
                        );
                    }
                }
            }
            TransactionOutcome::Aborted => {
                verdict.transactions_aborted += 1;
                for value in &visible {
                    verdict.aborted_visible += 1;
                    verdict.note(
                        "aborted visible",
                        format!(
                            "{value} of the aborted {span} at {:?}",
                            positions[value.as_str()]
                        ),
                    );
                }
            }
            TransactionOutcome::Unknown => {
                verdict.transactions_unknown += 1;
                verdict.unknown_present += visible.len() as u64;
                verdict.unknown_absent += (values.len() - visible.len()) as u64;
                if !visible.is_empty() && visible.len() < values.len() {
                    verdict.torn_transactions += 1;
                    verdict.note(
                        "torn transaction",
                        format!(
                            "{} of {} records of {span} ({}) visible",
                            visible.len(),
                            values.len(),
                            if ended {
                                "outcome unknown"
                            } else {
                                "never ended"
                            }
                        ),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::record_value;

    fn send(producer: u32, seq: u64) -> Event {
        Event::Send {
            t_ms: seq as f64,
            producer,
            value: record_value(producer, seq),
        }
    }

    fn acked(producer: u32, seq: u64, partition: i32, offset: i64) -> Event {
        Event::Acked {
            t_ms: seq as f64 + 0.5,
            producer,
            value: record_value(producer, seq),
            partition,
            offset,
        }
    }

    fn stored(partition: i32, offset: i64, value: String) -> Event {
        Event::Final {
            partition,
            offset,
            value,
        }
    }

    /// Producer 0 sends 0..5 to partition 0, all acknowledged at offsets 0..5 and stored there;
    /// a consumer read the first three; the group committed 3 and still has it.
    fn clean() -> Vec<Event> {
        let mut history = Vec::new();
        for seq in 0..5 {
            history.push(send(0, seq));
            history.push(acked(0, seq, 0, seq as i64));
        }
        for seq in 0..3 {
            history.push(Event::Read {
                t_ms: 10.0,
                consumer: 0,
                partition: 0,
                offset: seq as i64,
                value: record_value(0, seq),
            });
        }
        history.push(Event::Committed {
            t_ms: 11.0,
            partition: 0,
            offset: 3,
        });
        history.push(Event::FinalCommitted {
            partition: 0,
            offset: 3,
        });
        for seq in 0..5 {
            history.push(stored(0, seq as i64, record_value(0, seq)));
        }
        history
    }

    fn without_final_at(history: Vec<Event>, partition: i32, offset: i64) -> Vec<Event> {
        history
            .into_iter()
            .filter(|e| {
                !matches!(e, Event::Final { partition: p, offset: o, .. } if *p == partition && *o == offset)
            })
            .collect()
    }

    #[test]
    fn a_clean_history_is_valid() {
        let verdict = check(&clean());
        assert!(verdict.valid, "{}", verdict.summary());
        assert_eq!((verdict.sent, verdict.acknowledged, verdict.ok), (5, 5, 5));
        assert_eq!((verdict.read, verdict.stored), (3, 5));
    }

    #[test]
    fn a_lost_acknowledged_write_is_caught() {
        let verdict = check(&without_final_at(clean(), 0, 4));
        assert!(!verdict.valid);
        assert_eq!(verdict.lost, 1, "{}", verdict.summary());
        assert!(verdict.examples["lost"][0].contains("p0-4"));
    }

    #[test]
    fn a_duplicate_is_caught() {
        let mut history = clean();
        history.push(stored(0, 5, record_value(0, 2)));
        let verdict = check(&history);
        assert!(!verdict.valid);
        assert_eq!(verdict.duplicated, 1, "{}", verdict.summary());
    }

    #[test]
    fn an_offset_that_held_two_records_is_caught() {
        // A consumer read p0-1 at offset 1, but after the faults offset 1 holds another record
        // (a leader overwrote an acknowledged-and-read suffix).
        let mut history = without_final_at(clean(), 0, 1);
        history.push(send(1, 0));
        history.push(stored(0, 1, record_value(1, 0)));
        let verdict = check(&history);
        assert!(!verdict.valid);
        assert_eq!(verdict.inconsistent_read, 1, "{}", verdict.summary());
        assert_eq!(verdict.lost, 1, "p0-1 was acknowledged too");
    }

    #[test]
    fn an_acknowledgement_without_offset_needs_the_record_once_anywhere() {
        // Seed 1109 (three nodes): librdkafka acknowledged p0-2 implicitly (offset -1001)
        // after a later batch of the partition succeeded.
        let mut history = clean();
        for event in &mut history {
            if let Event::Acked { value, offset, .. } = event {
                if *value == record_value(0, 2) {
                    *offset = -1001;
                }
            }
        }
        let verdict = check(&history);
        assert!(verdict.valid, "{}", verdict.summary());
        assert_eq!(verdict.acknowledged_without_offset, 1);
        assert_eq!(verdict.ok, verdict.acknowledged);
        // ... and is still lost when it is not there.
        let verdict = check(&without_final_at(history, 0, 2));
        assert_eq!(
            (verdict.lost, verdict.valid),
            (1, false),
            "{}",
            verdict.summary()
        );
    }

    #[test]
    fn a_wrong_offset_is_caught() {
        let mut history = clean();
        history.retain(|e| !matches!(e, Event::Final { offset, .. } if *offset >= 3));
        // p0-3 and p0-4 are stored swapped: each at the other's acknowledged offset.
        history.push(stored(0, 3, record_value(0, 4)));
        history.push(stored(0, 4, record_value(0, 3)));
        let verdict = check(&history);
        assert!(!verdict.valid);
        assert_eq!(verdict.wrong_offset, 2, "{}", verdict.summary());
    }

    #[test]
    fn a_reorder_is_caught() {
        // The broker acknowledged (and stored) p0-3 before p0-2.
        let mut history: Vec<Event> = clean()
            .into_iter()
            .filter(|e| !matches!(e, Event::Acked { .. } | Event::Final { .. }))
            .collect();
        for (seq, offset) in [(0, 0), (1, 1), (2, 3), (3, 2), (4, 4)] {
            history.push(acked(0, seq, 0, offset));
            history.push(stored(0, offset, record_value(0, seq)));
        }
        let verdict = check(&history);
        assert!(!verdict.valid);
        assert_eq!(verdict.reordered, 1, "{}", verdict.summary());
        assert_eq!(verdict.wrong_offset, 0);
    }

    #[test]
    fn a_plain_producer_may_duplicate_and_reorder() {
        let mut history = vec![Event::Producer {
            producer: 1,
            idempotent: false,
            transactional: false,
        }];
        for (seq, offset) in [(0, 0), (1, 2), (2, 1)] {
            history.push(send(1, seq));
            history.push(acked(1, seq, 0, offset));
            history.push(stored(0, offset, record_value(1, seq)));
        }
        // A retry stored p1-0 again.
        history.push(stored(0, 3, record_value(1, 0)));
        let verdict = check(&history);
        assert!(verdict.valid, "{}", verdict.summary());
        assert_eq!((verdict.duplicated_plain, verdict.reordered), (1, 0));
        // The same from an idempotent producer is two violations.
        history.remove(0);
        let verdict = check(&history);
        assert_eq!(
            (verdict.duplicated, verdict.reordered),
            (1, 1),
            "{}",
            verdict.summary()
        );
    }

    #[test]
    fn a_record_nobody_sent_is_caught() {
        let mut history = clean();
        history.push(stored(0, 5, "p9-9".into()));
        let verdict = check(&history);
        assert!(!verdict.valid);
        assert_eq!(verdict.unexpected, 1, "{}", verdict.summary());
    }

    #[test]
    fn a_lost_commit_is_caught() {
        let mut history = clean();
        history.retain(|e| !matches!(e, Event::FinalCommitted { .. }));
        history.push(Event::FinalCommitted {
            partition: 0,
            offset: 1,
        });
        let verdict = check(&history);
        assert!(!verdict.valid);
        assert_eq!(verdict.commit_lost, 1, "{}", verdict.summary());
    }

    #[test]
    fn unknown_outcomes_may_be_present_or_absent_but_not_twice() {
        let mut history = clean();
        history.push(send(0, 5));
        history.push(Event::Unknown {
            t_ms: 6.0,
            producer: 0,
            value: record_value(0, 5),
            error: "Message timed out".into(),
        });
        history.push(send(0, 6));
        history.push(stored(0, 5, record_value(0, 6)));
        let verdict = check(&history);
        assert!(verdict.valid, "{}", verdict.summary());
        assert_eq!((verdict.unknown_absent, verdict.unknown_present), (1, 1));
        history.push(stored(0, 6, record_value(0, 6)));
        assert_eq!(check(&history).duplicated, 1);
    }

    fn transaction(
        producer: u32,
        first_seq: u64,
        last_seq: u64,
        outcome: TransactionOutcome,
    ) -> Event {
        Event::Transaction {
            t_ms: last_seq as f64 + 1.0,
            producer,
            first_seq,
            last_seq,
            outcome,
            error: String::new(),
        }
    }

    /// Producer 2 (transactional) on partition 1: p2-0..2 committed, p2-3..4 aborted, p2-5..6
    /// of unknown outcome (committed, as it happens), p2-7 sent in a transaction that never
    /// ended (aborted by the coordinator). Every record acknowledged at offsets 0..8 (each
    /// transaction's marker takes an offset too, left out here); the read-back sees the
    /// committed ones only.
    fn transactional() -> Vec<Event> {
        let mut history = vec![Event::Producer {
            producer: 2,
            idempotent: true,
            transactional: true,
        }];
        for seq in 0..8 {
            history.push(send(2, seq));
            history.push(acked(2, seq, 1, seq as i64));
        }
        history.push(transaction(2, 0, 2, TransactionOutcome::Committed));
        history.push(transaction(2, 3, 4, TransactionOutcome::Aborted));
        history.push(transaction(2, 5, 6, TransactionOutcome::Unknown));
        for seq in [0, 1, 2, 5, 6] {
            history.push(stored(1, seq as i64, record_value(2, seq)));
        }
        history
    }

    #[test]
    fn transactions_are_visible_exactly_when_committed() {
        let verdict = check(&transactional());
        assert!(verdict.valid, "{}", verdict.summary());
        assert_eq!(
            (
                verdict.transactions_committed,
                verdict.transactions_aborted,
                verdict.transactions_unknown
            ),
            (1, 1, 2),
            "the open one is unknown too"
        );
        assert_eq!(
            (verdict.acknowledged, verdict.ok),
            (3, 3),
            "only a committed transaction's acknowledgements promise anything"
        );
        assert_eq!((verdict.unknown_present, verdict.unknown_absent), (2, 1));
    }

    #[test]
    fn an_aborted_record_in_the_read_back_is_caught() {
        let mut history = transactional();
        history.push(stored(1, 4, record_value(2, 4)));
        let verdict = check(&history);
        assert!(!verdict.valid);
        assert_eq!(verdict.aborted_visible, 1, "{}", verdict.summary());
        assert!(verdict.examples["aborted visible"][0].contains("p2-4"));
    }

    #[test]
    fn a_transaction_half_visible_is_caught() {
        // Outcome unknown, one of two records visible.
        let verdict = check(&without_final_at(transactional(), 1, 6));
        assert!(!verdict.valid);
        assert_eq!(verdict.torn_transactions, 1, "{}", verdict.summary());
        // A transaction still open at the end: p2-7 visible, p2-8 not.
        let mut history = transactional();
        history.push(send(2, 8));
        history.push(stored(1, 7, record_value(2, 7)));
        let verdict = check(&history);
        assert_eq!(verdict.torn_transactions, 1, "{}", verdict.summary());
        assert!(verdict.examples["torn transaction"][0].contains("never ended"));
    }

    #[test]
    fn a_committed_record_missing_is_lost_acknowledged_or_not() {
        let verdict = check(&without_final_at(transactional(), 1, 1));
        assert_eq!(
            (verdict.lost, verdict.valid),
            (1, false),
            "{}",
            verdict.summary()
        );
        // Without its acknowledgement (the client never reported it) it is lost all the same.
        let history: Vec<Event> = without_final_at(transactional(), 1, 1)
            .into_iter()
            .filter(|e| !matches!(e, Event::Acked { value, .. } if *value == record_value(2, 1)))
            .collect();
        let verdict = check(&history);
        assert_eq!(verdict.lost, 1, "{}", verdict.summary());
        assert!(verdict.examples["lost"][0].contains("never acknowledged"));
    }
}
