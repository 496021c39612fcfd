//! The processor engine: knows partitions, offsets, epochs and transactions,
//! nothing of any workload's events.
//!
//! Per owned partition of a workload's events topic it keeps the
//! [`Position`] (next offset, watermark), the event ids seen (for
//! deduplication, [`dedup`]) and the workload's state, and every checkpoint
//! interval commits all three to PostgreSQL in one transaction under the
//! partition's fencing epoch ([`state_store`]), together with the
//! workload's aggregates of that checkpoint in an outbox; then emits those
//! aggregates, tagged with that position, in bounded Kafka transactions
//! ([`emitter`]); the next checkpoint deletes the outbox rows so emitted. A
//! crash anywhere replays from the stored position and recomputes the same
//! values; a claim re-sends the outbox (the only records a former owner may
//! have left out of the log); and the sinks keep the highest offset per key.
//!
//! A workload plugs in by implementing [`Aggregation`]: its event decoding,
//! its pure state (apply, changes since the last checkpoint), the rows that
//! persist that state (in the tables it declares, [`tables`], written inside
//! the engine's transaction) and the records it emits.
//!
//! The loop does all its I/O through traits, bundled as [`io::Io`]: the
//! state store ([`state_store::Store`]), the aggregates log
//! ([`emitter::Log`]), the events consumer ([`io::Source`]), the lease group
//! ([`io::Members`]) and its timers ([`io::Clock`]); each has a production
//! implementation (PostgreSQL, Kafka, tokio) and an in-memory one (`sim`, in
//! tests and behind the `sim` feature), over which a seeded simulation runs
//! the real loop and checks exactly-once (docs/architecture.md,
//! "Deterministic simulation").

pub mod dedup;
pub mod emitter;
pub mod io;
pub mod metrics;
pub mod partition;
mod pipeline;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod state_store;
pub mod tables;

use std::future::Future;

use common::engine::avro::DecodeError;
use common::engine::pg::PgError;

pub use pipeline::{Parts, Processor, ProcessorError, ProcessorSettings};

/// The checkpoint interval of a workload whose writes are answered by their
/// decision (it has a replies topic; `Aggregation::replies`, published at
/// once) unless it declares its own: its checkpoint only carries the read
/// model's changes and the state, so 200 ms rather than the engine's 50;
/// under load fewer transactions leave the cores to the decisions.
pub const DECIDED_WRITES_CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);
use tables::StateTx;

/// How far one partition's state has got: every record below `next_offset`
/// is reflected, and `watermark_ms` is the newest acceptance time among them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub next_offset: i64,
    pub watermark_ms: i64,
}

/// Whose state a workload reads or writes: a partition of an events topic.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub topic: &'a str,
    pub partition: i32,
}

/// A record handed to [`Aggregation::apply`], once and in offset order.
#[derive(Debug, Clone, Copy)]
pub struct Record {
    pub offset: i64,
    /// When the record was accepted: the broker's log-append time where the
    /// topic stamps one (one clock for the partition), else the writer's.
    pub accepted_at_ms: i64,
    /// The partition's watermark, this record included.
    pub watermark_ms: i64,
}

/// A record that was read but not counted; the label goes to
/// `analytics_processor_events_skipped_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skip(pub &'static str);

/// An event's client id for deduplication: the 64-bit hash of the id (with
/// whatever else makes it unique, such as the user) and the start of the
/// bucket whose closing forgets it ([`dedup::IdWindow`]): a multiple of the
/// workload's [`Aggregation::DEDUP_BUCKET_MS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupId {
    pub bucket_ms: i64,
    pub hash: u64,
}

/// One record for the aggregates topic: its compaction key and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emit {
    pub key: String,
    pub payload: Vec<u8>,
    /// True when the state that produced it cannot render it again (a
    /// closed hour's final record): the outbox keeps its bytes. Otherwise
    /// the outbox keeps only its key, and a claim asks the workload to
    /// render it from the restored state ([`Aggregation::render`]).
    pub keep_payload: bool,
}

impl Emit {
    /// The record's key and payload bytes: what transactions are bounded and emits paced by.
    pub fn bytes(&self) -> usize {
        self.key.len() + self.payload.len()
    }
}

