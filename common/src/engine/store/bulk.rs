//! Bulk generations: immutable sets of rows loaded in bulk and made visible
//! all at once by moving one pointer.
//!
//! A workload declares a [`BulkTable`] (its name, key and value columns);
//! the engine owns the storage: each generation is its own PostgreSQL table
//! `<table>_g<generation>` (created, filled by `COPY`, keyed once complete,
//! dropped), and `bulk_active` holds the generation readers read. The
//! processor writes them inside its checkpoint transaction
//! (`processor::engine::tables::StateTx`); readers use [`read_active`].
//!
//! A table per generation rather than a partition of one table: creating or
//! dropping a partition locks the parent against every reader, a standalone
//! table locks nothing they read.

use tokio_postgres::types::ToSql;

use super::table::{Column, ColumnType, Row, Value};
use crate::engine::pg::PgError;

/// A workload's bulk table: every generation has these columns, unique by `key`.
#[derive(Debug, Clone)]
pub struct BulkTable {
    /// The base name: generation `n` is the table `<table>_g<n>`.
    pub table: &'static str,
    pub key: Column,
    pub values: Vec<Column>,
    /// The `BIGINT` value column, if any, holding each row's place in its
    /// source (a file's line number, from 1; 0 when not known): a key held
    /// twice is then reported at its first repeat in the source, and where
    /// it was first ([`Duplicate`]).
    pub origin: Option<&'static str>,
}

/// A key held by more than one row of a generation: with an origin column,
/// the first repeat in the source's order (the lowest place of a key's
/// second row), and the place of that key's first row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    /// The key, as text.
    pub key: String,
    /// Where the key first was (`None`: no origin column, or not known).
    pub first: Option<i64>,
    /// Where it came again.
    pub repeat: Option<i64>,
}

impl Duplicate {
    /// A duplicate whose places are not known.
    pub fn unplaced(key: String) -> Self {
        Duplicate { key, first: None, repeat: None }
    }

    /// From the places read (0 or less: not known).
    pub fn placed(key: String, first: i64, repeat: i64) -> Self {
        let known = |place: i64| (place > 0).then_some(place);
        Duplicate { key, first: known(first), repeat: known(repeat) }
    }
}

/// The SQL type of a column.
fn sql_type(ty: ColumnType) -> &'static str {
    match ty {
        ColumnType::BigInt => "BIGINT",
        ColumnType::Int => "INT",
        ColumnType::Uuid => "UUID",
        ColumnType::Numeric => "NUMERIC",
        ColumnType::Text => "TEXT",
        ColumnType::Bytea => "BYTEA",
    }
}

impl BulkTable {
    /// Every column, the key first.
    pub fn columns(&self) -> impl Iterator<Item = &Column> {
        std::iter::once(&self.key).chain(&self.values)
    }

    /// The columns a reader reads: every one but the origin, which only
    /// places duplicates at the switch (and which a generation written
    /// before the table had one lacks).
    pub fn read_columns(&self) -> impl Iterator<Item = &Column> {
        self.columns().filter(|c| Some(c.name) != self.origin)
    }

    /// Adds the origin column, 0 (not known) in every row, to a generation
    /// whose table was created before the table declared one (a file in
    /// flight across the upgrade): `None` without an origin column.
    pub fn add_origin_sql(&self, generation: i64) -> Option<String> {
        let origin = self.origin?;
        Some(format!(
            "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {origin} BIGINT NOT NULL DEFAULT 0",
            self.generation_table(generation)
        ))
    }

    /// The table of `generation` (never negative: the engine's own numbers).
    pub fn generation_table(&self, generation: i64) -> String {
        format!("{}_g{}", self.table, generation.max(0))
    }

    /// Creates `generation`'s table if missing, without its key yet (rows are
    /// copied in first; [`BulkTable::seal_sql`] checks and keys them).
    pub fn create_sql(&self, generation: i64) -> String {
        let columns: Vec<String> = self.columns().map(|c| format!("{} {} NOT NULL", c.name, sql_type(c.ty))).collect();
        format!("CREATE TABLE IF NOT EXISTS {} ({})", self.generation_table(generation), columns.join(", "))
    }

    /// `COPY … FROM STDIN` (text format) into `generation`'s table.
    pub fn copy_sql(&self, generation: i64) -> String {
        let names: Vec<&str> = self.columns().map(|c| c.name).collect();
        format!("COPY {} ({}) FROM STDIN", self.generation_table(generation), names.join(", "))
    }

