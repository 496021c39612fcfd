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
    if !crate::pg::ping(pool, limit).await {
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
