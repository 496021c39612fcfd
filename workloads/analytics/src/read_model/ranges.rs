//! The range read models in PostgreSQL (analytics migration `0003_ranges.sql`):
//! the sketch of each (hour, partition) and the exact unique users of each
//! (day, partition), offset-guarded like the hour rows, with the per-day sums
//! (all declared in [`super`], written by the engine's generated statements);
//! and the range reads of the query service, which the declarations do not
//! generate (sums over a range of hours, the day join, the streamed sketch
//! merge): workload SQL, read by column name.
//!
//! Written by [`super::pg::write_aggregates`] in the same transaction as the
//! hour rows, from the same aggregates (v2 records carry the sketch and the
//! day's count; a v1 record carries neither and writes nothing here).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use super::{count_columns, DAYS, DAY_TOTALS, PARTITION_DAYS, SKETCHES};
use crate::time::{DayStart, EpochMillis, DAY_MS};
use crate::wire::HourAggregate;
use crate::{HourCounts, HourStart, UserSketch};
use common::engine::pg::PgError;
use common::engine::store::{self, Row, Value};

/// Namespace of the per-day advisory locks (the hours' is `0x4e41`).
const DAY_LOCK_SPACE: i32 = 0x4e44;

/// Upserts the latest sketch of each (hour, partition); only a higher offset replaces one.
pub async fn write_sketches(tx: &impl store::Conn, aggs: &[HourAggregate]) -> Result<(), PgError> {
    let rows: Vec<Row> = aggs
        .iter()
        .filter_map(|a| {
            let sketch = a.sketch.as_ref()?;
            Some(
                Row::new()
                    .with("hour_start_ms", Value::BigInt(a.hour.start_ms()))
                    .with("partition", Value::Int(a.partition))
                    .with("sketch", Value::Bytes(sketch.to_vec()))
                    .with("input_offset", Value::BigInt(a.input_offset)),
            )
        })
        .collect();
    SKETCHES.upsert(tx, rows).await
}

/// One (day, partition) count from the aggregates: the one with the highest offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DayRow {
    unique_users: u64,
    input_offset: i64,
    watermark_ms: i64,
}

/// Per (day, partition), the day count of the aggregate with the highest input offset.
///
/// A partition's day count only grows with its offset, and every aggregate
/// of an hour of the day carries the day's count at that offset, so the
/// newest one is the day's count.
fn latest_days(aggs: &[HourAggregate]) -> BTreeMap<(DayStart, i32), DayRow> {
    let mut days: BTreeMap<(DayStart, i32), DayRow> = BTreeMap::new();
    for a in aggs {
        let Some(unique_users) = a.day_unique_users else { continue };
        let row = DayRow { unique_users, input_offset: a.input_offset, watermark_ms: a.watermark_ms };
        days.entry((a.hour.day(), a.partition))
            .and_modify(|cur| {
                if row.input_offset > cur.input_offset {
                    *cur = row;
                }
            })
            .or_insert(row);
    }
    days
}

/// Upserts the (day, partition) counts (offset-guarded) and re-sums the days
/// touched, under per-day advisory locks taken in day order after the hour
/// locks, so two materializers never deadlock and each sums what the other
/// committed. Safe to repeat.
pub async fn write_days(tx: &impl store::Conn, aggs: &[HourAggregate]) -> Result<(), PgError> {
    let latest = latest_days(aggs);
    if latest.is_empty() {
        return Ok(());
    }
    let mut days: Vec<DayStart> = latest.keys().map(|(d, _)| *d).collect();
    days.dedup(); // sorted: the map is ordered by day first
    let locks: Vec<i32> = days.iter().map(|d| i32::try_from(d.start_ms() / DAY_MS).unwrap_or(i32::MAX)).collect();
    store::table::lock_in_order(tx, DAY_LOCK_SPACE, &locks).await?;
    let rows: Vec<Row> = latest
        .iter()
        .map(|((day, partition), r)| {
            Row::new()
                .with("day_start_ms", Value::BigInt(day.start_ms()))
                .with("partition", Value::Int(*partition))
                .with("unique_users", Value::BigInt(i64::try_from(r.unique_users).unwrap_or(i64::MAX)))
                .with("input_offset", Value::BigInt(r.input_offset))
                .with("watermark_ms", Value::BigInt(r.watermark_ms))
        })
        .collect();
    PARTITION_DAYS.upsert(tx, rows).await?;
    let keys: Vec<Row> = days.iter().map(|d| day_key(*d)).collect();
    DAY_TOTALS.apply(&DAYS, tx, &keys).await
}

