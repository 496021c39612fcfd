//! The processor loop of one workload: consume events, apply them to
//! per-partition state, and every checkpoint interval commit state, emit
//! aggregates, commit offsets.
//!
//! Order per checkpoint, which is what makes the output exact
//! ([`checkpoint_partition`]):
//! 1. the state's changes, the new event ids, the position and the
//!    checkpoint's aggregates (the outbox) go to PostgreSQL in one
//!    transaction, under the partition's fencing epoch; the outbox rows of
//!    the previous checkpoint, whose emit committed, are deleted in it;
//! 2. the aggregates go to the aggregates topic, tagged with that position,
//!    in bounded Kafka transactions;
//! 3. the consumer offset is committed to the broker (only a hint: on claim
//!    the position always comes from the state store).
//!
//! A checkpoint runs beside the loop, on a snapshot it owns
//! ([`begin_checkpoint`]): while it commits, the loop goes on consuming,
//! applying records (to its partition too: they go into the next
//! checkpoint) and publishing replies. A partition has at most one
//! checkpoint in flight, so the order store → emit → next store holds.
//!
//! A crash anywhere replays from the state store's position and recomputes
//! the same values (the state is a pure function of the log prefix); a claim
//! re-sends the outbox, the only records that may be missing from the log
//! ([`open_claimed`]); and the sinks keep the highest offset per key. A
//! partition whose emit or claim fails is dropped and claimed again at the
//! next heartbeat; the loop goes on with the others.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::engine::config::KafkaConfig;
use common::engine::kafka::{consumer_config, prefetch};
use common::engine::membership::{Heartbeat, Membership, Plan};
use common::engine::shutdown::CancellationToken;
use futures::FutureExt;
use rdkafka::consumer::StreamConsumer;
use tracing::Instrument;

use super::emitter::{AggregateEmitter, EmitError, Log};
use super::io::{Clock, Io, KafkaSource, Members, Production, Source, SourceMessage, Task, Ticker, Timer, TokioClock};
use super::metrics as m;
use super::partition::{
    begin_checkpoint, checkpoint_partition, emit_pause, finish_checkpoint, open_claimed, run_checkpoint, Finished,
    OnRecord, OwnedPartition, MISROUTED,
};
use super::state_store::{Claimed, StateStore, Store, StoreError};
use super::Aggregation;

/// Records taken per wake-up of the loop once one has arrived.
const DRAIN_BATCH: usize = 1024;
/// Checkpoint interval while records are waiting (a backlog): each
/// checkpoint renders and sends its records and holds a PostgreSQL
/// connection, work taken from the consuming on the same cores.
const BACKLOG_CHECKPOINT_INTERVAL: Duration = Duration::from_millis(400);
/// The loop's pause after a checkpoint the store failed (PostgreSQL down):
/// back-pressure, and fewer attempts at a server that does not answer.
const STORE_RETRY_PAUSE: Duration = Duration::from_millis(500);
/// First and longest wait between attempts to claim a partition's state.
const CLAIM_RETRY_FIRST: Duration = Duration::from_millis(250);
const CLAIM_RETRY_MAX: Duration = Duration::from_secs(5);

/// What the loop does with a partition after a failed checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterCheckpoint {
    /// Keep it: the store failed and wrote nothing, so the next tick retries.
    Keep,
    /// Drop it: another instance owns it now (`fenced`), or its emit failed
    /// and the next heartbeat claims it again, which re-sends the outbox.
    Drop { fenced: bool },
    /// Not one partition's problem: the loop stops.
    Fatal,
}

