//! PostgreSQL: a connection pool bound to the deployment's schema, and
//! versioned migrations applied at startup.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::engine::config::PgConfig;
use crate::engine::workload::Service;

/// One versioned schema change of one owner: the engine ([`ENGINE`]) or a
/// workload (its name). Versions are numbered per owner from 1, never
/// renumbered and never edited once released; `applied_migrations` records
/// each (owner, version) once. Each service applies the migrations of the
/// tables it uses (`applied_by`), so e.g. the query never creates the
/// processor's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    pub owner: &'static str,
    pub version: i32,
    pub name: &'static str,
    /// The services that use its tables, and so apply it at startup.
    pub applied_by: &'static [Service],
    /// The version it had in the one global sequence of `schema_migrations`
    /// that a schema migrated before versions were per owner records: found
    /// there, it is recorded as applied instead of run.
    pub replaces: Option<i32>,
    sql: &'static str,
}

impl Migration {
    pub const fn new(
        owner: &'static str,
        version: i32,
        name: &'static str,
        applied_by: &'static [Service],
        sql: &'static str,
    ) -> Self {
        Migration { owner, version, name, applied_by, replaces: None, sql }
    }

    /// The same, standing for version `global` of the former global sequence.
    pub const fn replacing(self, global: i32) -> Self {
        Migration { replaces: Some(global), ..self }
    }

    /// The SQL it runs (with `search_path` set to the deployment's schema).
    pub fn sql(&self) -> &'static str {
        self.sql
    }
}

/// The owner of the engine's own migrations ([`migrations::ALL`]).
pub const ENGINE: &str = "engine";

/// Tables of a workload's processor state: only the processor applies them.
pub const PROCESSOR_TABLES: &[Service] = &[Service::Processor];
/// A workload's read models: written by the materializer, read by the query,
/// which applies them too, so that started first it answers zeros instead of failing.
pub const READ_MODEL_TABLES: &[Service] = &[Service::Materializer, Service::Query];

/// The engine's migrations, by the tables they create and who uses them.
/// Each workload's own tables are in its crate (`Workload::MIGRATIONS`).
pub mod migrations {
    use super::{Migration, ENGINE};
    use crate::engine::workload::Service::{Command, Materializer, Processor, Query};

    /// The processor's state store: position and fencing epoch per partition.
    pub const PROCESSOR_STATE: Migration = Migration::new(
        ENGINE,
        1,
        "processor_state",
        &[Processor],
        include_str!("../../migrations/0001_processor_state.sql"),
    )
    .replacing(2);
    /// Partition leases and PostgreSQL-held consumer positions (processor, materializer).
    pub const COORDINATION: Migration = Migration::new(
        ENGINE,
        2,
        "coordination",
        &[Processor, Materializer],
        include_str!("../../migrations/0002_coordination.sql"),
    )
    .replacing(3);
    /// Settings the deployment agrees on (command, processor).
    pub const DEPLOYMENT_SETTINGS: Migration = Migration::new(
        ENGINE,
        3,
        "deployment_settings",
        &[Command, Processor],
        include_str!("../../migrations/0003_deployment_settings.sql"),
    )
    .replacing(4);
    /// The processor's counted client event ids.
    pub const PROCESSOR_EVENT_IDS: Migration = Migration::new(
        ENGINE,
        4,
        "processor_event_ids",
        &[Processor],
        include_str!("../../migrations/0004_processor_event_ids.sql"),
    )
    .replacing(5);
    /// Read-your-writes progress per events partition: materializer writes, query reads.
    pub const READ_PROGRESS: Migration = Migration::new(
        ENGINE,
        5,
        "read_progress",
        &[Materializer, Query],
        include_str!("../../migrations/0005_read_progress.sql"),
    )
    .replacing(10);
    /// The processor's outbox: each checkpoint's records until their Kafka transaction committed.
    pub const PROCESSOR_OUTBOX: Migration = Migration::new(
        ENGINE,
        6,
        "processor_outbox",
        &[Processor],
        include_str!("../../migrations/0006_processor_outbox.sql"),
    )
    .replacing(11);

    /// Bulk generations: the processor's record of the generations it stores and their reports.
    pub const BULK_GENERATIONS: Migration = Migration::new(
        ENGINE,
        7,
        "bulk_generations",
        &[Processor],
        include_str!("../../migrations/0007_bulk_generations.sql"),
    );
    /// Bulk generations' active pointer: the processor moves it, the query reads it.
    pub const BULK_ACTIVE: Migration = Migration::new(
        ENGINE,
        8,
        "bulk_active",
        &[Processor, Query],
        include_str!("../../migrations/0008_bulk_active.sql"),
    );
    /// Members' presence locks: a killed member's partitions move at the next heartbeat, not after its lease.
    pub const MEMBER_PRESENCE: Migration = Migration::new(
        ENGINE,
        9,
        "member_presence",
        &[Processor, Materializer],
        include_str!("../../migrations/0009_member_presence.sql"),
    );
    /// The pointer's lease: the generation replaced, when the new one is visible, and the lease it assumed.
    pub const BULK_ACTIVE_LEASE: Migration = Migration::new(
        ENGINE,
        10,
        "bulk_active_lease",
        &[Processor, Query],
        include_str!("../../migrations/0010_bulk_active_lease.sql"),
    );

