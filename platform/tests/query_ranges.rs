//! The range routes against real PostgreSQL: aggregates written as the
//! materializer writes them (offset-guarded, replay-safe), then
//! `GET /analytics/timeseries` and `GET /analytics/aggregate` through the router.

use analytics::read_model::pg::apply_aggregates;
use analytics::time::{DAY_MS, HOUR_MS};
use analytics::wire::HourAggregate;
use analytics::{HourCounts, HourStart, UserSketch};
use common::test_util::{drop_schema, isolated, store_args, unique_suffix};
use http_body_util::BodyExt;
use hyper::{Request, StatusCode};
use query::QueryApp;

const D0: i64 = 1_900_000_000_000 / DAY_MS * DAY_MS;

async fn get(app: &QueryApp, uri: &str) -> (StatusCode, String, String) {
    let resp = app.handle(Request::get(uri).body(()).unwrap()).await;
    let status = resp.status();
    let ctype = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, ctype, String::from_utf8_lossy(&body).into_owned())
}

async fn json(app: &QueryApp, uri: &str) -> serde_json::Value {
    let (status, ctype, body) = get(app, uri).await;
    assert_eq!((status, ctype.as_str()), (StatusCode::OK, "application/json"), "{uri}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Users `range` of partition `p` (user ids are `p + 2k`, so partitions are disjoint).
fn users(p: i32, range: std::ops::Range<u64>) -> Vec<u64> {
    range.map(|k| xxhash_rust::xxh3::xxh3_64(&(u64::from(p as u32) + 2 * k).to_le_bytes())).collect()
}

fn agg(hour: i64, p: i32, offset: i64, hour_users: &[u64], day_users: u64, clicks: u64) -> HourAggregate {
    HourAggregate {
        hour: HourStart::of(hour),
        partition: p,
        counts: HourCounts { unique_users: hour_users.len() as u64, clicks, impressions: 1 },
        input_offset: offset,
        watermark_ms: hour,
        sketch: Some(hour_users.iter().copied().collect::<UserSketch>().to_bytes()),
        day_unique_users: Some(day_users),
    }
}

#[tokio::test]
async fn timeseries_and_aggregates_answer_from_the_range_read_models() {
    let (_, redis, pg) = isolated(&unique_suffix());
    let (cfg, workloads) = platform::parse::query(store_args("query", &redis, &pg, &[]));
    let app = query::build(&cfg, &workloads, common::engine::telemetry::prometheus()).await.unwrap();
    let pool = common::engine::pg::pool(&pg).unwrap();
    let mut client = pool.get().await.unwrap();

    // Day 0, hours 1 and 5; partition 0 has users 0..300 in hour 1 and 200..500
    // in hour 5 (500 in the day); partition 1 has 0..100 in hour 5. Day 1, hour 0: 0..50 of partition 0.
    let (h1, h5) = (D0 + HOUR_MS, D0 + 5 * HOUR_MS);
    let batch = [
        agg(h1, 0, 10, &users(0, 0..300), 300, 7),
        agg(h5, 0, 20, &users(0, 200..500), 500, 8),
        agg(h5, 1, 5, &users(1, 0..100), 100, 9),
        agg(D0 + DAY_MS, 0, 30, &users(0, 0..50), 50, 1),
        // Stale: an older offset of a key written above, with other values.
        agg(h1, 0, 3, &users(0, 0..10), 10, 1),
    ];
    apply_aggregates(&mut client, &batch).await.unwrap();
    // A replay and a stale day count change nothing.
    apply_aggregates(&mut client, &batch).await.unwrap();
    // A newer hour record whose day count is older than the day's newest (offset 20) moves only the hour.
    apply_aggregates(&mut client, &[agg(h1, 0, 15, &users(0, 0..300), 299, 7)]).await.unwrap();

    let hours =
        json(&app, &format!("/analytics/timeseries?from={}&to={}&interval=hour", D0 + 1, D0 + 6 * HOUR_MS)).await;
    assert_eq!(hours["interval"], "hour");
    assert_eq!(hours["from"], D0 + 1);
    let buckets = hours["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 6);
    assert_eq!(buckets[0], serde_json::json!({"start": D0, "unique_users": 0, "clicks": 0, "impressions": 0}));
    assert_eq!(buckets[1], serde_json::json!({"start": h1, "unique_users": 300, "clicks": 7, "impressions": 1}));
    assert_eq!(buckets[5], serde_json::json!({"start": h5, "unique_users": 400, "clicks": 17, "impressions": 2}));

    let days = json(&app, &format!("/analytics/timeseries?from={D0}&to={}&interval=day", D0 + 3 * DAY_MS)).await;
    assert_eq!(
        days["buckets"],
        serde_json::json!([
            {"start": D0, "unique_users": 600, "clicks": 24, "impressions": 3},
            {"start": D0 + DAY_MS, "unique_users": 50, "clicks": 1, "impressions": 1},
            {"start": D0 + 2 * DAY_MS, "unique_users": 0, "clicks": 0, "impressions": 0},
        ])
    );

    // One hour and one whole day: exact.
    let one_hour = json(&app, &format!("/analytics/aggregate?from={h5}&to={}", h5 + HOUR_MS)).await;
    assert_eq!(
        one_hour,
        serde_json::json!({"from": h5, "to": h5 + HOUR_MS, "unique_users": 400, "clicks": 17, "impressions": 2, "unique_users_exact": true})
    );
    let one_day = json(&app, &format!("/analytics/aggregate?from={D0}&to={}", D0 + DAY_MS)).await;
    assert_eq!((one_day["unique_users"].as_u64(), one_day["unique_users_exact"].as_bool()), (Some(600), Some(true)));
    assert_eq!(one_day["clicks"], 24);
    // Anything else: the sketches' estimate (exact enough at these counts), clicks exact.
    let two_days = json(&app, &format!("/analytics/aggregate?from={D0}&to={}", D0 + 2 * DAY_MS)).await;
    assert_eq!(two_days["unique_users_exact"], false);
    assert_eq!((two_days["clicks"].as_u64(), two_days["impressions"].as_u64()), (Some(25), Some(4)));
    let estimate = two_days["unique_users"].as_u64().unwrap();
    assert!((594..=606).contains(&estimate), "estimate {estimate} for 600 users");
    // An empty range answers zeros.
    let empty = json(&app, &format!("/analytics/aggregate?from={}&to={}", D0 + 10 * DAY_MS, D0 + 12 * DAY_MS)).await;
    assert_eq!((empty["unique_users"].as_u64(), empty["clicks"].as_u64()), (Some(0), Some(0)));

    // Bad requests: 400 with a one-line reason.
    for (uri, reason) in [
        ("/analytics/timeseries?from=1&to=2", "missing parameter `interval` (`hour` or `day`)\n"),
        (
            "/analytics/timeseries?from=0&to=4000000000&interval=hour",
            "the range covers 1112 buckets; at most 1000 are answered\n",
        ),
        (
            "/analytics/aggregate?from=5&to=3600000",
            "parameter `from` must be the start of a UTC hour (a multiple of 3600000), got 5\n",
        ),
        ("/analytics/aggregate?from=3600000&to=0", "`from` must be before `to`\n"),
        (
            "/analytics/aggregate?from=0&to=315576000000",
            "the range covers 87660 hours; at most 744 (31 days) are answered\n",
        ),
    ] {
        let (status, _, body) = get(&app, uri).await;
        assert_eq!((status, body.as_str()), (StatusCode::BAD_REQUEST, reason), "{uri}");
    }
    drop_schema(&pg).await;
}
