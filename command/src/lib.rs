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
//! - [`config`]: the engine's flags and environment; each workload adds its
//!   own section ([`common::engine::workload::Workload::Config`]).
//! - [`metrics`]: metric names (label `workload` on the per-event ones).
//! - [`CommandRole`]: what a workload implements to be served here, and
//!   [`Workloads`], the list the `platform` crate makes from its one list of
//!   workloads. The workloads live in their own crates (`workloads/<name>/`).

pub mod config;
pub mod engine;
pub mod metrics;

use common::engine::horizon::Horizon;
use common::engine::kafka::TopicSpec;
use common::engine::workload::{Configured, Listed, Service, Workload, WorkloadList};

pub use crate::config::Config;
pub use crate::engine::{run, CommandApp};

/// A workload's role at the write edge: the [`engine::Intake`] it serves.
pub trait CommandRole: Workload {
    /// An [`engine::Intake`], or an [`engine::Upload`] in [`engine::Streamed`].
    type Intake: engine::Served;

    /// The intake on `events`: the workload's events topic (see
    /// [`common::engine::workload::Workload::topics`]) with the deployment's
    /// partition count. `horizon` is the deployment's, agreed with the processor.
    fn intake(cfg: &Self::Config, events: TopicSpec, horizon: &Horizon) -> Self::Intake;

    /// Listeners the workload serves beside the HTTP API (its gRPC API, say),
    /// usually over `app`'s in-process [`CommandApp::handle`], so that every
    /// edge check and decision is the HTTP one. None by default.
    fn listeners(
        cfg: &Self::Config,
        app: &CommandApp,
        limits: &common::engine::http::ListenerLimits,
    ) -> Vec<common::engine::http::Listener> {
        let _ = (cfg, app, limits);
        Vec::new()
    }

    /// Background tasks the workload runs in each command instance (a
    /// watched directory, a janitor), usually over `app`'s in-process
    /// [`CommandApp::handle`] or its topic ([`CommandApp::append_to`],
    /// [`CommandApp::tail`]). The engine starts them once the command
    /// serves, cancels their token when it stops and waits for them within
    /// the shutdown drain; a task's error stops the command. None by default.
    fn tasks(cfg: &Self::Config, app: &CommandApp) -> Vec<common::engine::task::Task> {
        let _ = (cfg, app);
        Vec::new()
    }
}

/// The command's view of a listed workload, its config parsed.
pub trait Registered: Listed {
    /// Adds the workload's intake to `engine`.
    ///
    /// # Errors
    /// As [`engine::Engine::register`].
    fn register<'c>(&self, engine: engine::Engine<'c>, cfg: &Config) -> anyhow::Result<engine::Engine<'c>>;

    /// The workload's own listeners over the built `app` ([`CommandRole::listeners`]).
    fn listeners(
        &self,
        app: &CommandApp,
        limits: &common::engine::http::ListenerLimits,
    ) -> Vec<common::engine::http::Listener>;

    /// The workload's background tasks over the built `app` ([`CommandRole::tasks`]).
    fn tasks(&self, app: &CommandApp) -> Vec<common::engine::task::Task>;
}

impl<W: CommandRole> Registered for Configured<W> {
    fn register<'c>(&self, engine: engine::Engine<'c>, cfg: &Config) -> anyhow::Result<engine::Engine<'c>> {
        let events = TopicSpec::events_named(&W::topics(&self.config).events, cfg.partitions.events_partitions.get());
        engine::Served::register_on(W::intake(&self.config, events, &cfg.horizon.horizon()), engine)
    }

    fn listeners(
        &self,
        app: &CommandApp,
        limits: &common::engine::http::ListenerLimits,
    ) -> Vec<common::engine::http::Listener> {
        W::listeners(&self.config, app, limits)
    }

    fn tasks(&self, app: &CommandApp) -> Vec<common::engine::task::Task> {
        W::tasks(&self.config, app)
    }
}

/// The workloads the command serves, in the platform's order.
pub struct Workloads(WorkloadList<dyn Registered>);

impl Default for Workloads {
    fn default() -> Self {
        Workloads(WorkloadList::new(Service::Command))
    }
}

impl Workloads {
    pub fn new() -> Self {
        Self::default()
    }

    /// Lists `W`: a compile error unless it implements [`CommandRole`].
    pub fn add<W: CommandRole>(self) -> Self {
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

/// Builds the app with every workload of `workloads`: agrees the deployment
/// settings (the horizon, each workload's own, and each topic's partition
/// count), creates the topics if configured, connects the producers.
///
/// # Errors
/// When a setting differs from the deployment's, PostgreSQL does not answer,
/// the broker refuses topic creation, or a producer cannot be built.
pub async fn build(
    cfg: &Config,
    workloads: &[Box<dyn Registered>],
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    clock: fn() -> i64,
) -> anyhow::Result<CommandApp> {
    let mut engine = engine::Engine::new(cfg, metrics, clock)?;
    let migrations = common::engine::pg::migrations_for(Service::Command, workloads.iter().map(|w| w.migrations()));
    let pool = common::engine::pg::connect_migrated(&cfg.pg, &migrations).await?;
    // One horizon for command and processor, or events would be accepted
    // under rules the processor does not share.
    common::engine::pg::agree_horizon(&pool, "command", &cfg.horizon.horizon()).await?;
    common::engine::workload::agree_settings(&pool, "command", workloads).await?;
    for w in workloads {
        engine = w.register(engine, cfg)?;
    }
    let app = engine.start(pool).await?;
    let limits = common::engine::http::ListenerLimits::from_edge(&cfg.edge, cfg.telemetry.shutdown_timeout)?;
    for listener in workloads.iter().flat_map(|w| w.listeners(&app, &limits)) {
        app.serve_also(listener);
    }
    for task in workloads.iter().flat_map(|w| w.tasks(&app)) {
        app.run_also(task);
    }
    Ok(app)
}
