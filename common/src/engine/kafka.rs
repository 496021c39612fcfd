//! Kafka clients, configured once for every service.
//!
//! Producers are idempotent with `acks=all` and the `murmur2_random`
//! partitioner (the Java client's default, so keys land on the same partition
//! whichever client writes them). Consumers never auto-commit: each service
//! commits only after its own output is durable.

use std::time::Duration;

use backon::Retryable;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::engine::config::KafkaConfig;

pub mod producer;
pub use producer::{DeliveryFuture, LogProducer};

/// Producer settings that bound how long a request can wait for the broker.
#[derive(Debug, Clone, Copy)]
pub struct ProducerTuning {
    /// How long the producer may batch before sending.
    pub linger: Duration,
    /// Give up on a message (and fail its request) after this long.
    pub delivery_timeout: Duration,
    /// Messages the local queue may hold before `send` fails with QueueFull.
    pub queue_max_messages: u32,
}

/// An idempotent, `acks=all` producer configuration.
pub fn producer_config(kafka: &KafkaConfig, client_id: &str, tuning: ProducerTuning) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.brokers)
        .set("client.id", client_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", linger_ms(tuning.linger))
        .set("message.timeout.ms", tuning.delivery_timeout.as_millis().max(1).to_string())
        .set("queue.buffering.max.messages", tuning.queue_max_messages.to_string())
        .set("socket.keepalive.enable", "true");
    c
}

/// librdkafka's `linger.ms`, a float: a linger below a millisecond is kept, not truncated to 0.
fn linger_ms(linger: Duration) -> String {
    format!("{}", linger.as_secs_f64() * 1000.0)
}

/// Kilobytes of fetched records a consumer queues at most ahead of its reader.
pub const PREFETCH_KBYTES: u32 = 8 * 1024;

/// A consumer configuration for manually assigned partitions (see
/// [`crate::engine::membership`]): positions come from the services' own stores.
/// Its prefetch is [`PREFETCH_KBYTES`]; [`prefetch`] sets another.
pub fn consumer_config(kafka: &KafkaConfig, group_id: &str, client_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.brokers)
        .set("group.id", group_id)
        .set("client.id", client_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // Only committed transactions: a fenced processor's aborted emits are never seen.
        .set("isolation.level", "read_committed")
        // How long the broker holds a fetch of an idle partition (librdkafka's default: 500 ms).
        .set("fetch.wait.max.ms", kafka.fetch_wait.as_millis().max(1).to_string())
        .set("socket.keepalive.enable", "true");
    // Bounded prefetch: librdkafka queues up to 64 MB of fetched records by default, held while the
    // service is busy (a processor waiting for its checkpoint): 8 MB still keeps every partition fed.
    prefetch(&mut c, PREFETCH_KBYTES);
    c
}

/// Bounds what a consumer fetches ahead of its reader: `kbytes` queued
/// (librdkafka's consumer queue, over all its partitions) and as much in one
/// fetch response, so at most about twice `kbytes` is held.
pub fn prefetch(c: &mut ClientConfig, kbytes: u32) {
    c.set("queued.max.messages.kbytes", kbytes.to_string())
        .set("fetch.max.bytes", (kbytes * 1024).to_string())
        .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS.to_string());
}

/// Milliseconds a full consumer queue postpones the partition's next fetch
/// ([`prefetch`]). librdkafka's default is 1 s, so a reader that empties its
/// queue in less than that (any backlog) then idles with records waiting on
/// the broker: a 1M-event drain ran at 143k events/s with it and 224k with
/// 10 ms, a promotions load at 168k rows/s and 262k (docs/benchmarks-notes.md,
/// "Fetches that wait, and a bound that holds"). Shorter gave nothing more.
pub const FETCH_QUEUE_BACKOFF_MS: u32 = 10;

/// The replication of every topic the pipeline (and its tools) create: the
/// broker's `default.replication.factor` (replication factor -1 in
/// CreateTopics), so one configuration serves a single node (1) and a
/// cluster (3, with `min.insync.replicas=2`; docs/broker.md).
pub const BROKER_DEFAULT_REPLICATION: TopicReplication<'static> = TopicReplication::Fixed(-1);

/// A topic the pipeline creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: u32,
    pub configs: Vec<(&'static str, &'static str)>,
}

impl TopicSpec {
    /// An events topic, stamped with the broker's clock: the processor's
    /// watermark and the command's "will it be counted" check both read that
    /// one clock, which no command host's clock can move.
    pub fn events_named(name: &str, partitions: u32) -> Self {
        TopicSpec {
            name: name.to_owned(),
            partitions,
            configs: vec![("cleanup.policy", "delete"), ("message.timestamp.type", "LogAppendTime")],
        }
    }

    /// An aggregates topic, compacted: only the newest aggregate per key matters.
    pub fn aggregates_named(name: &str, partitions: u32) -> Self {
        TopicSpec { name: name.to_owned(), partitions, configs: vec![("cleanup.policy", "compact")] }
    }

