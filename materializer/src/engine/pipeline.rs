//! The loop of one workload's pipeline: consume aggregates from the
//! partitions this instance holds, write each batch to the read models with
//! the consumed positions in the same PostgreSQL transaction. A crash before
//! it commits replays the batch, which the workload's guards in PostgreSQL and
//! the version guard in Redis turn into no-ops.
//!
//! The loop reads the next batch while the current one is written: one write
//! in flight, in a task of its own ([`AbortOnDropHandle`]: it goes with the
//! loop), the next batch handed over only after it ended, so batches and
//! positions are stored in the order they were read.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::engine::kafka::{assignment, consumer_config};
use common::engine::membership::{Heartbeat, Membership, Plan};
use common::engine::progress::{decode_progress, is_progress_key, Progress};
use common::engine::shutdown::CancellationToken;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::Offset;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use super::sink::{Positions, ReadModelSink, SinkError};
use super::{Engine, SinkWorkload, Source};
use crate::metrics as m;

/// First and longest wait between attempts to write a batch.
const WRITE_RETRY_FIRST: Duration = Duration::from_millis(100);
const WRITE_RETRY_MAX: Duration = Duration::from_secs(5);
/// How long a stopping pipeline tries to write what it read (the write in flight, then the rest).
const SHUTDOWN_WRITE: Duration = Duration::from_secs(5);

pub struct Pipeline<W: SinkWorkload> {
    consumer: Arc<StreamConsumer>,
    membership: Arc<Membership>,
    sink: Arc<ReadModelSink<W>>,
    topic: Arc<str>,
    max_batch: usize,
    batch_wait: Duration,
    owned: BTreeSet<i32>,
    /// Next offset to consume per owned partition, as last written.
    positions: Arc<Mutex<BTreeMap<i32, i64>>>,
    /// Owned partitions stopped at an undecodable record (partition → its
    /// offset): no longer consumed, their position stays at that record, and
    /// their lease is kept so nobody re-claims them, until an operator deploys
    /// a reader that knows the record and restarts.
    stalled: Mutex<BTreeMap<i32, i64>>,
}

/// Aggregates read since the last write, and the positions to store after writing them.
struct Batch<A> {
    aggregates: Vec<A>,
    /// The processor's progress records read with them (engine records, never the workload's).
    progress: Vec<Progress>,
    next_offsets: BTreeMap<i32, i64>,
    started: Option<Instant>,
    /// The aggregates' watermarks whose age at reading was recorded (once each per batch).
    read_watermarks: BTreeSet<i64>,
}

impl<A> Default for Batch<A> {
    fn default() -> Self {
        Batch {
            aggregates: Vec::new(),
            progress: Vec::new(),
            next_offsets: BTreeMap::new(),
            started: None,
            read_watermarks: BTreeSet::new(),
        }
    }
}

impl<A> Batch<A> {
    /// Nothing read into it (every record read moves its partition's next offset).
    fn is_empty(&self) -> bool {
        self.next_offsets.is_empty()
    }
}

impl<W: SinkWorkload> Pipeline<W> {
    /// # Errors
    /// When the consumer cannot be created.
    pub fn new(
        engine: &Engine,
        source: &Source,
        sink: Arc<ReadModelSink<W>>,
        membership: Membership,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        let consumer: StreamConsumer = consumer_config(&engine.kafka, &source.group_id, "materializer").create()?;
        Ok(Pipeline {
            consumer: Arc::new(consumer),
            membership: Arc::new(membership),
            sink,
            topic: source.topic.name.as_str().into(),
            max_batch: engine.max_batch,
            batch_wait: engine.batch_wait,
            owned: BTreeSet::new(),
            positions: Arc::default(),
            stalled: Mutex::default(),
        })
    }

