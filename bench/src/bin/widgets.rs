//! The widgets bench (issue 22): N widgets loaded and decided, every
//! service's memory at N, a mixed load of reads and decided writes at 64
//! connections beside the same run's ceilings, and the recovery of each
//! service after `kill -9` at N widgets.
//!
//! It runs its own isolated stack (`e2e::Stack`: the release binaries, its
//! own topics, PostgreSQL schema and Redis prefix, on the shared broker,
//! PostgreSQL and Redis) and removes everything it created at the end.
//!
//! 1. Load. Widget `n` is serial `w<n>`, name `widget <n>`, ports
//!    [`PORTS`]`[n % 9]`. First through the API: `POST /widgets` on
//!    `--connections` keep-alive connections for `--api-duration` (each
//!    `201` is a decided create). If the rest would take longer than
//!    `--api-budget` at that rate, the rest goes through the **bulk path**:
//!    the create commands appended straight to the stack's
//!    `widgets.commands` in the command's own wire format
//!    (`widgets::wire::encode_command`, the shard's key, the command's
//!    idempotent `acks=all` producer settings), so the processor decides
//!    every one as usual (same rules, its replies go unread); otherwise the
//!    API loads the rest too. Each phase's clock runs from its first
//!    request (append) until `GET /widgets/<its last serial>?after=<token
//!    of its last command>` answers `200`: all of it decided and readable.
//! 2. Memory at N: `VmRSS` and `VmHWM` of each service; the processor's
//!    growth over its RSS before the load, per widget, beside the graph's
//!    own heap bytes (`analytics_processor_widgets_graph_bytes`).
//! 3. Ceilings at `--connections`: the bare-hyper `ceiling` binary under
//!    wrk (GET and POST, as `scripts/bench.sh` measures them), and this
//!    tool's own mixed client against it (the load generator's ceiling).
//! 4. Mixed load for `--duration`: 50 % `GET /widgets/{serial}` over the
//!    loaded serials, 50 % writes (40 % creates of new serials, 35 %
//!    associations of two loaded widgets on a port both have, 15 %
//!    removals of an association this connection made, 10 % deletes of a
//!    widget this connection created); closed loop, one request at a time
//!    per connection. The processor's checkpoint stages and the command's
//!    append over the run (their `/metrics` before and after) say where a
//!    write's time goes.
//! 5. Recovery: `kill -9` of the processor, restarted at once; the time
//!    until a create (with `?id=`, retried with it) is answered `201`, and
//!    until the restarted processor has claimed every partition of the
//!    workload, the shard's among them (its
//!    `analytics_processor_restores_total{workload="widgets"}`). Then the
//!    command (until a create answers), the query (until a GET answers) and
//!    the materializer (until a create is readable, then readable with its
//!    token: a started materializer first copies every changed row to Redis).
//!
//! Prints one JSON object (flat keys) as its last line.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use common::engine::config::{parse_duration, KafkaConfig};
use common::engine::kafka::{producer_config, ProducerTuning};
use common::engine::progress::{ReadToken, TOKEN_HEADER};
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::Method;
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde_json::{json, Map, Value};
use widgets::log::{WidgetCommand, SHARD_KEY};
use widgets::{Name, Ports, Serial};

/// Loads N widgets, then runs a mixed load and kills each service.
#[derive(Debug, Parser)]
struct Args {
    /// Widgets to load.
    #[arg(long, default_value = "10000000")]
    widgets: u64,
    /// Connections of the API load, the mixed load and the ceilings.
    #[arg(long, default_value = "64")]
    connections: usize,
    /// The mixed load's and each ceiling's length.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// How long the load goes through `POST /widgets` before deciding how to load the rest.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    api_duration: Duration,
    /// The rest is loaded through the API too if that takes at most this long at the API's rate, else appended.
    #[arg(long, default_value = "480s", value_parser = parse_duration)]
    api_budget: Duration,
    /// Partitions of the stack's topics (the deployment's default; the widgets use one of them).
    #[arg(long, default_value = "4")]
    partitions: u32,
    /// Only the load and the mixed load: no ceilings, no kill -9s (a quick A/B of a change by hand).
    #[arg(long)]
    mixed_only: bool,
    /// The folder of the wrk scripts.
    #[arg(long, default_value = "bench/wrk")]
    wrk_dir: PathBuf,
    /// Give up on a load after this long.
    #[arg(long, default_value = "3600s", value_parser = parse_duration)]
    load_timeout: Duration,
}

/// The ports of widget `n` are `PORTS[n % 9]`.
const PORTS: [&str; 9] = ["P", "R", "Q", "PR", "PQ", "RQ", "PRQ", "PP", "QQR"];
const SERVICES: [&str; 4] = ["command", "processor", "materializer", "query"];
/// No request of this tool waits longer (the query's longest read-your-writes wait is 30 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(40);

