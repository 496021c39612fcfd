//! The query service: the read side of the pipeline.
//!
//! ```text
//! engine/     read-through reader per workload: in-process copy → Redis (hot
//!             copy written by the materializer) → PostgreSQL, written back to
//!             Redis under a fill lease → the empty row; the routing table,
//!             edge checks, time limit and metrics of every route
//! ```
//!
//! The engine names no workload: a workload implements [`QueryRole`] (its
//! routes, usually over an [`engine::QueryWorkload`] reader) in its own crate
//! (`workloads/<name>/`), and the `platform` crate makes [`Workloads`] from
//! its one list.
//!
//! - [`config`]: flags and environment.
//! - [`engine`]: [`engine::QueryWorkload`], the reader and the HTTP routing.

pub mod config;
pub mod engine;
pub mod metrics;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use common::engine::http::{OpsRoutes, ServerLimits};
use common::engine::shutdown::CancellationToken;
use common::engine::store::cache::RedisStore;
use common::engine::workload::{Configured, Listed, Service, Workload, WorkloadList};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

pub use crate::config::Config;
pub use crate::engine::http::QueryApp;
use crate::engine::{Route, Stores};

/// A workload's role in the query service: its `GET` routes, reading `stores`
/// (usually through [`Stores::register`] of its [`engine::QueryWorkload`]).
pub trait QueryRole: Workload {
    fn routes(cfg: &Self::Config, stores: &Stores) -> Vec<Route>;

    /// Listeners the workload serves beside the HTTP API (its gRPC API, say),
    /// usually over `app`'s in-process [`QueryApp::handle`], so that every
    /// edge check and read is the HTTP one. None by default.
    fn listeners(
        cfg: &Self::Config,
        app: &QueryApp,
        limits: &common::engine::http::ListenerLimits,
    ) -> Vec<common::engine::http::Listener> {
        let _ = (cfg, app, limits);
        Vec::new()
    }
}

/// The query's view of a listed workload, its config parsed.
pub trait Registered: Listed {
    fn routes(&self, stores: &Stores) -> Vec<Route>;

    /// The workload's own listeners over the built `app` ([`QueryRole::listeners`]).
    fn listeners(
        &self,
        app: &QueryApp,
        limits: &common::engine::http::ListenerLimits,
    ) -> Vec<common::engine::http::Listener>;
}

impl<W: QueryRole> Registered for Configured<W> {
    fn routes(&self, stores: &Stores) -> Vec<Route> {
        W::routes(&self.config, stores)
    }

    fn listeners(
        &self,
        app: &QueryApp,
        limits: &common::engine::http::ListenerLimits,
    ) -> Vec<common::engine::http::Listener> {
        W::listeners(&self.config, app, limits)
    }
}

/// The workloads the query serves, in the platform's order.
pub struct Workloads(WorkloadList<dyn Registered>);

impl Default for Workloads {
    fn default() -> Self {
        Workloads(WorkloadList::new(Service::Query))
    }
}

impl Workloads {
    pub fn new() -> Self {
        Self::default()
    }

    /// Lists `W`: a compile error unless it implements [`QueryRole`].
    pub fn add<W: QueryRole>(self) -> Self {
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

/// Every route of `workloads`, reading `stores`, in the list's order.
pub fn routes(workloads: &[Box<dyn Registered>], stores: &Stores) -> Vec<Route> {
    workloads.iter().flat_map(|w| w.routes(stores)).collect()
}

/// Connects to Redis and PostgreSQL, migrating the read models: the
/// materializer writes them and applies the same migrations; the query applies
/// them too, so that started first it answers zeros instead of failing. It
/// never creates the processor's or the coordination tables.
///
/// # Errors
/// When either cannot be reached at startup.
pub async fn build(
    cfg: &Config,
    workloads: &[Box<dyn Registered>],
    metrics: PrometheusHandle,
) -> anyhow::Result<QueryApp> {
    let migrations = common::engine::pg::migrations_for(Service::Query, workloads.iter().map(|w| w.migrations()));
    let pool = common::engine::pg::connect_migrated(&cfg.pg, &migrations).await?;
    for w in workloads {
        w.after_migrate(&pool, Service::Query)
            .await
            .with_context(|| format!("preparing the tables of {}", w.name()))?;
    }
    let redis = RedisStore::connect(&cfg.redis).await.context("connecting to Redis")?;
    let cors = common::engine::edge::Cors::new(&cfg.cors)?;
    let edge = common::engine::edge::Edge::new(&cfg.edge, None).with_read_auth(&cfg.read_auth);
    let copies = cfg.bulk_copies().with_context(|| format!("opening {}", cfg.bulk_copies_dir))?;
    let app = app_from_parts(workloads, redis, pool, metrics, edge, cfg.reuse(), cfg.limits(), copies).with_cors(cors);
    let limits = common::engine::http::ListenerLimits::from_edge(&cfg.edge, cfg.telemetry.shutdown_timeout)?;
    for listener in workloads.iter().flat_map(|w| w.listeners(&app, &limits)) {
        app.serve_also(listener);
    }
    Ok(app)
}

/// Assembles the app from already connected stores (tests use it to point at a PostgreSQL that is down).
#[allow(clippy::too_many_arguments)] // the parts, each once: a struct of them would only be taken apart again
pub fn app_from_parts(
    workloads: &[Box<dyn Registered>],
    redis: RedisStore,
    pool: deadpool_postgres::Pool,
    metrics: PrometheusHandle,
    edge: common::engine::edge::Edge,
    reuse: engine::Reuse,
    limits: engine::Limits,
    bulk_copies: Option<Arc<common::engine::store::bulk_copy::CopiesDir>>,
) -> QueryApp {
    let stores = Stores::with_limits(pool, redis, reuse, limits).with_bulk_copies(bulk_copies);
    let routes = routes(workloads, &stores);
    let ready_stores = stores.clone();
    let ready: common::engine::http::ReadyCheck = Arc::new(move || {
        let stores = ready_stores.clone();
        Box::pin(async move { stores.ready().await })
    });
    QueryApp::new(routes, OpsRoutes { service: "query", metrics, ready }, edge, &stores)
}

/// Serves until `token` is cancelled, then drains in-flight requests.
pub async fn run(
    app: QueryApp,
    listener: TcpListener,
    limits: ServerLimits,
    token: CancellationToken,
    drain: Duration,
) -> anyhow::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "query service listening");
    let served = common::engine::http::spawn_listeners(app.take_listeners(), &token).await?;
    // Shared, not cloned per request (its clone and drop were a visible part of a cached answer's CPU).
    let handler_app = Arc::new(app.clone());
    let handler = move |req| {
        let app = handler_app.clone();
        async move { app.handle(req).await }
    };
    // Live streams never finish on their own: end them as the shutdown starts, so their connections drain.
    let end_streams = async {
        token.cancelled().await;
        app.end_streams();
    };
    tokio::join!(common::engine::http::serve(listener, handler, limits, token.clone(), drain), end_streams);
    app.shut_down(drain).await;
    for task in served {
        let _ = tokio::time::timeout(drain, task).await;
    }
    tracing::info!("query service stopped");
    Ok(())
}
