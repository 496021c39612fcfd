//! The materializer: aggregates topic → read models.
//!
//! Consumes the processor's absolute (hour, partition) aggregates from the
//! partitions it holds a lease on ([`common::engine::membership`], PostgreSQL leases
//! shared by the materializer instances) and upserts them into PostgreSQL
//! (per-partition rows guarded by input offset, and per-hour totals with a
//! version), then copies the hour totals to Redis (guarded by version, with
//! a TTL). The query service reads what it writes.
//!
//! - [`config`]: flags and environment.
//! - `pipeline`: consume / write / commit loop.
//! - `sink`: the PostgreSQL and Redis writes.

pub mod config;
pub mod metrics;
mod pipeline;
mod sink;

use std::sync::Arc;

use anyhow::Context;
use common::engine::http::OpsRoutes;
use common::engine::kafka::TopicSpec;
use common::engine::membership::Membership;
use common::engine::pg::{migrations, Migration};
use common::engine::shutdown::{CancellationToken, TaskTracker};
use common::engine::store::cache::HourCache;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

pub use crate::config::Config;
use crate::pipeline::Materializer;
use crate::sink::ReadModelSink;

/// The tables the materializer uses: the read models it writes (the query
/// applies the same migration, to serve zeros before the first write), and
/// the leases and positions it keeps in PostgreSQL.
pub const MIGRATIONS: &[Migration] = &[migrations::READ_MODELS, migrations::COORDINATION];

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
    let pool = common::engine::pg::connect_migrated(&cfg.pg, MIGRATIONS).await?;
    let cache = HourCache::connect(&cfg.redis).await.context("connecting to Redis")?;
    common::engine::kafka::ensure_topics(&cfg.kafka, &[TopicSpec::aggregates(&cfg.aggregates)])
        .await
        .context("creating topics")?;
    let topic = &cfg.aggregates.aggregates_topic;
    let membership = Membership::join(pool.clone(), &cfg.kafka, &cfg.lease, &cfg.group_id, topic).await?;
    let materializer =
        Materializer::new(&cfg, ReadModelSink::new(pool.clone(), cache.clone(), cfg.redis.ttl), membership)
            .context("creating the consumer")?;
    let ready: common::engine::http::ReadyCheck = Arc::new(move || {
        let (pool, cache) = (pool.clone(), cache.clone());
        Box::pin(async move { common::engine::store::check_ready(&pool, &cache).await })
    });
    let tasks = TaskTracker::new();
    let serve_ops = common::engine::http::serve_ops(ops, OpsRoutes { service: "materializer", metrics, ready }, token.clone());
    common::engine::shutdown::spawn_critical(&tasks, &token, "ops-http", async move {
        serve_ops.await;
        Ok(())
    });
    tracing::info!(topic = cfg.aggregates.aggregates_topic, group = cfg.group_id, "materializer started");
    let result = materializer.run(token.clone()).await;
    token.cancel();
    let drained = common::engine::shutdown::drain(tasks, cfg.telemetry.shutdown_timeout).await;
    result?;
    drained
}
