//! Event time and UTC hour and day bucketing.

use std::fmt;

/// Milliseconds since the Unix epoch (UTC).
pub type EpochMillis = i64;

/// Length of one bucket.
pub const HOUR_MS: i64 = 3_600_000;

/// Length of one UTC day (UTC has no daylight saving; leap seconds are not in epoch time).
pub const DAY_MS: i64 = 24 * HOUR_MS;

/// The first millisecond of a UTC hour; the identity of an hourly bucket.
///
/// Always a multiple of [`HOUR_MS`]. Built only through [`HourStart::of`] or
/// [`HourStart::from_aligned`], so a value of this type is always aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HourStart(i64);

impl HourStart {
    /// The hour that contains `ts_ms`. Works for negative times too (floor, not truncation).
    pub fn of(ts_ms: EpochMillis) -> Self {
        HourStart(ts_ms.div_euclid(HOUR_MS) * HOUR_MS)
    }

    /// Rebuilds an hour from its start, e.g. read back from a store; `None` if not aligned.
    pub fn from_aligned(start_ms: i64) -> Option<Self> {
        (start_ms.rem_euclid(HOUR_MS) == 0).then_some(HourStart(start_ms))
    }

    pub fn start_ms(self) -> i64 {
        self.0
    }

    /// The last millisecond that still belongs to this hour.
    pub fn last_ms(self) -> i64 {
        self.0 + HOUR_MS - 1
    }

    /// The first millisecond after this hour.
    pub fn end_ms(self) -> i64 {
        self.0 + HOUR_MS
    }

    pub fn contains(self, ts_ms: EpochMillis) -> bool {
        (self.0..self.end_ms()).contains(&ts_ms)
    }
}

impl HourStart {
    /// The UTC day this hour belongs to.
    pub fn day(self) -> DayStart {
        DayStart::of(self.0)
    }
}

/// The first millisecond of a UTC day; the identity of a daily bucket.
///
/// Always a multiple of [`DAY_MS`], built only through [`DayStart::of`] or
/// [`DayStart::from_aligned`], like [`HourStart`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DayStart(i64);

impl DayStart {
    /// The day that contains `ts_ms` (floor, also for negative times).
    pub fn of(ts_ms: EpochMillis) -> Self {
        DayStart(ts_ms.div_euclid(DAY_MS) * DAY_MS)
    }

    /// Rebuilds a day from its start; `None` if not aligned.
    pub fn from_aligned(start_ms: i64) -> Option<Self> {
        (start_ms.rem_euclid(DAY_MS) == 0).then_some(DayStart(start_ms))
    }

    pub fn start_ms(self) -> i64 {
        self.0
    }

    /// The first millisecond after this day.
    pub fn end_ms(self) -> i64 {
        self.0 + DAY_MS
    }
}

impl fmt::Display for DayStart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match chrono::DateTime::from_timestamp_millis(self.0) {
            Some(t) => write!(f, "{}", t.format("%Y-%m-%d")),
            None => write!(f, "{}ms", self.0),
        }
    }
}

impl fmt::Display for HourStart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match chrono::DateTime::from_timestamp_millis(self.0) {
            Some(t) => write!(f, "{}", t.format("%Y-%m-%dT%H:00Z")),
            None => write!(f, "{}ms", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hour_boundaries_belong_to_their_own_hour() {
        let h = HourStart::of(1_700_000_000_000);
        assert_eq!(HourStart::of(h.start_ms()), h);
        assert_eq!(HourStart::of(h.last_ms()), h);
        assert_ne!(HourStart::of(h.end_ms()), h);
        assert_eq!(HourStart::of(h.end_ms()).start_ms(), h.start_ms() + HOUR_MS);
    }

    #[test]
    fn displays_as_utc_hour() {
        assert_eq!(HourStart::of(3_600_000 * 25 + 5).to_string(), "1970-01-02T01:00Z");
    }

    #[test]
    fn from_aligned_rejects_unaligned_values() {
        assert!(HourStart::from_aligned(HOUR_MS * 3).is_some());
        assert!(HourStart::from_aligned(HOUR_MS * 3 + 1).is_none());
    }

    #[test]
    fn days_are_utc_days_made_of_24_hours() {
        let d = DayStart::of(DAY_MS * 3 + 5);
        assert_eq!(d.start_ms(), DAY_MS * 3);
        assert_eq!(d.to_string(), "1970-01-04");
        assert_eq!(HourStart::of(d.end_ms() - 1).day(), d);
        assert_ne!(HourStart::of(d.end_ms()).day(), d);
        assert_eq!(DayStart::of(-1).start_ms(), -DAY_MS);
        assert!(DayStart::from_aligned(DAY_MS).is_some());
        assert!(DayStart::from_aligned(HOUR_MS).is_none());
    }

    proptest! {
        #[test]
        fn every_hour_lies_in_exactly_one_day(ts in -10_000_000_000_000i64..10_000_000_000_000) {
            let (h, d) = (HourStart::of(ts), DayStart::of(ts));
            prop_assert_eq!(h.day(), d);
            prop_assert!(d.start_ms() <= h.start_ms() && h.end_ms() <= d.end_ms());
        }

        #[test]
        fn every_timestamp_falls_in_exactly_one_aligned_hour(ts in -10_000_000_000_000i64..10_000_000_000_000) {
            let h = HourStart::of(ts);
            prop_assert!(h.contains(ts));
            prop_assert_eq!(h.start_ms().rem_euclid(HOUR_MS), 0);
            prop_assert!(h.start_ms() <= ts && ts <= h.last_ms());
        }
    }
}
