//! The materializer's engine with a workload it was not written for (the
//! test-only exact sums of `common::test_util::sums`): the batch lands in
//! PostgreSQL in one transaction, then in Redis under the version guard;
//! a replay changes nothing. Real PostgreSQL and Redis.

use common::engine::avro::DecodeError;
use common::engine::pg::PgError;
use common::engine::store::cache::VersionedCache;
use common::engine::store::WriteTx;
use common::test_util::sums::{self, SetSum, Sum};
use common::test_util::{drop_schema, isolated, unique_suffix};
use materializer::engine::sink::ReadModelSink;
use materializer::engine::SinkWorkload;

struct Sums;

impl SinkWorkload for Sums {
    const NAME: &'static str = "sums";
    type Aggregate = SetSum;
    type Row = Sum;

    fn decode(&self, _bytes: &[u8]) -> Result<SetSum, DecodeError> {
        Err(DecodeError::Invalid("not read from a topic in this test"))
    }

    fn watermark_ms(&self, _: &SetSum) -> i64 {
        common::now_ms()
    }

    async fn write(&self, tx: &WriteTx<'_>, batch: &[SetSum]) -> Result<Vec<String>, PgError> {
        sums::write(tx, batch).await
    }
}

#[tokio::test]
async fn a_second_workload_goes_through_the_same_sink() {
    let (_, redis, pg) = isolated(&unique_suffix());
    let pool = common::engine::pg::pool(&pg).unwrap();
    let engine_tables = common::engine::pg::migrations_for(common::engine::workload::Service::Materializer, []);
    common::engine::pg::migrate(&pool, &pg, &engine_tables).await.unwrap();
    sums::create_table(&pool.get().await.unwrap()).await;
    let cache = VersionedCache::<Sum>::connect(&redis).await.unwrap();
    let sink = ReadModelSink::new(Sums, pool.clone(), cache.clone(), redis.ttl);

    let huge = i128::from(i64::MAX) * 3;
    let batch = [SetSum { key: "a".into(), total: huge }, SetSum { key: "b".into(), total: -5 }];
    sink.write(&batch, &[], None).await.unwrap();
    // The copier's work, done here rather than by its background task.
    sink.catch_up().await;
    let a = cache.get(&"a".to_owned()).await.unwrap().expect("copied to redis");
    assert_eq!((a.row.total, a.version), (huge, 1));
    assert_eq!(cache.get(&"b".to_owned()).await.unwrap().map(|v| v.row.total), Some(-5));

    // The same batch again: same rows, same versions.
    sink.write(&batch, &[], None).await.unwrap();
    sink.catch_up().await;
    assert_eq!(cache.get(&"a".to_owned()).await.unwrap().map(|v| v.version), Some(1));
    // A change moves the version in both stores.
    sink.write(&[SetSum { key: "a".into(), total: 1 }], &[], None).await.unwrap();
    sink.catch_up().await;
    let a = cache.get(&"a".to_owned()).await.unwrap().unwrap();
    assert_eq!((a.row.total, a.version), (1, 2));
    assert_eq!(
        common::engine::store::read::<Sum>(&pool.get().await.unwrap(), &"a".to_owned()).await.unwrap(),
        Some(a.clone())
    );

    // A replay that changes nothing in PostgreSQL (its statement returns no row) still copies the
    // rows it touched, read back: a copy lost before (here: Redis emptied) comes back.
    cache.clear().await.unwrap();
    let current = [SetSum { key: "a".into(), total: 1 }, SetSum { key: "b".into(), total: -5 }];
    sink.write(&current, &[], None).await.unwrap();
    sink.catch_up().await;
    assert_eq!(cache.get(&"a".to_owned()).await.unwrap(), Some(a), "unchanged in PostgreSQL, copied again");
    assert_eq!(cache.get(&"b".to_owned()).await.unwrap().map(|v| (v.row.total, v.version)), Some((-5, 1)));

    cache.clear().await.unwrap();
    drop_schema(&pg).await;
}