fn day_key(day: DayStart) -> Row {
    Row::new().with("day_start_ms", Value::BigInt(day.start_ms()))
}

/// The hour totals in `[from_ms, to_ms)`, by hour start.
static SELECT_HOUR_RANGE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT hour_start_ms, {} FROM hourly_aggregates WHERE hour_start_ms >= $1 AND hour_start_ms < $2",
        count_columns(str::to_owned, ", ")
    )
});

/// The day totals in `[from_ms, to_ms)` (day-aligned): the counts summed over
/// the day's hours, `day_users` the exact distinct users of the day.
/// Times are never negative (the API refuses them), so `/` floors.
static SELECT_DAY_RANGE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH h AS (
             SELECT hour_start_ms / {DAY_MS} * {DAY_MS} AS day_start_ms, {sums}
             FROM hourly_aggregates WHERE hour_start_ms >= $1 AND hour_start_ms < $2 GROUP BY 1),
         d AS (SELECT day_start_ms, unique_users AS day_users FROM daily_aggregates
               WHERE day_start_ms >= $1 AND day_start_ms < $2)
         SELECT day_start_ms, {columns}, coalesce(d.day_users, 0) AS day_users
         FROM h FULL JOIN d USING (day_start_ms)",
        sums = count_columns(|c| format!("sum({c})::bigint AS {c}"), ", "),
        columns = count_columns(|c| format!("coalesce(h.{c}, 0) AS {c}"), ", "),
    )
});

/// The sums over the hours of `[from_ms, to_ms)`, and the busiest hour's users.
static SELECT_RANGE_SUMS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {sums}, coalesce(max(unique_users), 0)::bigint AS busiest_hour_users
         FROM hourly_aggregates WHERE hour_start_ms >= $1 AND hour_start_ms < $2",
        sums = count_columns(|c| format!("coalesce(sum({c}), 0)::bigint AS {c}"), ", "),
    )
});

/// The counts of a range read's row, by column name.
fn counts_of(row: &tokio_postgres::Row) -> HourCounts {
    let values = crate::read_model::COUNT_FIELDS.map(|f| u64::try_from(row.get::<_, i64>(f.column)).unwrap_or(0));
    HourCounts::from_array(values)
}

/// The totals of every hour in `[from_ms, to_ms)` that has any, by hour start.
///
/// # Errors
/// [`PgError`] when PostgreSQL cannot answer.
pub async fn read_hours(
    client: &deadpool_postgres::Client,
    from_ms: EpochMillis,
    to_ms: EpochMillis,
) -> Result<BTreeMap<EpochMillis, HourCounts>, PgError> {
    let stmt = client.prepare_cached(SELECT_HOUR_RANGE.as_str()).await?;
    let rows = client.query(&stmt, &[&from_ms, &to_ms]).await?;
    Ok(rows.iter().map(|r| (r.get::<_, i64>("hour_start_ms"), counts_of(r))).collect())
}

/// The totals of every day in `[from_ms, to_ms)` (day-aligned) that has any,
/// by day start, unique users exact. One query.
///
/// # Errors
/// [`PgError`] when PostgreSQL cannot answer.
pub async fn read_days(
    client: &deadpool_postgres::Client,
    from_ms: EpochMillis,
    to_ms: EpochMillis,
) -> Result<BTreeMap<EpochMillis, HourCounts>, PgError> {
    let stmt = client.prepare_cached(SELECT_DAY_RANGE.as_str()).await?;
    let rows = client.query(&stmt, &[&from_ms, &to_ms]).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let day_users = u64::try_from(r.get::<_, i64>("day_users")).unwrap_or(0);
            (r.get::<_, i64>("day_start_ms"), HourCounts { unique_users: day_users, ..counts_of(r) })
        })
        .collect())
}

/// The exact sums over the hours of a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RangeSums {
    /// Clicks and impressions exact; `unique_users` is the sum of the hours'
    /// (an upper bound of the range's, exact for one hour).
    pub counts: HourCounts,
    /// The largest unique users of one hour in the range (a lower bound).
    pub busiest_hour_users: u64,
}