fn serial(n: u64) -> String {
    format!("w{n}")
}

fn create_body(serial: &str, name: &str, ports: &str) -> String {
    json!({"serial": serial, "name": name, "ports": ports}).to_string()
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// One keep-alive connection, opened again after a failure.
struct Conn {
    addr: SocketAddr,
    sender: Option<SendRequest<Full<Bytes>>>,
}

/// What a request answered.
struct Answer {
    status: u16,
    token: Option<String>,
    body: Bytes,
}

impl Conn {
    fn new(addr: SocketAddr) -> Self {
        Conn { addr, sender: None }
    }

    async fn call(&mut self, method: Method, path: &str, body: Option<String>) -> anyhow::Result<Answer> {
        let result = tokio::time::timeout(REQUEST_TIMEOUT, self.try_call(method, path, body)).await;
        match result {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => {
                self.sender = None;
                Err(e)
            }
            Err(_) => {
                self.sender = None;
                anyhow::bail!("no answer within {REQUEST_TIMEOUT:?}")
            }
        }
    }

    async fn try_call(&mut self, method: Method, path: &str, body: Option<String>) -> anyhow::Result<Answer> {
        if self.sender.is_none() {
            let stream = tokio::net::TcpStream::connect(self.addr).await?;
            stream.set_nodelay(true)?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            self.sender = Some(sender);
        }
        let sender = self.sender.as_mut().expect("connected above");
        sender.ready().await?;
        let mut req = hyper::Request::builder().method(method).uri(path).header(hyper::header::HOST, "bench");
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let resp = sender.send_request(req.body(Full::new(body.map(Bytes::from).unwrap_or_default()))?).await?;
        let status = resp.status().as_u16();
        let token = resp.headers().get(TOKEN_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Answer { status, token, body })
    }
}

/// The furthest of two read tokens (one decision partition: by offset).
fn furthest(a: Option<ReadToken>, b: Option<ReadToken>) -> Option<ReadToken> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.offset > a.offset { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// Waits until `GET /widgets/<serial>?after=<token>` answers 200: the command
/// of `token` and everything before it decided and in the read model.
async fn wait_readable(query: SocketAddr, serial: &str, token: &ReadToken, limit: Duration) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + limit;
    let path = format!("/widgets/{serial}?after={}&wait_ms=30000", token.encode());
    let mut conn = Conn::new(query);
    loop {
        if let Ok(Answer { status: 200, .. }) = conn.call(Method::GET, &path, None).await {
            return Ok(Instant::now());
        }
        anyhow::ensure!(Instant::now() < deadline, "{serial} not readable after {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Latencies and statuses of a set of requests.
#[derive(Default, Clone)]
struct Tally {
    latencies_secs: Vec<f64>,
    ok: u64,
    client_errors: u64,
    unavailable: u64,
    other: u64,
    errors: u64,
}

impl Tally {
    fn record(&mut self, started: Instant, answer: &anyhow::Result<Answer>) {
        match answer {
            Ok(a) => {
                self.latencies_secs.push(started.elapsed().as_secs_f64());
                match a.status {
                    200..=299 => self.ok += 1,
                    503 => self.unavailable += 1,
                    400..=499 => self.client_errors += 1,
                    _ => self.other += 1,
                }
            }
            Err(_) => self.errors += 1,
        }
    }

    fn merge(&mut self, o: Tally) {
        self.latencies_secs.extend(o.latencies_secs);
        self.ok += o.ok;
        self.client_errors += o.client_errors;
        self.unavailable += o.unavailable;
        self.other += o.other;
        self.errors += o.errors;
    }

    /// `<prefix>_{requests,rps,p50_ms,p99_ms,p999_ms,2xx,4xx,503,other,errors}`.
    fn put(self, out: &mut Map<String, Value>, prefix: &str, over: Duration) {
        let requests = self.latencies_secs.len();
        let ms = bench::sorted_ms(self.latencies_secs);
        out.insert(format!("{prefix}_requests"), json!(requests));
        out.insert(format!("{prefix}_rps"), bench::json_num(requests as f64 / over.as_secs_f64()));
        out.insert(format!("{prefix}_p50_ms"), bench::json_num(bench::quantile(&ms, 0.5)));
        out.insert(format!("{prefix}_p99_ms"), bench::json_num(bench::quantile(&ms, 0.99)));
        out.insert(format!("{prefix}_p999_ms"), bench::json_num(bench::quantile(&ms, 0.999)));
        out.insert(format!("{prefix}_2xx"), json!(self.ok));
        out.insert(format!("{prefix}_4xx"), json!(self.client_errors));
        out.insert(format!("{prefix}_503"), json!(self.unavailable));
        out.insert(format!("{prefix}_other"), json!(self.other));
        out.insert(format!("{prefix}_errors"), json!(self.errors));
    }
}

/// What an API load phase did.
struct ApiLoad {
    tally: Tally,
    /// Serials `from..next` were sent (some may have failed: see the tally).
    next: u64,
    /// The last create answered 201: its serial and token.
    last: Option<(String, ReadToken)>,
}

/// `POST /widgets` of serials from `from` up to `to`, on `connections`
/// connections, until `deadline` (if any).
async fn api_load(command: SocketAddr, connections: usize, from: u64, to: u64, deadline: Option<Instant>) -> ApiLoad {
    let next = Arc::new(AtomicU64::new(from));
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let next = next.clone();
            tokio::spawn(async move {
                let (mut tally, mut last) = (Tally::default(), None::<(String, ReadToken)>);
                let mut conn = Conn::new(command);
                while deadline.is_none_or(|d| Instant::now() < d) {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= to {
                        break;
                    }
                    let s = serial(n);
                    let body = create_body(&s, &format!("widget {n}"), PORTS[(n % 9) as usize]);
                    let started = Instant::now();
                    let answer = conn.call(Method::POST, "/widgets", Some(body)).await;
                    tally.record(started, &answer);
                    if let Ok(Answer { status: 201, token: Some(t), .. }) = &answer {
                        if let Ok(t) = ReadToken::parse(t) {
                            if last.as_ref().is_none_or(|(_, l)| t.offset > l.offset) {
                                last = Some((s, t));
                            }
                        }
                    }
                }
                (tally, last)
            })
        })
        .collect();
    let (mut tally, mut last) = (Tally::default(), None::<(String, ReadToken)>);
    for t in tasks {
        let (t_tally, t_last) = t.await.expect("an API load task");
        tally.merge(t_tally);
        if let Some((s, t)) = t_last {
            if last.as_ref().is_none_or(|(_, l)| t.offset > l.offset) {
                last = Some((s, t));
            }
        }
    }
    ApiLoad { tally, next: next.load(Ordering::Relaxed).min(to), last }
}

/// The bulk path: create commands of serials `from..to` appended straight to
/// the commands topic, as the command appends them. Returns the token of the
/// last one and the time the appends took.
async fn bulk_load(brokers: &str, topic: &str, from: u64, to: u64) -> anyhow::Result<(ReadToken, Duration)> {
    let kafka = KafkaConfig::new(brokers, false);
    let tuning = ProducerTuning {
        linger: Duration::from_millis(20),
        delivery_timeout: Duration::from_secs(120),
        queue_max_messages: 1_000_000,
    };
    let producer: FutureProducer =
        producer_config(&kafka, "bench-widgets-bulk", tuning).set("batch.size", "1000000").create()?;
    let mut rng = rand::rng();
    let mut pending = futures::stream::FuturesUnordered::new();
    let mut last: Option<ReadToken> = None;
    let started = Instant::now();
    for n in from..to {
        let command = widgets::Command::Create {
            serial: Serial::parse(&serial(n)).expect("a bench serial is valid"),
            name: Name::parse(&format!("widget {n}")).expect("a bench name is valid"),
            ports: Ports::parse(PORTS[(n % 9) as usize]).expect("bench ports are valid"),
        };
        let request = uuid::Builder::from_random_bytes(rng.random()).into_uuid();
        let payload = widgets::wire::encode_command(&WidgetCommand {
            request,
            id: None,
            command,
            accepted_at_ms: common::now_ms(),
        });
        let p = producer.clone();
        pending.push(async move {
            let record = FutureRecord::to(topic).key(SHARD_KEY).payload(&payload);
            p.send(record, Timeout::After(Duration::from_secs(120))).await.map_err(|(e, _)| e)
        });
        if pending.len() >= 100_000 {
            let d = pending.next().await.expect("one pending")?;
            last =
                furthest(last, Some(ReadToken { topic: topic.to_owned(), partition: d.partition, offset: d.offset }));
        }
    }
    while let Some(r) = pending.next().await {
        let d = r?;
        last = furthest(last, Some(ReadToken { topic: topic.to_owned(), partition: d.partition, offset: d.offset }));
    }
    Ok((last.ok_or_else(|| anyhow::anyhow!("nothing appended"))?, started.elapsed()))
}

/// A service's `/metrics` text (empty if it does not answer).
async fn metrics(addr: SocketAddr) -> String {
    match Conn::new(addr).call(Method::GET, "/metrics", None).await {
        Ok(a) if a.status == 200 => String::from_utf8_lossy(&a.body).into_owned(),
        _ => String::new(),
    }
}

/// The sum of a metric's series whose labels include every one of `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').map_or((series, ""), |(m, r)| (m, r));
            (metric == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// A histogram's buckets (upper bound → cumulative count) for the series with `labels`.
fn buckets(text: &str, name: &str, labels: &[(&str, &str)]) -> BTreeMap<String, f64> {
    let bucket = format!("{name}_bucket");
    text.lines()
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{')?;
            if metric != bucket || !labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))) {
                return None;
            }
            let le = rest.split("le=\"").nth(1)?.split('"').next()?.to_owned();
            Some((le, value.parse().ok()?))
        })
        .collect()
}