    /// One key with more than one row in `generation`, as text, if any.
    pub fn duplicate_sql(&self, generation: i64) -> String {
        format!(
            "SELECT {key}::text AS {key} FROM {t} GROUP BY {key} HAVING count(*) > 1 LIMIT 1",
            key = self.key.name,
            t = self.generation_table(generation)
        )
    }

    /// With an origin column, the duplicate key of `generation` that repeats
    /// first in the source, as text, with the places of its first two rows
    /// (`first_at`, `repeat_at`); ties (places not known) go to the lowest
    /// key. Run only once [`BulkTable::duplicate_sql`] found one: it sorts
    /// the duplicated keys' rows, never the whole table.
    pub fn first_duplicate_sql(&self, generation: i64) -> Option<String> {
        let origin = self.origin?;
        Some(format!(
            "SELECT {key}::text AS {key}, first_at, repeat_at FROM (\
             SELECT {key}, lag({origin}) OVER w AS first_at, {origin} AS repeat_at, row_number() OVER w AS n \
             FROM {t} WHERE {key} IN (SELECT {key} FROM {t} GROUP BY {key} HAVING count(*) > 1) \
             WINDOW w AS (PARTITION BY {key} ORDER BY {origin})) d \
             WHERE n = 2 ORDER BY repeat_at, {key} LIMIT 1",
            key = self.key.name,
            t = self.generation_table(generation)
        ))
    }

    /// Keys `generation`'s table by its key (after [`BulkTable::duplicate_sql`] found none).
    pub fn seal_sql(&self, generation: i64) -> String {
        let t = self.generation_table(generation);
        format!("ALTER TABLE {t} ADD CONSTRAINT {t}_pkey PRIMARY KEY ({})", self.key.name)
    }

    /// Drops `generation`'s table if it exists.
    pub fn drop_sql(&self, generation: i64) -> String {
        format!("DROP TABLE IF EXISTS {}", self.generation_table(generation))
    }

    /// One row of `generation` by key (the key given as text): the columns, UUID and NUMERIC as text.
    pub fn read_sql(&self, generation: i64) -> String {
        let columns: Vec<String> = self
            .read_columns()
            .map(|c| if c.ty.read_as_text() { format!("{0}::text AS {0}", c.name) } else { c.name.to_owned() })
            .collect();
        format!(
            "SELECT {} FROM {} WHERE {} = $1::text::{}",
            columns.join(", "),
            self.generation_table(generation),
            self.key.name,
            sql_type(self.key.ty)
        )
    }

    /// `rows` as `COPY` text: one line per row, columns in declaration order.
    ///
    /// # Errors
    /// [`PgError::Corrupt`] when a row lacks a column or holds a value of another type.
    pub fn copy_text(&self, rows: &[Row]) -> Result<Vec<u8>, PgError> {
        let mut out = Vec::with_capacity(rows.len() * 64);
        for row in rows {
            for (i, c) in self.columns().enumerate() {
                if i > 0 {
                    out.push(b'\t');
                }
                let corrupt = || PgError::Corrupt(format!("{}: a row without a valid {}", self.table, c.name));
                match (c.ty, row.get(c.name).ok_or_else(corrupt)?) {
                    (ColumnType::BigInt, Value::BigInt(v)) => out.extend_from_slice(v.to_string().as_bytes()),
                    (ColumnType::Int, Value::Int(v)) => out.extend_from_slice(v.to_string().as_bytes()),
                    (ColumnType::Uuid | ColumnType::Numeric | ColumnType::Text, Value::Text(v)) => escape(v, &mut out),
                    (ColumnType::Bytea, Value::Bytes(v)) => {
                        // bytea's hex input `\x…`, its backslash escaped for COPY.
                        out.extend_from_slice(b"\\\\x");
                        for b in v {
                            out.extend_from_slice(format!("{b:02x}").as_bytes());
                        }
                    }
                    _ => return Err(corrupt()),
                }
            }
            out.push(b'\n');
        }
        Ok(out)
    }
}

/// One value of a row written straight as `COPY` text
/// ([`BulkTable::push_copy_row`]): borrowed, so that a workload buffering
/// many rows holds their text, never a [`Row`] each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyValue<'a> {
    BigInt(i64),
    Int(i32),
    /// For `TEXT`, `UUID` and `NUMERIC` columns.
    Text(&'a str),
}

