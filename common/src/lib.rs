//! Shared foundation of the analytics platform.
//!
//! ```text
//! command ──events──▶ processor ──hourly aggregates──▶ materializer ──▶ Redis + PostgreSQL ◀── query
//! ```
//!
//! - [`analytics`]: the pure domain of the hourly workload (time buckets,
//!   validation, the exact user set, aggregation). No I/O.
//! - [`increments`]: the pure domain of the per-key sums workload. No I/O.
//! - [`avro`]: the records on the topics, single-object encoded.
//! - [`config`], [`telemetry`], [`shutdown`], [`http`]: written once, used by every service.
//! - [`kafka`], [`pg`], [`store`]: the adapters to the broker, PostgreSQL and the read model.

pub mod analytics;
pub mod engine;
pub mod increments;

#[cfg(any(test, feature = "test-util"))]
pub mod test_util;

/// A short random lowercase suffix (member ids, test names).
pub fn random_suffix() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..8).map(|_| char::from(b'a' + rng.random_range(0..26u8))).collect()
}

/// Milliseconds since the epoch by the system clock.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