/// The smallest bucket bound at or above quantile `q` of the observations between two scrapes, in ms.
fn bucket_quantile_ms(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, q: f64) -> Option<f64> {
    let mut deltas: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, v)| {
            let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::INFINITY) };
            (bound, v - before.get(le).copied().unwrap_or(0.0))
        })
        .collect();
    deltas.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = deltas.last()?.1;
    if total <= 0.0 {
        return None;
    }
    deltas.iter().find(|(_, c)| *c >= q * total).map(|(b, _)| b * 1000.0)
}

/// One wrk run; its JSON summary (bench/wrk/common.lua).
fn wrk(args: &Args, script: &str, url: &str) -> anyhow::Result<Map<String, Value>> {
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{}", args.connections),
            &format!("-d{}s", args.duration.as_secs().max(1)),
            "--timeout",
            "10s",
            "-s",
        ])
        .arg(args.wrk_dir.join(script))
        .arg(url)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    match serde_json::from_str(text.lines().last().unwrap_or("{}")) {
        Ok(Value::Object(m)) => Ok(m),
        _ => anyhow::bail!("wrk printed no summary: {text}"),
    }
}

fn put_wrk(out: &mut Map<String, Value>, prefix: &str, run: &Map<String, Value>) {
    for k in ["rps", "p50_ms", "p99_ms", "p999_ms", "non_2xx", "socket_errors", "requests"] {
        if let Some(v) = run.get(k) {
            out.insert(format!("{prefix}_{k}"), v.clone());
        }
    }
}

