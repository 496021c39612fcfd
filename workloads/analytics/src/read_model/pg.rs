//! Hourly totals in PostgreSQL: the offset-guarded partition rows, their
//! per-hour sums with a version, and the reads of both services.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::sync::LazyLock;

use super::{count_columns, count_values, counts_from_values, HourTotals, COUNTS, COUNT_FIELDS, VERSION_COLUMN};
use crate::wire::HourAggregate;
use crate::{HourCounts, HourStart};
use common::engine::pg::PgError;
use common::engine::store::{ChangedPage, Versioned};

/// Namespace of the per-hour advisory locks.
const HOUR_LOCK_SPACE: i32 = 0x4e41;

/// The offset-guarded upsert of partition rows; parameters: hours, partitions,
/// one array per count (in the order of [`COUNT_FIELDS`]), offsets, watermarks.
static UPSERT_PARTITIONS: LazyLock<String> = LazyLock::new(|| {
    let arrays: String = (0..COUNTS).map(|k| format!("${}::bigint[], ", k + 3)).collect();
    format!(
        "INSERT INTO hourly_partition_aggregates
             (hour_start_ms, partition, {columns}, input_offset, watermark_ms)
         SELECT * FROM unnest($1::bigint[], $2::int[], {arrays}${offset}::bigint[], ${watermark}::bigint[])
         ON CONFLICT (hour_start_ms, partition) DO UPDATE SET
             {set}, input_offset = EXCLUDED.input_offset, watermark_ms = EXCLUDED.watermark_ms, updated_at = now()
         WHERE hourly_partition_aggregates.input_offset < EXCLUDED.input_offset",
        columns = count_columns(str::to_owned, ", "),
        offset = COUNTS + 3,
        watermark = COUNTS + 4,
        set = count_columns(|c| format!("{c} = EXCLUDED.{c}"), ", "),
    )
});

/// Sums the partition rows of the hours `$1` into their totals, bumping the
/// version only when a count changed.
static SUM_HOURS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO hourly_aggregates (hour_start_ms, {columns}, {version})
         SELECT hour_start_ms, {sums}, 1
         FROM hourly_partition_aggregates WHERE hour_start_ms = ANY($1) GROUP BY hour_start_ms
         ON CONFLICT (hour_start_ms) DO UPDATE SET
             {set}, {version} = hourly_aggregates.{version} + 1, updated_at = now()
         WHERE ({current}) IS DISTINCT FROM ({excluded})",
        columns = count_columns(str::to_owned, ", "),
        version = VERSION_COLUMN,
        sums = count_columns(|c| format!("sum({c})::bigint"), ", "),
        set = count_columns(|c| format!("{c} = EXCLUDED.{c}"), ", "),
        current = count_columns(|c| format!("hourly_aggregates.{c}"), ", "),
        excluded = count_columns(|c| format!("EXCLUDED.{c}"), ", "),
    )
});

/// The totals rows, to be followed by a `WHERE` clause; read with [`row_to_totals`].
static SELECT_HOURS: LazyLock<String> = LazyLock::new(|| {
    format!("SELECT hour_start_ms, {}, {} FROM hourly_aggregates", count_columns(str::to_owned, ", "), VERSION_COLUMN)
});

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

/// Applies a batch of aggregates in its own transaction; see [`write_aggregates`].
///
/// # Errors
/// [`PgError`]; nothing is written then.
pub async fn apply_aggregates(
    client: &mut deadpool_postgres::Object,
    aggs: &[HourAggregate],
) -> Result<Vec<(HourStart, HourTotals)>, PgError> {
    let tx = client.transaction().await?;
    let totals = write_aggregates(&tx, aggs).await?;
    tx.commit().await?;
    Ok(totals)
}

