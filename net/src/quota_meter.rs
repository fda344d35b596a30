//! Client quotas enforced on this shard: per (user, client id) the bytes produced and fetched,
//! and the shard's time spent on the client's requests, are measured as Kafka's quota manager
//! measures them (a rate over up to 11 one-second samples, never over less than 10 s), and a
//! request that takes the rate above the quota that applies (`sluice_core::quotas::resolve`)
//! is answered with `throttle_time_ms` and delayed by it, so the client slows down to its quota
//! (Kafka before KIP-219 delayed the response; since, it mutes the channel for that long: the
//! same pacing seen from the client).
//!
//! Request time (Kafka's `request_percentage`) is the time the shard's thread spent polling the
//! request's task — decoding, handling, encoding; not the time it waited for a disk or another
//! shard — in percent of one thread: a quota of 50 lets a client use half a shard.
//!
//! Each shard measures its own connections (thread-local meters): a client whose connections
//! land on several shards gets the quota on each. The meters of idle clients are dropped after a
//! minute.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Kafka's `quota.window.size.seconds` and `quota.window.num`.
const SAMPLE: Duration = Duration::from_secs(1);
const SAMPLES: u32 = 11;
/// The longest throttle answered (Kafka caps it at the quota window too).
const THROTTLE_MAX: Duration = Duration::from_secs(10);
/// Meters untouched this long are forgotten.
const IDLE: Duration = Duration::from_secs(60);

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Bytes of record batches produced.
    Produce,
    /// Bytes of records fetched.
    Fetch,
    /// Percent-seconds of the shard's thread (see [`percent_seconds`]).
    Request,
}

/// `spent` of one thread's time, in the unit a `request_percentage` rate is measured in.
pub fn percent_seconds(spent: Duration) -> f64 {
    spent.as_secs_f64() * 100.0
}

#[derive(Debug)]
struct Meter {
    /// (sample start, bytes), oldest first.
    samples: Vec<(Instant, f64)>,
    touched: Instant,
}

impl Meter {
    /// Adds `amount` at `now` and answers the rate in units per second.
    fn record(&mut self, amount: f64, now: Instant) -> f64 {
        let horizon = SAMPLE * SAMPLES;
        self.samples
            .retain(|(start, _)| now.duration_since(*start) < horizon);
        match self.samples.last_mut() {
            Some((start, total)) if now.duration_since(*start) < SAMPLE => *total += amount,
            _ => self.samples.push((now, amount)),
        }
        self.touched = now;
        let oldest = self.samples.first().map_or(now, |(s, _)| *s);
        let window = now
            .duration_since(oldest)
            .max(SAMPLE * (SAMPLES - 1))
            .as_secs_f64();
        self.samples.iter().map(|(_, a)| a).sum::<f64>() / window
    }
}

thread_local! {
    static METERS: RefCell<HashMap<(Kind, String, String), Meter>> = RefCell::new(HashMap::new());
}

/// Records `amount` of `kind` for (`user`, `client_id`) against `quota` (units per second) and
/// answers how long to throttle the client: Kafka's `(rate - quota) / quota * window`. An
/// amount of zero answers the throttle the client has earned so far.
pub fn record(kind: Kind, user: &str, client_id: &str, amount: f64, quota: f64) -> Duration {
    let now = Instant::now();
    METERS.with(|meters| {
        let mut meters = meters.borrow_mut();
        if meters.len() > 1024 {
            meters.retain(|_, m| now.duration_since(m.touched) < IDLE);
        }
        let meter = meters
            .entry((kind, user.to_string(), client_id.to_string()))
            .or_insert_with(|| Meter {
                samples: Vec::new(),
                touched: now,
            });
        let rate = meter.record(amount, now);
        if rate <= quota {
            return Duration::ZERO;
        }
        let window = SAMPLE * (SAMPLES - 1);
        window.mul_f64((rate - quota) / quota).min(THROTTLE_MAX)
    })
}

/// The user a quota sees: the principal's name without its `User:` type.
pub fn quota_user(principal: &str) -> &str {
    principal.strip_prefix("User:").unwrap_or(principal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_over_its_quota_is_throttled_in_proportion() {
        // 10 s window: 2 MB against 100 KB/s is twice the quota: throttle 10 s (capped).
        assert_eq!(
            record(Kind::Produce, "a", "c", 500_000.0, 100_000.0),
            Duration::ZERO
        );
        let throttle = record(Kind::Produce, "a", "c", 1_000_000.0, 100_000.0);
        assert!(throttle > Duration::from_secs(4), "{throttle:?}");
        // Another client id has its own meter.
        assert_eq!(
            record(Kind::Produce, "a", "d", 500_000.0, 100_000.0),
            Duration::ZERO
        );
        assert_eq!(quota_user("User:alice"), "alice");
        // 20 s of a thread within 10 s against 100%: twice the quota.
        let spent = percent_seconds(Duration::from_secs(20));
        assert!(record(Kind::Request, "a", "c", spent, 100.0) >= Duration::from_secs(9));
        assert!(record(Kind::Request, "a", "c", 0.0, 100.0) >= Duration::from_secs(9));
    }
}
