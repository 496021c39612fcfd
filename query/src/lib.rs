//! The query service: the read side of the pipeline.
//!
//! ```text
//! engine/     read-through reader per workload: in-process copy → Redis (hot
//!             copy written by the materializer) → PostgreSQL, written back to
//!             Redis under a fill lease → the empty row; the routing table,
//!             edge checks, time limit and metrics of every route
//! analytics   GET /analytics?timestamp=<ms>: the UTC hour's totals as CSV;
//!             GET /analytics/timeseries and /analytics/aggregate: ranges as JSON
//! increments  GET /increment/<uuid>: the key's exact sum as JSON, or 404
//! dashboard   GET /: the dashboard page, reading the analytics routes above
//! ```
//!
//! The engine names no workload; [`routes`] registers them, one line each.
//!
//! - [`config`]: flags and environment.
//! - [`engine`]: [`engine::QueryWorkload`], the reader and the HTTP routing.
//! - [`analytics`]: the hourly workload.
//! - [`dashboard`]: the page at `/`.

pub mod analytics;
pub mod config;
pub mod dashboard;
pub mod engine;
pub mod increments;
pub mod metrics;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use common::engine::http::{OpsRoutes, ServerLimits};
use common::engine::pg::{migrations, Migration};
use common::engine::shutdown::CancellationToken;
use common::engine::store::cache::RedisStore;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

pub use crate::config::Config;
pub use crate::engine::http::QueryApp;
use crate::engine::{Route, Stores};

/// Every workload the query serves, reading `stores`.
/// Adding a workload: one module implementing [`engine::QueryWorkload`] and one line here.
pub fn routes(stores: &Stores) -> Vec<Route> {
    [
        vec![dashboard::route()],
        stores.register(analytics::Analytics),
        analytics::range_routes(stores.pool.clone()),
        stores.register(increments::Increments),
    ]
    .concat()
}

/// The tables the query reads: the read models. The materializer writes them
/// and applies the same migration; the query applies it too, so that started
/// first it answers zeros instead of failing. It never creates the
/// processor's or the coordination tables.
pub const MIGRATIONS: &[Migration] =
    &[migrations::READ_MODELS, migrations::INCREMENTS, migrations::RANGES, migrations::READ_PROGRESS];

/// Connects to Redis and PostgreSQL (migrating the read models).
///
/// # Errors
/// When either cannot be reached at startup.
pub async fn build(cfg: &Config, metrics: PrometheusHandle) -> anyhow::Result<QueryApp> {
    // Analytics tables: one column per count of the typed list, added where missing.
    let pool = common::analytics::read_model::pg::connect_migrated(
        &cfg.pg,
        MIGRATIONS,
        common::analytics::read_model::pg::READ_MODEL_COUNT_TABLES,
    )
    .await?;
    let redis = RedisStore::connect(&cfg.redis).await.context("connecting to Redis")?;
    let cors = common::engine::edge::Cors::new(&cfg.cors)?;
    let edge = common::engine::edge::Edge::new(&cfg.edge, None).with_read_auth(&cfg.read_auth);
    Ok(app_from_parts(redis, pool, metrics, edge, cfg.local_cache_ttl, cfg.limits()).with_cors(cors))
}

/// Assembles the app from already connected stores (tests use it to point at a PostgreSQL that is down).
pub fn app_from_parts(
    redis: RedisStore,
    pool: deadpool_postgres::Pool,
    metrics: PrometheusHandle,
    edge: common::engine::edge::Edge,
    local_cache_ttl: Duration,
    limits: engine::Limits,
) -> QueryApp {
    let stores = Stores::with_limits(pool, redis, local_cache_ttl, limits);
    let routes = routes(&stores);
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
    let handler_app = app.clone();
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
    tracing::info!("query service stopped");
    Ok(())
}
