//! The command service: the write side of the pipeline.
//!
//! Each workload's `POST` → validate (the workload's pure core) → append to
//! the workload's topic (idempotent, `acks=all`) → success once the broker
//! has it. Downstream, the processor folds those events into aggregates.
//!
//! The crate is split into the generic engine and the workloads plugged into it:
//!
//! ```text
//!                 engine (knows no workload)                   workload (knows no Kafka, no HTTP)
//!  request ──▶ route table ─▶ edge: token, rate limit, body ─▶ Intake::parse ─▶ Event | Reject
//!              in-flight limit (503) ─▶ publisher(topic) ◀──── Intake::key, Intake::encode
//!              partition check (agreed count of that topic)
//!              ─▶ Intake::judge(delivery) ─▶ one place: outcome → status, metrics
//! ```
//!
//! - [`engine`]: the generic part. [`engine::Intake`] is the seam a workload
//!   implements; `engine::app` owns routing, the edge, the in-flight limit,
//!   partition-count agreement, gauges and shutdown; `engine::publisher` is
//!   the Kafka adapter; `engine::outcome` maps every outcome to a status.
//! - [`analytics`]: `POST /analytics` (clicks and impressions, 204), with its
//!   horizon: malformed → 400, outside the horizon or closed on arrival → 422.
//! - [`config`]: flags and environment; each workload reads its own sections
//!   (analytics: `--events-topic`, `--events-partitions`, the horizon).
//! - [`metrics`]: metric names (label `workload` on the per-event ones).
//!
//! Adding a workload: one module implementing [`engine::Intake`], its config
//! section in [`Config`], and one `.register(..)` line in [`build`].

pub mod analytics;
pub mod config;
pub mod engine;
pub mod increments;
pub mod metrics;

use common::engine::pg::{migrations, Migration};

pub use crate::config::Config;
pub use crate::engine::{run, CommandApp};

/// The tables the command uses: only the deployment settings it agrees with
/// the processor (read and stored at startup).
pub const MIGRATIONS: &[Migration] = &[migrations::DEPLOYMENT_SETTINGS];

/// Builds the app with every workload: agrees the deployment settings,
/// creates the topics if configured, connects the producers.
///
/// # Errors
/// When a setting differs from the deployment's, PostgreSQL does not answer,
/// the broker refuses topic creation, or a producer cannot be built.
pub async fn build(
    cfg: &Config,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    clock: fn() -> i64,
) -> anyhow::Result<CommandApp> {
    let engine = engine::Engine::new(cfg, metrics, clock)?;
    let pool = common::engine::pg::connect_migrated(&cfg.pg, MIGRATIONS).await?;
    engine
        .register(analytics::Analytics::agreed(&pool, &cfg.events, &cfg.horizon).await?)?
        .register(increments::Increments::new(&cfg.increments, cfg.events.events_partitions.get()))?
        .start(pool)
        .await
}
