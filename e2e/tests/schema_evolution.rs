//! Avro schema evolution end to end (issue item "Avro evolution loses data"):
//! records written with every schema version are counted, and a record no
//! version can read stops its partition instead of being skipped. Records
//! are written straight to the events topic, as an older (or newer) release
//! of the command would, next to events posted to the running command.

use std::net::SocketAddr;
use std::time::Duration;

use analytics::{ClickEvent, EventKind, HourStart, UserId};
use common::test_util::{http, wait_until};
use e2e::{assert_counts_converge, post_all, Event, Expected, Kind, Service, Stack};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

const HOUR: i64 = 3_600_000;
const CONVERGE: Duration = Duration::from_secs(90);

/// The event as the command would have written it (`id` only in v2 records).
fn click_event(e: &Event, id: Option<String>) -> ClickEvent {
    ClickEvent {
        timestamp_ms: e.timestamp_ms,
        user: UserId::parse(&e.user).expect("a valid user id"),
        kind: match e.kind {
            Kind::Click => EventKind::Click,
            Kind::Impression => EventKind::Impression,
        },
        accepted_at_ms: common::now_ms(),
        id,
    }
}

fn producer(stack: &Stack) -> FutureProducer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .expect("a producer")
}

fn partitions(stack: &Stack) -> i32 {
    stack.kafka.events_partitions.get() as i32
}

/// Writes one record keyed by `user` to the partition Kafka's default
/// partitioner picks for it (set explicitly); returns its offset.
async fn produce(stack: &Stack, producer: &FutureProducer, user: &str, payload: &[u8]) -> i64 {
    let partition = common::engine::kafka::partition_for(user.as_bytes(), partitions(stack));
    let record = FutureRecord::to(&stack.kafka.events_topic).key(user).payload(payload).partition(partition);
    let delivery = producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).expect("producing");
    assert_eq!(delivery.partition, partition);
    delivery.offset
}

/// `count` user ids whose records go to `partition`.
fn users_in(partition: i32, partitions: i32, prefix: &str, count: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .filter(|u| common::engine::kafka::partition_for(u.as_bytes(), partitions) == partition)
        .take(count)
        .collect()
}

fn expected_of<'a>(events: impl IntoIterator<Item = &'a Event>) -> Expected {
    let mut exp = Expected::default();
    events.into_iter().for_each(|e| exp.add(e));
    exp
}

/// The value of `analytics_processor_partition_stalled{topic=..., partition="N"}`, if exported.
async fn stalled_gauge(processor: SocketAddr, partition: i32) -> Option<f64> {
    let (status, metrics) = http(processor, "GET", "/metrics").await.ok()?;
    assert_eq!(status, 200, "{metrics}");
    let label = format!("partition=\"{partition}\"}} ");
    metrics
        .lines()
        .filter(|l| l.starts_with("analytics_processor_partition_stalled{"))
        .find_map(|l| l.split_once(&label).map(|(_, v)| v))
        .and_then(|v| v.trim().parse().ok())
}

async fn wait_for_gauge(processor: SocketAddr, partition: i32, value: f64) {
    let what = format!("analytics_processor_partition_stalled{{partition=\"{partition}\"}} to be {value}");
    wait_until(&what, Duration::from_secs(30), || async {
        (stalled_gauge(processor, partition).await == Some(value)).then_some(())
    })
    .await;
}

