//! The widgets load and its checker, shared by `e2e/tests/widgets.rs` (the
//! concurrency test) and `e2e/tests/chaos.rs` (its kill -9 row): clients
//! sending random commands over a few serials (so they collide), each with
//! its own id and retried with it until decided; then every answer checked
//! against the log (`widgets::check::check_history`: the commands by id,
//! the changes by offset), and the read model, read back through `GET`,
//! against the `2xx` history replayed in decided order.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::test_util::Answer;
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use widgets::check::{check_history, Answered, Snapshot};
use widgets::log::{Logged, WidgetCommand};
use widgets::{Association, Command, Name, Port, Ports, Serial, Widget};

pub const JSON: Option<&str> = Some("application/json");

/// The serials the load writes: few, so that commands collide.
pub const SERIALS: [&str; 10] = ["w0", "w1", "w2", "w3", "w4", "w5", "w6", "w7", "w8", "w/9 é"];

/// One request with a body, on a fresh connection: the whole answer.
pub async fn try_send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> std::io::Result<Answer> {
    let headers: Vec<(&str, &str)> = content_type.map(|c| ("Content-Type", c)).into_iter().collect();
    common::test_util::request_with_body(addr, method, path, &headers, body).await
}

pub async fn send(addr: SocketAddr, method: &str, path: &str, content_type: Option<&str>, body: &[u8]) -> Answer {
    try_send(addr, method, path, content_type, body).await.expect("the service answers")
}

/// A serial as one path segment.
pub fn seg(serial: &str) -> String {
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

/// Sends a command, with `id` as its `?id=`.
pub async fn try_run(command: SocketAddr, c: &Command, id: Option<&str>) -> std::io::Result<Answer> {
    let (method, path, body) = request_of(c);
    let content_type = body.as_ref().and(JSON);
    try_send(command, method, &with_id(path, id), content_type, body.unwrap_or_default().as_bytes()).await
}

pub async fn run(command: SocketAddr, c: &Command, id: Option<&str>) -> Answer {
    try_run(command, c, id).await.expect("the service answers")
}

fn s(serial: &str) -> Serial {
    Serial::parse(serial).expect("a test serial")
}

fn random_command(rng: &mut StdRng) -> Command {
    let serial = |rng: &mut StdRng| s(SERIALS[rng.random_range(0..SERIALS.len())]);
    let port = Port::ALL[rng.random_range(0..3)];
    match rng.random_range(0..20) {
        0..=4 => Command::Create {
            serial: serial(rng),
            name: Name::parse("widget").expect("a name"),
            ports: Ports::parse(["P", "R", "Q", "PR", "PQ", "RQ", "PRQ", "PP", "QQR"][rng.random_range(0..9)])
                .expect("ports"),
        },
        5..=6 => Command::Delete { serial: serial(rng) },
        7..=15 => Command::Associate { serial: serial(rng), with: serial(rng), port },
        _ => Command::Dissociate { serial: serial(rng), other: serial(rng), port },
    }
}

/// Sends `n` random commands one after the other, each with its own id,
/// to the targets in turn; a 503 or a lost connection (the outcome unknown)
/// is retried with the same id, on the next target, until decided.
async fn client(targets: Arc<Mutex<Vec<SocketAddr>>>, seed: u64, client: usize, n: usize) -> Vec<Answered<Instant>> {
    let mut rng = StdRng::seed_from_u64(seed * 1_000 + client as u64);
    let mut out = Vec::with_capacity(n);
    for k in 0..n {
        let (command, id) = (random_command(&mut rng), format!("s{seed}-c{client}-{k}"));
        let sent = Instant::now();
        let status = 'decided: {
            for attempt in 0.. {
                let target = {
                    let t = targets.lock().expect("targets");
                    t[(client + k + attempt) % t.len()]
                };
                match try_run(target, &command, Some(&id)).await.map(|a| a.status) {
                    Ok(status @ (201 | 204 | 404 | 409)) => break 'decided status,
                    Ok(0 | 503) | Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    Ok(other) => panic!("{command:?}: {other}"),
                }
            }
            unreachable!("the loop breaks")
        };
        out.push(Answered { id, command, status, sent, answered: Instant::now() });
    }
    out
}

