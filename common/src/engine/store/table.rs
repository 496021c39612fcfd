//! The read-model tables a workload declares and the engine owns: keyed,
//! versioned rows in PostgreSQL ([`VersionedTable`]) and per-key sums of one
//! such table into another ([`Rollup`]).
//!
//! A workload names its table, its key columns, its value columns with their
//! types and how the row is versioned; the engine generates every statement
//! from that — the guarded batch upsert (the offset or version guard is
//! written here once), the rollup, the point read, the read of a batch's
//! keys and the changed-rows page of the materializer's Redis catch-up — and
//! hands rows over as [`Row`]s whose values are named by column, never by
//! position. Which columns are copied to Redis is part of the declaration
//! ([`Column::cached_as`]), so the Redis hash's fields follow from it too
//! ([`super::CachedRow`]).
//!
//! The processor's state tables (`RowTable` in `processor::engine::tables`)
//! declare their columns and pass their rows with the same [`Column`],
//! [`ColumnType`], [`Value`] and [`Row`]. Like them, the declaration keeps the tables' existing shape: `<key>..., <values>...,
//! <version>, updated_at TIMESTAMPTZ NOT NULL DEFAULT now()`, primary key
//! `(<key>...)`.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::SystemTime;

use tokio_postgres::types::ToSql;
use tokio_postgres::Statement;

use crate::engine::pg::PgError;

/// A column's PostgreSQL type. `Uuid`, `Numeric` and `Text` values travel as
/// text ([`Value::Text`]); the generated SQL casts them both ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    BigInt,
    Int,
    Uuid,
    Numeric,
    Text,
    Bytea,
}

impl ColumnType {
    /// The element type a parameter of this column is sent as.
    pub fn param(self) -> &'static str {
        match self {
            ColumnType::BigInt => "bigint",
            ColumnType::Int => "int",
            ColumnType::Uuid | ColumnType::Numeric | ColumnType::Text => "text",
            ColumnType::Bytea => "bytea",
        }
    }

    /// The cast from the parameter's type to the column's.
    pub fn cast(self) -> &'static str {
        match self {
            ColumnType::Uuid => "::uuid",
            ColumnType::Numeric => "::numeric",
            _ => "",
        }
    }

    /// Read back as text (and aliased to the column's name).
    pub fn read_as_text(self) -> bool {
        matches!(self, ColumnType::Uuid | ColumnType::Numeric)
    }
}

/// One column of a table: its name, its type and, if the row's Redis copy
/// holds it, the hash field it is kept under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    pub ty: ColumnType,
    /// The field of the Redis hash holding this value; `None`: PostgreSQL only.
    pub cached_as: Option<&'static str>,
}

impl Column {
    pub const fn new(name: &'static str, ty: ColumnType) -> Self {
        Column { name, ty, cached_as: None }
    }

    /// The same column, also kept in the row's Redis hash under `field`.
    pub const fn cached_as(self, field: &'static str) -> Self {
        Column { cached_as: Some(field), ..self }
    }
}

/// How a table's rows are versioned, which is also how its writes are guarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The writer's input offset (`BIGINT`): a row only moves to a higher
    /// one, so a replayed or older write is a no-op. Each written row carries it.
    Offset(&'static str),
    /// A counter (`BIGINT`) the engine keeps: 1 on insert, one more on every
    /// write that changes a value, unchanged otherwise (so a replay is a no-op).
    Counter(&'static str),
}

impl Version {
    pub fn column(self) -> &'static str {
        match self {
            Version::Offset(c) | Version::Counter(c) => c,
        }
    }
}

/// One value of a row: `BigInt` columns are `BigInt`, `Int` ones `Int`,
/// `Bytea` ones `Bytes`, and `Uuid`, `Numeric` and `Text` ones `Text`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Value {
    BigInt(i64),
    Int(i32),
    Text(String),
    Bytes(Vec<u8>),
}

impl Value {
    /// As a Redis hash value or key segment (bytes are never cached).
    fn to_cache(&self) -> String {
        match self {
            Value::BigInt(v) => v.to_string(),
            Value::Int(v) => v.to_string(),
            Value::Text(v) => v.clone(),
            Value::Bytes(_) => unreachable!("bytea columns are never cached (checked by VersionedTable::new)"),
        }
    }

    /// From a Redis hash value; `None` if it does not parse as `ty`.
    fn from_cache(ty: ColumnType, text: &str) -> Option<Value> {
        match ty {
            ColumnType::BigInt => text.parse().ok().map(Value::BigInt),
            ColumnType::Int => text.parse().ok().map(Value::Int),
            ColumnType::Uuid | ColumnType::Numeric | ColumnType::Text => Some(Value::Text(text.to_owned())),
            ColumnType::Bytea => None,
        }
    }

    fn matches(&self, ty: ColumnType) -> bool {
        matches!(
            (self, ty),
            (Value::BigInt(_), ColumnType::BigInt)
                | (Value::Int(_), ColumnType::Int)
                | (Value::Bytes(_), ColumnType::Bytea)
                | (Value::Text(_), ColumnType::Uuid | ColumnType::Numeric | ColumnType::Text)
        )
    }
}

/// One row (or part of one), its values named by column.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Row {
    cells: Vec<(&'static str, Value)>,
}

impl Row {
    pub fn new() -> Self {
        Row::default()
    }

    /// Sets `column` (replacing an earlier value of it).
    pub fn with(mut self, column: &'static str, value: Value) -> Self {
        self.set(column, value);
        self
    }

    pub fn set(&mut self, column: &'static str, value: Value) {
        match self.cells.iter_mut().find(|(c, _)| *c == column) {
            Some(cell) => cell.1 = value,
            None => self.cells.push((column, value)),
        }
    }

    pub fn get(&self, column: &str) -> Option<&Value> {
        self.cells.iter().find(|(c, _)| *c == column).map(|(_, v)| v)
    }

