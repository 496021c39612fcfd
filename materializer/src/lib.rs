//! The materializer: aggregates topic → read models.
//!
//! Consumes the processor's absolute (hour, partition) aggregates in a
//! consumer group and upserts them into PostgreSQL (per-partition rows guarded
//! by input offset, and per-hour totals with a version), then copies the
//! hour totals to Redis (guarded by version, with a TTL). The query service
//! reads what it writes.
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
use common::http::OpsRoutes;
use common::membership::Membership;
use common::shutdown::CancellationToken;
use common::store::cache::HourCache;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

pub use crate::config::Config;
use crate::pipeline::Materializer;
use crate::sink::ReadModelSink;

/// Connects to PostgreSQL (migrating it) and Redis, creates topics if
/// configured, and runs until `token` is cancelled.
///
/// # Errors
/// Startup failures.
pub async fn run(
    cfg: Config,
    metrics: PrometheusHandle,
    ops: TcpListener,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let pool = common::pg::connect_migrated(&cfg.pg).await?;
    let cache = HourCache::connect(&cfg.redis).await.context("connecting to Redis")?;
    common::kafka::ensure_topics(&cfg.kafka).await.context("creating topics")?;
    let membership = Membership::join(pool.clone(), &cfg.kafka, &cfg.group_id, &cfg.kafka.aggregates_topic).await?;
    let materializer =
        Materializer::new(&cfg, ReadModelSink::new(pool.clone(), cache.clone(), cfg.redis.ttl), membership)
            .context("creating the consumer")?;
    let ready: common::http::ReadyCheck = Arc::new(move || {
        let (pool, cache) = (pool.clone(), cache.clone());
        Box::pin(async move { common::store::check_ready(&pool, &cache).await })
    });
    let ops_task = tokio::spawn(common::http::serve_ops(
        ops,
        OpsRoutes { service: "materializer", metrics, ready },
        token.clone(),
    ));
    tracing::info!(topic = cfg.kafka.aggregates_topic, group = cfg.group_id, "materializer started");
    let result = materializer.run(token.clone()).await;
    token.cancel();
    let _ = ops_task.await;
    result
}