/// The mixed load's tallies: reads, and writes by kind.
#[derive(Default)]
struct Mixed {
    reads: Tally,
    creates: Tally,
    associations: Tally,
    dissociations: Tally,
    deletes: Tally,
}

/// One connection of the mixed load: 50 % reads of the loaded serials, 50 %
/// writes (see the module's doc), until `end`.
async fn mixed_connection(command: SocketAddr, query: SocketAddr, loaded: u64, conn: usize, end: Instant) -> Mixed {
    let mut rng = StdRng::seed_from_u64(conn as u64);
    let (mut writes, mut reads) = (Conn::new(command), Conn::new(query));
    let mut m = Mixed::default();
    // What this connection made, to remove later (its own, so another connection never removes it first).
    let (mut created, mut associated): (Vec<String>, Vec<(u64, u64, char)>) = (Vec::new(), Vec::new());
    let mut k = 0u64;
    while Instant::now() < end {
        let started = Instant::now();
        if rng.random_bool(0.5) {
            let answer =
                reads.call(Method::GET, &format!("/widgets/{}", serial(rng.random_range(0..loaded))), None).await;
            m.reads.record(started, &answer);
            continue;
        }
        match rng.random_range(0..100) {
            0..40 => {
                k += 1;
                let s = format!("x{conn}-{k}");
                let body = create_body(&s, "mixed", PORTS[rng.random_range(0..PORTS.len())]);
                let answer = writes.call(Method::POST, "/widgets", Some(body)).await;
                m.creates.record(started, &answer);
                if matches!(answer, Ok(Answer { status: 201, .. })) {
                    created.push(s);
                }
            }
            40..75 => {
                // Two loaded widgets with the same ports, on one of them.
                let a = rng.random_range(0..loaded);
                let b = (rng.random_range(0..loaded / 9) * 9 + a % 9).min(loaded - 1);
                let ports = PORTS[(a % 9) as usize].as_bytes();
                let port = ports[rng.random_range(0..ports.len())] as char;
                let body = json!({"with": serial(b), "port": port.to_string()}).to_string();
                let answer =
                    writes.call(Method::POST, &format!("/widgets/{}/associations", serial(a)), Some(body)).await;
                m.associations.record(started, &answer);
                if matches!(answer, Ok(Answer { status: 201, .. })) {
                    associated.push((a, b, port));
                }
            }
            75..90 => {
                let (a, b, port) = if associated.is_empty() {
                    (rng.random_range(0..loaded), rng.random_range(0..loaded), 'P')
                } else {
                    associated.swap_remove(rng.random_range(0..associated.len()))
                };
                let path = format!("/widgets/{}/associations/{}/{port}", serial(a), serial(b));
                let answer = writes.call(Method::DELETE, &path, None).await;
                m.dissociations.record(started, &answer);
            }
            _ => {
                let s = if created.is_empty() {
                    serial(rng.random_range(0..loaded))
                } else {
                    created.swap_remove(rng.random_range(0..created.len()))
                };
                let answer = writes.call(Method::DELETE, &format!("/widgets/{s}"), None).await;
                m.deletes.record(started, &answer);
            }
        }
    }
    m
}

