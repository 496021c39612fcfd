//! The topic adapter: appends one workload's encoded events to its topic and
//! waits for the broker's ack.

use std::time::{Duration, Instant};

use common::engine::config::KafkaConfig;
use common::engine::kafka::{self, LogProducer, ProducerTuning};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureRecord, Producer};

use crate::metrics as m;

/// Why an event could not be made durable. Never the client's fault: the
/// client may retry after `Retry-After`.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the producer queue is full")]
    QueueFull,
    #[error("the broker did not acknowledge the event in time")]
    Timeout,
    #[error("the broker refused the event: {0}")]
    Broker(KafkaError),
}

impl PublishError {
    pub fn label(&self) -> &'static str {
        match self {
            PublishError::QueueFull => "queue_full",
            PublishError::Timeout => "timeout",
            PublishError::Broker(_) => "broker",
        }
    }

    /// True when the event is certainly not in the log (it never left this
    /// process). Otherwise it may have been written: a timed-out or failed
    /// request can still have been appended, so only a retry with the same
    /// event id is safe.
    pub fn outcome_known(&self) -> bool {
        match self {
            PublishError::QueueFull => true,
            PublishError::Timeout => false,
            PublishError::Broker(e) => matches!(
                e.rdkafka_error_code(),
                Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownPartition)
            ),
        }
    }

    /// A fatal producer error (fencing, idempotence broken): the process must restart.
    pub fn is_fatal(&self) -> bool {
        matches!(self, PublishError::Broker(e) if kafka::is_fatal(e))
    }
}

/// Where an acknowledged event landed.
#[derive(Debug, Clone, Copy)]
pub struct Delivered {
    pub partition: i32,
    /// The record's offset in that partition: with the topic, what a read
    /// token names (see `common::engine::progress::ReadToken`).
    pub offset: i64,
    /// The broker's log-append time, where the topic stamps one.
    pub appended_ms: Option<i64>,
}

/// Appends one workload's events to its topic, keyed by the workload's key.
///
/// Optionally several producers (each its own connection, each with the
/// idempotent producer's 5 requests in flight), for brokers whose per-request
/// commit time caps one connection. Which producer carries an event does not
/// matter: the key alone picks the partition, and counting does not depend on
/// the order of events within a partition. (On the local broker more than one
/// was slower: see docs/benchmarks.md.)
pub struct EventPublisher {
    producers: Vec<LogProducer>,
    next: std::sync::atomic::AtomicUsize,
    topic: String,
    /// The workload's name, for the `workload` metrics label.
    workload: &'static str,
}

impl EventPublisher {
    /// # Errors
    /// When librdkafka rejects the configuration.
    pub fn new(
        kafka_cfg: &KafkaConfig,
        topic: &str,
        workload: &'static str,
        tuning: ProducerTuning,
        producers: usize,
    ) -> Result<Self, KafkaError> {
        let producers = (0..producers.max(1))
            .map(|i| kafka::producer_config(kafka_cfg, &format!("command-{workload}-{i}"), tuning))
            .map(|c| LogProducer::create(&c))
            .collect::<Result<_, _>>()?;
        Ok(EventPublisher { producers, next: Default::default(), topic: topic.to_owned(), workload })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    fn producer(&self) -> &LogProducer {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        &self.producers[i % self.producers.len()]
    }

    /// Sends one encoded event and returns once it is acknowledged by all in-sync replicas.
    ///
    /// With `murmur2_random` one key's events always land in one partition
    /// (for analytics, the user id: that keeps per-partition user sets disjoint).
    ///
    /// Returns where the event landed, and the broker's log-append time if the topic stamps one.
    ///
    /// # Errors
    /// [`PublishError`]; the event is then not recorded as far as the client knows.
    pub async fn publish(&self, key: &[u8], payload: &[u8]) -> Result<Delivered, PublishError> {
        let record = FutureRecord::to(&self.topic).key(key).payload(payload);
        let started = Instant::now();
        // Never waits for room: a full queue is overload, answered at once with 503.
        let result = match self.producer().send_result(record) {
            Ok(ack) => match ack.await {
                Ok(report) => Self::delivered(report),
                // The producer went away with the record queued: never acknowledged.
                Err(_canceled) => Err(PublishError::Broker(KafkaError::Canceled)),
            },
            Err(e) => Err(Self::publish_error(e)),
        };
        metrics::histogram!(m::PRODUCE_DURATION, "workload" => self.workload).record(started.elapsed().as_secs_f64());
        result
    }

    /// Where a delivery landed, or why it did not.
    fn delivered(result: rdkafka::producer::future_producer::OwnedDeliveryResult) -> Result<Delivered, PublishError> {
        match result {
            Ok(delivery) => Ok(Delivered {
                partition: delivery.partition,
                offset: delivery.offset,
                appended_ms: match delivery.timestamp {
                    rdkafka::Timestamp::LogAppendTime(ms) => Some(ms),
                    _ => None,
                },
            }),
            Err((e, _)) => Err(Self::publish_error(e)),
        }
    }

    fn publish_error(e: KafkaError) -> PublishError {
        match e.rdkafka_error_code() {
            Some(RDKafkaErrorCode::QueueFull) => PublishError::QueueFull,
            Some(RDKafkaErrorCode::MessageTimedOut) => PublishError::Timeout,
            _ => PublishError::Broker(e),
        }
    }

    /// Messages waiting in the local producer queue.
    pub fn queue_len(&self) -> i32 {
        self.producers.iter().map(|p| p.in_flight_count()).sum()
    }

    /// Readiness: the broker answers a metadata request for the topic.
    pub async fn check_broker(&self, limit: Duration) -> Result<(), String> {
        let topic = self.topic.clone();
        let producer = self.producers[0].clone();
        tokio::task::spawn_blocking(move || {
            producer.client().fetch_metadata(Some(&topic), limit).map_err(|e| format!("broker: {e}")).and_then(|md| {
                match md.topics().first() {
                    Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
                    _ => Err(format!("broker: topic {topic} not available")),
                }
            })
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Sends everything still queued; part of graceful shutdown.
    pub fn flush(&self, limit: Duration) -> Result<(), KafkaError> {
        self.producers.iter().try_for_each(|p| p.flush(limit))
    }
}

/// Streamed uploads enqueue records and collect their acks later (a window of them, `upload::Appender`).
impl super::upload::Sender for EventPublisher {
    fn start(
        &self,
        partition: i32,
        key: Option<&[u8]>,
        payload: &[u8],
    ) -> Result<futures::future::BoxFuture<'static, Result<Delivered, PublishError>>, PublishError> {
        use futures::FutureExt;
        let record = FutureRecord::<[u8], [u8]>::to(&self.topic).partition(partition).payload(payload);
        let record = match key {
            Some(key) => record.key(key),
            None => record,
        };
        let ack = self.producer().send_result(record).map_err(Self::publish_error)?;
        let workload = self.workload;
        let started = Instant::now();
        Ok(async move {
            let result = match ack.await {
                Ok(result) => Self::delivered(result),
                // The producer was dropped with the record queued: never acknowledged.
                Err(_canceled) => Err(PublishError::Timeout),
            };
            metrics::histogram!(m::PRODUCE_DURATION, "workload" => workload).record(started.elapsed().as_secs_f64());
            result
        }
        .boxed())
    }
}
