//! The materializer loop: consume a batch of aggregates, write it to the read
//! models, then commit the consumed offsets. A crash before the commit
//! replays the batch, which the offset and version guards turn into no-ops.

use std::collections::BTreeMap;
use std::time::Duration;

use common::avro::{decode_hour_aggregate, HourAggregate};
use common::kafka::{consumer_config, RebalanceNotifier};
use common::shutdown::CancellationToken;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::metrics as m;
use crate::sink::ReadModelSink;
use crate::Config;

pub struct Materializer {
    consumer: StreamConsumer<RebalanceNotifier>,
    sink: ReadModelSink,
    topic: String,
    max_batch: usize,
    batch_wait: Duration,
}

/// Aggregates read since the last commit, and the offsets to commit after writing them.
#[derive(Default)]
struct Batch {
    aggregates: Vec<HourAggregate>,
    next_offsets: BTreeMap<i32, i64>,
}

impl Materializer {
    /// # Errors
    /// When the consumer cannot be created or subscribed.
    pub fn new(cfg: &Config, sink: ReadModelSink) -> Result<Self, rdkafka::error::KafkaError> {
        let (ctx, _rebalances) = RebalanceNotifier::new();
        let consumer: StreamConsumer<RebalanceNotifier> =
            consumer_config(&cfg.kafka, &cfg.group_id, "materializer").create_with_context(ctx)?;
        consumer.subscribe(&[&cfg.kafka.aggregates_topic])?;
        Ok(Materializer {
            consumer,
            sink,
            topic: cfg.kafka.aggregates_topic.clone(),
            max_batch: cfg.max_batch.get() as usize,
            batch_wait: cfg.batch_wait,
        })
    }

    /// Runs until `token` is cancelled; the batch in hand is written before returning.
    ///
    /// # Errors
    /// Kafka commit failures that cannot be retried.
    pub async fn run(self, token: CancellationToken) -> anyhow::Result<()> {
        loop {
            let batch = tokio::select! {
                _ = token.cancelled() => break,
                b = self.next_batch() => b,
            };
            if batch.next_offsets.is_empty() {
                continue;
            }
            if !self.write_until_done(&batch, &token).await {
                // Shutting down with the batch unwritten: do not commit; it will be replayed.
                break;
            }
            self.commit(&batch);
        }
        tracing::info!("materializer stopped");
        Ok(())
    }

    async fn next_batch(&self) -> Batch {
        let mut batch = Batch::default();
        let first = self.consumer.recv().await;
        self.add(&mut batch, first);
        let deadline = tokio::time::Instant::now() + self.batch_wait;
        while batch.aggregates.len() < self.max_batch {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(msg) => self.add(&mut batch, msg),
                Err(_) => break,
            }
        }
        batch
    }

    fn add(
        &self,
        batch: &mut Batch,
        msg: Result<rdkafka::message::BorrowedMessage<'_>, rdkafka::error::KafkaError>,
    ) {
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "consumer error");
                return;
            }
        };
        match msg.payload().map(decode_hour_aggregate) {
            Some(Ok(a)) => batch.aggregates.push(a),
            other => {
                tracing::warn!(partition = msg.partition(), offset = msg.offset(), error = ?other.and_then(Result::err), "skipping an undecodable aggregate");
                metrics::counter!(m::AGGREGATES_SKIPPED, "reason" => "undecodable").increment(1);
            }
        }
        batch.next_offsets.insert(msg.partition(), msg.offset() + 1);
    }

    /// Retries the batch with backoff until it is written; false if shutdown came first.
    async fn write_until_done(&self, batch: &Batch, token: &CancellationToken) -> bool {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.sink.write(&batch.aggregates).await {
                Ok(()) => {
                    metrics::counter!(m::AGGREGATES_CONSUMED).increment(batch.aggregates.len() as u64);
                    metrics::counter!(m::BATCHES).increment(1);
                    metrics::histogram!(m::BATCH_SIZE).record(batch.aggregates.len() as f64);
                    return true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "writing read models failed; retrying");
                    tokio::select! {
                        _ = token.cancelled() => return false,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn commit(&self, batch: &Batch) {
        let mut tpl = TopicPartitionList::new();
        for (p, next) in &batch.next_offsets {
            if tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*next)).is_err() {
                return;
            }
        }
        // Async: a lost commit only replays aggregates, which the guards make harmless.
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            tracing::debug!(error = %e, "offset commit failed");
        }
    }
}
