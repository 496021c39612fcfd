//! The read model of the hourly workload: per-hour totals in PostgreSQL (the
//! record, kept for ever) and their copy in Redis (the hot cache, with a TTL).
//!
//! The materializer writes both, PostgreSQL first; the query service reads
//! Redis, then PostgreSQL, and writes back what it found. Every Redis write
//! carries the PostgreSQL row's `version` and only a newer version replaces an
//! older one, so writers racing each other never move the cache backwards.

pub mod cache;
pub mod hours;

use crate::analytics::HourCounts;

/// Readiness of a service that uses both read-model stores: PostgreSQL
/// answers within 2 s. Redis is only the hot copy: without it the service
/// works on PostgreSQL alone (degraded, logged and counted), so its absence
/// does not take the instance out of rotation.
///
/// # Errors
/// PostgreSQL did not answer.
pub async fn check_ready(pool: &deadpool_postgres::Pool, cache: &cache::HourCache) -> Result<(), String> {
    let limit = std::time::Duration::from_secs(2);
    if !crate::engine::pg::ping(pool, limit).await {
        return Err("postgres unreachable".into());
    }
    if !cache.ping(limit).await {
        tracing::debug!("ready without redis: serving from postgres");
    }
    Ok(())
}

/// The totals of one hour with the version that orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HourTotals {
    pub counts: HourCounts,
    /// Grows by one on every change of the hour in PostgreSQL; 0 means "no data yet".
    pub version: i64,
}

impl HourTotals {
    pub const EMPTY: HourTotals =
        HourTotals { counts: HourCounts { unique_users: 0, clicks: 0, impressions: 0 }, version: 0 };
}

/// How many counts an hour's read model holds.
pub const COUNTS: usize = 3;

/// Where one value of the hour's read model lives: its field in the Redis
/// hash and its column in PostgreSQL (`hourly_aggregates`,
/// `hourly_partition_aggregates`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub redis: &'static str,
    pub column: &'static str,
}

/// The version that orders the copies of an hour.
pub const VERSION_FIELD: Field = Field { redis: "v", column: "version" };

/// The counts of an hour, in the order of [`count_values`] and [`counts_from_values`].
///
/// The single definition the Redis scripts and reads and the PostgreSQL
/// statements and row mapping are built from. To add a count: add it to
/// [`HourCounts`], then the compiler points here (the two functions below
/// destructure it exhaustively, and the array length is [`COUNTS`]).
pub const COUNT_FIELDS: [Field; COUNTS] = [
    Field { redis: "u", column: "unique_users" },
    Field { redis: "c", column: "clicks" },
    Field { redis: "i", column: "impressions" },
];

/// The counts in the order of [`COUNT_FIELDS`].
pub fn count_values(counts: HourCounts) -> [u64; COUNTS] {
    let HourCounts { unique_users, clicks, impressions } = counts;
    [unique_users, clicks, impressions]
}

/// The counts from values in the order of [`COUNT_FIELDS`].
pub fn counts_from_values(values: [u64; COUNTS]) -> HourCounts {
    let [unique_users, clicks, impressions] = values;
    HourCounts { unique_users, clicks, impressions }
}

/// Every field of the Redis hash, the version first.
pub fn redis_fields() -> impl Iterator<Item = &'static str> {
    std::iter::once(VERSION_FIELD.redis).chain(COUNT_FIELDS.iter().map(|f| f.redis))
}

/// The PostgreSQL count columns joined with `sep`, each formatted by `each`
/// (e.g. `|c| format!("sum({c})::bigint")`).
pub fn count_columns(each: impl Fn(&str) -> String, sep: &str) -> String {
    COUNT_FIELDS.iter().map(|f| each(f.column)).collect::<Vec<_>>().join(sep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_round_trip_through_the_field_order() {
        let counts = HourCounts { unique_users: 1, clicks: 2, impressions: 3 };
        assert_eq!(counts_from_values(count_values(counts)), counts);
        assert_eq!(redis_fields().collect::<Vec<_>>(), ["v", "u", "c", "i"]);
    }
}
