//! The read-model stores, generic over the row a workload keeps in them.
//!
//! A workload's read model lives twice: in PostgreSQL (the record, kept for
//! ever; the workload owns its tables and statements) and in Redis (the hot
//! copy, with a TTL; [`cache::VersionedCache`]). Every copy carries the
//! PostgreSQL row's `version`, and only a newer version replaces an older
//! one, so writers racing each other never move the cache backwards.
//!
//! The engine knows a row only through [`CachedRow`]: its key kind, its field
//! names and their values as strings (so a sum beyond `i64` fits).

pub mod cache;

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

/// Where one value of a row lives: its field in the Redis hash and its column in PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub redis: &'static str,
    pub column: &'static str,
}

/// The Redis hash field of the version, always first.
pub const VERSION_FIELD: &str = "v";

/// A read-model row the engine can copy to Redis: one hash per row,
/// `<prefix>:<KIND>:<id>`, with the field [`VERSION_FIELD`] then [`FIELDS`](Self::FIELDS).
pub trait CachedRow: Clone + Send + Sync + 'static {
    /// What identifies a row (an hour, a key).
    type Id: Clone + Eq + Ord + std::hash::Hash + std::fmt::Debug + Send + Sync + 'static;
    /// The key segment naming the kind of row, e.g. `hour`.
    const KIND: &'static str;
    /// The hash field names of the row's values, in the order of [`to_values`](Self::to_values).
    const FIELDS: &'static [&'static str];

    /// The id as it appears in the key.
    fn id_to_key(id: &Self::Id) -> String;
    /// The values in the order of [`FIELDS`](Self::FIELDS), as decimal strings or any text.
    fn to_values(&self) -> Vec<String>;
    /// The row from its values in the order of [`FIELDS`](Self::FIELDS); `None` if one is malformed.
    fn from_values(values: &[String]) -> Option<Self>;
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
