//! The command API against the real broker: what is accepted lands on the
//! events topic exactly once, keyed and partitioned like a Java client would;
//! what is refused gets a 4xx with a reason and leaves no trace.

use std::time::Duration;

use analytics::{ClickEvent, EventKind};
use command::Registered;
use command::{CommandApp, Config};
use common::test_util::{http, http_raw, isolated, unique_suffix};
use hyper::{Method, Request, StatusCode};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

const NOW: i64 = 1_900_000_000_000;

fn fixed_clock() -> i64 {
    NOW
}

/// A command's config, its workloads and the suffix its topics are named after.
type Setup = (Config, Vec<Box<dyn Registered>>, String);

fn config(extra: &[&str]) -> Setup {
    let suffix = unique_suffix();
    let (kafka, _, _) = isolated(&suffix);
    let mut args = vec!["command".to_owned()];
    if !extra.contains(&"--kafka-brokers") {
        args.extend(["--kafka-brokers".into(), kafka.brokers]);
    }
    args.extend([
        "--events-topic".into(),
        kafka.events_topic,
        "--increments-events-topic".into(),
        kafka.increments_events_topic,
        "--events-partitions".into(),
        "3".into(),
        // The deployment settings these tests agree on (default horizon, one row per test topic).
        "--pg-schema".into(),
        "test_command".into(),
    ]);
    // Every other workload's topics of this test's own, and its listeners on ports of their own.
    args.extend(platform::isolation::command_args(&suffix));
    args.extend(extra.iter().map(|s| s.to_string()));
    let (cfg, workloads) = platform::parse::command(args);
    (cfg, workloads, suffix)
}

/// Deletes the test's topics.
async fn cleanup((cfg, _, suffix): &Setup) {
    let (mut kafka, _, _) = isolated(suffix);
    kafka.brokers.clone_from(&cfg.kafka.brokers);
    common::test_util::delete_topics(&kafka).await;
    common::test_util::delete_topic_names(&kafka.brokers, &platform::isolation::topics(suffix)).await;
}

fn empty() -> http_body_util::Empty<hyper::body::Bytes> {
    http_body_util::Empty::new()
}

async fn app((cfg, workloads, _): &Setup) -> CommandApp {
    command::build(cfg, workloads, common::engine::telemetry::prometheus(), fixed_clock)
        .await
        .expect("building the command app")
}

async fn status_and_body(app: &CommandApp, method: Method, uri: &str) -> (StatusCode, String) {
    use http_body_util::BodyExt;
    let req = Request::builder().method(method).uri(uri).body(empty()).expect("a valid request");
    let resp = app.handle(req).await;
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("full body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Every record on the topic: (partition, key, event).
fn read_topic(brokers: &str, topic: &str, partitions: i32) -> Vec<(i32, String, ClickEvent)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-{}", unique_suffix()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).expect("valid offset");
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let mut idle = 0;
    while idle < 20 {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                idle = 0;
                let key = String::from_utf8(m.key().expect("keyed").to_vec()).expect("utf-8 key");
                let event = analytics::wire::decode_event(m.payload().expect("payload")).expect("an Avro event");
                out.push((m.partition(), key, event));
            }
            _ => idle += 1,
        }
    }
    out
}

/// Kafka's Java `murmur2`, the hash behind its default partitioner.
fn java_murmur2(data: &[u8]) -> i32 {
    let (seed, m, r) = (0x9747_b28c_u32, 0x5bd1_e995_u32, 24);
    let len = data.len();
    let mut h = seed ^ len as u32;
    for chunk in data.chunks_exact(4) {
        let mut k = u32::from_le_bytes(chunk.try_into().expect("4 bytes"));
        k = k.wrapping_mul(m);
        k ^= k >> r;
        k = k.wrapping_mul(m);
        h = h.wrapping_mul(m);
        h ^= k;
    }
    let tail = &data[len & !3..];
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(m);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(m);
    h ^= h >> 15;
    h as i32
}

fn java_partition(key: &str, partitions: i32) -> i32 {
    (java_murmur2(key.as_bytes()) & 0x7fff_ffff) % partitions
}