/// A workload's side of the processor.
///
/// Everything but `restore` and `persist` is pure: the state must be a
/// function of the records applied (never of a clock), so a replay after a
/// crash yields the same emits.
///
/// A checkpoint runs beside the loop: [`changes`](Self::changes) takes a
/// snapshot of what to persist and emit, owned by the checkpoint, which
/// writes it ([`persist`](Self::persist), without the state) and emits it
/// while the loop goes on applying records to the same state; then
/// [`committed`](Self::committed) gets the snapshot back. So `committed`
/// must leave dirty whatever changed after the snapshot (a key changed
/// again stays dirty; a delta keeps what was appended since), and the next
/// checkpoint, which starts only after this one ended, persists it.
pub trait Aggregation: Send + Sync + 'static {
    /// The workload's name: a label on the engine's metrics and in logs.
    const NAME: &'static str;
    /// The length of the buckets event ids are kept in ([`DedupId::bucket_ms`]):
    /// an id is forgotten when its bucket closes (the bucket's end plus the
    /// horizon's retention, on the partition's watermark). Engine policy; an hour unless the workload sets it.
    const DEDUP_BUCKET_MS: i64 = dedup::BUCKET_MS;
    /// Kilobytes of fetched records the workload's consumer holds ahead of
    /// its loop ([`common::engine::kafka::prefetch`]): enough to keep every
    /// partition fed. A workload whose records are large batches held in the
    /// state until a checkpoint (bulk rows) sets less, since a starved loop
    /// holds both its pending rows and a full prefetch.
    const PREFETCH_KBYTES: u32 = common::engine::kafka::PREFETCH_KBYTES;
    /// The workload's own checkpoint interval, where the engine's
    /// (`--checkpoint-interval`, 50 ms: the freshness of counts) is not what
    /// it wants; an operator's `--checkpoint-intervals <name>=<d>` is over
    /// both. A workload whose writes are answered by their decision (replies
    /// published at once, not at the checkpoint) gets a longer one from the
    /// engine ([`DECIDED_WRITES_CHECKPOINT_INTERVAL`]) unless it sets its own: every
    /// checkpoint is a PostgreSQL transaction and a Kafka transaction whose
    /// cost does not grow with the writes it holds, so under load fewer of
    /// them leave the cores to the decisions (docs/benchmarks-notes.md);
    /// what it costs is the read model's lag, up to the interval more.
    const CHECKPOINT_INTERVAL: Option<std::time::Duration> = None;
    /// A decoded record of the events topic.
    type Event: Send;
    /// The state of one partition.
    type State: Send + Sync + 'static;
    /// What changed since the last checkpoint, as persisted and emitted: a
    /// snapshot, self-contained (it owns whatever `persist` writes).
    type Changes: Send + Sync + 'static;
    /// What a committed `persist` leaves to record in the state (row counts, say).
    type Receipt: Send + 'static;

    /// Decodes a record; an error stops the partition at it (see `stall_partition`).
    fn decode(&self, payload: &[u8]) -> Result<Self::Event, DecodeError>;

    /// The writer's acceptance time, used where the topic has no log-append time.
    fn accepted_at_ms(&self, event: &Self::Event) -> i64;

    /// The event's client id, if it carries one: the engine counts an id once.
    fn dedup_id(&self, event: &Self::Event) -> Option<DedupId>;

    /// How many of a partition's pending records
    /// ([`MAX_PENDING_RECORDS`](partition::MAX_PENDING_RECORDS)) the event
    /// counts for: 1 by default; more for a record that carries several
    /// items the state buffers until the checkpoint (a batch of rows), so
    /// that the bound holds what the state holds, whatever the batching.
    fn weight(&self, event: &Self::Event) -> usize {
        let _ = event;
        1
    }

    /// Applies one record.
    ///
    /// # Errors
    /// [`Skip`] when the record is not counted (its label names why).
    fn apply(&self, state: &mut Self::State, record: Record, event: Self::Event) -> Result<(), Skip>;

    /// What changed since the last committed checkpoint, or `None`: a
    /// snapshot the checkpoint owns, whatever is applied after it. May first
    /// close what the watermark closed. Leaves the state able to give the
    /// same answer again (plus what is applied meanwhile) until
    /// [`committed`](Self::committed), so a failed write is retried whole.
    fn changes(&self, state: &mut Self::State) -> Option<Self::Changes>;

    /// Loads a partition's state from its tables, inside the engine's claim transaction.
    fn restore<T: StateTx>(
        &self,
        tx: &mut T,
        scope: Scope<'_>,
        position: Position,
    ) -> impl Future<Output = Result<Self::State, PgError>> + Send;

    /// Writes `changes` inside the engine's checkpoint transaction, which
    /// commits them together with the position under the partition's epoch.
    /// Has no access to the state: the loop is applying records to it meanwhile.
    fn persist<T: StateTx>(
        &self,
        tx: &mut T,
        scope: Scope<'_>,
        changes: &Self::Changes,
    ) -> impl Future<Output = Result<Self::Receipt, PgError>> + Send;

    /// Records that `changes` (the snapshot [`changes`](Self::changes) took)
    /// are durable. Records may have been applied since the snapshot: what
    /// they changed must stay dirty, for the next checkpoint (a key whose
    /// value is no longer the one persisted, the users added to a delta
    /// after the persisted ones).
    fn committed(&self, state: &mut Self::State, changes: Self::Changes, receipt: Self::Receipt);

    /// The aggregates of `changes`, each reflecting the input up to `position`.
    /// The engine stores them in its outbox with the checkpoint, and re-sends
    /// them on a claim until their Kafka transaction is known committed.
    fn emits(&self, scope: Scope<'_>, position: Position, changes: &Self::Changes) -> Vec<Emit>;

    /// The records of `keys` as the state holds them now, each reflecting the
    /// input up to `position`: what a claim re-sends for outbox rows kept
    /// without their bytes. A key the state no longer holds is left out.
    fn render(&self, scope: Scope<'_>, position: Position, state: &Self::State, keys: &[String]) -> Vec<Emit>;

    /// The replies decided by the records applied since the last call, for a
    /// workload whose writes wait for a decision (its `Topics::replies`):
    /// each keyed by the request it answers. The engine calls this after
    /// every batch it applies and publishes them at once, outside the
    /// checkpoint's transaction: a decision must be a pure function of the
    /// log up to its record, so a replay (or a zombie owner) publishes the
    /// same reply again, never another. None by default.
    fn replies(&self, state: &mut Self::State) -> Vec<Emit> {
        let _ = state;
        Vec::new()
    }

    /// Sets the workload's own gauges over the states this instance holds.
    fn record_gauges<'a>(&self, states: impl Iterator<Item = &'a Self::State>)
    where
        Self::State: 'a;
}

