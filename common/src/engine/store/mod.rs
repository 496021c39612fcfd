//! The read-model stores, generic over the row a workload keeps in them.
//!
//! A workload's read model lives twice: in PostgreSQL (the record, kept for
//! ever; a table the workload declares, [`table::VersionedTable`], whose
//! statements the engine generates) and in Redis (the hot copy, with a TTL;
//! [`cache::VersionedCache`]). Every copy carries the PostgreSQL row's
//! version, and only a newer version replaces an older one, so writers racing
//! each other never move the cache backwards.
//!
//! The engine knows a row only through [`CachedRow`]: its kind, its table,
//! and its conversion to and from a [`Row`] of values named by column.

pub mod bulk;
pub mod bulk_copy;
pub mod cache;
pub mod copy_text;
pub mod table;

pub use self::copy_text::CopyText;
pub use self::table::{Cells, Column, ColumnType, Conn, Rollup, Row, Stored, Value, Version, VersionedTable, WriteTx};
use crate::engine::pg::PgError;

/// A row as one of its copies holds it, with the version that orders the copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Versioned<R> {
    pub row: R,
    /// Grows by one on every change of the row in PostgreSQL; 0 means "no data yet".
    pub version: i64,
}

impl<R: Default> Versioned<R> {
    /// The answer for a key no store holds: the empty row at version 0.
    pub fn absent() -> Self {
        Versioned { row: R::default(), version: 0 }
    }
}

/// The Redis hash field of the version, always first.
pub const VERSION_FIELD: &str = "v";

/// A read-model row the engine stores and copies: kept in PostgreSQL in the
/// [`VersionedTable`] it declares, and in Redis as one hash per row,
/// `<prefix>:<KIND>:<key>` (the key columns' values joined by `:`), with the
/// field [`VERSION_FIELD`] then one per cached column of the table
/// ([`table::Column::cached_as`]). The workload only converts between its
/// types and [`Row`]s named by column; the engine writes the SQL, the Lua
/// and the hash's fields from the declaration.
pub trait CachedRow: Clone + Send + Sync + 'static {
    /// What identifies a row (an hour, a key).
    type Id: Clone + Eq + Ord + std::hash::Hash + std::fmt::Debug + Send + Sync + 'static;
    /// The key segment naming the kind of row, e.g. `hour`.
    const KIND: &'static str;

    /// The table the row is kept in.
    fn table() -> &'static VersionedTable;
    /// The id as the table's key columns, by name.
    fn key(id: &Self::Id) -> Row;
    /// The id of a row holding (at least) the key columns.
    ///
    /// # Errors
    /// [`PgError::Corrupt`] when a key column is missing or malformed.
    fn id(key: &Row) -> Result<Self::Id, PgError>;
    /// The row's values by column name: at least every cached column.
    fn to_row(&self) -> Row;
    /// The row from values by column name: given every cached column (a
    /// Redis hash) or every column (a PostgreSQL row).
    ///
    /// # Errors
    /// [`PgError::Corrupt`] when a column is missing or malformed.
    fn from_row(row: &Row) -> Result<Self, PgError>;
}

/// A stored row as its typed id and row.
fn typed<R: CachedRow>(stored: &Stored) -> Result<(R::Id, Versioned<R>), PgError> {
    Ok((R::id(&stored.row)?, Versioned { row: R::from_row(&stored.row)?, version: stored.version }))
}

/// The row `id` from PostgreSQL, if it was ever written.
///
/// # Errors
/// [`PgError`] when PostgreSQL cannot answer or the row is unreadable.
pub async fn read<R: CachedRow>(conn: &impl Conn, id: &R::Id) -> Result<Option<Versioned<R>>, PgError> {
    let stored = R::table().read(conn, &R::key(id)).await?;
    stored.as_ref().map(|s| typed::<R>(s).map(|(_, row)| row)).transpose()
}

