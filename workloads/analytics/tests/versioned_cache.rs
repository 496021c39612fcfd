//! The engine's versioned Redis cache with rows other than the hourly
//! totals: any [`CachedRow`] gets the same key layout, version guard and
//! fill leases; values travel as text, so a sum beyond `i64` fits.

use analytics::read_model::{HourCache, HourTotals};
use analytics::{HourCounts, HourStart};
use common::engine::store::cache::{RedisStore, VersionedCache};
use common::engine::store::Versioned;
use common::test_util::sums::Sum;
use common::test_util::{isolated, unique_suffix};

async fn conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap()
}

#[tokio::test]
async fn another_row_kind_gets_the_same_guards_and_exact_values() {
    let (_, redis, _) = isolated(&unique_suffix());
    let store = RedisStore::connect(&redis).await.unwrap();
    let sums = VersionedCache::<Sum>::new(store.clone());
    let id = "6f1c1b5e-5a4e-4d3b-9d7e-0c2d1f3a4b5c".to_owned();
    let big = Versioned { row: Sum { total: i128::from(i64::MAX) * 1000 + 7 }, version: 4 };

    assert_eq!(sums.key(&id), format!("{}:sum:{id}", redis.key_prefix));
    assert_eq!(sums.get(&id).await.unwrap(), None);
    assert_eq!(sums.put_if_newer(&[(id.clone(), big.clone())]).await.unwrap(), 1);
    assert_eq!(sums.get(&id).await.unwrap(), Some(big.clone()), "beyond i64, exactly");
    let older = Versioned { row: Sum { total: 1 }, version: 3 };
    assert_eq!(sums.put_if_newer(&[(id.clone(), older.clone())]).await.unwrap(), 0);

    // A write-back under a lease voided by a newer write does not land.
    let other = "another-key".to_owned();
    let lease = sums.lease(&other).await.unwrap().expect("free");
    assert_eq!(sums.put_if_newer(&[(other.clone(), big.clone())]).await.unwrap(), 1);
    assert!(!sums.fill(&other, &older, &lease).await.unwrap());
    assert_eq!(sums.get(&other).await.unwrap(), Some(big));

    // A hash the row does not accept is an error, not a wrong answer.
    let _: () = redis::cmd("HSET")
        .arg(sums.key(&id))
        .arg("t")
        .arg("not a number")
        .query_async(&mut conn(&redis.url).await)
        .await
        .unwrap();
    assert!(sums.get(&id).await.is_err());
    store.clear().await.unwrap();
}

#[tokio::test]
async fn the_hourly_layout_is_unchanged() {
    let (_, redis, _) = isolated(&unique_suffix());
    let cache = HourCache::connect(&redis).await.unwrap();
    let hour = HourStart::of(1_900_000_000_000);
    let totals = HourTotals { row: HourCounts { unique_users: 1, clicks: 2, impressions: 3 }, version: 9 };
    cache.put_if_newer(&[(hour, totals)]).await.unwrap();
    let key = format!("{}:hour:{}", redis.key_prefix, hour.start_ms());
    assert_eq!(cache.key(&hour), key);
    let mut fields: Vec<(String, String)> =
        redis::cmd("HGETALL").arg(&key).query_async(&mut conn(&redis.url).await).await.unwrap();
    fields.sort();
    let want = [("c", "2"), ("i", "3"), ("u", "1"), ("v", "9")].map(|(f, v)| (f.to_owned(), v.to_owned()));
    assert_eq!(fields, want);
    cache.clear().await.unwrap();
}
