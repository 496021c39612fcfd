//! The state store in memory: the same transaction bodies as PostgreSQL's,
//! over a copy of the tables that replaces the committed one atomically.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use common::engine::pg::PgError;
use common::engine::store::{Cells, CopyText, Row, Value};

use super::stall::Stalls;
use crate::engine::state_store::{
    claim_in, commit_in, Claimed, Committed, EngineCheckpoint, EngineTx, Outbox, Store, StoreError,
};
use crate::engine::tables::{BulkTable, ChunkTable, Duplicate, ReadLease, RowTable, StateTx};
use crate::engine::{planted, Aggregation, Emit, Planted, Position, Scope};

/// What the next transaction does wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreFault {
    /// It fails before committing: nothing is written.
    Fail,
    /// It commits, but the caller hears an error (a connection lost during COMMIT).
    LostReply,
    /// A checkpoint's commit is held up on its way to the server: it stays
    /// in flight (its future pending) until the test releases it
    /// ([`MemStore::release_stalled`]), then runs (and may be fenced, or hit
    /// a fault injected meanwhile). A claim leaves it to the next commit.
    Stall,
}

type PartitionKey = (String, i32);
/// An outbox row: the input offset, and the record's bytes where they are kept whole.
type OutboxRow = (i64, Option<Vec<u8>>);

