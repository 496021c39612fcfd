//! A test harness that runs the four service binaries as real processes
//! against the real broker, Redis and PostgreSQL, each test with its own
//! topics, schema and key prefix, and cleans up after itself.
//!
//! The binaries are taken from the cargo target directory next to the test
//! executable (`make test` builds them first), or from `ANALYTICS_BIN_DIR`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use analytics::{HourCounts, HourStart};
use common::engine::config::{PgConfig, RedisConfig};
use common::test_util::{self, http, TestKafka};
use platform::isolation::{self, FlagKind};

/// One of the four services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    Command,
    Processor,
    Materializer,
    Query,
}

impl Service {
    fn bin(self) -> &'static str {
        match self {
            Service::Command => "command",
            Service::Processor => "processor",
            Service::Materializer => "materializer",
            Service::Query => "query",
        }
    }

    fn listen_flag(self) -> &'static str {
        match self {
            Service::Command | Service::Query => "--listen",
            Service::Processor | Service::Materializer => "--ops-listen",
        }
    }
}

struct Running {
    child: Child,
    addr: SocketAddr,
    /// Its address of each workload listener flag ([`isolation::flags`]), by the flag's id.
    listeners: BTreeMap<String, SocketAddr>,
}

/// An isolated deployment of the pipeline.
pub struct Stack {
    pub kafka: TestKafka,
    pub redis: RedisConfig,
    pub pg: PgConfig,
    logs: PathBuf,
    procs: HashMap<String, Running>,
    extra_env: Vec<(String, String)>,
    /// Names this stack's workload topics ([`isolation::topic`]).
    suffix: String,
}

/// Where the service binaries are: `ANALYTICS_BIN_DIR`, or the cargo
/// target folder next to the test executable.
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("ANALYTICS_BIN_DIR") {
        return dir.into();
    }
    // target/<profile>/deps/<test-binary> → target/<profile>
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent().and_then(|p| p.parent()).expect("target/<profile>").to_path_buf()
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

impl Stack {
    pub fn new() -> Self {
        let suffix = test_util::unique_suffix();
        let (kafka, redis, pg) = test_util::isolated(&suffix);
        let logs = bin_dir().join("e2e-logs").join(&suffix);
        std::fs::create_dir_all(&logs).expect("creating the log folder");
        // The query's local copies of bulk generations: in the stack's folder, gone with it.
        let copies = logs.join("copies").to_string_lossy().into_owned();
        let extra_env = vec![("QUERY_BULK_COPIES_DIR".to_owned(), copies)];
        Stack { kafka, redis, pg, logs, procs: HashMap::new(), extra_env, suffix }
    }

    /// The folder of the query instances' local copies of bulk generations (`<dir>/<pid>/`).
    pub fn copies_dir(&self) -> PathBuf {
        self.logs.join("copies")
    }

    /// Adds an environment variable for every service started afterwards.
    pub fn env(&mut self, key: &str, value: &str) {
        self.extra_env.push((key.into(), value.into()));
    }