/// Sums the hours of `[from_ms, to_ms)`.
///
/// # Errors
/// [`PgError`] when PostgreSQL cannot answer.
pub async fn read_sums(
    client: &deadpool_postgres::Client,
    from_ms: EpochMillis,
    to_ms: EpochMillis,
) -> Result<RangeSums, PgError> {
    let stmt = client.prepare_cached(SELECT_RANGE_SUMS.as_str()).await?;
    let row = client.query_one(&stmt, &[&from_ms, &to_ms]).await?;
    Ok(RangeSums {
        counts: counts_of(&row),
        busiest_hour_users: u64::try_from(row.get::<_, i64>("busiest_hour_users")).unwrap_or(0),
    })
}

/// The exact distinct users of one day (0 if none were materialized).
///
/// # Errors
/// [`PgError`] when PostgreSQL cannot answer.
pub async fn read_day_users(client: &deadpool_postgres::Client, day: DayStart) -> Result<u64, PgError> {
    match DAYS.read(client, &day_key(day)).await? {
        Some(stored) => stored.row.count("unique_users"),
        None => Ok(0),
    }
}

/// Sketches fetched per round trip while merging a range: at most
/// 64 × 49 KB ≈ 3 MB of them are held at once, whatever the range.
pub const SKETCH_BATCH: i32 = 64;

/// The union sketch of every (hour, partition) in `[from_ms, to_ms)`,
/// streamed: the rows come through a portal [`SKETCH_BATCH`] at a time and
/// are folded into one accumulator (64 KB of registers), so the memory a
/// merge needs does not grow with the range. One read-only transaction.
///
/// # Errors
/// [`PgError::Corrupt`] for a stored sketch this build cannot read (the
/// materializer checked it on the way in, so a bug or a manual edit);
/// [`PgError`] when PostgreSQL cannot answer.
pub async fn merge_sketches(
    client: &mut deadpool_postgres::Client,
    from_ms: EpochMillis,
    to_ms: EpochMillis,
) -> Result<UserSketch, PgError> {
    let tx = client.build_transaction().read_only(true).start().await?;
    let stmt = tx
        .prepare_cached(
            "SELECT hour_start_ms, sketch FROM hourly_partition_sketches
             WHERE hour_start_ms >= $1 AND hour_start_ms < $2",
        )
        .await?;
    let portal = tx.bind(&stmt, &[&from_ms, &to_ms]).await?;
    let mut union = UserSketch::new();
    loop {
        let rows = tx.query_portal(&portal, SKETCH_BATCH).await?;
        for row in &rows {
            union.merge_bytes(row.get::<_, &[u8]>("sketch")).map_err(|e| {
                let hour = HourStart::from_aligned(row.get("hour_start_ms")).map(|h| h.to_string()).unwrap_or_default();
                PgError::Corrupt(format!("sketch of hour {hour}: {e}"))
            })?;
        }
        if rows.len() < SKETCH_BATCH as usize {
            break;
        }
    }
    tx.commit().await?;
    Ok(union)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::HOUR_MS;

    fn agg(hour: i64, p: i32, off: i64, day: Option<u64>) -> HourAggregate {
        HourAggregate {
            hour: HourStart::of(hour),
            partition: p,
            counts: HourCounts::default(),
            input_offset: off,
            watermark_ms: off,
            sketch: None,
            day_unique_users: day,
        }
    }

    #[test]
    fn the_newest_day_count_wins_over_any_hour_of_the_day() {
        let d0 = 20_000 * DAY_MS;
        let got = latest_days(&[
            agg(d0 + 3 * HOUR_MS, 0, 9, Some(9)),
            agg(d0 + 5 * HOUR_MS, 0, 12, Some(12)),
            agg(d0 + HOUR_MS, 0, 12, Some(12)),
            agg(d0 + 2 * HOUR_MS, 0, 20, None), // a v1 record says nothing of the day
            agg(d0 + 2 * HOUR_MS, 1, 4, Some(4)),
            agg(d0 + DAY_MS, 0, 30, Some(1)),
        ]);
        let summary: Vec<_> =
            got.iter().map(|((d, p), r)| ((d.start_ms() - d0) / DAY_MS, *p, r.unique_users, r.input_offset)).collect();
        assert_eq!(summary, vec![(0, 0, 12, 12), (0, 1, 4, 4), (1, 0, 1, 30)]);
    }
}
