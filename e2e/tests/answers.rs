//! The answers workload end to end on the real stack (broker, Redis,
//! PostgreSQL, the four service binaries): the task's allowed and refused
//! sequences, creates racing for one key (exactly one wins), updates racing
//! (each one version, the highest version's value last), retries by id
//! answering the first outcome, strict bodies that never reach the log,
//! values returned byte for byte, and the history paged.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use common::test_util::Answer;
use e2e::Stack;
use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::{json, Value};

const JSON: Option<&str> = Some("application/json");

/// One request with a body, on a fresh connection: the whole answer.
async fn send(addr: SocketAddr, method: &str, path: &str, content_type: Option<&str>, body: &[u8]) -> Answer {
    let headers: Vec<(&str, &str)> = content_type.map(|c| ("Content-Type", c)).into_iter().collect();
    common::test_util::request_with_body(addr, method, path, &headers, body).await.expect("the service answers")
}

/// A key as it goes in a path.
fn path_key(key: &str) -> String {
    percent_encoding::utf8_percent_encode(key, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn with_id(path: String, id: Option<&str>) -> String {
    match id {
        Some(id) => format!("{path}?id={}", path_key(id)),
        None => path,
    }
}

async fn create(command: SocketAddr, key: &str, value: &str, id: Option<&str>) -> Answer {
    let body = json!({"key": key, "value": value}).to_string();
    send(command, "POST", &with_id("/answers".into(), id), JSON, body.as_bytes()).await
}

async fn update(command: SocketAddr, key: &str, value: &str, id: Option<&str>) -> Answer {
    let body = json!({"value": value}).to_string();
    send(command, "PUT", &with_id(format!("/answers/{}", path_key(key)), id), JSON, body.as_bytes()).await
}

async fn delete(command: SocketAddr, key: &str, id: Option<&str>) -> Answer {
    send(command, "DELETE", &with_id(format!("/answers/{}", path_key(key)), id), None, b"").await
}

/// The version of a 2xx write's JSON answer.
fn version(a: &Answer) -> i64 {
    let v: Value = serde_json::from_str(&a.body).unwrap_or_else(|e| panic!("{e}: {:?}", a.body));
    v["version"].as_i64().expect("a version")
}

fn json_of(a: &Answer) -> Value {
    serde_json::from_str(&a.body).unwrap_or_else(|e| panic!("{e}: {:?}", a.body))
}

/// `GET /answers/{key}` after the write whose token is `token` (read your writes).
async fn get(query: SocketAddr, key: &str, token: &str) -> Answer {
    send(query, "GET", &format!("/answers/{}?after={token}", path_key(key)), None, b"").await
}

async fn history(query: SocketAddr, key: &str, token: &str) -> Answer {
    send(query, "GET", &format!("/answers/{}/history?after={token}", path_key(key)), None, b"").await
}

fn token(a: &Answer) -> String {
    a.header("analytics-token").unwrap_or_else(|| panic!("a 2xx write carries its read token: {a:?}")).to_owned()
}

/// Records in a topic, over all its partitions (high watermarks).
fn records_in(brokers: &str, topic: &str) -> i64 {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "e2e-watermarks")
        .create()
        .expect("a consumer");
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic && t.error().is_none()) else { return 0 };
    (0..t.partitions().len() as i32)
        .map(|p| consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).expect("watermarks").1)
        .sum()
}

