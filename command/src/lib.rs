//! The command service: the write side of the pipeline.
//!
//! `POST /analytics` → validate (pure core in `common::analytics`) → append to
//! the events topic (idempotent, `acks=all`) → 204 once the broker has it.
//! Downstream, the processor turns events into hourly aggregates.
//!
//! - [`config`]: flags and environment.
//! - `http`: routing and the mapping of outcomes to status codes.
//! - `publisher`: the Kafka adapter.

pub mod config;
mod http;
pub mod metrics;
mod publisher;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use common::engine::http::{OpsRoutes, ServerLimits};
use common::engine::kafka::TopicSpec;
use common::engine::pg::{migrations, Migration};
use common::engine::shutdown::{spawn_critical, CancellationToken, TaskTracker};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use crate::config::Config;
pub use crate::http::CommandApp;
use crate::publisher::EventPublisher;

/// The tables the command uses: only the deployment settings it agrees with
/// the processor (read and stored at startup).
pub const MIGRATIONS: &[Migration] = &[migrations::DEPLOYMENT_SETTINGS];

/// Builds the app: creates the events topic if configured, connects the producer.
///
/// # Errors
/// When the broker cannot be reached for topic creation or the producer cannot be built.
pub async fn build(
    cfg: &Config,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    clock: fn() -> i64,
) -> anyhow::Result<CommandApp> {
    // A request cut short after its event was handed to the producer could be
    // retried by the client and counted twice: let delivery give up first.
    anyhow::ensure!(
        cfg.edge.request_timeout > cfg.delivery_timeout,
        "--request-timeout ({:?}) must be longer than --delivery-timeout ({:?})",
        cfg.edge.request_timeout,
        cfg.delivery_timeout
    );
    common::engine::kafka::ensure_topics(&cfg.kafka, &[TopicSpec::events(&cfg.events)]).await.context("creating topics")?;
    // One horizon and one partition count for the whole deployment: refuse to
    // accept events under settings the processor does not share.
    let pool = common::engine::pg::connect_migrated(&cfg.pg, MIGRATIONS).await?;
    common::engine::pg::agree_horizon(&pool, "command", &cfg.horizon.horizon()).await?;
    let fatal = CancellationToken::new();
    let background = CancellationToken::new();
    let tasks = TaskTracker::new();
    let partitions = Arc::new(std::sync::atomic::AtomicI32::new(0));
    match common::engine::pg::agree_partitions(&pool, "command", &cfg.kafka, &cfg.events).await {
        Ok(n) => partitions.store(n, std::sync::atomic::Ordering::Relaxed),
        Err(e) if e.is::<common::engine::pg::SettingMismatch>() => return Err(e),
        Err(e) => {
            // The broker may be down while we start: serve (with 503s) and check once it answers.
            tracing::warn!(error = %e, "partition count not checked yet; retrying in the background");
            let topics = (cfg.kafka.clone(), cfg.events.clone());
            let recheck = recheck_partitions(pool, topics, partitions.clone(), background.clone());
            // A mismatch found later is fatal: spawn_critical cancels `fatal` on its error.
            spawn_critical(&tasks, &fatal, "partition-recheck", recheck);
        }
    }
    let publisher = EventPublisher::new(&cfg.kafka, &cfg.events, cfg.producer_tuning(), cfg.producers.get() as usize)
        .context("creating the producers")?;
    let inner = Arc::new_cyclic(|weak: &std::sync::Weak<http::Inner>| {
        let weak = weak.clone();
        let ready: common::engine::http::ReadyCheck = Arc::new(move || {
            let weak = weak.clone();
            Box::pin(async move {
                match weak.upgrade() {
                    Some(inner) => inner.publisher.check_broker(Duration::from_secs(2)).await,
                    None => Err("shutting down".into()),
                }
            })
        });
        http::Inner {
            publisher,
            horizon: cfg.horizon.horizon(),
            clock,
            in_flight: Semaphore::new(cfg.max_in_flight.get() as usize),
            max_in_flight: cfg.max_in_flight.get() as usize,
            ops: OpsRoutes { service: "command", metrics, ready },
            edge: common::engine::edge::Edge::new(&cfg.edge, Some(&cfg.auth)),
            fatal,
            background,
            tasks,
            partitions,
        }
    });
    Ok(CommandApp { inner })
}

/// Retries the partition-count agreement until the broker answers. Ends on
/// success or `stop`; a mismatch is an error, which stops the process (run
/// under `spawn_critical`) rather than route users differently from the
/// processor.
async fn recheck_partitions(
    pool: deadpool_postgres::Pool,
    (kafka, events): (common::engine::config::KafkaConfig, common::engine::config::EventsTopicConfig),
    agreed: Arc<std::sync::atomic::AtomicI32>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let policy = common::engine::retry::backoff(Duration::from_secs(1), Duration::from_secs(10));
    let attempt = || common::engine::pg::agree_partitions(&pool, "command", &kafka, &events);
    let retryable = |e: &anyhow::Error| !e.is::<common::engine::pg::SettingMismatch>();
    match common::engine::retry::until_cancelled(&stop, policy, "checking the partition count", attempt, retryable).await {
        None => Ok(()),
        Some(Ok(n)) => {
            agreed.store(n, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(partitions = n, "partition count agreed");
            Ok(())
        }
        Some(Err(e)) => Err(e.context("refusing to accept events")),
    }
}

/// Serves until `token` is cancelled, then drains requests and flushes the producer.
///
/// # Errors
/// When the producer hit a fatal error (the process should restart) or could not flush.
pub async fn run(
    app: CommandApp,
    listener: TcpListener,
    limits: ServerLimits,
    token: CancellationToken,
    drain: Duration,
) -> anyhow::Result<()> {
    let fatal = app.inner.fatal.clone();
    let stop = token.child_token();
    {
        let (tasks, token) = (app.inner.tasks.clone(), stop.clone());
        let (stop, fatal, app) = (stop.clone(), fatal.clone(), app.clone());
        let watcher = async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = fatal.cancelled() => { stop.cancel(); break; }
                    _ = tick.tick() => {
                        ::metrics::gauge!(crate::metrics::PRODUCER_QUEUE).set(app.inner.publisher.queue_len() as f64);
                        let busy = app.inner.in_flight_capacity_used();
                        ::metrics::gauge!(crate::metrics::IN_FLIGHT).set(busy as f64);
                    }
                }
            }
            Ok(())
        };
        spawn_critical(&tasks, &token, "gauges", watcher);
    }
    let handler_app = app.clone();
    let handler = move |req| {
        let app = handler_app.clone();
        async move { app.handle(req).await }
    };
    tracing::info!(addr = %listener.local_addr()?, "command service listening");
    common::engine::http::serve(listener, handler, limits, stop.clone(), drain).await;
    stop.cancel();
    app.inner.background.cancel();
    common::engine::shutdown::drain(app.inner.tasks.clone(), drain).await?;
    app.inner.publisher.flush(drain).context("flushing the producer")?;
    if fatal.is_cancelled() {
        anyhow::bail!("the producer hit a fatal error");
    }
    tracing::info!("command service stopped");
    Ok(())
}

impl http::Inner {
    fn in_flight_capacity_used(&self) -> usize {
        // Semaphore permits are handed out per request; the gauge shows how many are taken.
        self.max_in_flight.saturating_sub(self.in_flight.available_permits())
    }
}
