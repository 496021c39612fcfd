//! One owned partition of a workload's events topic, and the two steps the
//! engine runs on it besides applying records: claiming it (restore, fence,
//! re-send) and checkpointing it (store, then emit). A checkpoint is taken
//! ([`begin_checkpoint`]: a snapshot it owns), run beside the loop
//! ([`run_checkpoint`]: no access to the partition, which goes on applying
//! records) and recorded in the partition when it ends ([`finish_checkpoint`]).
//!
//! Public so that tests drive the exact steps of the loop with faults in between.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::dedup::IdWindow;
use super::emitter::{AggregateEmitter, KafkaProducer, Log, PartitionEmitter, TxnProducer};
use super::metrics as m;
use super::pipeline::ProcessorError;
use super::state_store::{record_chunks, ChunkCounts, EngineCheckpoint, Store, StoreError};
use super::{planted, Aggregation, Emit, Planted, Position, Scope, Skip};
use common::engine::kafka::partition_for;

/// Records a partition may read past its last committed checkpoint before
/// the loop checkpoints at once, and stops reading until a checkpoint
/// commits: one checkpoint's rows, outbox and Kafka transactions stay
/// bounded however large a backlog is or however long PostgreSQL fails.
/// Records read while a checkpoint is in flight count until the one after
/// it commits.
/// A record counts for its [`Aggregation::weight`] (the items of a batch).
pub const MAX_PENDING_RECORDS: usize = 50_000;

/// Records a partition with no checkpoint in flight may read past its last
/// committed checkpoint before its next checkpoint starts at once, whatever
/// the loop's timers (the backlog's longer interval, the emit pacing): half
/// the bound. Half, because a checkpoint runs beside the loop, one at a time
/// per partition: the one started here covers half the bound, and the
/// partition goes on reading the other half while it commits, so reading
/// stops at [`MAX_PENDING_RECORDS`] only if committing a checkpoint takes
/// longer than reading as many records as it holds. Earlier would make a
/// backlog's checkpoints smaller and more of them (each re-sends its
/// changed keys' whole records); later would leave less to read meanwhile.
pub const CHECKPOINT_AT_PENDING_RECORDS: usize = MAX_PENDING_RECORDS / 2;

#[cfg(any(test, feature = "sim"))]
thread_local! {
    static PENDING_BOUND: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// The pending records at which a checkpoint is due, and the bound: the
/// constants, or the smaller bound (and its half) set on this thread by
/// [`bound_pending`] (simulation only).
#[cfg(any(test, feature = "sim"))]
fn pending_bounds() -> (usize, usize) {
    PENDING_BOUND
        .with(std::cell::Cell::get)
        .map_or((CHECKPOINT_AT_PENDING_RECORDS, MAX_PENDING_RECORDS), |max| (max / 2, max))
}

#[cfg(not(any(test, feature = "sim")))]
#[inline(always)]
const fn pending_bounds() -> (usize, usize) {
    (CHECKPOINT_AT_PENDING_RECORDS, MAX_PENDING_RECORDS)
}

/// Sets the bound of pending records on this thread (`None`: [`MAX_PENDING_RECORDS`]),
/// a checkpoint being due at half of it: the simulation's runs (at most 150
/// events) reach a bound of a few records, not 50,000.
#[cfg(any(test, feature = "sim"))]
pub fn bound_pending(max: Option<usize>) {
    PENDING_BOUND.with(|b| b.set(max));
}

/// The skip reason of a record already in the restored state.
pub const REPLAYED: Skip = Skip("replayed");
/// The skip reason of a record keyed for another partition.
pub const MISROUTED: Skip = Skip("misrouted");

/// A record as the consumer fetched it.
#[derive(Debug, Clone, Copy)]
pub struct FetchedRecord<'a> {
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    /// The broker's timestamp, where the topic stamps log-append times.
    pub log_append_ms: Option<i64>,
}

/// What became of a fetched record ([`OwnedPartition::on_record`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnRecord {
    Applied,
    /// Not counted: the label of `analytics_processor_events_skipped_total{reason}`.
    Skipped(Skip),
    /// The partition stopped before it (a record fetched before the stop).
    Ignored,
    /// Undecodable: the partition stops at it (the decoder's error, if any).
    Stalled(Option<String>),
}