    /// A `BIGINT` column's value.
    ///
    /// # Errors
    /// [`PgError::Corrupt`] when the row has no such column of that type.
    pub fn big_int(&self, column: &str) -> Result<i64, PgError> {
        match self.get(column) {
            Some(Value::BigInt(v)) => Ok(*v),
            other => Err(mistyped(column, other, "a bigint")),
        }
    }

    /// A `BIGINT` column holding a count, never negative: as `u64`.
    ///
    /// # Errors
    /// [`PgError::Corrupt`] when the row has no such column, or it is negative.
    pub fn count(&self, column: &str) -> Result<u64, PgError> {
        let v = self.big_int(column)?;
        u64::try_from(v).map_err(|_| PgError::Corrupt(format!("column {column}: negative count {v}")))
    }

    /// An `INT` column's value.
    ///
    /// # Errors
    /// [`PgError::Corrupt`] when the row has no such column of that type.
    pub fn int(&self, column: &str) -> Result<i32, PgError> {
        match self.get(column) {
            Some(Value::Int(v)) => Ok(*v),
            other => Err(mistyped(column, other, "an int")),
        }
    }

    /// A `UUID`, `NUMERIC` or `TEXT` column's value, as text.
    ///
    /// # Errors
    /// [`PgError::Corrupt`] when the row has no such column of that type.
    pub fn text(&self, column: &str) -> Result<&str, PgError> {
        match self.get(column) {
            Some(Value::Text(v)) => Ok(v),
            other => Err(mistyped(column, other, "text")),
        }
    }

    /// A `BYTEA` column's value.
    ///
    /// # Errors
    /// [`PgError::Corrupt`] when the row has no such column of that type.
    pub fn bytes(&self, column: &str) -> Result<&[u8], PgError> {
        match self.get(column) {
            Some(Value::Bytes(v)) => Ok(v),
            other => Err(mistyped(column, other, "bytes")),
        }
    }

    /// The values of `columns` of a PostgreSQL row, by name (`Uuid` and
    /// `Numeric` ones read back as text, see [`ColumnType::read_as_text`]).
    ///
    /// # Errors
    /// [`PgError`] when a column is missing or of another type.
    pub fn read<'c>(r: &tokio_postgres::Row, columns: impl IntoIterator<Item = &'c Column>) -> Result<Row, PgError> {
        Row::from_cells(r, columns)
    }

    /// The values of `columns` of a row read by name ([`Cells`]), owned.
    ///
    /// # Errors
    /// [`PgError`] when a column is missing or of another type.
    pub fn from_cells<'c>(cells: &dyn Cells, columns: impl IntoIterator<Item = &'c Column>) -> Result<Row, PgError> {
        let mut row = Row::new();
        for c in columns {
            let value = match c.ty {
                ColumnType::BigInt => Value::BigInt(cells.big_int(c.name)?),
                ColumnType::Int => Value::Int(cells.int(c.name)?),
                ColumnType::Uuid | ColumnType::Numeric | ColumnType::Text => {
                    Value::Text(cells.text(c.name)?.to_owned())
                }
                ColumnType::Bytea => Value::Bytes(cells.bytes(c.name)?.to_vec()),
            };
            row.set(c.name, value);
        }
        Ok(row)
    }

    /// The values of `columns`, in their order, moved out of the row (a sketch is not copied).
    fn into_values_of(mut self, columns: &[Column]) -> Result<Vec<Value>, PgError> {
        columns
            .iter()
            .map(|c| {
                let at = self.cells.iter().position(|(name, _)| *name == c.name);
                match at.map(|i| self.cells.swap_remove(i).1) {
                    Some(v) if v.matches(c.ty) => Ok(v),
                    other => Err(mistyped(c.name, other.as_ref(), &format!("{:?}", c.ty))),
                }
            })
            .collect()
    }

    fn values_of<'c>(&self, columns: impl IntoIterator<Item = &'c Column>) -> Result<Vec<Value>, PgError> {
        columns
            .into_iter()
            .map(|c| match self.get(c.name) {
                Some(v) if v.matches(c.ty) => Ok(v.clone()),
                other => Err(mistyped(c.name, other, &format!("{:?}", c.ty))),
            })
            .collect()
    }
}

/// A stored row's cells by column name, as a restore reads them: a [`Row`],
/// or a row an engine's read lends without copying its cells out
/// (`processor::engine::tables::StateTx::read_cells`: a restore of millions
/// of rows then allocates nothing per row).
pub trait Cells {
    /// A `UUID`, `NUMERIC` or `TEXT` column's value, as text.
    ///
    /// # Errors
    /// [`PgError::Corrupt`] when the row has no such column of that type.
    fn text(&self, column: &str) -> Result<&str, PgError>;

    /// A `BIGINT` column's value.
    ///
    /// # Errors
    /// [`PgError::Corrupt`] when the row has no such column of that type.
    fn big_int(&self, column: &str) -> Result<i64, PgError>;

    /// An `INT` column's value.
    ///
    /// # Errors
    /// [`PgError::Corrupt`] when the row has no such column of that type.
    fn int(&self, column: &str) -> Result<i32, PgError>;

    /// A `BYTEA` column's value.
    ///
    /// # Errors
    /// [`PgError::Corrupt`] when the row has no such column of that type.
    fn bytes(&self, column: &str) -> Result<&[u8], PgError>;
}

impl Cells for Row {
    fn text(&self, column: &str) -> Result<&str, PgError> {
        Row::text(self, column)
    }

    fn big_int(&self, column: &str) -> Result<i64, PgError> {
        Row::big_int(self, column)
    }

    fn int(&self, column: &str) -> Result<i32, PgError> {
        Row::int(self, column)
    }

    fn bytes(&self, column: &str) -> Result<&[u8], PgError> {
        Row::bytes(self, column)
    }
}

/// A row of a query, its cells read by name.
impl Cells for tokio_postgres::Row {
    fn text(&self, column: &str) -> Result<&str, PgError> {
        Ok(self.try_get(column)?)
    }

