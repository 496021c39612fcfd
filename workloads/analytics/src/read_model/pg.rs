//! Hourly totals in PostgreSQL: a batch of aggregates written through the
//! declared tables ([`super::PARTITION_HOURS`], the rollup
//! [`super::HOUR_TOTALS`] into [`super::HOURS`], and the range tables of
//! [`super::ranges`]), and the hour read of both services. The engine
//! generates every statement, guards included.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

use super::{counts_row, hour_key, HourTotals, COUNT_FIELDS, HOURS, HOUR_TOTALS, PARTITION_HOURS};
use crate::wire::HourAggregate;
use crate::{HourCounts, HourStart};
use common::engine::pg::PgError;
use common::engine::store::{self, Row, Value};

/// Namespace of the per-hour advisory locks.
const HOUR_LOCK_SPACE: i32 = 0x4e41;

/// Keeps, per (hour, partition), only the aggregate with the highest input offset.
///
/// Equal offsets carry equal counts (the processor is deterministic), so which one is kept does not matter.
pub fn latest_per_key(aggs: impl IntoIterator<Item = HourAggregate>) -> Vec<HourAggregate> {
    let mut latest: BTreeMap<(HourStart, i32), HourAggregate> = BTreeMap::new();
    for a in aggs {
        match latest.entry((a.hour, a.partition)) {
            Entry::Vacant(slot) => {
                slot.insert(a);
            }
            Entry::Occupied(mut slot) if a.input_offset > slot.get().input_offset => {
                slot.insert(a);
            }
            Entry::Occupied(_) => {}
        }
    }
    latest.into_values().collect()
}

/// Applies a batch of aggregates in its own transaction and returns the
/// totals of every hour it touched; see [`write_aggregates`].
///
/// # Errors
/// [`PgError`]; nothing is written then.
pub async fn apply_aggregates(
    client: &mut deadpool_postgres::Object,
    aggs: &[HourAggregate],
) -> Result<Vec<(HourStart, HourTotals)>, PgError> {
    let tx = client.transaction().await?;
    let hours = write_aggregates(&tx, aggs).await?;
    let totals = store::read_many::<HourCounts>(&tx, &hours).await?;
    tx.commit().await?;
    Ok(totals)
}

/// The partition row an aggregate writes, by column name.
fn partition_row(a: &HourAggregate) -> Row {
    let mut row = counts_row(a.counts);
    row.set("hour_start_ms", Value::BigInt(a.hour.start_ms()));
    row.set("partition", Value::Int(a.partition));
    row.set("input_offset", Value::BigInt(a.input_offset));
    row.set("watermark_ms", Value::BigInt(a.watermark_ms));
    row
}

/// Applies a batch of aggregates within `tx` and returns every hour it
/// touched, in hour order.
///
/// Per-hour advisory locks (taken in hour order, so two materializers never
/// deadlock and each sums what the other committed), the offset-guarded
/// upsert of the partition rows (a replay is a no-op), then the hours' sums,
/// then the range read models ([`super::ranges`]: sketches and day totals,
/// under day locks). Safe to repeat: the same batch gives the same rows and versions.
///
/// # Errors
/// [`PgError`]; the caller rolls the transaction back.
pub async fn write_aggregates(tx: &impl store::Conn, aggs: &[HourAggregate]) -> Result<Vec<HourStart>, PgError> {
    let aggs = latest_per_key(aggs.iter().cloned());
    let mut hours: Vec<HourStart> = aggs.iter().map(|a| a.hour).collect();
    hours.sort_unstable();
    hours.dedup();
    let locks: Vec<i32> =
        hours.iter().map(|h| i32::try_from(h.start_ms() / crate::time::HOUR_MS).unwrap_or(i32::MAX)).collect();
    store::table::lock_in_order(tx, HOUR_LOCK_SPACE, &locks).await?;
    let rows: Vec<Row> = aggs.iter().map(partition_row).collect();
    PARTITION_HOURS.upsert(tx, rows).await?;
    let keys: Vec<Row> = hours.iter().map(|h| hour_key(*h)).collect();
    HOUR_TOTALS.apply(&HOURS, tx, &keys).await?;
    // The range read models, from the same aggregates (day locks after the hour locks).
    super::ranges::write_sketches(tx, &aggs).await?;
    super::ranges::write_days(tx, &aggs).await?;
    // Every touched hour, changed or not: after a crash between this commit
    // and the Redis write, the replay must still refresh Redis.
    Ok(hours)
}

