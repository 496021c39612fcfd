//! Fixtures for integration tests: endpoints from the environment, unique
//! names, and polling helpers.

use std::future::Future;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::config::{KafkaConfig, PgConfig, RedisConfig};

/// A short random suffix so parallel tests never share topics, schemas or keys.
pub fn unique_suffix() -> String {
    let mut rng = rand::rng();
    (0..8).map(|_| char::from(b'a' + rng.random_range(0..26u8))).collect()
}

pub fn kafka_brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn pg_url() -> String {
    std::env::var("PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Config sections pointing at fresh, test-private topics, schema and key prefix.
pub fn isolated(suffix: &str) -> (KafkaConfig, RedisConfig, PgConfig) {
    let kafka = KafkaConfig {
        brokers: kafka_brokers(),
        events_topic: format!("test-events-{suffix}"),
        events_partitions: 3.try_into().expect("non-zero"),
        aggregates_topic: format!("test-aggregates-{suffix}"),
        aggregates_partitions: 2.try_into().expect("non-zero"),
        create_topics: true,
        session_timeout: Duration::from_secs(6),
    };
    let redis = RedisConfig { url: redis_url(), key_prefix: format!("test-{suffix}"), ttl: Duration::from_secs(600) };
    let pg = PgConfig {
        url: pg_url(),
        schema: format!("test_{suffix}"),
        pool_size: 4.try_into().expect("non-zero"),
        timeout: Duration::from_secs(5),
    };
    (kafka, redis, pg)
}

/// Polls `check` until it returns `Some`, or panics after `limit` with `what`.
pub async fn wait_until<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(started.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Drops a test schema (cleanup).
pub async fn drop_schema(pg: &PgConfig) {
    if let Ok((client, conn)) = tokio_postgres::connect(&pg.url, tokio_postgres::NoTls).await {
        tokio::spawn(conn);
        let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", pg.schema)).await;
    }
}
