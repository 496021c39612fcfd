//! The processor's state store in PostgreSQL: the engine's part.
//!
//! Per events partition: the position (`next_offset`, watermark), the
//! fencing `epoch`, the event ids held for deduplication and the outbox (the
//! records of checkpoints whose Kafka transaction is not known committed). A
//! checkpoint writes them and the workload's own rows
//! ([`Aggregation::persist`]) in one transaction, so the state, the offset it
//! reflects and the records it emits are always committed together. Each claim of a partition bumps its `epoch`; a checkpoint only
//! commits under the writer's own epoch, so an instance that lost the
//! partition can no longer write.
//!
//! Sets of 8-byte hashes (ids here, a workload's user sets) are stored as
//! append-only chunks per hour ([`append_chunks`]): each checkpoint adds what
//! is new, and an hour's chunks are merged into one once it has many.

use std::collections::HashMap;
use std::future::Future;

use common::engine::pg::PgError;
use deadpool_postgres::{Pool, Transaction};
use tokio_postgres::binary_copy::BinaryCopyOutRow;
use tokio_postgres::types::{ToSql, Type};

use super::dedup::IdWindow;
pub use super::tables::ChunkTable;
use super::tables::{BulkTable, Duplicate, ReadLease, RowTable, StateTx};
use super::{Aggregation, Emit, Position, Scope};
use common::engine::store::{Cells, Column, ColumnType, CopyText, Row, Value};

/// Rows one statement of a checkpoint writes at most (a checkpoint of more
/// uses several): each statement stays well within the statement timeout.
pub const ROWS_PER_STATEMENT: usize = 10_000;

/// Rows a claim hands to the workload's restore at a time ([`StateTx::read_rows`]).
const RESTORE_CHUNK: usize = 10_000;

/// Chunks an hour may have before they are merged into one.
const MAX_CHUNKS_PER_HOUR: u32 = 64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another instance claimed the partition since we did: drop our state.
    #[error("partition {0} was claimed by another instance")]
    Fenced(i32),
    #[error(transparent)]
    Pg(#[from] PgError),
}

impl StoreError {
    /// Worth retrying: PostgreSQL unavailable or a transient conflict, not a fence.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Fenced(_) => false,
            StoreError::Pg(e) => e.is_retryable(),
        }
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError::Pg(e.into())
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::Pg(e.into())
    }
}

/// The engine's chunks of event ids.
const ID_CHUNKS: ChunkTable = ChunkTable { table: "processor_id_chunks", column: "ids" };

/// Chunk rows per hour of one chunk table, to merge them when there are many.
pub type ChunkCounts = HashMap<i64, u32>;

/// Packs hashes as 8-byte little-endian words: the chunk format.
pub fn encode_hashes(hashes: &[u64]) -> Vec<u8> {
    hashes.iter().flat_map(|h| h.to_le_bytes()).collect()
}

/// Reads hashes packed by [`encode_hashes`]; a trailing partial word is ignored.
pub fn decode_hashes(bytes: &[u8]) -> impl Iterator<Item = u64> + '_ {
    bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("chunks_exact yields 8 bytes")))
}

/// Every chunk of a partition, per hour, in write order.
///
/// # Errors
/// [`PgError`] when the store cannot answer.
pub async fn read_chunks<T: StateTx>(
    tx: &mut T,
    table: ChunkTable,
    scope: Scope<'_>,
) -> Result<HashMap<i64, Vec<Vec<u8>>>, PgError> {
    tx.read_chunks(table, scope).await
}

/// Appends one chunk per hour with new hashes, and merges the chunks of an
/// hour that reaches [`MAX_CHUNKS_PER_HOUR`], so a restore reads few rows.
/// Returns the hours' chunk counts, to record once the transaction commits.
///
/// # Errors
/// [`PgError`] when the store cannot answer.
pub async fn append_chunks<T: StateTx>(
    tx: &mut T,
    table: ChunkTable,
    scope: Scope<'_>,
    new: &[(i64, &[u64])],
    counts: &ChunkCounts,
) -> Result<Vec<(i64, u32)>, PgError> {
    let (hours, blobs): (Vec<i64>, Vec<Vec<u8>>) =
        new.iter().filter(|(_, h)| !h.is_empty()).map(|(hour, h)| (*hour, encode_hashes(h))).unzip();
    if hours.is_empty() {
        return Ok(Vec::new());
    }
    tx.insert_chunks(table, scope, &hours, &blobs).await?;
    let mut after = Vec::with_capacity(hours.len());
    for h in hours {
        let n = counts.get(&h).copied().unwrap_or(0) + 1;
        if n >= MAX_CHUNKS_PER_HOUR {
            tx.merge_chunks(table, scope, h).await?;
            after.push((h, 1));
        } else {
            after.push((h, n));
        }
    }
    Ok(after)
}

