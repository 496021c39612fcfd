//! The caps on requests that hold on for long, against real Redis and
//! PostgreSQL: beyond `--max-token-waits` requests waiting on `after=`, and
//! beyond `--max-live-streams` open live streams, a request is answered 503
//! with `Retry-After` at once; a place freed is taken again.

use std::time::{Duration, Instant};

use common::engine::progress::ReadToken;
use common::test_util::{drop_schema, isolated, store_args, unique_suffix};
use http_body_util::BodyExt;
use hyper::{Request, StatusCode};
use query::QueryApp;

struct Fixture {
    app: QueryApp,
    redis: common::engine::config::RedisConfig,
    pg: common::engine::config::PgConfig,
}

async fn fixture(flags: &[&str]) -> Fixture {
    let (_, redis, pg) = isolated(&unique_suffix());
    let (cfg, workloads) = platform::parse::query(store_args("query", &redis, &pg, flags));
    let app = query::build(&cfg, &workloads, common::engine::telemetry::prometheus()).await.unwrap();
    Fixture { app, redis, pg }
}

impl Fixture {
    async fn cleanup(self) {
        drop_schema(&self.pg).await;
        common::test_util::clear_redis_prefix(&self.redis).await;
    }
}

/// The status, `Retry-After` and body of a finished answer.
async fn finish(resp: hyper::Response<common::engine::http::Body>) -> (StatusCode, Option<String>, String) {
    let status = resp.status();
    let retry = resp.headers().get(hyper::header::RETRY_AFTER).map(|v| v.to_str().unwrap().to_owned());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, retry, String::from_utf8_lossy(&body).into_owned())
}

/// A token no write will ever reflect.
fn unreflected() -> String {
    ReadToken { topic: "limits-events".into(), partition: 0, offset: 1 << 40 }.encode()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_cap_of_waiting_requests_the_answer_is_503_with_retry_after() {
    let f = fixture(&["--max-token-waits", "2"]).await;
    let token = unreflected();
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let app = f.app.clone();
            let uri = format!("/analytics?timestamp=0&after={token}&wait_ms=2000");
            tokio::spawn(async move { finish(app.handle(Request::get(uri).body(()).unwrap()).await).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    let uri = format!("/analytics?timestamp=0&after={token}&wait_ms=2000");
    let (status, retry, body) = finish(f.app.handle(Request::get(&uri).body(()).unwrap()).await).await;
    assert!(started.elapsed() < Duration::from_millis(500), "refused at once: {:?}", started.elapsed());
    assert_eq!((status, retry.as_deref()), (StatusCode::SERVICE_UNAVAILABLE, Some("1")), "{body}");
    assert_eq!(body, "too many requests waiting for their writes; retry later\n");
    // Reads without a token are not capped.
    let (status, _, _) = finish(f.app.handle(Request::get("/analytics?timestamp=0").body(()).unwrap()).await).await;
    assert_eq!(status, StatusCode::OK);

    for w in waiting {
        let (status, _, body) = w.await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.starts_with("the write is not reflected yet after 2000 ms"), "{body}");
    }
    // The places are free again: this one waits its 100 ms.
    let uri = format!("/analytics?timestamp=0&after={token}&wait_ms=100");
    let (_, _, body) = finish(f.app.handle(Request::get(&uri).body(()).unwrap()).await).await;
    assert!(body.starts_with("the write is not reflected yet after 100 ms"), "{body}");
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_cap_of_live_streams_the_answer_is_503_with_retry_after() {
    let f = fixture(&["--max-live-streams", "1"]).await;
    let open = f.app.handle(Request::get("/analytics/live").body(()).unwrap()).await;
    assert_eq!(open.status(), StatusCode::OK);

    let (status, retry, body) = finish(f.app.handle(Request::get("/analytics/live").body(()).unwrap()).await).await;
    assert_eq!((status, retry.as_deref()), (StatusCode::SERVICE_UNAVAILABLE, Some("1")), "{body}");
    assert_eq!(body, "too many live streams open; retry later\n");

    // The client goes away: its place is free.
    drop(open);
    let again = f.app.handle(Request::get("/analytics/live").body(()).unwrap()).await;
    assert_eq!(again.status(), StatusCode::OK);
    drop(again);
    f.cleanup().await;
}