    /// Runs until `token` is cancelled; the write in flight and then the batch
    /// in hand are written before returning.
    ///
    /// One write in flight, the next batch filling meanwhile: a batch is handed
    /// to a write task once it is full (`max_batch`) or its wait is over, but
    /// only after the previous write ended (PostgreSQL committed, with the
    /// positions), so batches reach the stores in the order they were read and a
    /// partition's stored position only moves forward, each after the rows it
    /// covers. A full batch stops reading until the write in flight ends.
    ///
    /// # Errors
    /// Kafka assignment failures, and a permanent [`SinkError`].
    pub async fn run(mut self, token: CancellationToken) -> anyhow::Result<()> {
        let mut heartbeat = tokio::time::interval(self.membership.heartbeat_interval());
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Batch::default();
        let mut writing: Option<Write> = None;
        let mut beating: Option<Heartbeat> = None;
        // Stops a write's retries once shutdown's grace is over (the write task itself never sees `token`).
        let stop_writes = CancellationToken::new();
        tracing::info!(workload = W::NAME, member = self.membership.member_id(), "joining the materializer group");
        loop {
            let deadline = batch.started.map(|s| s + self.batch_wait);
            let full = batch.aggregates.len() >= self.max_batch;
            tokio::select! {
                biased;
                _ = token.cancelled() => break,
                written = async { writing.as_mut().expect("a write in flight").await }, if writing.is_some() => {
                    writing = None;
                    if !joined(written)? { break; }
                }
                // The heartbeat's round trips run beside the loop, which goes on reading and
                // handing batches to writes meanwhile; only a plan that changes something stops it.
                _ = heartbeat.tick(), if beating.is_none() => {
                    let (membership, owned) = (self.membership.clone(), self.owned.clone());
                    beating = Some(Box::pin(async move { membership.changes(&owned).await }));
                    self.record_lag(writing.is_none() && batch.is_empty());
                }
                plan = async { beating.as_mut().expect("polled only while beating").await }, if beating.is_some() => {
                    beating = None;
                    if let Some(plan) = plan {
                        if !self.settle(&mut writing, &mut batch, &plan, &token, &stop_writes).await? { break; }
                        self.rebalance(plan).await?;
                    }
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() && writing.is_none() => {}
                msg = self.consumer.recv(), if !full => self.add(&mut batch, msg),
            }
            let due = batch.aggregates.len() >= self.max_batch
                || batch.started.is_some_and(|s| s + self.batch_wait <= Instant::now());
            if writing.is_none() && due {
                writing = Some(self.start_write(std::mem::take(&mut batch), &stop_writes));
            }
        }
        // Finish the write in flight, then write what was read; what cannot be written now is replayed later.
        let rest = async {
            let never = CancellationToken::new();
            if self.finish(&mut writing, &never).await? {
                let last = self.start_write(std::mem::take(&mut batch), &stop_writes);
                self.finish(&mut Some(last), &never).await?;
            }
            Ok::<_, SinkError>(())
        };
        match tokio::time::timeout(SHUTDOWN_WRITE, rest).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(workload = W::NAME, error = %e, "last batches not written; they will be replayed")
            }
            Err(_) => tracing::warn!(workload = W::NAME, "last batches not written in time; they will be replayed"),
        }
        stop_writes.cancel();
        drop(writing); // aborts a write still in flight
        if let Err(e) = self.membership.leave().await {
            tracing::warn!(error = %e, "could not release partitions; they will expire");
        }
        tracing::info!(workload = W::NAME, "pipeline stopped");
        Ok(())
    }

    /// Before partitions change hands, nothing read from them may still be on
    /// its way: waits for the write in flight, then writes the batch in hand,
    /// without the positions of the partitions already lost (their rows are
    /// harmless, the guarded upserts keep the newest input; their positions
    /// are the next owner's). False if shutdown came first.
    async fn settle(
        &self,
        writing: &mut Option<Write>,
        batch: &mut Batch<W::Aggregate>,
        plan: &Plan,
        token: &CancellationToken,
        stop_writes: &CancellationToken,
    ) -> Result<bool, SinkError> {
        if !self.finish(writing, token).await? {
            return Ok(false);
        }
        for p in &plan.lost {
            batch.next_offsets.remove(p);
        }
        if batch.is_empty() {
            *batch = Batch::default(); // only lost partitions' records: theirs to replay
            return Ok(true);
        }
        *writing = Some(self.start_write(std::mem::take(batch), stop_writes));
        self.finish(writing, token).await
    }

    /// Waits for the write in flight, if any. False if `token` was cancelled
    /// first (the write stays in flight) or the write was stopped.
    ///
    /// # Errors
    /// The write's permanent [`SinkError`].
    async fn finish(&self, writing: &mut Option<Write>, token: &CancellationToken) -> Result<bool, SinkError> {
        let Some(write) = writing.as_mut() else { return Ok(true) };
        let written = tokio::select! {
            biased;
            _ = token.cancelled() => return Ok(false),
            written = write => written,
        };
        *writing = None;
        joined(written)
    }

    /// Hands `batch` to a write task: the write (retrying with backoff while
    /// the stores are unavailable, until `stop`), then its positions. An empty
    /// batch is written at once.
    fn start_write(&self, batch: Batch<W::Aggregate>, stop: &CancellationToken) -> Write {
        let (sink, membership, positions) = (self.sink.clone(), self.membership.clone(), self.positions.clone());
        let (topic, stop) = (self.topic.clone(), stop.clone());
        let write = async move {
            if batch.is_empty() {
                return Ok(true);
            }
            let policy = common::engine::retry::backoff(WRITE_RETRY_FIRST, WRITE_RETRY_MAX);
            // The positions in the batch's transaction: a crash before its commit replays the batch.
            let read = Positions { membership: &membership, topic: &topic, next: &batch.next_offsets };
            let write = || sink.write(&batch.aggregates, &batch.progress, Some(read));
            match common::engine::retry::until_cancelled(
                &stop,
                policy,
                "writing read models",
                write,
                SinkError::is_retryable,
            )
            .await
            {
                None => return Ok(false),
                Some(written) => written?,
            }
            metrics::counter!(m::AGGREGATES_CONSUMED, "workload" => W::NAME).increment(batch.aggregates.len() as u64);
            metrics::counter!(m::BATCHES, "workload" => W::NAME).increment(1);
            metrics::histogram!(m::BATCH_SIZE, "workload" => W::NAME).record(batch.aggregates.len() as f64);
            positions.lock().expect("positions lock").extend(batch.next_offsets.iter().map(|(p, o)| (*p, *o)));
            Ok(true)
        };
        AbortOnDropHandle::new(tokio::spawn(write.instrument(tracing::info_span!("write", workload = W::NAME))))
    }

    /// Applies a heartbeat's plan, once [`Self::settle`]d: nothing in flight or in hand.
    async fn rebalance(&mut self, plan: Plan) -> anyhow::Result<()> {
        for p in plan.lost.iter().chain(&plan.to_release) {
            self.owned.remove(p);
            if self.stalled.get_mut().expect("stalled lock").remove(p).is_some() {
                metrics::gauge!(m::PARTITION_STALLED, "topic" => self.topic.to_string(), "partition" => p.to_string())
                    .set(0.0);
            }
        }
        if let Err(e) = self.membership.release(&plan.to_release).await {
            tracing::warn!(error = %e, "releasing partitions failed; they will expire");
        }
        self.owned.extend(&plan.acquired);
        let stored = self.membership.committed_offsets(&self.topic).await.unwrap_or_default();
        for p in &plan.acquired {
            if let Some(position) = stored.get(p) {
                common::engine::kafka::check_position(self.consumer.clone(), &self.topic, *p, *position).await?;
            }
        }
        {
            let mut positions = self.positions.lock().expect("positions lock");
            positions.retain(|p, _| self.owned.contains(p));
            for p in &self.owned {
                positions.entry(*p).or_insert_with(|| stored.get(p).copied().unwrap_or(0));
            }
        }
        let stalled = self.stalled.get_mut().expect("stalled lock");
        let positions: Vec<(i32, Offset)> = self
            .owned
            .iter()
            .filter(|p| !stalled.contains_key(p))
            .map(|p| (*p, stored.get(p).map_or(Offset::Beginning, |o| Offset::Offset(*o))))
            .collect();
        self.consumer.assign(&assignment(&self.topic, positions)?)?;
        tracing::info!(workload = W::NAME, partitions = ?self.owned, acquired = ?plan.acquired, released = ?plan.to_release, lost = ?plan.lost, "assignment changed");
        Ok(())
    }

    /// Consumer lag per owned partition; `settled` when no batch is in hand or being written.
    fn record_lag(&self, settled: bool) {
        let positions = self.positions.lock().expect("positions lock").iter().map(|(p, o)| (*p, *o)).collect();
        common::engine::kafka::record_lag(self.consumer.clone(), &self.topic, positions, settled, m::CONSUMER_LAG);
    }

    fn add(&self, batch: &mut Batch<W::Aggregate>, msg: Result<BorrowedMessage<'_>, rdkafka::error::KafkaError>) {
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "consumer error");
                return;
            }
        };
        let (partition, offset) = (msg.partition(), msg.offset());
        if !self.owned.contains(&partition) {
            return; // fetched before a hand-over
        }
        let mut stalled = self.stalled.lock().expect("stalled lock");
        if stalled.contains_key(&partition) {
            return; // fetched before the partition stopped: its position must stay at the bad record
        }
        // The engine's progress records first, by key: the workload never sees them.
        let decoded: Result<(), Option<String>> = match msg.payload() {
            Some(bytes) if is_progress_key(msg.key()) => {
                decode_progress(bytes).map(|p| batch.progress.push(p)).map_err(|e| Some(e.to_string()))
            }
            Some(bytes) => {
                let workload = self.sink.workload();
                let read = |a: W::Aggregate| {
                    let watermark_ms = workload.watermark_ms(&a);
                    if batch.read_watermarks.insert(watermark_ms) {
                        m::record_input_age(W::NAME, "read", &[watermark_ms]);
                    }
                    batch.aggregates.push(a);
                };
                workload.decode(bytes).map(read).map_err(|e| Some(e.to_string()))
            }
            None => Err(None),
        };
        match decoded {
            Ok(()) => {}
            Err(error) => {
                // Skipping it could lose a row's newest values (a record of a
                // newer schema version, say). Stop this partition at the record
                // (the batch's position for it stays below), keep its lease, and
                // raise the alarm; the other partitions go on.
                stalled.insert(partition, offset);
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
        }
        batch.next_offsets.insert(partition, offset + 1);
        batch.started.get_or_insert_with(Instant::now);
    }
}

/// A batch's write task: whether the batch was written (false: stopped by shutdown).
type Write = AbortOnDropHandle<Result<bool, SinkError>>;

/// What a write task ended with; its panic goes on in the loop.
fn joined(written: Result<Result<bool, SinkError>, tokio::task::JoinError>) -> Result<bool, SinkError> {
    match written {
        Ok(written) => written,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Aborted only by dropping its handle, which is then not awaited.
        Err(e) => unreachable!("a write awaited after it was aborted: {e}"),
    }
}
