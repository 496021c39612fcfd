//! The processor: events → exact aggregates, per events-topic partition.
//!
//! ```text
//! engine/      the workload-free loop: leases, fencing, checkpoints, dedup, emits
//!   pipeline     consume / apply / checkpoint / emit, per workload
//!   partition    one owned partition: apply a fetched record, claim, checkpoint
//!   state_store  position + epoch + ids + outbox (the `Store` trait; PostgreSQL)
//!   tables       the storage a workload declares (keyed rows, hash chunks) and its `StateTx`
//!   emitter      one transactional producer per owned partition (the `Log` trait; Kafka)
//!   io           the loop's consumer, lease group and clock (`Source`, `Members`, `Clock`) and `Io`, the bundle
//!   sim          in-memory Store and Log, and the seeded simulation (tests, feature `sim`)
//!   dedup        event ids, held while their hour is open
//! ```
//!
//! A workload plugs in by implementing [`ProcessorRole`] (its
//! [`engine::Aggregation`]) in its own crate (`workloads/<name>/`); the
//! `platform` crate makes [`Workloads`] from its one list. Each workload's
//! partitions are split among the processor instances by PostgreSQL leases
//! ([`common::engine::membership`]), in a lease group of its own.

pub mod config;
pub mod engine;

pub use engine::metrics;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use common::engine::horizon::Horizon;
use common::engine::http::OpsRoutes;
use common::engine::kafka::TopicSpec;
use common::engine::membership::Membership;
use common::engine::shutdown::{CancellationToken, TaskTracker};
use common::engine::workload::{Configured, Listed, Service, Topics, Workload, WorkloadList};
use futures::future::BoxFuture;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

pub use crate::config::Config;
use crate::engine::state_store::StateStore;
use crate::engine::{Aggregation, Processor, ProcessorSettings};

/// A workload's role in the processor: the [`Aggregation`] of its events.
pub trait ProcessorRole: Workload {
    type Aggregation: Aggregation;

    /// The aggregation, made again each time the workload restarts.
    /// `horizon` is the deployment's, agreed with the command.
    fn aggregation(cfg: &Self::Config, horizon: &Horizon) -> Self::Aggregation;
}

/// The processor's view of a listed workload, its config parsed.
pub trait Registered: Listed {
    /// Joins the workload's lease group, builds its processor and runs it on
    /// its own task, restarted on its own when it fails, until `token` is cancelled.
    ///
    /// # Errors
    /// Startup failures (partition agreement, leases, the consumer).
    fn launch<'a>(
        &'a self,
        cfg: &'a Config,
        pool: &'a deadpool_postgres::Pool,
        token: CancellationToken,
    ) -> BoxFuture<'a, anyhow::Result<tokio::task::JoinHandle<()>>>;
}

impl<W: ProcessorRole> Registered for Configured<W> {
    fn launch<'a>(
        &'a self,
        cfg: &'a Config,
        pool: &'a deadpool_postgres::Pool,
        token: CancellationToken,
    ) -> BoxFuture<'a, anyhow::Result<tokio::task::JoinHandle<()>>> {
        Box::pin(async move {
            let topics = W::topics(&self.config);
            let reg = Lanes::new(&topics, format!("{}{}", cfg.group_id, W::GROUP_SUFFIX));
            let horizon = cfg.horizon.horizon();
            let first =
                start(W::aggregation(&self.config, &horizon), cfg, pool, reg.topics(), reg.group.clone()).await?;
            let config = self.config.clone();
            let make = move || W::aggregation(&config, &horizon);
            Ok(tokio::spawn(supervise(first, make, cfg.clone(), pool.clone(), reg, token)))
        })
    }
}

/// The workloads the processor runs, in the platform's order.
pub struct Workloads(WorkloadList<dyn Registered>);

impl Default for Workloads {
    fn default() -> Self {
        Workloads(WorkloadList::new(Service::Processor))
    }
}

impl Workloads {
    pub fn new() -> Self {
        Self::default()
    }

