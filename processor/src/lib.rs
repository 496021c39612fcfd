//! The processor: events → exact aggregates, per events-topic partition.
//!
//! ```text
//! engine/      the workload-free loop: leases, fencing, checkpoints, dedup, emits
//!   pipeline     consume / apply / checkpoint / emit, per workload
//!   partition    one owned partition: apply a fetched record, claim, checkpoint
//!   state_store  position + epoch + ids + outbox (the `Store` trait; PostgreSQL)
//!   tables       the storage a workload declares (keyed rows, hash chunks) and its `StateTx`
//!   emitter      one transactional producer per owned partition (the `Log` trait; Kafka)
//!   sim          in-memory Store and Log, and the seeded simulation (tests, feature `sim`)
//!   dedup        event ids, held while their hour is open
//! analytics.rs  the hourly analytics workload (an `engine::Aggregation`)
//! increments.rs the per-key sums workload (an `engine::Aggregation`)
//! ```
//!
//! Each workload's partitions are split among the processor instances by
//! PostgreSQL leases ([`common::engine::membership`]).

pub mod analytics;
pub mod config;
pub mod engine;
pub mod increments;

pub use engine::metrics;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use common::engine::http::OpsRoutes;
use common::engine::kafka::TopicSpec;
use common::engine::membership::Membership;
use common::engine::pg::{migrations, Migration};
use common::engine::shutdown::{CancellationToken, TaskTracker};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::analytics::Analytics;
pub use crate::config::Config;
use crate::engine::state_store::StateStore;
use crate::engine::{Aggregation, Processor, ProcessorSettings};
use crate::increments::Increments;

/// The tables the processor uses: its state store, the leases it shares with
/// the materializer, and the deployment settings it agrees with the command.
pub const MIGRATIONS: &[Migration] = &[
    migrations::PROCESSOR_STATE,
    migrations::COORDINATION,
    migrations::DEPLOYMENT_SETTINGS,
    migrations::PROCESSOR_EVENT_IDS,
    migrations::PROCESSOR_INCREMENTS,
    migrations::PROCESSOR_DAYS,
    migrations::PROCESSOR_OUTBOX,
];

/// A workload's topics and lease group.
struct Workload {
    events_topic: String,
    aggregates_topic: String,
    group: String,
}

impl Workload {
    fn new((events, aggregates): (&str, &str), group: String) -> Self {
        Workload { events_topic: events.to_owned(), aggregates_topic: aggregates.to_owned(), group }
    }

    fn topics(&self) -> (&str, &str) {
        (&self.events_topic, &self.aggregates_topic)
    }
}

/// First and longest wait before a failed workload is started again.
const RESTART_FIRST: Duration = Duration::from_secs(1);
const RESTART_MAX: Duration = Duration::from_secs(30);

/// Runs one workload's processor until `token` is cancelled; when it fails
/// (it left its lease group first), builds a new one after a backoff and
/// runs that. Only this workload restarts: the other runs on its own task.
async fn supervise<W: Aggregation>(
    first: Processor<W>,
    make: impl Fn() -> W + Send + 'static,
    cfg: Config,
    pool: deadpool_postgres::Pool,
    reg: Workload,
    token: CancellationToken,
) {
    let mut wait = RESTART_FIRST;
    let mut processor = Some(first);
    loop {
        let running = match processor.take() {
            Some(p) => Ok(p),
            None => start(make(), &cfg, &pool, reg.topics(), reg.group.clone()).await,
        };
        let started = std::time::Instant::now();
        let failed = match running {
            Ok(p) => match p.run(token.clone()).await {
                Ok(()) => return,
                Err(e) => anyhow::Error::from(e),
            },
            Err(e) => e,
        };
        if token.is_cancelled() {
            return;
        }
        if started.elapsed() > RESTART_MAX {
            wait = RESTART_FIRST; // it ran a while: a new failure, not a crash loop
        }
        tracing::error!(
            workload = W::NAME,
            error = format!("{failed:#}"),
            retry_in_ms = wait.as_millis() as u64,
            "workload failed; restarting it"
        );
        ::metrics::counter!(engine::metrics::WORKLOAD_RESTARTS, "workload" => W::NAME).increment(1);
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(RESTART_MAX);
    }
}

