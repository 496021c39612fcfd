//! PostgreSQL: a connection pool bound to the deployment's schema, and
//! versioned migrations applied at startup.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::config::PgConfig;

/// Migrations, applied in order, each once, each in its own transaction.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "read_models", include_str!("../migrations/0001_read_models.sql")),
    (2, "processor_state", include_str!("../migrations/0002_processor_state.sql")),
    (3, "coordination", include_str!("../migrations/0003_coordination.sql")),
];

/// Why talking to PostgreSQL failed.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("invalid PostgreSQL configuration: {0}")]
    Config(String),
    #[error("no PostgreSQL connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("PostgreSQL: {0}")]
    Db(#[from] tokio_postgres::Error),
}

impl PgError {
    /// Transient failures (connection lost, server down, timeouts) are worth retrying.
    pub fn is_retryable(&self) -> bool {
        match self {
            PgError::Config(_) => false,
            PgError::Pool(_) => true,
            PgError::Db(e) => e.as_db_error().is_none_or(|db| {
                // Serialization failures, deadlocks, connection and resource errors.
                let code = db.code().code();
                code.starts_with("40") || code.starts_with("08") || code.starts_with("53") || code.starts_with("57")
            }),
        }
    }
}

/// Checks that a schema name is a plain identifier (it is spliced into SQL).
fn checked_schema(schema: &str) -> Result<&str, PgError> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && schema.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    ok.then_some(schema).ok_or_else(|| PgError::Config(format!("schema `{schema}` must match [a-z_][a-z0-9_]{{0,62}}")))
}

/// A pool whose connections use the configured schema and statement timeout.
///
/// # Errors
/// [`PgError::Config`] for a bad URL or schema name. Connecting is lazy.
pub fn pool(cfg: &PgConfig) -> Result<Pool, PgError> {
    let schema = checked_schema(&cfg.schema)?;
    let mut pg: tokio_postgres::Config = cfg.url.parse().map_err(|e| PgError::Config(format!("{e}")))?;
    let timeout_ms = cfg.timeout.as_millis();
    pg.options(format!("-c search_path={schema} -c statement_timeout={timeout_ms}"));
    pg.connect_timeout(cfg.timeout);
    pg.application_name("analytics");
    let mgr = Manager::from_config(pg, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Pool::builder(mgr)
        .max_size(cfg.pool_size.get() as usize)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(cfg.timeout))
        .create_timeout(Some(cfg.timeout))
        .recycle_timeout(Some(cfg.timeout))
        .build()
        .map_err(|e| PgError::Config(e.to_string()))
}

/// Creates the schema and applies missing migrations. Safe to run from many
/// processes at once: an advisory lock serialises them.
///
/// # Errors
/// When PostgreSQL is unreachable or a migration fails (it is rolled back).
pub async fn migrate(pool: &Pool, cfg: &PgConfig) -> Result<(), PgError> {
    let schema = checked_schema(&cfg.schema)?;
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtext('analytics-migrations'))", &[]).await?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
             version INT PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    ))
    .await?;
    let applied: Vec<i32> = tx
        .query(&format!("SELECT version FROM {schema}.schema_migrations"), &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tx.batch_execute(&format!("SET LOCAL search_path = {schema}")).await?;
        tx.batch_execute(sql).await?;
        tx.execute(
            &format!("INSERT INTO {schema}.schema_migrations (version, name) VALUES ($1, $2)"),
            &[version, name],
        )
        .await?;
        tracing::info!(version, name, schema, "applied migration");
    }
    tx.commit().await?;
    Ok(())
}

/// The pool of a service, with its schema migrated: the startup step every
/// service that uses PostgreSQL shares.
///
/// # Errors
/// A bad configuration, or PostgreSQL unreachable or refusing a migration.
pub async fn connect_migrated(cfg: &PgConfig) -> anyhow::Result<Pool> {
    use anyhow::Context;
    let pool = self::pool(cfg)?;
    migrate(&pool, cfg).await.context("migrating PostgreSQL")?;
    Ok(pool)
}

/// Answers whether PostgreSQL accepts a query right now (readiness).
pub async fn ping(pool: &Pool, limit: Duration) -> bool {
    let check = async {
        let client = pool.get().await.ok()?;
        client.simple_query("SELECT 1").await.ok()
    };
    matches!(tokio::time::timeout(limit, check).await, Ok(Some(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(checked_schema("analytics").is_ok());
        assert!(checked_schema("t_abc123").is_ok());
        assert!(checked_schema("a; DROP TABLE x").is_err());
        assert!(checked_schema("").is_err());
        assert!(checked_schema("1abc").is_err());
    }

    #[test]
    fn migrations_are_numbered_in_order() {
        let versions: Vec<i32> = MIGRATIONS.iter().map(|m| m.0).collect();
        assert_eq!(versions, (1..=MIGRATIONS.len() as i32).collect::<Vec<_>>());
    }
}
