//! The processor loop: consume events, apply them to per-partition windows,
//! and every checkpoint interval commit state, emit aggregates, commit offsets.
//!
//! Order per checkpoint, which is what makes the output exact:
//! 1. the window's changes and its `next_offset` go to PostgreSQL in one
//!    transaction, under the partition's fencing epoch;
//! 2. the changed hours' absolute counts go to the aggregates topic, tagged
//!    with that `next_offset`;
//! 3. the consumer offset is committed to the broker (only a hint: on claim
//!    the position always comes from the state store).
//!
//! A crash anywhere replays from the state store's offset and recomputes the
//! same values (the window is a pure function of the log prefix), and the
//! sinks keep the highest offset per (hour, partition).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::analytics::bucket::{Observation, Skipped};
use common::analytics::{HourCounts, HourStart, PartitionWindow};
use common::engine::avro::{decode_event, HourAggregate};
use common::engine::kafka::{assignment, consumer_config, partition_for};
use common::engine::membership::Membership;
use common::engine::shutdown::CancellationToken;
use futures::{FutureExt, StreamExt};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tracing::Instrument;

use crate::emitter::{AggregateEmitter, EmitError, PartitionEmitter};
use crate::metrics as m;
use crate::state_store::{Chunks, StateStore, StoreError};
use crate::Config;

/// Records taken per wake-up of the loop once one has arrived.
const DRAIN_BATCH: usize = 1024;
/// Checkpoint interval while records are waiting (a backlog): a checkpoint
/// waits for PostgreSQL and a Kafka transaction, time the loop does not consume.
const BACKLOG_CHECKPOINT_INTERVAL: Duration = Duration::from_millis(400);
/// First and longest wait between attempts to claim a partition's state.
const CLAIM_RETRY_FIRST: Duration = Duration::from_millis(250);
const CLAIM_RETRY_MAX: Duration = Duration::from_secs(5);

/// One partition this instance currently owns.
struct Owned {
    epoch: i64,
    window: PartitionWindow,
    chunks: Chunks,
    /// This partition's transactional producer (its id fences former owners).
    emitter: PartitionEmitter,
    /// The offset of an undecodable record this partition stopped at: it is
    /// no longer consumed (its lease is kept, so nobody re-claims it) until
    /// an operator deploys a reader that knows the record and restarts.
    stalled_at: Option<i64>,
}

pub struct Processor {
    consumer: Arc<StreamConsumer>,
    membership: Membership,
    store: StateStore,
    emitter: AggregateEmitter,
    topic: String,
    retention_ms: i64,
    checkpoint_interval: Duration,
    owned: HashMap<i32, Owned>,
    /// Events applied since the last metrics flush (recorded per batch, not per event).
    applied: u64,
    /// Partitions of the events topic, as agreed for the deployment (routing check).
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

impl Processor {
    /// Creates the consumer and producer; partitions come from `membership`.
    ///
    /// # Errors
    /// When the consumer or producer cannot be created.
    pub fn new(
        cfg: &Config,
        store: StateStore,
        membership: Membership,
        partitions: i32,
    ) -> Result<Self, ProcessorError> {
        let consumer: StreamConsumer = consumer_config(&cfg.kafka, &cfg.group_id, "processor").create()?;
        Ok(Processor {
            consumer: Arc::new(consumer),
            membership,
            store,
            emitter: AggregateEmitter::new(
                &cfg.kafka,
                &cfg.events,
                &cfg.aggregates,
                &cfg.group_id,
                cfg.delivery_timeout,
            )?,
            topic: cfg.events.events_topic.clone(),
            retention_ms: cfg.retention_ms(),
            checkpoint_interval: cfg.checkpoint_interval,
            owned: HashMap::new(),
            applied: 0,
            partitions,
        })
    }

