//! The aggregates-topic adapter: a workload's [`Emit`]s (absolute values
//! tagged with the input offset they reflect), written in Kafka transactions.
//!
//! Each events partition has its own transactional producer, with the
//! `transactional.id` `<group>.<events topic>.<partition>`. Whoever claims the
//! partition calls `init_transactions` with that id, which fences every older
//! producer of it: a former owner's late emit then fails with PRODUCER_FENCED
//! instead of landing after the new owner's, and its open transaction is
//! aborted. A `read_committed` reader of the aggregates topic (the
//! materializer, or any other consumer) therefore never sees an older
//! aggregate of an (hour, partition) after a newer one, and compaction keeps
//! the newest.
//!
//! The log is a trait ([`Log`], [`TxnProducer`]): Kafka here ([`KafkaLog`]),
//! memory in the simulation (`engine::sim`); the batching and progress
//! records ([`PartitionEmitter`]) are the same over both.

use std::future::Future;
use std::time::Duration;

use common::engine::config::KafkaConfig;
use common::engine::kafka::{self, LogProducer, ProducerTuning};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureRecord, Producer};

use common::engine::progress::{encode_progress, Progress};

use super::pipeline::ProcessorSettings;
use super::Emit;

/// How long the transaction calls (init, commit, abort) may block.
const TXN_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// A short attempt at opening a partition's producer ([`KafkaLog::open`]): an
/// unrefused `init_transactions` on a local broker takes 10-110 ms.
const INIT_QUICK: Duration = Duration::from_millis(150);
/// How long short attempts go on before one waits the full [`TXN_CALL_TIMEOUT`]:
/// the coordinator's abort of a killed owner's transaction took up to about a
/// second on the loaded 2-core machine.
const INIT_QUICK_FOR: Duration = Duration::from_secs(3);
/// How much longer each short attempt is than the one before it.
const INIT_QUICK_STEP: Duration = Duration::from_millis(50);
/// Records per Kafka transaction at most: one transaction stays far below the
/// producer's queue and commits well within the transaction timeout.
pub const MAX_TXN_RECORDS: usize = 10_000;
/// Bytes of keys and payloads per Kafka transaction, about (a larger record still goes, alone).
pub const MAX_TXN_BYTES: usize = 8 << 20;

/// Why an emit failed.
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    /// A newer owner initialised this partition's transactional id: we are a zombie for it.
    #[error("partition {0}: producer fenced by a newer owner")]
    Fenced(i32),
    #[error("partition {partition}: {source}")]
    Kafka { partition: i32, source: KafkaError },
}

/// The aggregates log as the engine writes it: one transactional producer
/// per events partition. Kafka in production ([`KafkaLog`]), memory in the
/// simulation.
pub trait Log: Send + Sync {
    type Producer: TxnProducer;

    /// Takes over `partition`'s transactional id, fencing every earlier
    /// producer of it (and aborting its open transaction). Called on every
    /// claim, before the first emit.
    ///
    /// # Errors
    /// When the log does not answer or refuses.
    fn open(&self, partition: i32) -> impl Future<Output = Result<Self::Producer, EmitError>> + Send;

    /// Publishes decided replies at once, without a transaction and without
    /// waiting for the broker: a reply lost here leaves its command
    /// instance to time out and the client to retry with its id, which the
    /// workload answers with the first decision.
    fn reply(&self, replies: Vec<Emit>);
}

/// One partition's transactional producer.
pub trait TxnProducer: Send + Sync + 'static {
    /// One transaction: begin, send the keyed records then the placed ones
    /// (each to its aggregates partition), then commit once `commit` resolves
    /// to true, or abort if it resolves to false; aborted on any error. The
    /// sends go while `commit` is pending (a checkpoint's store commits
    /// meanwhile). True if it committed, false if `commit` withdrew it.
    ///
    /// # Errors
    /// [`EmitError::Fenced`] when a newer owner opened the partition's
    /// producer; any other error means the transaction did not commit, or
    /// may have (its outcome is then unknown to the caller).
    fn transaction(
        &self,
        records: Vec<Emit>,
        placed: Vec<(i32, Emit)>,
        commit: impl Future<Output = bool> + Send,
    ) -> impl Future<Output = Result<bool, EmitError>> + Send;
}

/// Opens the transactional producer of each partition this instance claims.
pub struct AggregateEmitter<L: Log = KafkaLog> {
    log: L,
    events_topic: String,
    aggregates_partitions: i32,
}

