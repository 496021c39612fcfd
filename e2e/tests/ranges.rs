//! Time ranges end to end, through real processes: events posted across hour
//! and day edges (late ones included) read back from
//! `GET /analytics/timeseries` (hourly and daily) and `GET /analytics/aggregate`
//! exactly, day unique users exact, and a range no exact set covers estimated
//! by the hourly sketches within tolerance.
//!
//! The days used are whole UTC days two and three days back: inside the
//! horizon and away from "now", so nothing depends on when the test runs.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use analytics::time::{DAY_MS, HOUR_MS};
use analytics::DayStart;
use common::test_util::http;
use e2e::{post_all, Event, Kind, Stack};
use serde_json::Value;

const CONVERGE: Duration = Duration::from_secs(90);

/// Users, clicks and impressions of one bucket.
#[derive(Debug, Default, Clone)]
struct Bucket {
    users: HashSet<String>,
    clicks: u64,
    impressions: u64,
}

impl Bucket {
    fn add(&mut self, e: &Event) {
        self.users.insert(e.user.clone());
        match e.kind {
            Kind::Click => self.clicks += 1,
            Kind::Impression => self.impressions += 1,
        }
    }

    fn json(&self, start: i64) -> Value {
        serde_json::json!({"start": start, "unique_users": self.users.len(), "clicks": self.clicks, "impressions": self.impressions})
    }
}

/// The exact expected buckets of `interval_ms` over `[from, to)` (both aligned).
fn expected(events: &[Event], from: i64, to: i64, interval_ms: i64) -> Vec<Value> {
    let mut buckets: BTreeMap<i64, Bucket> =
        (from..to).step_by(interval_ms as usize).map(|s| (s, Bucket::default())).collect();
    for e in events {
        if let Some(b) = buckets.get_mut(&(e.timestamp_ms.div_euclid(interval_ms) * interval_ms)) {
            b.add(e);
        }
    }
    buckets.iter().map(|(s, b)| b.json(*s)).collect()
}

fn union(events: &[Event], from: i64, to: i64) -> Bucket {
    let mut b = Bucket::default();
    events.iter().filter(|e| (from..to).contains(&e.timestamp_ms)).for_each(|e| b.add(e));
    b
}