/// The totals of one hour, if any aggregate of it was ever materialized.
///
/// # Errors
/// [`PgError`] when PostgreSQL cannot answer.
pub async fn read_hour(client: &deadpool_postgres::Client, hour: HourStart) -> Result<Option<HourTotals>, PgError> {
    store::read::<HourCounts>(client, &hour).await
}

/// Connects and applies `migrations` ([`common::engine::pg::connect_migrated`]),
/// then adds to `count_tables` the count columns they lack
/// ([`ensure_count_columns`]): the start-up of every service with analytics tables.
///
/// # Errors
/// As [`common::engine::pg::connect_migrated`], or PostgreSQL failing the columns.
pub async fn connect_migrated(
    cfg: &common::engine::config::PgConfig,
    migrations: &[common::engine::pg::Migration],
    count_tables: &[&str],
) -> anyhow::Result<deadpool_postgres::Pool> {
    use anyhow::Context;
    let pool = common::engine::pg::connect_migrated(cfg, migrations).await?;
    ensure_count_columns(&pool, count_tables).await.context("adding count columns")?;
    Ok(pool)
}

/// The tables that hold one column per value of [`COUNT_FIELDS`].
pub const PROCESSOR_COUNT_TABLES: &[&str] = &["processor_hours"];
/// The read-model tables that hold one column per value of [`COUNT_FIELDS`].
pub const READ_MODEL_COUNT_TABLES: &[&str] = &["hourly_partition_aggregates", "hourly_aggregates"];

/// Adds to `tables` the count columns [`COUNT_FIELDS`] has and they lack
/// (`BIGINT NOT NULL DEFAULT 0`): the columns come from the one typed list,
/// so a count added there needs no migration. Rows written before it read 0.
/// Run by each service after its migrations; a no-op (no lock taken) when
/// every column exists.
///
/// # Errors
/// [`PgError`] when PostgreSQL cannot answer.
pub async fn ensure_count_columns(pool: &deadpool_postgres::Pool, tables: &[&str]) -> Result<(), PgError> {
    let client = pool.get().await?;
    let tables: Vec<String> = tables.iter().map(|t| (*t).to_owned()).collect();
    let rows = client
        .query(
            "SELECT table_name::text AS table_name, column_name::text AS column_name FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name = ANY($1)",
            &[&tables],
        )
        .await?;
    let existing: std::collections::HashSet<(String, String)> =
        rows.iter().map(|r| (r.get("table_name"), r.get("column_name"))).collect();
    for table in &tables {
        for field in COUNT_FIELDS.iter().filter(|f| !existing.contains(&(table.clone(), f.column.to_owned()))) {
            tracing::info!(table, column = field.column, "adding a count column");
            client
                .execute(
                    &format!("ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {} BIGINT NOT NULL DEFAULT 0", field.column),
                    &[],
                )
                .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HourCounts;

    fn agg(h: i64, p: i32, off: i64, clicks: u64) -> HourAggregate {
        HourAggregate {
            hour: HourStart::of(h * 3_600_000),
            partition: p,
            counts: HourCounts { unique_users: 1, clicks, impressions: 0 },
            input_offset: off,
            watermark_ms: 0,
            sketch: None,
            day_unique_users: None,
        }
    }

    #[test]
    fn newest_offset_wins_per_key_whatever_the_order() {
        let got = latest_per_key([agg(1, 0, 5, 5), agg(1, 0, 9, 9), agg(1, 1, 2, 2), agg(1, 0, 7, 7), agg(2, 0, 1, 1)]);
        let summary: Vec<_> =
            got.iter().map(|a| (a.hour.start_ms() / 3_600_000, a.partition, a.input_offset)).collect();
        assert_eq!(summary, vec![(1, 0, 9), (1, 1, 2), (2, 0, 1)]);
    }
}