/// The tables, as one value: a transaction works on a copy.
#[derive(Debug, Clone, Default)]
struct Tables {
    /// Bumped by every commit: a transaction that started on an older one fails (serialization).
    version: u64,
    partitions: BTreeMap<PartitionKey, (i64, Position)>,
    rows: BTreeMap<(&'static str, PartitionKey), BTreeMap<Value, Row>>,
    /// Chunks per (table, partition, hour), in write order.
    chunks: BTreeMap<(&'static str, PartitionKey, i64), Vec<Vec<u8>>>,
    /// Key → (input offset, payload kept whole or not).
    outbox: BTreeMap<PartitionKey, BTreeMap<String, OutboxRow>>,
    /// Bulk generations' rows, per (table, generation), in copy order.
    bulk: BTreeMap<(&'static str, i64), Vec<Row>>,
    /// What each partition reported of a generation.
    bulk_reports: BTreeMap<(&'static str, i64), BTreeMap<i32, i64>>,
    /// Generations keyed by their key (sealed).
    bulk_sealed: std::collections::BTreeSet<(&'static str, i64)>,
    /// The active generation of each bulk table.
    bulk_active: BTreeMap<&'static str, i64>,
}

#[derive(Debug, Default)]
struct Shared {
    tables: Tables,
    fault: Option<StoreFault>,
    /// Checkpoint commits stalled, in stall order.
    stalled: Stalls,
    /// Claims begun, and checkpoints refused for an older epoch, for the run's summary.
    claims: u64,
    checkpoints: u64,
    fenced: u64,
}

/// The state store of one events topic, in memory. Clones share the tables.
#[derive(Debug, Clone)]
pub struct MemStore {
    topic: String,
    shared: Arc<Mutex<Shared>>,
}

/// A retryable error, as PostgreSQL's pool gives when it cannot connect.
fn unavailable() -> StoreError {
    StoreError::Pg(PgError::Pool(deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Wait)))
}

fn key(scope: Scope<'_>) -> PartitionKey {
    (scope.topic.to_owned(), scope.partition)
}

impl MemStore {
    pub fn new(topic: &str) -> Self {
        MemStore { topic: topic.to_owned(), shared: Arc::default() }
    }

    /// Makes the next transaction fail this way (`None`: clears a fault not yet hit).
    pub fn inject(&self, fault: Option<StoreFault>) {
        self.lock().fault = fault;
    }

    /// The committed position and epoch of a partition, if it was ever claimed.
    pub fn partition(&self, partition: i32) -> Option<(i64, Position)> {
        self.lock().tables.partitions.get(&(self.topic.clone(), partition)).copied()
    }

    /// Claims begun so far, checkpoints committed, and checkpoints refused as fenced.
    pub fn counts(&self) -> (u64, u64, u64) {
        let shared = self.lock();
        (shared.claims, shared.checkpoints, shared.fenced)
    }

    /// The rows of `generation` of a bulk table as committed, if it exists; and the active generation.
    pub fn bulk(&self, table: &BulkTable, generation: i64) -> (Option<Vec<Row>>, Option<i64>) {
        let shared = self.lock();
        let rows = shared.tables.bulk.get(&(table.table, generation)).cloned();
        (rows, shared.tables.bulk_active.get(table.table).copied())
    }

    /// Checkpoint commits stalled and still awaited by someone, in stall order.
    pub fn stalled(&self) -> usize {
        self.lock().stalled.pending()
    }

    /// Lets the `k`th stalled commit ([`stalled`](Self::stalled)) go on when next polled.
    pub fn release_stalled(&self, k: usize) {
        self.lock().stalled.release(k);
    }

    /// Bumped by every commit: unchanged means nothing was written.
    pub fn version(&self) -> u64 {
        self.lock().tables.version
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().expect("no panic while the tables are held")
    }

    /// A transaction on a copy of the tables, and the fault it is to hit (if
    /// `faulty`; a stall is a checkpoint commit's, taken before it begins).
    fn begin(&self, faulty: bool) -> (MemTx, Option<StoreFault>) {
        let mut shared = self.lock();
        let fault = if faulty && shared.fault != Some(StoreFault::Stall) { shared.fault.take() } else { None };
        (MemTx { tables: shared.tables.clone() }, fault)
    }

    /// Commits `tx` unless another transaction committed since it began.
    fn finish(&self, tx: MemTx, fault: Option<StoreFault>) -> Result<(), StoreError> {
        if fault == Some(StoreFault::Fail) {
            return Err(unavailable());
        }
        let mut shared = self.lock();
        if shared.tables.version != tx.tables.version {
            return Err(unavailable());
        }
        shared.tables = tx.tables;
        shared.tables.version += 1;
        match fault {
            Some(StoreFault::LostReply) => Err(unavailable()),
            _ => Ok(()),
        }
    }
}

impl Store for MemStore {
    fn topic(&self) -> &str {
        &self.topic
    }

    async fn claim<W: Aggregation>(
        &self,
        workload: &W,
        partition: i32,
        retention_ms: i64,
    ) -> Result<Claimed<W::State>, StoreError> {
        self.lock().claims += 1;
        let (mut tx, fault) = self.begin(true);
        let scope = Scope { topic: &self.topic, partition };
        let claimed = claim_in(&mut tx, workload, scope, retention_ms).await?;
        self.finish(tx, fault)?;
        Ok(claimed)
    }

    async fn commit<W: Aggregation>(
        &self,
        workload: &W,
        partition: i32,
        cp: EngineCheckpoint<'_>,
        changes: Option<&W::Changes>,
    ) -> Result<Committed<W::Receipt>, StoreError> {
        let stall = {
            let mut shared = self.lock();
            (shared.fault == Some(StoreFault::Stall)).then(|| {
                shared.fault = None;
                shared.stalled.hold()
            })
        };
        if let Some(stalled) = stall {
            // Held up before the server began it: a claim meanwhile fences it.
            stalled.await;
        }
        let scope = Scope { topic: &self.topic, partition };
        if planted(Planted::PositionBeforeState) {
            // The bug: the position commits on its own, then the rest (which may fail).
            let (mut tx, _) = self.begin(false);
            if !tx.advance(scope, cp.epoch, cp.position).await? {
                return Err(StoreError::Fenced(partition));
            }
            self.finish(tx, None)?;
        }
        let (mut tx, fault) = self.begin(true);
        let committed = match commit_in(&mut tx, workload, scope, cp, changes).await {
            Err(StoreError::Fenced(p)) => {
                self.lock().fenced += 1;
                return Err(StoreError::Fenced(p));
            }
            other => other?,
        };
        self.finish(tx, fault)?;
        self.lock().checkpoints += 1;
        Ok(committed)
    }
}

/// One transaction: a private copy of the tables.
pub struct MemTx {
    tables: Tables,
}

impl StateTx for MemTx {
    async fn create_generation(&mut self, table: &BulkTable, generation: i64) -> Result<(), PgError> {
        self.tables.bulk.entry((table.table, generation)).or_default();
        self.tables.bulk_reports.entry((table.table, generation)).or_default();
        Ok(())
    }

    async fn copy_text(&mut self, table: &BulkTable, generation: i64, text: &CopyText) -> Result<u64, PgError> {
        let rows = table.rows_of_copy_text(&text.to_vec())?;
        self.copy_rows(table, generation, &rows).await
    }

    async fn copy_rows(&mut self, table: &BulkTable, generation: i64, rows: &[Row]) -> Result<u64, PgError> {
        // As PostgreSQL's: into a table that does not exist is an error, and so is a row the COPY cannot encode.
        table.copy_text(rows)?;
        if self.tables.bulk_sealed.contains(&(table.table, generation)) {
            return Err(PgError::Corrupt(format!("{}: copy into a sealed generation", table.table)));
        }
        let stored = self
            .tables
            .bulk
            .get_mut(&(table.table, generation))
            .ok_or_else(|| PgError::Corrupt(format!("{}: no generation {generation}", table.table)))?;
        stored.extend_from_slice(rows);
        Ok(rows.len() as u64)
    }

    async fn report_partition(
        &mut self,
        table: &BulkTable,
        generation: i64,
        partition: i32,
        rows: i64,
    ) -> Result<Vec<(i32, i64)>, PgError> {
        // One transaction at a time commits (a copy of the tables): serialized as FOR UPDATE makes PostgreSQL's.
        let reports = self.tables.bulk_reports.entry((table.table, generation)).or_default();
        reports.insert(partition, rows);
        Ok(reports.iter().map(|(p, r)| (*p, *r)).collect())
    }

    async fn seal_generation(&mut self, table: &BulkTable, generation: i64) -> Result<Option<Duplicate>, PgError> {
        let rows = self.tables.bulk.get(&(table.table, generation)).map(Vec::as_slice).unwrap_or_default();
        // Each key's places in the source (0 without an origin column), as PostgreSQL's query sorts them.
        let mut places: std::collections::BTreeMap<String, Vec<i64>> = std::collections::BTreeMap::new();
        for row in rows {
            let key = match row.get(table.key.name) {
                Some(Value::Text(t)) => t.clone(),
                Some(other) => format!("{other:?}"),
                None => return Err(PgError::Corrupt("a row without its key".into())),
            };
            let place = match table.origin.map(|o| row.get(o)) {
                None => 0,
                Some(Some(Value::BigInt(place))) => *place,
                Some(_) => return Err(PgError::Corrupt("a row without its origin".into())),
            };
            places.entry(key).or_default().push(place);
        }
        // The first repeat in the source's order, ties to the lowest key (the map's order).
        let first_repeat = places
            .into_iter()
            .filter_map(|(key, mut at)| {
                at.sort_unstable();
                (at.len() > 1).then(|| (at[1], at[0], key))
            })
            .min_by_key(|(repeat, _, _)| *repeat);
        if let Some((repeat, first, key)) = first_repeat {
            return Ok(Some(Duplicate::placed(key, first, repeat)));
        }
        self.tables.bulk_sealed.insert((table.table, generation));
        Ok(None)
    }

    async fn active_generation(&mut self, table: &BulkTable) -> Result<Option<i64>, PgError> {
        Ok(self.tables.bulk_active.get(table.table).copied())
    }

    async fn activate_generation(
        &mut self,
        table: &BulkTable,
        generation: i64,
        _: ReadLease,
    ) -> Result<Option<i64>, PgError> {
        // No readers here: nothing to wait for.
        Ok(self.tables.bulk_active.insert(table.table, generation).filter(|p| *p != generation))
    }

    async fn bulk_generations(&mut self, table: &BulkTable) -> Result<Vec<i64>, PgError> {
        Ok(self.tables.bulk.keys().filter(|(t, _)| *t == table.table).map(|(_, g)| *g).collect())
    }

    async fn drop_generation(&mut self, table: &BulkTable, generation: i64) -> Result<(), PgError> {
        let k = (table.table, generation);
        self.tables.bulk.remove(&k);
        self.tables.bulk_reports.remove(&k);
        self.tables.bulk_sealed.remove(&k);
        Ok(())
    }

    async fn read_rows<F>(&mut self, table: &RowTable, scope: Scope<'_>, mut each_chunk: F) -> Result<(), PgError>
    where
        F: FnMut(Vec<Row>) -> Result<(), PgError> + Send,
    {
        let rows = self.tables.rows.get(&(table.table, key(scope))).map(|r| r.values().cloned().collect());
        each_chunk(rows.unwrap_or_default())
    }

    async fn read_cells<F>(&mut self, table: &RowTable, scope: Scope<'_>, mut each: F) -> Result<(), PgError>
    where
        F: FnMut(&dyn Cells) -> Result<(), PgError> + Send,
    {
        for row in self.tables.rows.get(&(table.table, key(scope))).into_iter().flat_map(|r| r.values()) {
            each(row)?;
        }
        Ok(())
    }

    async fn upsert_rows(&mut self, table: &RowTable, scope: Scope<'_>, rows: &[Row]) -> Result<(), PgError> {
        let stored = self.tables.rows.entry((table.table, key(scope))).or_default();
        for row in rows {
            let k = row.get(table.key.name).cloned().ok_or_else(|| PgError::Corrupt("a row without its key".into()))?;
            for c in table.columns() {
                if row.get(c.name).is_none() {
                    return Err(PgError::Corrupt(format!("{}: a row without {}", table.table, c.name)));
                }
            }
            stored.insert(k, row.clone());
        }
        Ok(())
    }

    async fn delete_rows(&mut self, table: &RowTable, scope: Scope<'_>, keys: &[Value]) -> Result<(), PgError> {
        if let Some(stored) = self.tables.rows.get_mut(&(table.table, key(scope))) {
            for k in keys {
                stored.remove(k);
            }
        }
        Ok(())
    }

    async fn read_chunks(
        &mut self,
        table: ChunkTable,
        scope: Scope<'_>,
    ) -> Result<HashMap<i64, Vec<Vec<u8>>>, PgError> {
        let k = key(scope);
        Ok(self
            .tables
            .chunks
            .iter()
            .filter(|((t, p, _), _)| *t == table.table && *p == k)
            .map(|((_, _, hour), chunks)| (*hour, chunks.clone()))
            .collect())
    }

    async fn insert_chunks(
        &mut self,
        table: ChunkTable,
        scope: Scope<'_>,
        hours: &[i64],
        blobs: &[Vec<u8>],
    ) -> Result<(), PgError> {
        for (hour, blob) in hours.iter().zip(blobs) {
            self.tables.chunks.entry((table.table, key(scope), *hour)).or_default().push(blob.clone());
        }
        Ok(())
    }

    async fn merge_chunks(&mut self, table: ChunkTable, scope: Scope<'_>, hour: i64) -> Result<(), PgError> {
        if let Some(chunks) = self.tables.chunks.get_mut(&(table.table, key(scope), hour)) {
            *chunks = vec![chunks.concat()];
        }
        Ok(())
    }

    async fn delete_chunks(&mut self, table: ChunkTable, scope: Scope<'_>, hours: &[i64]) -> Result<(), PgError> {
        for hour in hours {
            self.tables.chunks.remove(&(table.table, key(scope), *hour));
        }
        Ok(())
    }
}

impl EngineTx for MemTx {
    async fn claim_epoch(&mut self, scope: Scope<'_>) -> Result<(i64, Position), PgError> {
        let entry = self.tables.partitions.entry(key(scope)).or_insert((0, Position::default()));
        entry.0 += 1;
        Ok(*entry)
    }

    async fn advance(&mut self, scope: Scope<'_>, epoch: i64, position: Position) -> Result<bool, PgError> {
        match self.tables.partitions.get_mut(&key(scope)) {
            Some(stored) if stored.0 == epoch => {
                stored.1 = position;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn read_outbox(&mut self, scope: Scope<'_>) -> Result<Outbox, PgError> {
        let mut rows: Vec<(&String, &OutboxRow)> =
            self.tables.outbox.get(&key(scope)).map(|o| o.iter().collect()).unwrap_or_default();
        // As PostgreSQL's: ORDER BY input_offset, key.
        rows.sort_by_key(|(k, (offset, _))| (*offset, *k));
        let mut outbox = Outbox::default();
        for (k, (offset, payload)) in rows {
            outbox.through = outbox.through.max(Some(*offset));
            match payload {
                Some(payload) => {
                    outbox.kept.push(Emit { key: k.clone(), payload: payload.clone(), keep_payload: true })
                }
                None => outbox.keys.push(k.clone()),
            }
        }
        Ok(outbox)
    }

    async fn delete_outbox_through(&mut self, scope: Scope<'_>, through: i64) -> Result<(), PgError> {
        if let Some(outbox) = self.tables.outbox.get_mut(&key(scope)) {
            outbox.retain(|_, (offset, _)| *offset > through);
        }
        Ok(())
    }

    async fn upsert_outbox(
        &mut self,
        scope: Scope<'_>,
        input_offset: i64,
        rows: &[(&str, Option<&[u8]>)],
    ) -> Result<(), PgError> {
        let outbox = self.tables.outbox.entry(key(scope)).or_default();
        for (k, payload) in rows {
            outbox.insert((*k).to_owned(), (input_offset, payload.map(<[u8]>::to_vec)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use futures::executor::block_on;

    use super::*;
    use crate::engine::tables::StateTx;
    use crate::engine::{DedupId, Record, Skip};

    /// A workload with no state of its own: what these tests check is the engine's.
    struct Stateless;

    impl Aggregation for Stateless {
        const NAME: &'static str = "none";
        type Event = ();
        type State = ();
        type Changes = ();
        type Receipt = ();

        fn decode(&self, _: &[u8]) -> Result<(), common::engine::avro::DecodeError> {
            Ok(())
        }
        fn accepted_at_ms(&self, (): &()) -> i64 {
            0
        }
        fn dedup_id(&self, (): &()) -> Option<DedupId> {
            None
        }
        fn apply(&self, (): &mut (), _: Record, (): ()) -> Result<(), Skip> {
            Ok(())
        }
        fn changes(&self, (): &mut ()) -> Option<()> {
            None
        }
        async fn restore<T: StateTx>(&self, _: &mut T, _: Scope<'_>, _: Position) -> Result<(), PgError> {
            Ok(())
        }
        async fn persist<T: StateTx>(&self, _: &mut T, _: Scope<'_>, (): &()) -> Result<(), PgError> {
            Ok(())
        }
        fn committed(&self, (): &mut (), (): (), (): ()) {}
        fn emits(&self, _: Scope<'_>, _: Position, (): &()) -> Vec<Emit> {
            Vec::new()
        }
        fn render(&self, _: Scope<'_>, _: Position, (): &(), _: &[String]) -> Vec<Emit> {
            Vec::new()
        }
        fn record_gauges<'a>(&self, _: impl Iterator<Item = &'a ()>) {}
    }

    fn checkpoint(store: &MemStore, epoch: i64, next_offset: i64) -> Result<(), StoreError> {
        let new_ids = std::collections::HashMap::new();
        let cp = EngineCheckpoint {
            position: Position { next_offset, watermark_ms: 0 },
            epoch,
            new_ids: &new_ids,
            closed_id_hours: &[],
            id_chunks: &HashMap::new(),
            emits: &[],
            emitted_through: None,
        };
        block_on(store.commit(&Stateless, 0, cp, None)).map(|_| ())
    }

    #[test]
    fn bulk_generations_commit_with_the_transaction_and_a_failed_one_writes_nothing() {
        use common::engine::store::{Column, ColumnType};
        let table = BulkTable {
            table: "promotions",
            key: Column::new("id", ColumnType::Uuid),
            values: vec![Column::new("cents", ColumnType::BigInt)],
            origin: Some("cents"),
        };
        let row = |id: &str, cents| Row::new().with("id", Value::Text(id.into())).with("cents", Value::BigInt(cents));
        let store = MemStore::new("events");
        let (mut tx, _) = store.begin(false);
        block_on(tx.create_generation(&table, 1)).unwrap();
        block_on(tx.copy_rows(&table, 1, &[row("a", 1), row("b", 2)])).unwrap();
        assert_eq!(block_on(tx.report_partition(&table, 1, 1, 1)).unwrap(), vec![(1, 1)]);
        assert_eq!(block_on(tx.report_partition(&table, 1, 0, 1)).unwrap(), vec![(0, 1), (1, 1)]);
        store.finish(tx, Some(StoreFault::Fail)).expect_err("a failed commit");
        assert_eq!(store.bulk(&table, 1), (None, None), "nothing of it is visible");

        let (mut tx, _) = store.begin(false);
        block_on(tx.create_generation(&table, 1)).unwrap();
        block_on(tx.copy_rows(&table, 1, &[row("a", 1), row("b", 2)])).unwrap();
        assert_eq!(block_on(tx.seal_generation(&table, 1)).unwrap(), None);
        assert!(block_on(tx.copy_rows(&table, 1, &[row("c", 3)])).is_err(), "a sealed generation is immutable");
        assert_eq!(block_on(tx.activate_generation(&table, 1, ReadLease::default())).unwrap(), None);
        store.finish(tx, None).unwrap();
        assert_eq!(store.bulk(&table, 1).0.map(|r| r.len()), Some(2));
        assert_eq!(store.bulk(&table, 1).1, Some(1));

        let (mut tx, _) = store.begin(false);
        block_on(tx.create_generation(&table, 2)).unwrap();
        block_on(tx.copy_rows(&table, 2, &[row("b", 9), row("a", 4), row("b", 3), row("a", 2), row("b", 1)])).unwrap();
        let first_repeat = Duplicate { key: "b".into(), first: Some(1), repeat: Some(3) };
        assert_eq!(block_on(tx.seal_generation(&table, 2)).unwrap(), Some(first_repeat), "b repeats first, at 3");
        block_on(tx.drop_generation(&table, 2)).unwrap();
        assert!(block_on(tx.copy_rows(&table, 2, &[row("c", 3)])).is_err(), "a dropped generation has no storage");
        assert_eq!(block_on(tx.bulk_generations(&table)).unwrap(), vec![1], "only 1 has storage");
        store.finish(tx, None).unwrap();
        assert_eq!(store.bulk(&table, 2), (None, Some(1)));
    }

    #[test]
    fn a_checkpoint_under_an_older_epoch_is_fenced_and_writes_nothing() {
        let store = MemStore::new("events");
        let first = block_on(store.claim(&Stateless, 0, 0)).expect("claimed");
        let second = block_on(store.claim(&Stateless, 0, 0)).expect("claimed again");
        assert_eq!((first.epoch, second.epoch), (1, 2));
        assert!(matches!(checkpoint(&store, 1, 5), Err(StoreError::Fenced(0))));
        assert_eq!(store.partition(0).map(|(_, p)| p.next_offset), Some(0));
        checkpoint(&store, 2, 5).expect("the owner's checkpoint commits");
        assert_eq!(store.partition(0).map(|(_, p)| p.next_offset), Some(5));
    }

    #[test]
    fn a_failed_commit_writes_nothing_and_a_lost_reply_writes_everything() {
        let store = MemStore::new("events");
        block_on(store.claim(&Stateless, 0, 0)).expect("claimed");
        store.inject(Some(StoreFault::Fail));
        assert!(checkpoint(&store, 1, 3).is_err_and(|e| e.is_retryable()));
        assert_eq!(store.partition(0).map(|(_, p)| p.next_offset), Some(0));
        store.inject(Some(StoreFault::LostReply));
        assert!(checkpoint(&store, 1, 4).is_err_and(|e| e.is_retryable()));
        assert_eq!(
            store.partition(0).map(|(_, p)| p.next_offset),
            Some(4),
            "committed, though the caller heard an error"
        );
    }

    #[test]
    fn a_stalled_commit_waits_for_its_release_and_a_claim_meanwhile_fences_it() {
        use std::future::Future;
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let new_ids = HashMap::new();
        let id_chunks = HashMap::new();
        let cp = |next_offset, epoch| EngineCheckpoint {
            position: Position { next_offset, watermark_ms: 0 },
            epoch,
            new_ids: &new_ids,
            closed_id_hours: &[],
            id_chunks: &id_chunks,
            emits: &[],
            emitted_through: None,
        };
        let store = MemStore::new("events");
        block_on(store.claim(&Stateless, 0, 0)).expect("claimed");

        store.inject(Some(StoreFault::Stall));
        let mut commit = std::pin::pin!(store.commit(&Stateless, 0, cp(3, 1), None));
        assert!(commit.as_mut().poll(&mut cx).is_pending());
        assert_eq!(store.stalled(), 1);
        assert!(commit.as_mut().poll(&mut cx).is_pending(), "pending until released");
        store.release_stalled(0);
        assert!(matches!(commit.as_mut().poll(&mut cx), std::task::Poll::Ready(Ok(_))));
        assert_eq!(store.partition(0).map(|(_, p)| p.next_offset), Some(3));

        // A claim does not take the stall: the next commit does, and the claim's epoch fences it.
        store.inject(Some(StoreFault::Stall));
        assert_eq!(block_on(store.claim(&Stateless, 0, 0)).expect("claimed again").epoch, 2);
        assert_eq!(store.stalled(), 0);
        let mut zombie = std::pin::pin!(store.commit(&Stateless, 0, cp(5, 2), None));
        assert!(zombie.as_mut().poll(&mut cx).is_pending());
        assert_eq!(block_on(store.claim(&Stateless, 0, 0)).expect("claimed meanwhile").epoch, 3);
        store.release_stalled(0);
        assert!(matches!(zombie.as_mut().poll(&mut cx), std::task::Poll::Ready(Err(StoreError::Fenced(0)))));
        assert_eq!(store.partition(0).map(|(_, p)| p.next_offset), Some(3), "the zombie wrote nothing");
        assert_eq!(store.stalled(), 0);
    }
}