    /// Lists `W`: a compile error unless it implements [`ProcessorRole`].
    pub fn add<W: ProcessorRole>(self) -> Self {
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

/// A workload's topics and lease group.
struct Lanes {
    topics: Topics,
    group: String,
}

impl Lanes {
    fn new(topics: &Topics, group: String) -> Self {
        Lanes { topics: topics.clone(), group }
    }

    fn topics(&self) -> &Topics {
        &self.topics
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
    reg: Lanes,
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
    topics: &Topics,
    group_id: String,
) -> anyhow::Result<Processor<W>> {
    let (events_topic, aggregates_topic) = (topics.events.as_str(), topics.aggregates.as_str());
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
        replies_topic: topics.replies.clone(),
        aggregates_partitions,
        group_id,
        checkpoint_interval: cfg.checkpoint_interval_of(W::NAME, W::CHECKPOINT_INTERVAL, topics.replies.is_some()),
        emit_bytes_per_sec: cfg.emit_bytes_per_sec,
        delivery_timeout: cfg.delivery_timeout,
        replies_linger: cfg.replies_linger,
        retention_ms: cfg.retention_ms(),
        partitions,
    };
    Processor::new(workload, &settings, store, membership).context("creating the consumer")
}

/// Connects to PostgreSQL (migrating its tables and every workload's), creates
/// the workloads' topics if configured, and runs a processor per workload and
/// the ops endpoint until `token` is cancelled.
///
/// A workload whose processor fails after startup is restarted on its own
/// (see `supervise`); the other workloads keep running meanwhile.
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
    anyhow::ensure!(!workloads.is_empty(), "no workload listed");
    let migrations = common::engine::pg::migrations_for(Service::Processor, workloads.iter().map(|w| w.migrations()));
    let pool = common::engine::pg::connect_migrated(&cfg.pg, &migrations).await?;
    for w in workloads {
        w.after_migrate(&pool, Service::Processor)
            .await
            .with_context(|| format!("preparing the tables of {}", w.name()))?;
    }
    let (events_partitions, aggregates_partitions) =
        (cfg.partitions.events.events_partitions.get(), cfg.partitions.aggregates.aggregates_partitions.get());
    let topics: Vec<TopicSpec> = workloads
        .iter()
        .flat_map(|w| {
            let t = w.topics();
            let replies = t.replies.iter().map(|r| TopicSpec::replies_named(r, events_partitions));
            [
                TopicSpec::events_named(&t.events, events_partitions),
                TopicSpec::aggregates_named(&t.aggregates, aggregates_partitions),
            ]
            .into_iter()
            .chain(replies)
            .collect::<Vec<_>>()
        })
        .collect();
    common::engine::kafka::ensure_topics(&cfg.kafka, &topics).await.context("creating topics")?;
    common::engine::pg::agree_horizon(&pool, "processor", &cfg.horizon.horizon()).await?;
    common::engine::workload::agree_settings(&pool, "processor", workloads).await?;
    // One processor per workload, each on its own task and restarted on its
    // own if it fails: one workload's failure never stops another's partitions.
    let mut running = Vec::with_capacity(workloads.len());
    for w in workloads {
        match w.launch(&cfg, &pool, token.clone()).await {
            Ok(task) => running.push((w.name(), task)),
            Err(e) => {
                token.cancel();
                for (_, task) in running {
                    let _ = task.await;
                }
                return Err(e.context(format!("starting the {} processor", w.name())));
            }
        }
    }
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
    tracing::info!(workloads = ?workloads.iter().map(|w| w.name()).collect::<Vec<_>>(), group = cfg.group_id, "processor started");
    let mut failed = None;
    for (name, task) in running {
        if let Err(e) = task.await {
            failed.get_or_insert(anyhow::Error::from(e).context(format!("{name} processor task")));
        }
    }
    token.cancel();
    let drained = common::engine::shutdown::drain(tasks, cfg.telemetry.shutdown_timeout).await;
    if let Some(e) = failed {
        return Err(e);
    }
    drained?;
    tracing::info!("processor stopped");
    Ok(())
}