/// `clients` clients of `each` commands, at once.
pub async fn load(
    targets: Arc<Mutex<Vec<SocketAddr>>>,
    seed: u64,
    clients: usize,
    each: usize,
) -> Vec<Answered<Instant>> {
    futures::stream::iter(0..clients)
        .map(|i| client(targets.clone(), seed, i, each))
        .buffer_unordered(clients)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Every record of a topic written in transactions (a control record may be a partition's
/// last offset): its key as text.
pub async fn read_topic(brokers: &str, topic: &str) -> Vec<(e2e::TopicRecord, String)> {
    let records = e2e::read_topic(brokers, topic, e2e::Silence::Ends(Duration::from_secs(3))).await;
    let key = |r: &e2e::TopicRecord| String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned();
    records
        .into_iter()
        .map(|r| {
            let k = key(&r);
            (r, k)
        })
        .collect()
}

/// The widget of a GET's body.
pub fn widget_of(body: &Value) -> Widget {
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

/// The read model of `serials`, read back through the query; `None` while a read fails.
async fn read_model(query: SocketAddr, serials: &[&str]) -> Option<Snapshot> {
    let mut widgets = Vec::new();
    for serial in serials {
        let a = try_send(query, "GET", &format!("/widgets/{}", seg(serial)), None, b"").await.ok()?;
        match a.status {
            200 => widgets.push(widget_of(&serde_json::from_str(&a.body).expect("JSON"))),
            404 => {}
            _ => return None,
        }
    }
    Some(Snapshot::from_widgets(widgets).expect("one widget per serial"))
}

/// The checker: every answer against the log (`check_history`), every
/// invariant on the replayed `2xx` history, and the read model equal to it
/// within `limit`. Returns the number of widgets at the end.
pub async fn check(
    brokers: &str,
    commands_topic: &str,
    changes_topic: &str,
    query: SocketAddr,
    answered: &[Answered<Instant>],
    limit: Duration,
) -> usize {
    let commands = read_topic(brokers, commands_topic).await;
    let partitions: BTreeSet<i32> = commands.iter().map(|(r, _)| r.partition).collect();
    assert_eq!(partitions.len(), 1, "one decision partition");
    let commands: Vec<(i64, Option<String>, Command)> = commands
        .iter()
        .map(|(r, _)| {
            let c: WidgetCommand = widgets::wire::decode_command(&r.payload).expect("a command");
            (r.offset, c.id, c.command)
        })
        .collect();
    // Each change once (a claim's re-send repeats the same bytes under the same key).
    let mut changes: BTreeMap<i64, Logged> = BTreeMap::new();
    for (r, key) in read_topic(brokers, changes_topic).await {
        if !key.starts_with("progress:") {
            let l = widgets::wire::decode_change(&r.payload).expect("a change");
            assert_eq!(key, l.record_key());
            if let Some(before) = changes.insert(l.input_offset - 1, l.clone()) {
                assert_eq!(before, l, "a change repeated is the same change");
            }
        }
    }
    let accepted = answered.iter().filter(|a| a.status < 300).count();
    let retried = commands.len() - answered.len();
    println!("{} requests answered, {accepted} accepted, {retried} retry records in the log", answered.len());
    assert_eq!(changes.len(), accepted, "one change per 2xx");
    let changes: Vec<(i64, widgets::Change)> = changes.into_iter().map(|(o, l)| (o, l.change)).collect();
    let graph = check_history(answered, &commands, &changes).unwrap_or_else(|e| panic!("{e}"));
    let expected = Snapshot::of(&graph);
    expected.check().expect("every invariant on the replayed graph");
    let observed = common::test_util::wait_until("the read model equals the replayed history", limit, || async {
        read_model(query, &SERIALS).await.filter(|o| *o == expected)
    })
    .await;
    observed.check().expect("every invariant on the read model");
    observed.len()
}
