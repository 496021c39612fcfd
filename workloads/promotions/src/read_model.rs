//! Where the promotions live and how they are read:
//!
//! - [`PROMOTIONS`]: the bulk table of the engine ([`BulkTable`]): each
//!   generation its own PostgreSQL table `promotions_g<n>` (`id UUID`,
//!   `cents BIGINT`, `expiration_date TEXT`, `line BIGINT`: the row's line
//!   in the file, which places a duplicate id), filled by the processor with
//!   `COPY`, keyed by id once complete, and made visible by moving the
//!   engine's active pointer; the query reads the active one by id
//!   ([`PromotionReader`]: the pointer through a lease, the rows through a
//!   cache keyed by generation).
//! - [`GENERATIONS`]: the generations' states (`promotion_generations`), the
//!   read model the materializer writes from the generations topic and the
//!   query reads (`GET /promotions/generations[/{n}]`), hot copy in Redis.
//!   A generation's state only moves forward, so its rank (loading 1,
//!   active or failed 2, replaced 3) is the row's version: replays and
//!   records older than the stored state are no-ops.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use common::engine::pg::PgError;
use common::engine::store::bulk::{BulkTable, CopyValue, GenerationRow, PointerLease};
use common::engine::store::{CachedRow, Column, ColumnType, Conn, Row, Value, Version, VersionedTable};

use crate::generation::GenerationState;
use crate::line::{Expiration, Price, Promotion, PromotionId};
use crate::metrics as m;
use crate::records::GenerationStatus;

/// The promotions of every generation:
/// `promotions_g<n> (id UUID, cents BIGINT, expiration_date TEXT, line BIGINT)`;
/// `line` is the row's line in the file (0 when the row record did not
/// carry it), the origin by which the switch reports a duplicate id.
pub static PROMOTIONS: LazyLock<BulkTable> = LazyLock::new(|| BulkTable {
    table: "promotions",
    key: Column::new("id", ColumnType::Uuid),
    values: vec![
        Column::new("cents", ColumnType::BigInt),
        Column::new("expiration_date", ColumnType::Text),
        Column::new("line", ColumnType::BigInt),
    ],
    origin: Some("line"),
});

/// A promotion of the file's line `line` (if known) as a row of [`PROMOTIONS`].
pub fn promotion_row(p: &Promotion, line: Option<u64>) -> Row {
    Row::new()
        .with("id", Value::Text(p.id.to_string()))
        .with("cents", Value::BigInt(p.price.cents()))
        .with("expiration_date", Value::Text(p.expiration_date.as_str().to_owned()))
        .with("line", Value::BigInt(line.map_or(0, |l| i64::try_from(l).expect("a file's lines fit a BIGINT"))))
}

/// Appends a promotion of the file's line `line` (if known) to `out` as a
/// line of [`PROMOTIONS`]' `COPY` text: what the processor buffers until a
/// checkpoint copies it (no [`Row`] built per row).
pub fn push_promotion(out: &mut Vec<u8>, p: &Promotion, line: Option<u64>) {
    let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let id = &*p.id.uuid().hyphenated().encode_lower(&mut id);
    let line = line.map_or(0, |l| i64::try_from(l).expect("a file's lines fit a BIGINT"));
    PROMOTIONS
        .push_copy_row(out, |column| match column {
            "id" => Some(CopyValue::Text(id)),
            "cents" => Some(CopyValue::BigInt(p.price.cents())),
            "expiration_date" => Some(CopyValue::Text(p.expiration_date.as_str())),
            "line" => Some(CopyValue::BigInt(line)),
            _ => None,
        })
        .expect("every column of PROMOTIONS has its value");
}

