//! The read model of the hourly workload: per-hour totals in PostgreSQL (the
//! record, kept for ever) and their copy in Redis (the hot cache, with a TTL).
//!
//! The materializer writes both, PostgreSQL first; the query service reads
//! Redis, then PostgreSQL, and writes back what it found. The engine's
//! [`VersionedCache`] keeps the Redis copy; this module declares the tables
//! (every read-model table is a [`VersionedTable`], whose statements the
//! engine generates: the offset-guarded partition rows, and the per-hour and
//! per-day totals, counter-versioned [`Rollup`]s of them) and gives the cache
//! its row ([`HourCounts`] as a [`CachedRow`], one hash per hour,
//! `<prefix>:hour:<hour_start_ms>` with fields `v`, `u`, `c`, `i`). [`pg`]
//! writes a batch through them; [`ranges`] holds the range reads, the
//! queries the declarations do not generate.

pub mod pg;
pub mod ranges;

use std::sync::LazyLock;

use super::{HourCounts, HourStart};
use common::engine::pg::PgError;
use common::engine::store::cache::VersionedCache;
use common::engine::store::{CachedRow, Column, ColumnType, Rollup, Row, Value, Version, Versioned, VersionedTable};

/// The totals of one hour with the version that orders them.
pub type HourTotals = Versioned<HourCounts>;

/// The Redis copy of the hourly totals.
pub type HourCache = VersionedCache<HourCounts>;

/// The totals of an hour no store holds: zeros at version 0.
pub const EMPTY: HourTotals = Versioned { row: HourCounts::ZERO, version: 0 };

pub use crate::counts::{COUNTS, COUNT_FIELDS};

/// The count columns of [`COUNT_FIELDS`], cached in Redis under their fields when `cached`.
fn count_columns_declared(cached: bool) -> Vec<Column> {
    COUNT_FIELDS
        .iter()
        .map(|f| {
            let column = Column::new(f.column, ColumnType::BigInt);
            if cached {
                column.cached_as(f.redis)
            } else {
                column
            }
        })
        .collect()
}

const HOUR: Column = Column::new("hour_start_ms", ColumnType::BigInt);
const DAY: Column = Column::new("day_start_ms", ColumnType::BigInt);
const PARTITION: Column = Column::new("partition", ColumnType::Int);
const WATERMARK: Column = Column::new("watermark_ms", ColumnType::BigInt);
const UNIQUE_USERS: Column = Column::new("unique_users", ColumnType::BigInt);

/// `hourly_partition_aggregates`: the latest counts of each (hour, events
/// partition), offset-versioned (a replayed aggregate is a no-op).
pub static PARTITION_HOURS: LazyLock<VersionedTable> = LazyLock::new(|| {
    let mut values = count_columns_declared(false);
    values.push(WATERMARK);
    VersionedTable::new("hourly_partition_aggregates", vec![HOUR, PARTITION], values, Version::Offset("input_offset"))
});

/// `hourly_aggregates`: one row per hour, the sum over partitions
/// ([`HOUR_TOTALS`]), counter-versioned; the row copied to Redis.
pub static HOURS: LazyLock<VersionedTable> = LazyLock::new(|| {
    VersionedTable::new("hourly_aggregates", vec![HOUR], count_columns_declared(true), Version::Counter("version"))
});

/// An hour's totals as the sum of its partition rows.
pub static HOUR_TOTALS: LazyLock<Rollup> = LazyLock::new(|| Rollup::new(&HOURS, &PARTITION_HOURS));

/// `hourly_partition_sketches`: the latest sketch of each (hour, events partition), offset-versioned.
pub static SKETCHES: LazyLock<VersionedTable> = LazyLock::new(|| {
    VersionedTable::new(
        "hourly_partition_sketches",
        vec![HOUR, PARTITION],
        vec![Column::new("sketch", ColumnType::Bytea)],
        Version::Offset("input_offset"),
    )
});

/// `daily_partition_aggregates`: the exact users of each (UTC day, events partition), offset-versioned.
pub static PARTITION_DAYS: LazyLock<VersionedTable> = LazyLock::new(|| {
    VersionedTable::new(
        "daily_partition_aggregates",
        vec![DAY, PARTITION],
        vec![UNIQUE_USERS, WATERMARK],
        Version::Offset("input_offset"),
    )
});

