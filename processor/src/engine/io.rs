//! What the processor's loop ([`Processor`](super::Processor)) does I/O
//! through, besides the state store and the aggregates log: the events it
//! consumes ([`Source`]), its lease group ([`Members`]) and its timers and
//! side tasks ([`Clock`]); and [`Io`], the bundle of all five a processor is
//! built over.
//!
//! Production: [`KafkaSource`] (rdkafka's `StreamConsumer`, assigned by
//! hand), [`Membership`] (PostgreSQL leases), [`TokioClock`], with
//! `StateStore` and `KafkaLog` ([`Production`]). The simulation
//! (`engine::sim`) implements each in memory and drives the same loop from a
//! seed: its timers fire, records arrive and heartbeats answer when the seed
//! says so.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use common::engine::kafka::PositionOutsideLog;
use common::engine::membership::{Membership, Plan};
use common::engine::pg::PgError;
use futures::{FutureExt, StreamExt};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::Offset;

use super::emitter::{KafkaLog, Log};
use super::partition::FetchedRecord;
use super::state_store::{StateStore, Store};

/// The I/O a processor runs over: production's ([`Production`]) or the simulation's.
pub trait Io: Send + Sync + 'static {
    type Source: Source;
    type Members: Members;
    type Store: Store;
    type Log: Log;
    type Clock: Clock;
}

/// Kafka, PostgreSQL and tokio's timers.
pub struct Production;

impl Io for Production {
    type Source = KafkaSource;
    type Members = Membership;
    type Store = StateStore;
    type Log = KafkaLog;
    type Clock = TokioClock;
}

/// A record the source delivered.
pub trait SourceMessage {
    fn partition(&self) -> i32;
    fn fetched(&self) -> FetchedRecord<'_>;
}

/// The events topic as the loop consumes it: partitions assigned by hand,
/// each at the offset the state store gave.
pub trait Source: Send + Sync + 'static {
    type Message<'a>: SourceMessage
    where
        Self: 'a;

    /// Consumes exactly these partitions, each from its next offset.
    ///
    /// # Errors
    /// When the consumer refuses the assignment.
    fn assign(&self, positions: Vec<(i32, i64)>) -> Result<(), KafkaError>;

    /// The next record of an assigned partition; `None` when the source ended.
    fn recv(&self) -> impl Future<Output = Option<Result<Self::Message<'_>, KafkaError>>> + Send;

    /// A record already fetched, if any, without waiting.
    fn try_recv(&self) -> Option<Result<Self::Message<'_>, KafkaError>>;

    /// Stops consuming `partition` at the undecodable record at `offset`, and raises the alarm.
    fn stall(&self, partition: i32, offset: i64, error: Option<String>);

    /// Checks a stored position against the partition's log bounds.
    ///
    /// # Errors
    /// [`PositionOutsideLog`] when records would be skipped, or the log was replaced.
    fn check_position(
        &self,
        partition: i32,
        stored: i64,
    ) -> impl Future<Output = Result<(), PositionOutsideLog>> + Send;

    /// Commits consumed positions where lag tools read them (a hint only).
    ///
    /// # Errors
    /// When an offset is refused; a failed commit itself is only logged.
    fn commit_hint(&self, offsets: &[(i32, i64)]) -> Result<(), KafkaError>;

    /// Sets the lag gauges of `positions` (partition, next offset).
    fn record_lag(&self, positions: Vec<(i32, i64)>);
}

/// The loop's lease group: which partitions to claim, hand over or drop.
pub trait Members: Send + Sync + 'static {
    fn member_id(&self) -> &str;

    /// How often the loop heartbeats.
    fn heartbeat_interval(&self) -> Duration;

    /// Heartbeats; the plan for `owned`, or `None` when nothing changes or
    /// the heartbeat failed (keep what is owned).
    fn changes(&self, owned: &BTreeSet<i32>) -> impl Future<Output = Option<Plan>> + Send;

    /// Gives partitions back so another member can take them at once.
    ///
    /// # Errors
    /// When the group cannot be reached; the leases then expire.
    fn release(&self, partitions: &[i32]) -> impl Future<Output = Result<(), PgError>> + Send;

    /// Leaves the group, releasing every lease.
    ///
    /// # Errors
    /// When the group cannot be reached; the leases then expire.
    fn leave(&self) -> impl Future<Output = Result<(), PgError>> + Send;
}

/// The loop's timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    Checkpoint,
    Heartbeat,
    Gauges,
}

/// A periodic timer: its first tick is at once.
pub trait Ticker: Send {
    fn tick(&mut self) -> impl Future<Output = ()> + Send;
}

/// A task the loop started beside itself ([`Clock::spawn`]): awaiting it
/// gives its output; dropping it stops it.
pub struct Task<T>(Mutex<Pin<Box<dyn Future<Output = T> + Send>>>);

impl<T> Task<T> {
    pub fn new(future: impl Future<Output = T> + Send + 'static) -> Self {
        Task(Mutex::new(Box::pin(future)))
    }
}

/// Polled through `&mut` only: the mutex is never locked, it only makes the
/// task `Sync` (the loop's future borrows the processor, its tasks with it,
/// across awaits) without requiring the future itself to be.
impl<T> Future for Task<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<T> {
        let future = self.get_mut().0.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        future.as_mut().poll(cx)
    }
}