    fn big_int(&self, column: &str) -> Result<i64, PgError> {
        Ok(self.try_get(column)?)
    }

    fn int(&self, column: &str) -> Result<i32, PgError> {
        Ok(self.try_get(column)?)
    }

    fn bytes(&self, column: &str) -> Result<&[u8], PgError> {
        Ok(self.try_get(column)?)
    }
}

fn mistyped(column: &str, found: Option<&Value>, wanted: &str) -> PgError {
    PgError::Corrupt(format!("column {column}: {found:?} is not {wanted}"))
}

/// The engine's connections a table is read and written through: a pooled
/// client or a transaction of one (statements are prepared once per connection).
pub trait Conn: Sync {
    fn prepare_cached(&self, sql: &str) -> impl Future<Output = Result<Statement, tokio_postgres::Error>> + Send;
    fn query(
        &self,
        stmt: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>> + Send;
    fn execute(
        &self,
        stmt: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<u64, tokio_postgres::Error>> + Send;

    /// Whether this connection keeps the rows its writes of `table` change
    /// ([`WriteTx`]): the table's writes then return them (`RETURNING`) and
    /// hand them to [`Conn::record`].
    fn records(&self, _table: &str) -> bool {
        false
    }

    /// Keeps rows a write of a recorded table changed, as they now stand.
    fn record(&self, _rows: Vec<Stored>) {}
}

/// A transaction that keeps the rows its writes of one table change, as the
/// statements return them (`RETURNING`): the materializer hands a workload
/// one, so the rows a batch changed reach Redis without being read back.
/// Rows a write left as they were (a replay, an unchanged sum) are not
/// returned; the engine reads those back. Everything else of the
/// transaction is reached through it (`Deref`).
///
/// A row of the recorded table must change only through the table's own
/// statements ([`VersionedTable::upsert`], [`Rollup::apply`]) within the
/// transaction: a raw `UPDATE` after them would leave the kept row older
/// than the stored one.
pub struct WriteTx<'t> {
    tx: deadpool_postgres::Transaction<'t>,
    table: &'static str,
    written: std::sync::Mutex<Vec<Stored>>,
}

impl<'t> WriteTx<'t> {
    /// Keeps the rows the writes of `table` change within `tx`.
    pub fn new(tx: deadpool_postgres::Transaction<'t>, table: &'static str) -> Self {
        WriteTx { tx, table, written: std::sync::Mutex::default() }
    }