/// The aggregates topic in Kafka: a producer per partition, with the
/// `transactional.id` `<group>.<events topic>.<partition>`.
pub struct KafkaLog {
    config: rdkafka::ClientConfig,
    id_prefix: String,
    topic: String,
    /// The replies topic's idempotent producer, for a workload that has one.
    replies: Option<(LogProducer, String)>,
}

impl AggregateEmitter {
    /// # Errors
    /// Never today; kept fallible for configuration checks.
    pub fn new(
        kafka_cfg: &KafkaConfig,
        settings: &ProcessorSettings,
        delivery_timeout: Duration,
    ) -> Result<Self, KafkaError> {
        let (events_topic, group_id) = (&settings.events_topic, &settings.group_id);
        let tuning =
            ProducerTuning { linger: Duration::from_millis(1), delivery_timeout, queue_max_messages: 1_000_000 };
        let mut config = kafka::producer_config(kafka_cfg, "processor", tuning);
        // An owner killed mid-transaction holds back read_committed readers until the next
        // owner's init_transactions aborts it (one lease period), or this timeout at most.
        // librdkafka requires message.timeout.ms (the delivery timeout) to be within it.
        config.set("transaction.timeout.ms", delivery_timeout.as_millis().max(1000).to_string());
        // Right after a commit the coordinator may still be writing its markers and answer the
        // next transaction with CONCURRENT_TRANSACTIONS; retry quickly rather than after 100 ms.
        config.set("retry.backoff.ms", "2").set("retry.backoff.max.ms", "100");
        let replies = match &settings.replies_topic {
            Some(topic) => {
                let tuning = ProducerTuning { linger: settings.replies_linger, ..tuning };
                Some((
                    LogProducer::create(&kafka::producer_config(kafka_cfg, "processor-replies", tuning))?,
                    topic.clone(),
                ))
            }
            None => None,
        };
        let log = KafkaLog {
            config,
            id_prefix: format!("{group_id}.{events_topic}"),
            topic: settings.aggregates_topic.clone(),
            replies,
        };
        Ok(AggregateEmitter::over(log, events_topic, settings.aggregates_partitions))
    }
}

impl<L: Log> AggregateEmitter<L> {
    /// An emitter over any log (the simulation's, say).
    pub fn over(log: L, events_topic: &str, aggregates_partitions: i32) -> Self {
        AggregateEmitter { log, events_topic: events_topic.to_owned(), aggregates_partitions }
    }

    /// Publishes decided replies at once ([`Log::reply`]).
    pub fn reply(&self, replies: Vec<Emit>) {
        if !replies.is_empty() {
            self.log.reply(replies);
        }
    }

    /// Takes over `partition`'s transactional id ([`Log::open`]). Call on every claim, before the first emit.
    ///
    /// # Errors
    /// When the log does not answer or refuses.
    pub async fn open(&self, partition: i32) -> Result<PartitionEmitter<L::Producer>, EmitError> {
        let producer = self.log.open(partition).await?;
        Ok(PartitionEmitter {
            producer,
            partition,
            events_topic: self.events_topic.clone(),
            aggregates_partitions: self.aggregates_partitions,
        })
    }
}

impl Log for KafkaLog {
    type Producer = KafkaProducer;

    async fn open(&self, partition: i32) -> Result<KafkaProducer, EmitError> {
        let mut config = self.config.clone();
        config.set("transactional.id", format!("{}.{partition}", self.id_prefix));
        // A former owner killed mid-transaction: the coordinator refuses InitProducerId
        // (CONCURRENT_TRANSACTIONS) until it has aborted that transaction, and librdkafka
        // asks again only after a fixed 500 ms (rdkafka_idempotence.c, the PID timer; no
        // setting), or fails the call with that error: measured, each was half of a slow
        // failover (chaos row 20: one claim failed so, waited for the next heartbeat, then
        // opened 1.2 s later). A fresh client asks at once: so short attempts, each on a new
        // producer, for as long as the coordinator refuses, then the full wait.
        let started = std::time::Instant::now();
        let mut attempt: u32 = 0;
        loop {
            let quick = started.elapsed() < INIT_QUICK_FOR;
            // Each attempt a little longer: on a busy machine a fresh producer's connection
            // alone may outlast the first ones, and an open that is only slow must still land.
            let timeout = if quick { INIT_QUICK + INIT_QUICK_STEP * attempt } else { TXN_CALL_TIMEOUT };
            let config = config.clone();
            let (producer, opened) = blocking(partition, move || {
                let producer = LogProducer::create(&config)?;
                let opened = producer.init_transactions(timeout);
                Ok((producer, opened))
            })
            .await?;
            let took_ms = started.elapsed().as_millis() as u64;
            match opened {
                Ok(()) => {
                    tracing::debug!(partition, attempt, took_ms, "transactional producer open");
                    return Ok(KafkaProducer { producer, topic: self.topic.clone(), partition });
                }
                Err(e) if quick && (timed_out(&e) || refused_for_now(&e)) => {
                    tracing::info!(partition, attempt, took_ms, error = %e, "init_transactions refused or slow; a fresh producer asks again");
                    // Its delivery thread destroys the client (which blocks until the client's
                    // threads end: tens to hundreds of ms), off the claim's path.
                    drop(producer);
                    attempt += 1;
                }
                Err(e) => return Err(classify(partition, e)),
            }
        }
    }