/// `daily_aggregates`: one row per UTC day, the sum over partitions ([`DAY_TOTALS`]), counter-versioned.
pub static DAYS: LazyLock<VersionedTable> = LazyLock::new(|| {
    VersionedTable::new("daily_aggregates", vec![DAY], vec![UNIQUE_USERS], Version::Counter("version"))
});

/// A day's exact users as the sum of its partition rows.
pub static DAY_TOTALS: LazyLock<Rollup> = LazyLock::new(|| Rollup::new(&DAYS, &PARTITION_DAYS));

/// The PostgreSQL count columns joined with `sep`, each formatted by `each`
/// (e.g. `|c| format!("sum({c})::bigint")`): the range reads, which the
/// declarations do not generate ([`ranges`]).
pub fn count_columns(each: impl Fn(&str) -> String, sep: &str) -> String {
    COUNT_FIELDS.iter().map(|f| each(f.column)).collect::<Vec<_>>().join(sep)
}

/// The counts of a row, by column name (any row holding every count column).
///
/// # Errors
/// [`PgError::Corrupt`] when a count is missing or negative.
pub fn counts_of(row: &Row) -> Result<HourCounts, PgError> {
    let mut values = [0u64; COUNTS];
    for (value, field) in values.iter_mut().zip(COUNT_FIELDS.iter()) {
        *value = row.count(field.column)?;
    }
    Ok(HourCounts::from_array(values))
}

/// The counts as a row of their columns.
pub fn counts_row(counts: HourCounts) -> Row {
    let mut row = Row::new();
    for (field, value) in COUNT_FIELDS.iter().zip(counts.to_array()) {
        row.set(field.column, Value::BigInt(i64::try_from(value).unwrap_or(i64::MAX)));
    }
    row
}

/// The key row of an hour.
pub fn hour_key(hour: HourStart) -> Row {
    Row::new().with(HOUR.name, Value::BigInt(hour.start_ms()))
}

impl CachedRow for HourCounts {
    type Id = HourStart;
    const KIND: &'static str = "hour";

    fn table() -> &'static VersionedTable {
        &HOURS
    }

    fn key(hour: &HourStart) -> Row {
        hour_key(*hour)
    }

    fn id(key: &Row) -> Result<HourStart, PgError> {
        let start = key.big_int(HOUR.name)?;
        HourStart::from_aligned(start).ok_or_else(|| PgError::Corrupt(format!("hour_start_ms {start} is not an hour")))
    }

    fn to_row(&self) -> Row {
        counts_row(*self)
    }

    fn from_row(row: &Row) -> Result<Self, PgError> {
        counts_of(row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_round_trip_through_the_hash_by_name() {
        let counts = HourCounts { unique_users: 1, clicks: 2, impressions: 3 };
        let hash = HOURS.to_cache(&counts.to_row()).unwrap();
        assert_eq!(hash, ["1", "2", "3"]);
        assert_eq!(HourCounts::from_row(&HOURS.from_cache(&hash).unwrap()).unwrap(), counts);
        let fields: Vec<&str> = HOURS.cached().filter_map(|c| c.cached_as).collect();
        assert_eq!(fields, ["u", "c", "i"]);
    }

    #[test]
    fn an_hour_keeps_its_redis_key() {
        assert_eq!(HourCounts::KIND, "hour");
        let key = HourCounts::key(&HourStart::of(7_200_123));
        assert_eq!(HOURS.cache_key(&key).unwrap(), "7200000");
        assert_eq!(HourCounts::id(&key).unwrap(), HourStart::of(7_200_000));
    }

    #[test]
    fn a_malformed_count_is_refused() {
        assert_eq!(HOURS.from_cache(&["1".into(), "x".into(), "3".into()]), None);
        assert_eq!(HOURS.from_cache(&["1".into(), "2".into()]), None);
        assert!(HourCounts::from_row(&Row::new().with("clicks", Value::BigInt(1))).is_err());
    }

    #[test]
    fn every_read_model_table_is_declared_with_its_rollups() {
        // Forces every declaration (each checks itself, and the rollups check their pair).
        for t in [&*PARTITION_HOURS, &*HOURS, &*SKETCHES, &*PARTITION_DAYS, &*DAYS] {
            assert!(t.upsert_sql().starts_with(&format!("INSERT INTO {}", t.name())));
        }
        assert!(HOUR_TOTALS.sql().contains("sum(hourly_partition_aggregates.clicks)::bigint"));
        assert!(DAY_TOTALS.sql().contains(
            "FROM daily_partition_aggregates WHERE daily_partition_aggregates.day_start_ms = ANY($1::bigint[])"
        ));
    }
}
