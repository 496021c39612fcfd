//! `GET /analytics/aggregate` is bounded: a range beyond the documented
//! maximum answers 400 at once, and a range at the maximum over sketches of
//! the largest size (49,155 bytes, dense) completes with the query's peak
//! resident memory (`VmHWM` of the real process) under 100 MB, because the
//! sketches are merged in bounded batches instead of loaded at once.
//!
//! The read models are seeded directly in PostgreSQL (as the materializer
//! writes them): 31 days × 24 hours × 4 partitions = 2,976 dense sketches,
//! 146 MB, which the pipeline would take far too long to produce.

use analytics::range::MAX_AGGREGATE_HOURS;
use analytics::time::{DAY_MS, HOUR_MS};
use analytics::UserSketch;
use common::test_util::http;
use e2e::{Service, Stack};

/// Far from any real data and from "now": the test does not depend on the clock.
const D0: i64 = 1_900_000_000_000 / DAY_MS * DAY_MS;
const PARTITIONS: i32 = 4;
/// Enough distinct users per (hour, partition) for a dense sketch.
const USERS_PER_PARTITION: u64 = 100_000;

/// The peak resident set of a process, in kB (`VmHWM` in `/proc/<pid>/status`).
fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM line");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmHWM in kB")
}

/// The dense sketch of partition `p`'s users (user hashes disjoint across partitions).
fn sketch(p: i32) -> Vec<u8> {
    let base = u64::from(p as u32) * 1_000_000;
    let sketch: UserSketch =
        (base..base + USERS_PER_PARTITION).map(|k| analytics::event::hash_user(&k.to_le_bytes())).collect();
    let bytes = sketch.to_bytes();
    assert_eq!(bytes.len(), 49_155, "a dense sketch: the largest size");
    bytes
}

/// Every (hour, partition) of `[from, to)`: a dense sketch, and the hour totals.
async fn seed(stack: &Stack, from: i64, to: i64) {
    let pool = common::engine::pg::pool(&stack.pg).expect("pool");
    let client = pool.get().await.expect("postgres");
    for p in 0..PARTITIONS {
        client
            .execute(
                "INSERT INTO hourly_partition_sketches (hour_start_ms, partition, sketch, input_offset)
                 SELECT h, $1, $2, 1 FROM generate_series($3::bigint, $4::bigint - 1, 3600000) h",
                &[&p, &sketch(p), &from, &to],
            )
            .await
            .expect("seeding sketches");
    }
    let users = USERS_PER_PARTITION as i64 * i64::from(PARTITIONS);
    client
        .execute(
            "INSERT INTO hourly_aggregates (hour_start_ms, unique_users, clicks, impressions, version)
             SELECT h, $1, 1, 2, 1 FROM generate_series($2::bigint, $3::bigint - 1, 3600000) h",
            &[&users, &from, &to],
        )
        .await
        .expect("seeding hour totals");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregate_ranges_are_bounded_in_length_and_memory() {
    let mut stack = Stack::new();
    // Debug builds merge slowly; the bound under test is memory, not time.
    stack.env("REQUEST_TIMEOUT", "120s");
    let query = stack.start("query", Service::Query).await;
    let pid = stack.pid("query");
    let hours = i64::try_from(MAX_AGGREGATE_HOURS).expect("small");
    let (from, to) = (D0, D0 + hours * HOUR_MS);
    seed(&stack, from, to).await;
    let before = peak_rss_kb(pid);

    // Ten years: refused at once, with a one-line reason.
    let started = std::time::Instant::now();
    let (status, body) =
        http(query, "GET", &format!("/analytics/aggregate?from={from}&to={}", from + 3652 * DAY_MS)).await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(body.trim_end().lines().count(), 1, "{body}");
    assert!(body.contains("at most"), "{body}");
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "refused without reading: {:?}", started.elapsed());
    // One hour more than the maximum: refused too.
    let (status, _) =
        http(query, "GET", &format!("/analytics/aggregate?from={from}&to={}", to + HOUR_MS)).await.unwrap();
    assert_eq!(status, 400);

    // The maximum: answered, the estimate right, memory bounded.
    let started = std::time::Instant::now();
    let (status, body) = http(query, "GET", &format!("/analytics/aggregate?from={from}&to={to}")).await.unwrap();
    let took = started.elapsed();
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let users = (USERS_PER_PARTITION * PARTITIONS as u64) as f64;
    let estimate = answer["unique_users"].as_u64().unwrap() as f64;
    assert!((estimate - users).abs() / users < 0.02, "estimate {estimate} for {users} users");
    assert_eq!(answer["clicks"].as_u64(), Some(MAX_AGGREGATE_HOURS));
    let peak = peak_rss_kb(pid);
    eprintln!(
        "aggregate over {MAX_AGGREGATE_HOURS} hours × {PARTITIONS} partitions (146 MB of sketches): {took:?}, \
         query VmHWM {before} kB before, {peak} kB after"
    );
    assert!(peak < 100 * 1024, "the query's peak RSS reached {peak} kB");
    stack.cleanup().await;
}
