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

use common::engine::pg::PgError;
use deadpool_postgres::{Pool, Transaction};

use super::dedup::IdWindow;
use super::{Aggregation, Emit, Position, Scope};

/// Rows one statement of a checkpoint writes at most (a checkpoint of more
/// uses several): each statement stays well within the statement timeout.
pub const ROWS_PER_STATEMENT: usize = 10_000;

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

/// A table of hash chunks: `(topic, partition, hour_start_ms, seq, <column> BYTEA)`.
#[derive(Debug, Clone, Copy)]
pub struct ChunkTable {
    pub table: &'static str,
    pub column: &'static str,
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
/// [`PgError`] when PostgreSQL cannot answer.
pub async fn read_chunks(
    tx: &Transaction<'_>,
    table: ChunkTable,
    scope: Scope<'_>,
) -> Result<HashMap<i64, Vec<Vec<u8>>>, PgError> {
    let rows = tx
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
        chunks.entry(row.get(0)).or_default().push(row.get(1));
    }
    Ok(chunks)
}

/// Appends one chunk per hour with new hashes, and merges the chunks of an
/// hour that reaches [`MAX_CHUNKS_PER_HOUR`], so a restore reads few rows.
/// Returns the hours' chunk counts, to record once the transaction commits.
///
/// # Errors
/// [`PgError`] when PostgreSQL cannot answer.
pub async fn append_chunks(
    tx: &Transaction<'_>,
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
    let (name, column) = (table.table, table.column);
    tx.execute(
        &format!(
            "INSERT INTO {name} (topic, partition, hour_start_ms, {column})
             SELECT $1, $2, * FROM unnest($3::bigint[], $4::bytea[])"
        ),
        &[&scope.topic, &scope.partition, &hours, &blobs],
    )
    .await?;
    let mut after = Vec::with_capacity(hours.len());
    for h in hours {
        let n = counts.get(&h).copied().unwrap_or(0) + 1;
        if n >= MAX_CHUNKS_PER_HOUR {
            tx.execute(
                &format!(
                    "WITH old AS (
                         DELETE FROM {name} WHERE topic = $1 AND partition = $2 AND hour_start_ms = $3
                         RETURNING seq, {column})
                     INSERT INTO {name} (topic, partition, hour_start_ms, {column})
                     SELECT $1, $2, $3, string_agg({column}, ''::bytea ORDER BY seq) FROM old"
                ),
                &[&scope.topic, &scope.partition, &h],
            )
            .await?;
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
/// [`PgError`] when PostgreSQL cannot answer.
pub async fn delete_chunks(
    tx: &Transaction<'_>,
    table: ChunkTable,
    scope: Scope<'_>,
    hours: &[i64],
) -> Result<(), PgError> {
    if !hours.is_empty() {
        tx.execute(
            &format!("DELETE FROM {} WHERE topic = $1 AND partition = $2 AND hour_start_ms = ANY($3)", table.table),
            &[&scope.topic, &scope.partition, &hours],
        )
        .await?;
    }
    Ok(())
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
    pub ids: &'a IdWindow,
    pub closed_id_hours: &'a [i64],
    pub id_chunks: &'a ChunkCounts,
    /// This checkpoint's records, kept in the outbox until their Kafka transaction commits.
    pub emits: &'a [Emit],
    /// Outbox rows up to this input offset are known to be in the log: deleted.
    pub emitted_through: Option<i64>,
}

/// Writes a checkpoint's records to the outbox (one row per key, the newest
/// replacing an older one) after deleting the rows known to be in the log.
async fn write_outbox(
    tx: &Transaction<'_>,
    scope: Scope<'_>,
    position: Position,
    emits: &[Emit],
    emitted_through: Option<i64>,
) -> Result<(), PgError> {
    if let Some(through) = emitted_through {
        tx.execute(
            "DELETE FROM processor_outbox WHERE topic = $1 AND partition = $2 AND input_offset <= $3",
            &[&scope.topic, &scope.partition, &through],
        )
        .await?;
    }
    if emits.is_empty() {
        return Ok(());
    }
    // One row per key: a statement may not upsert a row twice, so the last record of a key wins.
    // The bytes only where the state cannot render the record again.
    let mut newest: HashMap<&str, Option<&[u8]>> = HashMap::with_capacity(emits.len());
    for e in emits {
        newest.insert(&e.key, e.keep_payload.then_some(e.payload.as_slice()));
    }
    let rows: Vec<(&str, Option<&[u8]>)> = newest.into_iter().collect();
    // Bounded statements: each stays well within the statement timeout.
    for slice in rows.chunks(ROWS_PER_STATEMENT) {
        let (keys, payloads): (Vec<&str>, Vec<Option<&[u8]>>) = slice.iter().copied().unzip();
        tx.execute(
            "INSERT INTO processor_outbox (topic, partition, key, input_offset, payload)
             SELECT $1, $2, k, $3, p FROM unnest($4::text[], $5::bytea[]) AS t(k, p)
             ON CONFLICT (topic, partition, key)
             DO UPDATE SET input_offset = EXCLUDED.input_offset, payload = EXCLUDED.payload",
            &[&scope.topic, &scope.partition, &position.next_offset, &keys, &payloads],
        )
        .await?;
    }
    Ok(())
}

/// A partition's outbox: the records kept whole (oldest first), the keys kept alone.
async fn read_outbox(tx: &Transaction<'_>, scope: Scope<'_>) -> Result<Outbox, PgError> {
    let rows = tx
        .query(
            "SELECT key, input_offset, payload FROM processor_outbox
             WHERE topic = $1 AND partition = $2 ORDER BY input_offset, key",
            &[&scope.topic, &scope.partition],
        )
        .await?;
    let mut outbox =
        Outbox { through: rows.iter().map(|r| r.get::<_, i64>("input_offset")).max(), ..Outbox::default() };
    for r in rows {
        match r.get::<_, Option<Vec<u8>>>("payload") {
            Some(payload) => outbox.kept.push(Emit { key: r.get("key"), payload, keep_payload: true }),
            None => outbox.keys.push(r.get("key")),
        }
    }
    Ok(outbox)
}

#[derive(Clone)]
pub struct StateStore {
    pool: Pool,
    topic: String,
}

impl StateStore {
    pub fn new(pool: Pool, topic: String) -> Self {
        StateStore { pool, topic }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    fn scope(&self, partition: i32) -> Scope<'_> {
        Scope { topic: &self.topic, partition }
    }

    /// Takes ownership of a partition (bumping its epoch) and loads its state.
    ///
    /// # Errors
    /// [`StoreError::Pg`] when PostgreSQL cannot answer.
    pub async fn claim<W: Aggregation>(
        &self,
        workload: &W,
        partition: i32,
        retention_ms: i64,
    ) -> Result<Claimed<W::State>, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_one(
                "INSERT INTO processor_partitions (topic, partition, epoch, next_offset, watermark_ms)
                 VALUES ($1, $2, 1, 0, 0)
                 ON CONFLICT (topic, partition) DO UPDATE SET epoch = processor_partitions.epoch + 1, updated_at = now()
                 RETURNING epoch, next_offset, watermark_ms",
                &[&self.topic, &partition],
            )
            .await?;
        let epoch: i64 = row.get("epoch");
        let position = Position { next_offset: row.get("next_offset"), watermark_ms: row.get("watermark_ms") };
        let scope = self.scope(partition);
        let mut ids = IdWindow::with_buckets(W::DEDUP_BUCKET_MS, retention_ms);
        let mut id_chunks = ChunkCounts::new();
        for (hour, chunks) in read_chunks(&tx, ID_CHUNKS, scope).await? {
            id_chunks.insert(hour, chunks.len() as u32);
            ids.restore(hour, chunks.iter().flat_map(|c| decode_hashes(c)));
        }
        let state = workload.restore(&tx, scope, position).await?;
        let outbox = read_outbox(&tx, scope).await?;
        tx.commit().await?;
        Ok(Claimed { epoch, position, ids, id_chunks, state, outbox })
    }

    /// Commits a checkpoint under its epoch: the position, the new ids (and
    /// the closed hours' ids gone), the workload's changes if it has any, and
    /// its records to the outbox (with the rows known emitted gone).
    ///
    /// # Errors
    /// [`StoreError::Fenced`] if the partition was claimed by someone else;
    /// [`StoreError::Pg`] otherwise (nothing is written then).
    pub async fn commit<W: Aggregation>(
        &self,
        workload: &W,
        partition: i32,
        cp: EngineCheckpoint<'_>,
        work: Option<(&W::State, &W::Changes)>,
    ) -> Result<(Vec<(i64, u32)>, Option<W::Receipt>), StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let updated = tx
            .execute(
                "UPDATE processor_partitions SET next_offset = $3, watermark_ms = $4, updated_at = now()
                 WHERE topic = $1 AND partition = $2 AND epoch = $5",
                &[&self.topic, &partition, &cp.position.next_offset, &cp.position.watermark_ms, &cp.epoch],
            )
            .await?;
        if updated == 0 {
            return Err(StoreError::Fenced(partition));
        }
        let scope = self.scope(partition);
        let new_ids = cp.ids.new_ids();
        let new_ids: Vec<(i64, &[u64])> = new_ids.iter().map(|(h, ids)| (*h, ids.as_slice())).collect();
        let ids_added = append_chunks(&tx, ID_CHUNKS, scope, &new_ids, cp.id_chunks).await?;
        delete_chunks(&tx, ID_CHUNKS, scope, cp.closed_id_hours).await?;
        let receipt = match work {
            Some((state, changes)) => Some(workload.persist(&tx, scope, state, changes).await?),
            None => None,
        };
        write_outbox(&tx, scope, cp.position, cp.emits, cp.emitted_through).await?;
        tx.commit().await?;
        Ok((ids_added, receipt))
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
}
