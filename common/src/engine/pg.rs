//! PostgreSQL: a connection pool bound to the deployment's schema, and
//! versioned migrations applied at startup.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::engine::config::PgConfig;

/// One versioned schema change. Versions are global to the schema (one
/// `schema_migrations` table), never renumbered and never edited once
/// released; each service applies the ones of the tables it uses (its
/// `MIGRATIONS` list), so e.g. the query never creates the processor's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    sql: &'static str,
}

/// Every migration, by the tables it creates and who uses them.
pub mod migrations {
    use super::Migration;

    /// Read models: written by the materializer, read by the query.
    pub const READ_MODELS: Migration =
        Migration { version: 1, name: "read_models", sql: include_str!("../../migrations/0001_read_models.sql") };
    /// The processor's state store.
    pub const PROCESSOR_STATE: Migration = Migration {
        version: 2,
        name: "processor_state",
        sql: include_str!("../../migrations/0002_processor_state.sql"),
    };
    /// Partition leases and PostgreSQL-held consumer positions (processor, materializer).
    pub const COORDINATION: Migration =
        Migration { version: 3, name: "coordination", sql: include_str!("../../migrations/0003_coordination.sql") };
    /// Settings the deployment agrees on (command, processor).
    pub const DEPLOYMENT_SETTINGS: Migration = Migration {
        version: 4,
        name: "deployment_settings",
        sql: include_str!("../../migrations/0004_deployment_settings.sql"),
    };
    /// The processor's counted client event ids.
    pub const PROCESSOR_EVENT_IDS: Migration = Migration {
        version: 5,
        name: "processor_event_ids",
        sql: include_str!("../../migrations/0005_processor_event_ids.sql"),
    };

    /// The increments workload's processor state: per-key sums.
    pub const PROCESSOR_INCREMENTS: Migration = Migration {
        version: 6,
        name: "processor_increments",
        sql: include_str!("../../migrations/0006_processor_increments.sql"),
    };
    /// The increments read model: materializer writes, query reads.
    pub const INCREMENTS: Migration =
        Migration { version: 7, name: "increments", sql: include_str!("../../migrations/0007_increments.sql") };
    /// The analytics range read models (hourly sketches, day totals): materializer writes, query reads.
    pub const RANGES: Migration =
        Migration { version: 8, name: "ranges", sql: include_str!("../../migrations/0008_ranges.sql") };
    /// The analytics processor's day user sets.
    pub const PROCESSOR_DAYS: Migration =
        Migration { version: 9, name: "processor_days", sql: include_str!("../../migrations/0009_processor_days.sql") };
    /// Read-your-writes progress per events partition: materializer writes, query reads.
    pub const READ_PROGRESS: Migration =
        Migration { version: 10, name: "read_progress", sql: include_str!("../../migrations/0010_read_progress.sql") };
    /// The processor's outbox: each checkpoint's records until their Kafka transaction committed.
    pub const PROCESSOR_OUTBOX: Migration = Migration {
        version: 11,
        name: "processor_outbox",
        sql: include_str!("../../migrations/0011_processor_outbox.sql"),
    };

    /// All of them, in version order.
    pub const ALL: &[Migration] = &[
        READ_MODELS,
        PROCESSOR_STATE,
        COORDINATION,
        DEPLOYMENT_SETTINGS,
        PROCESSOR_EVENT_IDS,
        PROCESSOR_INCREMENTS,
        INCREMENTS,
        RANGES,
        PROCESSOR_DAYS,
        READ_PROGRESS,
        PROCESSOR_OUTBOX,
    ];
}

/// Why talking to PostgreSQL failed.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("invalid PostgreSQL configuration: {0}")]
    Config(String),
    #[error("no PostgreSQL connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// The server's message when it sent one (tokio-postgres' own text is only "db error").
    #[error("PostgreSQL: {}", .0.as_db_error().map_or_else(|| .0.to_string(), |db| format!("{}: {}", db.code().code(), db.message())))]
    Db(#[from] tokio_postgres::Error),
    /// A stored row this build cannot read (a bug or a manual edit): retrying cannot help.
    #[error("unreadable row: {0}")]
    Corrupt(String),
}