#[tokio::test]
async fn accepted_events_land_once_keyed_by_user_on_the_java_partition() {
    let cfg = config(&[]);
    let app = app(&cfg).await;
    let users = ["alice", "bob", "carol", "dave", "名前", "user with spaces", "x"];
    let mut sent = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let kind = if i % 2 == 0 { "click" } else { "event=impression" };
        let ts = NOW - (i as i64) * 3_600_000;
        let encoded: String = user.bytes().map(|b| format!("%{b:02X}")).collect();
        let (status, body) =
            status_and_body(&app, Method::POST, &format!("/analytics?timestamp={ts}&user={encoded}&{kind}")).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        assert!(body.is_empty());
        sent.push((user.to_string(), ts, if i % 2 == 0 { EventKind::Click } else { EventKind::Impression }));
    }
    let records = read_topic(&cfg.0.kafka.brokers, &cfg.1[0].topics().events, 3);
    assert_eq!(records.len(), sent.len(), "each accepted event exactly once");
    for (user, ts, kind) in sent {
        let (partition, key, event) = records.iter().find(|(_, k, _)| *k == user).expect("the event is on the topic");
        assert_eq!(key, &user);
        assert_eq!((event.timestamp_ms, event.kind, event.accepted_at_ms), (ts, kind, NOW));
        assert_eq!(*partition, java_partition(&user, 3), "murmur2 partitioning agrees with Java clients for {user}");
    }
    cleanup(&cfg).await;
}

