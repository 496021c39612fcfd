//! The query read path against real Redis and PostgreSQL: Redis first, then
//! PostgreSQL with write-back, then zeros; 503 (not a hang) when it cannot answer.

use analytics::read_model::{HourCache, HourTotals};
use analytics::wire::HourAggregate;
use analytics::{HourCounts, HourStart};
use common::test_util::{drop_schema, isolated, store_args, unique_suffix};
use http_body_util::BodyExt;
use hyper::{Request, StatusCode};
use query::QueryApp;

const H: i64 = 1_900_000_000_000 / 3_600_000 * 3_600_000;

struct Fixture {
    app: QueryApp,
    cache: HourCache,
    pool: deadpool_postgres::Pool,
    pg: common::engine::config::PgConfig,
    redis: common::engine::config::RedisConfig,
}

async fn fixture(pg_url: Option<&str>) -> Fixture {
    let (_, redis, pg) = isolated(&unique_suffix());
    let (cfg, workloads) = platform::parse::query(store_args(
        "query",
        &redis,
        &pg,
        &[
            "--pg-timeout",
            "2s",
            // Every read goes to the stores: these tests are about them.
            "--local-cache-ttl",
            "0ms",
        ],
    ));
    let app = query::build(&cfg, &workloads, common::engine::telemetry::prometheus()).await.unwrap();
    let mut cfg = cfg;
    if let Some(url) = pg_url {
        // Rebuild against a PostgreSQL that does not answer (the schema already exists).
        cfg.pg.url = url.to_owned();
        let pool = common::engine::pg::pool(&cfg.pg).unwrap();
        let cache = HourCache::connect(&redis).await.unwrap();
        let edge = common::engine::edge::Edge::new(&cfg.edge, None);
        let app = query::app_from_parts(
            &workloads,
            cache.store().clone(),
            pool.clone(),
            common::engine::telemetry::prometheus(),
            edge,
            cfg.reuse(),
            cfg.limits(),
            None,
        );
        return Fixture { app, cache, pool, pg, redis };
    }
    let pool = common::engine::pg::pool(&pg).unwrap();
    let cache = HourCache::connect(&redis).await.unwrap();
    Fixture { app, cache, pool, pg, redis }
}

async fn get(app: &QueryApp, uri: &str) -> (StatusCode, String) {
    let resp = app.handle(Request::get(uri).body(()).unwrap()).await;
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn seed(pool: &deadpool_postgres::Pool, hour: i64, counts: HourCounts) {
    let mut client = pool.get().await.unwrap();
    let a = HourAggregate {
        hour: HourStart::of(hour),
        partition: 0,
        counts,
        input_offset: 1,
        watermark_ms: hour,
        sketch: None,
        day_unique_users: None,
    };
    analytics::read_model::pg::apply_aggregates(&mut client, &[a]).await.unwrap();
}

impl Fixture {
    async fn cleanup(self) {
        drop_schema(&self.pg).await;
        common::test_util::clear_redis_prefix(&self.redis).await;
    }
}

#[tokio::test]
async fn answers_from_postgres_on_a_miss_then_from_redis() {
    let f = fixture(None).await;
    let counts = HourCounts { unique_users: 3, clicks: 4, impressions: 5 };
    seed(&f.pool, H, counts).await;
    assert_eq!(f.cache.get(&HourStart::of(H)).await.unwrap(), None);
    // Any millisecond of the hour, the edges included, reads the same hour.
    for ts in [H, H + 1_234_567, H + 3_599_999] {
        let (status, body) = get(&f.app, &format!("/analytics?timestamp={ts}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "unique_users,3\nclicks,4\nimpressions,5\n");
    }
    assert_eq!(f.cache.get(&HourStart::of(H)).await.unwrap().map(|t| t.row), Some(counts), "written back");
    let (_, next_hour) = get(&f.app, &format!("/analytics?timestamp={}", H + 3_600_000)).await;
    assert_eq!(next_hour, "unique_users,0\nclicks,0\nimpressions,0\n");
    f.cleanup().await;
}

#[tokio::test]
async fn started_first_it_creates_only_the_read_models_and_answers_zeros() {
    let f = fixture(None).await;
    let client = f.pool.get().await.unwrap();
    let tables: Vec<String> = client
        .query(
            "SELECT table_name::text AS table_name FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1",
            &[&f.pg.schema],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get("table_name"))
        .collect();
    // Every listed workload's read models and the engine's read progress; none of the
    // processor's state, leases or the deployment's settings.
    for owned_by_others in
        ["processor_", "partition_leases", "group_members", "consumer_offsets", "deployment_settings"]
    {
        assert!(!tables.iter().any(|t| t.starts_with(owned_by_others)), "{owned_by_others}: {tables:?}");
    }
    for read_model in ["applied_migrations", "hourly_aggregates", "daily_aggregates", "increments", "read_progress"] {
        assert!(tables.iter().any(|t| t == read_model), "{read_model}: {tables:?}");
    }
    let (status, body) = get(&f.app, &format!("/analytics?timestamp={H}")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "unique_users,0\nclicks,0\nimpressions,0\n"));
    f.cleanup().await;
}

#[tokio::test]
async fn bad_requests_get_400_with_a_reason() {
    let f = fixture(None).await;
    for uri in [
        "/analytics",
        "/analytics?timestamp=",
        "/analytics?timestamp=abc",
        "/analytics?timestamp=-1",
        "/analytics?timestamp=1&x=2",
    ] {
        let (status, body) = get(&f.app, uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(body.lines().count(), 1, "{body}");
    }
    let resp = f.app.handle(Request::post("/analytics?timestamp=1").body(()).unwrap()).await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    let resp = f.app.handle(Request::get("/nope").body(()).unwrap()).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    f.cleanup().await;
}

#[tokio::test]
async fn with_postgres_down_cached_hours_answer_and_others_get_503() {
    let f = fixture(Some("postgres://postgres@127.0.0.1:1/postgres")).await;
    let hot = HourTotals { row: HourCounts { unique_users: 1, clicks: 1, impressions: 0 }, version: 1 };
    f.cache.put_if_newer(&[(HourStart::of(H), hot)]).await.unwrap();
    let (status, body) = get(&f.app, &format!("/analytics?timestamp={H}")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "unique_users,1\nclicks,1\nimpressions,0\n"));
    let started = std::time::Instant::now();
    let resp = f.app.handle(Request::get(format!("/analytics?timestamp={}", H - 86_400_000)).body(()).unwrap()).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.headers().contains_key(hyper::header::RETRY_AFTER));
    assert!(started.elapsed() < std::time::Duration::from_secs(6), "bounded: {:?}", started.elapsed());
    // A short reason for the client; PostgreSQL's own error text stays in the log.
    let body = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert_eq!(body.trim_end(), "read models unavailable; retry later");
    f.cleanup().await;
}
