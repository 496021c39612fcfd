//! Following a workload's own topic from a point in time, for its background
//! tasks (a janitor that finds uploads whose writer died): every partition,
//! read as a free consumer (a group of its own, never committed), with the
//! broker's log-append time of each record and a check that the follower
//! has read everything appended before the check ([`Tail::caught_up`]).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use common::engine::config::KafkaConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::replies::METADATA_TIMEOUT;

/// One record of the followed topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tailed {
    pub partition: i32,
    pub offset: i64,
    /// The broker's log-append time (the events topics are stamped so), if the record carries one.
    pub appended_ms: Option<i64>,
    pub payload: Vec<u8>,
}

/// Every partition of one topic, followed from a point in time.
pub struct Tail {
    consumer: Arc<StreamConsumer>,
    topic: String,
    /// The next offset to read, per partition.
    next: HashMap<i32, i64>,
}

impl Tail {
    /// Assigns every partition of `topic` at its first offset appended at or after `since_ms`.
    ///
    /// # Errors
    /// The consumer not created, or the broker not answering.
    pub async fn start(kafka: &KafkaConfig, topic: String, since_ms: i64) -> anyhow::Result<Self> {
        // A group of its own (never committed to): each follower reads everything.
        let group = format!("command-tail-{}", uuid::Uuid::new_v4());
        let consumer: StreamConsumer = common::engine::kafka::consumer_config(kafka, &group, "command-tail")
            .create()
            .context("creating the tail consumer")?;
        let consumer = Arc::new(consumer);
        let (c, t) = (consumer.clone(), topic.clone());
        let next = tokio::task::spawn_blocking(move || assign_since(&c, &t, since_ms))
            .await
            .context("the tail consumer's start panicked")??;
        Ok(Tail { consumer, topic, next })
    }

    /// The next record, waiting for one.
    ///
    /// # Errors
    /// The consumer's error (the broker not answering, say): transient, call again.
    pub async fn next(&mut self) -> Result<Tailed, rdkafka::error::KafkaError> {
        let m = self.consumer.recv().await?;
        let (partition, offset) = (m.partition(), m.offset());
        self.next.insert(partition, offset + 1);
        Ok(Tailed {
            partition,
            offset,
            appended_ms: m.timestamp().to_millis(),
            payload: m.payload().unwrap_or_default().to_vec(),
        })
    }

    /// True when every record appended before this call has been read: each
    /// partition's next offset is at its high watermark (for a
    /// `read_committed` follower, its last stable offset).
    ///
    /// # Errors
    /// The broker not answering.
    pub async fn caught_up(&self) -> anyhow::Result<bool> {
        let (consumer, topic, next) = (self.consumer.clone(), self.topic.clone(), self.next.clone());
        tokio::task::spawn_blocking(move || {
            for (partition, at) in next {
                let (_, high) = consumer.fetch_watermarks(&topic, partition, METADATA_TIMEOUT)?;
                if at < high {
                    return Ok(false);
                }
            }
            Ok(true)
        })
        .await
        .context("the tail's watermark check panicked")?
    }
}

/// Assigns every partition of `topic` at the first offset at or after
/// `since_ms` (its high watermark if none); those offsets, per partition.
fn assign_since(consumer: &StreamConsumer, topic: &str, since_ms: i64) -> anyhow::Result<HashMap<i32, i64>> {
    let partitions = super::replies::topic_partitions(consumer, topic)?;
    let mut query = TopicPartitionList::new();
    for p in &partitions {
        query.add_partition_offset(topic, *p, Offset::Offset(since_ms))?;
    }
    let found = consumer.offsets_for_times(query, METADATA_TIMEOUT)?;
    let mut next = HashMap::new();
    let mut assign = TopicPartitionList::new();
    for p in partitions {
        let (_, high) = consumer.fetch_watermarks(topic, p, METADATA_TIMEOUT)?;
        let at = match found.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) if o >= 0 => o.min(high),
            // No record that recent: from the end.
            _ => high,
        };
        assign.add_partition_offset(topic, p, Offset::Offset(at))?;
        next.insert(p, at);
    }
    consumer.assign(&assign)?;
    Ok(next)
}