#[tokio::test]
async fn malformed_requests_get_a_4xx_with_a_reason_and_record_nothing() {
    let cfg = config(&[]);
    let app = app(&cfg).await;
    let long_user = "u".repeat(257);
    let huge_query = format!("/analytics?timestamp={NOW}&user=a&click&pad={}", "p".repeat(3000));
    let cases: Vec<(Method, String, u16)> = vec![
        (Method::POST, "/analytics".into(), 400),
        (Method::POST, "/analytics?".into(), 400),
        (Method::POST, "/analytics?user=a&click".into(), 400),
        (Method::POST, "/analytics?timestamp=&user=a&click".into(), 400),
        (Method::POST, "/analytics?timestamp=abc&user=a&click".into(), 400),
        (Method::POST, "/analytics?timestamp=1.5&user=a&click".into(), 400),
        (Method::POST, format!("/analytics?timestamp={NOW}.0&user=a&click"), 400),
        (Method::POST, "/analytics?timestamp=-1&user=a&click".into(), 400),
        (Method::POST, "/analytics?timestamp=%2D1&user=a&click".into(), 400),
        (Method::POST, "/analytics?timestamp=99999999999999999999999&user=a&click".into(), 400),
        (Method::POST, "/analytics?timestamp=1e12&user=a&click".into(), 400),
        (Method::POST, "/analytics?timestamp=0x1F&user=a&click".into(), 400),
        (Method::POST, format!("/analytics?timestamp={NOW}&timestamp={NOW}&user=a&click"), 400),
        (Method::POST, format!("/analytics?timestamp={NOW}&click"), 400),
        (Method::POST, format!("/analytics?timestamp={NOW}&user=&click"), 400),
        (Method::POST, format!("/analytics?timestamp={NOW}&user&click"), 400),
        (Method::POST, format!("/analytics?timestamp={NOW}&user={long_user}&click"), 400),
        (Method::POST, format!("/analytics?timestamp={NOW}&user=a%00b&click"), 400),
        (Method::POST, format!("/analytics?timestamp={NOW}&user=a%0Ab&click"), 400),
        (Method::POST, format!("/analytics?timestamp={NOW}&user=%FF%FE&click"), 400),
        (Method::POST, format!("/analytics?timestamp={NOW}&user=a%2&click"), 400),
        (Method::POST, format!("/analytics?timestamp={NOW}&user=a%G1&click"), 400),
        (Method::POST, format!("/analytics?timestamp={NOW}&user=a&user=b&click"), 400),
        (Method::POST, format!("/analytics?timestamp={NOW}&user=a"), 400),
        (Method::POST, format!("/analytics?timestamp={NOW}&user=a&click&impression"), 400),
        (Method::POST, format!("/analytics?timestamp={NOW}&user=a&event=click&click"), 400),
        (Method::POST, format!("/analytics?timestamp={NOW}&user=a&event=view"), 400),
        (Method::POST, format!("/analytics?timestamp={NOW}&user=a&event="), 400),
        (Method::POST, format!("/analytics?timestamp={NOW}&user=a&click=1"), 400),
        (Method::POST, format!("/analytics?timestamp={NOW}&user=a&click&click"), 400),
        (Method::POST, format!("/analytics?timestamp={NOW}&user=a&click&debug=1"), 400),
        (Method::POST, format!("/analytics?timestamp={NOW}&user=a&CLICK"), 400),
        (Method::POST, huge_query, 400),
        (Method::POST, format!("/analytics?timestamp={}&user=a&click", NOW - 8 * 86_400_000), 422),
        (Method::POST, format!("/analytics?timestamp={}&user=a&click", NOW + 3_600_000), 422),
        (Method::POST, "/analytics?timestamp=0&user=a&click".into(), 422),
        (Method::GET, format!("/analytics?timestamp={NOW}&user=a&click"), 405),
        (Method::PUT, format!("/analytics?timestamp={NOW}&user=a&click"), 405),
        (Method::DELETE, "/analytics".into(), 405),
        (Method::PATCH, "/analytics".into(), 405),
        (Method::POST, format!("/analytic?timestamp={NOW}&user=a&click"), 404),
        (Method::POST, format!("/analytics/?timestamp={NOW}&user=a&click"), 404),
        (Method::POST, format!("/ANALYTICS?timestamp={NOW}&user=a&click"), 404),
        (Method::POST, "/".into(), 404),
        (Method::POST, "/metrics".into(), 405),
    ];
    assert!(cases.len() >= 40);
    for (method, uri, want) in &cases {
        let (status, body) = status_and_body(&app, method.clone(), uri).await;
        assert_eq!(status.as_u16(), *want, "{method} {uri}: {body}");
        assert!(
            body.ends_with('\n') && body.lines().count() == 1 && body.len() > 5,
            "one-line reason for {uri}: {body:?}"
        );
    }
    // One good event after all the bad ones: it is the only record on the topic.
    let (status, _) = status_and_body(&app, Method::POST, &format!("/analytics?timestamp={NOW}&user=good&click")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let records = read_topic(&cfg.0.kafka.brokers, &cfg.1[0].topics().events, 3);
    assert_eq!(records.iter().map(|(_, k, _)| k.as_str()).collect::<Vec<_>>(), vec!["good"]);
    cleanup(&cfg).await;
}

#[tokio::test]
async fn a_real_listener_serves_and_refuses_oversized_or_broken_requests() {
    let cfg = config(&[]);
    let app = app(&cfg).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let token = common::engine::shutdown::CancellationToken::new();
    let limits = common::engine::http::ServerLimits::default();
    let server = tokio::spawn(command::run(app, listener, limits, token.clone(), Duration::from_secs(2)));

    let (status, body) = http(addr, "POST", &format!("/analytics?timestamp={NOW}&user=listener&click")).await.unwrap();
    assert_eq!(status, 204, "{body}");
    // Huge headers: refused by the server before any handler runs.
    let big = format!("POST /analytics HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n", "b".repeat(64 * 1024));
    let (status, _) = http_raw(addr, &big).await.unwrap();
    assert_eq!(status / 100, 4, "oversized head gets a 4xx, got {status}");
    // Garbage instead of HTTP.
    let (status, _) = http_raw(addr, "NOT HTTP AT ALL\r\n\r\n").await.unwrap();
    assert!(status == 0 || status / 100 == 4, "garbage gets a 4xx or a closed connection, got {status}");
    let (status, body) = http(addr, "GET", "/health").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, metrics) = http(addr, "GET", "/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("analytics_command_events_accepted_total"));

    token.cancel();
    tokio::time::timeout(Duration::from_secs(10), server).await.expect("stops within 10 s").unwrap().unwrap();
    let records = read_topic(&cfg.0.kafka.brokers, &cfg.1[0].topics().events, 3);
    assert_eq!(records.len(), 1);
    cleanup(&cfg).await;
}

#[tokio::test]
async fn an_unreachable_broker_gives_503_with_retry_after_in_bounded_time() {
    let cfg = config(&["--kafka-brokers", "127.0.0.1:1", "--create-topics", "false", "--delivery-timeout", "1s"]);
    let app = app(&cfg).await;
    let started = std::time::Instant::now();
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("/analytics?timestamp={NOW}&user=a&click"))
        .body(empty())
        .unwrap();
    let resp = app.handle(req).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.headers().contains_key(hyper::header::RETRY_AFTER));
    assert!(started.elapsed() < Duration::from_secs(5), "answered in {:?}", started.elapsed());
    let ready = app.handle(Request::builder().uri("/ready").body(empty()).unwrap()).await;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE, "not ready without a broker");
}

#[tokio::test]
async fn a_full_producer_queue_answers_503_at_once_instead_of_queueing_forever() {
    // A queue of one message and a broker that never answers: the second request finds it full.
    let cfg = config(&[
        "--kafka-brokers",
        "127.0.0.1:1",
        "--create-topics",
        "false",
        "--delivery-timeout",
        "3s",
        "--queue-max-messages",
        "1",
        "--producers",
        "1",
    ]);
    let app = app(&cfg).await;
    let first = {
        let app = app.clone();
        tokio::spawn(async move {
            let req = Request::builder()
                .method(Method::POST)
                .uri(format!("/analytics?timestamp={NOW}&user=a&click"))
                .body(empty())
                .unwrap();
            app.handle(req).await.status()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let (status, body) = status_and_body(&app, Method::POST, &format!("/analytics?timestamp={NOW}&user=b&click")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("queue is full"), "{body}");
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(first.await.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
}
