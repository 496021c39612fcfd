//! The increments workload end to end on the real stack: strict input (bad
//! bodies change nothing, not even the log), exact sums beyond `i64`, 404 for
//! unknown keys, ids counted once, and exact sums over 10,000 increments on
//! 1,000 keys.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::test_util::{http, http_body, wait_until};
use e2e::Stack;
use increments::IncrementRow;
use rdkafka::consumer::{BaseConsumer, Consumer};

const JSON: Option<&str> = Some("application/json");

fn key(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

async fn post(command: SocketAddr, path: &str, content_type: Option<&str>, body: &[u8]) -> (u16, String) {
    http_body(command, "POST", path, content_type, body).await.unwrap_or((0, "connection failed".into()))
}

async fn increment(command: SocketAddr, key: &str, value: i64) {
    let body = format!(r#"{{"key":"{key}","value":{value}}}"#);
    let (status, answer) = post(command, "/increment", JSON, body.as_bytes()).await;
    assert_eq!(status, 200, "{body}: {answer}");
}

/// The sum `GET /increment/{key}` answers, `None` on 404.
async fn sum(query: SocketAddr, key: &str) -> Option<i128> {
    let (status, body) = http(query, "GET", &format!("/increment/{key}")).await.expect("query answers");
    match status {
        200 => Some(IncrementRow::from_json(body.as_bytes()).expect("a JSON row").sum),
        404 => None,
        other => panic!("GET /increment/{key}: {other} {body}"),
    }
}

async fn wait_for_sum(query: SocketAddr, key: &str, expected: i128) {
    wait_until(&format!("the sum of {key} to be {expected}"), Duration::from_secs(30), || async {
        (sum(query, key).await == Some(expected)).then_some(())
    })
    .await;
}

/// Records in a topic, over all its partitions (high watermarks).
fn records_in(brokers: &str, topic: &str) -> i64 {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "e2e-watermarks")
        .create()
        .expect("a consumer");
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let partitions = metadata.topics()[0].partitions().len() as i32;
    (0..partitions).map(|p| consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).expect("watermarks").1).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_bodies_are_400_and_never_reach_the_log() {
    let mut stack = Stack::new();
    stack.start("command", e2e::Service::Command).await;
    let command = stack.addr("command");
    let k = key(1);
    let over_limit = format!(r#"{{"key":"{k}","value":1,"pad":"{}"}}"#, "x".repeat(2000));
    let cases: Vec<(Option<&str>, Vec<u8>, &str)> = vec![
        (JSON, b"".to_vec(), "empty"),
        (JSON, b"not json".to_vec(), "not JSON"),
        (JSON, b"[1,2]".to_vec(), "an array"),
        (JSON, b"\"text\"".to_vec(), "a string"),
        (JSON, b"null".to_vec(), "null"),
        (JSON, b"{}".to_vec(), "no fields"),
        (JSON, format!(r#"{{"key":"{k}"}}"#).into_bytes(), "no value"),
        (JSON, br#"{"value":1}"#.to_vec(), "no key"),
        (JSON, format!(r#"{{"key":"{k}","value":1,"extra":2}}"#).into_bytes(), "an extra field"),
        (JSON, format!(r#"{{"key":"{k}","key":"{k}","value":1}}"#).into_bytes(), "a duplicate key"),
        (JSON, format!(r#"{{"key":"{k}","value":1,"value":2}}"#).into_bytes(), "a duplicate value"),
        (JSON, br#"{"key":"not-a-uuid","value":1}"#.to_vec(), "a key that is no UUID"),
        (JSON, br#"{"key":"","value":1}"#.to_vec(), "an empty key"),
        (JSON, br#"{"key":12,"value":1}"#.to_vec(), "a numeric key"),
        (JSON, format!(r#"{{"key":"{}","value":1}}"#, k.replace('-', "")).into_bytes(), "a key without hyphens"),
        (JSON, format!(r#"{{"key":"{k}","value":0}}"#).into_bytes(), "value 0"),
        (JSON, format!(r#"{{"key":"{k}","value":-5}}"#).into_bytes(), "a negative value"),
        (JSON, format!(r#"{{"key":"{k}","value":9223372036854775808}}"#).into_bytes(), "2^63"),
        (JSON, format!(r#"{{"key":"{k}","value":1.0}}"#).into_bytes(), "a float"),
        (JSON, format!(r#"{{"key":"{k}","value":1e3}}"#).into_bytes(), "an exponent"),
        (JSON, format!(r#"{{"key":"{k}","value":"5"}}"#).into_bytes(), "a string value"),
        (JSON, format!(r#"{{"key":"{k}","value":null}}"#).into_bytes(), "a null value"),
        (JSON, format!(r#"{{"key":"{k}","value":true}}"#).into_bytes(), "a boolean value"),
        (JSON, format!(r#"{{"key":"{k}","value":1}} trailing"#).into_bytes(), "trailing data"),
        (JSON, format!(r#"{{"key":"{k}","value":1"#).into_bytes(), "a cut-off object"),
        (JSON, b"\xff\xfe".to_vec(), "not UTF-8"),
        (None, format!(r#"{{"key":"{k}","value":1}}"#).into_bytes(), "no content type"),
        (Some("text/plain"), format!(r#"{{"key":"{k}","value":1}}"#).into_bytes(), "text/plain"),
        (JSON, over_limit.into_bytes(), "a body over the limit"),
    ];
    assert!(cases.len() >= 25);
    for (content_type, body, what) in &cases {
        let (status, answer) = post(command, "/increment", *content_type, body).await;
        assert_eq!(status, 400, "{what}: {answer}");
        assert!(answer.ends_with('\n') && answer.trim_end().lines().count() == 1, "{what}: one line: {answer:?}");
    }
    let (status, answer) =
        post(command, "/increment?id=a%20b", JSON, format!(r#"{{"key":"{k}","value":1}}"#).as_bytes()).await;
    assert_eq!(status, 400, "a bad id: {answer}");
    assert_eq!(records_in(&stack.kafka.brokers, &stack.kafka.increments_events_topic), 0, "nothing reached the log");
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sums_are_exact_beyond_i64_unknown_keys_are_404_and_ids_count_once() {
    let mut stack = Stack::new();
    stack.start_all().await;
    let (command, query) = (stack.addr("command"), stack.addr("query"));
    let big = key(2).to_uppercase(); // any case in, canonical out
    for _ in 0..3 {
        increment(command, &big, i64::MAX).await;
    }
    wait_for_sum(query, &key(2), 3 * i128::from(i64::MAX)).await;
    let (_, body) = http(query, "GET", &format!("/increment/{}", key(2))).await.unwrap();
    assert_eq!(body, format!(r#"{{"key":"{}","value":27670116110564327421}}"#, key(2)));

    // A retried request with its id is counted once.
    for _ in 0..3 {
        let body = format!(r#"{{"key":"{}","value":7}}"#, key(3));
        assert_eq!(post(command, "/increment?id=retry-1", JSON, body.as_bytes()).await.0, 200);
    }
    increment(command, &key(3), 1).await;
    wait_for_sum(query, &key(3), 8).await;

    assert_eq!(sum(query, &key(4)).await, None, "never incremented: 404");
    let (status, _) = http(query, "GET", "/increment/not-a-uuid").await.unwrap();
    assert_eq!(status, 400);

    // PostgreSQL holds the same, readable with SQL.
    let pool = common::engine::pg::pool(&stack.pg).unwrap();
    let row = pool
        .get()
        .await
        .unwrap()
        .query_one("SELECT value::text AS value FROM increments WHERE key = $1::text::uuid", &[&key(2)])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>("value"), "27670116110564327421");
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_increments_on_a_thousand_keys_sum_exactly() {
    use futures::StreamExt;
    let mut stack = Stack::new();
    stack.start_all().await;
    let (command, query) = (stack.addr("command"), stack.addr("query"));
    let mut expected: BTreeMap<String, i128> = BTreeMap::new();
    let increments: Vec<(String, i64)> =
        (0..10_000u64).map(|i| (key(i % 1_000 + 100), (i * 7919 % 1_000_003 + 1) as i64)).collect();
    for (k, v) in &increments {
        *expected.entry(k.clone()).or_default() += i128::from(*v);
    }
    futures::stream::iter(&increments).for_each_concurrent(64, |(k, v)| increment(command, k, *v)).await;
    let pool = common::engine::pg::pool(&stack.pg).unwrap();
    let total: i128 = expected.values().sum();
    wait_until("PostgreSQL to hold every sum", Duration::from_secs(60), || async {
        let row = pool
            .get()
            .await
            .ok()?
            .query_one("SELECT count(*) AS keys, sum(value)::text AS sum FROM increments", &[])
            .await
            .ok()?;
        let (keys, sum): (i64, Option<String>) = (row.get("keys"), row.get("sum"));
        (keys == 1_000 && sum.as_deref() == Some(total.to_string().as_str())).then_some(())
    })
    .await;
    let answers: Vec<(String, Option<i128>)> = futures::stream::iter(expected.keys())
        .map(|k| async move { (k.clone(), sum(query, k).await) })
        .buffer_unordered(32)
        .collect()
        .await;
    for (k, got) in answers {
        assert_eq!(got, Some(expected[&k]), "key {k}");
    }
    stack.cleanup().await;
}
