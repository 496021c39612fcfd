//! The query service: the read side of the pipeline.
//!
//! `GET /analytics?timestamp=<ms>` → the UTC hour of the timestamp → Redis
//! (hot copy written by the materializer) → on a miss PostgreSQL, written back
//! to Redis → on a miss in both, zeros.
//!
//! - [`config`]: flags and environment.
//! - `http`: routing and status codes.
//! - `reader`: the Redis / PostgreSQL read path.

pub mod config;
mod http;
pub mod metrics;
mod reader;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use common::engine::http::{OpsRoutes, ServerLimits};
use common::engine::pg::{migrations, Migration};
use common::engine::shutdown::CancellationToken;
use common::engine::store::cache::HourCache;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

pub use crate::config::Config;
pub use crate::http::QueryApp;
use crate::reader::HourReader;

/// The tables the query reads: the read models. The materializer writes them
/// and applies the same migration; the query applies it too, so that started
/// first it answers zeros instead of failing. It never creates the
/// processor's or the coordination tables.
pub const MIGRATIONS: &[Migration] = &[migrations::READ_MODELS];

/// Connects to Redis and PostgreSQL (migrating the read models).
///
/// # Errors
/// When either cannot be reached at startup.
pub async fn build(cfg: &Config, metrics: PrometheusHandle) -> anyhow::Result<QueryApp> {
    let pool = common::engine::pg::connect_migrated(&cfg.pg, MIGRATIONS).await?;
    let cache = HourCache::connect(&cfg.redis).await.context("connecting to Redis")?;
    Ok(app_from_parts(cache, pool, metrics, common::engine::edge::Edge::new(&cfg.edge, None), cfg.local_cache_ttl))
}

/// Assembles the app from already connected stores (tests use it to point at a PostgreSQL that is down).
pub fn app_from_parts(
    cache: HourCache,
    pool: deadpool_postgres::Pool,
    metrics: PrometheusHandle,
    edge: common::engine::edge::Edge,
    local_cache_ttl: Duration,
) -> QueryApp {
    let reader = HourReader::new(cache, pool, local_cache_ttl);
    let ready_reader = reader.clone();
    let ready: common::engine::http::ReadyCheck = Arc::new(move || {
        let r = ready_reader.clone();
        Box::pin(async move { r.ready().await })
    });
    QueryApp { reader, ops: OpsRoutes { service: "query", metrics, ready }, edge }
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
    let handler = move |req| {
        let app = app.clone();
        async move { app.handle(req).await }
    };
    common::engine::http::serve(listener, handler, limits, token, drain).await;
    tracing::info!("query service stopped");
    Ok(())
}