/// Time as the loop sees it: its timers, pauses, retries with backoff, and
/// the tasks it runs beside itself (a runtime's, as timers are).
pub trait Clock: Send + Sync + 'static {
    type Ticker: Ticker;

    /// A timer firing every `period` (a late tick delays the next ones).
    fn ticker(&self, timer: Timer, period: Duration) -> Self::Ticker;

    fn now(&self) -> Instant;

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send;

    /// The waits between retries of a failing call: from `first`, doubling up to `max`.
    fn backoff(&self, first: Duration, max: Duration) -> impl Iterator<Item = Duration> + Send + 'static;

    /// Runs `task` beside the loop, which awaits the [`Task`] when it wants
    /// the result. In production on a tokio task of its own, so that it goes
    /// on while the loop awaits something else (a heartbeat, a claim: both
    /// want a connection of the pool the task holds one of); in the
    /// simulation the loop polls it itself, so a run stays a function of its seed.
    fn spawn<T: Send + 'static>(&self, task: impl Future<Output = T> + Send + 'static) -> Task<T>;
}

/// The events topic in Kafka, through an rdkafka consumer assigned by hand.
pub struct KafkaSource {
    consumer: Arc<StreamConsumer>,
    topic: String,
    stalled_gauge: &'static str,
    lag_gauge: &'static str,
}

impl KafkaSource {
    pub fn new(consumer: StreamConsumer, topic: &str, stalled_gauge: &'static str, lag_gauge: &'static str) -> Self {
        KafkaSource { consumer: Arc::new(consumer), topic: topic.to_owned(), stalled_gauge, lag_gauge }
    }
}

impl SourceMessage for BorrowedMessage<'_> {
    fn partition(&self) -> i32 {
        Message::partition(self)
    }

    fn fetched(&self) -> FetchedRecord<'_> {
        let log_append_ms = match self.timestamp() {
            rdkafka::Timestamp::LogAppendTime(ms) => Some(ms),
            _ => None,
        };
        FetchedRecord { offset: self.offset(), key: self.key(), payload: self.payload(), log_append_ms }
    }
}

impl Source for KafkaSource {
    type Message<'a> = BorrowedMessage<'a>;

    fn assign(&self, positions: Vec<(i32, i64)>) -> Result<(), KafkaError> {
        let positions = positions.into_iter().map(|(p, next)| (p, Offset::Offset(next)));
        self.consumer.assign(&common::engine::kafka::assignment(&self.topic, positions)?)
    }

    async fn recv(&self) -> Option<Result<BorrowedMessage<'_>, KafkaError>> {
        self.consumer.stream().next().await
    }

    fn try_recv(&self) -> Option<Result<BorrowedMessage<'_>, KafkaError>> {
        self.consumer.recv().now_or_never()
    }

    fn stall(&self, partition: i32, offset: i64, error: Option<String>) {
        common::engine::kafka::stall_partition(
            &*self.consumer,
            &self.topic,
            partition,
            offset,
            error,
            self.stalled_gauge,
        );
    }

    fn check_position(
        &self,
        partition: i32,
        stored: i64,
    ) -> impl Future<Output = Result<(), PositionOutsideLog>> + Send {
        common::engine::kafka::check_position(self.consumer.clone(), &self.topic, partition, stored)
    }

    fn commit_hint(&self, offsets: &[(i32, i64)]) -> Result<(), KafkaError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let commits =
            common::engine::kafka::assignment(&self.topic, offsets.iter().map(|(p, o)| (*p, Offset::Offset(*o))))?;
        if let Err(e) = self.consumer.commit(&commits, CommitMode::Async) {
            tracing::debug!(error = %e, "offset commit failed");
        }
        Ok(())
    }

    fn record_lag(&self, positions: Vec<(i32, i64)>) {
        // Not settled: the loop holds records applied but not checkpointed (its topics carry no markers).
        common::engine::kafka::record_lag(self.consumer.clone(), &self.topic, positions, false, self.lag_gauge);
    }
}

impl Members for Membership {
    fn member_id(&self) -> &str {
        Membership::member_id(self)
    }

    fn heartbeat_interval(&self) -> Duration {
        Membership::heartbeat_interval(self)
    }

    fn changes(&self, owned: &BTreeSet<i32>) -> impl Future<Output = Option<Plan>> + Send {
        Membership::changes(self, owned)
    }

    fn release(&self, partitions: &[i32]) -> impl Future<Output = Result<(), PgError>> + Send {
        Membership::release(self, partitions)
    }

    fn leave(&self) -> impl Future<Output = Result<(), PgError>> + Send {
        Membership::leave(self)
    }
}

/// tokio's timers and clock.
pub struct TokioClock;

/// A tokio interval whose missed ticks delay the next ones.
pub struct TokioTicker(tokio::time::Interval);

impl Ticker for TokioTicker {
    async fn tick(&mut self) {
        self.0.tick().await;
    }
}

impl Clock for TokioClock {
    type Ticker = TokioTicker;

    fn ticker(&self, timer: Timer, period: Duration) -> TokioTicker {
        let mut interval = tokio::time::interval(period);
        if timer != Timer::Gauges {
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        TokioTicker(interval)
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(duration)
    }

    fn backoff(&self, first: Duration, max: Duration) -> impl Iterator<Item = Duration> + Send + 'static {
        // The policy of every retry in the services (jittered): `common::engine::retry::backoff`.
        common::engine::retry::backoff(first, max).build()
    }

    /// A tokio task, aborted when its [`Task`] is dropped (a partition lost
    /// mid-checkpoint, the loop gone): nothing outlives the loop.
    fn spawn<T: Send + 'static>(&self, task: impl Future<Output = T> + Send + 'static) -> Task<T> {
        let handle = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(task));
        Task::new(async move {
            match handle.await {
                Ok(output) => output,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // Aborted only by dropping the handle, which is then not awaited.
                Err(e) => unreachable!("a task awaited after it was aborted: {e}"),
            }
        })
    }
}