async fn mixed_load(command: SocketAddr, query: SocketAddr, loaded: u64, connections: usize, d: Duration) -> Mixed {
    let end = Instant::now() + d;
    let tasks: Vec<_> =
        (0..connections).map(|c| tokio::spawn(mixed_connection(command, query, loaded, c, end))).collect();
    let mut all = Mixed::default();
    for t in tasks {
        let m = t.await.expect("a mixed load task");
        all.reads.merge(m.reads);
        all.creates.merge(m.creates);
        all.associations.merge(m.associations);
        all.dissociations.merge(m.dissociations);
        all.deletes.merge(m.deletes);
    }
    all
}

fn put_mixed(out: &mut Map<String, Value>, prefix: &str, m: Mixed, d: Duration) {
    let mut writes = Tally::default();
    let mut kinds = Vec::new();
    for (name, t) in [
        ("creates", m.creates),
        ("associations", m.associations),
        ("dissociations", m.dissociations),
        ("deletes", m.deletes),
    ] {
        kinds.push((name, t.latencies_secs.len(), t.ok, t.client_errors));
        writes.merge(t);
    }
    for (name, requests, ok, client_errors) in kinds {
        out.insert(format!("{prefix}_{name}_requests"), json!(requests));
        out.insert(format!("{prefix}_{name}_2xx"), json!(ok));
        out.insert(format!("{prefix}_{name}_4xx"), json!(client_errors));
    }
    let mut all = m.reads.clone();
    all.merge(writes.clone());
    all.put(out, prefix, d);
    m.reads.put(out, &format!("{prefix}_reads"), d);
    writes.put(out, &format!("{prefix}_writes"), d);
}