    /// The transaction, and the rows kept, in the order they were written
    /// (a later one of a key is at least as new as an earlier one).
    pub fn into_parts(self) -> (deadpool_postgres::Transaction<'t>, Vec<Stored>) {
        (self.tx, self.written.into_inner().expect("written rows lock"))
    }
}

impl<'t> std::ops::Deref for WriteTx<'t> {
    type Target = deadpool_postgres::Transaction<'t>;

    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl Conn for WriteTx<'_> {
    fn prepare_cached(&self, sql: &str) -> impl Future<Output = Result<Statement, tokio_postgres::Error>> + Send {
        deadpool_postgres::Transaction::prepare_cached(&self.tx, sql)
    }
    fn query(
        &self,
        stmt: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>> + Send {
        tokio_postgres::Transaction::query(&self.tx, stmt, params)
    }
    fn execute(
        &self,
        stmt: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<u64, tokio_postgres::Error>> + Send {
        tokio_postgres::Transaction::execute(&self.tx, stmt, params)
    }
    fn records(&self, table: &str) -> bool {
        table == self.table
    }
    fn record(&self, rows: Vec<Stored>) {
        self.written.lock().expect("written rows lock").extend(rows);
    }
}

impl Conn for deadpool_postgres::Client {
    fn prepare_cached(&self, sql: &str) -> impl Future<Output = Result<Statement, tokio_postgres::Error>> + Send {
        deadpool_postgres::ClientWrapper::prepare_cached(self, sql)
    }
    fn query(
        &self,
        stmt: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>> + Send {
        tokio_postgres::Client::query(self, stmt, params)
    }
    fn execute(
        &self,
        stmt: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<u64, tokio_postgres::Error>> + Send {
        tokio_postgres::Client::execute(self, stmt, params)
    }
}

impl Conn for deadpool_postgres::Transaction<'_> {
    fn prepare_cached(&self, sql: &str) -> impl Future<Output = Result<Statement, tokio_postgres::Error>> + Send {
        deadpool_postgres::Transaction::prepare_cached(self, sql)
    }
    fn query(
        &self,
        stmt: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>> + Send {
        tokio_postgres::Transaction::query(self, stmt, params)
    }
    fn execute(
        &self,
        stmt: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<u64, tokio_postgres::Error>> + Send {
        tokio_postgres::Transaction::execute(self, stmt, params)
    }
}

/// The statements of a table, generated once by [`VersionedTable::new`].
#[derive(Debug, Clone, Default)]
struct Statements {
    upsert: String,
    /// The same, returning every column of the rows it changed.
    upsert_returning: String,
    by_keys: String,
    by_key: String,
    first_page: String,
    next_page: String,
}

/// A table of keyed, versioned rows: `(<key>..., <values>..., <version>,
/// updated_at)`, primary key `(<key>...)`. See the module doc.
#[derive(Debug, Clone)]
pub struct VersionedTable {
    table: &'static str,
    key: Vec<Column>,
    values: Vec<Column>,
    version: Version,
    sql: Statements,
}

/// Plain lowercase identifiers only: names are spliced into SQL.
fn identifier(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
}

impl VersionedTable {
    /// Declares a table and generates its statements.
    ///
    /// # Panics
    /// On a declaration that cannot be right (a bug, found by the first test
    /// that touches the table): no key, a name that is not a plain
    /// identifier, a column named twice, a `BYTEA` key or cached column, a version
    /// column declared among the others.
    pub fn new(table: &'static str, key: Vec<Column>, values: Vec<Column>, version: Version) -> Self {
        assert!(!key.is_empty(), "{table}: a versioned table needs a key");
        assert!(identifier(table), "`{table}` is not a plain identifier");
        let mut names: Vec<&str> = key.iter().chain(&values).map(|c| c.name).collect();
        names.extend([version.column(), "updated_at"]);
        for name in &names {
            assert!(identifier(name), "{table}: `{name}` is not a plain identifier");
        }
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "{table}: a column named twice");
        for c in &key {
            assert!(c.ty != ColumnType::Bytea, "{table}.{}: a key is never bytes (it names a Redis key)", c.name);
        }
        for c in key.iter().chain(&values) {
            assert!(!(c.ty == ColumnType::Bytea && c.cached_as.is_some()), "{table}.{}: bytes are not cached", c.name);
        }
        let mut declared = VersionedTable { table, key, values, version, sql: Statements::default() };
        declared.sql = declared.statements();
        declared
    }

    pub fn name(&self) -> &'static str {
        self.table
    }

    pub fn key(&self) -> &[Column] {
        &self.key
    }

    pub fn values(&self) -> &[Column] {
        &self.values
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// The columns kept in the Redis copy of a row, in declaration order
    /// (keys first): the hash's fields after the version.
    pub fn cached(&self) -> impl Iterator<Item = &Column> {
        self.key.iter().chain(&self.values).filter(|c| c.cached_as.is_some())
    }

    /// The columns a written row carries: the key, the values, and the offset of an offset-versioned table.
    fn written(&self) -> Vec<Column> {
        let mut cols: Vec<Column> = self.key.iter().chain(&self.values).copied().collect();
        if let Version::Offset(offset) = self.version {
            cols.push(Column::new(offset, ColumnType::BigInt));
        }
        cols
    }

    /// `t.c` or `t.c::text AS c`, for every column read back.
    fn select_list(&self) -> String {
        let t = self.table;
        let mut cols: Vec<String> = self
            .key
            .iter()
            .chain(&self.values)
            .map(|c| {
                if c.ty.read_as_text() {
                    format!("{t}.{n}::text AS {n}", n = c.name)
                } else {
                    format!("{t}.{}", c.name)
                }
            })
            .collect();
        cols.push(format!("{t}.{}", self.version.column()));
        cols.join(", ")
    }

    fn key_names(&self, qualified: bool) -> String {
        let prefix = if qualified { format!("{}.", self.table) } else { String::new() };
        self.key.iter().map(|c| format!("{prefix}{}", c.name)).collect::<Vec<_>>().join(", ")
    }

    /// `(<t.key>...)` compared with a row of scalar parameters from `$first` on.
    fn key_params(&self, first: usize) -> String {
        let params: Vec<String> = self
            .key
            .iter()
            .enumerate()
            .map(|(i, c)| format!("${}::{}{}", first + i, c.ty.param(), c.ty.cast()))
            .collect();
        params.join(", ")
    }

    /// Selects the rows whose key is among arrays of parameters from `$first` on.
    fn keys_in_arrays(&self, first: usize) -> String {
        match self.key.as_slice() {
            [k] => format!("{}.{} = ANY(${first}::{}[]{})", self.table, k.name, k.ty.param(), array_cast(k.ty)),
            _ => format!("({}) IN ({})", self.key_names(true), unnest(&self.key, first)),
        }
    }

    fn statements(&self) -> Statements {
        let t = self.table;
        let written = self.written();
        let insert_cols = written.iter().map(|c| c.name).collect::<Vec<_>>().join(", ");
        let set_values: Vec<String> = self.values.iter().map(|c| format!("{n} = EXCLUDED.{n}", n = c.name)).collect();
        let upsert = match self.version {
            Version::Offset(offset) => {
                let set: Vec<String> = set_values
                    .iter()
                    .cloned()
                    .chain([format!("{offset} = EXCLUDED.{offset}"), "updated_at = now()".to_owned()])
                    .collect();
                format!(
                    "INSERT INTO {t} ({insert_cols}) {source} ON CONFLICT ({key}) DO UPDATE SET {set} WHERE {t}.{offset} < EXCLUDED.{offset}",
                    source = unnest(&written, 1),
                    key = self.key_names(false),
                    set = set.join(", "),
                )
            }
            Version::Counter(version) => counter_upsert(
                self,
                &insert_cols,
                &format!("{}, 1", unnest_columns(&written)),
                &unnest_from(&written, 1),
                version,
            ),
        };
        let select = format!("SELECT {} FROM {t}", self.select_list());
        let key_eq: Vec<String> = self
            .key
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{t}.{} = ${}::{}{}", c.name, i + 1, c.ty.param(), c.ty.cast()))
            .collect();
        // Ordered by the qualified key columns: an alias of the same name
        // (`key::text AS key`) would sort the whole table as text.
        // A page scans up to $2 rows in key order but returns only those changed, and its
        // last (where the next page starts): after a clean stop nearly every row scanned is
        // unchanged, and is neither sent nor decoded. `scanned` numbers the rows scanned.
        let page = format!(
            "WITH page AS (SELECT {}, {t}.updated_at >= $1 AS changed, row_number() OVER (ORDER BY {keys}) AS scanned FROM {t}",
            self.select_list(),
            keys = self.key_names(true)
        );
        let order = format!(
            "ORDER BY {} LIMIT $2) SELECT * FROM page WHERE changed OR scanned = (SELECT max(scanned) FROM page) ORDER BY scanned",
            self.key_names(true)
        );
        Statements {
            upsert_returning: format!("{upsert} RETURNING {}", self.select_list()),
            upsert,
            by_keys: format!("{select} WHERE {}", self.keys_in_arrays(1)),
            by_key: format!("{select} WHERE {}", key_eq.join(" AND ")),
            first_page: format!("{page} {order}"),
            next_page: format!("{page} WHERE ({}) > ({}) {order}", self.key_names(true), self.key_params(3)),
        }
    }

    /// The guarded batch upsert, for tests and docs.
    pub fn upsert_sql(&self) -> &str {
        &self.sql.upsert
    }

    /// The read of the rows of a batch's keys, for tests and docs.
    pub fn by_keys_sql(&self) -> &str {
        &self.sql.by_keys
    }

    /// The point read by key, for tests and docs.
    pub fn by_key_sql(&self) -> &str {
        &self.sql.by_key
    }

    /// The catch-up's pages, first and next, for tests and docs.
    pub fn page_sql(&self) -> (&str, &str) {
        (&self.sql.first_page, &self.sql.next_page)
    }

    /// Writes `rows` (key, values and, if offset-versioned, the offset, by
    /// column name) in one statement, under the table's guard: an
    /// offset-versioned row only moves to a higher offset; a
    /// counter-versioned one changes, and counts one version more, only when
    /// a value differs. Of several rows of one key, the one with the highest
    /// offset (counter: the last) is written (a key twice in one statement
    /// would be an error). Rows are written in key order, so concurrent
    /// writers lock them in one order and never deadlock. On a connection
    /// that records this table ([`WriteTx`]) the rows it changed are returned
    /// by the same statement and kept.
    ///
    /// # Errors
    /// [`PgError::Corrupt`] for a row lacking a column or of another type (a
    /// bug of the caller); [`PgError`] when PostgreSQL fails.
    pub async fn upsert(&self, conn: &impl Conn, rows: Vec<Row>) -> Result<(), PgError> {
        if rows.is_empty() {
            return Ok(());
        }
        let written = self.written();
        let mut latest: BTreeMap<Vec<Value>, Vec<Value>> = BTreeMap::new();
        for row in rows {
            let values = row.into_values_of(&written)?;
            let key = values[..self.key.len()].to_vec();
            let newer = match (self.version, latest.get(&key)) {
                (Version::Offset(_), Some(held)) => values.last() > held.last(),
                _ => true,
            };
            if newer {
                latest.insert(key, values);
            }
        }
        // One array per column, the values moved in (a sketch is not copied again).
        let mut arrays: Vec<Array> = written.iter().map(|c| Array::new(c.ty)).collect();
        for values in latest.into_values() {
            for (array, value) in arrays.iter_mut().zip(values) {
                array.push(value);
            }
        }
        let params: Vec<&(dyn ToSql + Sync)> = arrays.iter().map(Array::as_param).collect();
        if conn.records(self.table) {
            let stmt = conn.prepare_cached(&self.sql.upsert_returning).await?;
            let changed = conn.query(&stmt, &params).await?;
            conn.record(changed.iter().map(|r| self.stored(r)).collect::<Result<_, _>>()?);
        } else {
            let stmt = conn.prepare_cached(&self.sql.upsert).await?;
            conn.execute(&stmt, &params).await?;
        }
        Ok(())
    }

    /// The stored rows of `keys` (each a row of the key columns), in no particular order.
    ///
    /// # Errors
    /// [`PgError`] when PostgreSQL fails or a key lacks a column.
    pub async fn read_keys(&self, conn: &impl Conn, keys: &[Row]) -> Result<Vec<Stored>, PgError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<Vec<Value>> = keys.iter().map(|k| k.values_of(&self.key)).collect::<Result<_, _>>()?;
        let arrays: Vec<Array> =
            self.key.iter().enumerate().map(|(i, c)| Array::collect(c.ty, keys.iter().map(|k| &k[i]))).collect();
        let params: Vec<&(dyn ToSql + Sync)> = arrays.iter().map(Array::as_param).collect();
        let stmt = conn.prepare_cached(&self.sql.by_keys).await?;
        conn.query(&stmt, &params).await?.iter().map(|r| self.stored(r)).collect()
    }

    /// The stored row of `key` (a row of the key columns), if any.
    ///
    /// # Errors
    /// [`PgError`] when PostgreSQL fails or the key lacks a column.
    pub async fn read(&self, conn: &impl Conn, key: &Row) -> Result<Option<Stored>, PgError> {
        let key = key.values_of(&self.key)?;
        let scalars: Vec<Scalar> = key.iter().map(Scalar::of).collect();
        let params: Vec<&(dyn ToSql + Sync)> = scalars.iter().map(Scalar::as_param).collect();
        let stmt = conn.prepare_cached(&self.sql.by_key).await?;
        conn.query(&stmt, &params).await?.first().map(|r| self.stored(r)).transpose()
    }

    /// One page in key order for the materializer's catch-up of Redis: at
    /// most `limit` rows after `after` (a row of the key columns; from the
    /// first when `None`), those changed since `since` (PostgreSQL's clock)
    /// and the last one scanned (marked whether it changed), with how many
    /// were scanned. One range scan of the primary key.
    ///
    /// # Errors
    /// [`PgError`] when PostgreSQL fails.
    pub async fn page(
        &self,
        conn: &impl Conn,
        since: SystemTime,
        after: Option<&Row>,
        limit: i64,
    ) -> Result<(Vec<(Stored, bool)>, usize), PgError> {
        let after = after.map(|k| k.values_of(&self.key)).transpose()?;
        let scalars: Vec<Scalar> = after.iter().flatten().map(Scalar::of).collect();
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&since, &limit];
        params.extend(scalars.iter().map(Scalar::as_param));
        let sql = if after.is_some() { &self.sql.next_page } else { &self.sql.first_page };
        let stmt = conn.prepare_cached(sql).await?;
        let rows = conn.query(&stmt, &params).await?;
        let scanned = match rows.last() {
            Some(r) => usize::try_from(r.try_get::<_, i64>("scanned")?).unwrap_or(0),
            None => 0,
        };
        let rows = rows
            .iter()
            .map(|r| Ok((self.stored(r)?, r.try_get::<_, bool>("changed")?)))
            .collect::<Result<Vec<_>, PgError>>()?;
        Ok((rows, scanned))
    }

    /// A row as read back: every key and value column, by name, and the version.
    fn stored(&self, r: &tokio_postgres::Row) -> Result<Stored, PgError> {
        let row = Row::read(r, self.key.iter().chain(&self.values))?;
        Ok(Stored { row, version: r.try_get(self.version.column())? })
    }

    /// The Redis hash values of a row's cached columns, in [`Self::cached`] order.
    ///
    /// # Errors
    /// [`PgError::Corrupt`] when the row lacks a cached column (a bug of its `to_row`).
    pub fn to_cache(&self, row: &Row) -> Result<Vec<String>, PgError> {
        Ok(row.values_of(self.cached())?.iter().map(Value::to_cache).collect())
    }

    /// The row of the Redis hash values in [`Self::cached`] order; `None` if one is malformed.
    pub fn from_cache(&self, values: &[String]) -> Option<Row> {
        let cached: Vec<&Column> = self.cached().collect();
        if cached.len() != values.len() {
            return None;
        }
        let mut row = Row::new();
        for (c, text) in cached.into_iter().zip(values) {
            row.set(c.name, Value::from_cache(c.ty, text)?);
        }
        Some(row)
    }

    /// The Redis key segment of a key (a row of the key columns): its values joined by `:`.
    ///
    /// # Errors
    /// [`PgError::Corrupt`] when the key lacks a column.
    pub fn cache_key(&self, key: &Row) -> Result<String, PgError> {
        Ok(key.values_of(&self.key)?.iter().map(Value::to_cache).collect::<Vec<_>>().join(":"))
    }
}

/// A row as a table holds it, with its version.
pub type Stored = super::Versioned<Row>;

/// `::uuid[]` after a `text[]` parameter of uuid keys, and so on.
fn array_cast(ty: ColumnType) -> String {
    match ty.cast() {
        "" => String::new(),
        cast => format!("{cast}[]"),
    }
}

/// `u.c0[::cast], u.c1, ...`: the columns of [`unnest_from`], cast to their types.
fn unnest_columns(columns: &[Column]) -> String {
    columns.iter().enumerate().map(|(i, c)| format!("u.c{i}{}", c.ty.cast())).collect::<Vec<_>>().join(", ")
}

/// `FROM unnest($first::type[], ...) AS u(c0, c1, ...)`.
fn unnest_from(columns: &[Column], first: usize) -> String {
    let arrays: Vec<String> =
        columns.iter().enumerate().map(|(i, c)| format!("${}::{}[]", first + i, c.ty.param())).collect();
    let names: Vec<String> = (0..columns.len()).map(|i| format!("c{i}")).collect();
    format!("FROM unnest({}) AS u({})", arrays.join(", "), names.join(", "))
}

/// `SELECT u.c0::uuid, ... FROM unnest(...) AS u(...)`.
fn unnest(columns: &[Column], first: usize) -> String {
    format!("SELECT {} {}", unnest_columns(columns), unnest_from(columns, first))
}

/// The counter-versioned upsert of `insert_cols` from `select ... from`:
/// 1 on insert, one more on a change of a value, nothing otherwise.
fn counter_upsert(t: &VersionedTable, insert_cols: &str, select: &str, from: &str, version: &str) -> String {
    let table = t.table;
    let key = t.key_names(false);
    if t.values.is_empty() {
        return format!(
            "INSERT INTO {table} ({insert_cols}, {version}) SELECT {select} {from} ON CONFLICT ({key}) DO NOTHING"
        );
    }
    let set: Vec<String> = t.values.iter().map(|c| format!("{n} = EXCLUDED.{n}", n = c.name)).collect();
    let current: Vec<String> = t.values.iter().map(|c| format!("{table}.{}", c.name)).collect();
    let excluded: Vec<String> = t.values.iter().map(|c| format!("EXCLUDED.{}", c.name)).collect();
    format!(
        "INSERT INTO {table} ({insert_cols}, {version}) SELECT {select} {from} ON CONFLICT ({key}) DO UPDATE SET {set}, {version} = {table}.{version} + 1, updated_at = now() WHERE ({current}) IS DISTINCT FROM ({excluded})",
        set = set.join(", "),
        current = current.join(", "),
        excluded = excluded.join(", "),
    )
}

/// Per key of a counter-versioned table, the sums of the same-named columns
/// of another table over its rows of that key — e.g. an hour's totals as the
/// sum of its per-partition rows — written under the counter's guard (the
/// version moves only when a sum changes).
#[derive(Debug, Clone)]
pub struct Rollup {
    sql: String,
    /// The same, returning every column of the target rows it changed.
    sql_returning: String,
}

impl Rollup {
    /// Sums `source` into `target`: every key and value column of `target`
    /// is a column of `source` (values `BIGINT`), and `target` is counter-versioned.
    ///
    /// # Panics
    /// On a declaration that cannot be right (a bug): see above.
    pub fn new(target: &VersionedTable, source: &VersionedTable) -> Self {
        let Version::Counter(version) = target.version else {
            panic!("{}: a rollup's target is counter-versioned", target.table);
        };
        let has = |c: &Column| source.key.iter().chain(&source.values).any(|s| s.name == c.name && s.ty == c.ty);
        for c in target.key.iter().chain(&target.values) {
            assert!(has(c), "{}.{}: not a column of {}", target.table, c.name, source.table);
        }
        for c in &target.values {
            assert_eq!(c.ty, ColumnType::BigInt, "{}.{}: rollups sum bigints", target.table, c.name);
        }
        let s = source.table;
        let keys = target.key.iter().map(|c| format!("{s}.{}", c.name)).collect::<Vec<_>>().join(", ");
        let sums = target.values.iter().map(|c| format!("sum({s}.{n})::bigint", n = c.name)).collect::<Vec<_>>();
        let select = [keys.clone()].into_iter().chain(sums).chain(["1".to_owned()]).collect::<Vec<_>>().join(", ");
        let filter = match target.key.as_slice() {
            [k] => format!("{s}.{} = ANY($1::{}[]{})", k.name, k.ty.param(), array_cast(k.ty)),
            _ => format!("({keys}) IN ({})", unnest(&target.key, 1)),
        };
        let insert_cols = target.key.iter().chain(&target.values).map(|c| c.name).collect::<Vec<_>>().join(", ");
        let sql =
            counter_upsert(target, &insert_cols, &select, &format!("FROM {s} WHERE {filter} GROUP BY {keys}"), version);
        let sql_returning = format!("{sql} RETURNING {}", target.select_list());
        Rollup { sql, sql_returning }
    }

    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// Re-sums the rows of `keys` (rows of the target's key columns, by name).
    /// Concurrent writers of one key must serialise (e.g. advisory locks taken
    /// in key order) so that each sums what the other committed. On a
    /// connection that records the target ([`WriteTx`]) the target rows it
    /// changed are returned by the same statement and kept.
    ///
    /// # Errors
    /// [`PgError`] when PostgreSQL fails or a key lacks a column.
    pub async fn apply(&self, target: &VersionedTable, conn: &impl Conn, keys: &[Row]) -> Result<(), PgError> {
        if keys.is_empty() {
            return Ok(());
        }
        let keys: Vec<Vec<Value>> = keys.iter().map(|k| k.values_of(&target.key)).collect::<Result<_, _>>()?;
        let arrays: Vec<Array> =
            target.key.iter().enumerate().map(|(i, c)| Array::collect(c.ty, keys.iter().map(|k| &k[i]))).collect();
        let params: Vec<&(dyn ToSql + Sync)> = arrays.iter().map(Array::as_param).collect();
        if conn.records(target.table) {
            let stmt = conn.prepare_cached(&self.sql_returning).await?;
            let changed = conn.query(&stmt, &params).await?;
            conn.record(changed.iter().map(|r| target.stored(r)).collect::<Result<_, _>>()?);
        } else {
            let stmt = conn.prepare_cached(&self.sql).await?;
            conn.execute(&stmt, &params).await?;
        }
        Ok(())
    }
}

/// Takes the transaction-scoped advisory locks `(space, key)` of `keys` in
/// ascending order (so two writers never deadlock); held until commit.
///
/// # Errors
/// [`PgError`] when PostgreSQL fails.
pub async fn lock_in_order(conn: &impl Conn, space: i32, keys: &[i32]) -> Result<(), PgError> {
    let mut keys = keys.to_vec();
    keys.sort_unstable();
    keys.dedup();
    let stmt = conn.prepare_cached("SELECT pg_advisory_xact_lock($1, $2)").await?;
    for key in &keys {
        conn.execute(&stmt, &[&space, key]).await?;
    }
    Ok(())
}

/// One parameter array of a batch statement.
enum Array {
    BigInt(Vec<i64>),
    Int(Vec<i32>),
    Text(Vec<String>),
    Bytes(Vec<Vec<u8>>),
}

impl Array {
    fn new(ty: ColumnType) -> Array {
        match ty {
            ColumnType::BigInt => Array::BigInt(Vec::new()),
            ColumnType::Int => Array::Int(Vec::new()),
            ColumnType::Uuid | ColumnType::Numeric | ColumnType::Text => Array::Text(Vec::new()),
            ColumnType::Bytea => Array::Bytes(Vec::new()),
        }
    }

    /// Appends a value (checked against the column's type by [`Row::values_of`]).
    fn push(&mut self, value: Value) {
        match (self, value) {
            (Array::BigInt(a), Value::BigInt(v)) => a.push(v),
            (Array::Int(a), Value::Int(v)) => a.push(v),
            (Array::Text(a), Value::Text(v)) => a.push(v),
            (Array::Bytes(a), Value::Bytes(v)) => a.push(v),
            _ => unreachable!("values are checked against their column's type"),
        }
    }

    /// The array of column type `ty` of `values`.
    fn collect<'v>(ty: ColumnType, values: impl Iterator<Item = &'v Value>) -> Array {
        let mut array = Array::new(ty);
        for v in values {
            array.push(v.clone());
        }
        array
    }

    fn as_param(&self) -> &(dyn ToSql + Sync) {
        match self {
            Array::BigInt(a) => a,
            Array::Int(a) => a,
            Array::Text(a) => a,
            Array::Bytes(a) => a,
        }
    }
}

/// One scalar parameter (a key's value).
enum Scalar {
    BigInt(i64),
    Int(i32),
    Text(String),
    Bytes(Vec<u8>),
}

impl Scalar {
    fn of(v: &Value) -> Scalar {
        match v {
            Value::BigInt(v) => Scalar::BigInt(*v),
            Value::Int(v) => Scalar::Int(*v),
            Value::Text(v) => Scalar::Text(v.clone()),
            Value::Bytes(v) => Scalar::Bytes(v.clone()),
        }
    }