/// Deletes the chunks of closed hours.
///
/// # Errors
/// [`PgError`] when the store cannot answer.
pub async fn delete_chunks<T: StateTx>(
    tx: &mut T,
    table: ChunkTable,
    scope: Scope<'_>,
    hours: &[i64],
) -> Result<(), PgError> {
    if hours.is_empty() {
        return Ok(());
    }
    tx.delete_chunks(table, scope, hours).await
}

/// Records committed chunk counts and forgets closed hours.
pub fn record_chunks(counts: &mut ChunkCounts, added: Vec<(i64, u32)>, closed: &[i64]) {
    counts.extend(added);
    for h in closed {
        counts.remove(h);
    }
}

/// A partition's state as claimed from the store.
pub struct Claimed<S> {
    pub epoch: i64,
    pub position: Position,
    pub ids: IdWindow,
    pub id_chunks: ChunkCounts,
    pub state: S,
    /// The records of checkpoints whose Kafka transaction is not known to
    /// have committed: what a claim re-sends.
    pub outbox: Outbox,
}

/// A partition's outbox as a claim reads it.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Records kept whole (the state cannot render them again), oldest first.
    pub kept: Vec<Emit>,
    /// Keys of records kept without their bytes: rendered from the restored state.
    pub keys: Vec<String>,
    /// The newest input offset among all of them (`None` when there are none).
    pub through: Option<i64>,
}