/// One partition this instance owns.
pub struct OwnedPartition<S, P: TxnProducer = KafkaProducer> {
    pub(crate) epoch: i64,
    pub(crate) position: Position,
    pub(crate) ids: IdWindow,
    pub(crate) id_chunks: ChunkCounts,
    pub(crate) state: S,
    /// This partition's transactional producer (its id fences former owners),
    /// shared with its checkpoint in flight.
    pub(crate) emitter: Arc<PartitionEmitter<P>>,
    /// The next offset the last emitted progress records carried: a
    /// checkpoint is due whenever the position moved past it, even if the
    /// records changed nothing (duplicates, skipped records), so that a read
    /// token of such a record resolves too.
    pub(crate) progress_emitted: i64,
    /// The offset of an undecodable record this partition stopped at: it is
    /// no longer consumed (its lease is kept, so nobody re-claims it) until
    /// an operator deploys a reader that knows the record and restarts.
    pub(crate) stalled_at: Option<i64>,
    /// Outbox rows up to this input offset are in the log (their Kafka
    /// transaction committed): the next checkpoint deletes them.
    pub(crate) outbox_through: Option<i64>,
    /// Records read since the last committed checkpoint: the loop starts a
    /// checkpoint at [`CHECKPOINT_AT_PENDING_RECORDS`] (if none is in flight)
    /// and reads no more at [`MAX_PENDING_RECORDS`] until one commits.
    pub(crate) pending_records: usize,
}

impl<S, P: TxnProducer> OwnedPartition<S, P> {
    pub fn position(&self) -> Position {
        self.position
    }

    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    pub fn state(&self) -> &S {
        &self.state
    }

    pub fn ids(&self) -> &IdWindow {
        &self.ids
    }

    /// True when the partition must checkpoint before it reads more.
    pub fn is_full(&self) -> bool {
        self.pending_records >= pending_bounds().1
    }

    /// True when the partition's next checkpoint is due at once (if none is
    /// in flight: then every pending record is one it would write).
    pub fn is_due(&self) -> bool {
        self.pending_records >= pending_bounds().0
    }

    /// What the loop does with one fetched record of this partition: ignores
    /// it if the partition stopped or already holds it (a replay), skips it if
    /// it is keyed for another of the `partitions` (moving the position),
    /// stops the partition at it if it cannot be decoded, and else applies it
    /// ([`apply`](Self::apply)) at the broker's log-append time where the
    /// topic stamps one, else at the writer's acceptance time.
    pub fn on_record<W: Aggregation<State = S>>(
        &mut self,
        workload: &W,
        partitions: i32,
        partition: i32,
        record: FetchedRecord<'_>,
    ) -> OnRecord {
        let offset = record.offset;
        if self.stalled_at.is_some() {
            return OnRecord::Ignored; // fetched before the partition stopped: its position must stay at the bad record
        }
        if offset < self.position.next_offset {
            // Already in the restored state (a replay after a re-assignment).
            return OnRecord::Skipped(REPLAYED);
        }
        // The loop gives a full partition nothing until a checkpoint commits, not even the rest of a fetch.
        debug_assert!(!self.is_full(), "a record given to a partition at its bound of pending records");
        // A record whose key belongs to another partition (a producer with another
        // partitioner or partition count): counting it here could count it twice.
        // Skipped, the same way on every replay, and counted in a metric.
        if record.key.is_some_and(|k| partition_for(k, partitions) != partition) {
            self.position.next_offset = offset + 1;
            self.pending_records += 1;
            return OnRecord::Skipped(MISROUTED);
        }
        let event = match record.payload.map(|p| workload.decode(p)) {
            Some(Ok(event)) => event,
            other => {
                // Skipping it would lose an accepted event for good (a record of a
                // newer schema version, say). Stop this partition at the record,
                // keeping its lease and state, and raise the alarm; the others go on.
                self.stalled_at = Some(offset);
                return OnRecord::Stalled(other.and_then(Result::err).map(|e| e.to_string()));
            }
        };
        // The broker's clock, where the topic stamps it (LogAppendTime): one
        // clock for the whole partition; else the writer's acceptance time.
        let accepted_at_ms = record.log_append_ms.unwrap_or_else(|| workload.accepted_at_ms(&event));
        match self.apply(workload, offset, accepted_at_ms, event) {
            Ok(_) => OnRecord::Applied,
            Err(skip) => OnRecord::Skipped(skip),
        }
    }

