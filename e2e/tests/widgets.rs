//! The widgets workload end to end on the real stack (broker, Redis,
//! PostgreSQL, the four service binaries): every rule of issue #22 over
//! HTTP, retries by id answering the first outcome, strict bodies that never
//! reach the log, and the concurrency test: 16 clients racing 20,000 random
//! creates, associations, dissociations and deletes over a few serials,
//! then the checker (`widgets::check`) on the read model and on the `2xx`
//! history in decided order (the changes topic, matched to each request
//! through the commands topic by its client id).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::test_util::Answer;
use e2e::Stack;
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::Message;
use serde_json::{json, Value};
use widgets::check::{replay, Snapshot};
use widgets::log::{Logged, WidgetCommand};
use widgets::{Association, Command, Name, Port, Ports, Serial, Widget};

const JSON: Option<&str> = Some("application/json");

/// One request with a body, on a fresh connection: the whole answer.
async fn send(addr: SocketAddr, method: &str, path: &str, content_type: Option<&str>, body: &[u8]) -> Answer {
    let headers: Vec<(&str, &str)> = content_type.map(|c| ("Content-Type", c)).into_iter().collect();
    common::test_util::request_with_body(addr, method, path, &headers, body).await.expect("the service answers")
}

/// A serial as one path segment.
fn seg(serial: &str) -> String {
    percent_encoding::utf8_percent_encode(serial, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn with_id(path: String, id: Option<&str>) -> String {
    match id {
        Some(id) => format!("{path}?id={id}"),
        None => path,
    }
}

/// The request of a command: method, path and body.
fn request_of(c: &Command) -> (&'static str, String, Option<String>) {
    match c {
        Command::Create { serial, name, ports } => (
            "POST",
            "/widgets".into(),
            Some(json!({"serial": serial.as_str(), "name": name.as_str(), "ports": ports.to_string()}).to_string()),
        ),
        Command::Delete { serial } => ("DELETE", format!("/widgets/{}", seg(serial.as_str())), None),
        Command::Associate { serial, with, port } => (
            "POST",
            format!("/widgets/{}/associations", seg(serial.as_str())),
            Some(json!({"with": with.as_str(), "port": port.to_string()}).to_string()),
        ),
        Command::Dissociate { serial, other, port } => {
            ("DELETE", format!("/widgets/{}/associations/{}/{port}", seg(serial.as_str()), seg(other.as_str())), None)
        }
    }
}

async fn run(command: SocketAddr, c: &Command, id: Option<&str>) -> Answer {
    let (method, path, body) = request_of(c);
    let content_type = body.as_ref().and(JSON);
    send(command, method, &with_id(path, id), content_type, body.unwrap_or_default().as_bytes()).await
}

fn s(serial: &str) -> Serial {
    Serial::parse(serial).expect("a test serial")
}

fn create(serial: &str, ports: &str) -> Command {
    Command::Create { serial: s(serial), name: Name::parse("widget").unwrap(), ports: Ports::parse(ports).unwrap() }
}

fn delete(serial: &str) -> Command {
    Command::Delete { serial: s(serial) }
}

fn associate(serial: &str, with: &str, port: Port) -> Command {
    Command::Associate { serial: s(serial), with: s(with), port }
}

fn dissociate(serial: &str, other: &str, port: Port) -> Command {
    Command::Dissociate { serial: s(serial), other: s(other), port }
}

fn token(a: &Answer) -> String {
    a.header("analytics-token").unwrap_or_else(|| panic!("a 2xx write carries its read token: {a:?}")).to_owned()
}

fn json_of(a: &Answer) -> Value {
    serde_json::from_str(&a.body).unwrap_or_else(|e| panic!("{e}: {:?}", a.body))
}

/// `GET /widgets/{serial}`, after the write whose token is `token` (read your writes).
async fn get(query: SocketAddr, serial: &str, token: &str) -> Answer {
    send(query, "GET", &format!("/widgets/{}?after={token}", seg(serial)), None, b"").await
}

/// A refusal: its status, and a one-line body.
fn refused(a: &Answer) -> u16 {
    assert!(a.body.ends_with('\n') && a.body.trim_end().lines().count() == 1, "one line: {:?}", a.body);
    a.status
}

/// Every record of a topic, over all its partitions: (partition, offset, key, payload).
async fn read_topic(brokers: &str, topic: &str) -> Vec<(i32, i64, String, Vec<u8>)> {
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("e2e-read-{topic}"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer");
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let partitions = metadata.topics().iter().find(|t| t.name() == topic).map_or(0, |t| t.partitions().len());
    let mut assignment = rdkafka::TopicPartitionList::new();
    let mut remaining = BTreeMap::new();
    for p in 0..partitions as i32 {
        let (_, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).expect("watermarks");
        if high > 0 {
            remaining.insert(p, high);
        }
        assignment.add_partition_offset(topic, p, rdkafka::Offset::Beginning).expect("assign");
    }
    consumer.assign(&assignment).expect("assigning");
    let mut out = Vec::new();
    // Until every partition is read to its high watermark, or nothing more comes
    // (a transaction's control record may be the last offset, never delivered).
    while !remaining.is_empty() {
        let Ok(msg) = tokio::time::timeout(Duration::from_secs(3), consumer.recv()).await else { break };
        let msg = msg.expect("a record");
        let key = msg.key().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
        out.push((msg.partition(), msg.offset(), key, msg.payload().unwrap_or_default().to_vec()));
        if remaining.get(&msg.partition()).is_some_and(|high| msg.offset() + 1 >= *high) {
            remaining.remove(&msg.partition());
        }
    }
    out
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

/// The widget of a GET's body.
fn widget_of(body: &Value) -> Widget {
    Widget {
        serial: s(body["serial"].as_str().expect("a serial")),
        name: Name::parse(body["name"].as_str().expect("a name")).expect("a valid name"),
        ports: Ports::parse(body["ports"].as_str().expect("ports")).expect("valid ports"),
        associations: body["associations"]
            .as_array()
            .expect("an array")
            .iter()
            .map(|a| Association {
                with: s(a["with"].as_str().expect("with")),
                port: Port::parse(a["port"].as_str().expect("port")).expect("a port"),
            })
            .collect(),
    }
}

/// The read model of `serials`, read back through the query.
async fn read_model(query: SocketAddr, serials: &[&str]) -> Snapshot {
    let mut widgets = Vec::new();
    for serial in serials {
        let a = send(query, "GET", &format!("/widgets/{}", seg(serial)), None, b"").await;
        match a.status {
            200 => widgets.push(widget_of(&json_of(&a))),
            404 => {}
            other => panic!("GET {serial}: {other} {}", a.body),
        }
    }
    Snapshot::from_widgets(widgets).expect("one widget per serial")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_rule_of_the_task_holds_over_http() {
    let mut stack = Stack::new();
    stack.start_all().await;
    let (command, query) = (stack.addr("command"), stack.addr("query"));

    // A serial is unique: 201 with the widget, then 409.
    let a = run(command, &create("a/1 é", "PRR"), None).await;
    assert_eq!(
        (a.status, json_of(&a)),
        (201, json!({"serial": "a/1 é", "name": "widget", "ports": "PRR", "associations": []}))
    );
    assert_eq!(refused(&run(command, &create("a/1 é", "Q"), None).await), 409);
    let got = get(query, "a/1 é", &token(&a)).await;
    assert_eq!((got.status, json_of(&got)["ports"].as_str()), (200, Some("PRR")));
    for (serial, ports) in [("b", "PQ"), ("c", "RR"), ("d", "P")] {
        assert_eq!(run(command, &create(serial, ports), None).await.status, 201);
    }
    // Associations through a free slot of the same type on each.
    let ab = run(command, &associate("a/1 é", "b", Port::P), None).await;
    assert_eq!((ab.status, json_of(&ab)), (201, json!({"serial": "a/1 é", "with": "b", "port": "P"})));
    assert_eq!(refused(&run(command, &associate("b", "a/1 é", Port::P), None).await), 409, "already associated on P");
    assert_eq!(refused(&run(command, &associate("a/1 é", "d", Port::P), None).await), 409, "a has no free P");
    assert_eq!(
        refused(&run(command, &associate("c", "c", Port::R), None).await),
        409,
        "with itself, though c has two R"
    );
    assert_eq!(refused(&run(command, &associate("b", "c", Port::Q), None).await), 409, "c has no Q slot");
    assert_eq!(refused(&run(command, &associate("a/1 é", "nobody", Port::R), None).await), 404);
    assert_eq!(refused(&run(command, &associate("nobody", "a/1 é", Port::R), None).await), 404);
    assert_eq!(run(command, &associate("a/1 é", "c", Port::R), None).await.status, 201);
    let twice = run(command, &associate("c", "a/1 é", Port::R), None).await;
    assert_eq!(refused(&twice), 409, "a pair is associated at most once per type, though both have a free R");
    assert!(twice.body.contains("already associated"), "{}", twice.body);
    let last = run(command, &associate("c", "b", Port::P), None).await;
    assert_eq!(refused(&last), 409, "c has no P slot");

    // Bidirectional, in slot order.
    let t = token(&run(command, &create("e", "Q"), None).await);
    let view = |body: Value| (body["associations"].clone(), body["ports"].clone());
    assert_eq!(
        view(json_of(&get(query, "a/1 é", &t).await)),
        (json!([{"with": "b", "port": "P"}, {"with": "c", "port": "R"}]), json!("PRR"))
    );
    assert_eq!(json_of(&get(query, "b", &t).await)["associations"], json!([{"with": "a/1 é", "port": "P"}]));
    assert_eq!(json_of(&get(query, "c", &t).await)["associations"], json!([{"with": "a/1 é", "port": "R"}]));

    // Removing an association frees the slot on both; a second removal is 404.
    let gone = run(command, &dissociate("b", "a/1 é", Port::P), None).await;
    assert_eq!(gone.status, 204);
    assert_eq!(json_of(&get(query, "b", &token(&gone)).await)["associations"], json!([]));
    assert_eq!(json_of(&get(query, "a/1 é", &token(&gone)).await)["associations"], json!([{"with": "c", "port": "R"}]));
    assert_eq!(refused(&run(command, &dissociate("a/1 é", "b", Port::P), None).await), 404);
    assert_eq!(refused(&run(command, &dissociate("a/1 é", "c", Port::Q), None).await), 404);
    assert_eq!(refused(&run(command, &dissociate("a/1 é", "nobody", Port::R), None).await), 404);
    assert_eq!(run(command, &associate("d", "a/1 é", Port::P), None).await.status, 201, "the P slot is free again");

    // Removing a widget removes its associations and frees its partners' slots.
    let deleted = run(command, &delete("a/1 é"), None).await;
    assert_eq!(deleted.status, 204);
    let t = token(&deleted);
    assert_eq!(refused(&get(query, "a/1 é", &t).await), 404);
    assert_eq!(json_of(&get(query, "c", &t).await)["associations"], json!([]));
    assert_eq!(json_of(&get(query, "d", &t).await)["associations"], json!([]));
    assert_eq!(refused(&run(command, &delete("a/1 é"), None).await), 404);
    assert_eq!(refused(&run(command, &associate("c", "a/1 é", Port::R), None).await), 404);
    // Created again, it is a new widget.
    let again = run(command, &create("a/1 é", "Q"), None).await;
    assert_eq!((again.status, json_of(&get(query, "a/1 é", &token(&again)).await)["ports"].clone()), (201, json!("Q")));
    assert_eq!(refused(&get(query, "never", &t).await), 404);
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_with_the_same_id_answers_the_first_outcome_and_changes_nothing() {
    let mut stack = Stack::new();
    stack.start_all().await;
    let (command, query) = (stack.addr("command"), stack.addr("query"));

    let first = run(command, &create("x", "PP"), Some("c-1")).await;
    let again = run(command, &create("x", "PP"), Some("c-1")).await;
    assert_eq!((first.status, again.status, &first.body), (201, 201, &again.body), "the first outcome, not 409");
    assert_eq!(run(command, &create("x", "PP"), Some("c-2")).await.status, 409, "another id is another create");
    assert_eq!(run(command, &create("y", "P"), None).await.status, 201);
    assert_eq!(run(command, &associate("x", "y", Port::P), Some("a-1")).await.status, 201);
    assert_eq!(run(command, &associate("x", "y", Port::P), Some("a-1")).await.status, 201, "not 409");
    let no_slot = run(command, &associate("x", "z", Port::P), Some("a-2")).await;
    assert_eq!(no_slot.status, 404);
    assert_eq!(run(command, &create("z", "P"), None).await.status, 201);
    let retried = run(command, &associate("x", "z", Port::P), Some("a-2")).await;
    assert_eq!(
        (retried.status, &retried.body),
        (404, &no_slot.body),
        "a refusal is answered again, though z exists now"
    );
    let del = run(command, &delete("y"), Some("d-1")).await;
    let del_again = run(command, &delete("y"), Some("d-1")).await;
    assert_eq!((del.status, del_again.status), (204, 204), "the first outcome, not 404");
    assert_eq!(run(command, &delete("y"), Some("d-2")).await.status, 404);
    let t = token(&del_again);
    assert_eq!(json_of(&get(query, "x", &t).await)["associations"], json!([]), "y's delete freed x once");
    assert_eq!(get(query, "y", &t).await.status, 404);

    // The retries appended commands, but no change: five changes in all.
    let changes = read_topic(&stack.kafka.brokers, &stack.topic("widgets_changes_topic")).await;
    let keys: BTreeSet<String> =
        changes.into_iter().map(|(_, _, k, _)| k).filter(|k| !k.starts_with("progress:")).collect();
    assert_eq!(keys.len(), 5, "{keys:?}");
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_are_400_with_one_line_and_never_reach_the_log() {
    let mut stack = Stack::new();
    stack.start("command", e2e::Service::Command).await;
    let command = stack.addr("command");
    let creates: Vec<(Option<&str>, String, &str)> = vec![
        (JSON, "".into(), "empty"),
        (JSON, "not json".into(), "not JSON"),
        (JSON, "[1]".into(), "an array"),
        (JSON, "{}".into(), "no fields"),
        (JSON, r#"{"serial":"a","name":"n"}"#.into(), "no ports"),
        (JSON, r#"{"serial":"a","ports":"P"}"#.into(), "no name"),
        (JSON, r#"{"name":"n","ports":"P"}"#.into(), "no serial"),
        (JSON, r#"{"serial":"a","name":"n","ports":"P","x":1}"#.into(), "an unknown field"),
        (JSON, r#"{"serial":"a","serial":"b","name":"n","ports":"P"}"#.into(), "a duplicate field"),
        (JSON, r#"{"serial":1,"name":"n","ports":"P"}"#.into(), "a numeric serial"),
        (JSON, r#"{"serial":"a","name":null,"ports":"P"}"#.into(), "a null name"),
        (JSON, r#"{"serial":"a","name":"n","ports":["P"]}"#.into(), "an array of ports"),
        (JSON, r#"{"serial":"","name":"n","ports":"P"}"#.into(), "an empty serial"),
        (JSON, json!({"serial": "s".repeat(129), "name": "n", "ports": "P"}).to_string(), "a serial of 129 bytes"),
        (JSON, r#"{"serial":"a\nb","name":"n","ports":"P"}"#.into(), "a serial with a newline"),
        (JSON, r#"{"serial":"a\u0085","name":"n","ports":"P"}"#.into(), "a serial with a C1 control"),
        (JSON, json!({"serial": "a", "name": "n".repeat(257), "ports": "P"}).to_string(), "a name of 257 bytes"),
        (JSON, r#"{"serial":"a","name":"\u0000","ports":"P"}"#.into(), "a name with U+0000"),
        (JSON, r#"{"serial":"a","name":"n","ports":""}"#.into(), "no ports"),
        (JSON, r#"{"serial":"a","name":"n","ports":"PRRQ"}"#.into(), "four ports"),
        (JSON, r#"{"serial":"a","name":"n","ports":"PX"}"#.into(), "a port X"),
        (JSON, r#"{"serial":"a","name":"n","ports":"p"}"#.into(), "a lowercase port"),
        (JSON, r#"{"serial":"a","name":"n","ports":"P"} x"#.into(), "trailing data"),
        (None, r#"{"serial":"a","name":"n","ports":"P"}"#.into(), "no content type"),
        (Some("text/plain"), r#"{"serial":"a","name":"n","ports":"P"}"#.into(), "text/plain"),
    ];
    for (content_type, body, what) in &creates {
        let a = send(command, "POST", "/widgets", *content_type, body.as_bytes()).await;
        assert_eq!(refused(&a), 400, "{what}: {}", a.body);
    }
    let others: Vec<(&str, &str, &str, &str)> = vec![
        ("POST", "/widgets/a/associations", r#"{"with":"b"}"#, "no port"),
        ("POST", "/widgets/a/associations", r#"{"port":"P"}"#, "no with"),
        ("POST", "/widgets/a/associations", r#"{"with":"b","port":"PR"}"#, "two ports"),
        ("POST", "/widgets/a/associations", r#"{"with":"b","port":"P","x":0}"#, "an unknown field"),
        ("POST", "/widgets/a/associations", r#"{"with":7,"port":"P"}"#, "a numeric with"),
        ("POST", "/widgets/a%ZZ/associations", r#"{"with":"b","port":"P"}"#, "a malformed escape"),
        ("POST", "/widgets/%FF/associations", r#"{"with":"b","port":"P"}"#, "not UTF-8"),
        ("DELETE", "/widgets/a%00", "", "a serial with U+0000"),
        ("DELETE", "/widgets/a", "{}", "a DELETE with a body"),
        ("DELETE", "/widgets/a/associations/b/X", "", "a port X"),
        ("DELETE", "/widgets/a/associations/b", "", "no port"),
        ("DELETE", "/widgets/a/other", "", "another path"),
        ("DELETE", "/widgets/a?id=a.b", "", "a bad id"),
        ("DELETE", "/widgets/a?x=1", "", "an unknown parameter"),
    ];
    for (method, path, body, what) in &others {
        let a = send(command, method, path, JSON, body.as_bytes()).await;
        assert_eq!(refused(&a), 400, "{what}: {}", a.body);
    }
    let get = send(command, "GET", "/widgets/a", None, b"").await;
    assert_eq!((get.status, get.header("allow")), (405, Some("DELETE")), "reads are the query's");
    let post = send(command, "POST", "/widgets/a", JSON, b"{}").await;
    assert_eq!((post.status, post.header("allow")), (405, Some("DELETE")), "a widget is created on /widgets");
    let delete = send(command, "DELETE", "/widgets/a/associations", None, b"").await;
    assert_eq!((delete.status, delete.header("allow")), (405, Some("POST")));
    let post = send(command, "POST", "/widgets/a/associations/b/P", JSON, b"{}").await;
    assert_eq!((post.status, post.header("allow")), (405, Some("DELETE")));
    let delete = send(command, "DELETE", "/widgets", None, b"").await;
    assert_eq!((delete.status, delete.header("allow")), (405, Some("POST")));
    assert_eq!(records_in(&stack.kafka.brokers, &stack.topic("widgets_commands_topic")), 0, "nothing reached the log");
    stack.cleanup().await;
}

/// One answered request of the concurrency test.
#[derive(Debug, Clone)]
struct Sent {
    id: String,
    command: Command,
    status: u16,
    sent: Instant,
    answered: Instant,
}

const SERIALS: [&str; 10] = ["w0", "w1", "w2", "w3", "w4", "w5", "w6", "w7", "w8", "w/9 é"];

fn random_command(rng: &mut StdRng) -> Command {
    let serial = |rng: &mut StdRng| SERIALS[rng.random_range(0..SERIALS.len())];
    let port = Port::ALL[rng.random_range(0..3)];
    match rng.random_range(0..20) {
        0..=4 => create(serial(rng), ["P", "R", "Q", "PR", "PQ", "RQ", "PRQ", "PP", "QQR"][rng.random_range(0..9)]),
        5..=6 => delete(serial(rng)),
        7..=15 => associate(serial(rng), serial(rng), port),
        _ => dissociate(serial(rng), serial(rng), port),
    }
}

/// Sends `n` random commands one after the other, each with its own id;
/// a 503 (outcome unknown) is retried with the same id until decided.
async fn client(command: SocketAddr, client: usize, n: usize) -> Vec<Sent> {
    let mut rng = StdRng::seed_from_u64(0x5eed + client as u64);
    let mut out = Vec::with_capacity(n);
    for k in 0..n {
        let (c, id) = (random_command(&mut rng), format!("c{client}-{k}"));
        let sent = Instant::now();
        let status = loop {
            match run(command, &c, Some(&id)).await.status {
                503 => tokio::time::sleep(Duration::from_millis(50)).await,
                status => break status,
            }
        };
        assert!(matches!(status, 201 | 204 | 404 | 409), "{c:?}: {status}");
        out.push(Sent { id, command: c, status, sent, answered: Instant::now() });
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_clients_keep_every_invariant_and_the_state_is_the_2xx_history_in_decided_order() {
    const CLIENTS: usize = 16;
    const EACH: usize = 1_250;
    let mut stack = Stack::new();
    stack.start_all().await;
    let (command, query) = (stack.addr("command"), stack.addr("query"));

    let started = Instant::now();
    let sent: Vec<Sent> = futures::stream::iter(0..CLIENTS)
        .map(|i| client(command, i, EACH))
        .buffer_unordered(CLIENTS)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .flatten()
        .collect();
    let took = started.elapsed();
    let accepted = sent.iter().filter(|s| s.status < 300).count();
    println!(
        "{} requests from {CLIENTS} clients in {:.1} s ({:.0}/s), {accepted} accepted",
        sent.len(),
        took.as_secs_f64(),
        sent.len() as f64 / took.as_secs_f64()
    );
    assert_eq!(sent.len(), CLIENTS * EACH);
    assert!(accepted > 1_000 && accepted < sent.len() - 1_000, "they collide: {accepted} accepted");

    // The decided order: each command's offset (its first record, by its client id) ...
    let commands = read_topic(&stack.kafka.brokers, &stack.topic("widgets_commands_topic")).await;
    let partitions: BTreeSet<i32> = commands.iter().map(|(p, ..)| *p).collect();
    assert_eq!(partitions.len(), 1, "one decision partition");
    let mut offsets: BTreeMap<String, (i64, Command)> = BTreeMap::new();
    for (_, offset, _, payload) in &commands {
        let c: WidgetCommand = widgets::wire::decode_command(payload).expect("a command");
        offsets.entry(c.id.expect("every test command has an id")).or_insert((*offset, c.command));
    }
    // ... and the changes, each once, in that order.
    let mut changes: BTreeMap<i64, Logged> = BTreeMap::new();
    for (_, _, key, payload) in read_topic(&stack.kafka.brokers, &stack.topic("widgets_changes_topic")).await {
        if !key.starts_with("progress:") {
            let l = widgets::wire::decode_change(&payload).expect("a change");
            assert_eq!(key, l.record_key());
            changes.insert(l.input_offset - 1, l);
        }
    }

    // Every answer is its command's decision: a 2xx has exactly its change, a refusal none.
    let mut by_offset: BTreeMap<i64, &Sent> = BTreeMap::new();
    for s in &sent {
        let (offset, logged) = offsets.get(&s.id).unwrap_or_else(|| panic!("{}: answered, not in the log", s.id));
        assert_eq!(*logged, s.command, "{}", s.id);
        assert_eq!(
            changes.get(offset).map(|l| l.change.command()).as_ref(),
            (s.status < 300).then_some(&s.command),
            "{}",
            s.id
        );
        by_offset.insert(*offset, s);
    }
    assert_eq!(changes.len(), accepted, "no change without its 2xx");
    // Linearizable: a write answered before another was sent was decided first.
    let mut order: Vec<&Sent> = sent.iter().collect();
    order.sort_by_key(|s| s.sent);
    let mut answered: Vec<(Instant, i64)> = by_offset.iter().map(|(o, s)| (s.answered, *o)).collect();
    answered.sort();
    let (mut i, mut latest_decided) = (0, -1);
    for s in order {
        while i < answered.len() && answered[i].0 < s.sent {
            latest_decided = latest_decided.max(answered[i].1);
            i += 1;
        }
        let own = offsets[&s.id].0;
        assert!(own > latest_decided, "{} (offset {own}) was sent after offset {latest_decided} was answered", s.id);
    }

    // The 2xx history replays in decided order, every invariant holds on the
    // replayed graph, and the read model equals it once caught up.
    let history: Vec<_> = changes.values().map(|l| l.change.clone()).collect();
    let expected = Snapshot::of(&replay(&history).expect("the 2xx history replays in decided order"));
    expected.check().expect("every invariant on the replayed graph");
    let observed = common::test_util::wait_until(
        "the read model equals the replayed history",
        Duration::from_secs(60),
        || async {
            let observed = read_model(query, &SERIALS).await;
            (observed == expected).then_some(observed)
        },
    )
    .await;
    observed.check().expect("every invariant on the read model");
    println!("checked in {:.1} s in all; {} widgets at the end", started.elapsed().as_secs_f64(), observed.len());
    stack.cleanup().await;
}
