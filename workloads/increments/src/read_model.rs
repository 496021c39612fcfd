//! The read model of the increments workload: one row per key in PostgreSQL
//! (`increments(key uuid, value numeric, …)`, the record, readable by anyone
//! with SQL) and its hot copy in Redis (`<prefix>:increment:<key>`, fields
//! `v` and `s`), written by the materializer and read by the query.
//!
//! A key lives in exactly one events partition, so the input offset of that
//! partition orders its sums: it is the row's version. A row only moves to a
//! higher offset, so replays are no-ops, and equal offsets carry equal sums.

use std::sync::LazyLock;

use super::{IncrementKey, IncrementSum};
use common::engine::pg::PgError;
use common::engine::store::cache::VersionedCache;
use common::engine::store::{CachedRow, Column, ColumnType, Conn, Row, Value, Version, Versioned, VersionedTable};

/// The exact sum of one key (0 only for a key no store holds, at version 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoredSum(pub i128);

/// A key's sum with the version (input offset) that orders its copies.
pub type SumRow = Versioned<StoredSum>;

/// The Redis copy of the sums.
pub type SumCache = VersionedCache<StoredSum>;

/// `increments (key UUID, value NUMERIC, partition INT, input_offset BIGINT,
/// updated_at)`: offset-versioned, the sum cached as field `s`.
pub static SUMS: LazyLock<VersionedTable> = LazyLock::new(|| {
    VersionedTable::new(
        "increments",
        vec![Column::new("key", ColumnType::Uuid)],
        vec![Column::new("value", ColumnType::Numeric).cached_as("s"), Column::new("partition", ColumnType::Int)],
        Version::Offset("input_offset"),
    )
});

impl CachedRow for StoredSum {
    type Id = IncrementKey;
    const KIND: &'static str = "increment";

    fn table() -> &'static VersionedTable {
        &SUMS
    }

    fn key(key: &IncrementKey) -> Row {
        Row::new().with("key", Value::Text(key.to_string()))
    }

    fn id(row: &Row) -> Result<IncrementKey, PgError> {
        let key = row.text("key")?;
        IncrementKey::parse_canonical(key).ok_or_else(|| PgError::Corrupt(format!("increments: key {key}")))
    }

    fn to_row(&self) -> Row {
        Row::new().with("value", Value::Text(self.0.to_string()))
    }

    fn from_row(row: &Row) -> Result<Self, PgError> {
        let value = row.text("value")?;
        value.parse().map(StoredSum).map_err(|_| PgError::Corrupt(format!("increments: value {value}")))
    }
}

/// Writes a batch of sums within `tx` through the engine's guarded upsert:
/// each key's row moves only to a higher input offset (of several sums of
/// one key, the newest is written). Returns every touched key, changed or
/// not, so a replay after a crash still refreshes Redis.
///
/// # Errors
/// [`PgError`]; the caller rolls the transaction back.
pub async fn write_sums(tx: &impl Conn, sums: &[IncrementSum]) -> Result<Vec<IncrementKey>, PgError> {
    let rows: Vec<Row> = sums
        .iter()
        .map(|s| {
            StoredSum::key(&s.key)
                .with("value", Value::Text(s.sum.to_string()))
                .with("partition", Value::Int(s.partition))
                .with("input_offset", Value::BigInt(s.input_offset))
        })
        .collect();
    SUMS.upsert(tx, rows).await?;
    let mut keys: Vec<IncrementKey> = sums.iter().map(|s| s.key).collect();
    keys.sort_unstable();
    keys.dedup();
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sum_beyond_i64_survives_the_cache_fields() {
        let big = StoredSum(1 << 70);
        let hash = SUMS.to_cache(&big.to_row()).unwrap();
        assert_eq!(hash, vec!["1180591620717411303424".to_owned()]);
        let row = SUMS.from_cache(&hash).unwrap();
        assert_eq!(StoredSum::from_row(&row).unwrap(), big);
        assert!(StoredSum::from_row(&SUMS.from_cache(&["x".into()]).unwrap()).is_err());
        assert_eq!(SUMS.from_cache(&[]), None);
    }

    #[test]
    fn a_key_is_its_uuid_in_the_row_and_the_redis_key() {
        let key = IncrementKey::from_uuid(uuid::Uuid::from_u128(7));
        let row = StoredSum::key(&key);
        assert_eq!(StoredSum::id(&row).unwrap(), key);
        assert_eq!(SUMS.cache_key(&row).unwrap(), key.to_string());
    }
}
