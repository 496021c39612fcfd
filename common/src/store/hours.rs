//! Hourly totals in PostgreSQL.

use std::collections::BTreeMap;

use super::HourTotals;
use crate::analytics::{HourCounts, HourStart};
use crate::avro::HourAggregate;
use crate::pg::PgError;

/// Namespace of the per-hour advisory locks.
const HOUR_LOCK_SPACE: i32 = 0x4e41;

/// Keeps, per (hour, partition), only the aggregate with the highest input offset.
///
/// Equal offsets carry equal counts (the processor is deterministic), so which one is kept does not matter.
pub fn latest_per_key(aggs: impl IntoIterator<Item = HourAggregate>) -> Vec<HourAggregate> {
    let mut latest: BTreeMap<(HourStart, i32), HourAggregate> = BTreeMap::new();
    for a in aggs {
        latest
            .entry((a.hour, a.partition))
            .and_modify(|cur| {
                if a.input_offset > cur.input_offset {
                    *cur = a;
                }
            })
            .or_insert(a);
    }
    latest.into_values().collect()
}

/// Applies a batch of aggregates and returns the resulting totals of every hour it touched.
///
/// One transaction: per-hour advisory locks (taken in hour order, so two
/// materializers never deadlock and each sums what the other committed), the
/// offset-guarded upsert of the partition rows (a replay is a no-op), then the
/// sums. Safe to repeat: the same batch gives the same rows and versions.
///
/// # Errors
/// [`PgError`]; nothing is written then.
pub async fn apply_aggregates(
    client: &mut deadpool_postgres::Object,
    aggs: &[HourAggregate],
) -> Result<Vec<(HourStart, HourTotals)>, PgError> {
    let aggs = latest_per_key(aggs.iter().copied());
    let mut hours: Vec<i64> = aggs.iter().map(|a| a.hour.start_ms()).collect();
    hours.sort_unstable();
    hours.dedup();
    let tx = client.transaction().await?;
    let lock = tx.prepare_cached("SELECT pg_advisory_xact_lock($1, $2)").await?;
    for h in &hours {
        let key = i32::try_from(h / crate::analytics::time::HOUR_MS).unwrap_or(i32::MAX);
        tx.execute(&lock, &[&HOUR_LOCK_SPACE, &key]).await?;
    }
    let col = |f: fn(&HourAggregate) -> i64| aggs.iter().map(f).collect::<Vec<i64>>();
    let partitions: Vec<i32> = aggs.iter().map(|a| a.partition).collect();
    tx.execute(
        "INSERT INTO hourly_partition_aggregates
             (hour_start_ms, partition, unique_users, clicks, impressions, input_offset, watermark_ms)
         SELECT * FROM unnest($1::bigint[], $2::int[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[])
         ON CONFLICT (hour_start_ms, partition) DO UPDATE SET
             unique_users = EXCLUDED.unique_users, clicks = EXCLUDED.clicks, impressions = EXCLUDED.impressions,
             input_offset = EXCLUDED.input_offset, watermark_ms = EXCLUDED.watermark_ms, updated_at = now()
         WHERE hourly_partition_aggregates.input_offset < EXCLUDED.input_offset",
        &[
            &col(|a| a.hour.start_ms()),
            &partitions,
            &col(|a| a.counts.unique_users as i64),
            &col(|a| a.counts.clicks as i64),
            &col(|a| a.counts.impressions as i64),
            &col(|a| a.input_offset),
            &col(|a| a.watermark_ms),
        ],
    )
    .await?;
    tx.execute(
        "INSERT INTO hourly_aggregates (hour_start_ms, unique_users, clicks, impressions, version)
         SELECT hour_start_ms, sum(unique_users)::bigint, sum(clicks)::bigint, sum(impressions)::bigint, 1
         FROM hourly_partition_aggregates WHERE hour_start_ms = ANY($1) GROUP BY hour_start_ms
         ON CONFLICT (hour_start_ms) DO UPDATE SET
             unique_users = EXCLUDED.unique_users, clicks = EXCLUDED.clicks, impressions = EXCLUDED.impressions,
             version = hourly_aggregates.version + 1, updated_at = now()
         WHERE (hourly_aggregates.unique_users, hourly_aggregates.clicks, hourly_aggregates.impressions)
               IS DISTINCT FROM (EXCLUDED.unique_users, EXCLUDED.clicks, EXCLUDED.impressions)",
        &[&hours],
    )
    .await?;
    // Read back all touched hours, changed or not: after a crash between this
    // commit and the Redis write, the replay must still refresh Redis.
    let rows = tx
        .query(
            "SELECT hour_start_ms, unique_users, clicks, impressions, version
             FROM hourly_aggregates WHERE hour_start_ms = ANY($1)",
            &[&hours],
        )
        .await?;
    tx.commit().await?;
    Ok(rows.iter().filter_map(row_to_totals).collect())
}

/// The totals of one hour, if any aggregate of it was ever materialized.
///
/// # Errors
/// [`PgError`] when PostgreSQL cannot answer.
pub async fn read_hour(client: &deadpool_postgres::Client, hour: HourStart) -> Result<Option<HourTotals>, PgError> {
    let stmt = client
        .prepare_cached(
            "SELECT hour_start_ms, unique_users, clicks, impressions, version
             FROM hourly_aggregates WHERE hour_start_ms = $1",
        )
        .await?;
    let row = client.query_opt(&stmt, &[&hour.start_ms()]).await?;
    Ok(row.as_ref().and_then(row_to_totals).map(|(_, t)| t))
}

/// Every hour whose totals changed within `window` (by PostgreSQL's clock).
///
/// # Errors
/// [`PgError`] when PostgreSQL cannot answer.
pub async fn changed_within(
    client: &deadpool_postgres::Client,
    window: std::time::Duration,
) -> Result<Vec<(HourStart, HourTotals)>, PgError> {
    let secs = window.as_secs_f64();
    let rows = client
        .query(
            "SELECT hour_start_ms, unique_users, clicks, impressions, version
             FROM hourly_aggregates WHERE updated_at > now() - make_interval(secs => $1)",
            &[&secs],
        )
        .await?;
    Ok(rows.iter().filter_map(row_to_totals).collect())
}

fn row_to_totals(row: &tokio_postgres::Row) -> Option<(HourStart, HourTotals)> {
    let hour = HourStart::from_aligned(row.get(0))?;
    let count = |i: usize| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
    Some((
        hour,
        HourTotals {
            counts: HourCounts { unique_users: count(1), clicks: count(2), impressions: count(3) },
            version: row.get(4),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agg(h: i64, p: i32, off: i64, clicks: u64) -> HourAggregate {
        HourAggregate {
            hour: HourStart::of(h * 3_600_000),
            partition: p,
            counts: HourCounts { unique_users: 1, clicks, impressions: 0 },
            input_offset: off,
            watermark_ms: 0,
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