    /// What the engine does with one decoded record that passed the routing
    /// check: moves the position, drops a repeated id, applies the rest.
    /// Returns whether it was applied.
    pub fn apply<W: Aggregation<State = S>>(
        &mut self,
        workload: &W,
        offset: i64,
        accepted_at_ms: i64,
        event: W::Event,
    ) -> Result<bool, super::Skip> {
        self.position.next_offset = offset + 1;
        self.position.watermark_ms = self.position.watermark_ms.max(accepted_at_ms);
        self.pending_records += workload.weight(&event).max(1);
        let watermark_ms = self.position.watermark_ms;
        if let Some(id) = workload.dedup_id(&event) {
            if !self.ids.admit(id, watermark_ms) {
                return Err(super::Skip("duplicate_id"));
            }
        }
        let record = super::Record { offset, accepted_at_ms, watermark_ms };
        workload.apply(&mut self.state, record, event).map(|()| true)
    }
}

/// Claims a partition's state in the store (fencing any previous owner's
/// writes), opens its transactional producer (fencing any previous owner's
/// emits and aborting its open transaction) and re-sends what a previous
/// owner may not have emitted. One attempt: the caller retries.
///
/// # Errors
/// The store's, or the emitter's.
pub async fn claim_partition<W: Aggregation, S: Store, L: Log>(
    workload: &W,
    store: &S,
    emitter: &AggregateEmitter<L>,
    partition: i32,
    retention_ms: i64,
) -> Result<OwnedPartition<W::State, L::Producer>, ProcessorError> {
    // Both at once (see `open_claimed`): the store's restore and the producer's
    // `init_transactions` are each a round trip or more, on different servers.
    let (claimed, opened) = tokio::join!(store.claim(workload, partition, retention_ms), emitter.open(partition));
    open_claimed(workload, store.topic(), opened?, partition, claimed?).await
}

/// The second half of [`claim_partition`], once the store's state is loaded
/// and the partition's producer is open.
///
/// The two may be taken in either order, or at once: nothing is emitted
/// before both are done. A former owner still alive is fenced in the store by
/// the claim's epoch and in the log by the producer; whatever it committed in
/// either before that is in the restored outbox, and re-sending it below is
/// idempotent.
pub(crate) async fn open_claimed<W: Aggregation, P: TxnProducer>(
    workload: &W,
    topic: &str,
    emitter: PartitionEmitter<P>,
    partition: i32,
    claimed: super::state_store::Claimed<W::State>,
) -> Result<OwnedPartition<W::State, P>, ProcessorError> {
    let position = claimed.position;
    // Exactly the records that may be missing from the log: those of
    // checkpoints whose Kafka transaction was not known committed. Every
    // other record of the state is already there, and the sinks keep the
    // newest input offset per key, so re-sending these is idempotent.
    // Kept whole (closed hours' final records), then rendered from the
    // restored state, which is at least as new as the record it replaces.
    let outbox = claimed.outbox;
    let mut records = outbox.kept;
    if planted(Planted::ResendDropsKept) {
        records.clear();
    }
    records.extend(workload.render(Scope { topic, partition }, position, &claimed.state, &outbox.keys));
    if planted(Planted::ResendIgnoresOutbox) {
        records.clear();
    }
    let resent = records.len();
    // The claim's state is committed: nothing to wait for.
    emitter.emit(records, Some(position.next_offset), std::future::ready(true)).await?;
    metrics::counter!(m::CLAIM_RESENT, "workload" => W::NAME).increment(resent as u64);
    Ok(OwnedPartition {
        epoch: claimed.epoch,
        position,
        ids: claimed.ids,
        id_chunks: claimed.id_chunks,
        state: claimed.state,
        emitter: Arc::new(emitter),
        progress_emitted: position.next_offset,
        stalled_at: None,
        outbox_through: outbox.through,
        pending_records: 0,
    })
}