/// A row of [`PROMOTIONS`] as the promotion it stores.
///
/// # Errors
/// [`PgError::Corrupt`] for a row this build did not write.
pub fn promotion_of(row: &Row) -> Result<Promotion, PgError> {
    let (id, cents, expiration) = (row.text("id")?, row.big_int("cents")?, row.text("expiration_date")?);
    let corrupt = || PgError::Corrupt(format!("promotions: id {id}, cents {cents}, expiration {expiration}"));
    Ok(Promotion {
        id: PromotionId::parse(id).map_err(|_| corrupt())?,
        price: (cents >= 0).then(|| Price::from_cents(cents)).ok_or_else(corrupt)?,
        expiration_date: Expiration::from_stored(expiration).map_err(|_| corrupt())?,
    })
}

/// What the active generation holds of one id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// No generation was ever activated (or the first is not visible yet).
    NothingActive,
    /// Generation `n` is active and has no such id.
    Absent(i64),
    /// Generation `n` is active and has it: the promotion as its JSON answer.
    Found(i64, bytes::Bytes),
}

/// Bytes a cached answer is counted for: its key, its body (the JSON of
/// one promotion, under 120 bytes: a UUID, a price, a date-time), the cache's
/// entry and the allocator's slack. 550 bytes an entry of the query's RSS were
/// measured when the cache was moka's, whose entries also held places in its
/// eviction lists and frequency sketch (docs/benchmarks-notes.md); quick_cache's
/// are smaller, so the count stays a bound. The cache is bounded in entries,
/// `--promotions-row-cache-mb` over this: so both in entries and in bytes.
const ENTRY_BYTES: u64 = 640;

/// Reads promotions of the active generation by id: the pointer through a
/// lease ([`PointerLease`]: no PostgreSQL round trip while it lasts), the
/// rows from a cache keyed by (generation, id), absent ids too, then by
/// primary key from the generation's table. A generation's rows never
/// change, so the generation in the key is the only invalidation needed.
pub struct PromotionReader {
    lease: std::sync::Arc<PointerLease>,
    cache: Option<quick_cache::sync::Cache<(i64, u128), Option<bytes::Bytes>>>,
    /// The answers by tier, their handles taken once (a lookup by name and
    /// labels per request was a visible part of a copy's answer).
    answered: Tiers,
}

/// [`m::ROW_CACHE`] by its `result` label.
struct Tiers {
    copy: metrics::Counter,
    hit: metrics::Counter,
    miss: metrics::Counter,
}

impl Tiers {
    fn new() -> Self {
        Tiers {
            copy: metrics::counter!(m::ROW_CACHE, "result" => "copy"),
            hit: metrics::counter!(m::ROW_CACHE, "result" => "hit"),
            miss: metrics::counter!(m::ROW_CACHE, "result" => "miss"),
        }
    }
}

impl PromotionReader {
    /// A reader whose cache holds up to `cache_mb` MB (0: no cache).
    pub fn new(cache_mb: u64, lease: std::sync::Arc<PointerLease>) -> Self {
        let entries = cache_mb.saturating_mul(1024 * 1024) / ENTRY_BYTES;
        let cache =
            (entries > 0).then(|| quick_cache::sync::Cache::new(usize::try_from(entries).unwrap_or(usize::MAX)));
        PromotionReader { lease, cache, answered: Tiers::new() }
    }

    /// The generation a read arriving now answers from (`None`: nothing is active yet).
    ///
    /// # Errors
    /// [`PgError`] when the pointer must be read and PostgreSQL cannot answer.
    pub async fn answering(&self, pool: &deadpool_postgres::Pool) -> Result<Option<i64>, PgError> {
        self.lease.generation(pool).await
    }