    /// A replies topic: decisions a command instance waits on for seconds at
    /// most, so an hour of them is kept (a retry after that is answered from
    /// the processor's memory of the request id, not from this topic).
    pub fn replies_named(name: &str, partitions: u32) -> Self {
        TopicSpec {
            name: name.to_owned(),
            partitions,
            configs: vec![("cleanup.policy", "delete"), ("retention.ms", "3600000")],
        }
    }
}

/// How long a topic just created may take to show in the broker's metadata.
const TOPIC_VISIBLE_WITHIN: Duration = Duration::from_secs(30);

/// Creates the topics of `specs` (those the calling service uses) if they do
/// not exist and `--create-topics` is on (otherwise does nothing), then waits
/// until the broker's metadata shows every one of them: services starting
/// together create the same topics, and the one whose creation was refused
/// as already done must not read the metadata before the controller
/// published it (a fresh broker answered "unknown topic" for a moment).
/// Idempotent.
///
/// # Errors
/// When the broker cannot be reached or refuses a creation for another
/// reason, or a topic is still not in its metadata after 30 s.
pub async fn ensure_topics(kafka: &KafkaConfig, specs: &[TopicSpec]) -> Result<(), KafkaError> {
    if !kafka.create_topics {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &kafka.brokers).create()?;
    let topics: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|spec| {
            let topic = NewTopic::new(&spec.name, spec.partitions as i32, BROKER_DEFAULT_REPLICATION);
            spec.configs.iter().fold(topic, |t, (k, v)| t.set(k, v))
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&topics, &opts).await? {
        match result {
            Ok(name) => tracing::info!(topic = name, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(KafkaError::AdminOp(code)).inspect_err(|_| {
                    tracing::error!(topic = name, ?code, "could not create topic");
                })
            }
        }
    }
    for spec in specs {
        let visible = || partition_count(kafka, &spec.name);
        let policy = crate::engine::retry::backoff(Duration::from_millis(20), Duration::from_secs(1))
            .with_total_delay(Some(TOPIC_VISIBLE_WITHIN));
        visible
            .retry(policy)
            .when(|e| e.rdkafka_error_code() == Some(RDKafkaErrorCode::UnknownTopicOrPartition))
            .await
            .inspect_err(|e| tracing::error!(topic = spec.name, error = %e, "created topic not in the metadata"))?;
    }
    Ok(())
}

/// The partition Kafka's default partitioner (Java's, and librdkafka's
/// `murmur2_random`) picks for a non-empty key: positive murmur2 modulo the count.
pub fn partition_for(key: &[u8], partitions: i32) -> i32 {
    let hash = murmur2::murmur2(key, murmur2::KAFKA_SEED) & 0x7fff_ffff;
    (hash % partitions.max(1) as u32) as i32
}

/// True for errors after which a producer must not be used again.
///
/// Fencing is treated as fatal even where librdkafka reports it as
/// retriable: a fenced producer is a zombie.
pub fn is_fatal(err: &KafkaError) -> bool {
    matches!(
        err.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::Fatal
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::InvalidProducerIdMapping
        )
    )
}

/// True when a transactional producer was fenced by a newer one with the same
/// `transactional.id`: it must be dropped, and its partition given up.
pub fn is_fenced(err: &KafkaError) -> bool {
    matches!(
        err.rdkafka_error_code(),
        Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch)
    )
}

/// The number of partitions of `topic`, from the broker's metadata.
///
/// # Errors
/// When the broker does not answer or does not know the topic.
pub async fn partition_count(kafka: &KafkaConfig, topic: &str) -> Result<i32, KafkaError> {
    let consumer: rdkafka::consumer::BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", &kafka.brokers).create()?;
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let md = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        match md.topics().first() {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(t.partitions().len() as i32),
            _ => Err(KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopicOrPartition)),
        }
    })
    .await
    .expect("metadata task does not panic")
}

/// A stored position does not lie within the partition's log.
#[derive(Debug, thiserror::Error)]
pub enum PositionOutsideLog {
    /// The topic was deleted and recreated (or lost data) behind the store's back.
    #[error(
        "stored position {stored} of {topic}[{partition}] is beyond the end of the log ({end}): the topic was recreated \
         or lost data since the state was written; for a development stack, `make reset` starts over"
    )]
    BeyondEnd { topic: String, partition: i32, stored: i64, end: i64 },
    /// Retention deleted records that were never applied: resuming would skip them.
    #[error(
        "stored position {stored} of {topic}[{partition}] is below the start of the log ({start}): records \
         {stored}..{start} were deleted by retention before they were applied; refusing to skip them"
    )]
    BelowStart { topic: String, partition: i32, stored: i64, start: i64 },
}