/// The policy for a checkpoint's outcome (a success keeps the partition).
pub(crate) fn after_checkpoint(result: &Result<Option<i64>, ProcessorError>) -> AfterCheckpoint {
    match result {
        Ok(_) | Err(ProcessorError::Store(StoreError::Pg(_))) => AfterCheckpoint::Keep,
        Err(ProcessorError::Store(StoreError::Fenced(_)) | ProcessorError::Emit(EmitError::Fenced(_))) => {
            AfterCheckpoint::Drop { fenced: true }
        }
        Err(ProcessorError::Emit(EmitError::Kafka { .. })) => AfterCheckpoint::Drop { fenced: false },
        Err(ProcessorError::Kafka(_) | ProcessorError::LogReset(_)) => AfterCheckpoint::Fatal,
    }
}

/// What the engine needs to run one workload's processor.
#[derive(Debug, Clone)]
pub struct ProcessorSettings {
    pub kafka: KafkaConfig,
    pub events_topic: String,
    pub aggregates_topic: String,
    /// The workload's replies topic, if its writes wait for a decision (see `Aggregation::replies`).
    pub replies_topic: Option<String>,
    /// Partitions of the aggregates topic: each gets a progress record per checkpoint.
    pub aggregates_partitions: i32,
    /// Kafka group.id for the offset hint, and the transactional.id prefix.
    pub group_id: String,
    pub checkpoint_interval: Duration,
    /// Aggregate bytes per second the checkpoints may emit (0: no limit); see [`emit_pause`].
    pub emit_bytes_per_sec: u64,
    pub delivery_timeout: Duration,
    /// How long the replies' producer batches before sending ([`crate::config::Config::replies_linger`]).
    pub replies_linger: Duration,
    /// How long after its end an hour's event ids are held, on the watermark.
    pub retention_ms: i64,
    /// Partitions of the events topic, as agreed for the deployment (routing check).
    pub partitions: i32,
}

type Owned<W, I> = OwnedPartition<<W as Aggregation>::State, <<I as Io>::Log as Log>::Producer>;

/// What a checkpoint gives back when it ends.
type Done<W> = Finished<<W as Aggregation>::Changes, <W as Aggregation>::Receipt>;

/// A partition's checkpoint in flight: its task, and when the loop started it.
struct InFlight<W: Aggregation> {
    task: Task<Done<W>>,
    started: Instant,
}

/// What a processor is built over ([`Processor::assemble`]): its [`Io`], one of each.
pub struct Parts<I: Io> {
    pub source: I::Source,
    pub members: I::Members,
    pub store: I::Store,
    pub emitter: AggregateEmitter<I::Log>,
    pub clock: I::Clock,
}