    fn reply(&self, replies: Vec<Emit>) {
        let Some((producer, topic)) = &self.replies else {
            tracing::error!(count = replies.len(), "replies decided for a workload without a replies topic");
            return;
        };
        for r in replies {
            // Enqueued, not awaited: the delivery future is dropped, the record still goes.
            if let Err(e) = producer.send_result(FutureRecord::to(topic).key(&r.key).payload(&r.payload)) {
                metrics::counter!(super::metrics::REPLIES_DROPPED).increment(1);
                tracing::warn!(error = %e, "a reply was not published; its command times out and is retried by id");
            }
        }
    }
}

/// The Kafka transactional producer of one owned partition.
pub struct KafkaProducer {
    producer: LogProducer,
    topic: String,
    partition: i32,
}

/// The transactional producer of one owned partition. Dropped with the partition.
pub struct PartitionEmitter<P: TxnProducer = KafkaProducer> {
    producer: P,
    partition: i32,
    events_topic: String,
    aggregates_partitions: i32,
}

impl<P: TxnProducer> PartitionEmitter<P> {
    /// The progress records of `next_offset`: one per aggregates partition,
    /// written to it explicitly (its key alone would land in one).
    fn progress(&self, next_offset: i64) -> Vec<(i32, Emit)> {
        (0..self.aggregates_partitions)
            .map(|ap| {
                let p = Progress {
                    events_topic: self.events_topic.clone(),
                    partition: self.partition,
                    next_offset,
                    aggregates_partition: ap,
                    aggregates_partitions: self.aggregates_partitions,
                };
                (ap, Emit { key: p.key(), payload: encode_progress(&p), keep_payload: false })
            })
            .collect()
    }

    /// Writes the records, then (with `progress`, the partition's next offset)
    /// a progress record to every aggregates partition, in transactions
    /// of at most [`MAX_TXN_RECORDS`] records and about [`MAX_TXN_BYTES`]
    /// (the progress records in the last), waiting for each to commit; none
    /// commits before `stored` resolves to true (the checkpoint holding the
    /// records is committed in the state store), and with false nothing is
    /// committed. A single transaction (the usual case) sends its records
    /// while `stored` is pending, so only its commit waits for the store;
    /// several wait for `stored` first. True if it committed (or had nothing
    /// to commit), false if `stored` withdrew it.
    ///
    /// Several transactions are not atomic together, and need not be: the
    /// records stay in the state store's outbox until the next checkpoint, so
    /// a crash between them is repaired by the next claim's re-send; and the
    /// progress records come last, so a reader that applied them has applied
    /// every record before them.
    ///
    /// # Errors
    /// [`EmitError::Fenced`] when a newer owner took the partition's id; the
    /// caller must drop the partition. Any other error: the transaction is
    /// aborted and the caller must drop the partition and claim it again
    /// (which re-sends the outbox).
    pub async fn emit(
        &self,
        records: Vec<Emit>,
        progress: Option<i64>,
        stored: impl Future<Output = bool> + Send,
    ) -> Result<bool, EmitError> {
        let progress = progress.map(|next_offset| self.progress(next_offset)).unwrap_or_default();
        if records.is_empty() && progress.is_empty() {
            return Ok(stored.await);
        }
        let mut batches = bounded_batches(records);
        let last = batches.pop().unwrap_or_default();
        if batches.is_empty() {
            // Sent beside the store, committed only after it: the outbox's repair needs the store first.
            let stored = async { super::planted(super::Planted::EmitBeforeStored) || stored.await };
            return self.producer.transaction(last, progress, stored).await;
        }
        if !stored.await {
            return Ok(false);
        }
        for batch in batches {
            self.producer.transaction(batch, Vec::new(), std::future::ready(true)).await?;
        }
        self.producer.transaction(last, progress, std::future::ready(true)).await
    }
}