/// The rows of `ids` from PostgreSQL (those ever written), in id order.
///
/// # Errors
/// [`PgError`] when PostgreSQL cannot answer or a row is unreadable.
pub async fn read_many<R: CachedRow>(conn: &impl Conn, ids: &[R::Id]) -> Result<Vec<(R::Id, Versioned<R>)>, PgError> {
    let keys: Vec<Row> = ids.iter().map(R::key).collect();
    let mut rows: Vec<(R::Id, Versioned<R>)> =
        R::table().read_keys(conn, &keys).await?.iter().map(typed::<R>).collect::<Result<_, _>>()?;
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(rows)
}

/// The rows of `ids` as a transaction left them: those its writes changed
/// from what the statements returned (`written`, [`WriteTx::into_parts`]),
/// the others — left as they were, e.g. by a replay, yet to be copied again
/// in case an earlier copy was lost — read back from PostgreSQL in one
/// statement. In id order.
///
/// # Errors
/// [`PgError`] when PostgreSQL cannot answer or a row is unreadable.
pub async fn written_rows<R: CachedRow>(
    conn: &impl Conn,
    ids: &[R::Id],
    written: Vec<Stored>,
) -> Result<Vec<(R::Id, Versioned<R>)>, PgError> {
    // In statement order: a later row of a key is at least as new.
    let mut changed: std::collections::HashMap<R::Id, Versioned<R>> = std::collections::HashMap::new();
    for stored in &written {
        let (id, row) = typed::<R>(stored)?;
        changed.insert(id, row);
    }
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let mut rows = Vec::with_capacity(ids.len());
    let mut unchanged = Vec::new();
    for id in ids {
        match changed.remove(&id) {
            Some(row) => rows.push((id, row)),
            None => unchanged.push(id),
        }
    }
    if !unchanged.is_empty() {
        rows.extend(read_many::<R>(conn, &unchanged).await?);
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(rows)
}

/// One page of the read model in key order for the materializer's catch-up:
/// at most `limit` rows after `after` (from the first when `None`), keeping
/// those changed since `since` (PostgreSQL's clock).
///
/// # Errors
/// [`PgError`] when PostgreSQL cannot answer or a row is unreadable.
pub async fn changed_page<R: CachedRow>(
    conn: &impl Conn,
    since: std::time::SystemTime,
    after: Option<&R::Id>,
    limit: i64,
) -> Result<ChangedPage<R>, PgError> {
    let after = after.map(R::key);
    let (rows, scanned) = R::table().page(conn, since, after.as_ref(), limit).await?;
    let mut page = ChangedPage { changed: Vec::new(), scanned, last: None };
    for (stored, changed) in &rows {
        let (id, row) = typed::<R>(stored)?;
        if *changed {
            page.changed.push((id.clone(), row));
        }
        page.last = Some(id);
    }
    Ok(page)
}

/// One page of a read model in id order, for the materializer's catch-up of
/// Redis: of the rows scanned (at most the page's limit, the ids after a
/// cursor), those changed since a given moment, and where the next page starts.
/// Paging by id through the primary key bounds every statement and every
/// Redis call, whatever the table holds.
#[derive(Debug, Clone)]
pub struct ChangedPage<R: CachedRow> {
    /// The rows of the page changed since the moment asked, in id order.
    pub changed: Vec<(R::Id, Versioned<R>)>,
    /// How many rows the page scanned, changed or not.
    pub scanned: usize,
    /// The id of the page's last scanned row: the next page starts after it.
    pub last: Option<R::Id>,
}

/// Readiness of a service that uses both read-model stores: PostgreSQL
/// answers within 2 s. Redis is only the hot copy: without it the service
/// works on PostgreSQL alone (degraded, logged and counted), so its absence
/// does not take the instance out of rotation.
///
/// # Errors
/// PostgreSQL did not answer.
pub async fn check_ready(pool: &deadpool_postgres::Pool, redis: &cache::RedisStore) -> Result<(), String> {
    let limit = std::time::Duration::from_secs(2);
    if !crate::engine::pg::ping(pool, limit).await {
        return Err("postgres unreachable".into());
    }
    if !redis.ping(limit).await {
        tracing::debug!("ready without redis: serving from postgres");
    }
    Ok(())
}