/// Sends one create with `?id=` until it is answered 201 (retried with the same id); the instant it was.
async fn create_until_decided(
    command: SocketAddr,
    serial: &str,
    limit: Duration,
) -> anyhow::Result<(Instant, ReadToken)> {
    let deadline = Instant::now() + limit;
    let path = format!("/widgets?id={serial}");
    let mut conn = Conn::new(command);
    loop {
        if let Ok(Answer { status: 201, token, .. }) =
            conn.call(Method::POST, &path, Some(create_body(serial, "recovery", "PRQ"))).await
        {
            let token = ReadToken::parse(&token.unwrap_or_default()).map_err(|e| anyhow::anyhow!("{e}"))?;
            return Ok((Instant::now(), token));
        }
        anyhow::ensure!(Instant::now() < deadline, "no create of {serial} decided within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn load(args: &Args, stack: &e2e::Stack, out: &mut Map<String, Value>) -> anyhow::Result<u64> {
    let (command, query) = (stack.addr("command"), stack.addr("query"));
    let n = args.widgets;
    eprintln!("[widgets] API load: POST /widgets at {} connections for {:?}", args.connections, args.api_duration);
    let t0 = Instant::now();
    let api = api_load(command, args.connections, 0, n, Some(t0 + args.api_duration)).await;
    let api_sent = t0.elapsed();
    let Some((last_serial, last_token)) = api.last.clone() else { anyhow::bail!("no create was answered 201") };
    let readable = wait_readable(query, &last_serial, &last_token, args.load_timeout).await?;
    let api_created = api.tally.ok;
    out.insert("widgets_api_load_created".into(), json!(api_created));
    out.insert("widgets_api_load_sent_s".into(), json!(secs(api_sent)));
    out.insert("widgets_api_load_readable_s".into(), json!(secs(readable - t0)));
    // Decided: every 201 answered; readable: the last one's token reflected in the read model.
    out.insert("widgets_api_load_per_sec".into(), bench::json_num(api_created as f64 / api_sent.as_secs_f64()));
    out.insert(
        "widgets_api_load_readable_per_sec".into(),
        bench::json_num(api_created as f64 / (readable - t0).as_secs_f64()),
    );
    api.tally.put(out, "widgets_api_load", api_sent);
    let rest = n - api.next;
    if rest == 0 {
        out.insert("widgets_load_bulk".into(), json!(0));
        return Ok(n);
    }
    let api_rate = api_created as f64 / api_sent.as_secs_f64();
    let projected = Duration::from_secs_f64(rest as f64 / api_rate.max(1.0));
    out.insert("widgets_api_projected_rest_s".into(), json!(secs(projected)));
    if projected <= args.api_budget {
        eprintln!("[widgets] the other {rest} through the API too (projected {projected:?})");
        let t1 = Instant::now();
        let more = api_load(command, args.connections, api.next, n, None).await;
        let (s, t) = more.last.clone().ok_or_else(|| anyhow::anyhow!("no create was answered 201"))?;
        let readable = wait_readable(query, &s, &t, args.load_timeout).await?;
        out.insert("widgets_load_bulk".into(), json!(0));
        out.insert("widgets_api_rest_created".into(), json!(more.tally.ok));
        out.insert("widgets_api_rest_readable_s".into(), json!(secs(readable - t1)));
        out.insert("widgets_load_s".into(), json!(secs(readable - t0)));
        out.insert("widgets_load_per_sec".into(), bench::json_num(n as f64 / (readable - t0).as_secs_f64()));
        return Ok(n);
    }
    eprintln!("[widgets] the other {rest} by the bulk path (the API would take {projected:?})");
    let topic = stack.topic("widgets_commands_topic");
    let processor = stack.addr("processor");
    let applied_before =
        metric(&metrics(processor).await, "analytics_processor_events_applied_total", &[("workload", "widgets")]);
    let t1 = Instant::now();
    let (token, appended) = bulk_load(&stack.kafka.brokers, &topic, api.next, n).await?;
    // Decided: the processor has applied every command up to the last appended (it counts at each checkpoint).
    let target = applied_before + rest as f64;
    let deadline = t1 + args.load_timeout;
    let decided = loop {
        let applied =
            metric(&metrics(processor).await, "analytics_processor_events_applied_total", &[("workload", "widgets")]);
        if applied >= target {
            break Instant::now();
        }
        anyhow::ensure!(Instant::now() < deadline, "the processor applied {applied} of {target}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let readable = wait_readable(query, &serial(n - 1), &token, args.load_timeout).await?;
    out.insert("widgets_load_bulk".into(), json!(1));
    out.insert("widgets_bulk_widgets".into(), json!(rest));
    out.insert("widgets_bulk_append_s".into(), json!(secs(appended)));
    out.insert("widgets_bulk_decided_s".into(), json!(secs(decided - t1)));
    out.insert("widgets_bulk_readable_s".into(), json!(secs(readable - t1)));
    out.insert("widgets_bulk_append_per_sec".into(), bench::json_num(rest as f64 / appended.as_secs_f64()));
    out.insert("widgets_bulk_decided_per_sec".into(), bench::json_num(rest as f64 / (decided - t1).as_secs_f64()));
    out.insert("widgets_bulk_per_sec".into(), bench::json_num(rest as f64 / (readable - t1).as_secs_f64()));
    Ok(n)
}

/// The processor's checkpoint stages and the command's append, as counters to subtract.
struct WriteCosts {
    processor: String,
    command: String,
}

async fn write_costs(stack: &e2e::Stack) -> WriteCosts {
    WriteCosts { processor: metrics(stack.addr("processor")).await, command: metrics(stack.addr("command")).await }
}

fn put_write_costs(out: &mut Map<String, Value>, before: &WriteCosts, after: &WriteCosts) {
    let w = [("workload", "widgets")];
    let delta = |before: &str, after: &str, name: &str, labels: &[(&str, &str)]| {
        metric(after, name, labels) - metric(before, name, labels)
    };
    let stage = "analytics_processor_checkpoint_stage_duration_seconds";
    let whole = "analytics_processor_checkpoint_duration_seconds";
    let (p0, p1) = (before.processor.as_str(), after.processor.as_str());
    let checkpoints = delta(p0, p1, &format!("{whole}_count"), &w);
    out.insert("widgets_mixed_checkpoints".into(), json!(checkpoints));
    if checkpoints > 0.0 {
        let avg = |name: &str, labels: &[(&str, &str)]| {
            bench::json_num(delta(p0, p1, &format!("{name}_sum"), labels) / checkpoints * 1000.0)
        };
        out.insert("widgets_mixed_checkpoint_avg_ms".into(), avg(whole, &w));
        out.insert(
            "widgets_mixed_checkpoint_store_avg_ms".into(),
            avg(stage, &[("workload", "widgets"), ("stage", "store")]),
        );
        out.insert(
            "widgets_mixed_checkpoint_emit_avg_ms".into(),
            avg(stage, &[("workload", "widgets"), ("stage", "emit")]),
        );
        let q = bucket_quantile_ms(&buckets(p0, whole, &w), &buckets(p1, whole, &w), 0.99);
        out.insert("widgets_mixed_checkpoint_p99_bucket_ms".into(), json!(q));
        let busy = delta(p0, p1, &format!("{whole}_sum"), &w);
        out.insert("widgets_mixed_checkpoint_busy_s".into(), bench::json_num(busy));
    }
    let produce = "analytics_command_produce_duration_seconds";
    let (c0, c1) = (before.command.as_str(), after.command.as_str());
    let appends = delta(c0, c1, &format!("{produce}_count"), &w);
    if appends > 0.0 {
        out.insert(
            "widgets_mixed_append_avg_ms".into(),
            bench::json_num(delta(c0, c1, &format!("{produce}_sum"), &w) / appends * 1000.0),
        );
        let q = bucket_quantile_ms(&buckets(c0, produce, &w), &buckets(c1, produce, &w), 0.99);
        out.insert("widgets_mixed_append_p99_bucket_ms".into(), json!(q));
    }
}

async fn ceilings(args: &Args, out: &mut Map<String, Value>) -> anyhow::Result<()> {
    let ceiling_bin = std::env::current_exe()?.with_file_name("ceiling");
    for mode in ["get", "post"] {
        eprintln!("[widgets] {mode} ceiling (bare hyper, wrk)");
        let port = e2e::free_port();
        let mut ceiling =
            Command::new(&ceiling_bin).args(["--listen", &format!("127.0.0.1:{port}"), "--mode", mode]).spawn()?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let run = wrk(args, &format!("{mode}.lua"), &format!("http://127.0.0.1:{port}"));
        if mode == "get" {
            // The same server under this tool's own mixed client: the load generator's ceiling.
            eprintln!("[widgets] the mixed client against the GET ceiling");
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
            let m = mixed_load(addr, addr, 1_000, args.connections, args.duration).await;
            put_mixed(out, "widgets_mixed_ceiling", m, args.duration);
        }
        let _ = ceiling.kill();
        let _ = ceiling.wait();
        put_wrk(out, &format!("widgets_{mode}_ceiling"), &run?);
    }
    Ok(())
}

async fn recovery(args: &Args, stack: &mut e2e::Stack, out: &mut Map<String, Value>) -> anyhow::Result<()> {
    let limit = Duration::from_secs(120);
    eprintln!("[widgets] kill -9 of the processor");
    let killed = Instant::now();
    stack.kill9("processor");
    let command = stack.addr("command");
    let probe = tokio::spawn(async move { create_until_decided(command, "recovery-processor", limit).await });
    stack.start("processor", e2e::Service::Processor).await;
    let ready = killed.elapsed();
    let processor = stack.addr("processor");
    // Every partition of the workload claimed (the shard's is one of them; the others are empty).
    let restored = loop {
        let text = metrics(processor).await;
        let claims = metric(&text, "analytics_processor_restores_total", &[("workload", "widgets")]);
        if claims >= f64::from(args.partitions) {
            let restore_s =
                metric(&text, "analytics_processor_restore_duration_seconds_sum", &[("workload", "widgets")]);
            out.insert("widgets_recovery_processor_claims_s".into(), bench::json_num(restore_s));
            break killed.elapsed();
        }
        anyhow::ensure!(killed.elapsed() < limit, "the processor did not restore the widgets within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (decided, _) = probe.await??;
    out.insert("widgets_recovery_processor_ready_s".into(), json!(secs(ready)));
    out.insert("widgets_recovery_processor_all_claimed_s".into(), json!(secs(restored)));
    out.insert("widgets_recovery_processor_write_s".into(), json!(secs(decided - killed)));
    tokio::time::sleep(Duration::from_secs(6)).await; // the gauges refresh every 5 s
    let text = metrics(processor).await;
    out.insert(
        "widgets_recovery_processor_graph_widgets".into(),
        json!(metric(&text, "analytics_processor_widgets", &[])),
    );
    let (hwm, rss) = bench::memory_kb(stack.pid("processor"));
    out.insert("widgets_recovery_processor_rss_kb".into(), json!(rss));
    out.insert("widgets_recovery_processor_hwm_kb".into(), json!(hwm));

    eprintln!("[widgets] kill -9 of the command");
    let killed = Instant::now();
    stack.kill9("command");
    let command = stack.start("command", e2e::Service::Command).await;
    let (decided, _) = create_until_decided(command, "recovery-command", limit).await?;
    out.insert("widgets_recovery_command_write_s".into(), json!(secs(decided - killed)));

    eprintln!("[widgets] kill -9 of the query");
    let killed = Instant::now();
    stack.kill9("query");
    let query = stack.start("query", e2e::Service::Query).await;
    let mut conn = Conn::new(query);
    let path = format!("/widgets/{}", serial(args.widgets / 2));
    loop {
        if let Ok(Answer { status: 200, .. }) = conn.call(Method::GET, &path, None).await {
            break;
        }
        anyhow::ensure!(killed.elapsed() < limit, "the query did not answer within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    out.insert("widgets_recovery_query_read_s".into(), json!(secs(killed.elapsed())));

    eprintln!("[widgets] kill -9 of the materializer");
    let killed = Instant::now();
    stack.kill9("materializer");
    stack.start("materializer", e2e::Service::Materializer).await;
    let (_, token) = create_until_decided(command, "recovery-materializer", limit).await?;
    // Readable at all (a plain GET), then with its token: a started materializer copies every changed row to Redis
    // before its progress marks move, so the token waits for that catch-up.
    let mut conn = Conn::new(stack.addr("query"));
    loop {
        if let Ok(Answer { status: 200, .. }) = conn.call(Method::GET, "/widgets/recovery-materializer", None).await {
            break;
        }
        anyhow::ensure!(killed.elapsed() < limit, "the materializer did not write a change within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    out.insert("widgets_recovery_materializer_row_s".into(), json!(secs(killed.elapsed())));
    let readable =
        wait_readable(stack.addr("query"), "recovery-materializer", &token, Duration::from_secs(900)).await?;
    out.insert("widgets_recovery_materializer_readable_s".into(), json!(secs(readable - killed)));

    Ok(())
}

async fn measure(args: &Args, stack: &mut e2e::Stack) -> anyhow::Result<Map<String, Value>> {
    let mut out = Map::new();
    stack.env("EVENTS_PARTITIONS", &args.partitions.to_string());
    stack.start_all().await;
    let rest: Vec<(u64, u64)> = SERVICES.iter().map(|s| bench::memory_kb(stack.pid(s))).collect();

    let loaded = load(args, stack, &mut out).await?;
    tokio::time::sleep(Duration::from_secs(6)).await; // the gauges refresh every 5 s
    let text = metrics(stack.addr("processor")).await;
    let (graph_widgets, graph_bytes) = (
        metric(&text, "analytics_processor_widgets", &[]),
        metric(&text, "analytics_processor_widgets_graph_bytes", &[]),
    );
    out.insert("widgets_graph_widgets".into(), json!(graph_widgets));
    out.insert("widgets_graph_bytes".into(), json!(graph_bytes));
    if graph_widgets > 0.0 {
        out.insert("widgets_graph_bytes_per_widget".into(), bench::json_num(graph_bytes / graph_widgets));
    }
    for (s, (rest_hwm, rest_rss)) in SERVICES.iter().zip(&rest) {
        let (hwm, rss) = bench::memory_kb(stack.pid(s));
        out.insert(format!("widgets_rss_kb_{s}_rest"), json!(rest_rss));
        out.insert(format!("widgets_hwm_kb_{s}_rest"), json!(rest_hwm));
        out.insert(format!("widgets_rss_kb_{s}"), json!(rss));
        out.insert(format!("widgets_hwm_kb_{s}"), json!(hwm));
        if *s == "processor" && graph_widgets > 0.0 {
            let per = (rss.saturating_sub(*rest_rss) * 1024) as f64 / graph_widgets;
            out.insert("widgets_processor_rss_bytes_per_widget".into(), bench::json_num(per));
        }
    }
    let (pg, conn) = tokio_postgres::connect(&stack.pg.url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    for table in ["processor_widgets", "widgets"] {
        let sql = format!("SELECT pg_total_relation_size('{}.{table}')", stack.pg.schema);
        let bytes: i64 = pg.query_one(sql.as_str(), &[]).await?.get(0);
        out.insert(format!("widgets_pg_bytes_{table}"), json!(bytes));
    }

    if !args.mixed_only {
        ceilings(args, &mut out).await?;
    }
    eprintln!("[widgets] mixed load: {} connections, {:?}", args.connections, args.duration);
    let before = write_costs(stack).await;
    let m = mixed_load(stack.addr("command"), stack.addr("query"), loaded, args.connections, args.duration).await;
    let after = write_costs(stack).await;
    put_mixed(&mut out, "widgets_mixed", m, args.duration);
    put_write_costs(&mut out, &before, &after);

    if args.mixed_only {
        return Ok(out);
    }
    // What recovery measured is kept even if a step gives up.
    if let Err(e) = recovery(args, stack, &mut out).await {
        eprintln!("[widgets] recovery: {e:#}");
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    bench::require_wrk()?;
    anyhow::ensure!(args.widgets >= 9 && args.connections > 0, "--widgets must be at least 9, --connections positive");
    // The release binaries next to this one (e2e::Stack looks next to a test executable otherwise).
    if std::env::var_os("ANALYTICS_BIN_DIR").is_none() {
        std::env::set_var("ANALYTICS_BIN_DIR", std::env::current_exe()?.parent().expect("a folder"));
    }
    let mut stack = e2e::Stack::new();
    // Interrupted (SIGINT, or SIGTERM as `timeout` sends), it still removes what it created.
    let stop = common::engine::shutdown::on_signals();
    let result = tokio::select! {
        r = measure(&args, &mut stack) => r,
        _ = stop.cancelled() => Err(anyhow::anyhow!("interrupted")),
    };
    stack.cleanup().await;
    let mut out = result?;
    out.insert("widgets_widgets".into(), json!(args.widgets));
    out.insert("widgets_partitions".into(), json!(args.partitions));
    out.insert("widgets_connections".into(), json!(args.connections));
    out.insert("widgets_duration_s".into(), json!(args.duration.as_secs_f64()));
    println!("{}", Value::Object(out));
    Ok(())
}