impl TxnProducer for KafkaProducer {
    /// One Kafka transaction: the keyed records, then the placed ones.
    async fn transaction(
        &self,
        records: Vec<Emit>,
        progress: Vec<(i32, Emit)>,
        commit: impl Future<Output = bool> + Send,
    ) -> Result<bool, EmitError> {
        let partition = self.partition;
        let (topic, p) = (self.topic.clone(), self.producer.clone());
        let result = async {
            let deliveries = blocking(partition, move || {
                p.begin_transaction()?;
                let keyed = records.iter().map(|r| (None, r));
                let placed = progress.iter().map(|(ap, r)| (Some(*ap), r));
                keyed
                    .chain(placed)
                    .map(|(ap, r)| {
                        let mut record = FutureRecord::to(&topic).key(&r.key).payload(&r.payload);
                        record.partition = ap;
                        p.send_result(record)
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
            // Wait for the deliveries here rather than in commit_transaction: rdkafka's
            // commit first flushes, polling in steps of up to 100 ms while the producer's
            // own thread serves the delivery reports, which cost ~100 ms per emit (measured);
            // `LogProducer::commit_transaction` then waits the microseconds until librdkafka has
            // counted them out, so that flush never polls (it did in one emit of twenty).
            for delivery in deliveries {
                match delivery.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => return Err(classify(partition, e)),
                    Err(_canceled) => return Err(classify(partition, KafkaError::Canceled)),
                }
            }
            if !commit.await {
                let p = self.producer.clone();
                blocking(partition, move || p.abort_transaction(TXN_CALL_TIMEOUT)).await?;
                return Ok(false);
            }
            let p = self.producer.clone();
            blocking(partition, move || p.commit_transaction(TXN_CALL_TIMEOUT)).await.map(|()| true)
        }
        .await;
        if let Err(e) = &result {
            if !matches!(e, EmitError::Fenced(_)) {
                // Best effort: the next owner's init_transactions aborts it anyway.
                let p = self.producer.clone();
                let _ = tokio::task::spawn_blocking(move || p.abort_transaction(TXN_CALL_TIMEOUT)).await;
            }
        }
        result
    }
}

/// Splits records into transactions of at most [`MAX_TXN_RECORDS`] records
/// and about [`MAX_TXN_BYTES`] (a batch holds at least one record); always
/// at least one batch, possibly empty.
fn bounded_batches(records: Vec<Emit>) -> Vec<Vec<Emit>> {
    let mut batches = vec![Vec::new()];
    let mut bytes = 0;
    for r in records {
        let size = r.bytes();
        let current = batches.last_mut().expect("never empty");
        if !current.is_empty() && (current.len() >= MAX_TXN_RECORDS || bytes + size > MAX_TXN_BYTES) {
            batches.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        batches.last_mut().expect("never empty").push(r);
    }
    batches
}

/// Runs a blocking transaction call off the async loop, and classifies its error.
async fn blocking<T, F>(partition: i32, f: F) -> Result<T, EmitError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, KafkaError> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.expect("transaction call does not panic").map_err(|e| classify(partition, e))
}

/// The coordinator refused for now (e.g. CONCURRENT_TRANSACTIONS while it
/// aborts a former owner's transaction): asking again will do.
fn refused_for_now(e: &KafkaError) -> bool {
    matches!(e, KafkaError::Transaction(e) if e.is_retriable())
        || e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::ConcurrentTransactions)
}

/// librdkafka's own time limit on a call ran out (not the broker's answer).
fn timed_out(e: &KafkaError) -> bool {
    e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::OperationTimedOut)
}

fn classify(partition: i32, e: KafkaError) -> EmitError {
    if kafka::is_fenced(&e) {
        EmitError::Fenced(partition)
    } else {
        EmitError::Kafka { partition, source: e }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emit(n: usize, bytes: usize) -> Emit {
        Emit { key: format!("k{n}"), payload: vec![0; bytes], keep_payload: false }
    }

    #[test]
    fn records_are_split_into_bounded_transactions_in_order() {
        let batches = bounded_batches((0..25_001).map(|n| emit(n, 10)).collect());
        assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), vec![10_000, 10_000, 5_001]);
        assert_eq!(batches[1][0].key, "k10000");
        let big = bounded_batches((0..5).map(|n| emit(n, 3 << 20)).collect());
        assert_eq!(big.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 2, 1]);
        let huge = bounded_batches(vec![emit(0, MAX_TXN_BYTES * 2)]);
        assert_eq!(huge.len(), 1, "an oversized record still goes, alone");
        assert_eq!(bounded_batches(Vec::new()), vec![Vec::<Emit>::new()]);
    }
}