    /// Runs until `token` is cancelled, then checkpoints what it holds and leaves the group.
    ///
    /// # Errors
    /// Kafka delivery failures of aggregates; the process should restart.
    pub async fn run(mut self, token: CancellationToken) -> Result<(), ProcessorError> {
        let mut tick = tokio::time::interval(self.checkpoint_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heartbeat = tokio::time::interval(self.membership.heartbeat_interval());
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut gauges = tokio::time::interval(Duration::from_secs(5));
        tracing::info!(member = self.membership.member_id(), "joining the processor group");
        // A handle of our own: messages borrow it while `self` is changed.
        let consumer = self.consumer.clone();
        let (mut backlogged, mut last_checkpoint) = (false, Instant::now());
        loop {
            tokio::select! {
                biased;
                _ = token.cancelled() => break,
                _ = tick.tick() => {
                    // Behind (a backlog): checkpoint less often, so that the loop spends its
                    // time consuming rather than waiting for commits. Counts are the same;
                    // only the freshness of a backlog's progress is coarser.
                    if !(backlogged && last_checkpoint.elapsed() < BACKLOG_CHECKPOINT_INTERVAL) {
                        self.checkpoint_all().await?;
                        last_checkpoint = Instant::now();
                    }
                }
                _ = heartbeat.tick() => self.rebalance(&token).await?,
                _ = gauges.tick() => self.record_gauges(),
                msg = async { consumer.stream().next().await } => match msg {
                    Some(msg) => {
                        self.on_message(msg);
                        // Take what is already fetched without going round the select
                        // (timers, cancellation) for every record: a backlog drains faster.
                        backlogged = true;
                        for _ in 0..DRAIN_BATCH {
                            match consumer.recv().now_or_never() {
                                Some(msg) => self.on_message(msg),
                                None => {
                                    backlogged = false;
                                    break;
                                }
                            }
                        }
                    }
                    None => break,
                },
            }
        }
        tracing::info!("processor stopping: final checkpoint");
        self.checkpoint_all().await?;
        if let Err(e) = self.membership.leave().await {
            tracing::warn!(error = %e, "could not release partitions; they will expire");
        }
        Ok(())
    }

    /// Heartbeats the membership and applies its plan: hand over partitions
    /// meant for others (after a final checkpoint), drop lost ones, claim new ones
    /// (claims given up at shutdown are left to `leave`).
    async fn rebalance(&mut self, token: &CancellationToken) -> Result<(), ProcessorError> {
        let owned: BTreeSet<i32> = self.owned.keys().copied().collect();
        let Some(plan) = self.membership.changes(&owned).await else { return Ok(()) };
        for p in &plan.lost {
            tracing::warn!(partition = p, "lease lost; dropping the partition");
            self.owned.remove(p);
        }
        for p in &plan.to_release {
            if let Some(mut owned) = self.owned.remove(p) {
                if let Err(e) = checkpoint_one(&self.store, *p, &mut owned).await {
                    tracing::info!(partition = p, error = %e, "final checkpoint before hand-over failed");
                }
            }
        }
        if let Err(e) = self.membership.release(&plan.to_release).await {
            tracing::warn!(error = %e, "releasing partitions failed; they will expire");
        }
        // Claimed together: each restore reads PostgreSQL and opens a transactional producer.
        let claims = futures::future::join_all(plan.acquired.iter().map(|p| self.claim(*p, token))).await;
        for claimed in claims {
            if let Some((partition, owned)) = claimed? {
                self.owned.insert(partition, owned);
            }
        }
        self.assign_owned()?;
        tracing::info!(
            partitions = ?self.owned.keys().collect::<BTreeSet<_>>(),
            acquired = ?plan.acquired,
            released = ?plan.to_release,
            lost = ?plan.lost,
            "assignment changed"
        );
        Ok(())
    }

    /// Points the consumer at exactly the owned partitions, each at its window's next offset.
    fn assign_owned(&self) -> Result<(), ProcessorError> {
        let positions = self
            .owned
            .iter()
            .filter(|(_, o)| o.stalled_at.is_none())
            .map(|(p, o)| (*p, Offset::Offset(o.window.next_offset())));
        self.consumer.assign(&assignment(&self.topic, positions)?)?;
        Ok(())
    }

    fn on_message(&mut self, msg: Result<rdkafka::message::BorrowedMessage<'_>, rdkafka::error::KafkaError>) {
        let msg = match msg {
            Ok(msg) => msg,
            Err(e) => return tracing::warn!(error = %e, "consumer error"),
        };
        let (partition, offset) = (msg.partition(), msg.offset());
        let misrouted = msg.key().is_some_and(|k| partition_for(k, self.partitions) != partition);
        // The broker's clock, where the topic stamps it (LogAppendTime).
        let appended_ms = match msg.timestamp() {
            rdkafka::Timestamp::LogAppendTime(ms) => Some(ms),
            _ => None,
        };
        if misrouted {
            self.skip_misrouted(partition, offset);
        } else {
            self.handle(partition, offset, appended_ms, msg.payload());
        }
    }

    /// A record whose key belongs to another partition (a producer with another
    /// partitioner or partition count): counting it here would count its user
    /// twice. Skipped, the same way on every replay, and counted in a metric.
    fn skip_misrouted(&mut self, partition: i32, offset: i64) {
        let Some(owned) = self.owned.get_mut(&partition) else { return };
        if owned.stalled_at.is_some() {
            return; // fetched before the partition stopped: its position must stay at the bad record
        }
        if offset >= owned.window.next_offset() {
            tracing::warn!(partition, offset, "record keyed for another partition: not counted");
            metrics::counter!(m::EVENTS_SKIPPED, "reason" => "misrouted").increment(1);
            owned.window.skip(offset);
        }
    }

    /// Applies one record. Its acceptance time is the broker's log-append time
    /// where the topic has one (one clock for the whole partition), else the
    /// command's `accepted_at` (topics created before LogAppendTime).
    fn handle(&mut self, partition: i32, offset: i64, appended_ms: Option<i64>, payload: Option<&[u8]>) {
        // A message fetched before a partition was handed over: not ours any more.
        let Some(owned) = self.owned.get_mut(&partition) else { return };
        if owned.stalled_at.is_some() {
            return; // fetched before the partition stopped: its position must stay at the bad record
        }
        let obs = match payload.map(decode_event) {
            Some(Ok(event)) => {
                let obs = Observation::from(&event);
                Observation { accepted_at_ms: appended_ms.unwrap_or(obs.accepted_at_ms), ..obs }
            }
            // Below the position: already in the restored state (or passed by an older release).
            _ if offset < owned.window.next_offset() => return,
            other => {
                // Skipping it would lose an accepted event for good (a record of a
                // newer schema version, say). Stop this partition at the record,
                // keeping its lease and state, and raise the alarm; the others go on.
                let error = other.and_then(Result::err).map(|e| e.to_string());
                owned.stalled_at = Some(offset);
                common::engine::kafka::stall_partition(
                    &*self.consumer,
                    &self.topic,
                    partition,
                    offset,
                    error,
                    m::PARTITION_STALLED,
                );
                return;
            }
        };
        match owned.window.apply(offset, obs) {
            Ok(()) => self.applied += 1,
            Err(Skipped::AlreadyApplied) => metrics::counter!(m::EVENTS_SKIPPED, "reason" => "replayed").increment(1),
            Err(Skipped::DuplicateId) => metrics::counter!(m::EVENTS_SKIPPED, "reason" => "duplicate_id").increment(1),
            Err(Skipped::ClosedHour) => {
                tracing::warn!(partition, offset, hour = %obs.hour, "event for a closed hour not counted");
                metrics::counter!(m::EVENTS_SKIPPED, "reason" => "closed_hour").increment(1);
            }
        }
    }

    /// Claims a partition's state (fencing any previous owner) and re-emits
    /// every restored hour: a previous owner may have crashed between its
    /// checkpoint and its emit. Retries while PostgreSQL is unavailable; `None`
    /// when `token` is cancelled first.
    async fn claim(&self, partition: i32, token: &CancellationToken) -> Result<Option<(i32, Owned)>, ProcessorError> {
        let started = Instant::now();
        let attempt = || self.store.claim(partition, self.retention_ms);
        let policy = common::engine::retry::backoff(CLAIM_RETRY_FIRST, CLAIM_RETRY_MAX);
        let retried =
            common::engine::retry::until_cancelled(token, policy, "claiming the state", attempt, StoreError::is_retryable);
        // The span names the partition in the retry warnings.
        let Some(claimed) = retried.instrument(tracing::info_span!("claim", partition)).await else { return Ok(None) };
        let claimed = claimed?;
        let window = claimed.window;
        common::engine::kafka::check_position(self.consumer.clone(), &self.topic, partition, window.next_offset()).await?;
        // Fences every earlier owner's producer and aborts its open transaction,
        // then re-emits what the store holds.
        let emitter = self.emitter.open(partition).await?;
        let aggs: Vec<HourAggregate> = window.counts().map(|(h, c)| aggregate(partition, &window, h, c)).collect();
        emitter.emit(&aggs).await?;
        tracing::info!(
            partition,
            epoch = claimed.epoch,
            next_offset = window.next_offset(),
            open_hours = window.open_hours(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "claimed partition"
        );
        metrics::counter!(m::RESTORES).increment(1);
        metrics::histogram!(m::RESTORE_DURATION).record(started.elapsed().as_secs_f64());
        Ok(Some((partition, Owned { epoch: claimed.epoch, window, chunks: claimed.chunks, emitter, stalled_at: None })))
    }

    async fn checkpoint_all(&mut self) -> Result<(), ProcessorError> {
        if self.applied > 0 {
            metrics::counter!(m::EVENTS_APPLIED).increment(std::mem::take(&mut self.applied));
        }
        let mut commits = TopicPartitionList::new();
        let mut fenced = false;
        // All partitions at once: each has its own PostgreSQL connection and Kafka
        // transaction, so a round takes as long as the slowest, not the sum.
        let store = &self.store;
        let rounds = self.owned.drain().map(|(p, mut owned)| async move {
            let result = checkpoint_one(store, p, &mut owned).await;
            (p, owned, result)
        });
        let results = futures::future::join_all(rounds).await;
        let mut retry_later = false;
        for (p, owned, result) in results {
            match result {
                Ok(Some(next)) => {
                    commits.add_partition_offset(&self.topic, p, Offset::Offset(next))?;
                    self.owned.insert(p, owned);
                }
                Ok(None) => {
                    self.owned.insert(p, owned);
                }
                Err(ProcessorError::Store(StoreError::Fenced(_)) | ProcessorError::Emit(EmitError::Fenced(_))) => {
                    tracing::warn!(
                        partition = p,
                        "fenced: another instance owns this partition now; dropping its state"
                    );
                    metrics::counter!(m::CHECKPOINT_FAILURES, "outcome" => "fenced").increment(1);
                    fenced = true;
                }
                Err(ProcessorError::Store(e)) => {
                    // Transient (PostgreSQL down): keep the state and retry later; stall to apply backpressure.
                    tracing::warn!(partition = p, error = %e, "checkpoint failed; will retry");
                    metrics::counter!(m::CHECKPOINT_FAILURES, "outcome" => "error").increment(1);
                    self.owned.insert(p, owned);
                    retry_later = true;
                }
                Err(e) => return Err(e),
            }
        }
        if retry_later {
            // Kept as a plain pause: the retry is the next checkpoint tick, this only applies backpressure.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if fenced {
            self.assign_owned()?;
        }
        if commits.count() > 0 {
            // Only a hint for lag tooling: positions come from the state store.
            if let Err(e) = self.consumer.commit(&commits, CommitMode::Async) {
                tracing::debug!(error = %e, "offset commit failed");
            }
        }
        Ok(())
    }

    fn record_gauges(&self) {
        let windows = || self.owned.values().map(|o| &o.window);
        metrics::gauge!(m::OWNED_PARTITIONS).set(self.owned.len() as f64);
        metrics::gauge!(m::OPEN_HOURS).set(windows().map(|w| w.open_hours()).sum::<usize>() as f64);
        metrics::gauge!(m::STATE_BYTES).set(windows().map(|w| w.heap_bytes()).sum::<usize>() as f64);
        metrics::gauge!(m::STATE_USER_HOURS).set(windows().map(|w| w.user_hours()).sum::<u64>() as f64);
        let positions = self.owned.iter().map(|(p, o)| (*p, o.window.next_offset())).collect();
        common::engine::kafka::record_lag(self.consumer.clone(), &self.topic, positions, m::CONSUMER_LAG);
        for p in 0..self.partitions {
            let stalled = self.owned.get(&p).is_some_and(|o| o.stalled_at.is_some());
            metrics::gauge!(m::PARTITION_STALLED, "partition" => p.to_string()).set(if stalled { 1.0 } else { 0.0 });
        }
    }
}

/// Checkpoints one partition; returns the committed position if anything changed.
async fn checkpoint_one(store: &StateStore, partition: i32, owned: &mut Owned) -> Result<Option<i64>, ProcessorError> {
    owned.window.evict_closed();
    if !owned.window.has_changes() {
        return Ok(None);
    }
    let started = Instant::now();
    let cp = owned.window.checkpoint();
    store.commit(partition, owned.epoch, &cp, &mut owned.chunks).await?;
    owned.window.mark_checkpointed();
    metrics::histogram!(m::CHECKPOINT_STAGE_DURATION, "stage" => "store").record(started.elapsed().as_secs_f64());
    let emitting = Instant::now();
    // From the checkpoint, not the window: an hour that closed in this batch is only there.
    let aggs: Vec<HourAggregate> =
        cp.changed.iter().map(|c| aggregate(partition, &owned.window, c.hour, c.counts)).collect();
    owned.emitter.emit(&aggs).await?;
    metrics::histogram!(m::CHECKPOINT_STAGE_DURATION, "stage" => "emit").record(emitting.elapsed().as_secs_f64());
    metrics::counter!(m::AGGREGATES_EMITTED).increment(aggs.len() as u64);
    metrics::counter!(m::CHECKPOINTS).increment(1);
    metrics::histogram!(m::CHECKPOINT_DURATION).record(started.elapsed().as_secs_f64());
    Ok(Some(cp.next_offset))
}

/// The absolute aggregate of one hour as of the window's position.
fn aggregate(partition: i32, window: &PartitionWindow, hour: HourStart, counts: HourCounts) -> HourAggregate {
    HourAggregate { hour, partition, counts, input_offset: window.next_offset(), watermark_ms: window.watermark_ms() }
}
