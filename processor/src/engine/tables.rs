//! The storage a workload declares and the engine owns: keyed rows
//! ([`RowTable`]) and chunked sets of 64-bit hashes ([`ChunkTable`]), per
//! events partition.
//!
//! A workload reads and writes them only through a [`StateTx`], inside the
//! engine's claim or checkpoint transaction; it writes no SQL and reads
//! columns by name ([`Row::int`], [`Row::text`]), never by position. The
//! engine implements [`StateTx`] for PostgreSQL (the SQL is generated from
//! the declaration, [`state_store`](super::state_store)) and in memory (for
//! the deterministic simulation, `engine::sim`).

use std::collections::HashMap;
use std::future::Future;

use common::engine::pg::PgError;

use super::Scope;

/// A column's PostgreSQL type. `Uuid` and `Numeric` values travel as text
/// ([`Value::Text`]) and are cast by the generated SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    BigInt,
    Uuid,
    Numeric,
}

impl ColumnType {
    /// The array type a parameter of this column is sent as.
    pub(crate) fn param_array(self) -> &'static str {
        match self {
            ColumnType::BigInt => "bigint[]",
            ColumnType::Uuid | ColumnType::Numeric => "text[]",
        }
    }

    /// The cast from the parameter's element type to the column's.
    pub(crate) fn cast(self) -> &'static str {
        match self {
            ColumnType::BigInt => "",
            ColumnType::Uuid => "::uuid",
            ColumnType::Numeric => "::numeric",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    pub ty: ColumnType,
}

/// A table of rows keyed per partition:
/// `(topic, partition, <key>, <values>...)`, primary key `(topic, partition, <key>)`.
#[derive(Debug, Clone)]
pub struct RowTable {
    pub table: &'static str,
    pub key: Column,
    pub values: Vec<Column>,
}

impl RowTable {
    /// Every column, the key first.
    pub fn columns(&self) -> impl Iterator<Item = &Column> {
        std::iter::once(&self.key).chain(&self.values)
    }
}

/// A table of hash chunks: `(topic, partition, hour_start_ms, seq, <column> BYTEA)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkTable {
    pub table: &'static str,
    pub column: &'static str,
}

/// One value of a row: `BigInt` columns are `Int`, `Uuid` and `Numeric` ones `Text`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Value {
    Int(i64),
    Text(String),
}

/// One row, its values named by column.
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

    /// A `BigInt` column's value.
    ///
    /// # Errors
    /// [`PgError::Corrupt`] when the row has no such integer column.
    pub fn int(&self, column: &str) -> Result<i64, PgError> {
        match self.get(column) {
            Some(Value::Int(v)) => Ok(*v),
            other => Err(PgError::Corrupt(format!("column {column}: {other:?} is not an integer"))),
        }
    }

    /// A `Uuid` or `Numeric` column's value, as text.
    ///
    /// # Errors
    /// [`PgError::Corrupt`] when the row has no such text column.
    pub fn text(&self, column: &str) -> Result<&str, PgError> {
        match self.get(column) {
            Some(Value::Text(v)) => Ok(v),
            other => Err(PgError::Corrupt(format!("column {column}: {other:?} is not text"))),
        }
    }

    /// The value of `column`, or `None`.
    pub(crate) fn value(&self, column: &Column) -> Option<&Value> {
        self.get(column.name)
    }
}

/// The workload's view of the engine's transaction: its declared tables of
/// one partition. Every call is part of the claim or checkpoint transaction,
/// so it commits (or not) together with the partition's position and epoch.
pub trait StateTx: Send {
    /// Reads every row of `table` of the partition, handing them over in
    /// pages (a claim restores a partition of any size with bounded fetches).
    fn read_rows<F>(
        &mut self,
        table: &RowTable,
        scope: Scope<'_>,
        each_page: F,
    ) -> impl Future<Output = Result<(), PgError>> + Send
    where
        F: FnMut(Vec<Row>) -> Result<(), PgError> + Send;

    /// Inserts or replaces rows by key, in the order given (sorted keys lock in one order).
    fn upsert_rows(
        &mut self,
        table: &RowTable,
        scope: Scope<'_>,
        rows: &[Row],
    ) -> impl Future<Output = Result<(), PgError>> + Send;

    /// Deletes the rows of `keys`.
    fn delete_rows(
        &mut self,
        table: &RowTable,
        scope: Scope<'_>,
        keys: &[Value],
    ) -> impl Future<Output = Result<(), PgError>> + Send;

    /// Every chunk of the partition, per hour, in write order.
    fn read_chunks(
        &mut self,
        table: ChunkTable,
        scope: Scope<'_>,
    ) -> impl Future<Output = Result<HashMap<i64, Vec<Vec<u8>>>, PgError>> + Send;

    /// Appends one chunk per hour (`hours[i]` gets `blobs[i]`).
    fn insert_chunks(
        &mut self,
        table: ChunkTable,
        scope: Scope<'_>,
        hours: &[i64],
        blobs: &[Vec<u8>],
    ) -> impl Future<Output = Result<(), PgError>> + Send;

    /// Replaces an hour's chunks by one, their concatenation in write order.
    fn merge_chunks(
        &mut self,
        table: ChunkTable,
        scope: Scope<'_>,
        hour: i64,
    ) -> impl Future<Output = Result<(), PgError>> + Send;

    /// Deletes the chunks of `hours`.
    fn delete_chunks(
        &mut self,
        table: ChunkTable,
        scope: Scope<'_>,
        hours: &[i64],
    ) -> impl Future<Output = Result<(), PgError>> + Send;
}
