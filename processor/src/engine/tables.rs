//! The storage a workload declares and the engine owns: keyed rows
//! ([`RowTable`]) and chunked sets of 64-bit hashes ([`ChunkTable`]), per
//! events partition.
//!
//! A workload reads and writes them only through a [`StateTx`], inside the
//! engine's claim or checkpoint transaction; it writes no SQL and reads
//! columns by name ([`Row::big_int`], [`Row::text`]), never by position.
//! Columns, values and rows are the read model's ([`common::engine::store`]):
//! one definition of a named row and its typed getters for both. The
//! engine implements [`StateTx`] for PostgreSQL (the SQL is generated from
//! the declaration, [`state_store`](super::state_store)) and in memory (for
//! the deterministic simulation, `engine::sim`).

use std::collections::HashMap;
use std::future::Future;

use common::engine::pg::PgError;
pub use common::engine::store::bulk::{BulkTable, Duplicate, ReadLease};
use common::engine::store::{Cells, Column, CopyText, Row, Value};

use super::Scope;

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

/// The workload's view of the engine's transaction: its declared tables of
/// one partition. Every call is part of the claim or checkpoint transaction,
/// so it commits (or not) together with the partition's position and epoch.
pub trait StateTx: Send {
    /// Reads every row of `table` of the partition, in no particular order,
    /// handing them over in chunks as they arrive: a claim restores a
    /// partition of any size holding one chunk of rows at a time. In
    /// PostgreSQL one binary `COPY` of the partition, in the claim's
    /// transaction (its snapshot, under its epoch).
    fn read_rows<F>(
        &mut self,
        table: &RowTable,
        scope: Scope<'_>,
        each_chunk: F,
    ) -> impl Future<Output = Result<(), PgError>> + Send
    where
        F: FnMut(Vec<Row>) -> Result<(), PgError> + Send;

    /// Reads every row of `table` of the partition as [`StateTx::read_rows`]
    /// does, lending each row's cells to `each` instead of handing rows over:
    /// nothing is allocated per row (a restore of ten million rows spent a
    /// fifth of its CPU allocating and freeing them; docs/benchmarks-notes.md,
    /// "A claim that lends its rows").
    fn read_cells<F>(
        &mut self,
        table: &RowTable,
        scope: Scope<'_>,
        each: F,
    ) -> impl Future<Output = Result<(), PgError>> + Send
    where
        F: FnMut(&dyn Cells) -> Result<(), PgError> + Send;

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

    /// Creates `generation`'s storage in `table` (its own table, no key yet)
    /// and registers the generation; does nothing if both exist (a replay).
    fn create_generation(
        &mut self,
        table: &BulkTable,
        generation: i64,
    ) -> impl Future<Output = Result<(), PgError>> + Send;

    /// Copies rows given as `COPY` text (lines of
    /// [`BulkTable::push_copy_row`]) into `generation`'s storage; returns how
    /// many. For a workload that buffers its rows as that text.
    fn copy_text(
        &mut self,
        table: &BulkTable,
        generation: i64,
        text: &CopyText,
    ) -> impl Future<Output = Result<u64, PgError>> + Send;

    /// Copies `rows` into `generation`'s storage (PostgreSQL `COPY`); returns how many.
    fn copy_rows(
        &mut self,
        table: &BulkTable,
        generation: i64,
        rows: &[Row],
    ) -> impl Future<Output = Result<u64, PgError>> + Send;

    /// Records that `partition` loaded `rows` rows of `generation`, and returns
    /// every partition's report so far, sorted by partition. The generation's
    /// registration is locked first (`SELECT … FOR UPDATE`): two partitions
    /// reporting at once are serialized, so the later one sees the earlier's
    /// report and the last one to report always sees them all.
    fn report_partition(
        &mut self,
        table: &BulkTable,
        generation: i64,
        partition: i32,
        rows: i64,
    ) -> impl Future<Output = Result<Vec<(i32, i64)>, PgError>> + Send;

    /// Keys `generation`'s storage by the table's key; returns a key held by
    /// more than one row instead (nothing keyed then): with the table's
    /// origin column, the one repeated first in the source, and where.
    fn seal_generation(
        &mut self,
        table: &BulkTable,
        generation: i64,
    ) -> impl Future<Output = Result<Option<Duplicate>, PgError>> + Send;

    /// The generation readers of `table` read, if any.
    fn active_generation(&mut self, table: &BulkTable) -> impl Future<Output = Result<Option<i64>, PgError>> + Send;

    /// Makes `generation` the one readers read, visible to them once every
    /// lease on the pointer before it ended (`lease`: the lease and skew
    /// bound readers follow, [`common::engine::store::bulk::decide`]); returns
    /// the one it replaces. Waits first until the previous switch is visible.
    fn activate_generation(
        &mut self,
        table: &BulkTable,
        generation: i64,
        lease: ReadLease,
    ) -> impl Future<Output = Result<Option<i64>, PgError>> + Send;

    /// The generations of `table` whose storage exists (created and not
    /// dropped), oldest first: what a switch may drop of those it leaves behind.
    fn bulk_generations(&mut self, table: &BulkTable) -> impl Future<Output = Result<Vec<i64>, PgError>> + Send;

    /// Drops `generation`'s storage, registration and reports (a replaced or failed one).
    fn drop_generation(
        &mut self,
        table: &BulkTable,
        generation: i64,
    ) -> impl Future<Output = Result<(), PgError>> + Send;
}