/// The statuses and versions of a sequence of writes on one key.
async fn run(command: SocketAddr, key: &str, steps: &[&str]) -> Vec<(u16, Option<i64>)> {
    let mut out = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let value = format!("{step} {i}");
        let a = match *step {
            "create" => create(command, key, &value, None).await,
            "update" => update(command, key, &value, None).await,
            "delete" => delete(command, key, None).await,
            other => panic!("no step {other}"),
        };
        let v = matches!(a.status, 200 | 201).then(|| version(&a));
        out.push((a.status, v));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_tasks_sequences_are_decided_by_the_rules_and_the_history_lists_the_changes() {
    let mut stack = Stack::new();
    stack.start_all().await;
    let (command, query) = (stack.addr("command"), stack.addr("query"));

    let allowed = run(command, "a", &["create", "delete", "create", "update"]).await;
    assert_eq!(allowed, [(201, Some(1)), (204, None), (201, Some(3)), (200, Some(4))]);
    let allowed = run(command, "b", &["create", "update", "delete", "create", "update"]).await;
    assert_eq!(allowed, [(201, Some(1)), (200, Some(2)), (204, None), (201, Some(4)), (200, Some(5))]);
    let refused = run(command, "c", &["create", "delete", "update"]).await;
    assert_eq!(refused, [(201, Some(1)), (204, None), (404, None)]);
    let refused = run(command, "d", &["create", "create"]).await;
    assert_eq!(refused, [(201, Some(1)), (409, None)]);
    assert_eq!(delete(command, "never", None).await.status, 404);
    assert_eq!(update(command, "never", "x", None).await.status, 404);

    // The latest answer and the history, read after the last write of each key.
    let last = update(command, "b", "final", None).await;
    assert_eq!((last.status, version(&last)), (200, 6));
    let got = get(query, "b", &token(&last)).await;
    assert_eq!((got.status, json_of(&got)), (200, json!({"key": "b", "value": "final", "version": 6})));
    let h = history(query, "b", &token(&last)).await;
    assert_eq!(h.status, 200, "{}", h.body);
    let entries = json_of(&h);
    let events: Vec<(&str, &str, i64)> = entries
        .as_array()
        .expect("an array")
        .iter()
        .map(|e| {
            assert_eq!(e["data"]["key"], "b");
            assert!(e["at"].as_i64().is_some_and(|at| at > 1_600_000_000_000), "{e}");
            (e["event"].as_str().unwrap(), e["data"]["value"].as_str().unwrap(), e["version"].as_i64().unwrap())
        })
        .collect();
    assert_eq!(
        events,
        [
            ("create", "create 0", 1),
            ("update", "update 1", 2),
            ("delete", "update 1", 3), // a delete's data is the value it removed
            ("create", "create 3", 4),
            ("update", "update 4", 5),
            ("update", "final", 6),
        ]
    );

    // A deleted key answers 404, its history stays; a key never written has neither.
    let gone = delete(command, "c2", None).await;
    assert_eq!(gone.status, 404);
    let deleted = delete(command, "a", None).await;
    assert_eq!(deleted.status, 204);
    assert_eq!(get(query, "a", &token(&deleted)).await.status, 404);
    assert_eq!(history(query, "a", &token(&deleted)).await.status, 200);
    assert_eq!(history(query, "never", &token(&deleted)).await.status, 404);
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_of_one_key_give_one_201_and_concurrent_updates_one_version_each() {
    let mut stack = Stack::new();
    stack.start_all().await;
    let (command, query) = (stack.addr("command"), stack.addr("query"));

    let statuses: Vec<u16> = futures::stream::iter(0..100)
        .map(|i| async move { create(command, "race", &format!("writer {i}"), None).await.status })
        .buffer_unordered(100)
        .collect()
        .await;
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 99, "{statuses:?}");

    let updates: Vec<Answer> = futures::stream::iter(0..50)
        .map(|i| async move { update(command, "race", &format!("update {i}"), None).await })
        .buffer_unordered(50)
        .collect()
        .await;
    assert!(updates.iter().all(|a| a.status == 200), "{:?}", updates.iter().map(|a| a.status).collect::<Vec<_>>());
    let versions: BTreeSet<i64> = updates.iter().map(version).collect();
    assert_eq!(versions, (2..=51).collect(), "each update took one version");
    let highest = updates.iter().max_by_key(|a| version(a)).expect("50 updates");
    let highest_value = json_of(highest)["value"].clone();
    let t = token(highest);
    let latest = json_of(&get(query, "race", &t).await);
    assert_eq!((latest["version"].as_i64(), &latest["value"]), (Some(51), &highest_value));
    // Read-your-writes holds for every update's own token.
    let h = json_of(&history(query, "race", &t).await);
    let listed: Vec<i64> = h.as_array().expect("an array").iter().map(|e| e["version"].as_i64().unwrap()).collect();
    assert_eq!(listed, (1..=51).collect::<Vec<_>>(), "one entry per change, oldest first");
    for a in &updates {
        let v = version(a);
        assert_eq!(h[(v - 1) as usize]["data"]["value"], json_of(a)["value"], "version {v} holds its own update");
    }
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_with_the_same_id_answers_the_first_outcome_and_changes_nothing() {
    let mut stack = Stack::new();
    stack.start_all().await;
    let (command, query) = (stack.addr("command"), stack.addr("query"));

    let first = create(command, "k", "v1", Some("c-1")).await;
    let again = create(command, "k", "v1", Some("c-1")).await;
    assert_eq!((first.status, version(&first)), (201, 1));
    assert_eq!((again.status, version(&again)), (201, 1), "the first outcome again, not 409");
    let conflict = create(command, "k", "v1", Some("c-2")).await;
    assert_eq!(conflict.status, 409, "another id is another create");
    assert_eq!(create(command, "k", "v1", Some("c-2")).await.status, 409, "a refusal is answered again too");

    let up = update(command, "k", "v2", Some("u-1")).await;
    let up_again = update(command, "k", "v2", Some("u-1")).await;
    assert_eq!((up.status, version(&up), up_again.status, version(&up_again)), (200, 2, 200, 2));
    let del = delete(command, "k", Some("d-1")).await;
    let del_again = delete(command, "k", Some("d-1")).await;
    assert_eq!((del.status, del_again.status), (204, 204), "the first outcome, not 404");

    let h = json_of(&history(query, "k", &token(&del_again)).await);
    let versions: Vec<i64> = h.as_array().expect("an array").iter().map(|e| e["version"].as_i64().unwrap()).collect();
    assert_eq!(versions, [1, 2, 3], "retries changed nothing");
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_bodies_are_400_with_one_line_and_never_reach_the_log() {
    let mut stack = Stack::new();
    stack.start("command", e2e::Service::Command).await;
    let command = stack.addr("command");
    let too_long = "k".repeat(257);
    let over_64k = json!({"key": "k", "value": "v".repeat(64 * 1024 + 1)}).to_string();
    let posts: Vec<(Option<&str>, Vec<u8>, &str)> = vec![
        (JSON, b"".to_vec(), "empty"),
        (JSON, b"not json".to_vec(), "not JSON"),
        (JSON, b"[1,2]".to_vec(), "an array"),
        (JSON, b"\"text\"".to_vec(), "a string"),
        (JSON, b"null".to_vec(), "null"),
        (JSON, b"{}".to_vec(), "no fields"),
        (JSON, br#"{"key":"k"}"#.to_vec(), "no value"),
        (JSON, br#"{"value":"v"}"#.to_vec(), "no key"),
        (JSON, br#"{"key":"k","value":"v","extra":1}"#.to_vec(), "an unknown field"),
        (JSON, br#"{"key":"k","key":"k","value":"v"}"#.to_vec(), "a duplicate field"),
        (JSON, br#"{"key":1,"value":"v"}"#.to_vec(), "a numeric key"),
        (JSON, br#"{"key":"k","value":1}"#.to_vec(), "a numeric value"),
        (JSON, br#"{"key":"k","value":null}"#.to_vec(), "a null value"),
        (JSON, br#"{"key":null,"value":"v"}"#.to_vec(), "a null key"),
        (JSON, br#"{"key":"k","value":["v"]}"#.to_vec(), "an array value"),
        (JSON, br#"{"key":"","value":"v"}"#.to_vec(), "an empty key"),
        (JSON, json!({"key": too_long, "value": "v"}).to_string().into_bytes(), "a key of 257 bytes"),
        (JSON, br#"{"key":"a\u0000b","value":"v"}"#.to_vec(), "a key with U+0000"),
        (JSON, br#"{"key":"a\nb","value":"v"}"#.to_vec(), "a key with a newline"),
        (JSON, br#"{"key":"a\u007fb","value":"v"}"#.to_vec(), "a key with DEL"),
        (JSON, br#"{"key":"a\u0085b","value":"v"}"#.to_vec(), "a key with a C1 control"),
        (JSON, over_64k.into_bytes(), "a value over 64 KiB"),
        (JSON, br#"{"key":"k","value":"v"} trailing"#.to_vec(), "trailing data"),
        (JSON, br#"{"key":"k","value":"v""#.to_vec(), "a cut-off object"),
        (JSON, b"\xff\xfe".to_vec(), "not UTF-8"),
        (None, br#"{"key":"k","value":"v"}"#.to_vec(), "no content type"),
        (Some("text/plain"), br#"{"key":"k","value":"v"}"#.to_vec(), "text/plain"),
    ];
    assert!(posts.len() >= 25);
    for (content_type, body, what) in &posts {
        let a = send(command, "POST", "/answers", *content_type, body).await;
        assert_eq!(a.status, 400, "{what}: {}", a.body);
        assert!(a.body.ends_with('\n') && a.body.trim_end().lines().count() == 1, "{what}: one line: {:?}", a.body);
    }
    let puts: Vec<(&str, &[u8], &str)> = vec![
        ("/answers/k", br#"{"key":"k","value":"v"}"#, "a key in a PUT body"),
        ("/answers/k", br#"{}"#, "a PUT without a value"),
        ("/answers/k", br#"{"value":7}"#, "a PUT with a numeric value"),
        ("/answers/", br#"{"value":"v"}"#, "a PUT without a key"),
        ("/answers/a%00b", br#"{"value":"v"}"#, "a path key with U+0000"),
        ("/answers/%ff", br#"{"value":"v"}"#, "a path key that is not UTF-8"),
        ("/answers/a/b", br#"{"value":"v"}"#, "a path below a key"),
    ];
    for (path, body, what) in &puts {
        let a = send(command, "PUT", path, JSON, body).await;
        assert_eq!(a.status, 400, "{what}: {}", a.body);
    }
    let get = send(command, "GET", "/answers/k", None, b"").await;
    assert_eq!((get.status, get.header("allow")), (405, Some("PUT, DELETE")), "reads are the query's");
    let put = send(command, "PUT", "/answers", JSON, br#"{"value":"v"}"#).await;
    assert_eq!((put.status, put.header("allow")), (405, Some("POST")), "a PUT names its key");
    assert_eq!(send(command, "POST", "/answers?id=a%20b", JSON, br#"{"key":"k","value":"v"}"#).await.status, 400);
    assert_eq!(records_in(&stack.kafka.brokers, &stack.topic("answers_commands_topic")), 0, "nothing reached the log");
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn values_come_back_byte_for_byte_and_a_long_history_is_paged() {
    let mut stack = Stack::new();
    stack.start_all().await;
    let (command, query) = (stack.addr("command"), stack.addr("query"));

    let key = "ключ with spaces/and?query#hash";
    let value = "nul \u{0} tab \t bell \u{7} c1 \u{85} emoji 🦀 quote \" backslash \\";
    let made = create(command, key, value, None).await;
    assert_eq!(made.status, 201, "{}", made.body);
    let got = get(query, key, &token(&made)).await;
    assert_eq!(json_of(&got), json!({"key": key, "value": value, "version": 1}));
    let big = "x".repeat(64 * 1024);
    let up = update(command, key, &big, None).await;
    assert_eq!(up.status, 200);
    assert_eq!(json_of(&get(query, key, &token(&up)).await)["value"], big.as_str());

    // 1,200 changes: pages of at most the limit, linked oldest first.
    let mut last = create(command, "long", "0", None).await;
    for i in 1..1_200 {
        last = update(command, "long", &i.to_string(), None).await;
        assert_eq!(last.status, 200);
    }
    let t = token(&last);
    let mut seen = Vec::new();
    let mut next = Some(format!("/answers/long/history?limit=500&after={t}"));
    while let Some(path) = next.take() {
        let page = send(query, "GET", &path, None, b"").await;
        assert_eq!(page.status, 200, "{path}: {}", page.body);
        let entries = json_of(&page);
        let entries = entries.as_array().expect("an array");
        assert!(entries.len() <= 500);
        seen.extend(entries.iter().map(|e| e["version"].as_i64().unwrap()));
        next = page.header("link").map(|l| {
            let target = l.split_once('<').and_then(|(_, r)| r.split_once('>')).expect("<target>").0;
            format!("{target}&after={t}")
        });
    }
    assert_eq!(seen, (1..=1_200).collect::<Vec<_>>());
    stack.cleanup().await;
}

/// The gRPC API on the same stack: the same decisions and status codes as
/// HTTP (ALREADY_EXISTS, NOT_FOUND, INVALID_ARGUMENT), the read token as
/// metadata, retries by id, and the history paged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_grpc_api_has_the_same_semantics_as_http() {
    use answers::grpc::proto::answers_read_client::AnswersReadClient;
    use answers::grpc::proto::answers_write_client::AnswersWriteClient;
    use answers::grpc::proto::{CreateRequest, DeleteRequest, Event, GetRequest, HistoryRequest, UpdateRequest};
    use tonic::transport::Channel;
    use tonic::Code;

    let mut stack = Stack::new();
    stack.start_all().await;
    let channel = |addr: SocketAddr| async move {
        Channel::from_shared(format!("http://{addr}")).expect("endpoint").connect().await.expect("connected")
    };
    let mut write = AnswersWriteClient::new(channel(stack.listener("command", "answers_grpc_command_addr")).await);
    let mut read = AnswersReadClient::new(channel(stack.listener("query", "answers_grpc_query_addr")).await);
    let read_token = |metadata: &tonic::metadata::MetadataMap| {
        metadata.get("analytics-token").expect("a write carries its read token").to_str().expect("ascii").to_owned()
    };
    let key = "grpc/key with spaces".to_owned();
    let first = "first \0 value \"quoted\" 🦀";

    let create = CreateRequest { key: key.clone(), value: first.into(), id: Some("g-1".into()) };
    let created = write.create(create.clone()).await.expect("created");
    let token = read_token(created.metadata());
    let created = created.into_inner();
    assert_eq!((created.key.as_str(), created.value.as_str(), created.version), (key.as_str(), first, 1));
    assert_eq!(write.create(create).await.expect("the first outcome again").into_inner(), created);
    let twice = CreateRequest { key: key.clone(), value: "other".into(), id: None };
    assert_eq!(write.create(twice).await.expect_err("exists").code(), Code::AlreadyExists);

    let get = |after: String| GetRequest { key: key.clone(), after: Some(after), wait_ms: Some(5_000) };
    assert_eq!(read.get(get(token)).await.expect("read").into_inner(), created);

    let update = UpdateRequest { key: key.clone(), value: "second".into(), id: Some("g-2".into()) };
    let updated = write.update(update).await.expect("updated");
    let token = read_token(updated.metadata());
    assert_eq!(updated.into_inner().version, 2);
    let got = read.get(get(token)).await.expect("read").into_inner();
    assert_eq!((got.value.as_str(), got.version), ("second", 2));

    let deleted = write.delete(DeleteRequest { key: key.clone(), id: Some("g-3".into()) }).await.expect("deleted");
    let token = read_token(deleted.metadata());
    assert_eq!(read.get(get(token.clone())).await.expect_err("deleted").code(), Code::NotFound);
    let update = UpdateRequest { key: key.clone(), value: "third".into(), id: None };
    assert_eq!(write.update(update).await.expect_err("deleted").code(), Code::NotFound);
    let delete = DeleteRequest { key: key.clone(), id: None };
    assert_eq!(write.delete(delete).await.expect_err("deleted").code(), Code::NotFound);

    let history = |from, limit| HistoryRequest {
        key: key.clone(),
        from,
        limit,
        after: Some(token.clone()),
        wait_ms: Some(5_000),
    };
    let all = read.history(history(None, None)).await.expect("history").into_inner();
    let seen: Vec<(Event, &str, u64)> = all.entries.iter().map(|e| (e.event(), e.value.as_str(), e.version)).collect();
    assert_eq!(seen, [(Event::Create, first, 1), (Event::Update, "second", 2), (Event::Delete, "second", 3)]);
    assert!(all.entries.iter().all(|e| e.key == key && e.at_ms > 0));
    assert_eq!(all.next_from, None);
    let page = read.history(history(None, Some(2))).await.expect("page 1").into_inner();
    assert_eq!((page.entries.len(), page.next_from), (2, Some(3)));
    let page = read.history(history(page.next_from, Some(2))).await.expect("page 2").into_inner();
    assert_eq!((page.entries[0].version, page.next_from), (3, None));

    let bad = CreateRequest { key: "bad\u{7}key".into(), value: "v".into(), id: None };
    assert_eq!(write.create(bad).await.expect_err("a control character").code(), Code::InvalidArgument);
    let never = HistoryRequest { key: "never".into(), ..Default::default() };
    assert_eq!(read.history(never).await.expect_err("never written").code(), Code::NotFound);
    stack.cleanup().await;
}