/// Checkpoints one partition: its changes, new ids and position to the store
/// in one transaction, then its emits to Kafka in transactions. Returns the
/// committed position if anything changed. The loop runs the same three
/// steps with records applied in between ([`begin_checkpoint`]).
///
/// # Errors
/// The store's (nothing was written then), or the emitter's (the store is
/// then ahead of the log: the partition must be claimed again, which re-sends).
pub async fn checkpoint_partition<W: Aggregation, S: Store, P: TxnProducer>(
    workload: &W,
    store: &S,
    partition: i32,
    owned: &mut OwnedPartition<W::State, P>,
) -> Result<Option<i64>, ProcessorError> {
    let Some(cp) = begin_checkpoint(workload, store.topic(), partition, owned) else { return Ok(None) };
    let finished = run_checkpoint(workload, store, cp).await;
    finish_checkpoint(workload, owned, finished)
}

/// One partition's checkpoint as taken when it starts ([`begin_checkpoint`]):
/// everything it writes and emits, owned, so that it runs
/// ([`run_checkpoint`]) while the loop applies more records to the partition.
pub struct Checkpoint<C, P: TxnProducer> {
    partition: i32,
    epoch: i64,
    position: Position,
    changes: Option<C>,
    emits: Vec<Emit>,
    new_ids: HashMap<i64, Vec<u64>>,
    /// How many ids `new_ids` holds: the first that many of the window's new ids.
    new_id_count: usize,
    closed_id_hours: Vec<i64>,
    id_chunks: ChunkCounts,
    emitted_through: Option<i64>,
    /// The next offset, if the position moved past the last progress records.
    progress: Option<i64>,
    /// The partition's pending records it covers.
    pending_records: usize,
    emitter: Arc<PartitionEmitter<P>>,
}

/// What a checkpoint did ([`run_checkpoint`]), for [`finish_checkpoint`] to
/// record in its partition.
pub struct Finished<C, R> {
    partition: i32,
    /// What the store committed, if it did.
    stored: Option<Stored<C, R>>,
    /// Records and bytes emitted, if the emit committed.
    emitted: Option<(usize, usize)>,
    next_offset: i64,
    result: Result<Option<i64>, ProcessorError>,
}

/// What a committed store transaction leaves to record in the partition.
struct Stored<C, R> {
    changes: Option<(C, R)>,
    ids_added: Vec<(i64, u32)>,
    new_id_count: usize,
    closed_id_hours: Vec<i64>,
    pending_records: usize,
}

impl<C, R> Finished<C, R> {
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The outcome: the committed position if anything changed, or why it failed.
    pub fn result(&self) -> &Result<Option<i64>, ProcessorError> {
        &self.result
    }

    /// Bytes of aggregates the checkpoint emitted (0 if its emit did not commit):
    /// the loop paces checkpoints by them ([`emit_pause`]).
    pub fn emitted_bytes(&self) -> usize {
        self.emitted.map_or(0, |(_, bytes)| bytes)
    }
}

/// Takes a checkpoint of `owned`, or `None` when there is nothing to write:
/// the snapshot of the workload's changes ([`Aggregation::changes`]), its
/// records, the new event ids and the position, owned by the checkpoint.
/// Call only when the partition has no checkpoint in flight: one at a time,
/// so that a checkpoint's store, then its emit, then the next one's store
/// keep their order.
pub fn begin_checkpoint<W: Aggregation, P: TxnProducer>(
    workload: &W,
    topic: &str,
    partition: i32,
    owned: &mut OwnedPartition<W::State, P>,
) -> Option<Checkpoint<W::Changes, P>> {
    let closed_id_hours = owned.ids.evict_closed(owned.position.watermark_ms);
    let changes = workload.changes(&mut owned.state);
    let moved = owned.position.next_offset > owned.progress_emitted;
    let outbox_due = owned.outbox_through.is_some();
    if changes.is_none() && !owned.ids.has_new() && closed_id_hours.is_empty() && !moved && !outbox_due {
        return None;
    }
    let scope = Scope { topic, partition };
    let emits = changes.as_ref().map(|c| workload.emits(scope, owned.position, c)).unwrap_or_default();
    Some(Checkpoint {
        partition,
        epoch: owned.epoch,
        position: owned.position,
        changes,
        emits,
        new_ids: owned.ids.new_ids(),
        new_id_count: owned.ids.new_len(),
        closed_id_hours,
        id_chunks: owned.id_chunks.clone(),
        emitted_through: owned.outbox_through,
        progress: moved.then_some(owned.position.next_offset),
        pending_records: owned.pending_records,
        emitter: owned.emitter.clone(),
    })
}

