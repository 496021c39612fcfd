//! The read models of the answers workload, written by the materializer from
//! `answers.changes` and read by the query (migration `0002_read_models.sql`):
//!
//! - `answers_history`: every change, once per (key, version). Declared as an
//!   offset-guarded [`VersionedTable`] keyed by (key, version): a change is a
//!   function of the log, so a replayed one is the same row and the guard
//!   makes its write a no-op.
//! - `answers_latest`: each key's newest state, versioned by the answer's
//!   own version (a row only moves to a higher one, whatever order the
//!   changes arrive in), with its hot copy in Redis
//!   (`<prefix>:answer:<key>`, field `b`): the GET body itself, so a read
//!   renders nothing.
//!
//! Values are BYTEA (TEXT cannot hold U+0000); the cached `body` is JSON, in
//! which U+0000 is an escape.
//!
//! The history's range read (`GET /answers/{key}/history`) is workload SQL
//! here too: the declarations generate point and key-set reads, not pages of
//! one key's versions.

use std::sync::LazyLock;

use crate::command::AnswerBody;
use crate::key::AnswerKey;
use crate::records::Change;
use crate::rules::Event;
use common::engine::pg::PgError;
use common::engine::store::{CachedRow, Column, ColumnType, Conn, Row, Value, Version, VersionedTable};

/// `answers_history (key, version, event, value, at_ms, input_offset, updated_at)`.
pub static HISTORY: LazyLock<VersionedTable> = LazyLock::new(|| {
    VersionedTable::new(
        "answers_history",
        vec![Column::new("key", ColumnType::Text), Column::new("version", ColumnType::BigInt)],
        vec![
            Column::new("event", ColumnType::Text),
            Column::new("value", ColumnType::Bytea),
            Column::new("at_ms", ColumnType::BigInt),
        ],
        Version::Offset("input_offset"),
    )
});

/// `answers_latest (key, live, value, at_ms, body, version, updated_at)`, the body cached as `b`.
pub static LATEST: LazyLock<VersionedTable> = LazyLock::new(|| {
    VersionedTable::new(
        "answers_latest",
        vec![Column::new("key", ColumnType::Text)],
        vec![
            Column::new("live", ColumnType::Int),
            Column::new("value", ColumnType::Bytea),
            Column::new("at_ms", ColumnType::BigInt),
            Column::new("body", ColumnType::Text).cached_as("b"),
        ],
        Version::Offset("version"),
    )
});

/// A key's latest answer as the GET serves it: the JSON body, empty while
/// the key is deleted (and for a key no store holds, at version 0).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatestAnswer {
    pub body: String,
}

impl LatestAnswer {
    /// The state after `change`.
    pub fn after(change: &Change) -> Self {
        let body = match change.event {
            Event::Delete => String::new(),
            Event::Create | Event::Update => {
                AnswerBody { key: change.key.as_str(), value: &change.value, version: change.version }.to_json()
            }
        };
        LatestAnswer { body }
    }

    /// True while the key has a value.
    pub fn is_live(&self) -> bool {
        !self.body.is_empty()
    }
}

impl CachedRow for LatestAnswer {
    type Id = AnswerKey;
    const KIND: &'static str = "answer";

    fn table() -> &'static VersionedTable {
        &LATEST
    }

    fn key(key: &AnswerKey) -> Row {
        Row::new().with("key", Value::Text(key.as_str().to_owned()))
    }

    fn id(row: &Row) -> Result<AnswerKey, PgError> {
        let key = row.text("key")?;
        AnswerKey::parse(key).map_err(|_| PgError::Corrupt(format!("answers_latest: key {key:?}")))
    }

    fn to_row(&self) -> Row {
        Row::new().with("body", Value::Text(self.body.clone()))
    }

    fn from_row(row: &Row) -> Result<Self, PgError> {
        Ok(LatestAnswer { body: row.text("body")?.to_owned() })
    }
}

fn version(v: u64) -> Value {
    Value::BigInt(i64::try_from(v).expect("a key's changes fit a bigint"))
}