    /// The promotion `id` of the active generation: the generation the
    /// lease names now, and its row (a whole generation, never a mix).
    ///
    /// # Errors
    /// [`PgError`] when PostgreSQL cannot answer or the row is unreadable.
    pub async fn read(&self, pool: &deadpool_postgres::Pool, id: &PromotionId) -> Result<Lookup, PgError> {
        let text = id.to_string();
        // A table found gone means the pointer moved twice since it was read: decided again, a few times at most.
        for _ in 0..3 {
            let Some(generation) = self.lease.generation(pool).await? else { return Ok(Lookup::NothingActive) };
            // The generation's local copy, once built, answers every id without a round trip.
            if let Some(row) = self.lease.read_copy(generation, &text) {
                self.answered.copy.increment(1);
                let body = row.map(|r| promotion_of(&r).map(|p| bytes::Bytes::from(p.to_json()))).transpose()?;
                return Ok(lookup(generation, body));
            }
            let key = (generation, id.uuid().as_u128());
            if let Some(cache) = &self.cache {
                if let Some(body) = cache.get(&key) {
                    self.answered.hit.increment(1);
                    return Ok(lookup(generation, body));
                }
                self.answered.miss.increment(1);
            }
            let client = pool.get().await?;
            let row = match self.lease.read_row(&client, generation, &text).await? {
                GenerationRow::Row(row) => row,
                GenerationRow::Gone => continue,
            };
            let body = row.map(|r| promotion_of(&r).map(|p| bytes::Bytes::from(p.to_json()))).transpose()?;
            if let Some(cache) = &self.cache {
                cache.insert(key, body.clone());
            }
            return Ok(lookup(generation, body));
        }
        Err(PgError::Corrupt(format!("{}: the active generation moved on every read", PROMOTIONS.table)))
    }
}

fn lookup(generation: i64, body: Option<bytes::Bytes>) -> Lookup {
    match body {
        Some(body) => Lookup::Found(generation, body),
        None => Lookup::Absent(generation),
    }
}

/// `promotion_generations (generation BIGINT, state TEXT, rows BIGINT, error
/// TEXT, rank BIGINT, updated_at)`: rows −1 and error '' when not known;
/// versioned by rank. Every column is cached (fields `s`, `r`, `e`).
pub static GENERATIONS: LazyLock<VersionedTable> = LazyLock::new(|| {
    VersionedTable::new(
        "promotion_generations",
        vec![Column::new("generation", ColumnType::BigInt)],
        vec![
            Column::new("state", ColumnType::Text).cached_as("s"),
            Column::new("rows", ColumnType::BigInt).cached_as("r"),
            Column::new("error", ColumnType::Text).cached_as("e"),
        ],
        Version::Offset("rank"),
    )
});

/// Generations `GET /promotions/generations` lists at most, newest first.
pub const LISTED: i64 = 100;

/// A generation's row of the read model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredGeneration(pub GenerationStatus);

/// The answer for a generation no store holds (version 0).
impl Default for StoredGeneration {
    fn default() -> Self {
        StoredGeneration(GenerationStatus::loading(0))
    }
}

impl CachedRow for StoredGeneration {
    type Id = i64;
    const KIND: &'static str = "promotion_generation";

    fn table() -> &'static VersionedTable {
        &GENERATIONS
    }

    fn key(generation: &i64) -> Row {
        Row::new().with("generation", Value::BigInt(*generation))
    }

    fn id(row: &Row) -> Result<i64, PgError> {
        row.big_int("generation")
    }

    fn to_row(&self) -> Row {
        let s = &self.0;
        Row::new()
            .with("state", Value::Text(s.state.as_str().to_owned()))
            .with("rows", Value::BigInt(s.rows.map_or(-1, |n| i64::try_from(n).expect("rows fit a BIGINT"))))
            .with("error", Value::Text(s.error.clone().unwrap_or_default()))
    }

    /// Without the key columns (a Redis hash), the generation reads as 0: the caller knows it.
    fn from_row(row: &Row) -> Result<Self, PgError> {
        let state = row.text("state")?;
        let state = GenerationState::parse(state)
            .ok_or_else(|| PgError::Corrupt(format!("promotion_generations: state {state}")))?;
        let rows = row.big_int("rows")?;
        let error = row.text("error")?;
        Ok(StoredGeneration(GenerationStatus {
            generation: row.big_int("generation").unwrap_or(0),
            state,
            rows: u64::try_from(rows).ok(),
            error: (!error.is_empty()).then(|| error.to_owned()),
        }))
    }
}

