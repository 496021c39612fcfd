//! The materializer: aggregates topics → read models.
//!
//! ```text
//! engine/     the generic pipeline, one per workload: consume the partitions
//!             this instance holds a lease on, write each batch to PostgreSQL
//!             in one transaction, copy the rows to Redis (version-guarded,
//!             with a TTL, catching up after outages), store the positions
//! analytics   the hourly workload: decode HourAggregate, upsert the partition
//!             rows and hour totals, the hour totals in Redis
//! increments  the per-key sums: decode IncrementSum, upsert `increments`
//!             guarded by input offset, the sums in Redis
//! ```
//!
//! The engine names no workload; [`workloads`] lists them, one line each. The
//! query service reads what they write.
//!
//! - [`config`]: flags and environment.
//! - [`engine`]: [`engine::SinkWorkload`], the pipeline and the sink.
//! - [`analytics`]: the hourly workload.

pub mod analytics;
pub mod config;
pub mod engine;
pub mod increments;
pub mod metrics;

use std::sync::Arc;

use anyhow::Context;
use common::engine::http::OpsRoutes;
use common::engine::pg::{migrations, Migration};
use common::engine::shutdown::{CancellationToken, TaskTracker};
use common::engine::store::cache::RedisStore;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

pub use crate::config::Config;
use crate::engine::{Engine, Registration};

/// Every workload the materializer runs, each with its source from `cfg`.
/// Adding a workload: one module implementing [`engine::SinkWorkload`] and one line here.
pub fn workloads(cfg: &Config) -> Vec<Registration> {
    vec![
        Registration::new(analytics::Analytics, analytics::source(cfg)),
        Registration::new(increments::Increments, increments::source(cfg)),
    ]
}

/// The tables the materializer uses: the read models it writes (the query
/// applies the same migration, to serve zeros before the first write), and
/// the leases and positions it keeps in PostgreSQL.
pub const MIGRATIONS: &[Migration] = &[
    migrations::READ_MODELS,
    migrations::COORDINATION,
    migrations::INCREMENTS,
    migrations::RANGES,
    migrations::READ_PROGRESS,
];

/// Connects to PostgreSQL (migrating its tables) and Redis, creates its topic
/// if configured, and runs until `token` is cancelled.
///
/// # Errors
/// Startup failures.
pub async fn run(
    cfg: Config,
    metrics: PrometheusHandle,
    ops: TcpListener,
    token: CancellationToken,
) -> anyhow::Result<()> {
    // Analytics tables: one column per count of the typed list, added where missing.
    let pool = common::analytics::read_model::pg::connect_migrated(
        &cfg.pg,
        MIGRATIONS,
        common::analytics::read_model::pg::READ_MODEL_COUNT_TABLES,
    )
    .await?;
    let redis = RedisStore::connect(&cfg.redis).await.context("connecting to Redis")?;
    let workloads = workloads(&cfg);
    let topics: Vec<_> = workloads.iter().map(|w| w.source.topic.clone()).collect();
    common::engine::kafka::ensure_topics(&cfg.kafka, &topics).await.context("creating topics")?;
    let engine = Engine {
        pool: pool.clone(),
        redis: redis.clone(),
        redis_ttl: cfg.redis.ttl,
        kafka: cfg.kafka.clone(),
        lease: cfg.lease.clone(),
        max_batch: cfg.max_batch.get() as usize,
        batch_wait: cfg.batch_wait,
    };
    let ready: common::engine::http::ReadyCheck = Arc::new(move || {
        let (pool, redis) = (pool.clone(), redis.clone());
        Box::pin(async move { common::engine::store::check_ready(&pool, &redis).await })
    });
    let tasks = TaskTracker::new();
    let serve_ops =
        common::engine::http::serve_ops(ops, OpsRoutes { service: "materializer", metrics, ready }, token.clone());
    common::engine::shutdown::spawn_critical(&tasks, &token, "ops-http", async move {
        serve_ops.await;
        Ok(())
    });
    let mut pipelines = tokio::task::JoinSet::new();
    for workload in workloads {
        let name = workload.name;
        let run = workload.run(engine.clone(), token.clone());
        pipelines.spawn(async move { run.await.with_context(|| format!("the {name} pipeline")) });
    }
    tracing::info!("materializer started");
    // The first pipeline to fail stops the others.
    let mut result = Ok(());
    while let Some(done) = pipelines.join_next().await {
        if let Err(e) = done.context("a pipeline panicked").and_then(|r| r) {
            token.cancel();
            result = result.and(Err(e));
        }
    }
    token.cancel();
    let drained = common::engine::shutdown::drain(tasks, cfg.telemetry.shutdown_timeout).await;
    result?;
    drained
}