    /// All of them, in version order.
    pub const ALL: &[Migration] = &[
        PROCESSOR_STATE,
        COORDINATION,
        DEPLOYMENT_SETTINGS,
        PROCESSOR_EVENT_IDS,
        READ_PROGRESS,
        PROCESSOR_OUTBOX,
        BULK_GENERATIONS,
        BULK_ACTIVE,
        MEMBER_PRESENCE,
        BULK_ACTIVE_LEASE,
    ];
}

/// The migrations `service` applies: the engine's, then each workload's of
/// `workloads` (each list numbered from 1 by its owner).
pub fn migrations_for<'a>(service: Service, workloads: impl IntoIterator<Item = &'a [Migration]>) -> Vec<Migration> {
    std::iter::once(migrations::ALL)
        .chain(workloads)
        .flatten()
        .filter(|m| m.applied_by.contains(&service))
        .copied()
        .collect()
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
    /// A lease group member's presence lock is still held by its previous
    /// session (the server has not seen it end yet): retried at the next heartbeat.
    #[error("presence lock still held: {0}")]
    PresenceHeld(String),
}

impl PgError {
    /// Transient failures (connection lost, server down, timeouts) are worth retrying.
    pub fn is_retryable(&self) -> bool {
        match self {
            PgError::Config(_) | PgError::Corrupt(_) => false,
            PgError::Pool(_) | PgError::PresenceHeld(_) => true,
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
/// order of owner (the engine first) and version. Safe to run from many
/// processes (and services with overlapping lists) at once: an advisory lock
/// serialises them, and `applied_migrations` records each (owner, version) once.
///
/// A schema migrated before versions were numbered per owner has a
/// `schema_migrations` table of global versions: a migration that
/// [`replaces`](Migration::replaces) one of those is recorded as applied
/// without running (that table is only read, never written).
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
         CREATE TABLE IF NOT EXISTS {schema}.applied_migrations (
             owner TEXT NOT NULL, version INT NOT NULL, name TEXT NOT NULL,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (owner, version))"
    ))
    .await?;
    let applied: Vec<(String, i32)> = tx
        .query(&format!("SELECT owner, version FROM {schema}.applied_migrations"), &[])
        .await?
        .iter()
        .map(|r| (r.get("owner"), r.get("version")))
        .collect();
    let legacy: Vec<i32> = match tx
        .query_one("SELECT to_regclass($1) IS NOT NULL AS present", &[&format!("{schema}.schema_migrations")])
        .await?
        .get("present")
    {
        true => tx
            .query(&format!("SELECT version FROM {schema}.schema_migrations"), &[])
            .await?
            .iter()
            .map(|r| r.get("version"))
            .collect(),
        false => Vec::new(),
    };
    let mut pending: Vec<&Migration> =
        migrations.iter().filter(|m| !applied.iter().any(|(o, v)| o == m.owner && *v == m.version)).collect();
    pending.sort_by_key(|m| (m.owner != ENGINE, m.owner, m.version));
    pending.dedup_by_key(|m| (m.owner, m.version));
    for Migration { owner, version, name, sql, replaces, .. } in pending {
        let done_before = replaces.is_some_and(|v| legacy.contains(&v));
        if !done_before {
            tx.batch_execute(&format!("SET LOCAL search_path = {schema}")).await?;
            tx.batch_execute(sql).await?;
        }
        tx.execute(
            &format!("INSERT INTO {schema}.applied_migrations (owner, version, name) VALUES ($1, $2, $3)"),
            &[owner, version, name],
        )
        .await?;
        tracing::info!(owner, version, name, schema, done_before, "applied migration");
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
        let (stored, set_by): (String, String) = (row.get("value"), row.get("set_by"));
        if &stored != ours {
            return Err(SettingMismatch { name: name.clone(), ours: ours.clone(), stored, set_by }.into());
        }
    }
    Ok(())
}

/// Agrees the horizon: how far back events are accepted, and when periods
/// close (the command and the processor).
///
/// # Errors
/// A [`SettingMismatch`], or PostgreSQL not answering.
pub async fn agree_horizon(
    pool: &Pool,
    service: &str,
    horizon: &crate::engine::horizon::Horizon,
) -> anyhow::Result<()> {
    let settings: Vec<(String, String)> =
        horizon.settings().into_iter().map(|(name, value)| (name.to_owned(), value)).collect();
    agree_settings(pool, service, &settings).await
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

/// Panics unless `migrations` are `owner`'s, numbered 1, 2, … in order: a
/// check for each owner's test of its list.
pub fn assert_numbered(owner: &str, migrations: &[Migration]) {
    let versions: Vec<i32> = migrations.iter().map(|m| m.version).collect();
    assert_eq!(versions, (1..=migrations.len() as i32).collect::<Vec<_>>(), "{owner}: versions 1, 2, … in order");
    assert!(migrations.iter().all(|m| m.owner == owner), "{owner}: every migration names its owner");
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
        assert_numbered(ENGINE, migrations::ALL);
    }

    #[test]
    fn each_service_applies_the_engine_tables_it_uses() {
        let names = |s| migrations_for(s, []).iter().map(|m| m.name).collect::<Vec<_>>();
        assert_eq!(names(Service::Command), ["deployment_settings"]);
        assert_eq!(names(Service::Query), ["read_progress", "bulk_active", "bulk_active_lease"]);
        assert_eq!(names(Service::Materializer), ["coordination", "read_progress", "member_presence"]);
        assert!(!names(Service::Processor).contains(&"read_progress"));
    }
}