impl BulkTable {
    /// Appends one row to `out` as a line of `COPY` text ([`BulkTable::copy_sql`]):
    /// the columns in declaration order, each value given by `cell` for the column's name.
    ///
    /// # Errors
    /// [`PgError::Corrupt`] when `cell` has no value of a column's type (`out` is then left with part of a line).
    pub fn push_copy_row<'a>(
        &self,
        out: &mut Vec<u8>,
        mut cell: impl FnMut(&str) -> Option<CopyValue<'a>>,
    ) -> Result<(), PgError> {
        use std::io::Write;
        for (i, c) in self.columns().enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            match (c.ty, cell(c.name)) {
                (ColumnType::BigInt, Some(CopyValue::BigInt(v))) => write!(out, "{v}").expect("writing to a Vec"),
                (ColumnType::Int, Some(CopyValue::Int(v))) => write!(out, "{v}").expect("writing to a Vec"),
                (ColumnType::Uuid | ColumnType::Numeric | ColumnType::Text, Some(CopyValue::Text(v))) => escape(v, out),
                _ => return Err(PgError::Corrupt(format!("{}: a row without a valid {}", self.table, c.name))),
            }
        }
        out.push(b'\n');
        Ok(())
    }

    /// The rows of `COPY` text written by [`BulkTable::push_copy_row`] or
    /// [`BulkTable::copy_text`], as PostgreSQL reads them: for a store that
    /// keeps rows rather than running `COPY` (the processor's simulation).
    ///
    /// # Errors
    /// [`PgError::Corrupt`] for a line with another number of fields, a
    /// number that does not parse, or a `BYTEA` column.
    pub fn rows_of_copy_text(&self, text: &[u8]) -> Result<Vec<Row>, PgError> {
        let corrupt = |what: &str| PgError::Corrupt(format!("{}: COPY text: {what}", self.table));
        let text = std::str::from_utf8(text).map_err(|_| corrupt("not UTF-8"))?;
        let mut rows = Vec::new();
        for line in text.split_terminator('\n') {
            let fields: Vec<&str> = line.split('\t').collect();
            let columns: Vec<&Column> = self.columns().collect();
            if fields.len() != columns.len() {
                return Err(corrupt("a line with another number of fields"));
            }
            let mut row = Row::new();
            for (c, field) in columns.into_iter().zip(fields) {
                let value = match c.ty {
                    ColumnType::BigInt => Value::BigInt(field.parse().map_err(|_| corrupt(c.name))?),
                    ColumnType::Int => Value::Int(field.parse().map_err(|_| corrupt(c.name))?),
                    ColumnType::Uuid | ColumnType::Numeric | ColumnType::Text => Value::Text(unescape(field)),
                    ColumnType::Bytea => return Err(corrupt("BYTEA is not read back")),
                };
                row = row.with(c.name, value);
            }
            rows.push(row);
        }
        Ok(rows)
    }
}

/// The inverse of [`escape`].
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        match (c, c == '\\') {
            (_, true) => match chars.next() {
                Some('t') => out.push('\t'),
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some(other) => out.push(other),
                None => {}
            },
            (c, false) => out.push(c),
        }
    }
    out
}

/// COPY text escaping: backslash, tab, newline and carriage return.
fn escape(text: &str, out: &mut Vec<u8>) {
    for b in text.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b => out.push(b),
        }
    }
}

/// The active generation of `table`, if one was ever switched to.
///
/// # Errors
/// [`PgError`] when PostgreSQL cannot answer.
pub async fn active_generation(
    client: &impl deadpool_postgres::GenericClient,
    table: &BulkTable,
) -> Result<Option<i64>, PgError> {
    let row = client.query_opt("SELECT generation FROM bulk_active WHERE bulk_table = $1", &[&table.table]).await?;
    Ok(row.map(|r| r.get("generation")))
}

/// What a reader last saw of a table's active generation, and the one
/// statement that reads a row of it ([`BulkTable::read_active_sql`]).
///
/// Only a hint of which table to read: every read also reads the pointer,
/// in the same statement, and a read that finds the pointer elsewhere reads
/// again. So a reader never answers from a generation the pointer has left,
/// whatever the hint says, and readers in other processes see a switch at
/// the same moment (the pointer's commit), as the issue's atomicity asks:
/// once any reader sees the new generation, no reader sees the old one.
/// Caching the pointer itself would break that across query instances.
#[derive(Debug, Default)]
pub struct ActiveHint {
    last: std::sync::RwLock<Option<std::sync::Arc<HintedStatement>>>,
}

#[derive(Debug)]
struct HintedStatement {
    generation: i64,
    sql: String,
    /// The statement of the generation read before (a switch ago): each
    /// connection drops it from its statement cache, so a long-lived
    /// connection does not keep one prepared statement per generation.
    stale_sql: Option<String>,
}