impl Outbox {
    pub fn len(&self) -> usize {
        self.kept.len() + self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What one checkpoint commits beside the workload's changes.
pub struct EngineCheckpoint<'a> {
    pub position: Position,
    pub epoch: i64,
    /// Event ids first seen since the last committed checkpoint, per bucket ([`IdWindow::new_ids`]).
    pub new_ids: &'a HashMap<i64, Vec<u64>>,
    pub closed_id_hours: &'a [i64],
    pub id_chunks: &'a ChunkCounts,
    /// This checkpoint's records, kept in the outbox until their Kafka transaction commits.
    pub emits: &'a [Emit],
    /// Outbox rows up to this input offset are known to be in the log: deleted.
    pub emitted_through: Option<i64>,
}

/// The engine's own tables in the claim or checkpoint transaction, beside
/// the workload's ([`StateTx`]): the partition's epoch and position, and its outbox.
pub trait EngineTx: StateTx {
    /// Bumps the partition's epoch (a first claim creates it at epoch 1,
    /// position 0) and returns the new epoch with the stored position.
    fn claim_epoch(&mut self, scope: Scope<'_>) -> impl Future<Output = Result<(i64, Position), PgError>> + Send;

    /// Stores `position` if the partition's epoch is still `epoch`; false
    /// (and nothing written) when another claim bumped it.
    fn advance(
        &mut self,
        scope: Scope<'_>,
        epoch: i64,
        position: Position,
    ) -> impl Future<Output = Result<bool, PgError>> + Send;

    /// The partition's outbox: the records kept whole (oldest first), the keys kept alone.
    fn read_outbox(&mut self, scope: Scope<'_>) -> impl Future<Output = Result<Outbox, PgError>> + Send;

    /// Deletes the outbox rows up to input offset `through` (they are in the log).
    fn delete_outbox_through(
        &mut self,
        scope: Scope<'_>,
        through: i64,
    ) -> impl Future<Output = Result<(), PgError>> + Send;

    /// Inserts or replaces outbox rows (one per key) tagged with `input_offset`.
    fn upsert_outbox(
        &mut self,
        scope: Scope<'_>,
        input_offset: i64,
        rows: &[(&str, Option<&[u8]>)],
    ) -> impl Future<Output = Result<(), PgError>> + Send;
}

/// Where the engine keeps each partition's state: PostgreSQL
/// ([`StateStore`]) in production, memory in the simulation. Both run the
/// same transaction bodies ([`claim_in`], [`commit_in`]) over their [`EngineTx`].
pub trait Store: Send + Sync + 'static {
    /// The events topic whose partitions this store keeps.
    fn topic(&self) -> &str;

    /// Takes ownership of a partition (bumping its epoch) and loads its state, in one transaction.
    ///
    /// # Errors
    /// [`StoreError::Pg`] when the store cannot answer.
    fn claim<W: Aggregation>(
        &self,
        workload: &W,
        partition: i32,
        retention_ms: i64,
    ) -> impl Future<Output = Result<Claimed<W::State>, StoreError>> + Send;

    /// Commits a checkpoint under its epoch, in one transaction ([`commit_in`]).
    /// Returns the id chunks appended per hour and the workload's receipt.
    ///
    /// # Errors
    /// [`StoreError::Fenced`] if the partition was claimed by someone else;
    /// [`StoreError::Pg`] otherwise (nothing is written then).
    fn commit<W: Aggregation>(
        &self,
        workload: &W,
        partition: i32,
        cp: EngineCheckpoint<'_>,
        changes: Option<&W::Changes>,
    ) -> impl Future<Output = Result<Committed<W::Receipt>, StoreError>> + Send;
}

/// What a committed checkpoint leaves to record: the id chunks appended per
/// hour, and the workload's receipt if it persisted changes.
pub type Committed<R> = (Vec<(i64, u32)>, Option<R>);

/// The body of a claim, inside the store's transaction.
///
/// # Errors
/// [`StoreError::Pg`] when the store cannot answer.
pub async fn claim_in<W: Aggregation, T: EngineTx>(
    tx: &mut T,
    workload: &W,
    scope: Scope<'_>,
    retention_ms: i64,
) -> Result<Claimed<W::State>, StoreError> {
    let (epoch, position) = tx.claim_epoch(scope).await?;
    let mut ids = IdWindow::with_buckets(W::DEDUP_BUCKET_MS, retention_ms);
    let mut id_chunks = ChunkCounts::new();
    for (hour, chunks) in tx.read_chunks(ID_CHUNKS, scope).await? {
        id_chunks.insert(hour, chunks.len() as u32);
        if !super::planted(super::Planted::IdsNotRestored) {
            ids.restore(hour, chunks.iter().flat_map(|c| decode_hashes(c)));
        }
    }
    let state = workload.restore(tx, scope, position).await?;
    let outbox = tx.read_outbox(scope).await?;
    Ok(Claimed { epoch, position, ids, id_chunks, state, outbox })
}

/// The body of a checkpoint, inside the store's transaction: the position
/// under the epoch first (a fenced writer writes nothing), the new ids (and
/// the closed hours' ids gone), the workload's changes if it has any, and
/// its records to the outbox (with the rows known emitted gone).
///
/// # Errors
/// [`StoreError::Fenced`] if the partition was claimed by someone else;
/// [`StoreError::Pg`] otherwise (the caller must not commit then).
pub async fn commit_in<W: Aggregation, T: EngineTx>(
    tx: &mut T,
    workload: &W,
    scope: Scope<'_>,
    cp: EngineCheckpoint<'_>,
    changes: Option<&W::Changes>,
) -> Result<Committed<W::Receipt>, StoreError> {
    if !tx.advance(scope, cp.epoch, cp.position).await? && !super::planted(super::Planted::NoCheckpointFence) {
        return Err(StoreError::Fenced(scope.partition));
    }
    let new_ids: Vec<(i64, &[u64])> = cp.new_ids.iter().map(|(h, ids)| (*h, ids.as_slice())).collect();
    let ids_added = append_chunks(tx, ID_CHUNKS, scope, &new_ids, cp.id_chunks).await?;
    delete_chunks(tx, ID_CHUNKS, scope, cp.closed_id_hours).await?;
    let receipt = match changes {
        Some(changes) => Some(workload.persist(tx, scope, changes).await?),
        None => None,
    };
    if let Some(through) = cp.emitted_through {
        tx.delete_outbox_through(scope, through).await?;
    }
    if !cp.emits.is_empty() {
        // One row per key: a statement may not upsert a row twice, so the last record of a key wins.
        // The bytes only where the state cannot render the record again.
        let mut newest: HashMap<&str, Option<&[u8]>> = HashMap::with_capacity(cp.emits.len());
        for e in cp.emits {
            newest.insert(&e.key, e.keep_payload.then_some(e.payload.as_slice()));
        }
        let mut rows: Vec<(&str, Option<&[u8]>)> = newest.into_iter().collect();
        rows.sort_unstable_by_key(|(k, _)| *k);
        tx.upsert_outbox(scope, cp.position.next_offset, &rows).await?;
    }
    Ok((ids_added, receipt))
}

/// A claim or checkpoint transaction in PostgreSQL.
pub struct PgTx<'t> {
    tx: &'t Transaction<'t>,
}

impl<'t> PgTx<'t> {
    /// The workload's view of `tx` (tests drive the declared tables through it).
    pub fn new(tx: &'t Transaction<'t>) -> Self {
        PgTx { tx }
    }
}

/// The SQL of a row table's column list, and its reading expression (text for `Uuid`/`Numeric`).
fn select_expr(c: &Column) -> String {
    if c.ty.read_as_text() {
        format!("{0}::text AS {0}", c.name)
    } else {
        c.name.to_owned()
    }
}

/// The binary `COPY` of a partition's rows of `table`, the key first (the columns' order of [`RowTable::columns`]).
/// A `COPY` takes no parameters: the topic is spliced in as a quoted literal.
fn copy_out_sql(table: &RowTable, scope: Scope<'_>) -> String {
    let columns: Vec<String> = table.columns().map(select_expr).collect();
    format!(
        "COPY (SELECT {} FROM {} WHERE topic = {} AND partition = {}) TO STDOUT (FORMAT binary)",
        columns.join(", "),
        table.table,
        sql_literal(scope.topic),
        scope.partition
    )
}

/// `text` as an SQL string literal (standard-conforming strings: only the quote is special).
fn sql_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The type a column is read back as in a binary copy ([`select_expr`] casts `Uuid` and `Numeric` to text).
fn copy_type(ty: ColumnType) -> Type {
    match ty {
        ColumnType::BigInt => Type::INT8,
        ColumnType::Int => Type::INT4,
        ColumnType::Uuid | ColumnType::Numeric | ColumnType::Text => Type::TEXT,
        ColumnType::Bytea => Type::BYTEA,
    }
}

/// One row of a binary copy of `columns` (in that order), its cells read in place by name.
struct CopiedCells<'r> {
    row: &'r BinaryCopyOutRow,
    columns: &'r [Column],
}

