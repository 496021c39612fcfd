//! The horizon: engine policy, set by the deployment
//! ([`crate::engine::config::HorizonConfig`], in the command's and the
//! processor's config) and handed to each workload's intake and aggregation,
//! which apply it to their own periods (the analytics workload: hours). How
//! far from the accepting clock an event time may be, and how long a period
//! stays open for late events.
//!
//! One value per deployment: the command accepts by it and the processor
//! closes periods by it, so both must hold the same one: both agree it with
//! the copy stored in PostgreSQL at startup ([`crate::engine::pg::agree_horizon`])
//! and refuse to run on a mismatch.

use std::time::Duration;

/// See the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Horizon {
    /// Oldest accepted event: `accepted_at - past`.
    pub past: Duration,
    /// Newest accepted event: `accepted_at + future`.
    pub future: Duration,
    /// Extra time past `past` before a period closes: absorbs the skew between
    /// a command host's clock and the broker's, which closes periods.
    pub grace: Duration,
}

impl Default for Horizon {
    fn default() -> Self {
        Horizon {
            past: Duration::from_secs(7 * 24 * 3600),
            future: Duration::from_secs(300),
            grace: Duration::from_secs(3600),
        }
    }
}

/// An event time outside the horizon, as seen from the accepting clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutsideHorizon {
    TooOld { timestamp_ms: i64, oldest_ms: i64 },
    FromFuture { timestamp_ms: i64, newest_ms: i64 },
}

impl Horizon {
    /// How long after its end a period stays open, on the partition's watermark.
    pub fn retention_ms(&self) -> i64 {
        self.past_ms().saturating_add(duration_ms(self.grace))
    }

    /// True if an event of the period ending at `period_end_ms`, appended to
    /// the log at broker time `appended_ms`, is counted: the rule the
    /// processor applies, evaluated on the same clock (the broker's log-append time).
    pub fn counted_at(&self, period_end_ms: i64, appended_ms: i64) -> bool {
        period_end_ms.saturating_add(self.retention_ms()) > appended_ms
    }

    /// The settings every service of a deployment must agree on, as stored in PostgreSQL.
    pub fn settings(&self) -> [(&'static str, String); 3] {
        [
            ("horizon.past_ms", self.past_ms().to_string()),
            ("horizon.future_ms", self.future_ms().to_string()),
            ("horizon.grace_ms", duration_ms(self.grace).to_string()),
        ]
    }

    pub fn past_ms(&self) -> i64 {
        duration_ms(self.past)
    }

    pub fn future_ms(&self) -> i64 {
        duration_ms(self.future)
    }

    /// Accepts an event time as seen at `now_ms`, or says why not. Both edges are inclusive.
    ///
    /// # Errors
    /// [`OutsideHorizon`], which the workload turns into its own reject.
    pub fn check(&self, timestamp_ms: i64, now_ms: i64) -> Result<(), OutsideHorizon> {
        let oldest = now_ms.saturating_sub(self.past_ms());
        let newest = now_ms.saturating_add(self.future_ms());
        if timestamp_ms < oldest {
            Err(OutsideHorizon::TooOld { timestamp_ms, oldest_ms: oldest })
        } else if timestamp_ms > newest {
            Err(OutsideHorizon::FromFuture { timestamp_ms, newest_ms: newest })
        } else {
            Ok(())
        }
    }
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;
    const HOUR_MS: i64 = 3_600_000;

    #[test]
    fn horizon_edges_are_inclusive() {
        let h = Horizon::default();
        assert!(h.check(NOW - h.past_ms(), NOW).is_ok());
        assert!(h.check(NOW + h.future_ms(), NOW).is_ok());
        assert!(matches!(h.check(NOW - h.past_ms() - 1, NOW), Err(OutsideHorizon::TooOld { .. })));
        assert!(matches!(h.check(NOW + h.future_ms() + 1, NOW), Err(OutsideHorizon::FromFuture { .. })));
    }

    #[test]
    fn counted_at_is_the_processors_closing_rule() {
        let h = Horizon::default();
        let end = NOW - NOW % HOUR_MS + HOUR_MS;
        let closes = end + h.retention_ms();
        assert!(h.counted_at(end, closes - 1));
        assert!(!h.counted_at(end, closes));
        // The grace covers a command clock up to `grace` behind the broker's.
        let accepted_by_slow_host = end + h.past_ms();
        assert!(h.counted_at(end, accepted_by_slow_host + 59 * 60_000));
    }
}