/// Writes a batch of changes within `tx`: each into the history (once), and
/// each key's newest into the latest (only to a higher version). Returns
/// every touched key, changed or not, so a replay still refreshes Redis.
///
/// # Errors
/// [`PgError`]; the caller rolls the transaction back.
pub async fn write_changes(tx: &impl Conn, changes: &[Change]) -> Result<Vec<AnswerKey>, PgError> {
    let history: Vec<Row> = changes
        .iter()
        .map(|c| {
            Row::new()
                .with("key", Value::Text(c.key.as_str().to_owned()))
                .with("version", version(c.version))
                .with("event", Value::Text(c.event.name().to_owned()))
                .with("value", Value::Bytes(c.value.as_bytes().to_vec()))
                .with("at_ms", Value::BigInt(c.at_ms))
                .with("input_offset", Value::BigInt(c.input_offset))
        })
        .collect();
    HISTORY.upsert(tx, history).await?;
    // The table's upsert keeps, of several rows of one key, the highest version.
    let latest: Vec<Row> = changes
        .iter()
        .map(|c| {
            let live = c.event != Event::Delete;
            LatestAnswer::key(&c.key)
                .with("live", Value::Int(i32::from(live)))
                .with("value", Value::Bytes(if live { c.value.as_bytes().to_vec() } else { Vec::new() }))
                .with("at_ms", Value::BigInt(c.at_ms))
                .with("body", Value::Text(LatestAnswer::after(c).body))
                .with("version", version(c.version))
        })
        .collect();
    LATEST.upsert(tx, latest).await?;
    let mut keys: Vec<AnswerKey> = changes.iter().map(|c| c.key.clone()).collect();
    keys.sort_unstable();
    keys.dedup();
    Ok(keys)
}

/// One stored change of a key's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub version: u64,
    pub event: Event,
    pub value: String,
    pub at_ms: i64,
}

/// The changes of `key` from version `from` on, oldest first, at most `limit`.
pub const HISTORY_PAGE_SQL: &str = "SELECT version, event, value, at_ms FROM answers_history \
     WHERE key = $1 AND version >= $2 ORDER BY version LIMIT $3";

/// Whether `key` has any history (it was ever created).
pub const HISTORY_EXISTS_SQL: &str = "SELECT EXISTS (SELECT 1 FROM answers_history WHERE key = $1) AS found";

/// At most `limit` changes of `key` from version `from` on, oldest first:
/// one range scan of the primary key.
///
/// # Errors
/// [`PgError`] when PostgreSQL fails or a row is malformed.
pub async fn read_history(
    conn: &impl Conn,
    key: &AnswerKey,
    from: u64,
    limit: u32,
) -> Result<Vec<HistoryEntry>, PgError> {
    let stmt = conn.prepare_cached(HISTORY_PAGE_SQL).await?;
    let (from, limit) = (i64::try_from(from).unwrap_or(i64::MAX), i64::from(limit));
    let rows = conn.query(&stmt, &[&key.as_str(), &from, &limit]).await?;
    rows.iter()
        .map(|r| {
            let corrupt = |what: &str| PgError::Corrupt(format!("answers_history {key:?}: {what}"));
            let version: i64 = r.try_get("version")?;
            let event: &str = r.try_get("event")?;
            let value: Vec<u8> = r.try_get("value")?;
            Ok(HistoryEntry {
                version: u64::try_from(version).map_err(|_| corrupt("negative version"))?,
                event: Event::from_name(event).ok_or_else(|| corrupt("unknown event"))?,
                value: String::from_utf8(value).map_err(|_| corrupt("value not UTF-8"))?,
                at_ms: r.try_get("at_ms")?,
            })
        })
        .collect()
}

/// Whether `key` was ever created.
///
/// # Errors
/// [`PgError`] when PostgreSQL fails.
pub async fn history_exists(conn: &impl Conn, key: &AnswerKey) -> Result<bool, PgError> {
    let stmt = conn.prepare_cached(HISTORY_EXISTS_SQL).await?;
    let rows = conn.query(&stmt, &[&key.as_str()]).await?;
    Ok(rows.first().map(|r| r.try_get("found")).transpose()?.unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(event: Event, value: &str, version: u64) -> Change {
        Change {
            key: AnswerKey::parse("k:1").unwrap(),
            event,
            value: value.into(),
            version,
            at_ms: 5,
            partition: 0,
            input_offset: 9,
        }
    }

    #[test]
    fn the_cached_body_is_the_get_answer_and_empty_once_deleted() {
        let live = LatestAnswer::after(&change(Event::Update, "a\u{0}b", 2));
        assert_eq!(live.body, r#"{"key":"k:1","value":"a\u0000b","version":2}"#);
        assert!(live.is_live());
        let hash = LATEST.to_cache(&live.to_row()).unwrap();
        assert_eq!(LatestAnswer::from_row(&LATEST.from_cache(&hash).unwrap()).unwrap(), live);
        let gone = LatestAnswer::after(&change(Event::Delete, "a", 3));
        assert!(!gone.is_live());
        assert_eq!(LatestAnswer::default(), gone);
    }

    #[test]
    fn the_tables_are_declared_with_their_guards() {
        assert!(
            LATEST.upsert_sql().contains("WHERE answers_latest.version < EXCLUDED.version"),
            "{}",
            LATEST.upsert_sql()
        );
        assert!(HISTORY.upsert_sql().contains("ON CONFLICT (key, version)"), "{}", HISTORY.upsert_sql());
        let key = LatestAnswer::key(&AnswerKey::parse("a b").unwrap());
        assert_eq!(LATEST.cache_key(&key).unwrap(), "a b");
        assert_eq!(LatestAnswer::id(&key).unwrap().as_str(), "a b");
    }
}
