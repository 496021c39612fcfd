//! The edges of exactly-once (issue "Exactly once at the edges"): clocks, the
//! horizon, the partition count and misrouted records. Each test runs the real
//! processor, materializer and query against the real broker, Redis and
//! PostgreSQL; commands with a skewed clock run in process.

use std::net::SocketAddr;
use std::time::Duration;

use analytics::{HourCounts, HourStart};
use common::test_util::http;
use e2e::{free_port, get_counts, wait_for, Service, Stack};

const DAY: i64 = 86_400_000;

fn fast_clock() -> i64 {
    common::now_ms() + DAY
}

fn slow_clock() -> i64 {
    common::now_ms() - DAY - 2 * 3_600_000
}

/// A command service in this process, on the stack's topics and schema, with its own clock.
async fn command_with_clock(stack: &Stack, clock: fn() -> i64) -> SocketAddr {
    let port = free_port();
    let mut args: Vec<String> = [
        "command",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--kafka-brokers",
        &stack.kafka.brokers,
        "--events-topic",
        &stack.kafka.events_topic,
        "--events-partitions",
        &stack.kafka.events_partitions.to_string(),
        "--pg-url",
        &stack.pg.url,
        "--pg-schema",
        &stack.pg.schema,
    ]
    .map(String::from)
    .into();
    args.extend(stack.command_args());
    let (cfg, workloads) = platform::parse::command(args);
    let app =
        command::build(&cfg, &workloads, common::engine::telemetry::prometheus(), clock).await.expect("command app");
    let listener = common::engine::http::bind(cfg.listen).await.expect("binding");
    let limits = common::engine::http::ServerLimits::from_edge(&cfg.edge).expect("limits");
    tokio::spawn(command::run(
        app,
        listener,
        limits,
        common::engine::shutdown::CancellationToken::new(),
        Duration::from_secs(1),
    ));
    cfg.listen
}