impl ActiveHint {
    fn get(&self) -> Option<std::sync::Arc<HintedStatement>> {
        self.last.read().expect("the hint's lock is never poisoned").clone()
    }

    /// Moves the hint to `generation`, or clears it. Any way the pointer went: a
    /// store reset starts the numbers again.
    fn set(&self, table: &BulkTable, generation: Option<i64>) {
        let mut last = self.last.write().expect("the hint's lock is never poisoned");
        let current = last.as_ref().map(|h| h.generation);
        match generation {
            Some(g) if current != Some(g) => {
                let stale_sql = last.as_ref().map(|h| h.sql.clone());
                *last = Some(std::sync::Arc::new(HintedStatement {
                    generation: g,
                    sql: table.read_active_sql(g),
                    stale_sql,
                }));
            }
            Some(_) => {}
            None => *last = None,
        }
    }
}

impl BulkTable {
    /// One row of `generation` by key (`$1`, as text) joined to the pointer
    /// of the table (`$2`): one row with the active generation and, if that
    /// is `generation` and holds the key, the row's columns (NULL otherwise);
    /// no row when nothing is active. One statement, one snapshot.
    pub fn read_active_sql(&self, generation: i64) -> String {
        let columns: Vec<String> = self
            .read_columns()
            .map(|c| if c.ty.read_as_text() { format!("r.{0}::text AS {0}", c.name) } else { format!("r.{}", c.name) })
            .collect();
        format!(
            "SELECT a.generation AS bulk_active_generation, {} FROM bulk_active a LEFT JOIN {} r \
             ON a.generation = {generation} AND r.{} = $1::text::{} WHERE a.bulk_table = $2",
            columns.join(", "),
            self.generation_table(generation),
            self.key.name,
            sql_type(self.key.ty)
        )
    }
}

