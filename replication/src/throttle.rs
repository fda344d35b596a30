//! Pacing of a leader's catch-up traffic to learners: the replicas joining a moving partition
//! (Kafka's `leader.replication.throttled.rate`, which `kafka-reassign-partitions.sh
//! --throttle` sets so that a move does not take the disk and network from producers).
//!
//! A token bucket per executor: the allowance grows at the configured rate (at most one
//! second's worth banked) and every append message sent to a learner spends its entries'
//! bytes, going into debt when one message is larger than what is left. While the allowance is
//! positive, each learner may have [`LEARNER_WINDOW`] append messages in flight; otherwise its
//! window is closed (raft-rs sends it no append until the window reopens). Nothing is held
//! back in memory: a closed window only stops raft-rs from producing more, so what leaves beyond
//! the rate is bounded by the window (a few messages per learner), and the debt pays it back.
//! Voters are never paced: followers in the ISR and the acks=all path keep their full speed.
//!
//! Invariant: with the throttle off, learners get the configured window back on the next step
//! (and then the throttle does no per-group work at all).

use std::time::Instant;

use raft::eraftpb::{Message, MessageType};

/// Append messages in flight to one learner while the allowance lasts.
pub const LEARNER_WINDOW: usize = 1;

/// See the module docs.
#[derive(Debug)]
pub struct CatchUpThrottle {
    bytes_per_second: Option<u64>,
    /// Bytes that may still leave (negative: owed).
    allowance: f64,
    refilled_at: Instant,
    /// Whether learners' windows may still be narrowed (to widen once the throttle is off).
    narrowed: bool,
}

impl Default for CatchUpThrottle {
    fn default() -> Self {
        CatchUpThrottle {
            bytes_per_second: None,
            allowance: 0.0,
            refilled_at: Instant::now(),
            narrowed: false,
        }
    }
}

impl CatchUpThrottle {
    /// The rate in bytes per second (`None`: unthrottled).
    pub fn set_rate(&mut self, bytes_per_second: Option<u64>) {
        let bytes_per_second = bytes_per_second.filter(|b| *b > 0);
        if bytes_per_second != self.bytes_per_second {
            self.bytes_per_second = bytes_per_second;
            self.allowance = 0.0;
            self.refilled_at = Instant::now();
        }
    }

    pub fn rate(&self) -> Option<u64> {
        self.bytes_per_second
    }

    /// The window every learner gets for this step: `None` when there is nothing to do (the
    /// throttle is off and every window is back to the configured one), `Some(None)` to give
    /// them the configured window back, `Some(Some(n))` to allow `n` messages in flight.
    pub fn window(&mut self, now: Instant) -> Option<Option<usize>> {
        let Some(rate) = self.bytes_per_second else {
            return std::mem::take(&mut self.narrowed).then_some(None);
        };
        self.narrowed = true;
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.refilled_at = now;
        self.allowance = (self.allowance + rate as f64 * elapsed).min(rate as f64);
        Some(Some(if self.allowance > 0.0 {
            LEARNER_WINDOW
        } else {
            0
        }))
    }

    /// Spends `bytes` of catch-up traffic (see [`catch_up_bytes`]).
    pub fn spend(&mut self, bytes: u64) {
        if self.bytes_per_second.is_some() {
            self.allowance -= bytes as f64;
        }
    }
}

/// The bytes `message` carries that the throttle counts: an append's entries, a snapshot.
pub fn catch_up_bytes(message: &Message) -> u64 {
    let bytes = match message.get_msg_type() {
        MessageType::MsgAppend => message.entries.iter().map(|e| e.data.len()).sum(),
        MessageType::MsgSnapshot => message.get_snapshot().get_data().len(),
        _ => 0,
    };
    bytes as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::Entry;
    use std::time::Duration;

    fn append(bytes: usize) -> Message {
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgAppend);
        let entry = Entry {
            data: vec![0u8; bytes].into(),
            ..Default::default()
        };
        message.entries = vec![entry].into();
        message
    }

    #[test]
    fn the_window_closes_while_the_allowance_is_owed_and_reopens_at_the_rate() {
        let mut throttle = CatchUpThrottle::default();
        let start = Instant::now();
        assert_eq!(throttle.window(start), None, "off: nothing to do");
        throttle.set_rate(Some(1000));
        assert_eq!(throttle.window(start), Some(Some(0)), "nothing banked yet");
        let later = start + Duration::from_millis(500);
        assert_eq!(throttle.window(later), Some(Some(LEARNER_WINDOW)));
        // 500 bytes banked; a 1,500-byte append leaves 1,000 owed: one more second closed.
        throttle.spend(catch_up_bytes(&append(1500)));
        let mut heartbeat = Message::default();
        heartbeat.set_msg_type(MessageType::MsgHeartbeat);
        assert_eq!(catch_up_bytes(&heartbeat), 0);
        assert_eq!(
            throttle.window(later + Duration::from_millis(900)),
            Some(Some(0))
        );
        assert_eq!(
            throttle.window(later + Duration::from_millis(1100)),
            Some(Some(LEARNER_WINDOW))
        );
        // At most a second is banked, however long the pause.
        throttle.window(later + Duration::from_secs(60));
        throttle.spend(catch_up_bytes(&append(1001)));
        assert_eq!(
            throttle.window(later + Duration::from_secs(60)),
            Some(Some(0))
        );
        // Off again: the windows are widened once, then nothing.
        throttle.set_rate(None);
        assert_eq!(throttle.window(later), Some(None));
        assert_eq!(throttle.window(later), None);
    }
}
