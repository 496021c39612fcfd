//! The processor: events → exact hourly aggregates.
//!
//! Consumes the events topic in a consumer group. For every partition it owns
//! it keeps a [`PartitionWindow`](common::analytics::PartitionWindow) (the
//! exact user set and counts of each open hour), checkpoints it to the
//! PostgreSQL state store together with the input offset, and emits the
//! absolute counts of changed hours to the aggregates topic, where the
//! materializer picks them up.
//!
//! - [`config`]: flags and environment.
//! - `pipeline`: the consume / checkpoint / emit loop.
//! - `state_store`: the PostgreSQL adapter (claim with fencing, checkpoint).
//! - `emitter`: the aggregates-topic adapter.

pub mod config;
mod emitter;
pub mod metrics;
mod pipeline;
pub mod state_store;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use common::http::OpsRoutes;
use common::membership::Membership;
use common::shutdown::CancellationToken;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

pub use crate::config::Config;
use crate::pipeline::Processor;
use crate::state_store::StateStore;

/// Connects to PostgreSQL (migrating it), creates topics if configured, and
/// runs the processor and its ops endpoint until `token` is cancelled.
///
/// # Errors
/// Startup failures, or a processor failure that requires a restart.
pub async fn run(
    cfg: Config,
    metrics: PrometheusHandle,
    ops: TcpListener,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let pool = common::pg::connect_migrated(&cfg.pg).await?;
    common::kafka::ensure_topics(&cfg.kafka).await.context("creating topics")?;
    let partitions = common::pg::agree_deployment(&pool, "processor", &cfg.kafka, &cfg.horizon.horizon()).await?;
    let membership = Membership::join(pool.clone(), &cfg.kafka, &cfg.group_id, &cfg.kafka.events_topic).await?;
    let store = StateStore::new(pool.clone(), cfg.kafka.events_topic.clone());
    let processor = Processor::new(&cfg, store, membership, partitions).context("creating the consumer")?;
    let ready_pool = pool.clone();
    let ready: common::http::ReadyCheck = Arc::new(move || {
        let pool = ready_pool.clone();
        Box::pin(async move {
            if common::pg::ping(&pool, Duration::from_secs(2)).await {
                Ok(())
            } else {
                Err("postgres unreachable".into())
            }
        })
    });
    let ops_routes = OpsRoutes { service: "processor", metrics, ready };
    let ops_task = tokio::spawn(common::http::serve_ops(ops, ops_routes, token.clone()));
    tracing::info!(topic = cfg.kafka.events_topic, group = cfg.group_id, "processor started");
    let result = processor.run(token.clone()).await;
    token.cancel();
    let _ = ops_task.await;
    result.context("processor failed")?;
    tracing::info!("processor stopped");
    Ok(())
}