async fn get_json(query: std::net::SocketAddr, path: &str) -> Value {
    let (status, body) = http(query, "GET", path).await.expect("query answers");
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

/// Waits until the hourly timeseries over `[from, to)` equals the events.
async fn converge(query: std::net::SocketAddr, events: &[Event], from: i64, to: i64) {
    let want = expected(events, from, to, HOUR_MS);
    let started = std::time::Instant::now();
    loop {
        let got = get_json(query, &format!("/analytics/timeseries?from={from}&to={to}&interval=hour")).await;
        if got["buckets"].as_array() == Some(&want) {
            return;
        }
        assert!(started.elapsed() < CONVERGE, "hourly timeseries not exact after {CONVERGE:?}: {got}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn event(ts: i64, user: usize, click: bool) -> Event {
    Event { timestamp_ms: ts, user: format!("user-{user}"), kind: if click { Kind::Click } else { Kind::Impression } }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timeseries_and_aggregates_equal_the_events_across_hour_and_day_edges() {
    use rand::{Rng, SeedableRng};
    let mut stack = Stack::new();
    stack.start_all().await;
    let (command, query) = (stack.addr("command"), stack.addr("query"));
    let day_a = DayStart::of(common::now_ms() - 3 * DAY_MS);
    let (a, b) = (day_a.start_ms(), day_a.end_ms()); // day B starts where day A ends
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);

    // Phase 1: the day edge (A's last hour, B's first hours) and B's afternoon;
    // users overlap across hours and days.
    let mut first: Vec<Event> = (0..1500)
        .map(|i| {
            let ts = match i % 3 {
                0 => b - HOUR_MS + rng.random_range(0..HOUR_MS),
                1 => b + rng.random_range(0..2 * HOUR_MS),
                _ => b + 14 * HOUR_MS + rng.random_range(0..HOUR_MS),
            };
            event(ts, rng.random_range(0..400), rng.random_bool(0.3))
        })
        .collect();
    // The exact edges: the last millisecond of A, the first of B, the edges of an hour.
    first.extend([
        event(b - 1, 1000, true),
        event(b, 1001, false),
        event(b + HOUR_MS - 1, 1002, true),
        event(b + HOUR_MS, 1002, true),
    ]);
    post_all(command, &first, 16).await;
    converge(query, &first, a, b + DAY_MS).await;

    // Phase 2, late: events for A's early hours, after the watermark moved past them,
    // some from users already counted on day A (in its last hour) and on day B.
    let second: Vec<Event> = (0..900)
        .map(|i| {
            let ts = a + (i % 3) * 5 * HOUR_MS + rng.random_range(0..HOUR_MS);
            event(ts, rng.random_range(200..700), rng.random_bool(0.5))
        })
        .chain([event(a, 1003, false), event(a + HOUR_MS - 1, 1000, true)])
        .collect();
    post_all(command, &second, 16).await;
    let events: Vec<Event> = first.into_iter().chain(second).collect();
    converge(query, &events, a, b + DAY_MS).await;

    // Hourly: 48 buckets of A and B; a range that starts and ends inside hours covers them whole.
    let hourly =
        get_json(query, &format!("/analytics/timeseries?from={}&to={}&interval=hour", a + 1, b + DAY_MS - 1)).await;
    assert_eq!(hourly["interval"], "hour");
    assert_eq!((hourly["from"].as_i64(), hourly["to"].as_i64()), (Some(a + 1), Some(b + DAY_MS - 1)));
    assert_eq!(hourly["buckets"].as_array().unwrap(), &expected(&events, a, b + DAY_MS, HOUR_MS));

    // Daily: exact unique users per day (a user of several hours counts once), and an empty day.
    let want_days = expected(&events, a, b + 2 * DAY_MS, DAY_MS);
    let daily = get_json(query, &format!("/analytics/timeseries?from={a}&to={}&interval=day", b + 2 * DAY_MS)).await;
    assert_eq!(daily["buckets"].as_array().unwrap(), &want_days);
    let day_a_users = union(&events, a, b).users.len() as u64;
    let hours_of_a: u64 = expected(&events, a, b, HOUR_MS).iter().map(|h| h["unique_users"].as_u64().unwrap()).sum();
    assert!(day_a_users < hours_of_a, "the test has users in several hours of a day");

    // Aggregate: one whole day and one hour exact; everything else estimated.
    for (from, to, exact) in [(a, b, true), (b - HOUR_MS, b, true), (b, b + DAY_MS, true)] {
        let got = get_json(query, &format!("/analytics/aggregate?from={from}&to={to}")).await;
        let want = union(&events, from, to);
        assert_eq!(
            got,
            serde_json::json!({"from": from, "to": to, "unique_users": want.users.len(), "clicks": want.clicks, "impressions": want.impressions, "unique_users_exact": exact}),
        );
    }
    for (from, to) in [(a, b + DAY_MS), (b - HOUR_MS, b + HOUR_MS), (a, a + 6 * HOUR_MS)] {
        let got = get_json(query, &format!("/analytics/aggregate?from={from}&to={to}")).await;
        let want = union(&events, from, to);
        assert_eq!(got["unique_users_exact"], false);
        assert_eq!((got["clicks"].as_u64(), got["impressions"].as_u64()), (Some(want.clicks), Some(want.impressions)));
        let (estimate, truth) = (got["unique_users"].as_u64().unwrap() as f64, want.users.len() as f64);
        assert!(
            (estimate - truth).abs() <= (truth * 0.01).max(2.0),
            "[{from}, {to}): estimate {estimate}, truth {truth}"
        );
    }

    // Strict parameters, one-line reasons.
    let (status, body) =
        http(query, "GET", &format!("/analytics/timeseries?from={a}&to={}&interval=minute", a + 1)).await.unwrap();
    assert_eq!((status, body.as_str()), (400, "parameter `interval` must be `hour` or `day`, got `minute`\n"));
    // The hourly endpoint is unchanged.
    let (status, body) = http(query, "GET", &format!("/analytics?timestamp={}", b - 1)).await.unwrap();
    let last_hour_of_a = union(&events, b - HOUR_MS, b);
    assert_eq!(
        (status, body),
        (
            200,
            format!(
                "unique_users,{}\nclicks,{}\nimpressions,{}\n",
                last_hour_of_a.users.len(),
                last_hour_of_a.clicks,
                last_hour_of_a.impressions
            )
        )
    );
    stack.cleanup().await;
}