impl CopiedCells<'_> {
    fn at(&self, column: &str) -> Result<usize, PgError> {
        self.columns
            .iter()
            .position(|c| c.name == column)
            .ok_or_else(|| PgError::Corrupt(format!("column {column}: not in the copy")))
    }
}

impl Cells for CopiedCells<'_> {
    fn text(&self, column: &str) -> Result<&str, PgError> {
        Ok(self.row.try_get(self.at(column)?)?)
    }

    fn big_int(&self, column: &str) -> Result<i64, PgError> {
        Ok(self.row.try_get(self.at(column)?)?)
    }

    fn int(&self, column: &str) -> Result<i32, PgError> {
        Ok(self.row.try_get(self.at(column)?)?)
    }

    fn bytes(&self, column: &str) -> Result<&[u8], PgError> {
        Ok(self.row.try_get(self.at(column)?)?)
    }
}

/// The array parameter type of a column, e.g. `text[]` for `Uuid`.
fn param_array(ty: ColumnType) -> String {
    format!("{}[]", ty.param())
}

/// The cast from a column's parameter array to its own array type.
fn array_cast(ty: ColumnType) -> String {
    match ty.cast() {
        "" => String::new(),
        cast => format!("{cast}[]"),
    }
}

/// One column's values of `rows`, as one array parameter.
fn column_param(table: &RowTable, c: &Column, rows: &[Row]) -> Result<Box<dyn ToSql + Sync + Send>, PgError> {
    fn collect<T>(
        rows: &[Row],
        c: &Column,
        table: &RowTable,
        pick: impl Fn(&Value) -> Option<T>,
    ) -> Result<Vec<T>, PgError> {
        rows.iter()
            .map(|r| {
                r.get(c.name)
                    .and_then(&pick)
                    .ok_or_else(|| PgError::Corrupt(format!("{}: a row without a valid {}", table.table, c.name)))
            })
            .collect()
    }
    Ok(match c.ty {
        ColumnType::BigInt => Box::new(collect(rows, c, table, |v| match v {
            Value::BigInt(v) => Some(*v),
            _ => None,
        })?),
        ColumnType::Int => Box::new(collect(rows, c, table, |v| match v {
            Value::Int(v) => Some(*v),
            _ => None,
        })?),
        ColumnType::Uuid | ColumnType::Numeric | ColumnType::Text => Box::new(collect(rows, c, table, |v| match v {
            Value::Text(v) => Some(v.clone()),
            _ => None,
        })?),
        ColumnType::Bytea => Box::new(collect(rows, c, table, |v| match v {
            Value::Bytes(v) => Some(v.clone()),
            _ => None,
        })?),
    })
}

/// A seal's settings (`SET LOCAL`: this transaction only). The key's sort memory; and no statement timeout: the
/// connection's (`--pg-timeout`, 5 s) is far shorter than keying millions of rows (25 s for 10M here), and a
/// checkpoint that always times out retries the same seal for ever, the generation never switching.
const SEAL_SETTINGS: &str = "SET LOCAL maintenance_work_mem = '256MB'; SET LOCAL statement_timeout = 0";

