//! The materializer: aggregates topics → read models.
//!
//! ```text
//! engine/     the generic pipeline, one per workload: consume the partitions
//!             this instance holds a lease on, write each batch to PostgreSQL
//!             in one transaction, copy the rows to Redis (version-guarded,
//!             with a TTL, catching up after outages), store the positions
//! ```
//!
//! The engine names no workload: a workload implements [`MaterializerRole`]
//! (its [`engine::SinkWorkload`]) in its own crate (`workloads/<name>/`), and
//! the `platform` crate makes [`Workloads`] from its one list. The query
//! service reads what they write.
//!
//! - [`config`]: flags and environment.
//! - [`engine`]: [`engine::SinkWorkload`], the pipeline and the sink.

pub mod config;
pub mod engine;
pub mod metrics;

use std::sync::Arc;

use anyhow::Context;
use common::engine::http::OpsRoutes;
use common::engine::kafka::TopicSpec;
use common::engine::shutdown::{CancellationToken, TaskTracker};
use common::engine::store::cache::RedisStore;
use common::engine::workload::{Configured, Listed, Service, Workload, WorkloadList};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

pub use crate::config::Config;
use crate::engine::{Engine, Registration, Source};

/// A workload's role in the materializer: the [`engine::SinkWorkload`] that
/// writes its aggregates to its read model.
pub trait MaterializerRole: Workload {
    type Sink: engine::SinkWorkload;

    fn sink(cfg: &Self::Config) -> Self::Sink;
}

/// The materializer's view of a listed workload, its config parsed.
pub trait Registered: Listed {
    /// Its pipeline, reading its aggregates topic in its own lease group.
    fn registration(&self, cfg: &Config) -> Registration;
}

impl<W: MaterializerRole> Registered for Configured<W> {
    fn registration(&self, cfg: &Config) -> Registration {
        let topic = TopicSpec::aggregates_named(
            &W::topics(&self.config).aggregates,
            cfg.partitions.aggregates_partitions.get(),
        );
        let source = Source { topic, group_id: format!("{}{}", cfg.group_id, W::GROUP_SUFFIX) };
        Registration::new(W::sink(&self.config), source)
    }
}

/// The workloads the materializer runs, in the platform's order.
pub struct Workloads(WorkloadList<dyn Registered>);

impl Default for Workloads {
    fn default() -> Self {
        Workloads(WorkloadList::new(Service::Materializer))
    }
}

impl Workloads {
    pub fn new() -> Self {
        Self::default()
    }

    /// Lists `W`: a compile error unless it implements [`MaterializerRole`].
    pub fn add<W: MaterializerRole>(self) -> Self {
        Workloads(self.0.with::<W>(|w| Box::new(w)))
    }
}

/// Parsing, migrations and names come from the common list.
impl std::ops::Deref for Workloads {
    type Target = WorkloadList<dyn Registered>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// Connects to PostgreSQL (migrating its tables and every workload's read
/// models) and Redis, creates the workloads' aggregates topics if configured,
/// and runs a pipeline per workload until `token` is cancelled.
///
/// # Errors
/// Startup failures.
pub async fn run(
    cfg: Config,
    workloads: &[Box<dyn Registered>],
    metrics: PrometheusHandle,
    ops: TcpListener,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let migrations =
        common::engine::pg::migrations_for(Service::Materializer, workloads.iter().map(|w| w.migrations()));
    let pool = common::engine::pg::connect_migrated(&cfg.pg, &migrations).await?;
    for w in workloads {
        w.after_migrate(&pool, Service::Materializer)
            .await
            .with_context(|| format!("preparing the tables of {}", w.name()))?;
    }
    let redis = RedisStore::connect(&cfg.redis).await.context("connecting to Redis")?;
    let workloads: Vec<Registration> = workloads.iter().map(|w| w.registration(&cfg)).collect();
    anyhow::ensure!(!workloads.is_empty(), "no workload listed");
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