/// The row of `key` in the active generation of `table`, with that
/// generation: `None` when no generation is active, `Some((n, None))` when
/// generation `n` has no such row.
///
/// One prepared statement reads the pointer and the row of the generation
/// `hint` names; if the pointer has moved, the hint follows it and the
/// statement of the new generation reads again. Without a hint (the first
/// read, or the hinted table was dropped) the pointer is read alone first.
/// A generation's table stays until the switch after the one that replaced
/// it, so a reader racing one switch still finds it.
///
/// # Errors
/// [`PgError`] when PostgreSQL cannot answer, or the pointer moves on every
/// one of a few reads in a row.
pub async fn read_active(
    client: &deadpool_postgres::Client,
    table: &BulkTable,
    hint: &ActiveHint,
    key: &str,
) -> Result<Option<(i64, Option<Row>)>, PgError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let hinted = match hint.get() {
            Some(h) => h,
            None => {
                let Some(generation) = active_generation(client, table).await? else { return Ok(None) };
                hint.set(table, Some(generation));
                hint.get().expect("just set")
            }
        };
        if let Some(stale) = &hinted.stale_sql {
            client.statement_cache.remove(stale, &[]);
        }
        let read = match client.prepare_cached(&hinted.sql).await {
            Ok(statement) => {
                let params: [&(dyn ToSql + Sync); 2] = [&key, &table.table];
                client.query_opt(&statement, &params).await
            }
            Err(e) => Err(e),
        };
        match read {
            Ok(None) => return Ok(None),
            Ok(Some(r)) => {
                let active: i64 = r.try_get("bulk_active_generation")?;
                if active == hinted.generation {
                    let present = r.try_get::<_, Option<String>>(table.key.name)?.is_some();
                    let row = present.then(|| Row::read(&r, table.read_columns())).transpose()?;
                    return Ok(Some((active, row)));
                }
                hint.set(table, Some(active));
            }
            // The hinted generation was dropped (two switches since): read the pointer again.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
                client.statement_cache.remove(&hinted.sql, &[]);
                hint.set(table, None);
                if attempts > 3 {
                    return Err(e.into());
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        if attempts > 3 {
            return Err(PgError::Corrupt(format!("{}: the active generation moved on every read", table.table)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> BulkTable {
        BulkTable {
            table: "promotions",
            key: Column::new("id", ColumnType::Uuid),
            values: vec![Column::new("cents", ColumnType::BigInt), Column::new("note", ColumnType::Text)],
            origin: None,
        }
    }

    #[test]
    fn a_duplicate_is_placed_by_the_origin_column_when_there_is_one() {
        assert_eq!(table().first_duplicate_sql(7), None, "no origin: the key alone");
        assert_eq!(table().add_origin_sql(7), None);
        let t = BulkTable { origin: Some("cents"), ..table() };
        assert_eq!(t.read_sql(7), "SELECT id::text AS id, note FROM promotions_g7 WHERE id = $1::text::UUID");
        assert_eq!(
            t.add_origin_sql(7).unwrap(),
            "ALTER TABLE promotions_g7 ADD COLUMN IF NOT EXISTS cents BIGINT NOT NULL DEFAULT 0"
        );
        assert_eq!(
            t.first_duplicate_sql(7).unwrap(),
            "SELECT id::text AS id, first_at, repeat_at FROM (\
             SELECT id, lag(cents) OVER w AS first_at, cents AS repeat_at, row_number() OVER w AS n \
             FROM promotions_g7 WHERE id IN (SELECT id FROM promotions_g7 GROUP BY id HAVING count(*) > 1) \
             WINDOW w AS (PARTITION BY id ORDER BY cents)) d WHERE n = 2 ORDER BY repeat_at, id LIMIT 1"
        );
        assert_eq!(Duplicate::placed("a".into(), 3, 7), Duplicate { key: "a".into(), first: Some(3), repeat: Some(7) });
        assert_eq!(Duplicate::placed("a".into(), 0, 0), Duplicate::unplaced("a".into()));
    }

    #[test]
    fn each_generation_is_its_own_table_keyed_once_sealed() {
        let t = table();
        assert_eq!(
            t.create_sql(7),
            "CREATE TABLE IF NOT EXISTS promotions_g7 (id UUID NOT NULL, cents BIGINT NOT NULL, note TEXT NOT NULL)"
        );
        assert_eq!(t.copy_sql(7), "COPY promotions_g7 (id, cents, note) FROM STDIN");
        assert_eq!(t.seal_sql(7), "ALTER TABLE promotions_g7 ADD CONSTRAINT promotions_g7_pkey PRIMARY KEY (id)");
        assert_eq!(t.read_sql(7), "SELECT id::text AS id, cents, note FROM promotions_g7 WHERE id = $1::text::UUID");
        assert_eq!(
            t.read_active_sql(7),
            "SELECT a.generation AS bulk_active_generation, r.id::text AS id, r.cents, r.note FROM bulk_active a \
             LEFT JOIN promotions_g7 r ON a.generation = 7 AND r.id = $1::text::UUID WHERE a.bulk_table = $2"
        );
        assert_eq!(t.generation_table(-1), "promotions_g0", "never a negative name");
    }

    #[test]
    fn copy_text_escapes_what_copy_would_read_as_syntax() {
        let row = Row::new()
            .with("id", Value::Text("d018ef0b-dbd9-48f1-ac1a-eb4d90e57118".into()))
            .with("cents", Value::BigInt(6068))
            .with("note", Value::Text("a\tb\\c\nd".into()));
        let text = table().copy_text(&[row.clone(), row.clone()]).unwrap();
        let line = "d018ef0b-dbd9-48f1-ac1a-eb4d90e57118\t6068\ta\\tb\\\\c\\nd\n";
        assert_eq!(String::from_utf8(text.clone()).unwrap(), line.repeat(2));
        // Written straight from borrowed values, the same text; read back, the same rows.
        let mut pushed = Vec::new();
        for _ in 0..2 {
            table()
                .push_copy_row(&mut pushed, |c| match c {
                    "id" => Some(CopyValue::Text("d018ef0b-dbd9-48f1-ac1a-eb4d90e57118")),
                    "cents" => Some(CopyValue::BigInt(6068)),
                    _ => Some(CopyValue::Text("a\tb\\c\nd")),
                })
                .unwrap();
        }
        assert_eq!(pushed, text);
        assert_eq!(table().rows_of_copy_text(&text).unwrap(), vec![row.clone(), row]);
        assert!(table().push_copy_row(&mut Vec::new(), |_| Some(CopyValue::BigInt(1))).is_err(), "a text column");
        assert!(table().rows_of_copy_text(b"a\t1\n").is_err(), "a field missing");
        let missing = Row::new().with("id", Value::Text("x".into()));
        assert!(table().copy_text(&[missing]).is_err());
        let wrong = Row::new()
            .with("id", Value::Text("x".into()))
            .with("cents", Value::Text("1".into()))
            .with("note", Value::Text(String::new()));
        assert!(table().copy_text(&[wrong]).is_err());
    }
}