impl StateTx for PgTx<'_> {
    async fn create_generation(&mut self, table: &BulkTable, generation: i64) -> Result<(), PgError> {
        self.tx
            .execute(
                "INSERT INTO processor_bulk_generations (bulk_table, generation) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&table.table, &generation],
            )
            .await?;
        self.tx.batch_execute(&table.create_sql(generation)).await?;
        if let Some(add) = table.add_origin_sql(generation) {
            // Only for a table created before its origin column was declared: altering takes a lock that
            // would serialize the partitions' copies, so it is not run when the column is there.
            let origin = table.origin.expect("an origin column, since there is its SQL");
            let has = self
                .tx
                .query_opt(
                    "SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1) AND attname = $2 AND NOT attisdropped",
                    &[&table.generation_table(generation), &origin],
                )
                .await?;
            if has.is_none() {
                self.tx.batch_execute(&add).await?;
            }
        }
        Ok(())
    }

    async fn copy_text(&mut self, table: &BulkTable, generation: i64, text: &CopyText) -> Result<u64, PgError> {
        use futures::SinkExt;
        if text.is_empty() {
            return Ok(0);
        }
        let sink = self.tx.copy_in(table.copy_sql(generation).as_str()).await?;
        let mut sink = std::pin::pin!(sink);
        // The buffer's own blocks, shared: nothing of the text is copied to send it.
        for piece in text.pieces() {
            sink.feed(piece).await?;
        }
        Ok(sink.finish().await?)
    }

    async fn copy_rows(&mut self, table: &BulkTable, generation: i64, rows: &[Row]) -> Result<u64, PgError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let text = table.copy_text(rows)?;
        self.copy_text(table, generation, &CopyText::from(text)).await
    }

    async fn report_partition(
        &mut self,
        table: &BulkTable,
        generation: i64,
        partition: i32,
        rows: i64,
    ) -> Result<Vec<(i32, i64)>, PgError> {
        self.tx
            .execute(
                "INSERT INTO processor_bulk_generations (bulk_table, generation) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&table.table, &generation],
            )
            .await?;
        // The lock that serializes the reports of one generation (released at commit).
        self.tx
            .execute(
                "SELECT 1 FROM processor_bulk_generations WHERE bulk_table = $1 AND generation = $2 FOR UPDATE",
                &[&table.table, &generation],
            )
            .await?;
        self.tx
            .execute(
                "INSERT INTO processor_bulk_reports (bulk_table, generation, partition, rows) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (bulk_table, generation, partition) DO UPDATE SET rows = EXCLUDED.rows",
                &[&table.table, &generation, &partition, &rows],
            )
            .await?;
        let reports = self
            .tx
            .query(
                "SELECT partition, rows FROM processor_bulk_reports WHERE bulk_table = $1 AND generation = $2
                 ORDER BY partition",
                &[&table.table, &generation],
            )
            .await?;
        Ok(reports.iter().map(|r| (r.get("partition"), r.get("rows"))).collect())
    }

    async fn seal_generation(&mut self, table: &BulkTable, generation: i64) -> Result<Option<Duplicate>, PgError> {
        let keyed = self
            .tx
            .query_opt(
                "SELECT 1 FROM pg_constraint WHERE conname = $1 AND conrelid = to_regclass($2)",
                &[&format!("{}_pkey", table.generation_table(generation)), &table.generation_table(generation)],
            )
            .await?;
        if keyed.is_some() {
            return Ok(None);
        }
        // The key's index is built by one sort of every row: in memory up to maintenance_work_mem (64 MB by
        // default, a few million rows), on disk beyond. This transaction's own settings, of the server's memory.
        self.tx.batch_execute(SEAL_SETTINGS).await?;
        // Keying finds a duplicate by itself (a unique violation): no scan of the rows before it. The savepoint
        // keeps the checkpoint's transaction usable when it does; only then is the duplicate looked up.
        self.tx.batch_execute("SAVEPOINT bulk_seal").await?;
        match self.tx.batch_execute(&table.seal_sql(generation)).await {
            Ok(()) => {
                self.tx.batch_execute("RELEASE SAVEPOINT bulk_seal").await?;
                Ok(None)
            }
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
                self.tx.batch_execute("ROLLBACK TO SAVEPOINT bulk_seal").await?;
                let dup = self.tx.query_opt(table.duplicate_sql(generation).as_str(), &[]).await?;
                let dup = dup.ok_or_else(|| {
                    PgError::Corrupt(format!("{}: a unique violation without a duplicate key", table.table))
                })?;
                let key: String = dup.get(table.key.name);
                // Placing the duplicate sorts the duplicated keys' rows: only now that there is one.
                let Some(sql) = table.first_duplicate_sql(generation) else {
                    return Ok(Some(Duplicate::unplaced(key)));
                };
                let first = self.tx.query_one(sql.as_str(), &[]).await?;
                Ok(Some(Duplicate::placed(first.get(table.key.name), first.get("first_at"), first.get("repeat_at"))))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn active_generation(&mut self, table: &BulkTable) -> Result<Option<i64>, PgError> {
        common::engine::store::bulk::active_generation(self.tx, table).await
    }

    async fn activate_generation(
        &mut self,
        table: &BulkTable,
        generation: i64,
        lease: ReadLease,
    ) -> Result<Option<i64>, PgError> {
        // Readers answer from the generation before the last switch until that switch is visible: this one waits
        // for it, before locking the pointer (readers' reads of it wait on the lock). Only switches closer than
        // the lease wait at all.
        const WAIT: &str = "SELECT extract(epoch FROM visible_at - clock_timestamp())::float8 AS wait_s \
                            FROM bulk_active WHERE bulk_table = $1";
        for locked in [false, true] {
            let sql = if locked { format!("{WAIT} FOR UPDATE") } else { WAIT.to_owned() };
            // Locked: switches of one table are serialized, and readers wait until this one commits.
            let wait = self.tx.query_opt(sql.as_str(), &[&table.table]).await?;
            let wait_s = wait.and_then(|r| r.get::<_, Option<f64>>("wait_s")).unwrap_or(0.0);
            if wait_s > 0.0 {
                tokio::time::sleep(std::time::Duration::from_secs_f64(wait_s.min(3600.0))).await;
            }
        }
        // Visible once every lease read before the lock ended (the longer of this switch's lease and the one
        // the row promised readers), plus the skew bound: PostgreSQL's clock, after the lock.
        let previous = self
            .tx
            .query_one(
                "INSERT INTO bulk_active AS a (bulk_table, generation, previous, visible_at, lease_ms, skew_ms)
                 VALUES ($1, $2, NULL, clock_timestamp() + ($3::bigint + $4::bigint) * interval '1 millisecond', $3, $4)
                 ON CONFLICT (bulk_table) DO UPDATE SET generation = EXCLUDED.generation,
                     previous = a.generation, switched_at = now(), lease_ms = EXCLUDED.lease_ms,
                     skew_ms = EXCLUDED.skew_ms,
                     visible_at = clock_timestamp() + (greatest($3::bigint, a.lease_ms) + $4::bigint) * interval '1 millisecond'
                 RETURNING previous",
                &[&table.table, &generation, &lease.lease_ms(), &lease.skew_ms()],
            )
            .await?
            .get::<_, Option<i64>>("previous");
        Ok(previous.filter(|p| *p != generation))
    }

    async fn bulk_generations(&mut self, table: &BulkTable) -> Result<Vec<i64>, PgError> {
        let rows = self
            .tx
            .query(
                "SELECT generation FROM processor_bulk_generations WHERE bulk_table = $1 ORDER BY generation",
                &[&table.table],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get("generation")).collect())
    }

    async fn drop_generation(&mut self, table: &BulkTable, generation: i64) -> Result<(), PgError> {
        self.tx.batch_execute(&table.drop_sql(generation)).await?;
        for sql in [
            "DELETE FROM processor_bulk_reports WHERE bulk_table = $1 AND generation = $2",
            "DELETE FROM processor_bulk_generations WHERE bulk_table = $1 AND generation = $2",
        ] {
            self.tx.execute(sql, &[&table.table, &generation]).await?;
        }
        Ok(())
    }

    async fn read_rows<F>(&mut self, table: &RowTable, scope: Scope<'_>, mut each_chunk: F) -> Result<(), PgError>
    where
        F: FnMut(Vec<Row>) -> Result<(), PgError> + Send,
    {
        let columns: Vec<Column> = table.columns().copied().collect();
        // Handed over in bounded chunks, decoded as they arrive: the partition's rows are never all held as rows.
        let mut chunk = Vec::with_capacity(RESTORE_CHUNK);
        self.read_cells(table, scope, |cells| {
            chunk.push(Row::from_cells(cells, &columns)?);
            if chunk.len() == RESTORE_CHUNK {
                each_chunk(std::mem::replace(&mut chunk, Vec::with_capacity(RESTORE_CHUNK)))?;
            }
            Ok(())
        })
        .await?;
        if !chunk.is_empty() {
            each_chunk(chunk)?;
        }
        Ok(())
    }

    async fn read_cells<F>(&mut self, table: &RowTable, scope: Scope<'_>, mut each: F) -> Result<(), PgError>
    where
        F: FnMut(&dyn Cells) -> Result<(), PgError> + Send,
    {
        use futures::TryStreamExt;
        let columns: Vec<Column> = table.columns().copied().collect();
        let types: Vec<Type> = columns.iter().map(|c| copy_type(c.ty)).collect();
        // One statement streams the whole partition, however large: the connection's statement timeout
        // (`--pg-timeout`, 5 s) would stop a large one part way (10M rows take longer) and the claim would
        // retry the same copy for ever, so it is lifted for the copy alone and put back after it.
        let timeout: String =
            self.tx.query_one("SELECT current_setting('statement_timeout')", &[]).await?.try_get(0)?;
        self.tx.batch_execute("SET LOCAL statement_timeout = 0").await?;
        let copy = self.tx.copy_out(copy_out_sql(table, scope).as_str()).await?;
        let rows = tokio_postgres::binary_copy::BinaryCopyOutStream::new(copy, &types);
        let mut rows = std::pin::pin!(rows);
        // Each row lent as it arrives: its cells are read where the copy's buffer holds them.
        while let Some(row) = rows.try_next().await? {
            each(&CopiedCells { row: &row, columns: &columns })?;
        }
        self.tx.execute("SELECT set_config('statement_timeout', $1, true)", &[&timeout]).await?;
        Ok(())
    }

    async fn upsert_rows(&mut self, table: &RowTable, scope: Scope<'_>, rows: &[Row]) -> Result<(), PgError> {
        if rows.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = table.columns().map(|c| c.name).collect();
        let exprs: Vec<String> = table.columns().map(|c| format!("{}{}", c.name, c.ty.cast())).collect();
        let arrays: Vec<String> =
            table.columns().enumerate().map(|(i, c)| format!("${}::{}", i + 3, param_array(c.ty))).collect();
        let set: Vec<String> = table.values.iter().map(|c| format!("{0} = EXCLUDED.{0}", c.name)).collect();
        let on_conflict =
            if set.is_empty() { "DO NOTHING".to_owned() } else { format!("DO UPDATE SET {}", set.join(", ")) };
        let sql = format!(
            "INSERT INTO {table} (topic, partition, {names})
             SELECT $1, $2, {exprs} FROM unnest({arrays}) AS t({names})
             ON CONFLICT (topic, partition, {key}) {on_conflict}",
            table = table.table,
            names = names.join(", "),
            exprs = exprs.join(", "),
            arrays = arrays.join(", "),
            key = table.key.name,
        );
        // Bounded statements: each stays well within the statement timeout.
        for slice in rows.chunks(ROWS_PER_STATEMENT) {
            let columns =
                table.columns().map(|c| column_param(table, c, slice)).collect::<Result<Vec<_>, PgError>>()?;
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![&scope.topic, &scope.partition];
            params.extend(columns.iter().map(|c| &**c as &(dyn ToSql + Sync)));
            self.tx.execute(sql.as_str(), &params).await?;
        }
        Ok(())
    }

    async fn delete_rows(&mut self, table: &RowTable, scope: Scope<'_>, keys: &[Value]) -> Result<(), PgError> {
        if keys.is_empty() {
            return Ok(());
        }
        let key = table.key;
        let rows: Vec<Row> = keys.iter().map(|k| Row::new().with(key.name, k.clone())).collect();
        let param = column_param(table, &key, &rows)?;
        let sql = format!(
            "DELETE FROM {} WHERE topic = $1 AND partition = $2 AND {} = ANY($3::{}{})",
            table.table,
            key.name,
            param_array(key.ty),
            array_cast(key.ty)
        );
        self.tx.execute(sql.as_str(), &[&scope.topic, &scope.partition, &*param as &(dyn ToSql + Sync)]).await?;
        Ok(())
    }

    async fn read_chunks(
        &mut self,
        table: ChunkTable,
        scope: Scope<'_>,
    ) -> Result<HashMap<i64, Vec<Vec<u8>>>, PgError> {
        let rows = self
            .tx
            .query(
                &format!(
                    "SELECT hour_start_ms, {col} FROM {table} WHERE topic = $1 AND partition = $2 ORDER BY hour_start_ms, seq",
                    col = table.column,
                    table = table.table
                ),
                &[&scope.topic, &scope.partition],
            )
            .await?;
        let mut chunks: HashMap<i64, Vec<Vec<u8>>> = HashMap::new();
        for row in rows {
            chunks.entry(row.try_get("hour_start_ms")?).or_default().push(row.try_get(table.column)?);
        }
        Ok(chunks)
    }

    async fn insert_chunks(
        &mut self,
        table: ChunkTable,
        scope: Scope<'_>,
        hours: &[i64],
        blobs: &[Vec<u8>],
    ) -> Result<(), PgError> {
        let (name, column) = (table.table, table.column);
        self.tx
            .execute(
                &format!(
                    "INSERT INTO {name} (topic, partition, hour_start_ms, {column})
                     SELECT $1, $2, * FROM unnest($3::bigint[], $4::bytea[])"
                ),
                &[&scope.topic, &scope.partition, &hours, &blobs],
            )
            .await?;
        Ok(())
    }

    async fn merge_chunks(&mut self, table: ChunkTable, scope: Scope<'_>, hour: i64) -> Result<(), PgError> {
        let (name, column) = (table.table, table.column);
        self.tx
            .execute(
                &format!(
                    "WITH old AS (
                         DELETE FROM {name} WHERE topic = $1 AND partition = $2 AND hour_start_ms = $3
                         RETURNING seq, {column})
                     INSERT INTO {name} (topic, partition, hour_start_ms, {column})
                     SELECT $1, $2, $3, string_agg({column}, ''::bytea ORDER BY seq) FROM old"
                ),
                &[&scope.topic, &scope.partition, &hour],
            )
            .await?;
        Ok(())
    }

    async fn delete_chunks(&mut self, table: ChunkTable, scope: Scope<'_>, hours: &[i64]) -> Result<(), PgError> {
        self.tx
            .execute(
                &format!("DELETE FROM {} WHERE topic = $1 AND partition = $2 AND hour_start_ms = ANY($3)", table.table),
                &[&scope.topic, &scope.partition, &hours],
            )
            .await?;
        Ok(())
    }
}

impl EngineTx for PgTx<'_> {
    async fn claim_epoch(&mut self, scope: Scope<'_>) -> Result<(i64, Position), PgError> {
        let row = self
            .tx
            .query_one(
                "INSERT INTO processor_partitions (topic, partition, epoch, next_offset, watermark_ms)
                 VALUES ($1, $2, 1, 0, 0)
                 ON CONFLICT (topic, partition) DO UPDATE SET epoch = processor_partitions.epoch + 1, updated_at = now()
                 RETURNING epoch, next_offset, watermark_ms",
                &[&scope.topic, &scope.partition],
            )
            .await?;
        let position =
            Position { next_offset: row.try_get("next_offset")?, watermark_ms: row.try_get("watermark_ms")? };
        Ok((row.try_get("epoch")?, position))
    }

    async fn advance(&mut self, scope: Scope<'_>, epoch: i64, position: Position) -> Result<bool, PgError> {
        let updated = self
            .tx
            .execute(
                "UPDATE processor_partitions SET next_offset = $3, watermark_ms = $4, updated_at = now()
                 WHERE topic = $1 AND partition = $2 AND epoch = $5",
                &[&scope.topic, &scope.partition, &position.next_offset, &position.watermark_ms, &epoch],
            )
            .await?;
        Ok(updated > 0)
    }

    async fn read_outbox(&mut self, scope: Scope<'_>) -> Result<Outbox, PgError> {
        let rows = self
            .tx
            .query(
                "SELECT key, input_offset, payload FROM processor_outbox
                 WHERE topic = $1 AND partition = $2 ORDER BY input_offset, key",
                &[&scope.topic, &scope.partition],
            )
            .await?;
        let mut outbox = Outbox::default();
        for r in rows {
            let offset: i64 = r.try_get("input_offset")?;
            outbox.through = outbox.through.max(Some(offset));
            match r.try_get::<_, Option<Vec<u8>>>("payload")? {
                Some(payload) => outbox.kept.push(Emit { key: r.try_get("key")?, payload, keep_payload: true }),
                None => outbox.keys.push(r.try_get("key")?),
            }
        }
        Ok(outbox)
    }

    async fn delete_outbox_through(&mut self, scope: Scope<'_>, through: i64) -> Result<(), PgError> {
        self.tx
            .execute(
                "DELETE FROM processor_outbox WHERE topic = $1 AND partition = $2 AND input_offset <= $3",
                &[&scope.topic, &scope.partition, &through],
            )
            .await?;
        Ok(())
    }

    async fn upsert_outbox(
        &mut self,
        scope: Scope<'_>,
        input_offset: i64,
        rows: &[(&str, Option<&[u8]>)],
    ) -> Result<(), PgError> {
        // Bounded statements: each stays well within the statement timeout.
        for slice in rows.chunks(ROWS_PER_STATEMENT) {
            let (keys, payloads): (Vec<&str>, Vec<Option<&[u8]>>) = slice.iter().copied().unzip();
            self.tx
                .execute(
                    "INSERT INTO processor_outbox (topic, partition, key, input_offset, payload)
                     SELECT $1, $2, k, $3, p FROM unnest($4::text[], $5::bytea[]) AS t(k, p)
                     ON CONFLICT (topic, partition, key)
                     DO UPDATE SET input_offset = EXCLUDED.input_offset, payload = EXCLUDED.payload",
                    &[&scope.topic, &scope.partition, &input_offset, &keys, &payloads],
                )
                .await?;
        }
        Ok(())
    }
}