/// The first 10 bytes (single-object header) of every record on the events topic.
async fn headers_on_the_events_topic(stack: &Stack) -> Vec<Vec<u8>> {
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka.brokers)
        .set("group.id", format!("e2e-headers-{}", stack.pg.schema))
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer");
    let mut assignment = rdkafka::TopicPartitionList::new();
    let mut remaining = 0;
    for p in 0..partitions(stack) {
        let (low, high) = consumer
            .fetch_watermarks(&stack.kafka.events_topic, p, Duration::from_secs(10))
            .expect("the partition's watermarks");
        remaining += high - low;
        assignment.add_partition_offset(&stack.kafka.events_topic, p, rdkafka::Offset::Beginning).expect("assign");
    }
    consumer.assign(&assignment).expect("assigning");
    let mut headers = Vec::new();
    while remaining > 0 {
        let msg = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
            .await
            .expect("every record of the events topic within 20 s")
            .expect("a record");
        headers.push(msg.payload().map(|p| p[..p.len().min(10)].to_vec()).unwrap_or_default());
        remaining -= 1;
    }
    headers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_written_with_every_schema_version_are_all_counted() {
    let mut stack = Stack::new();
    stack.start_all().await;
    let (command, query) = (stack.addr("command"), stack.addr("query"));
    let now = common::now_ms();
    // Past hours, well inside the horizon: every record is counted whenever the test runs.
    let hours = [HourStart::of(now - 3 * HOUR), HourStart::of(now - 2 * HOUR)];
    let event = |i: i64, user: String| Event {
        timestamp_ms: hours[(i % 2) as usize].start_ms() + i * 37_000,
        user,
        kind: if i % 3 == 0 { Kind::Click } else { Kind::Impression },
    };
    // Users shared by the versions: one user's v1 and v2 records are one user.
    let user = |i: i64| format!("evolving-user-{}", i % 17);
    let v1: Vec<Event> = (0..60).map(|i| event(i, user(i))).collect();
    let posted: Vec<Event> = (60..100).map(|i| event(i, user(i))).collect();
    let v2_with_id: Vec<Event> = (100..120).map(|i| event(i, user(i))).collect();
    let producer = producer(&stack);

    // An older release's records first, then the current command's, then both
    // again: every partition holds both versions, interleaved.
    let (v1_early, v1_late) = v1.split_at(30);
    for e in v1_early {
        produce(&stack, &producer, &e.user, &analytics::wire::encode_event_v1(&click_event(e, None))).await;
    }
    post_all(command, &posted, 8).await;
    for e in v1_late {
        produce(&stack, &producer, &e.user, &analytics::wire::encode_event_v1(&click_event(e, None))).await;
    }
    for (i, e) in v2_with_id.iter().enumerate() {
        let payload = analytics::wire::encode_event(&click_event(e, Some(format!("evolution-{i}"))));
        produce(&stack, &producer, &e.user, &payload).await;
    }

    let all = v1.iter().chain(&posted).chain(&v2_with_id);
    assert_counts_converge(query, &expected_of(all), CONVERGE).await;

    // The topic really holds both versions: v1 headers for the v1 records, v2 for the others.
    let header = |bytes: Vec<u8>| bytes[..10].to_vec();
    let v1_header = header(analytics::wire::encode_event_v1(&click_event(&v1[0], None)));
    let v2_header = header(analytics::wire::encode_event(&click_event(&v1[0], None)));
    assert_ne!(v1_header, v2_header);
    let headers = headers_on_the_events_topic(&stack).await;
    assert_eq!(headers.iter().filter(|h| **h == v1_header).count(), v1.len());
    assert_eq!(headers.iter().filter(|h| **h == v2_header).count(), posted.len() + v2_with_id.len());
    assert_eq!(headers.len(), v1.len() + posted.len() + v2_with_id.len());

    // Nothing stalled.
    for p in 0..partitions(&stack) {
        assert_ne!(stalled_gauge(stack.addr("processor"), p).await, Some(1.0), "partition {p} stalled");
    }
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_undecodable_record_stalls_its_partition_and_only_that_one() {
    let mut stack = Stack::new();
    stack.start_all().await;
    let (command, query) = (stack.addr("command"), stack.addr("query"));
    let n = partitions(&stack);
    assert!(n >= 3, "two partitions to stall and one to keep going");
    // Partition 0 gets a record of an unknown schema version, partition 1 plain
    // garbage, partition 2 nothing wrong.
    let (unknown, garbage, healthy) = (0, 1, 2);
    let users: Vec<Vec<String>> = (0..n).map(|p| users_in(p, n, &format!("stall-{p}"), 6)).collect();
    let hour = HourStart::of(common::now_ms() - 2 * HOUR);
    let event = |user: &str, i: usize| Event {
        timestamp_ms: hour.start_ms() + i as i64 * 1000,
        user: user.to_owned(),
        kind: if i.is_multiple_of(2) { Kind::Click } else { Kind::Impression },
    };
    let producer = producer(&stack);

    // Before: three users of every partition, counted.
    let before: Vec<Event> = users.iter().flat_map(|us| us[..3].iter().enumerate().map(|(i, u)| event(u, i))).collect();
    post_all(command, &before, 8).await;
    assert_counts_converge(query, &expected_of(&before), CONVERGE).await;

    // A record of a schema version this build does not know: a valid v2 body
    // under a fingerprint of no known version (a newer release's record).
    let mut newer = analytics::wire::encode_event(&click_event(&event(&users[unknown][0], 7), None));
    newer[2..10].copy_from_slice(&0x0123_4567_89AB_CDEFu64.to_le_bytes());
    let unknown_offset = produce(&stack, &producer, &users[unknown][0], &newer).await;
    let garbage_offset = produce(&stack, &producer, &users[garbage][0], b"not an avro record").await;
    // After them, in the same partitions: valid records, which must wait.
    let stuck = |p: usize| users[p][3..].iter().enumerate().map(|(i, u)| event(u, 10 + i)).collect::<Vec<_>>();
    let (stuck_unknown, stuck_garbage) = (stuck(unknown), stuck(garbage));
    post_all(command, &stuck_unknown, 4).await;
    post_all(command, &stuck_garbage, 4).await;

    let processor = stack.addr("processor");
    wait_for_gauge(processor, unknown as i32, 1.0).await;
    wait_for_gauge(processor, garbage as i32, 1.0).await;

    // The other partition keeps being counted.
    let moving: Vec<Event> = users[healthy][3..].iter().enumerate().map(|(i, u)| event(u, 20 + i)).collect();
    post_all(command, &moving, 4).await;
    let counted = expected_of(before.iter().chain(&moving));
    assert_counts_converge(query, &counted, CONVERGE).await;
    // ...while the stalled ones stay where they stopped (their later records
    // were written before the healthy partition's, and are still not counted).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_counts_converge(query, &counted, Duration::ZERO).await;
    assert_eq!(stalled_gauge(processor, healthy as i32).await, Some(0.0));
    let log = std::fs::read_to_string(stack.log_dir().join("processor.log")).expect("the processor's log");
    assert!(log.contains("undecodable record: partition stopped at this record"), "{log}");
    assert!(log.contains("unknown schema: fingerprint 0x0123456789abcdef"), "{log}");

    // A restart with the same build does not skip the records either.
    let (ok, _) = stack.terminate("processor");
    assert!(ok, "processor exits cleanly on SIGTERM");
    let processor = stack.start("processor", Service::Processor).await;
    wait_for_gauge(processor, unknown as i32, 1.0).await;
    wait_for_gauge(processor, garbage as i32, 1.0).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_counts_converge(query, &counted, Duration::ZERO).await;

    // The runbook's deliberate skip (docs/operations.md): with the processor
    // stopped, move the unknown record's partition one past it, under its current epoch.
    let (ok, _) = stack.terminate("processor");
    assert!(ok, "processor exits cleanly on SIGTERM");
    let pool = common::engine::pg::pool(&stack.pg).expect("a pool");
    let client = pool.get().await.expect("a PostgreSQL connection");
    let row = client
        .query_one(
            "SELECT next_offset, epoch FROM processor_partitions WHERE topic = $1 AND partition = $2",
            &[&stack.kafka.events_topic, &(unknown as i32)],
        )
        .await
        .expect("the partition's position");
    let (next_offset, epoch): (i64, i64) = (row.get("next_offset"), row.get("epoch"));
    assert_eq!(next_offset, unknown_offset, "the position is the undecodable record");
    let moved = client
        .execute(
            "UPDATE processor_partitions SET next_offset = next_offset + 1, epoch = epoch + 1, updated_at = now()
             WHERE topic = $1 AND partition = $2 AND epoch = $3 AND next_offset = $4",
            &[&stack.kafka.events_topic, &(unknown as i32), &epoch, &unknown_offset],
        )
        .await
        .expect("moving the position");
    assert_eq!(moved, 1);
    let processor = stack.start("processor", Service::Processor).await;

    // That partition's later records are counted now (the skipped one never is);
    // the garbage partition is still stopped at its record.
    let counted = expected_of(before.iter().chain(&moving).chain(&stuck_unknown));
    assert_counts_converge(query, &counted, CONVERGE).await;
    wait_for_gauge(processor, garbage as i32, 1.0).await;
    wait_for_gauge(processor, unknown as i32, 0.0).await;
    let row = client
        .query_one(
            "SELECT next_offset FROM processor_partitions WHERE topic = $1 AND partition = $2",
            &[&stack.kafka.events_topic, &(garbage as i32)],
        )
        .await
        .expect("the partition's position");
    assert_eq!(row.get::<_, i64>("next_offset"), garbage_offset, "still at the garbage record");
    drop(client);
    stack.cleanup().await;
}
