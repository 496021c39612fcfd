//! What a claim re-sends, against the real broker and PostgreSQL: exactly
//! the records a former owner committed to the state store but may not have
//! got into the log, and nothing it did get there.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use analytics::processor::Analytics;
use analytics::wire::decode_hour_aggregate;
use analytics::{ClickEvent, EventKind, HourStart, UserId};
use common::engine::config::KafkaConfig;
use common::engine::kafka::TopicSpec;
use common::engine::progress::{decode_progress, is_progress_key};
use common::test_util::{delete_topics, drop_schema, isolated, unique_suffix, TestKafka};
use processor::engine::emitter::{AggregateEmitter, EmitError};
use processor::engine::partition::{checkpoint_partition, claim_partition};
use processor::engine::state_store::StateStore;
use processor::engine::{ProcessorError, ProcessorSettings};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

const HOUR: i64 = 3_600_000;
const H: i64 = 1_900_000_000_000 / HOUR * HOUR;
const RETENTION: i64 = 8 * 24 * HOUR;
const WORKLOAD: Analytics = Analytics { retention_ms: RETENTION };

fn click(at: i64, user: u64) -> ClickEvent {
    ClickEvent {
        timestamp_ms: at,
        user: UserId::parse(&format!("user-{user}")).unwrap(),
        kind: EventKind::Click,
        accepted_at_ms: at,
        id: None,
    }
}

fn settings(kafka: &TestKafka, suffix: &str) -> ProcessorSettings {
    ProcessorSettings {
        kafka: KafkaConfig::new(kafka.brokers.clone(), true),
        events_topic: kafka.events_topic.clone(),
        aggregates_topic: kafka.aggregates_topic.clone(),
        replies_topic: None,
        aggregates_partitions: kafka.aggregates_partitions.get() as i32,
        group_id: format!("test-processor-{suffix}"),
        checkpoint_interval: Duration::from_millis(50),
        emit_bytes_per_sec: 0,
        delivery_timeout: Duration::from_secs(10),
        replies_linger: Duration::from_millis(1),
        retention_ms: RETENTION,
        partitions: kafka.events_partitions.get() as i32,
    }
}

/// Every committed record of `topic` in log order per partition, up to the
/// progress records of `next_offset` on every partition: (key, payload).
fn read_until_progress(kafka: &TestKafka, topic: &str, partitions: i32, next_offset: i64) -> Vec<(String, Vec<u8>)> {
    let consumer: BaseConsumer =
        common::engine::kafka::consumer_config(&kafka.broker(), &format!("reader-{}", unique_suffix()), "test")
            .create()
            .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let (mut records, mut done) = (Vec::new(), std::collections::BTreeSet::new());
    let started = Instant::now();
    while done.len() < partitions as usize {
        assert!(started.elapsed() < Duration::from_secs(30), "no progress {next_offset} on every partition");
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else { continue };
        let msg = msg.unwrap();
        if is_progress_key(msg.key()) {
            if decode_progress(msg.payload().unwrap()).unwrap().next_offset >= next_offset {
                done.insert(msg.partition());
            }
            continue;
        }
        records.push((String::from_utf8(msg.key().unwrap().to_vec()).unwrap(), msg.payload().unwrap().to_vec()));
    }
    records
}