/// The state store in PostgreSQL.
#[derive(Clone)]
pub struct StateStore {
    pool: Pool,
    topic: String,
}

impl StateStore {
    pub fn new(pool: Pool, topic: String) -> Self {
        StateStore { pool, topic }
    }

    fn scope(&self, partition: i32) -> Scope<'_> {
        Scope { topic: &self.topic, partition }
    }
}

/// Each operation is one PostgreSQL transaction running the engine's body
/// ([`claim_in`], [`commit_in`]), as `MemStore` runs the same bodies in memory.
impl Store for StateStore {
    fn topic(&self) -> &str {
        &self.topic
    }

    /// Takes ownership of a partition (bumping its epoch) and loads its state.
    ///
    /// # Errors
    /// [`StoreError::Pg`] when PostgreSQL cannot answer.
    async fn claim<W: Aggregation>(
        &self,
        workload: &W,
        partition: i32,
        retention_ms: i64,
    ) -> Result<Claimed<W::State>, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let claimed = claim_in(&mut PgTx { tx: &tx }, workload, self.scope(partition), retention_ms).await?;
        tx.commit().await?;
        Ok(claimed)
    }

    /// Commits a checkpoint under its epoch ([`commit_in`]).
    ///
    /// # Errors
    /// [`StoreError::Fenced`] if the partition was claimed by someone else;
    /// [`StoreError::Pg`] otherwise (nothing is written then).
    async fn commit<W: Aggregation>(
        &self,
        workload: &W,
        partition: i32,
        cp: EngineCheckpoint<'_>,
        changes: Option<&W::Changes>,
    ) -> Result<Committed<W::Receipt>, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let committed = commit_in(&mut PgTx { tx: &tx }, workload, self.scope(partition), cp, changes).await?;
        tx.commit().await?;
        Ok(committed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_round_trip_through_the_chunk_format() {
        let hs = vec![0, 1, u64::MAX, 0x0102_0304_0506_0708];
        assert_eq!(decode_hashes(&encode_hashes(&hs)).collect::<Vec<_>>(), hs);
        assert_eq!(encode_hashes(&[1])[..], [1, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn a_partitions_copy_reads_every_column_key_first_with_the_topic_quoted() {
        let table = RowTable {
            table: "t",
            key: Column::new("id", ColumnType::Uuid),
            values: vec![Column::new("n", ColumnType::BigInt), Column::new("label", ColumnType::Text)],
        };
        assert_eq!(
            copy_out_sql(&table, Scope { topic: "it's", partition: 7 }),
            "COPY (SELECT id::text AS id, n, label FROM t WHERE topic = 'it''s' AND partition = 7) \
             TO STDOUT (FORMAT binary)"
        );
    }
}