/// Runs a checkpoint: its changes, new ids, position and outbox to the store
/// in one transaction under its epoch, and its records to the log in
/// transactions, the progress records last, none committed before the store
/// committed. The records of one transaction (the usual case) are sent while
/// the store commits; several wait for it.
pub async fn run_checkpoint<W: Aggregation, S: Store, P: TxnProducer>(
    workload: &W,
    store: &S,
    cp: Checkpoint<W::Changes, P>,
) -> Finished<W::Changes, W::Receipt> {
    let started = Instant::now();
    let next_offset = cp.position.next_offset;
    let mut finished = Finished { partition: cp.partition, stored: None, emitted: None, next_offset, result: Ok(None) };
    let engine = EngineCheckpoint {
        position: cp.position,
        epoch: cp.epoch,
        new_ids: &cp.new_ids,
        closed_id_hours: &cp.closed_id_hours,
        id_chunks: &cp.id_chunks,
        emits: if planted(Planted::OutboxSkipped) { &[] } else { &cp.emits },
        emitted_through: cp.emitted_through,
    };
    // The newest input this checkpoint read (its position moved), by the stage it reached.
    let newest_ms = if cp.progress.is_some() { cp.position.watermark_ms } else { 0 };
    let emitted = cp.emits.len();
    let emitted_bytes: usize = cp.emits.iter().map(Emit::bytes).sum();
    let (stored_tx, stored_rx) = futures::channel::oneshot::channel();
    let store = async {
        let committed = store.commit(workload, cp.partition, engine, cp.changes.as_ref()).await;
        let _ = stored_tx.send(committed.is_ok());
        // A stage reached: a store that failed records neither.
        if committed.is_ok() {
            metrics::histogram!(m::CHECKPOINT_STAGE_DURATION, "workload" => W::NAME, "stage" => "store")
                .record(started.elapsed().as_secs_f64());
            m::record_input_age(W::NAME, "stored", newest_ms);
        }
        (committed, Instant::now())
    };
    // The progress records after the aggregates, in the last transaction:
    // a reader that applied them has applied the aggregates too. A copy of
    // the records goes to the log while the store holds them for its outbox.
    let emit = cp.emitter.emit(cp.emits.clone(), cp.progress, async { stored_rx.await.unwrap_or(false) });
    let ((committed, stored_at), emit) = futures::join!(store, emit);
    let (ids_added, receipt) = match committed {
        Ok(committed) => committed,
        // The store refused (another owner) or failed: nothing was written, and the
        // log withdrew the records; unless the log failed too, which leaves its
        // producer in doubt: the partition is claimed again, as after a failed emit.
        Err(refused) => {
            finished.result = Err(match (refused, emit) {
                (StoreError::Pg(_), Err(e)) => e.into(),
                (refused, _) => refused.into(),
            });
            return finished;
        }
    };
    finished.stored = Some(Stored {
        changes: cp.changes.zip(receipt),
        ids_added,
        new_id_count: cp.new_id_count,
        closed_id_hours: cp.closed_id_hours,
        pending_records: cp.pending_records,
    });
    if let Err(e) = emit {
        finished.result = Err(e.into());
        return finished;
    }
    finished.emitted = Some((emitted, emitted_bytes));
    finished.result = Ok(Some(next_offset));
    // What the log's commit added after the store's.
    metrics::histogram!(m::CHECKPOINT_STAGE_DURATION, "workload" => W::NAME, "stage" => "emit")
        .record(stored_at.elapsed().as_secs_f64());
    m::record_input_age(W::NAME, "emitted", newest_ms);
    metrics::counter!(m::AGGREGATES_EMITTED, "workload" => W::NAME).increment(emitted as u64);
    metrics::counter!(m::AGGREGATE_BYTES_EMITTED, "workload" => W::NAME).increment(emitted_bytes as u64);
    metrics::counter!(m::CHECKPOINTS, "workload" => W::NAME).increment(1);
    metrics::histogram!(m::CHECKPOINT_DURATION, "workload" => W::NAME).record(started.elapsed().as_secs_f64());
    finished
}