/// One workload's processor loop, over Kafka and PostgreSQL ([`Production`])
/// or the simulation's memory.
pub struct Processor<W: Aggregation, I: Io = Production> {
    /// Shared with the checkpoints in flight, as the store is.
    workload: Arc<W>,
    source: Arc<I::Source>,
    /// Shared with the heartbeat in flight, which runs beside the loop.
    membership: Arc<I::Members>,
    store: Arc<I::Store>,
    emitter: AggregateEmitter<I::Log>,
    clock: I::Clock,
    topic: String,
    retention_ms: i64,
    checkpoint_interval: Duration,
    emit_bytes_per_sec: u64,
    /// No tick checkpoints before this: the pause the last round's emitted bytes call for.
    paced_until: Instant,
    /// Ordered, so that the partitions are claimed and checkpointed in one
    /// order, the same in every simulated run of a seed.
    owned: BTreeMap<i32, Owned<W, I>>,
    /// The checkpoint in flight of each partition that has one (at most one).
    inflight: BTreeMap<i32, InFlight<W>>,
    /// Positions committed since the offsets were last hinted to the broker.
    hints: Vec<(i32, i64)>,
    /// When the loop last ended a pause after a failed store: a checkpoint
    /// started before it failed in the same outage, and pauses no more.
    store_paused_at: Instant,
    /// Events applied since the last metrics flush (recorded per batch, not per event).
    applied: u64,
    /// The newest input's time among the records the loop's current wake-up applied (0: none yet).
    read_newest_ms: i64,
    partitions: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    #[error("emit: {0}")]
    Emit(#[from] EmitError),
    #[error(transparent)]
    LogReset(#[from] common::engine::kafka::PositionOutsideLog),
}

impl<W: Aggregation> Processor<W> {
    /// Creates the consumer and producer; partitions come from `membership`.
    ///
    /// # Errors
    /// When the consumer or producer cannot be created.
    pub fn new(
        workload: W,
        settings: &ProcessorSettings,
        store: StateStore,
        membership: Membership,
    ) -> Result<Self, ProcessorError> {
        let mut config = consumer_config(&settings.kafka, &settings.group_id, "processor");
        prefetch(&mut config, W::PREFETCH_KBYTES);
        let consumer: StreamConsumer = config.create()?;
        let parts = Parts {
            source: KafkaSource::new(consumer, &settings.events_topic, m::PARTITION_STALLED, m::CONSUMER_LAG),
            members: membership,
            store,
            emitter: AggregateEmitter::new(&settings.kafka, settings, settings.delivery_timeout)?,
            clock: TokioClock,
        };
        Ok(Processor::assemble(workload, settings, parts))
    }
}

impl<W: Aggregation, I: Io> Processor<W, I> {
    /// A processor over any [`Io`] (the simulation's, say); `settings.kafka`
    /// and `delivery_timeout` are the parts' business, not read here.
    pub fn assemble(workload: W, settings: &ProcessorSettings, parts: Parts<I>) -> Self {
        let Parts { source, members, store, emitter, clock } = parts;
        Processor {
            workload: Arc::new(workload),
            source: Arc::new(source),
            membership: Arc::new(members),
            store: Arc::new(store),
            emitter,
            paced_until: clock.now(),
            store_paused_at: clock.now(),
            clock,
            topic: settings.events_topic.clone(),
            retention_ms: settings.retention_ms,
            checkpoint_interval: settings.checkpoint_interval,
            emit_bytes_per_sec: settings.emit_bytes_per_sec,
            owned: BTreeMap::new(),
            inflight: BTreeMap::new(),
            hints: Vec::new(),
            applied: 0,
            read_newest_ms: 0,
            partitions: settings.partitions,
        }
    }

    /// Runs until `token` is cancelled, then checkpoints what it holds (once
    /// the checkpoints in flight ended) and leaves the group.
    ///
    /// A partition whose emit or claim fails is dropped and claimed again at
    /// the next heartbeat (which re-sends its outbox); the others go on.
    ///
    /// # Errors
    /// What no partition-level retry can repair (the consumer, a stored
    /// position outside the log); the group is left first, so that a new
    /// instance of the workload takes the partitions at once.
    pub async fn run(mut self, token: CancellationToken) -> Result<(), ProcessorError> {
        let result = self.run_loop(&token).await;
        let result = match result {
            Ok(()) => {
                tracing::info!(workload = W::NAME, "processor stopping: final checkpoint");
                self.checkpoint_all().await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = self.membership.leave().await {
            tracing::warn!(error = %e, "could not release partitions; they will expire");
        }
        result
    }

    async fn run_loop(&mut self, token: &CancellationToken) -> Result<(), ProcessorError> {
        let mut tick = self.clock.ticker(Timer::Checkpoint, self.checkpoint_interval);
        let mut heartbeat = self.clock.ticker(Timer::Heartbeat, self.membership.heartbeat_interval());
        let mut gauges = self.clock.ticker(Timer::Gauges, Duration::from_secs(5));
        tracing::info!(workload = W::NAME, member = self.membership.member_id(), "joining the processor group");
        // A handle of our own: messages borrow it while `self` is changed.
        let source = self.source.clone();
        let (mut backlogged, mut last_checkpoint) = (false, self.clock.now());
        let mut beating: Option<Heartbeat> = None;
        loop {
            // A partition that read MAX_PENDING_RECORDS past its last committed checkpoint
            // reads no more until one commits (bounds a checkpoint, and the state's growth
            // while PostgreSQL fails). Its checkpoint started at half that (`is_due`), so
            // this stop is hit only when a checkpoint commits slower than records arrive.
            let full = self.owned.values().any(OwnedPartition::is_full);
            // Biased: the branches are polled in this order, never at random, so
            // that a simulated run is a function of its seed.
            tokio::select! {
                biased;
                _ = token.cancelled() => break,
                (started, done) = next_finished(&mut self.inflight), if !self.inflight.is_empty() => {
                    let p = done.partition();
                    self.on_finished(started, done).await?;
                    let now = self.clock.now();
                    // What the partition read while this one was in flight may make its next one
                    // due at once (or a failed one's records still pending).
                    self.start_due_checkpoints();
                    if last_checkpoint > started && !self.holds_back(now, last_checkpoint, backlogged) {
                        // A round began while this one was in flight, and skipped the partition:
                        // its next checkpoint starts now rather than at the next tick.
                        self.start_checkpoint(p);
                    }
                }
                _ = tick.tick() => {
                    let now = self.clock.now();
                    if !self.holds_back(now, last_checkpoint, backlogged) {
                        self.start_checkpoints()?;
                        last_checkpoint = now;
                    } else {
                        self.start_due_checkpoints();
                    }
                }
                // The heartbeat's round trips run beside the loop (several statements: under load,
                // milliseconds to tens of them, which would hold back every decided write and read
                // record five times a second); only a plan that changes something stops the loop.
                _ = heartbeat.tick(), if beating.is_none() => {
                    let (members, owned) = (self.membership.clone(), self.owned.keys().copied().collect());
                    beating = Some(Box::pin(async move { members.changes(&owned).await }));
                }
                plan = async { beating.as_mut().expect("polled only while beating").await }, if beating.is_some() => {
                    beating = None;
                    if let Some(plan) = plan {
                        self.rebalance(plan, token).await?;
                    }
                }
                _ = gauges.tick() => self.record_gauges(),
                msg = source.recv(), if !full => match msg {
                    Some(msg) => {
                        let mut full = self.on_message(msg);
                        // Take what is already fetched without going round the select
                        // (timers, cancellation) for every record: a backlog drains faster.
                        // Until a partition is full: what it holds stays bounded (a
                        // batch of rows counts for its rows, and a fetch holds many).
                        backlogged = true;
                        for _ in 0..DRAIN_BATCH {
                            if full {
                                break;
                            }
                            match source.try_recv() {
                                Some(msg) => full = self.on_message(msg),
                                None => {
                                    backlogged = false;
                                    break;
                                }
                            }
                        }
                        m::record_input_age(W::NAME, "read", std::mem::take(&mut self.read_newest_ms));
                        self.publish_replies();
                        self.start_due_checkpoints();
                    }
                    None => break,
                },
            }
        }
        Ok(())
    }

    /// Applies a heartbeat's plan: hand over partitions meant for others
    /// (after a final checkpoint), drop lost ones, claim new ones (claims given
    /// up at shutdown are left to `leave`). The plan was made for what was
    /// owned when the heartbeat began; a partition dropped since (fenced, a
    /// failed emit) is released or dropped again harmlessly, and wanted again
    /// at the next heartbeat.
    async fn rebalance(&mut self, plan: Plan, token: &CancellationToken) -> Result<(), ProcessorError> {
        for p in &plan.lost {
            tracing::warn!(workload = W::NAME, partition = p, "lease lost; dropping the partition");
            // Its checkpoint in flight goes with it, as in a crash: whoever claims the
            // partition fences it in the store and in the log, and re-sends its outbox.
            self.inflight.remove(p);
            self.owned.remove(p);
        }
        for p in &plan.to_release {
            // The checkpoint in flight first (one at a time), then the final one.
            if let Some(inflight) = self.inflight.remove(p) {
                let done = inflight.task.await;
                self.on_finished(inflight.started, done).await?;
            }
            if let Some(mut owned) = self.owned.remove(p) {
                if let Err(e) = checkpoint_partition(&*self.workload, &*self.store, *p, &mut owned).await {
                    tracing::info!(partition = p, error = %e, "final checkpoint before hand-over failed");
                }
            }
        }
        if let Err(e) = self.membership.release(&plan.to_release).await {
            tracing::warn!(error = %e, "releasing partitions failed; they will expire");
        }
        // Claimed together: each restore reads PostgreSQL and opens a transactional producer.
        let claims = futures::future::join_all(plan.acquired.iter().map(|p| self.claim(*p, token))).await;
        for (p, claimed) in plan.acquired.iter().zip(claims) {
            match claimed {
                Ok(Some((partition, owned))) => {
                    self.owned.insert(partition, owned);
                }
                Ok(None) => {}
                // The log does not hold the stored position: an operator's problem, not a retry's.
                Err(e @ ProcessorError::LogReset(_)) => return Err(e),
                Err(e) => {
                    // This partition only: the next heartbeat acquires it again (the lease is ours).
                    tracing::warn!(workload = W::NAME, partition = p, error = %e, "claim failed; retrying at the next heartbeat");
                    metrics::counter!(m::CLAIM_FAILURES, "workload" => W::NAME).increment(1);
                }
            }
        }
        self.assign_owned()?;
        tracing::info!(
            workload = W::NAME,
            partitions = ?self.owned.keys().collect::<BTreeSet<_>>(),
            acquired = ?plan.acquired,
            released = ?plan.to_release,
            lost = ?plan.lost,
            "assignment changed"
        );
        Ok(())
    }

    /// Points the consumer at exactly the owned partitions, each at its next offset.
    fn assign_owned(&self) -> Result<(), ProcessorError> {
        let positions = self
            .owned
            .iter()
            .filter(|(_, o)| o.stalled_at.is_none())
            .map(|(p, o)| (*p, o.position.next_offset))
            .collect();
        self.source.assign(positions)?;
        Ok(())
    }

    /// Publishes what the records just applied decided, at once: a command
    /// instance is waiting for each (`Aggregation::replies`).
    fn publish_replies(&mut self) {
        let replies: Vec<_> = self.owned.values_mut().flat_map(|o| self.workload.replies(&mut o.state)).collect();
        self.emitter.reply(replies);
    }

    /// Applies one fetched message; returns whether its partition is now full
    /// ([`OwnedPartition::is_full`]): it must not be given more until a checkpoint commits.
    fn on_message(&mut self, msg: Result<impl SourceMessage, rdkafka::error::KafkaError>) -> bool {
        let msg = match msg {
            Ok(msg) => msg,
            Err(e) => {
                tracing::warn!(error = %e, "consumer error");
                return false;
            }
        };
        let partition = msg.partition();
        // A message fetched before a partition was handed over: not ours any more.
        let Some(owned) = self.owned.get_mut(&partition) else { return false };
        let fetched = msg.fetched();
        let offset = fetched.offset;
        match owned.on_record(&*self.workload, self.partitions, partition, fetched) {
            OnRecord::Applied => {
                self.applied += 1;
                self.read_newest_ms = self.read_newest_ms.max(owned.position.watermark_ms);
            }
            OnRecord::Ignored => {}
            OnRecord::Skipped(reason) => {
                if reason == MISROUTED {
                    tracing::warn!(
                        workload = W::NAME,
                        partition,
                        offset,
                        "record keyed for another partition: not counted"
                    );
                }
                metrics::counter!(m::EVENTS_SKIPPED, "workload" => W::NAME, "reason" => reason.0).increment(1);
            }
            OnRecord::Stalled(error) => self.source.stall(partition, offset, error),
        }
        self.owned.get(&partition).is_some_and(OwnedPartition::is_full)
    }

    /// Claims a partition's state (fencing any previous owner) and re-emits
    /// everything restored: a previous owner may have crashed between its
    /// checkpoint and its emit. Retries while PostgreSQL is unavailable; `None`
    /// when `token` is cancelled first.
    async fn claim(
        &self,
        partition: i32,
        token: &CancellationToken,
    ) -> Result<Option<(i32, Owned<W, I>)>, ProcessorError> {
        let started = Instant::now();
        // The producer opens while the state is restored: each takes a round trip or
        // more (the restore's reads, the producer's connection and `init_transactions`),
        // and a failover waits for both (`open_claimed` says why the order is free).
        let restoring = async {
            // The span names the partition in the retry warnings.
            let retried = self.claim_retried(partition, token);
            let Some(claimed) = retried.instrument(tracing::info_span!("claim", workload = W::NAME, partition)).await
            else {
                return Ok(None);
            };
            let claimed = claimed?;
            self.source.check_position(partition, claimed.position.next_offset).await?;
            Ok::<_, ProcessorError>(Some((claimed, started.elapsed())))
        };
        let opening = async { (self.emitter.open(partition).await, started.elapsed()) };
        let (restored, (opened, open_took)) = tokio::join!(restoring, opening);
        let Some((claimed, restore_took)) = restored? else { return Ok(None) };
        let position = claimed.position;
        let (epoch, held_ids, resent) = (claimed.epoch, claimed.ids.held(), claimed.outbox.len());
        let owned = open_claimed(&*self.workload, &self.topic, opened?, partition, claimed).await?;
        tracing::info!(
            workload = W::NAME,
            partition,
            epoch,
            next_offset = position.next_offset,
            held_ids,
            resent,
            restore_ms = restore_took.as_millis() as u64,
            open_ms = open_took.as_millis() as u64,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "claimed partition"
        );
        metrics::counter!(m::RESTORES, "workload" => W::NAME).increment(1);
        metrics::histogram!(m::RESTORE_DURATION, "workload" => W::NAME).record(started.elapsed().as_secs_f64());
        Ok(Some((partition, owned)))
    }

    /// Claims the partition's state in the store until it succeeds or fails
    /// with an error that is not retryable, backing off in between
    /// (`common::engine::retry::until_cancelled`, with the clock's waits);
    /// `None` when `token` is cancelled first.
    async fn claim_retried(
        &self,
        partition: i32,
        token: &CancellationToken,
    ) -> Option<Result<Claimed<W::State>, StoreError>> {
        let mut waits = self.clock.backoff(CLAIM_RETRY_FIRST, CLAIM_RETRY_MAX);
        loop {
            // On a task of its own: the partitions claimed together restore on as many cores (a
            // restore builds the partition's state, seconds of CPU for a large one); dropped, it stops.
            let (store, workload, retention_ms) = (self.store.clone(), self.workload.clone(), self.retention_ms);
            let claim = self.clock.spawn(async move { store.claim(&*workload, partition, retention_ms).await });
            let result = tokio::select! {
                biased;
                _ = token.cancelled() => return None,
                result = claim => result,
            };
            match result {
                Err(e) if e.is_retryable() => {
                    let wait = waits.next().unwrap_or(CLAIM_RETRY_MAX);
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "claiming the state failed; retrying");
                    tokio::select! {
                        biased;
                        _ = token.cancelled() => return None,
                        _ = self.clock.sleep(wait) => {}
                    }
                }
                result => return Some(result),
            }
        }
    }

    /// True while checkpoints wait: the emit pacing's pause, or a backlog's
    /// longer interval since the last round (`last_round`). Behind (the last
    /// wake-up found a full batch), the loop checkpoints less often, so that it
    /// spends its time consuming rather than rendering and sending records:
    /// counts are the same, only a backlog's progress shows in coarser steps.
    fn holds_back(&self, now: Instant, last_round: Instant, backlogged: bool) -> bool {
        let paced = now < self.paced_until;
        let recent = now.saturating_duration_since(last_round) < BACKLOG_CHECKPOINT_INTERVAL;
        paced || backlogged && recent
    }

    /// A round: starts a checkpoint of every owned partition that has none
    /// in flight ([`start_checkpoint`](Self::start_checkpoint)), so it takes
    /// as long as the slowest partition; first hints the positions committed
    /// since the last round to the broker.
    fn start_checkpoints(&mut self) -> Result<(), ProcessorError> {
        if self.applied > 0 {
            metrics::counter!(m::EVENTS_APPLIED, "workload" => W::NAME).increment(std::mem::take(&mut self.applied));
        }
        // Only a hint for lag tooling: positions come from the state store.
        self.source.commit_hint(&std::mem::take(&mut self.hints))?;
        let idle: Vec<i32> = self.owned.keys().filter(|p| !self.inflight.contains_key(p)).copied().collect();
        for p in idle {
            self.start_checkpoint(p);
        }
        Ok(())
    }

    /// Starts the checkpoint of every partition that is due
    /// ([`OwnedPartition::is_due`]: half the bound of pending records read)
    /// and has none in flight, whatever the round's timers: under a backlog
    /// it commits while the partition reads on, so that the partition rarely
    /// reaches the bound, where it stops reading.
    fn start_due_checkpoints(&mut self) {
        let due: Vec<i32> = self.owned.iter().filter(|(_, o)| o.is_due()).map(|(p, _)| *p).collect();
        for p in due {
            // Skipped if one is in flight: the next starts when it ends, if still due.
            self.start_checkpoint(p);
        }
    }

    /// Starts a checkpoint of `partition` if it has something to write
    /// ([`begin_checkpoint`]) and none in flight (its next one starts after
    /// this one's emit), on a task of its own: its PostgreSQL connection and
    /// its Kafka transaction, while the loop goes on.
    fn start_checkpoint(&mut self, partition: i32) {
        let Some(owned) = self.owned.get_mut(&partition) else { return };
        if self.inflight.contains_key(&partition) {
            return;
        }
        let Some(cp) = begin_checkpoint(&*self.workload, self.store.topic(), partition, owned) else { return };
        let (workload, store) = (self.workload.clone(), self.store.clone());
        let span = tracing::info_span!("checkpoint", workload = W::NAME, partition);
        let task = self.clock.spawn(async move { run_checkpoint(&*workload, &*store, cp).await }.instrument(span));
        self.inflight.insert(partition, InFlight { task, started: self.clock.now() });
    }

    /// Records an ended checkpoint in its partition ([`finish_checkpoint`])
    /// and applies the policy for its outcome ([`after_checkpoint`]).
    async fn on_finished(&mut self, started: Instant, done: Done<W>) -> Result<(), ProcessorError> {
        let p = done.partition();
        // The emits of an instance stay within the rate: each checkpoint holds the next ones back by its bytes.
        self.paced_until = self.paced_until.max(started) + emit_pause(done.emitted_bytes(), self.emit_bytes_per_sec);
        // A partition dropped takes its checkpoint in flight with it: always there.
        let Some(owned) = self.owned.get_mut(&p) else { return Ok(()) };
        let result = finish_checkpoint(&*self.workload, owned, done);
        match (after_checkpoint(&result), result) {
            (_, Ok(Some(next))) => self.hints.push((p, next)),
            (_, Ok(None)) => {}
            (AfterCheckpoint::Drop { fenced: true }, Err(_)) => {
                tracing::warn!(
                    workload = W::NAME,
                    partition = p,
                    "fenced: another instance owns this partition now; dropping its state"
                );
                metrics::counter!(m::CHECKPOINT_FAILURES, "workload" => W::NAME, "outcome" => "fenced").increment(1);
                self.owned.remove(&p);
                self.assign_owned()?;
            }
            (AfterCheckpoint::Keep, Err(e)) => {
                // Transient (PostgreSQL down): keep the state and retry at a later tick.
                tracing::warn!(workload = W::NAME, partition = p, error = %e, "checkpoint failed; will retry");
                metrics::counter!(m::CHECKPOINT_FAILURES, "workload" => W::NAME, "outcome" => "error").increment(1);
                // One pause per outage's round, not one per partition: only if this checkpoint
                // started after the last pause ended.
                if started >= self.store_paused_at {
                    self.clock.sleep(STORE_RETRY_PAUSE).await;
                    self.store_paused_at = self.clock.now();
                }
            }
            (AfterCheckpoint::Drop { fenced: false }, Err(e)) => {
                // The state store is ahead of the log: dropped here, the partition is
                // claimed again at the next heartbeat (its lease is still ours), and the
                // claim re-sends the outbox, which holds this checkpoint's records.
                tracing::warn!(workload = W::NAME, partition = p, error = %e, "emit failed; claiming the partition again");
                metrics::counter!(m::CHECKPOINT_FAILURES, "workload" => W::NAME, "outcome" => "emit_error")
                    .increment(1);
                self.owned.remove(&p);
                self.assign_owned()?;
            }
            (AfterCheckpoint::Fatal, Err(e)) => return Err(e),
        }
        Ok(())
    }

    /// Waits for every checkpoint in flight, in partition order, and records each.
    async fn drain_checkpoints(&mut self) -> Result<(), ProcessorError> {
        while let Some((_, inflight)) = self.inflight.pop_first() {
            let done = inflight.task.await;
            self.on_finished(inflight.started, done).await?;
        }
        Ok(())
    }

    /// The final checkpoint: once those in flight ended, every partition's, waited for.
    async fn checkpoint_all(&mut self) -> Result<(), ProcessorError> {
        self.drain_checkpoints().await?;
        self.start_checkpoints()?;
        self.drain_checkpoints().await?;
        self.source.commit_hint(&std::mem::take(&mut self.hints))?;
        Ok(())
    }

    fn record_gauges(&self) {
        let label = ("workload", W::NAME);
        metrics::gauge!(m::OWNED_PARTITIONS, label.0 => label.1).set(self.owned.len() as f64);
        metrics::gauge!(m::HELD_IDS, label.0 => label.1)
            .set(self.owned.values().map(|o| o.ids.held()).sum::<usize>() as f64);
        metrics::gauge!(m::ID_BYTES, label.0 => label.1)
            .set(self.owned.values().map(|o| o.ids.heap_bytes()).sum::<usize>() as f64);
        self.workload.record_gauges(self.owned.values().map(|o| &o.state));
        let positions = self.owned.iter().map(|(p, o)| (*p, o.position.next_offset)).collect();
        self.source.record_lag(positions);
        for p in 0..self.partitions {
            let stalled = self.owned.get(&p).is_some_and(|o| o.stalled_at.is_some());
            metrics::gauge!(m::PARTITION_STALLED, "topic" => self.topic.clone(), "partition" => p.to_string())
                .set(if stalled { 1.0 } else { 0.0 });
        }
    }
}

/// The first checkpoint in flight that has ended, in partition order (never
/// by readiness at random, so that a simulated run is a function of its
/// seed), and when the loop started it.
async fn next_finished<W: Aggregation>(inflight: &mut BTreeMap<i32, InFlight<W>>) -> (Instant, Done<W>) {
    futures::future::poll_fn(|cx| {
        let ended = inflight.iter_mut().find_map(|(p, f)| match f.task.poll_unpin(cx) {
            std::task::Poll::Ready(done) => Some((*p, done)),
            std::task::Poll::Pending => None,
        });
        match ended {
            Some((p, done)) => {
                let started = inflight.remove(&p).expect("found above").started;
                std::task::Poll::Ready((started, done))
            }
            None => std::task::Poll::Pending,
        }
    })
    .await
}
