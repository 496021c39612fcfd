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
use common::http::{OpsRoutes, ServerLimits};
use common::shutdown::CancellationToken;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use crate::config::Config;
pub use crate::http::CommandApp;
use crate::publisher::EventPublisher;

/// Builds the app: creates the topics if configured, connects the producer.
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
    common::kafka::ensure_topics(&cfg.kafka).await.context("creating topics")?;
    // One horizon and one partition count for the whole deployment: refuse to
    // accept events under settings the processor does not share.
    let pool = common::pg::connect_migrated(&cfg.pg).await?;
    common::pg::agree_horizon(&pool, "command", &cfg.horizon.horizon()).await?;
    let fatal = CancellationToken::new();
    let background = CancellationToken::new();
    let partitions = Arc::new(std::sync::atomic::AtomicI32::new(0));
    match common::pg::agree_partitions(&pool, "command", &cfg.kafka).await {
        Ok(n) => partitions.store(n, std::sync::atomic::Ordering::Relaxed),
        Err(e) if e.is::<common::pg::SettingMismatch>() => return Err(e),
        Err(e) => {
            // The broker may be down while we start: serve (with 503s) and check once it answers.
            tracing::warn!(error = %e, "partition count not checked yet; retrying in the background");
            let recheck =
                recheck_partitions(pool, cfg.kafka.clone(), partitions.clone(), fatal.clone(), background.clone());
            tokio::spawn(recheck);
        }
    }
    let publisher = EventPublisher::new(&cfg.kafka, cfg.producer_tuning(), cfg.producers.get() as usize)
        .context("creating the producers")?;
    let inner = Arc::new_cyclic(|weak: &std::sync::Weak<http::Inner>| {
        let weak = weak.clone();
        let ready: common::http::ReadyCheck = Arc::new(move || {
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
            edge: common::edge::Edge::new(&cfg.edge),
            fatal,
            background,
            partitions,
        }
    });
    Ok(CommandApp { inner })
}

/// Retries the partition-count agreement until the broker answers; a
/// mismatch is fatal (the process stops rather than route users differently
/// from the processor). Ends on success, mismatch, or `stop`.
async fn recheck_partitions(
    pool: deadpool_postgres::Pool,
    kafka: common::config::KafkaConfig,
    agreed: Arc<std::sync::atomic::AtomicI32>,
    fatal: CancellationToken,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        match common::pg::agree_partitions(&pool, "command", &kafka).await {
            Ok(n) => {
                agreed.store(n, std::sync::atomic::Ordering::Relaxed);
                return tracing::info!(partitions = n, "partition count agreed");
            }
            Err(e) if e.is::<common::pg::SettingMismatch>() => {
                tracing::error!(error = %e, "refusing to accept events");
                return fatal.cancel();
            }
            Err(e) => tracing::debug!(error = %e, "partition count still not checked"),
        }
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
    let watcher = {
        let (stop, fatal, app) = (stop.clone(), fatal.clone(), app.clone());
        tokio::spawn(async move {
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
        })
    };
    let handler_app = app.clone();
    let handler = move |req| {
        let app = handler_app.clone();
        async move { app.handle(req).await }
    };
    tracing::info!(addr = %listener.local_addr()?, "command service listening");
    common::http::serve(listener, handler, limits, stop.clone(), drain).await;
    stop.cancel();
    app.inner.background.cancel();
    let _ = watcher.await;
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