/// Joins the lease group of one workload and builds its processor.
async fn start<W: Aggregation>(
    workload: W,
    cfg: &Config,
    pool: &deadpool_postgres::Pool,
    (events_topic, aggregates_topic): (&str, &str),
    group_id: String,
) -> anyhow::Result<Processor<W>> {
    let partitions = common::engine::pg::agree_topic_partitions(pool, "processor", &cfg.kafka, events_topic).await?;
    // Progress records go to every partition of the aggregates topic (see common::engine::progress).
    let aggregates_partitions = common::engine::kafka::partition_count(&cfg.kafka, aggregates_topic)
        .await
        .with_context(|| format!("reading the partition count of {aggregates_topic}"))?;
    let membership = Membership::join(pool.clone(), &cfg.kafka, &cfg.lease, &group_id, events_topic).await?;
    let store = StateStore::new(pool.clone(), events_topic.to_owned());
    let settings = ProcessorSettings {
        kafka: cfg.kafka.clone(),
        events_topic: events_topic.to_owned(),
        aggregates_topic: aggregates_topic.to_owned(),
        aggregates_partitions,
        group_id,
        checkpoint_interval: cfg.checkpoint_interval,
        emit_bytes_per_sec: cfg.emit_bytes_per_sec,
        delivery_timeout: cfg.delivery_timeout,
        retention_ms: cfg.retention_ms(),
        partitions,
    };
    Processor::new(workload, &settings, store, membership).context("creating the consumer")
}

/// Connects to PostgreSQL (migrating its tables), creates its topics if
/// configured, and runs the processor and its ops endpoint until `token` is
/// cancelled.
///
/// A workload whose processor fails after startup is restarted on its own
/// (see `supervise`); the other workload keeps running meanwhile.
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
        common::analytics::read_model::pg::PROCESSOR_COUNT_TABLES,
    )
    .await?;
    let (events_partitions, sums_partitions) =
        (cfg.events.events_partitions.get(), cfg.aggregates.aggregates_partitions.get());
    let topics = [
        TopicSpec::events(&cfg.events),
        TopicSpec::aggregates(&cfg.aggregates),
        TopicSpec::events_named(&cfg.increments_events.increments_events_topic, events_partitions),
        TopicSpec::aggregates_named(&cfg.increments_sums.increments_sums_topic, sums_partitions),
    ];
    common::engine::kafka::ensure_topics(&cfg.kafka, &topics).await.context("creating topics")?;
    let horizon = cfg.horizon.horizon();
    common::engine::pg::agree_horizon(&pool, "processor", &horizon).await?;
    // One registration per workload: its topics, its lease group, its Aggregation.
    let analytics_reg =
        Workload::new((&cfg.events.events_topic, &cfg.aggregates.aggregates_topic), cfg.group_id.clone());
    let increments_reg = Workload::new(
        (&cfg.increments_events.increments_events_topic, &cfg.increments_sums.increments_sums_topic),
        format!("{}.increments", cfg.group_id),
    );
    let retention_ms = cfg.retention_ms();
    let analytics =
        start(Analytics { retention_ms }, &cfg, &pool, analytics_reg.topics(), analytics_reg.group.clone()).await?;
    let increments = start(Increments, &cfg, &pool, increments_reg.topics(), increments_reg.group.clone()).await?;
    let ready_pool = pool.clone();
    let ready: common::engine::http::ReadyCheck = Arc::new(move || {
        let pool = ready_pool.clone();
        Box::pin(async move {
            if common::engine::pg::ping(&pool, Duration::from_secs(2)).await {
                Ok(())
            } else {
                Err("postgres unreachable".into())
            }
        })
    });
    let ops_routes = OpsRoutes { service: "processor", metrics, ready };
    let tasks = TaskTracker::new();
    let serve_ops = common::engine::http::serve_ops(ops, ops_routes, token.clone());
    common::engine::shutdown::spawn_critical(&tasks, &token, "ops-http", async move {
        serve_ops.await;
        Ok(())
    });
    tracing::info!(topic = cfg.events.events_topic, group = cfg.group_id, "processor started");
    // Each workload on its own task, restarted on its own if it fails: one
    // workload's failure never stops the other's partitions.
    let analytics = tokio::spawn(supervise(
        analytics,
        move || Analytics { retention_ms },
        cfg.clone(),
        pool.clone(),
        analytics_reg,
        token.clone(),
    ));
    let increments =
        tokio::spawn(supervise(increments, || Increments, cfg.clone(), pool.clone(), increments_reg, token.clone()));
    let (a, i) = tokio::join!(analytics, increments);
    token.cancel();
    let drained = common::engine::shutdown::drain(tasks, cfg.telemetry.shutdown_timeout).await;
    a.context("analytics processor task")?;
    i.context("increments processor task")?;
    drained?;
    tracing::info!("processor stopped");
    Ok(())
}