/// Records what a checkpoint did in its partition, which may have applied
/// records since the checkpoint was taken: what the store committed is
/// marked durable (exactly the snapshot: what changed after it stays for
/// the next checkpoint, [`Aggregation::committed`]), and what the emit
/// committed leaves the outbox to delete next time. Returns the checkpoint's
/// outcome: the committed position if anything changed.
///
/// # Errors
/// The store's (nothing was written then), or the emitter's (the store is
/// then ahead of the log: the partition must be claimed again, which re-sends).
pub fn finish_checkpoint<W: Aggregation, P: TxnProducer>(
    workload: &W,
    owned: &mut OwnedPartition<W::State, P>,
    finished: Finished<W::Changes, W::Receipt>,
) -> Result<Option<i64>, ProcessorError> {
    if let Some(stored) = finished.stored {
        owned.outbox_through = None;
        owned.pending_records = owned.pending_records.saturating_sub(stored.pending_records);
        record_chunks(&mut owned.id_chunks, stored.ids_added, &stored.closed_id_hours);
        let clears_later = planted(Planted::CommittedClearsLaterChanges);
        if clears_later {
            owned.ids.mark_checkpointed();
        } else {
            owned.ids.checkpointed(stored.new_id_count, &stored.closed_id_hours);
        }
        if let Some((changes, receipt)) = stored.changes {
            // The bug: the state's changes as they are now, not the snapshot persisted.
            let changes = if clears_later { workload.changes(&mut owned.state).unwrap_or(changes) } else { changes };
            workload.committed(&mut owned.state, changes, receipt);
        }
    }
    if let Some((emitted, _)) = finished.emitted {
        owned.progress_emitted = finished.next_offset;
        // In the log now: the next checkpoint deletes them from the outbox.
        owned.outbox_through = (emitted > 0).then_some(finished.next_offset);
    }
    finished.result
}

/// How long to wait before the next checkpoint after one that emitted
/// `bytes` of aggregates, for the emits to stay within `bytes_per_sec`.
///
/// Every checkpoint re-sends each changed key's whole record (an hour's
/// sketch is up to 49 KB), so events spread over many open hours would
/// multiply the bytes sent to Kafka and PostgreSQL by the checkpoint rate.
/// Pacing by the bytes just sent lets more events fold into each record
/// instead: the bytes per second stay bounded whatever the spread, and the
/// pause is zero while the emits are small.
pub fn emit_pause(bytes: usize, bytes_per_sec: u64) -> Duration {
    if bytes_per_sec == 0 {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(bytes as f64 / bytes_per_sec as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_after_a_checkpoint_keeps_its_emits_within_the_rate() {
        // 170 open hours, each a dense 49,155-byte sketch, at 32 MiB/s: a quarter second.
        let round = 170 * 49_155;
        let pause = emit_pause(round, 32 << 20);
        assert!((pause.as_secs_f64() - round as f64 / f64::from(32u32 << 20)).abs() < 1e-9, "{pause:?}");
        assert!(pause > Duration::from_millis(240) && pause < Duration::from_millis(250), "{pause:?}");
        // Small emits (the current hour's record) are not held back at all, in effect.
        assert!(emit_pause(2_000, 32 << 20) < Duration::from_micros(100));
        assert_eq!(emit_pause(0, 32 << 20), Duration::ZERO);
        // 0 is no limit.
        assert_eq!(emit_pause(usize::MAX, 0), Duration::ZERO);
    }
}