#[tokio::test]
async fn a_closed_hours_final_counts_are_re_sent_when_their_emit_never_committed() {
    let suffix = unique_suffix();
    let (kafka, _, pg) = isolated(&suffix);
    let pool = common::engine::pg::pool(&pg).unwrap();
    common::engine::pg::migrate(&pool, &pg, &platform::processor().migrations()).await.unwrap();
    common::engine::kafka::ensure_topics(
        &kafka.broker(),
        &[TopicSpec::aggregates_named(&kafka.aggregates_topic, kafka.aggregates_partitions.get())],
    )
    .await
    .unwrap();
    let settings = settings(&kafka, &suffix);
    let emitter = AggregateEmitter::new(&settings.kafka, &settings, settings.delivery_timeout).unwrap();
    let store = StateStore::new(pool.clone(), kafka.events_topic.clone());

    // Apply to H and checkpoint (stored and emitted).
    let mut a = claim_partition(&WORKLOAD, &store, &emitter, 0, RETENTION).await.unwrap();
    a.apply(&WORKLOAD, 0, H, click(H, 1)).unwrap();
    checkpoint_partition(&WORKLOAD, &store, 0, &mut a).await.unwrap();
    // A second user in H, then a record whose watermark closes H.
    a.apply(&WORKLOAD, 1, H + 10, click(H + 10, 2)).unwrap();
    let closes = H + HOUR + RETENTION;
    a.apply(&WORKLOAD, 2, closes, click(closes, 3)).unwrap();
    // The next checkpoint's state commits, its Kafka transaction does not
    // (the producer is fenced, as by a newer owner's producer or a kill -9).
    let _fencer = emitter.open(0).await.unwrap();
    match checkpoint_partition(&WORKLOAD, &store, 0, &mut a).await {
        // Fenced, or the queue purged by the fence: either way nothing of it is committed.
        Err(ProcessorError::Emit(EmitError::Fenced(0) | EmitError::Kafka { partition: 0, .. })) => {}
        other => panic!("expected the emit to fail, got {other:?}"),
    }
    let stored: i64 = pool
        .get()
        .await
        .unwrap()
        .query_one("SELECT count(*) AS hours FROM processor_hours WHERE hour_start_ms = $1", &[&H])
        .await
        .unwrap()
        .get("hours");
    assert_eq!(stored, 0, "the state store committed H's close");

    // Claimed again: the re-send holds H with both users.
    let b = claim_partition(&WORKLOAD, &store, &emitter, 0, RETENTION).await.unwrap();
    assert_eq!(b.position().next_offset, 3);
    let records = read_until_progress(&kafka, &kafka.aggregates_topic, 2, 3);
    let newest: HashMap<String, Vec<u8>> = records.into_iter().collect();
    let h = decode_hour_aggregate(&newest[&format!("{H}:0")]).unwrap();
    assert_eq!(h.hour, HourStart::of(H));
    assert_eq!(h.counts.unique_users, 2, "H's final counts reached the log");
    assert_eq!(h.counts.clicks, 2);
    // The hour still open was kept as a key alone and rendered from the restored state.
    let open = decode_hour_aggregate(&newest[&format!("{}:0", HourStart::of(closes).start_ms())]).unwrap();
    assert_eq!((open.counts.unique_users, open.input_offset), (1, 3));
    drop_schema(&pg).await;
    delete_topics(&kafka).await;
}

