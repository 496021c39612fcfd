//! The widgets workload end to end on the real stack (broker, Redis,
//! PostgreSQL, the four service binaries): every rule of issue #22 over
//! HTTP, retries by id answering the first outcome, strict bodies that never
//! reach the log, and the concurrency test: 16 clients racing 20,000 random
//! creates, associations, dissociations and deletes over a few serials,
//! then the checker (`widgets::check`) on the read model and on the `2xx`
//! history in decided order (the changes topic, matched to each request
//! through the commands topic by its client id).

mod widgets_support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::test_util::Answer;
use e2e::Stack;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::{json, Value};
use widgets::{Command, Name, Port, Ports, Serial};
use widgets_support::{read_topic, run, seg, send, JSON};

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
    // PostgreSQL holds the same, readable with SQL: each association once from each end.
    let pool = common::engine::pg::pool(&stack.pg).unwrap();
    let ends: Vec<(String, String, String)> = pool
        .get()
        .await
        .unwrap()
        .query("SELECT serial, with_serial, port FROM widget_associations ORDER BY 1, 3", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let end = |a: &str, b: &str, p: &str| (a.to_owned(), b.to_owned(), p.to_owned());
    assert_eq!(ends, [end("a/1 é", "b", "P"), end("a/1 é", "c", "R"), end("b", "a/1 é", "P"), end("c", "a/1 é", "R")]);

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
    let keys: BTreeSet<String> = changes.into_iter().map(|(_, k)| k).filter(|k| !k.starts_with("progress:")).collect();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_clients_keep_every_invariant_and_the_state_is_the_2xx_history_in_decided_order() {
    // 32 clients of 625 commands: each client waits for its decision (a
    // round trip through the broker twice), so more clients, more throughput.
    const CLIENTS: usize = 32;
    const EACH: usize = 625;
    let mut stack = Stack::new();
    stack.start_all().await;
    let (command, query) = (stack.addr("command"), stack.addr("query"));

    let started = Instant::now();
    let answered = widgets_support::load(Arc::new(Mutex::new(vec![command])), 1, CLIENTS, EACH).await;
    let took = started.elapsed();
    let accepted = answered.iter().filter(|a| a.status < 300).count();
    println!(
        "{} requests from {CLIENTS} clients in {:.1} s ({:.0}/s), {accepted} accepted",
        answered.len(),
        took.as_secs_f64(),
        answered.len() as f64 / took.as_secs_f64()
    );
    assert_eq!(answered.len(), CLIENTS * EACH);
    assert!(accepted > 1_000 && accepted < answered.len() - 1_000, "they collide: {accepted} accepted");
    let (commands, changes) = (stack.topic("widgets_commands_topic"), stack.topic("widgets_changes_topic"));
    let widgets =
        widgets_support::check(&stack.kafka.brokers, &commands, &changes, query, &answered, Duration::from_secs(60))
            .await;
    println!("checked in {:.1} s in all; {widgets} widgets at the end", started.elapsed().as_secs_f64());
    stack.cleanup().await;
}