/// Applies a batch of aggregates within `tx` and returns the resulting totals
/// of every hour it touched.
///
/// Per-hour advisory locks (taken in hour order, so two materializers never
/// deadlock and each sums what the other committed), the offset-guarded
/// upsert of the partition rows (a replay is a no-op), then the sums, then
/// the range read models ([`super::ranges`]: sketches and day totals, under
/// day locks). Safe to repeat: the same batch gives the same rows and versions.
///
/// # Errors
/// [`PgError`]; the caller rolls the transaction back.
pub async fn write_aggregates(
    tx: &deadpool_postgres::Transaction<'_>,
    aggs: &[HourAggregate],
) -> Result<Vec<(HourStart, HourTotals)>, PgError> {
    let aggs = latest_per_key(aggs.iter().cloned());
    let mut hours: Vec<i64> = aggs.iter().map(|a| a.hour.start_ms()).collect();
    hours.sort_unstable();
    hours.dedup();
    let lock = tx.prepare_cached("SELECT pg_advisory_xact_lock($1, $2)").await?;
    for h in &hours {
        let key = i32::try_from(h / crate::time::HOUR_MS).unwrap_or(i32::MAX);
        tx.execute(&lock, &[&HOUR_LOCK_SPACE, &key]).await?;
    }
    let col = |f: fn(&HourAggregate) -> i64| aggs.iter().map(f).collect::<Vec<i64>>();
    let partitions: Vec<i32> = aggs.iter().map(|a| a.partition).collect();
    let counts: Vec<Vec<i64>> =
        (0..COUNTS).map(|k| aggs.iter().map(|a| count_values(a.counts)[k] as i64).collect()).collect();
    let (hour_starts, offsets, watermarks) =
        (col(|a| a.hour.start_ms()), col(|a| a.input_offset), col(|a| a.watermark_ms));
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&hour_starts, &partitions];
    params.extend(counts.iter().map(|c| c as &(dyn tokio_postgres::types::ToSql + Sync)));
    params.extend([&offsets as &(dyn tokio_postgres::types::ToSql + Sync), &watermarks]);
    tx.execute(UPSERT_PARTITIONS.as_str(), &params).await?;
    tx.execute(SUM_HOURS.as_str(), &[&hours]).await?;
    // The range read models, from the same aggregates (day locks after the hour locks).
    super::ranges::write_sketches(tx, &aggs).await?;
    super::ranges::write_days(tx, &aggs).await?;
    // Read back all touched hours, changed or not: after a crash between this
    // commit and the Redis write, the replay must still refresh Redis.
    let rows = tx.query(&format!("{} WHERE hour_start_ms = ANY($1)", *SELECT_HOURS), &[&hours]).await?;
    Ok(rows.iter().filter_map(row_to_totals).collect())
}

/// The totals of one hour, if any aggregate of it was ever materialized.
///
/// # Errors
/// [`PgError`] when PostgreSQL cannot answer.
pub async fn read_hour(client: &deadpool_postgres::Client, hour: HourStart) -> Result<Option<HourTotals>, PgError> {
    let stmt = client.prepare_cached(&format!("{} WHERE hour_start_ms = $1", *SELECT_HOURS)).await?;
    let row = client.query_opt(&stmt, &[&hour.start_ms()]).await?;
    Ok(row.as_ref().and_then(row_to_totals).map(|(_, t)| t))
}

/// One page of `hourly_aggregates` in hour order for the materializer's
/// catch-up: at most `limit` hours after `after` (from the first when
/// `None`), keeping those whose totals changed since `since` (PostgreSQL's clock).
///
/// # Errors
/// [`PgError`] when PostgreSQL cannot answer.
pub async fn changed_page(
    client: &deadpool_postgres::Client,
    since: std::time::SystemTime,
    after: Option<HourStart>,
    limit: i64,
) -> Result<ChangedPage<HourCounts>, PgError> {
    let after = after.map_or(i64::MIN, HourStart::start_ms);
    let stmt = client
        .prepare_cached(&format!(
            "SELECT hour_start_ms, {}, {}, updated_at >= $1 AS changed FROM hourly_aggregates
             WHERE hour_start_ms > $2 ORDER BY hour_start_ms LIMIT $3",
            count_columns(str::to_owned, ", "),
            VERSION_COLUMN
        ))
        .await?;
    let rows = client.query(&stmt, &[&since, &after, &limit]).await?;
    let mut page = ChangedPage { changed: Vec::new(), scanned: rows.len(), last: None };
    for row in &rows {
        let Some((hour, totals)) = row_to_totals(row) else { continue };
        if row.get::<_, bool>("changed") {
            page.changed.push((hour, totals));
        }
        page.last = Some(hour);
    }
    Ok(page)
}

fn row_to_totals(row: &tokio_postgres::Row) -> Option<(HourStart, HourTotals)> {
    let hour = HourStart::from_aligned(row.get("hour_start_ms"))?;
    let values = COUNT_FIELDS.map(|f| u64::try_from(row.get::<_, i64>(f.column)).unwrap_or(0));
    Some((hour, Versioned { row: counts_from_values(values), version: row.get(VERSION_COLUMN) }))
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
            "SELECT table_name::text, column_name::text FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name = ANY($1)",
            &[&tables],
        )
        .await?;
    let existing: std::collections::HashSet<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
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
