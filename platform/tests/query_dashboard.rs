//! `GET /` through the query's router (real Redis and PostgreSQL): the
//! dashboard page, behind the same edge checks as the API; `/` is exact, so
//! unknown paths still answer 404. The page itself is tested in a real
//! browser by e2e/tests/dashboard.rs.

use common::test_util::{drop_schema, isolated, store_args, unique_suffix};
use http_body_util::BodyExt;
use hyper::{Request, StatusCode};
use query::QueryApp;

/// An app on a schema and key prefix of its own, with `extra` flags; and what to clean up.
async fn app(extra: &[&str]) -> (QueryApp, common::engine::config::PgConfig, common::engine::config::RedisConfig) {
    let (_, redis, pg) = isolated(&unique_suffix());
    let (cfg, workloads) = platform::parse::query(store_args("query", &redis, &pg, extra));
    let app = query::build(&cfg, &workloads, common::engine::telemetry::prometheus()).await.expect("the app builds");
    (app, pg, redis)
}

async fn get(app: &QueryApp, uri: &str, headers: &[(&str, &str)]) -> (StatusCode, hyper::HeaderMap, String) {
    let mut req = Request::get(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = app.handle(req.body(()).expect("a request")).await;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("a whole body").to_bytes();
    (parts.status, parts.headers, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn the_root_serves_the_dashboard_and_other_unknown_paths_stay_404() {
    let (app, pg, redis) = app(&[]).await;
    let (status, headers, body) = get(&app, "/", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert!(headers.contains_key("content-security-policy"));
    assert_eq!(body, analytics::dashboard::PAGE);

    for path in ["/nope", "/index.html", "/analytics/"] {
        let (status, _, body) = get(&app, path, &[]).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert!(body.contains("GET / (the dashboard)"), "the 404 lists the page: {body}");
    }
    let resp = app.handle(Request::post("/").body(()).expect("a request")).await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    drop_schema(&pg).await;
    common::test_util::clear_redis_prefix(&redis).await;
}

#[tokio::test]
async fn with_a_read_token_the_dashboard_needs_it_like_every_read() {
    let (app, pg, redis) = app(&["--read-token", "r34d"]).await;
    let (status, headers, _) = get(&app, "/", &[]).await;
    assert_eq!(
        (status, headers.get("www-authenticate").map(|v| v.as_bytes())),
        (StatusCode::UNAUTHORIZED, Some(&b"Bearer"[..]))
    );
    let (status, _, body) = get(&app, "/", &[("authorization", "Bearer r34d")]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, analytics::dashboard::PAGE));
    drop_schema(&pg).await;
    common::test_util::clear_redis_prefix(&redis).await;
}