/// Checks a stored position against the partition's low and high watermarks.
/// A broker that does not answer is not an error here (the check is skipped).
///
/// # Errors
/// [`PositionOutsideLog`] when `stored` is past the end of the log, or below
/// its start (records would be skipped silently).
pub async fn check_position<C>(
    consumer: std::sync::Arc<C>,
    topic: &str,
    partition: i32,
    stored: i64,
) -> Result<(), PositionOutsideLog>
where
    C: Consumer + Send + Sync + 'static,
{
    let t = topic.to_owned();
    let marks = tokio::task::spawn_blocking(move || consumer.fetch_watermarks(&t, partition, Duration::from_secs(5)))
        .await
        .ok()
        .and_then(Result::ok);
    let topic = topic.to_owned();
    match marks {
        Some((_, end)) if stored > end => Err(PositionOutsideLog::BeyondEnd { topic, partition, stored, end }),
        Some((start, _)) if stored < start => {
            metrics::counter!("analytics_position_below_log_start_total", "topic" => topic.clone()).increment(1);
            Err(PositionOutsideLog::BelowStart { topic, partition, stored, start })
        }
        Some(_) => Ok(()),
        None => {
            tracing::warn!(topic, partition, "could not read the partition's bounds; position not checked");
            Ok(())
        }
    }
}

/// Stops consuming `partition` at the undecodable record at `offset` and
/// raises the alarm: an error log naming the record, and `gauge{topic, partition}`
/// set to 1. Used instead of skipping the record, which could lose an
/// accepted event or an hour's newest counts for good.
pub fn stall_partition<C: Consumer>(
    consumer: &C,
    topic: &str,
    partition: i32,
    offset: i64,
    error: Option<String>,
    gauge: &'static str,
) {
    let error = error.unwrap_or_else(|| "no value".to_owned());
    tracing::error!(
        topic,
        partition,
        offset,
        error,
        "undecodable record: partition stopped at this record; deploy a reader that knows it, then restart"
    );
    metrics::gauge!(gauge, "topic" => topic.to_owned(), "partition" => partition.to_string()).set(1.0);
    let mut stop = rdkafka::TopicPartitionList::new();
    stop.add_partition(topic, partition);
    if let Err(e) = consumer.pause(&stop) {
        tracing::warn!(partition, error = %e, "pausing the partition failed; its records are ignored");
    }
}

/// Sets `gauge` (labels `topic`, `partition`) to each partition's lag: its
/// high watermark less `positions`' next offset (what the caller has applied).
///
/// `settled`: the caller holds nothing it read and has not applied, so the
/// consumer's own position is where it stands. That position is librdkafka's,
/// which steps over transaction markers (never delivered): without it a
/// read_committed reader of a transactional topic stays one behind its last
/// commit marker for ever, and a lag of 0 is never seen (the materializer's, 1
/// per partition whose last write came in a transaction). Read here, before the
/// caller reads on; the watermarks, a round trip each, on a blocking thread.
pub fn record_lag<C>(
    consumer: std::sync::Arc<C>,
    topic: &str,
    positions: Vec<(i32, i64)>,
    settled: bool,
    gauge: &'static str,
) where
    C: Consumer + Send + Sync + 'static,
{
    let read = if settled { consumer.position().ok() } else { None };
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        for (p, next) in positions {
            let at = read
                .as_ref()
                .and_then(|tpl| tpl.find_partition(&topic, p))
                .and_then(|e| match e.offset() {
                    rdkafka::Offset::Offset(o) => Some(o.max(next)),
                    _ => None,
                })
                .unwrap_or(next);
            if let Ok((_, high)) = consumer.fetch_watermarks(&topic, p, Duration::from_secs(1)) {
                metrics::gauge!(gauge, "topic" => topic.clone(), "partition" => p.to_string())
                    .set((high - at).max(0) as f64);
            }
        }
    });
}

/// An assignment of partitions, each at an explicit starting offset.
///
/// # Errors
/// When librdkafka refuses the list (an invalid offset).
pub fn assignment(
    topic: &str,
    positions: impl IntoIterator<Item = (i32, rdkafka::Offset)>,
) -> Result<rdkafka::TopicPartitionList, KafkaError> {
    let mut tpl = rdkafka::TopicPartitionList::new();
    for (p, offset) in positions {
        tpl.add_partition_offset(topic, p, offset)?;
    }
    Ok(tpl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_java_client() {
        // Kafka's own test vectors (clients UtilsTest), as signed Java ints.
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            (b"abc", 479_470_107),
        ];
        for (key, java) in cases {
            assert_eq!(murmur2::murmur2(key, murmur2::KAFKA_SEED) as i32, java, "{}", String::from_utf8_lossy(key));
            assert_eq!(partition_for(key, 7), (java & 0x7fff_ffff) % 7);
        }
    }

    #[test]
    fn a_linger_below_a_millisecond_reaches_librdkafka_as_a_fraction() {
        let kafka = KafkaConfig::new("127.0.0.1:1", false);
        for (linger, ms) in
            [(Duration::from_micros(500), "0.5"), (Duration::ZERO, "0"), (Duration::from_millis(2), "2")]
        {
            let tuning = ProducerTuning { linger, delivery_timeout: Duration::from_secs(1), queue_max_messages: 10 };
            let config = producer_config(&kafka, "test", tuning);
            assert_eq!(config.get("linger.ms"), Some(ms));
            // librdkafka parses it (a property it rejected would fail the creation).
            let created: Result<rdkafka::producer::BaseProducer, _> = config.create();
            assert!(created.is_ok(), "{linger:?}: {:?}", created.err());
        }
    }
}
