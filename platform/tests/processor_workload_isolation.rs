//! One workload's failure does not stop the other: the whole processor
//! (`processor::run`) against the real broker and PostgreSQL, with the
//! increments workload unable to claim a partition (its stored position lies
//! beyond the end of the log), while analytics events keep being counted.

use std::time::Duration;

use analytics::wire::encode_event;
use analytics::{ClickEvent, EventKind, UserId};
use common::test_util::{delete_topics, drop_schema, isolated, unique_suffix, wait_until};
use rdkafka::producer::{FutureProducer, FutureRecord};

async fn post_click(producer: &FutureProducer, topic: &str, user: &str) {
    let now = common::now_ms();
    let event = ClickEvent {
        timestamp_ms: now,
        user: UserId::parse(user).unwrap(),
        kind: EventKind::Click,
        accepted_at_ms: now,
        id: None,
    };
    let payload = encode_event(&event);
    producer
        .send(FutureRecord::to(topic).key(user.as_bytes()).payload(&payload), Duration::from_secs(10))
        .await
        .expect("delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_that_cannot_claim_does_not_stop_the_other() {
    let suffix = unique_suffix();
    let (kafka, _, pg) = isolated(&suffix);
    let pool = common::engine::pg::pool(&pg).unwrap();
    common::engine::pg::migrate(&pool, &pg, &platform::processor().migrations()).await.unwrap();
    // Increments partition 0 was checkpointed at an offset its (new, empty) log never reached.
    pool.get()
        .await
        .unwrap()
        .execute(
            "INSERT INTO processor_partitions (topic, partition, epoch, next_offset, watermark_ms) VALUES ($1, 0, 1, 1000, 0)",
            &[&kafka.increments_events_topic],
        )
        .await
        .unwrap();
    use common::engine::kafka::TopicSpec;
    let topics = [
        TopicSpec::events_named(&kafka.events_topic, 3),
        TopicSpec::aggregates_named(&kafka.aggregates_topic, 2),
        TopicSpec::events_named(&kafka.increments_events_topic, 3),
        TopicSpec::aggregates_named(&kafka.increments_sums_topic, 2),
    ];
    common::engine::kafka::ensure_topics(&kafka.broker(), &topics).await.unwrap();
    let brokers = kafka.brokers.clone();
    let args = [
        "processor",
        "--group-id",
        &format!("test-processor-{suffix}"),
        "--kafka-brokers",
        &brokers,
        "--events-topic",
        &kafka.events_topic,
        "--events-partitions",
        "3",
        "--aggregates-topic",
        &kafka.aggregates_topic,
        "--aggregates-partitions",
        "2",
        "--increments-events-topic",
        &kafka.increments_events_topic,
        "--increments-sums-topic",
        &kafka.increments_sums_topic,
        "--member-lease",
        "3s",
        "--pg-url",
        &pg.url,
        "--pg-schema",
        &pg.schema,
    ];
    let (cfg, workloads) = platform::parse::processor(args);
    let metrics = common::engine::telemetry::prometheus();
    let ops = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let token = common::engine::shutdown::CancellationToken::new();
    let stop = token.clone();
    let running = tokio::spawn(async move { processor::run(cfg, &workloads, metrics, ops, stop).await });

    let tuning = common::engine::kafka::ProducerTuning {
        linger: Duration::from_millis(1),
        delivery_timeout: Duration::from_secs(10),
        queue_max_messages: 1000,
    };
    let producer: FutureProducer =
        common::engine::kafka::producer_config(&kafka.broker(), "test", tuning).create().unwrap();
    let clicks = || async {
        let client = pool.get().await.ok()?;
        let row =
            client.query_one("SELECT coalesce(sum(clicks), 0)::bigint AS n FROM processor_hours", &[]).await.ok()?;
        Some(row.get::<_, i64>("n"))
    };
    // Analytics counts, while increments keeps failing its claim of partition 0.
    for (round, user) in ["ann", "bob", "cy"].into_iter().enumerate() {
        post_click(&producer, &kafka.events_topic, user).await;
        let want = round as i64 + 1;
        wait_until("analytics to count the click", Duration::from_secs(30), || async {
            (clicks().await? == want).then_some(())
        })
        .await;
        assert!(!running.is_finished(), "the processor stopped: {:?}", running.await);
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    token.cancel();
    tokio::time::timeout(Duration::from_secs(30), running).await.expect("stops").expect("joins").expect("clean stop");
    drop_schema(&pg).await;
    delete_topics(&kafka).await;
}