/// Restores `held` keys of one increments partition (as a long history
/// leaves them), then: a checkpoint that reaches the log, one whose Kafka
/// transaction never commits, and a claim. The claim must re-send only the
/// failed checkpoint's keys, not every key held, and quickly.
async fn claim_with_many_keys_re_sends_only_what_may_be_missing(held: i64) {
    use increments::processor::Increments;
    use increments::wire::decode_increment_sum;
    use increments::{IncrementEvent, IncrementKey, IncrementValue};

    let suffix = unique_suffix();
    let (kafka, _, pg) = isolated(&suffix);
    let pool = common::engine::pg::pool(&pg).unwrap();
    common::engine::pg::migrate(&pool, &pg, &platform::processor().migrations()).await.unwrap();
    let sums_topic = kafka.increments_sums_topic.clone();
    common::engine::kafka::ensure_topics(&kafka.broker(), &[TopicSpec::aggregates_named(&sums_topic, 2)])
        .await
        .unwrap();
    let settings = ProcessorSettings {
        events_topic: kafka.increments_events_topic.clone(),
        aggregates_topic: sums_topic.clone(),
        aggregates_partitions: 2,
        ..settings(&kafka, &suffix)
    };
    let emitter = AggregateEmitter::new(&settings.kafka, &settings, settings.delivery_timeout).unwrap();
    let store = StateStore::new(pool.clone(), kafka.increments_events_topic.clone());
    let loading = Instant::now();
    let client = pool.get().await.unwrap();
    // In slices: each statement stays well within the pool's statement timeout (5 s), on a busy machine too.
    for from in (1..=held).step_by(50_000) {
        let to = (from + 49_999).min(held);
        client
            .execute(
                "INSERT INTO processor_increment_sums (topic, partition, key, sum)
                 SELECT $1, 0, md5(i::text)::uuid, i FROM generate_series($2::bigint, $3::bigint) AS i",
                &[&kafka.increments_events_topic, &from, &to],
            )
            .await
            .unwrap();
    }
    drop(client);
    eprintln!("stored {held} keys in {:?}", loading.elapsed());

    let key = |n: u128| IncrementKey::from_uuid(uuid::Uuid::from_u128(n));
    let inc = |k: u128, value: i64| IncrementEvent {
        key: key(k),
        value: IncrementValue::new(value).unwrap(),
        accepted_at_ms: H,
        id: None,
    };
    let claiming = Instant::now();
    let mut a = claim_partition(&Increments, &store, &emitter, 0, RETENTION).await.unwrap();
    eprintln!("first claim of {held} keys: {:?}", claiming.elapsed());
    assert_eq!(a.state().len() as i64, held);
    for (offset, k) in [(0, 1), (1, 2)] {
        a.apply(&Increments, offset, H, inc(k, 5)).unwrap();
    }
    checkpoint_partition(&Increments, &store, 0, &mut a).await.unwrap();
    for (offset, k) in [(2, 2), (3, 3), (4, 4)] {
        a.apply(&Increments, offset, H, inc(k, 7)).unwrap();
    }
    let _fencer = emitter.open(0).await.unwrap();
    assert!(checkpoint_partition(&Increments, &store, 0, &mut a).await.is_err(), "the emit is fenced");

    let claiming = Instant::now();
    let b = claim_partition(&Increments, &store, &emitter, 0, RETENTION).await.unwrap();
    let claimed_in = claiming.elapsed();
    eprintln!("claim of {held} keys after a failed emit: {claimed_in:?}");
    assert_eq!(b.position().next_offset, 5);
    let records = read_until_progress(&kafka, &sums_topic, 2, 5);
    let sums: Vec<(String, i128)> =
        records.iter().map(|(k, v)| (k.clone(), decode_increment_sum(v).unwrap().sum)).collect();
    // The first checkpoint's two keys, then the failed one's three: nothing restored besides.
    assert_eq!(sums.len(), 5, "records on the sums topic: {}", sums.len());
    let newest: HashMap<String, i128> = sums.into_iter().collect();
    let want: HashMap<String, i128> =
        [(key(1), 5), (key(2), 12), (key(3), 7), (key(4), 7)].map(|(k, s)| (k.to_string(), s)).into();
    assert_eq!(newest, want);
    assert!(claimed_in < Duration::from_secs(60), "claim took {claimed_in:?}");
    drop_schema(&pg).await;
    delete_topics(&kafka).await;
}

#[tokio::test]
async fn a_claim_with_200k_keys_re_sends_only_what_may_be_missing() {
    claim_with_many_keys_re_sends_only_what_may_be_missing(200_000).await;
}

/// The size; slow in a debug build: run with
/// `cargo test --release -p processor --test claim_resend -- --ignored`.
#[tokio::test]
#[ignore = "1.5M keys: run in release"]
async fn a_claim_with_1_5m_keys_re_sends_only_what_may_be_missing() {
    claim_with_many_keys_re_sends_only_what_may_be_missing(1_500_000).await;
}