impl PgError {
    /// Transient failures (connection lost, server down, timeouts) are worth retrying.
    pub fn is_retryable(&self) -> bool {
        match self {
            PgError::Config(_) | PgError::Corrupt(_) => false,
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

/// Creates the schema and applies those of `migrations` not applied yet, in
/// version order. Safe to run from many processes (and services with
/// overlapping lists) at once: an advisory lock serialises them, and
/// `schema_migrations` records each version once.
///
/// # Errors
/// When PostgreSQL is unreachable or a migration fails (it is rolled back).
pub async fn migrate(pool: &Pool, cfg: &PgConfig, migrations: &[Migration]) -> Result<(), PgError> {
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
    let mut pending: Vec<&Migration> = migrations.iter().filter(|m| !applied.contains(&m.version)).collect();
    pending.sort_by_key(|m| m.version);
    pending.dedup_by_key(|m| m.version);
    for Migration { version, name, sql } in pending {
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

/// The pool of a service, with the tables it uses migrated: the startup step
/// every service that uses PostgreSQL shares.
///
/// # Errors
/// A bad configuration, or PostgreSQL unreachable or refusing a migration.
pub async fn connect_migrated(cfg: &PgConfig, migrations: &[Migration]) -> anyhow::Result<Pool> {
    use anyhow::Context;
    let pool = self::pool(cfg)?;
    migrate(&pool, cfg, migrations).await.context("migrating PostgreSQL")?;
    Ok(pool)
}

/// A setting this service holds differs from the one stored for the deployment.
#[derive(Debug, thiserror::Error)]
#[error(
    "setting `{name}` is {ours} here but {stored} for this deployment (stored by {set_by}); every service must \
     run with the same value: fix this service's configuration, or change the stored value deliberately \
     (UPDATE deployment_settings) with every service stopped"
)]
pub struct SettingMismatch {
    pub name: String,
    pub ours: String,
    pub stored: String,
    pub set_by: String,
}

/// Stores each setting if the deployment has none yet, then checks that the
/// stored value equals ours. Atomic per setting: of two services starting at
/// once with different values, one wins and the other refuses.
///
/// # Errors
/// [`SettingMismatch`] on a difference; PostgreSQL errors otherwise.
pub async fn agree_settings(pool: &Pool, service: &str, settings: &[(String, String)]) -> anyhow::Result<()> {
    let client = pool.get().await?;
    for (name, ours) in settings {
        client
            .execute(
                "INSERT INTO deployment_settings (name, value, set_by) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
                &[name, ours, &service],
            )
            .await?;
        let row = client.query_one("SELECT value, set_by FROM deployment_settings WHERE name = $1", &[name]).await?;
        let (stored, set_by): (String, String) = (row.get(0), row.get(1));
        if &stored != ours {
            return Err(SettingMismatch { name: name.clone(), ours: ours.clone(), stored, set_by }.into());
        }
    }
    Ok(())
}

/// Agrees the deployment-wide settings a service depends on: the horizon,
/// and the partition count of the events topic (see [`agree_partitions`]).
/// Returns that partition count.
///
/// # Errors
/// A [`SettingMismatch`], or the broker or PostgreSQL not answering.
pub async fn agree_deployment(
    pool: &Pool,
    service: &str,
    kafka: &crate::engine::config::KafkaConfig,
    events: &crate::engine::config::EventsTopicConfig,
    horizon: &crate::analytics::Horizon,
) -> anyhow::Result<i32> {
    agree_horizon(pool, service, horizon).await?;
    agree_partitions(pool, service, kafka, events).await
}

/// Agrees the horizon: how far back events are accepted, and when hours close.
///
/// # Errors
/// A [`SettingMismatch`], or PostgreSQL not answering.
pub async fn agree_horizon(pool: &Pool, service: &str, horizon: &crate::analytics::Horizon) -> anyhow::Result<()> {
    let settings: Vec<(String, String)> =
        horizon.settings().into_iter().map(|(name, value)| (name.to_owned(), value)).collect();
    agree_settings(pool, service, &settings).await
}

/// Agrees the partition count of the events topic as the broker reports it:
/// users are routed by key modulo that count, and adding partitions would
/// split a user's events over two partitions and count them as two users.
///
/// # Errors
/// A [`SettingMismatch`], or the broker or PostgreSQL not answering.
pub async fn agree_partitions(
    pool: &Pool,
    service: &str,
    kafka: &crate::engine::config::KafkaConfig,
    events: &crate::engine::config::EventsTopicConfig,
) -> anyhow::Result<i32> {
    agree_topic_partitions(pool, service, kafka, &events.events_topic).await
}

/// Agrees the partition count of any keyed topic as the broker reports it
/// (stored as the setting `partitions.<topic>`): records are routed by key
/// modulo that count, so it must never change under a deployment.
///
/// # Errors
/// A [`SettingMismatch`], or the broker or PostgreSQL not answering.
pub async fn agree_topic_partitions(
    pool: &Pool,
    service: &str,
    kafka: &crate::engine::config::KafkaConfig,
    topic: &str,
) -> anyhow::Result<i32> {
    use anyhow::Context;
    let partitions = crate::engine::kafka::partition_count(kafka, topic)
        .await
        .with_context(|| format!("reading the partition count of {topic}"))?;
    let setting = (format!("partitions.{topic}"), partitions.to_string());
    agree_settings(pool, service, &[setting]).await?;
    Ok(partitions)
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
        let versions: Vec<i32> = migrations::ALL.iter().map(|m| m.version).collect();
        assert_eq!(versions, (1..=migrations::ALL.len() as i32).collect::<Vec<_>>());
    }
}
