//! The read-your-writes wait is cheap: however many requests wait on
//! `after=`, the process reads the progress from its stores at the same
//! rate (one shared watcher), counted by `analytics_query_progress_reads_total`.
//! Alone in its test binary: the count is process-wide.

use common::engine::progress::ReadToken;
use common::test_util::{drop_schema, isolated, store_args, unique_suffix};
use hyper::{Request, StatusCode};

/// The progress reads counted so far from `store` (`redis` or `postgres`).
fn progress_reads(metrics: &metrics_exporter_prometheus::PrometheusHandle, store: &str) -> f64 {
    let series = format!("analytics_query_progress_reads_total{{store=\"{store}\"}}");
    metrics
        .render()
        .lines()
        .filter(|l| l.starts_with(&series))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// `waiters` requests wait 1 s on a token never reflected; the progress reads from `store` meanwhile.
async fn reads_while_waiting(
    app: &query::QueryApp,
    metrics: &metrics_exporter_prometheus::PrometheusHandle,
    store: &str,
    waiters: usize,
) -> f64 {
    // Offset far beyond anything written: never reflected.
    let token = ReadToken { topic: "reads-events".into(), partition: 0, offset: 1 << 40 }.encode();
    let before = progress_reads(metrics, store);
    let requests = (0..waiters).map(|_| {
        let uri = format!("/analytics?timestamp=0&after={token}&wait_ms=1000");
        async move { app.handle(Request::get(uri).body(()).unwrap()).await.status() }
    });
    let statuses = futures::future::join_all(requests).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::SERVICE_UNAVAILABLE), "{statuses:?}");
    progress_reads(metrics, store) - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_reads_do_not_grow_with_the_number_of_waiters() {
    let (_, redis, pg) = isolated(&unique_suffix());
    let (cfg, workloads) = platform::parse::query(store_args("query", &redis, &pg, &[]));
    let metrics = common::engine::telemetry::prometheus();
    let app = query::build(&cfg, &workloads, metrics.clone()).await.unwrap();

    let one = reads_while_waiting(&app, &metrics, "redis", 1).await;
    let many = reads_while_waiting(&app, &metrics, "redis", 200).await;
    eprintln!("redis progress reads in 1 s: {one} with one waiter, {many} with 200");
    assert!(one >= 1.0, "the waiter read the progress: {one}");
    // The same rate (re-checks every 200 ms, and on every change), not 200 times it.
    assert!(many <= one * 2.0 + 5.0, "{many} progress reads for 200 waiters, {one} for one");

    // Redis cannot answer the progress (a malformed mark): every read is a
    // PostgreSQL query on the shared pool, at the same rate.
    let mut conn = redis::Client::open(redis.url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let key = format!("{}:progress:reads-events:0", redis.key_prefix);
    let _: () = redis::cmd("HSET").arg(&key).arg("0").arg("garbage").query_async(&mut conn).await.unwrap();
    let one = reads_while_waiting(&app, &metrics, "postgres", 1).await;
    let many = reads_while_waiting(&app, &metrics, "postgres", 200).await;
    eprintln!("postgres progress reads in 1 s: {one} with one waiter, {many} with 200");
    assert!(one >= 1.0, "the waiter read the progress from postgres: {one}");
    assert!(many <= one * 2.0 + 5.0, "{many} postgres progress reads for 200 waiters, {one} for one");
    drop_schema(&pg).await;
    common::test_util::clear_redis_prefix(&redis).await;
}
