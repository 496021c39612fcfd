//! The read model of the hourly workload: per-hour totals in PostgreSQL (the
//! record, kept for ever) and their copy in Redis (the hot cache, with a TTL).
//!
//! The materializer writes both, PostgreSQL first; the query service reads
//! Redis, then PostgreSQL, and writes back what it found. The engine's
//! [`VersionedCache`] keeps the Redis copy; this module gives it the row
//! ([`HourCounts`] as a [`CachedRow`], one hash per hour,
//! `<prefix>:hour:<hour_start_ms>` with fields `v`, `u`, `c`, `i`) and holds
//! the PostgreSQL statements ([`pg`]). Beside them, the read models of time
//! ranges ([`ranges`]): hourly sketches and day totals, PostgreSQL only.

pub mod pg;
pub mod ranges;

use super::{HourCounts, HourStart};
use common::engine::store::cache::VersionedCache;
use common::engine::store::{CachedRow, Versioned};

/// The totals of one hour with the version that orders them.
pub type HourTotals = Versioned<HourCounts>;

/// The Redis copy of the hourly totals.
pub type HourCache = VersionedCache<HourCounts>;

/// The totals of an hour no store holds: zeros at version 0.
pub const EMPTY: HourTotals = Versioned { row: HourCounts::ZERO, version: 0 };

pub use crate::counts::{COUNTS, COUNT_FIELDS};

/// The PostgreSQL column of the version (`hourly_aggregates`).
pub const VERSION_COLUMN: &str = "version";

/// The Redis fields of [`COUNT_FIELDS`], in order.
const REDIS_FIELDS: [&str; COUNTS] = {
    let mut names = [""; COUNTS];
    let mut i = 0;
    while i < COUNTS {
        names[i] = COUNT_FIELDS[i].redis;
        i += 1;
    }
    names
};

/// The counts in the order of [`COUNT_FIELDS`].
pub fn count_values(counts: HourCounts) -> [u64; COUNTS] {
    counts.to_array()
}

/// The counts from values in the order of [`COUNT_FIELDS`].
pub fn counts_from_values(values: [u64; COUNTS]) -> HourCounts {
    HourCounts::from_array(values)
}

/// The PostgreSQL count columns joined with `sep`, each formatted by `each`
/// (e.g. `|c| format!("sum({c})::bigint")`).
pub fn count_columns(each: impl Fn(&str) -> String, sep: &str) -> String {
    COUNT_FIELDS.iter().map(|f| each(f.column)).collect::<Vec<_>>().join(sep)
}

impl CachedRow for HourCounts {
    type Id = HourStart;
    const KIND: &'static str = "hour";
    const FIELDS: &'static [&'static str] = &REDIS_FIELDS;

    fn id_to_key(hour: &HourStart) -> String {
        hour.start_ms().to_string()
    }

    fn to_values(&self) -> Vec<String> {
        count_values(*self).iter().map(u64::to_string).collect()
    }

    fn from_values(values: &[String]) -> Option<Self> {
        let parsed: Vec<u64> = values.iter().map(|v| v.parse().ok()).collect::<Option<_>>()?;
        Some(counts_from_values(<[u64; COUNTS]>::try_from(parsed).ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_round_trip_through_the_field_order() {
        let counts = HourCounts { unique_users: 1, clicks: 2, impressions: 3 };
        assert_eq!(counts_from_values(count_values(counts)), counts);
        assert_eq!(HourCounts::from_values(&counts.to_values()), Some(counts));
        assert_eq!(HourCounts::FIELDS, ["u", "c", "i"]);
    }

    #[test]
    fn an_hour_keeps_its_redis_key() {
        assert_eq!(HourCounts::KIND, "hour");
        assert_eq!(HourCounts::id_to_key(&HourStart::of(7_200_123)), "7200000");
    }

    #[test]
    fn a_malformed_count_is_refused() {
        assert_eq!(HourCounts::from_values(&["1".into(), "x".into(), "3".into()]), None);
        assert_eq!(HourCounts::from_values(&["1".into(), "2".into()]), None);
    }
}
