//! Shared foundation of the analytics platform.
//!
//! ```text
//! command ──events──▶ processor ──hourly aggregates──▶ materializer ──▶ Redis + PostgreSQL ◀── query
//! ```
//!
//! - [`engine`]: what every workload's pipeline needs and that names no
//!   workload: config, telemetry, shutdown, HTTP edge, log I/O, partition
//!   ownership, PostgreSQL, Avro encoding, the versioned read-model cache, and
//!   the workload descriptor ([`engine::workload::Workload`]).
//!
//! No workload code lives here: each workload is its own crate under
//! `workloads/`, and the `platform` crate lists them.

pub mod engine;

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