    fn as_param(&self) -> &(dyn ToSql + Sync) {
        match self {
            Scalar::BigInt(v) => v,
            Scalar::Int(v) => v,
            Scalar::Text(v) => v,
            Scalar::Bytes(v) => v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sums() -> VersionedTable {
        VersionedTable::new(
            "increments",
            vec![Column::new("key", ColumnType::Uuid)],
            vec![Column::new("value", ColumnType::Numeric).cached_as("s"), Column::new("partition", ColumnType::Int)],
            Version::Offset("input_offset"),
        )
    }

    fn partitions() -> VersionedTable {
        VersionedTable::new(
            "parts",
            vec![Column::new("hour_start_ms", ColumnType::BigInt), Column::new("partition", ColumnType::Int)],
            vec![Column::new("clicks", ColumnType::BigInt), Column::new("watermark_ms", ColumnType::BigInt)],
            Version::Offset("input_offset"),
        )
    }

    fn totals() -> VersionedTable {
        VersionedTable::new(
            "totals",
            vec![Column::new("hour_start_ms", ColumnType::BigInt)],
            vec![Column::new("clicks", ColumnType::BigInt).cached_as("c")],
            Version::Counter("version"),
        )
    }

    #[test]
    fn the_offset_guard_lets_only_a_higher_offset_replace_a_row() {
        assert_eq!(
            sums().upsert_sql(),
            "INSERT INTO increments (key, value, partition, input_offset) \
             SELECT u.c0::uuid, u.c1::numeric, u.c2, u.c3 FROM unnest($1::text[], $2::text[], $3::int[], $4::bigint[]) AS u(c0, c1, c2, c3) \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, partition = EXCLUDED.partition, \
             input_offset = EXCLUDED.input_offset, updated_at = now() \
             WHERE increments.input_offset < EXCLUDED.input_offset"
        );
    }

    #[test]
    fn the_counter_moves_only_when_a_value_changes() {
        assert_eq!(
            totals().upsert_sql(),
            "INSERT INTO totals (hour_start_ms, clicks, version) SELECT u.c0, u.c1, 1 \
             FROM unnest($1::bigint[], $2::bigint[]) AS u(c0, c1) \
             ON CONFLICT (hour_start_ms) DO UPDATE SET clicks = EXCLUDED.clicks, version = totals.version + 1, updated_at = now() \
             WHERE (totals.clicks) IS DISTINCT FROM (EXCLUDED.clicks)"
        );
    }

    #[test]
    fn a_rollup_sums_the_source_rows_of_each_key() {
        assert_eq!(
            Rollup::new(&totals(), &partitions()).sql(),
            "INSERT INTO totals (hour_start_ms, clicks, version) \
             SELECT parts.hour_start_ms, sum(parts.clicks)::bigint, 1 FROM parts \
             WHERE parts.hour_start_ms = ANY($1::bigint[]) GROUP BY parts.hour_start_ms \
             ON CONFLICT (hour_start_ms) DO UPDATE SET clicks = EXCLUDED.clicks, version = totals.version + 1, updated_at = now() \
             WHERE (totals.clicks) IS DISTINCT FROM (EXCLUDED.clicks)"
        );
    }

    #[test]
    fn reads_name_every_column_and_cast_text_kinds_back() {
        let t = sums();
        assert_eq!(
            t.by_key_sql(),
            "SELECT increments.key::text AS key, increments.value::text AS value, increments.partition, increments.input_offset \
             FROM increments WHERE increments.key = $1::text::uuid"
        );
        assert!(t.by_keys_sql().ends_with("WHERE increments.key = ANY($1::text[]::uuid[])"), "{}", t.by_keys_sql());
        let p = partitions();
        assert!(
            p.by_keys_sql().ends_with(
                "WHERE (parts.hour_start_ms, parts.partition) IN (SELECT u.c0, u.c1 FROM unnest($1::bigint[], $2::int[]) AS u(c0, c1))"
            ),
            "{}",
            p.by_keys_sql()
        );
        assert!(p.by_key_sql().ends_with("WHERE parts.hour_start_ms = $1::bigint AND parts.partition = $2::int"));
    }

    #[test]
    fn pages_go_by_the_qualified_key_in_bounded_steps() {
        let sums = sums();
        let (first, next) = sums.page_sql();
        let rest =
            "LIMIT $2) SELECT * FROM page WHERE changed OR scanned = (SELECT max(scanned) FROM page) ORDER BY scanned";
        assert!(
            first.ends_with(&format!("increments.updated_at >= $1 AS changed, row_number() OVER (ORDER BY increments.key) AS scanned FROM increments ORDER BY increments.key {rest}")),
            "{first}"
        );
        assert!(
            next.ends_with(&format!(
                "FROM increments WHERE (increments.key) > ($3::text::uuid) ORDER BY increments.key {rest}"
            )),
            "{next}"
        );
        let partitions = partitions();
        let (_, next) = partitions.page_sql();
        assert!(next.contains("WHERE (parts.hour_start_ms, parts.partition) > ($3::bigint, $4::int) ORDER BY parts.hour_start_ms, parts.partition LIMIT $2"), "{next}");
    }

    #[test]
    fn cached_columns_round_trip_through_the_hash_by_name() {
        let t = sums();
        let row =
            Row::new().with("value", Value::Text("1180591620717411303424".into())).with("partition", Value::Int(3));
        let hash = t.to_cache(&row).unwrap();
        assert_eq!(hash, vec!["1180591620717411303424".to_owned()]);
        assert_eq!(t.from_cache(&hash), Some(Row::new().with("value", Value::Text("1180591620717411303424".into()))));
        assert_eq!(t.cached().map(|c| c.cached_as.unwrap()).collect::<Vec<_>>(), ["s"]);
        assert_eq!(totals().from_cache(&["x".into()]), None, "not a bigint");
        assert_eq!(totals().from_cache(&[]), None, "a field missing");
        assert!(t.to_cache(&Row::new()).is_err());
        let key = Row::new().with("hour_start_ms", Value::BigInt(7_200_000)).with("partition", Value::Int(2));
        assert_eq!(partitions().cache_key(&key).unwrap(), "7200000:2");
    }

    #[test]
    fn a_value_of_another_type_is_refused() {
        let row = Row::new().with("key", Value::BigInt(1));
        assert!(row.values_of(sums().key()).is_err());
        assert!(Row::new().with("c", Value::BigInt(-1)).count("c").is_err());
    }

    #[test]
    #[should_panic(expected = "not a plain identifier")]
    fn a_name_is_checked_before_it_is_spliced_into_sql() {
        VersionedTable::new("t; drop", vec![Column::new("k", ColumnType::BigInt)], vec![], Version::Counter("v"));
    }

    #[test]
    #[should_panic(expected = "bytes are not cached")]
    fn bytes_are_postgres_only() {
        VersionedTable::new(
            "t",
            vec![Column::new("k", ColumnType::BigInt)],
            vec![Column::new("b", ColumnType::Bytea).cached_as("b")],
            Version::Counter("v"),
        );
    }
}