/// Writes a batch of statuses within `tx`: each merged onto the stored one
/// ([`GenerationStatus::merge`]) and written under the rank guard. Returns
/// every generation touched, changed or not, so a replay still refreshes Redis.
///
/// A generation's records all have one key, so one materializer writes
/// them, in order: the read-merge-write cannot race another writer.
///
/// # Errors
/// [`PgError`]; the caller rolls the transaction back.
pub async fn write_statuses(tx: &impl Conn, batch: &[GenerationStatus]) -> Result<Vec<i64>, PgError> {
    let mut touched: Vec<i64> = batch.iter().map(|s| s.generation).collect();
    touched.sort_unstable();
    touched.dedup();
    let keys: Vec<Row> = touched.iter().map(StoredGeneration::key).collect();
    let mut current = BTreeMap::new();
    for stored in GENERATIONS.read_keys(tx, &keys).await? {
        let s = StoredGeneration::from_row(&stored.row)?.0;
        current.insert(s.generation, s);
    }
    let mut changed = BTreeMap::new();
    for status in batch {
        if let Some(merged) = GenerationStatus::merge(current.get(&status.generation), status) {
            current.insert(status.generation, merged.clone());
            changed.insert(status.generation, merged);
        }
    }
    let rows: Vec<Row> = changed
        .values()
        .map(|s| {
            let mut row = StoredGeneration(s.clone()).to_row();
            row.set("generation", Value::BigInt(s.generation));
            row.set("rank", Value::BigInt(s.rank()));
            row
        })
        .collect();
    GENERATIONS.upsert(tx, rows).await?;
    Ok(touched)
}

/// The newest [`LISTED`] generations, newest first (one index scan backwards).
///
/// # Errors
/// [`PgError`] when PostgreSQL cannot answer or a row is unreadable.
pub async fn newest_generations(conn: &impl Conn) -> Result<Vec<GenerationStatus>, PgError> {
    let columns: Vec<&Column> = GENERATIONS.key().iter().chain(GENERATIONS.values()).collect();
    let names: Vec<&str> = columns.iter().map(|c| c.name).collect();
    let sql = format!("SELECT {} FROM {} ORDER BY generation DESC LIMIT $1", names.join(", "), GENERATIONS.name());
    let stmt = conn.prepare_cached(&sql).await?;
    conn.query(&stmt, &[&LISTED])
        .await?
        .iter()
        .map(|r| Ok(StoredGeneration::from_row(&Row::read(r, columns.iter().copied())?)?.0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::line::parse_line;

    #[test]
    fn a_promotion_round_trips_through_its_bulk_row_and_copy_text() {
        let p = parse_line(1, "D018EF0B-DBD9-48F1-AC1A-EB4D90E57118,60.683466,2018-08-04 05:32:31 +0200 CEST").unwrap();
        let row = promotion_row(&p, Some(7));
        assert_eq!(promotion_of(&row).unwrap(), p);
        let text = PROMOTIONS.copy_text(&[row, promotion_row(&p, None)]).unwrap();
        let mut pushed = Vec::new();
        push_promotion(&mut pushed, &p, Some(7));
        push_promotion(&mut pushed, &p, None);
        assert_eq!(pushed, text, "buffered straight as COPY text, the same text");
        assert_eq!(
            String::from_utf8(text).unwrap(),
            "d018ef0b-dbd9-48f1-ac1a-eb4d90e57118\t6068\t2018-08-04 05:32:31\t7\n\
             d018ef0b-dbd9-48f1-ac1a-eb4d90e57118\t6068\t2018-08-04 05:32:31\t0\n"
        );
    }

    #[test]
    fn a_generation_survives_the_cache_fields_with_its_unknowns() {
        for s in
            [GenerationStatus::loading(4), GenerationStatus::active(4, 10), GenerationStatus::failed(4, "x".into())]
        {
            let hash = GENERATIONS.to_cache(&StoredGeneration(s.clone()).to_row()).unwrap();
            let mut row = GENERATIONS.from_cache(&hash).unwrap();
            row.set("generation", Value::BigInt(4));
            assert_eq!(StoredGeneration::from_row(&row).unwrap().0, s);
        }
    }
}