/// Bugs the simulation must catch, planted one at a time by its tests:
/// [`planted`] is a constant `false` unless the `sim` feature (test-only: a
/// workload crate's dev-dependency) is on, so no service binary carries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(any(test, feature = "sim")), allow(dead_code))]
pub enum Planted {
    /// A checkpoint writes even when its epoch was bumped (a zombie's state lands).
    NoCheckpointFence,
    /// A claim does not fence the former owner's producer (a zombie's emits land).
    NoEmitFence,
    /// A claim re-sends only the rendered records, not those kept whole (closed hours' finals).
    ResendDropsKept,
    /// A claim re-sends nothing from the outbox.
    ResendIgnoresOutbox,
    /// A claim does not restore the event ids (a retried id counts again).
    IdsNotRestored,
    /// A checkpoint writes no outbox rows: its records live only until their emit.
    OutboxSkipped,
    /// A checkpoint commits the position in one transaction and the state in another.
    PositionBeforeState,
    /// A checkpoint's commit marks durable what is in the state when it
    /// ends, not the snapshot it wrote: the workload's changes and the event
    /// ids applied while it was in flight are never persisted nor emitted.
    CommittedClearsLaterChanges,
    /// A checkpoint's log transaction commits without waiting for its store
    /// to commit: a crash or a failed store in between leaves the log ahead of
    /// the state, and the next owner's re-send goes back in input offset.
    EmitBeforeStored,
}

#[cfg(any(test, feature = "sim"))]
thread_local! {
    static PLANTED: std::cell::Cell<Option<Planted>> = const { std::cell::Cell::new(None) };
}

/// True when `bug` is planted on this thread (simulation only).
#[cfg(any(test, feature = "sim"))]
pub(crate) fn planted(bug: Planted) -> bool {
    PLANTED.with(|p| p.get() == Some(bug))
}

#[cfg(not(any(test, feature = "sim")))]
#[inline(always)]
pub(crate) const fn planted(_: Planted) -> bool {
    false
}

/// Plants `bug` (or none) on this thread.
#[cfg(any(test, feature = "sim"))]
pub fn plant(bug: Option<Planted>) {
    PLANTED.with(|p| p.set(bug));
}