async fn post(addr: SocketAddr, ts: i64, user: &str) -> (u16, String) {
    http(addr, "POST", &format!("/analytics?timestamp={ts}&user={user}&click")).await.expect("POST")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fast_command_clock_cannot_close_hours_and_a_slow_one_cannot_2xx_an_uncounted_event() {
    let mut stack = Stack::new();
    // One partition: every event below moves the same watermark.
    stack.kafka.events_partitions = 1.try_into().unwrap();
    stack.start_all().await;
    let (good, query) = (stack.addr("command"), stack.addr("query"));
    let fast = command_with_clock(&stack, fast_clock).await;
    let slow = command_with_clock(&stack, slow_clock).await;

    // A host a day fast accepts an event of "its" current hour. Before the
    // watermark was the broker's, this moved the partition a day ahead.
    let fast_now = fast_clock();
    assert_eq!(post(fast, fast_now, "from-the-future").await.0, 204);
    wait_for(query, fast_now, |c| c.clicks == 1).await;

    // A correct host then accepts an event 6.5 days old: legal, and it must be counted.
    let late = common::now_ms() - 6 * DAY - 12 * 3_600_000;
    assert_eq!(post(good, late, "late-but-legal").await.0, 204);
    wait_for(query, late, |c| c == HourCounts { unique_users: 1, clicks: 1, impressions: 0 }).await;

    // A host a day slow thinks an event 6.9 days old (by its clock) is fine; by the
    // broker's clock its hour closed long ago. It must not get a 2xx.
    let stale = slow_clock() - 6 * DAY - 21 * 3_600_000;
    let (status, body) = post(slow, stale, "closed-on-arrival").await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("after its hour closed"), "{body}");
    // And the processor skips it by the same rule: its hour stays empty.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(get_counts(query, stale).await, Some(HourCounts::default()));
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn services_refuse_to_start_on_another_horizon_or_partition_count() {
    let mut stack = Stack::new();
    stack.start("processor", Service::Processor).await;
    let pool = common::engine::pg::pool(&stack.pg).unwrap();
    let kafka = stack.kafka.clone();

    // A command accepting 14 days back, while the deployment closes hours after 7.
    let horizon = common::engine::horizon::Horizon {
        past: Duration::from_secs(14 * 86_400),
        ..common::engine::horizon::Horizon::default()
    };
    let broker = kafka.broker();
    let err = common::engine::pg::agree_horizon(&pool, "command", &horizon).await.unwrap_err();
    assert!(err.to_string().contains("horizon.past_ms"), "{err}");

    // Partitions added to the events topic behind the deployment's back.
    use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &kafka.brokers).create().unwrap();
    let grown = NewPartitions::new(&kafka.events_topic, kafka.events_partitions.get() as usize + 1);
    admin.create_partitions(&[grown], &AdminOptions::new()).await.unwrap();
    // The controller accepted it; wait until the broker's metadata says so too (it may lag a moment).
    let grown_to = kafka.events_partitions.get() as i32 + 1;
    for _ in 0..100 {
        if common::engine::kafka::partition_count(&broker, &kafka.events_topic).await.ok() == Some(grown_to) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let err =
        common::engine::pg::agree_topic_partitions(&pool, "processor", &broker, &kafka.events_topic).await.unwrap_err();
    assert!(err.to_string().contains(&format!("partitions.{}", kafka.events_topic)), "{err}");
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_in_the_wrong_partition_is_not_counted() {
    let mut stack = Stack::new();
    stack.start_all().await;
    let hour = HourStart::of(common::now_ms() - 2 * 3_600_000);
    let user = "misrouted-user";
    let n = stack.kafka.events_partitions.get() as i32;
    let right = common::engine::kafka::partition_for(user.as_bytes(), n);
    let wrong = (right + 1) % n;
    // Written by a producer that ignores the key's partition.
    let event = analytics::ClickEvent {
        timestamp_ms: hour.start_ms() + 1,
        user: analytics::UserId::parse(user).unwrap(),
        kind: analytics::EventKind::Click,
        accepted_at_ms: common::now_ms(),
        id: None,
    };
    let producer: rdkafka::producer::FutureProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &stack.kafka.brokers).create().unwrap();
    let payload = analytics::wire::encode_event(&event);
    let record =
        rdkafka::producer::FutureRecord::to(&stack.kafka.events_topic).key(user).payload(&payload).partition(wrong);
    producer.send(record, Duration::from_secs(10)).await.unwrap();
    // The same user through the command (its right partition): counted once.
    assert_eq!(post(stack.addr("command"), hour.start_ms() + 2, user).await.0, 204);
    wait_for(stack.addr("query"), hour.start_ms(), |c| c.clicks >= 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        get_counts(stack.addr("query"), hour.start_ms()).await,
        Some(HourCounts { unique_users: 1, clicks: 1, impressions: 0 })
    );
    let (_, metrics) = http(stack.addr("processor"), "GET", "/metrics").await.unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("analytics_processor_events_skipped_total{")
            && l.contains("reason=\"misrouted\"")
            && l.ends_with("} 1")),
        "{metrics}"
    );
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_event_id_sent_three_times_across_processor_kills_counts_once() {
    let mut stack = Stack::new();
    stack.start_all().await;
    let ts = HourStart::of(common::now_ms() - 2 * 3_600_000).start_ms() + 1;
    let (command, query) = (stack.addr("command"), stack.addr("query"));
    let with_id = format!("/analytics?timestamp={ts}&user=retrier&click&id=order-7f3a_1");
    let without_id = format!("/analytics?timestamp={ts}&user=plain&click");

    // A client retrying one event (say after a timeout), with processor crashes in between.
    assert_eq!(http(command, "POST", &with_id).await.unwrap().0, 204);
    wait_for(query, ts, |c| c.clicks == 1).await;
    stack.kill9("processor");
    assert_eq!(http(command, "POST", &with_id).await.unwrap().0, 204);
    stack.start("processor", Service::Processor).await;
    stack.kill9("processor");
    assert_eq!(http(command, "POST", &with_id).await.unwrap().0, 204);
    stack.start("processor", Service::Processor).await;

    // Without an id, nothing changes: two POSTs are two events.
    assert_eq!(http(command, "POST", &without_id).await.unwrap().0, 204);
    assert_eq!(http(command, "POST", &without_id).await.unwrap().0, 204);

    let want = HourCounts { unique_users: 2, clicks: 3, impressions: 0 };
    wait_for(query, ts, |c| c == want).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(get_counts(query, ts).await, Some(want), "and it stays so");

    // A malformed id is refused and changes nothing.
    let (status, body) =
        http(command, "POST", &format!("/analytics?timestamp={ts}&user=x&click&id=a.b")).await.unwrap();
    assert_eq!(status, 400, "{body}");
    stack.cleanup().await;
}