    /// Starts an instance named `name` (e.g. `processor-2`) and waits until it is ready.
    pub async fn start(&mut self, name: &str, service: Service) -> SocketAddr {
        let path = bin_dir().join(service.bin());
        assert!(path.exists(), "{} is missing: build the binaries first (cargo build --bins)", path.display());
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("socket address");
        // A port of its own for each workload listener, so that instances and stacks run side by side.
        let listeners: BTreeMap<String, SocketAddr> = isolation::flags()
            .iter()
            .filter(|f| f.kind == FlagKind::Listener)
            .map(|f| (f.id.clone(), SocketAddr::from(([127, 0, 0, 1], free_port()))))
            .collect();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{name}.log")))
            .expect("opening a log file");
        let mut cmd = Command::new(&path);
        cmd.arg(service.listen_flag())
            .arg(addr.to_string())
            .env("KAFKA_BROKERS", &self.kafka.brokers)
            .env("EVENTS_TOPIC", &self.kafka.events_topic)
            .env("EVENTS_PARTITIONS", self.kafka.events_partitions.to_string())
            .env("AGGREGATES_TOPIC", &self.kafka.aggregates_topic)
            .env("AGGREGATES_PARTITIONS", self.kafka.aggregates_partitions.to_string())
            .env("INCREMENTS_EVENTS_TOPIC", &self.kafka.increments_events_topic)
            .env("INCREMENTS_SUMS_TOPIC", &self.kafka.increments_sums_topic)
            .env("PROCESSOR_GROUP", format!("processor-{}", self.pg.schema))
            .env("MATERIALIZER_GROUP", format!("materializer-{}", self.pg.schema))
            .env("REDIS_URL", &self.redis.url)
            .env("REDIS_KEY_PREFIX", &self.redis.key_prefix)
            .env("REDIS_CLUSTER", self.redis.cluster.to_string())
            .env("PG_URL", &self.pg.url)
            .env("PG_SCHEMA", &self.pg.schema)
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(log.try_clone().expect("cloning a file handle")))
            .stderr(Stdio::from(log));
        for flag in isolation::flags() {
            match flag.kind {
                FlagKind::Topic => cmd.env(&flag.env, self.topic(&flag.id)),
                FlagKind::Listener => cmd.env(&flag.env, listeners[&flag.id].to_string()),
            };
        }
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawning a service");
        self.procs.insert(name.to_owned(), Running { child, addr, listeners });
        self.wait_ready(name).await;
        addr
    }

    async fn wait_ready(&mut self, name: &str) {
        let addr = self.procs[name].addr;
        let logs = self.logs.clone();
        for _ in 0..300 {
            if let Ok((200, _)) = http(addr, "GET", "/ready").await {
                return;
            }
            if let Some(status) = self.procs.get_mut(name).and_then(|r| r.child.try_wait().ok().flatten()) {
                panic!("{name} exited with {status} before it was ready; see {}", logs.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{name} not ready after 30 s; see {}", logs.display());
    }

    pub fn addr(&self, name: &str) -> SocketAddr {
        self.procs[name].addr
    }

    /// The address a running instance serves a workload listener flag on
    /// (e.g. `answers_grpc_command_addr` of the command).
    pub fn listener(&self, name: &str, flag: &str) -> SocketAddr {
        self.procs[name].listeners[flag]
    }

    /// The arguments that put an in-process command on this stack's workload
    /// topics, with its workload listeners on ports of their own.
    pub fn command_args(&self) -> Vec<String> {
        isolation::command_args(&self.suffix)
    }

    /// This stack's name of a workload topic flag (e.g. `answers_commands_topic`).
    pub fn topic(&self, flag: &str) -> String {
        isolation::topic(flag, &self.suffix)
    }

    /// The process id of a running instance (to read its `/proc/<pid>/status`).
    pub fn pid(&self, name: &str) -> u32 {
        self.procs[name].child.id()
    }

    /// SIGKILL: the process gets no chance to flush or commit anything.
    pub fn kill9(&mut self, name: &str) {
        let mut r = self.procs.remove(name).expect("a running instance");
        r.child.kill().expect("sending SIGKILL");
        let _ = r.child.wait();
    }

    /// SIGTERM, then waits for the exit; returns the exit success and how long it took.
    pub fn terminate(&mut self, name: &str) -> (bool, Duration) {
        let mut r = self.procs.remove(name).expect("a running instance");
        let started = std::time::Instant::now();
        let _ = Command::new("kill").arg("-TERM").arg(r.child.id().to_string()).status();
        let status = r.child.wait().expect("waiting for the process");
        (status.success(), started.elapsed())
    }

    /// Starts one instance of each service under its plain name.
    pub async fn start_all(&mut self) {
        self.start("command", Service::Command).await;
        self.start("processor", Service::Processor).await;
        self.start("materializer", Service::Materializer).await;
        self.start("query", Service::Query).await;
    }

    pub fn log_dir(&self) -> &std::path::Path {
        &self.logs
    }

    /// Deletes the stack's Redis keys (as a `FLUSHALL` would, but only ours).
    pub async fn flush_redis(&self) {
        test_util::clear_redis_prefix(&self.redis).await;
    }

    /// Stops everything and removes topics, schema, keys and the logs.
    pub async fn cleanup(mut self) {
        for (_, mut r) in self.procs.drain() {
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
        test_util::drop_schema(&self.pg).await;
        test_util::clear_redis_prefix(&self.redis).await;
        test_util::delete_topics(&self.kafka).await;
        test_util::delete_topic_names(&self.kafka.brokers, &isolation::topics(&self.suffix)).await;
        // Reached only by a test that got this far: its logs are not needed (a failed test keeps them),
        // unless asked for (`E2E_KEEP_LOGS=1`: to read what a passed run measured, e.g. the claims' timings).
        if std::env::var_os("E2E_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.logs);
        } else {
            let _ = std::fs::remove_dir_all(self.copies_dir()); // data, not logs
        }
    }
}

impl Default for Stack {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for (_, r) in self.procs.iter_mut() {
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
    }
}

/// A three-node Kafka cluster of its own (`scripts/kafka.sh` with `BROKERS=3`),
/// on ports and in a run directory apart from the shared broker's: for the
/// cluster rows of `make chaos`. Node `n` (1..=3) is also its KRaft node id,
/// the id the broker metadata names leaders by.
pub struct KafkaCluster {
    run_dir: PathBuf,
    /// Node 1's client port; node n listens on `base + 2(n-1)`, its controller one above.
    base_port: u16,
}

impl KafkaCluster {
    /// The cluster in `<repo>/run/cluster` on ports 19092-19097, or `CLUSTER_RUN_DIR`
    /// and `CLUSTER_BROKER_PORT` (node 1's client port) when set.
    pub fn from_env() -> Self {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let run_dir = std::env::var("CLUSTER_RUN_DIR").map_or_else(|_| repo.join("run/cluster"), PathBuf::from);
        let base_port = std::env::var("CLUSTER_BROKER_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(19092);
        KafkaCluster { run_dir, base_port }
    }

    fn script(&self, args: &[&str]) -> std::process::Output {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/kafka.sh");
        Command::new("bash")
            .arg(script)
            .args(args)
            .env("BROKERS", "3")
            .env("RUN_DIR", &self.run_dir)
            .env("BROKER_PORT", self.base_port.to_string())
            .env("CONTROLLER_PORT", (self.base_port + 1).to_string())
            .stderr(Stdio::inherit())
            .output()
            .expect("running scripts/kafka.sh")
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.script(args);
        assert!(out.status.success(), "scripts/kafka.sh {args:?} failed");
        String::from_utf8(out.stdout).expect("utf-8").trim().to_owned()
    }

    /// Starts every node that is not running and waits until each answers.
    pub fn up(&self) {
        self.run(&["up"]);
    }

    /// Stops every node (SIGTERM, by PID).
    pub fn down(&self) {
        self.run(&["down"]);
    }

    /// The bootstrap list, for `KAFKA_BROKERS`.
    pub fn brokers(&self) -> String {
        self.run(&["brokers"])
    }

    /// kill -9 of node `n`: no controlled shutdown, no flush.
    pub fn kill9(&self, n: i32) {
        self.run(&["kill", &n.to_string()]);
    }

    /// The node id of the active controller.
    pub fn controller(&self) -> i32 {
        self.run(&["controller"]).parse().expect("a node id")
    }
}

/// The event kinds, as the API spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Click,
    Impression,
}

/// One event to post.
#[derive(Debug, Clone)]
pub struct Event {
    pub timestamp_ms: i64,
    pub user: String,
    pub kind: Kind,
}

impl Event {
    pub fn path(&self) -> String {
        let kind = match self.kind {
            Kind::Click => "click",
            Kind::Impression => "impression",
        };
        format!("/analytics?timestamp={}&user={}&{kind}", self.timestamp_ms, self.user)
    }
}

/// The exact expected counts of a set of accepted events.
#[derive(Debug, Default, Clone)]
pub struct Expected {
    hours: BTreeMap<HourStart, (HashSet<String>, u64, u64)>,
}

impl Expected {
    pub fn add(&mut self, e: &Event) {
        let h = self.hours.entry(HourStart::of(e.timestamp_ms)).or_default();
        h.0.insert(e.user.clone());
        match e.kind {
            Kind::Click => h.1 += 1,
            Kind::Impression => h.2 += 1,
        }
    }

    pub fn hours(&self) -> Vec<(HourStart, HourCounts)> {
        self.hours
            .iter()
            .map(|(h, (u, c, i))| {
                // Field by field: a count this harness does not post stays 0.
                let mut counts = HourCounts { unique_users: u.len() as u64, ..HourCounts::ZERO };
                counts.clicks = *c;
                counts.impressions = *i;
                (*h, counts)
            })
            .collect()
    }
}

/// A deterministic mixed workload: `n` events over `hours` (a few late ones,
/// both hour edges included), users from a pool of `users`.
pub fn workload(n: usize, users: usize, hours: &[HourStart], seed: u64) -> Vec<Event> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut events: Vec<Event> = (0..n)
        .map(|i| {
            let hour = hours[i % hours.len()];
            let offset = rng.random_range(0..3_600_000);
            Event {
                timestamp_ms: hour.start_ms() + offset,
                user: format!("user-{}", rng.random_range(0..users)),
                kind: if rng.random_bool(0.3) { Kind::Click } else { Kind::Impression },
            }
        })
        .collect();
    // The exact edges of each hour.
    for (j, h) in hours.iter().enumerate() {
        events.push(Event { timestamp_ms: h.start_ms(), user: format!("edge-start-{j}"), kind: Kind::Click });
        events.push(Event { timestamp_ms: h.last_ms(), user: format!("edge-end-{j}"), kind: Kind::Impression });
    }
    events
}

/// Posts events with `concurrency` connections; every one must get 204.
pub async fn post_all(addr: SocketAddr, events: &[Event], concurrency: usize) {
    use futures::StreamExt;
    let results: Vec<(usize, u16, String)> = futures::stream::iter(events.iter().enumerate())
        .map(|(i, e)| async move {
            let (status, body) = http(addr, "POST", &e.path()).await.unwrap_or((0, "connection failed".into()));
            (i, status, body)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    for (i, status, body) in results {
        assert_eq!(status, 204, "event {i} ({:?}) got {status}: {body}", events[i]);
    }
}

/// The parsed answer of `GET /analytics`.
pub async fn get_counts(addr: SocketAddr, timestamp_ms: i64) -> Option<HourCounts> {
    let (status, body) = http(addr, "GET", &format!("/analytics?timestamp={timestamp_ms}")).await.ok()?;
    if status != 200 {
        return None;
    }
    let values: Vec<u64> =
        body.lines().map(|l| l.split_once(',').and_then(|(_, v)| v.parse().ok())).collect::<Option<_>>()?;
    Some(HourCounts::from_array(values.try_into().ok()?))
}

/// Waits until every hour of `expected` reads exactly right; panics with the
/// differences after `limit`.
pub async fn assert_counts_converge(query: SocketAddr, expected: &Expected, limit: Duration) {
    let want = expected.hours();
    let started = std::time::Instant::now();
    loop {
        let mut wrong = Vec::new();
        for (hour, counts) in &want {
            let got = get_counts(query, hour.start_ms()).await;
            if got != Some(*counts) {
                wrong.push(format!("{hour}: want {counts:?}, got {got:?}"));
            }
        }
        if wrong.is_empty() {
            return;
        }
        assert!(started.elapsed() < limit, "counts not exact after {limit:?}:\n{}", wrong.join("\n"));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The hours used by the tests: well inside the horizon and away from "now",
/// so nothing depends on when the test runs.
pub fn test_hours(now_ms: i64) -> Vec<HourStart> {
    let h = |hours_ago: i64| HourStart::of(now_ms - hours_ago * 3_600_000);
    vec![h(50), h(5), h(4), h(3)]
}

/// What happened to the events a faulty run tried to post.
#[derive(Debug, Default)]
pub struct LoadOutcome {
    /// Answered 204: each must be counted exactly once.
    pub accepted: Vec<Event>,
    /// No answer, or a 503 after the event may have reached the broker
    /// (delivery timeout): each may be counted once or not at all.
    pub indeterminate: Vec<Event>,
}

/// Posts `events` with `concurrency` connections until they are all sent or
/// `stop` is set, behaving like a careful client: a refusal that records
/// nothing (connection refused, 503 "queue is full" / overload, 429) is
/// retried after a pause; an outcome that cannot be known is noted.
pub async fn post_under_faults(
    addrs: std::sync::Arc<std::sync::Mutex<Vec<SocketAddr>>>,
    events: Vec<Event>,
    concurrency: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> LoadOutcome {
    use futures::StreamExt;
    use std::sync::atomic::Ordering;
    let results: Vec<(Option<Event>, Vec<Event>)> = futures::stream::iter(events.into_iter().enumerate())
        .take_while(|_| std::future::ready(!stop.load(Ordering::Relaxed)))
        .map(|(i, e)| {
            let addrs = addrs.clone();
            let stop = stop.clone();
            async move {
                let mut unknown = Vec::new();
                for attempt in 0..600 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let targets = addrs.lock().expect("lock").clone();
                    let addr = targets[(i + attempt) % targets.len()];
                    match http(addr, "POST", &e.path()).await {
                        Ok((204, _)) => return (Some(e), unknown),
                        Ok((429, _)) => {}
                        Ok((503, body)) if body.contains("queue is full") || body.contains("in flight") => {}
                        // 0: the connection closed without an answer.
                        Ok((503 | 0, _)) => unknown.push(e.clone()),
                        Ok((status, body)) => panic!("unexpected {status} for {e:?}: {body}"),
                        Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => {}
                        Err(_) => unknown.push(e.clone()),
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                (None, unknown)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut outcome = LoadOutcome::default();
    for (accepted, unknown) in results {
        outcome.accepted.extend(accepted);
        outcome.indeterminate.extend(unknown);
    }
    outcome
}

/// Waits until every hour lies between the counts of `lower` (the events that
/// must be counted) and `upper` (those plus the ones that may be), in every
/// field; panics with the differences after `limit`. With `lower == upper`
/// this is an exact check.
pub async fn assert_counts_within(query: SocketAddr, lower: &Expected, upper: &Expected, limit: Duration) {
    let lows: BTreeMap<HourStart, HourCounts> = lower.hours().into_iter().collect();
    let highs: BTreeMap<HourStart, HourCounts> = upper.hours().into_iter().collect();
    let started = std::time::Instant::now();
    loop {
        let mut wrong = Vec::new();
        for (hour, high) in &highs {
            let low = lows.get(hour).copied().unwrap_or_default();
            let got = get_counts(query, hour.start_ms()).await;
            let within = got.is_some_and(|g| {
                (low.unique_users..=high.unique_users).contains(&g.unique_users)
                    && (low.clicks..=high.clicks).contains(&g.clicks)
                    && (low.impressions..=high.impressions).contains(&g.impressions)
            });
            if !within {
                wrong.push(format!("{hour}: want between {low:?} and {high:?}, got {got:?}"));
            }
        }
        if wrong.is_empty() {
            return;
        }
        assert!(started.elapsed() < limit, "counts not within bounds after {limit:?}:\n{}", wrong.join("\n"));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A TCP proxy in front of a dependency that a test can cut and restore:
/// while cut, new connections are refused and open ones are dropped, as if
/// the server behind it were stopped.
pub struct CuttableProxy {
    pub addr: SocketAddr,
    upstream: SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl CuttableProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let mut proxy = CuttableProxy { addr, upstream, task: None, conns: Default::default() };
        proxy.serve(listener);
        proxy
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let (upstream, conns) = (self.upstream, self.conns.clone());
        self.task = Some(tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let handle = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                conns.lock().expect("lock").push(handle.abort_handle());
            }
        }));
    }

    /// Refuses new connections and drops the open ones.
    pub fn cut(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        for c in self.conns.lock().expect("lock").drain(..) {
            c.abort();
        }
    }

    /// Accepts connections again, on the same address.
    pub async fn restore(&mut self) {
        for _ in 0..50 {
            if let Ok(listener) = tokio::net::TcpListener::bind(self.addr).await {
                self.serve(listener);
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("could not re-bind the proxy on {}", self.addr);
    }
}

/// Waits (up to 60 s) until the hour of `timestamp_ms` satisfies `ok`.
pub async fn wait_for(query: SocketAddr, timestamp_ms: i64, ok: impl Fn(HourCounts) -> bool) {
    let what = format!("the hour of {timestamp_ms} to reach the expected state");
    test_util::wait_until(&what, Duration::from_secs(60), || async {
        get_counts(query, timestamp_ms).await.filter(|c| ok(*c))
    })
    .await;
}

/// Waits (up to `limit`) until Redis holds exactly PostgreSQL's totals for
/// each hour and, where given, PostgreSQL holds the expected counts.
pub async fn wait_redis_equals_postgres(stack: &Stack, hours: &[(HourStart, Option<HourCounts>)], limit: Duration) {
    let cache = analytics::read_model::HourCache::connect(&stack.redis).await.expect("redis answers");
    let pool = common::engine::pg::pool(&stack.pg).expect("a PostgreSQL pool");
    test_util::wait_until("Redis equal to PostgreSQL", limit, || async {
        let client = pool.get().await.ok()?;
        for (h, want) in hours {
            let pg = analytics::read_model::pg::read_hour(&client, *h).await.ok()??;
            let cached = cache.get(h).await.ok()??;
            if want.is_some_and(|w| pg.row != w) || cached != pg {
                return None;
            }
        }
        Some(())
    })
    .await;
}

/// One increment of the increments workload, sent with its own id.
#[derive(Debug, Clone)]
pub struct Increment {
    pub key: String,
    pub value: i64,
    pub id: String,
}

impl Increment {
    /// `n` increments over `keys` keys, each with a unique id.
    pub fn workload(n: usize, keys: u64, seed: u64) -> Vec<Increment> {
        (0..n as u64)
            .map(|i| Increment {
                key: format!("00000000-0000-4000-8000-{:012x}", (i * 7 + seed) % keys),
                value: ((i * 7919 + seed) % 1_000_003 + 1) as i64,
                id: format!("s{seed}-{i}"),
            })
            .collect()
    }

    /// The exact sum of every key.
    pub fn sums(increments: &[Increment]) -> BTreeMap<String, i128> {
        let mut sums = BTreeMap::new();
        for i in increments {
            *sums.entry(i.key.clone()).or_default() += i128::from(i.value);
        }
        sums
    }
}

/// Posts every increment until it is acknowledged, like a careful client:
/// whatever the failure (refused connection, 503 of any kind, no answer), it
/// retries with the same id, so an increment whose first outcome was unknown
/// is still counted exactly once. Panics on a 4xx.
pub async fn post_increments_until_acknowledged(
    addrs: std::sync::Arc<std::sync::Mutex<Vec<SocketAddr>>>,
    increments: Vec<Increment>,
    concurrency: usize,
) {
    use futures::StreamExt;
    futures::stream::iter(increments.into_iter().enumerate())
        .for_each_concurrent(concurrency, |(i, inc)| {
            let addrs = addrs.clone();
            async move {
                let body = format!(r#"{{"key":"{}","value":{}}}"#, inc.key, inc.value);
                let path = format!("/increment?id={}", inc.id);
                for attempt in 0..1200 {
                    let targets = addrs.lock().expect("lock").clone();
                    let addr = targets[(i + attempt) % targets.len()];
                    match common::test_util::http_body(addr, "POST", &path, Some("application/json"), body.as_bytes())
                        .await
                    {
                        Ok((200, _)) => return,
                        Ok((status @ 400..=428, answer)) => panic!("{status} for {inc:?}: {answer}"),
                        _ => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
                panic!("{inc:?} never acknowledged");
            }
        })
        .await;
}

/// Waits until the `increments` table holds exactly `expected` (every key,
/// every sum), then checks each key's `GET /increment/{key}` answer.
pub async fn assert_sums_converge(stack: &Stack, expected: &BTreeMap<String, i128>, limit: Duration) {
    use futures::StreamExt;
    let pool = common::engine::pg::pool(&stack.pg).expect("a pool");
    let want: Vec<(String, String)> = expected.iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
    let mut last = Vec::new();
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        if let Ok(client) = pool.get().await {
            if let Ok(rows) =
                client.query("SELECT key::text AS key, value::text AS value FROM increments ORDER BY key", &[]).await
            {
                last = rows.iter().map(|r| (r.get::<_, String>("key"), r.get::<_, String>("value"))).collect();
                if last == want {
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let wrong: Vec<_> = want.iter().filter(|w| !last.contains(w)).take(5).collect();
    assert_eq!(last.len(), want.len(), "keys in PostgreSQL; first missing or wrong: {wrong:?}");
    assert!(wrong.is_empty(), "sums in PostgreSQL differ; first: {wrong:?}");
    let query = stack.addr("query");
    let answers: Vec<(String, u16, String)> = futures::stream::iter(expected.keys())
        .map(|k| async move {
            let (status, body) = http(query, "GET", &format!("/increment/{k}")).await.unwrap_or((0, String::new()));
            (k.clone(), status, body)
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for (k, status, body) in answers {
        assert_eq!((status, body), (200, format!(r#"{{"key":"{k}","value":{}}}"#, expected[&k])), "GET {k}");
    }
}

/// One record read back from a topic by [`read_topic`].
#[derive(Debug, Clone)]
pub struct TopicRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// What [`read_topic`] makes of `after` without a record before every
/// partition is read to its high watermark.
#[derive(Debug, Clone, Copy)]
pub enum Silence {
    /// The test fails: every offset below the high watermark is a record
    /// (a topic written without transactions).
    Fails(Duration),
    /// The read ends: a transaction's control record may be a partition's last
    /// offset, and it is never delivered.
    Ends(Duration),
}

/// Every record of `topic`, over all its partitions, each partition in its order,
/// up to the high watermarks taken when the read starts.
pub async fn read_topic(brokers: &str, topic: &str, silence: Silence) -> Vec<TopicRecord> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::Message;
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
    let wait = match silence {
        Silence::Fails(wait) | Silence::Ends(wait) => wait,
    };
    let mut out = Vec::new();
    while !remaining.is_empty() {
        let msg = match tokio::time::timeout(wait, consumer.recv()).await {
            Ok(msg) => msg.expect("a record"),
            Err(_) if matches!(silence, Silence::Ends(_)) => break,
            Err(_) => panic!("{topic}: no record for {wait:?}, partitions {remaining:?} not read to their ends"),
        };
        out.push(TopicRecord {
            partition: msg.partition(),
            offset: msg.offset(),
            key: msg.key().map(<[u8]>::to_vec),
            payload: msg.payload().unwrap_or_default().to_vec(),
        });
        if remaining.get(&msg.partition()).is_some_and(|high| msg.offset() + 1 >= *high) {
            remaining.remove(&msg.partition());
        }
    }
    out
}
