//! The read model of the increments workload: one row per key in PostgreSQL
//! (`increments(key uuid, value numeric, …)`, the record, readable by anyone
//! with SQL) and its hot copy in Redis (`<prefix>:increment:<key>`, fields
//! `v` and `s`), written by the materializer and read by the query.
//!
//! A key lives in exactly one events partition, so the input offset of that
//! partition orders its sums: it is the row's version. A row only moves to a
//! higher offset, so replays are no-ops, and equal offsets carry equal sums.

use std::collections::BTreeMap;

use super::{IncrementKey, IncrementSum};
use common::engine::pg::PgError;
use common::engine::store::cache::VersionedCache;
use common::engine::store::{CachedRow, ChangedPage, Versioned};

/// The exact sum of one key (0 only for a key no store holds, at version 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoredSum(pub i128);

/// A key's sum with the version (input offset) that orders its copies.
pub type SumRow = Versioned<StoredSum>;

/// The Redis copy of the sums.
pub type SumCache = VersionedCache<StoredSum>;

impl CachedRow for StoredSum {
    type Id = IncrementKey;
    const KIND: &'static str = "increment";
    const FIELDS: &'static [&'static str] = &["s"];

    fn id_to_key(key: &IncrementKey) -> String {
        key.to_string()
    }

    fn to_values(&self) -> Vec<String> {
        vec![self.0.to_string()]
    }

    fn from_values(values: &[String]) -> Option<Self> {
        match values {
            [sum] => sum.parse().ok().map(StoredSum),
            _ => None,
        }
    }
}

/// Keeps, per key, only the sum with the highest input offset.
pub fn latest_per_key(sums: impl IntoIterator<Item = IncrementSum>) -> Vec<IncrementSum> {
    let mut latest: BTreeMap<IncrementKey, IncrementSum> = BTreeMap::new();
    for s in sums {
        latest
            .entry(s.key)
            .and_modify(|cur| *cur = if s.input_offset > cur.input_offset { s } else { *cur })
            .or_insert(s);
    }
    latest.into_values().collect()
}

const SELECT: &str = "SELECT key::text AS key, value::text AS value, input_offset FROM increments";

fn row_to_sum(row: &tokio_postgres::Row) -> Result<(IncrementKey, SumRow), PgError> {
    let (key, value): (&str, &str) = (row.get("key"), row.get("value"));
    match (IncrementKey::parse_canonical(key), value.parse::<i128>()) {
        (Some(key), Ok(sum)) => Ok((key, Versioned { row: StoredSum(sum), version: row.get("input_offset") })),
        _ => Err(PgError::Corrupt(format!("increments: key {key}, value {value}"))),
    }
}

/// Writes a batch of sums within `tx`: each key's row moves only to a higher
/// input offset. Returns every touched key's row as stored after the write,
/// changed or not, so a replay after a crash still refreshes Redis. Keys are
/// written in key order, so concurrent writers never deadlock.
///
/// # Errors
/// [`PgError`]; the caller rolls the transaction back.
pub async fn write_sums(
    tx: &deadpool_postgres::Transaction<'_>,
    sums: &[IncrementSum],
) -> Result<Vec<(IncrementKey, SumRow)>, PgError> {
    let sums = latest_per_key(sums.iter().copied());
    let keys: Vec<String> = sums.iter().map(|s| s.key.to_string()).collect();
    let values: Vec<String> = sums.iter().map(|s| s.sum.to_string()).collect();
    let partitions: Vec<i32> = sums.iter().map(|s| s.partition).collect();
    let offsets: Vec<i64> = sums.iter().map(|s| s.input_offset).collect();
    tx.execute(
        "INSERT INTO increments (key, value, partition, input_offset)
         SELECT k::uuid, v::numeric, p, o FROM unnest($1::text[], $2::text[], $3::int[], $4::bigint[]) AS t(k, v, p, o)
         ON CONFLICT (key) DO UPDATE SET
             value = EXCLUDED.value, partition = EXCLUDED.partition,
             input_offset = EXCLUDED.input_offset, updated_at = now()
         WHERE increments.input_offset < EXCLUDED.input_offset",
        &[&keys, &values, &partitions, &offsets],
    )
    .await?;
    let rows = tx.query(&format!("{SELECT} WHERE key = ANY($1::text[]::uuid[])"), &[&keys]).await?;
    rows.iter().map(row_to_sum).collect()
}

/// The sum of one key, if it was ever incremented.
///
/// # Errors
/// [`PgError`] when PostgreSQL cannot answer or the row is unreadable.
pub async fn read_sum(client: &deadpool_postgres::Client, key: IncrementKey) -> Result<Option<SumRow>, PgError> {
    let stmt = client.prepare_cached(&format!("{SELECT} WHERE key = $1::text::uuid")).await?;
    let row = client.query_opt(&stmt, &[&key.to_string()]).await?;
    row.as_ref().map(row_to_sum).transpose().map(|found| found.map(|(_, sum)| sum))
}

/// One page of `increments` in key order for the materializer's catch-up:
/// at most `limit` keys after `after` (from the first key when `None`),
/// keeping those whose sum changed since `since` (PostgreSQL's clock).
/// Each page is one range scan of the primary key.
///
/// # Errors
/// [`PgError`] when PostgreSQL cannot answer or a row is unreadable.
pub async fn changed_page(
    client: &deadpool_postgres::Client,
    since: std::time::SystemTime,
    after: Option<IncrementKey>,
    limit: i64,
) -> Result<ChangedPage<StoredSum>, PgError> {
    // Ordered by the uuid column, not the text alias `key`: that would sort
    // the whole table (140 ms a page at 300k keys instead of 16) and in
    // another order than the cursor's `>`.
    const PAGE: &str = "SELECT key::text AS key, value::text AS value, input_offset, updated_at >= $1 AS changed
         FROM increments";
    let rows = match after {
        None => {
            let stmt = client.prepare_cached(&format!("{PAGE} ORDER BY increments.key LIMIT $2")).await?;
            client.query(&stmt, &[&since, &limit]).await?
        }
        Some(after) => {
            let stmt = client
                .prepare_cached(&format!(
                    "{PAGE} WHERE increments.key > $3::text::uuid ORDER BY increments.key LIMIT $2"
                ))
                .await?;
            client.query(&stmt, &[&since, &limit, &after.to_string()]).await?
        }
    };
    let mut page = ChangedPage { changed: Vec::new(), scanned: rows.len(), last: None };
    for row in &rows {
        let (key, sum) = row_to_sum(row)?;
        if row.get::<_, bool>("changed") {
            page.changed.push((key, sum));
        }
        page.last = Some(key);
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(n: u128, sum: i128, offset: i64) -> IncrementSum {
        let key = IncrementKey::from_uuid(uuid::Uuid::from_u128(n));
        IncrementSum { key, sum, partition: 0, input_offset: offset, watermark_ms: 0 }
    }

    #[test]
    fn the_newest_offset_wins_per_key_whatever_the_order() {
        let got = latest_per_key([sum(1, 5, 5), sum(1, 9, 9), sum(2, 2, 2), sum(1, 7, 7)]);
        let summary: Vec<_> = got.iter().map(|s| (s.sum, s.input_offset)).collect();
        assert_eq!(summary, vec![(9, 9), (2, 2)]);
    }

    #[test]
    fn a_sum_beyond_i64_survives_the_cache_fields() {
        let big = StoredSum(1 << 70);
        assert_eq!(StoredSum::from_values(&big.to_values()), Some(big));
        assert_eq!(StoredSum::from_values(&["x".into()]), None);
        assert_eq!(StoredSum::from_values(&[]), None);
    }
}
