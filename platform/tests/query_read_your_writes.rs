//! Read-your-writes and monotonic reads across a Redis fallback, against real
//! Redis and PostgreSQL: the Redis copy of a row is made older than
//! PostgreSQL's on purpose (as when the materializer's Redis write failed and
//! is still pending), then
//! - an `after=` read whose progress came from PostgreSQL must show the write;
//! - a client polling through a Redis back-off must never see a count go down.

use std::time::Duration;

use analytics::read_model::{pg::apply_aggregates, HourCache, HourTotals};
use analytics::wire::HourAggregate;
use analytics::{HourCounts, HourStart};
use common::engine::progress::{self, Progress, ReadToken};
use common::engine::store::cache::RedisStore;
use common::test_util::{drop_schema, isolated, unique_suffix};
use http_body_util::BodyExt;
use hyper::{Request, StatusCode};
use query::QueryApp;

const H: i64 = 1_900_000_000_000 / 3_600_000 * 3_600_000;
const TOPIC: &str = "ryw-events";
const OLD: HourCounts = HourCounts { unique_users: 1, clicks: 1, impressions: 0 };
const NEW: HourCounts = HourCounts { unique_users: 2, clicks: 5, impressions: 1 };

struct Fixture {
    app: QueryApp,
    store: RedisStore,
    redis_url: String,
    redis: common::engine::config::RedisConfig,
    pg: common::engine::config::PgConfig,
}

/// A query app whose Redis store the test shares (so it can make it back off),
/// with the in-process cache off: every read goes to the stores.
async fn fixture() -> Fixture {
    let (_, redis, pg) = isolated(&unique_suffix());
    let pool = platform::query().connect_migrated(&pg).await.unwrap();
    let store = RedisStore::connect(&redis).await.unwrap();
    let (cfg, workloads) = platform::parse::query(["query"]);
    let edge = common::engine::edge::Edge::new(&cfg.edge, None);
    let app = query::app_from_parts(
        &workloads,
        store.clone(),
        pool,
        common::engine::telemetry::prometheus(),
        edge,
        query::engine::Reuse::OFF,
        cfg.limits(),
        None,
    );
    Fixture { app, store, redis_url: redis.url.clone(), redis, pg }
}

impl Fixture {
    /// PostgreSQL: the hour at version 1 (OLD) then 2 (NEW), and the progress of
    /// events partition 0 past offset 5. Redis: the hour at version 1 only.
    async fn stale_redis(&self) {
        let pool = common::engine::pg::pool(&self.pg).unwrap();
        let mut client = pool.get().await.unwrap();
        let agg = |offset, counts| HourAggregate {
            hour: HourStart::of(H),
            partition: 0,
            counts,
            input_offset: offset,
            watermark_ms: H,
            sketch: None,
            day_unique_users: None,
        };
        let v1 = apply_aggregates(&mut client, &[agg(1, OLD)]).await.unwrap();
        assert_eq!(v1[0].1.version, 1);
        let v2 = apply_aggregates(&mut client, &[agg(2, NEW)]).await.unwrap();
        assert_eq!(v2[0].1, HourTotals { row: NEW, version: 2 });
        let tx = client.transaction().await.unwrap();
        let p = Progress {
            events_topic: TOPIC.into(),
            partition: 0,
            next_offset: 6,
            aggregates_partition: 0,
            aggregates_partitions: 1,
        };
        progress::pg::write(&tx, &[p]).await.unwrap();
        tx.commit().await.unwrap();
        let cache = HourCache::new(self.store.clone());
        cache.put_if_newer(&[(HourStart::of(H), HourTotals { row: OLD, version: 1 })]).await.unwrap();
    }

    async fn raw_redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis_url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap()
    }

    async fn cleanup(self) {
        drop_schema(&self.pg).await;
        common::test_util::clear_redis_prefix(&self.redis).await;
    }
}

async fn get(app: &QueryApp, uri: &str) -> (StatusCode, String) {
    let resp = app.handle(Request::get(uri).body(()).unwrap()).await;
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn clicks(body: &str) -> u64 {
    body.lines().find_map(|l| l.strip_prefix("clicks,")).and_then(|v| v.parse().ok()).expect("a clicks line")
}

#[tokio::test]
async fn an_after_read_reflected_by_postgres_progress_shows_the_write_over_a_stale_redis_copy() {
    let f = fixture().await;
    f.stale_redis().await;
    // Redis cannot answer the progress read (a malformed mark), so the wait
    // reads PostgreSQL's, which says the write is reflected; Redis still
    // answers rows, with the older copy.
    let mut conn = f.raw_redis().await;
    let key = format!("{}:progress:{TOPIC}:0", f.redis.key_prefix);
    let _: () = redis::cmd("HSET").arg(&key).arg("0").arg("garbage").query_async(&mut conn).await.unwrap();

    let token = ReadToken { topic: TOPIC.into(), partition: 0, offset: 5 }.encode();
    let (status, body) = get(&f.app, &format!("/analytics?timestamp={H}&after={token}&wait_ms=3000")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(clicks(&body), NEW.clicks, "the answer to after= must reflect the write: {body}");
    f.cleanup().await;
}

#[tokio::test]
async fn a_polling_client_never_sees_a_count_go_down_across_a_redis_back_off() {
    let f = fixture().await;
    f.stale_redis().await;
    let uri = format!("/analytics?timestamp={H}");
    let (_, first) = get(&f.app, &uri).await;
    assert_eq!(clicks(&first), OLD.clicks, "Redis answers first, with its (older) copy");

    // One failed Redis command (a hash command on a string) puts the shared
    // store into its 1 s back-off: reads fall back to PostgreSQL meanwhile.
    let mut conn = f.raw_redis().await;
    let key = format!("{}:progress:not-a-hash:0", f.redis.key_prefix);
    let _: () = redis::cmd("SET").arg(&key).arg("x").query_async(&mut conn).await.unwrap();
    assert!(f.store.progress("not-a-hash", 0).await.is_err());

    let mut seen = Vec::new();
    let started = std::time::Instant::now();
    // Through the back-off and well past it.
    while started.elapsed() < Duration::from_millis(2_500) {
        let (status, body) = get(&f.app, &uri).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        seen.push(clicks(&body));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen.contains(&NEW.clicks), "the fallback read shows PostgreSQL's newer row: {seen:?}");
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "a read went backwards: {seen:?}");
    // The stale copy was repaired by the write-back, for every other reader of Redis too.
    let cache = HourCache::connect(&f.redis).await.unwrap();
    assert_eq!(cache.get(&HourStart::of(H)).await.unwrap(), Some(HourTotals { row: NEW, version: 2 }));
    f.cleanup().await;
}
