//! Decisions coming back: for a workload whose writes are decided by the
//! owner of their partition ([`super::Intake::replies_topic`]), every command
//! instance follows the workload's replies topic from where it stood at
//! start-up and hands each reply to the request waiting for it, by the
//! record's key (the request id the engine minted for that attempt).
//!
//! ```text
//! request ─▶ expect(id) ─▶ append the write ─▶ wait ≤ --decision-timeout ─▶ answer
//!                                   processor decides ─▶ replies topic ─▶ follow() ─┘
//! ```
//!
//! Every instance reads every reply and drops those it is not waiting for:
//! cheap for a handful of instances (a reply is a few dozen bytes); beyond
//! that, replies would be partitioned per instance (docs/architecture.md).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use common::engine::config::KafkaConfig;
use common::engine::shutdown::CancellationToken;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::oneshot;

/// How long a metadata, offset or watermark request may take while following starts (the tail's too).
pub(crate) const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// The requests of one replies topic waiting for their decision.
pub(crate) struct Replies {
    topic: String,
    waiting: Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>,
    /// Set once the topic is followed from its end: a request appended
    /// before then could miss its reply, so it is not appended (503).
    following: AtomicBool,
}

/// One request waiting for its reply; stops waiting when dropped.
pub(crate) struct Waiting<'a> {
    replies: &'a Replies,
    request: String,
    reply: oneshot::Receiver<Vec<u8>>,
}

impl Waiting<'_> {
    /// The reply's payload, or `None` if it did not come within `limit`.
    pub async fn reply(&mut self, limit: Duration) -> Option<Vec<u8>> {
        tokio::time::timeout(limit, &mut self.reply).await.ok().and_then(Result::ok)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.replies.lock().remove(&self.request);
    }
}

impl Replies {
    pub fn new(topic: String) -> Self {
        Replies { topic, waiting: Mutex::new(HashMap::new()), following: AtomicBool::new(false) }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Vec<u8>>>> {
        // A panic while holding it cannot leave the map inconsistent (single inserts and removes).
        self.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// True once replies are followed: a request may be appended.
    pub fn is_following(&self) -> bool {
        self.following.load(Ordering::Acquire)
    }

    /// Starts waiting for the reply to `request`: call before appending the write.
    pub fn expect(&self, request: String) -> Waiting<'_> {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(request.clone(), tx);
        Waiting { replies: self, request, reply: rx }
    }

    /// Hands a reply to its request, if this instance is waiting for it.
    fn deliver(&self, request: &[u8], payload: &[u8]) {
        let Ok(request) = std::str::from_utf8(request) else { return };
        if let Some(tx) = self.lock().remove(request) {
            // The request may have given up just now: nothing to do then.
            let _ = tx.send(payload.to_vec());
        }
    }

    /// Follows the topic from its current end until `stop`, retrying the
    /// start while the broker does not answer.
    ///
    /// # Errors
    /// When the consumer cannot be created (a configuration error).
    pub async fn follow(self: Arc<Self>, kafka: KafkaConfig, stop: CancellationToken) -> anyhow::Result<()> {
        // A group of its own (never committed to): every instance reads every reply.
        let group = format!("command-replies-{}", uuid::Uuid::new_v4());
        let consumer: StreamConsumer = common::engine::kafka::consumer_config(&kafka, &group, "command-replies")
            .create()
            .context("creating the replies consumer")?;
        let consumer = Arc::new(consumer);
        let policy = common::engine::retry::backoff(Duration::from_millis(200), Duration::from_secs(5));
        let attempt = || assign_at_end(consumer.clone(), self.topic.clone());
        let started =
            common::engine::retry::until_cancelled(&stop, policy, "following the replies topic", attempt, |_| true)
                .await;
        match started {
            None => return Ok(()),
            Some(Err(e)) => return Err(e),
            Some(Ok(())) => {}
        }
        self.following.store(true, Ordering::Release);
        tracing::info!(topic = self.topic, "following decisions");
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                msg = consumer.recv() => match msg {
                    Ok(m) => {
                        if let (Some(key), Some(payload)) = (m.key(), m.payload()) {
                            self.deliver(key, payload);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, topic = self.topic, "replies consumer error"),
                },
            }
        }
    }
}

/// The partitions of `topic` (blocking: a metadata request); an error if it has none yet.
pub(crate) fn topic_partitions(consumer: &StreamConsumer, topic: &str) -> anyhow::Result<Vec<i32>> {
    let metadata = consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    anyhow::ensure!(!partitions.is_empty(), "topic {topic} has no partitions yet");
    Ok(partitions)
}

/// Assigns every partition of `topic` at its current high watermark.
async fn assign_at_end(consumer: Arc<StreamConsumer>, topic: String) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || {
        let partitions = topic_partitions(&consumer, &topic)?;
        let mut list = TopicPartitionList::new();
        for p in partitions {
            let (_, high) = consumer.fetch_watermarks(&topic, p, METADATA_TIMEOUT)?;
            list.add_partition_offset(&topic, p, Offset::Offset(high))?;
        }
        consumer.assign(&list)?;
        Ok(())
    })
    .await
    .context("the replies consumer's start panicked")?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reply_reaches_the_request_waiting_for_it_and_no_other() {
        let replies = Replies::new("t".into());
        let mut a = replies.expect("a".into());
        let mut b = replies.expect("b".into());
        replies.deliver(b"a", b"yes");
        replies.deliver(b"c", b"nobody waits");
        assert_eq!(a.reply(Duration::from_secs(1)).await.as_deref(), Some(&b"yes"[..]));
        assert_eq!(b.reply(Duration::from_millis(10)).await, None, "b's reply never came");
    }

    #[test]
    fn a_request_that_stops_waiting_is_forgotten() {
        let replies = Replies::new("t".into());
        drop(replies.expect("a".into()));
        assert!(replies.lock().is_empty());
    }
}
