//! The read model against real PostgreSQL and Redis: replays are no-ops,
//! concurrent writers sum correctly, Redis never moves backwards.

use analytics::read_model::{self, pg as hours, HourCache, HourTotals};
use analytics::wire::HourAggregate;
use analytics::{HourCounts, HourStart};
use common::test_util::{drop_schema, isolated, unique_suffix};

const H: i64 = 1_900_000_000_000 / 3_600_000 * 3_600_000;

fn agg(partition: i32, offset: i64, users: u64, clicks: u64) -> HourAggregate {
    HourAggregate {
        hour: HourStart::of(H),
        partition,
        counts: HourCounts { unique_users: users, clicks, impressions: 1 },
        input_offset: offset,
        watermark_ms: H,
        sketch: None,
        day_unique_users: None,
    }
}

async fn setup(
) -> (deadpool_postgres::Pool, HourCache, common::engine::config::PgConfig, common::engine::config::RedisConfig) {
    let (_, redis, pg) = isolated(&unique_suffix());
    let pool = common::engine::pg::pool(&pg).unwrap();
    common::engine::pg::migrate(&pool, &pg, &[analytics::migrations::READ_MODELS]).await.unwrap();
    let cache = HourCache::connect(&redis).await.unwrap();
    (pool, cache, pg, redis)
}

#[tokio::test]
async fn replayed_and_stale_aggregates_change_nothing() {
    let (pool, _cache, pg, redis) = setup().await;
    let mut client = pool.get().await.unwrap();
    let first = hours::apply_aggregates(&mut client, &[agg(0, 10, 5, 7), agg(1, 3, 2, 2)]).await.unwrap();
    let want = HourCounts { unique_users: 7, clicks: 9, impressions: 2 };
    assert_eq!(first, vec![(HourStart::of(H), HourTotals { row: want, version: 1 })]);

    // The same batch again, and an older offset with other counts: no change, same version.
    let again = hours::apply_aggregates(&mut client, &[agg(0, 10, 5, 7), agg(1, 3, 2, 2)]).await.unwrap();
    assert_eq!(again, first);
    let stale = hours::apply_aggregates(&mut client, &[agg(0, 9, 1, 1)]).await.unwrap();
    assert_eq!(stale, first);

    // A newer offset wins, and the version moves on.
    let newer = hours::apply_aggregates(&mut client, &[agg(0, 11, 6, 8)]).await.unwrap();
    assert_eq!(newer[0].1, HourTotals { row: HourCounts { unique_users: 8, clicks: 10, impressions: 2 }, version: 2 });
    assert_eq!(hours::read_hour(&client, HourStart::of(H)).await.unwrap(), Some(newer[0].1));
    assert_eq!(hours::read_hour(&client, HourStart::of(H + 3_600_000)).await.unwrap(), None);
    drop(client);
    drop_schema(&pg).await;
    common::test_util::clear_redis_prefix(&redis).await;
}

#[tokio::test]
async fn concurrent_writers_of_one_hour_sum_every_partition() {
    let (pool, _cache, pg, redis) = setup().await;
    // 8 writers, each owning one partition, each writing 20 increasing versions at once.
    let writers = (0..8).map(|p| {
        let pool = pool.clone();
        tokio::spawn(async move {
            for off in 1..=20 {
                let mut client = pool.get().await.unwrap();
                hours::apply_aggregates(&mut client, &[agg(p, off, off as u64, off as u64 * 2)]).await.unwrap();
            }
        })
    });
    futures::future::join_all(writers).await.into_iter().for_each(|r| r.unwrap());
    let client = pool.get().await.unwrap();
    let totals = hours::read_hour(&client, HourStart::of(H)).await.unwrap().unwrap();
    assert_eq!(totals.row, HourCounts { unique_users: 8 * 20, clicks: 8 * 40, impressions: 8 });
    drop(client);
    drop_schema(&pg).await;
    common::test_util::clear_redis_prefix(&redis).await;
}

#[tokio::test]
async fn redis_copy_only_moves_forward_and_expires() {
    let (_pool, cache, pg, redis) = setup().await;
    let hour = HourStart::of(H);
    let v = |version, clicks| HourTotals { row: HourCounts { unique_users: 1, clicks, impressions: 0 }, version };
    assert_eq!(cache.get(&hour).await.unwrap(), None);
    assert_eq!(cache.put_if_newer(&[(hour, v(2, 20))]).await.unwrap(), 1);
    assert_eq!(cache.put_if_newer(&[(hour, v(1, 10))]).await.unwrap(), 0, "an older version is ignored");
    assert_eq!(cache.put_if_newer(&[(hour, v(2, 99))]).await.unwrap(), 0, "an equal version is ignored");
    assert_eq!(cache.get(&hour).await.unwrap(), Some(v(2, 20)));
    assert_eq!(cache.put_if_newer(&[(hour, v(3, 30))]).await.unwrap(), 1);
    assert_eq!(cache.get(&hour).await.unwrap(), Some(v(3, 30)));

    let mut conn = redis::Client::open(redis.url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let ttl_ms: i64 = redis::cmd("PTTL").arg(cache.key(&hour)).query_async(&mut conn).await.unwrap();
    assert!(ttl_ms > 0 && ttl_ms <= redis.ttl.as_millis() as i64, "ttl {ttl_ms} ms");
    cache.clear().await.unwrap();
    assert_eq!(cache.get(&hour).await.unwrap(), None);
    drop_schema(&pg).await;
}

#[tokio::test]
async fn a_write_back_never_regresses_a_value_even_after_a_flush() {
    let (pool, cache, pg, redis) = setup().await;
    let h = HourStart::of(H);
    let mut client = pool.get().await.unwrap();
    let v1 = hours::apply_aggregates(&mut client, &[agg(0, 10, 5, 7)]).await.unwrap()[0].1;

    // A reader misses, takes the lease and reads v1 from PostgreSQL; meanwhile the
    // materializer writes v2 to both stores, and then Redis is flushed.
    let lease = cache.lease(&h).await.unwrap().expect("no one else holds it");
    let v2 = hours::apply_aggregates(&mut client, &[agg(0, 11, 6, 8)]).await.unwrap()[0].1;
    assert_eq!(cache.put_if_newer(&[(h, v2)]).await.unwrap(), 1);
    cache.clear().await.unwrap();
    // The late write-back of v1 must not land on the empty key.
    assert!(!cache.fill(&h, &v1, &lease).await.unwrap());
    assert_eq!(cache.get(&h).await.unwrap(), None);

    // Zeros at version 0 from a reader whose lease was voided by a flush: not written either.
    let lease = cache.lease(&h).await.unwrap().unwrap();
    cache.clear().await.unwrap();
    assert!(!cache.fill(&h, &read_model::EMPTY, &lease).await.unwrap());
    assert_eq!(cache.get(&h).await.unwrap(), None);

    // A second concurrent reader gets no lease; the first one's fill lands (nothing intervened).
    let lease = cache.lease(&h).await.unwrap().unwrap();
    assert_eq!(cache.lease(&h).await.unwrap(), None);
    assert!(cache.fill(&h, &v2, &lease).await.unwrap());
    assert_eq!(cache.get(&h).await.unwrap(), Some(v2));
    drop(client);
    drop_schema(&pg).await;
    common::test_util::clear_redis_prefix(&redis).await;
}
