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

use std::time::Duration;

use common::engine::config::KafkaConfig;
use common::engine::kafka::{self, ProducerTuning};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use common::engine::progress::{encode_progress, Progress};

use super::pipeline::ProcessorSettings;
use super::Emit;

/// How long the transaction calls (init, commit, abort) may block.
const TXN_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why an emit failed.
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    /// A newer owner initialised this partition's transactional id: we are a zombie for it.
    #[error("partition {0}: producer fenced by a newer owner")]
    Fenced(i32),
    #[error("partition {partition}: {source}")]
    Kafka { partition: i32, source: KafkaError },
}

/// Opens the transactional producer of each partition this instance claims.
pub struct AggregateEmitter {
    config: rdkafka::ClientConfig,
    id_prefix: String,
    topic: String,
    events_topic: String,
    aggregates_partitions: i32,
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
        Ok(AggregateEmitter {
            config,
            id_prefix: format!("{group_id}.{events_topic}"),
            topic: settings.aggregates_topic.clone(),
            events_topic: events_topic.clone(),
            aggregates_partitions: settings.aggregates_partitions,
        })
    }

    /// Takes over `partition`'s transactional id, fencing every earlier producer of it
    /// (and aborting its open transaction). Call on every claim, before the first emit.
    ///
    /// # Errors
    /// When the broker does not answer or refuses.
    pub async fn open(&self, partition: i32) -> Result<PartitionEmitter, EmitError> {
        let mut config = self.config.clone();
        config.set("transactional.id", format!("{}.{partition}", self.id_prefix));
        let producer: FutureProducer = config.create().map_err(|source| EmitError::Kafka { partition, source })?;
        let p = producer.clone();
        blocking(partition, move || p.init_transactions(TXN_CALL_TIMEOUT)).await?;
        Ok(PartitionEmitter {
            producer,
            topic: self.topic.clone(),
            partition,
            events_topic: self.events_topic.clone(),
            aggregates_partitions: self.aggregates_partitions,
        })
    }
}

/// The transactional producer of one owned partition. Dropped with the partition.
pub struct PartitionEmitter {
    producer: FutureProducer,
    topic: String,
    partition: i32,
    events_topic: String,
    aggregates_partitions: i32,
}

impl PartitionEmitter {
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
                (ap, Emit { key: p.key(), payload: encode_progress(&p) })
            })
            .collect()
    }

    /// Writes the records, then (with `progress`, the partition's next offset)
    /// a progress record to every aggregates partition, in one transaction,
    /// and waits until it is committed.
    ///
    /// # Errors
    /// [`EmitError::Fenced`] when a newer owner took the partition's id; the
    /// caller must drop the partition. Any other error: the transaction is
    /// aborted and the caller must stop, since the state store is ahead of
    /// what was emitted and only a claim (which re-emits every restored hour)
    /// brings the sinks back in line.
    pub async fn emit(&self, records: Vec<Emit>, progress: Option<i64>) -> Result<(), EmitError> {
        let progress = progress.map(|next_offset| self.progress(next_offset)).unwrap_or_default();
        if records.is_empty() && progress.is_empty() {
            return Ok(());
        }
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
                        p.send_result(record).map_err(|(e, _)| e)
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
            // Wait for the deliveries here rather than in commit_transaction: rdkafka's
            // commit first flushes, polling in steps of up to 100 ms while the producer's
            // own thread serves the delivery reports, which cost ~100 ms per emit (measured).
            for delivery in deliveries {
                match delivery.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => return Err(classify(partition, e)),
                    Err(_canceled) => return Err(classify(partition, KafkaError::Canceled)),
                }
            }
            let p = self.producer.clone();
            blocking(partition, move || p.commit_transaction(TXN_CALL_TIMEOUT)).await
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

/// Runs a blocking transaction call off the async loop, and classifies its error.
async fn blocking<T, F>(partition: i32, f: F) -> Result<T, EmitError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, KafkaError> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.expect("transaction call does not panic").map_err(|e| classify(partition, e))
}

fn classify(partition: i32, e: KafkaError) -> EmitError {
    if kafka::is_fenced(&e) {
        EmitError::Fenced(partition)
    } else {
        EmitError::Kafka { partition, source: e }
    }
}
