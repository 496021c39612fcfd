//! Fault scenarios (`make chaos`): each posts ≥ 100k events over several
//! hours (late ones included) under load, injects a fault, and checks every
//! affected hour against the exact expected counts; the increments ones check
//! every sum, and scenario 13 measures staleness after a materializer restart
//! with a million keys held. Ignored by `make test`;
//! `scripts/chaos.sh` runs them one by one and prints a summary.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use analytics::{HourCounts, HourStart};
use e2e::{
    assert_counts_within, get_counts, post_under_faults, test_hours, workload, CuttableProxy, Expected, LoadOutcome,
    Service, Stack,
};

const EVENTS: usize = 100_000;
const USERS: usize = 20_000;
const CONCURRENCY: usize = 32;
const CONVERGE: Duration = Duration::from_secs(180);

fn events(seed: u64) -> Vec<e2e::Event> {
    workload(EVENTS, USERS, &test_hours(common::now_ms()), seed)
}

fn expected_of(events: &[e2e::Event]) -> Expected {
    let mut exp = Expected::default();
    events.iter().for_each(|e| exp.add(e));
    exp
}

/// Load running in the background against the given command instances.
struct Load {
    targets: Arc<Mutex<Vec<std::net::SocketAddr>>>,
    task: tokio::task::JoinHandle<LoadOutcome>,
}

impl Load {
    fn start(targets: Vec<std::net::SocketAddr>, events: Vec<e2e::Event>) -> Self {
        let targets = Arc::new(Mutex::new(targets));
        let never = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(post_under_faults(targets.clone(), events, CONCURRENCY, never));
        Load { targets, task }
    }

    /// Waits for the load to finish sending.
    async fn finish(self) -> LoadOutcome {
        self.task.await.expect("load task")
    }
}

async fn pause(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Every 204 counted exactly once; an event whose outcome the client cannot
/// know (no answer, or a delivery timeout) counted at most once.
async fn check(stack: &Stack, outcome: &LoadOutcome) {
    assert!(outcome.accepted.len() >= EVENTS * 9 / 10, "only {} of {EVENTS} events accepted", outcome.accepted.len());
    let lower = expected_of(&outcome.accepted);
    let mut upper = lower.clone();
    outcome.indeterminate.iter().for_each(|e| upper.add(e));
    println!("accepted {}, indeterminate {}", outcome.accepted.len(), outcome.indeterminate.len());
    assert_counts_within(stack.addr("query"), &lower, &upper, CONVERGE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "chaos: run with scripts/chaos.sh"]
async fn chaos_1_kill_9_processor_mid_stream() {
    let mut stack = Stack::new();
    stack.start_all().await;
    let load = Load::start(vec![stack.addr("command")], events(11));
    pause(4000).await;
    stack.kill9("processor");
    pause(2000).await;
    stack.start("processor", Service::Processor).await;
    pause(3000).await;
    stack.kill9("processor");
    stack.start("processor", Service::Processor).await;
    let outcome = load.finish().await;
    check(&stack, &outcome).await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "chaos: run with scripts/chaos.sh"]
async fn chaos_2_kill_9_materializer_mid_stream() {
    let mut stack = Stack::new();
    stack.start_all().await;
    let load = Load::start(vec![stack.addr("command")], events(12));
    pause(4000).await;
    stack.kill9("materializer");
    pause(2000).await;
    stack.start("materializer", Service::Materializer).await;
    pause(3000).await;
    stack.kill9("materializer");
    stack.start("materializer", Service::Materializer).await;
    let outcome = load.finish().await;
    check(&stack, &outcome).await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "chaos: run with scripts/chaos.sh"]
async fn chaos_3_kill_9_one_of_two_command_instances() {
    let mut stack = Stack::new();
    stack.start_all().await;
    stack.start("command-2", Service::Command).await;
    let load = Load::start(vec![stack.addr("command"), stack.addr("command-2")], events(13));
    pause(4000).await;
    stack.kill9("command-2");
    // The load balancer notices: the survivor takes all traffic.
    *load.targets.lock().unwrap() = vec![stack.addr("command")];
    let outcome = load.finish().await;
    check(&stack, &outcome).await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "chaos: run with scripts/chaos.sh"]
async fn chaos_4_broker_stopped_and_restarted() {
    let mut stack = Stack::new();
    stack.start_all().await;
    let load = Load::start(vec![stack.addr("command")], events(14));
    pause(4000).await;
    let stack_sh = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/stack.sh");
    assert!(std::process::Command::new("bash").arg(stack_sh).arg("broker-down").status().unwrap().success());
    pause(3000).await;
    assert!(std::process::Command::new("bash").arg(stack_sh).arg("broker-up").status().unwrap().success());
    let outcome = load.finish().await;
    check(&stack, &outcome).await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "chaos: run with scripts/chaos.sh"]
async fn chaos_5_redis_flushed_under_load() {
    let mut stack = Stack::new();
    stack.start_all().await;
    let load = Load::start(vec![stack.addr("command")], events(15));
    for _ in 0..3 {
        pause(3000).await;
        stack.flush_redis().await;
    }
    let outcome = load.finish().await;
    stack.flush_redis().await;
    check(&stack, &outcome).await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "chaos: run with scripts/chaos.sh"]
async fn chaos_6_postgres_stopped_for_30_s() {
    let mut stack = Stack::new();
    let upstream = "127.0.0.1:5432".parse().unwrap();
    let mut pg = CuttableProxy::start(upstream).await;
    stack.pg.url = format!("postgres://postgres@{}/postgres", pg.addr);
    stack.env("PG_TIMEOUT", "2s");
    stack.start_all().await;
    let now = common::now_ms();
    // A current-hour probe that is cached in Redis before the outage.
    let probe = e2e::Event { timestamp_ms: now, user: "probe".into(), kind: e2e::Kind::Click };
    e2e::post_all(stack.addr("command"), std::slice::from_ref(&probe), 1).await;
    e2e::wait_for(stack.addr("query"), now, |c| c.clicks >= 1).await;

    let load = Load::start(vec![stack.addr("command")], events(16));
    pause(3000).await;
    pg.cut();
    let outage = std::time::Instant::now();
    let (mut posts_ok, mut current_ok, mut old_503) = (0, 0, 0);
    let old_hour = HourStart::of(now - 100 * 3_600_000);
    while outage.elapsed() < Duration::from_secs(30) {
        let path = format!("/analytics?timestamp={}&user=outage-{}&impression", now - 3_600_000, posts_ok);
        if let Ok((204, _)) = common::test_util::http(stack.addr("command"), "POST", &path).await {
            posts_ok += 1;
        }
        if get_counts(stack.addr("query"), now).await.is_some() {
            current_ok += 1;
        }
        let started = std::time::Instant::now();
        let (status, _) = common::test_util::http(
            stack.addr("query"),
            "GET",
            &format!("/analytics?timestamp={}", old_hour.start_ms()),
        )
        .await
        .unwrap();
        if status == 503 && started.elapsed() < Duration::from_secs(6) {
            old_503 += 1;
        }
        pause(1000).await;
    }
    pg.restore().await;
    assert!(posts_ok > 20, "ingestion went on during the outage ({posts_ok} accepted)");
    assert!(current_ok > 20, "current-hour reads went on ({current_ok} answered)");
    assert!(old_503 > 20, "uncached old hours failed fast with 503 ({old_503})");
    let mut outcome = load.finish().await;
    outcome.accepted.push(probe);
    outcome.accepted.extend((0..posts_ok).map(|i| e2e::Event {
        timestamp_ms: now - 3_600_000,
        user: format!("outage-{i}"),
        kind: e2e::Kind::Impression,
    }));
    check(&stack, &outcome).await;
    assert_eq!(get_counts(stack.addr("query"), old_hour.start_ms()).await, Some(HourCounts::default()));
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "chaos: run with scripts/chaos.sh"]
async fn chaos_7_instances_added_and_removed_under_load() {
    let mut stack = Stack::new();
    stack.start_all().await;
    let load = Load::start(vec![stack.addr("command")], events(17));
    pause(3000).await;
    stack.start("processor-2", Service::Processor).await;
    stack.start("materializer-2", Service::Materializer).await;
    pause(6000).await;
    let (ok, _) = stack.terminate("processor");
    assert!(ok);
    pause(2000).await;
    stack.kill9("materializer-2");
    let outcome = load.finish().await;
    check(&stack, &outcome).await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "chaos: run with scripts/chaos.sh"]
async fn chaos_8_redis_down_for_30_s_under_load() {
    let mut stack = Stack::new();
    let upstream = "127.0.0.1:6379".parse().unwrap();
    let mut redis = CuttableProxy::start(upstream).await;
    stack.redis.url = format!("redis://{}", redis.addr);
    stack.start_all().await;
    let probe_hour = HourStart::of(common::now_ms() - 3 * 3_600_000);
    let load = Load::start(vec![stack.addr("command")], events(18));
    pause(3000).await;
    redis.cut();
    let outage = std::time::Instant::now();
    // Reads keep advancing, served from PostgreSQL, while events keep coming.
    let (mut advanced, mut last, mut i) = (0, 0, 0);
    while outage.elapsed() < Duration::from_secs(30) {
        let path = format!("/analytics?timestamp={}&user=redis-outage-{i}&click", probe_hour.start_ms() + 1);
        if let Ok((204, _)) = common::test_util::http(stack.addr("command"), "POST", &path).await {
            i += 1;
        }
        if let Some(c) = get_counts(stack.addr("query"), probe_hour.start_ms()).await {
            if c.clicks > last {
                advanced += 1;
                last = c.clicks;
            }
        }
        pause(1000).await;
    }
    redis.restore().await;
    assert!(advanced >= 10, "GETs advanced only {advanced} times during the 30 s outage");
    let mut outcome = load.finish().await;
    outcome.accepted.extend((0..i).map(|n| e2e::Event {
        timestamp_ms: probe_hour.start_ms() + 1,
        user: format!("redis-outage-{n}"),
        kind: e2e::Kind::Click,
    }));
    check(&stack, &outcome).await;
    // Redis caught up: it holds exactly what PostgreSQL holds, hour by hour.
    let hours: Vec<_> = expected_of(&outcome.accepted).hours().into_iter().map(|(h, _)| (h, None)).collect();
    e2e::wait_redis_equals_postgres(&stack, &hours, Duration::from_secs(60)).await;
    stack.cleanup().await;
}

/// Posts every event with its own id, twice (a client that retries blindly),
/// and retries each until it gets a 204: with ids, retrying an unknown outcome is safe.
async fn post_twice_with_ids(command: std::net::SocketAddr, events: Vec<e2e::Event>) -> usize {
    use futures::StreamExt;
    futures::stream::iter(events.into_iter().enumerate())
        .map(|(i, e)| async move {
            let path = format!("{}&id=chaos-{i}", e.path());
            let mut accepted = 0;
            for _ in 0..600 {
                if let Ok((204, _)) = common::test_util::http(command, "POST", &path).await {
                    accepted += 1;
                    if accepted == 2 {
                        return;
                    }
                } else {
                    pause(200).await;
                }
            }
            panic!("event {i} never accepted twice");
        })
        .buffer_unordered(CONCURRENCY)
        .count()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "chaos: run with scripts/chaos.sh"]
async fn chaos_9_duplicate_ids_with_kill_9_of_the_processor() {
    let mut stack = Stack::new();
    stack.start_all().await;
    let all = events(19);
    let expected = expected_of(&all);
    let load = tokio::spawn(post_twice_with_ids(stack.addr("command"), all));
    pause(4000).await;
    stack.kill9("processor");
    pause(2000).await;
    stack.start("processor", Service::Processor).await;
    pause(3000).await;
    stack.kill9("processor");
    stack.start("processor", Service::Processor).await;
    let sent = load.await.expect("load task");
    println!("{sent} events, each accepted twice with the same id");
    // Every event counted exactly once, although each was accepted twice.
    assert_counts_within(stack.addr("query"), &expected, &expected, CONVERGE).await;
    stack.cleanup().await;
}

/// Increments under load, every one sent until acknowledged with its id.
fn increment_load(
    targets: Vec<std::net::SocketAddr>,
    seed: u64,
) -> (tokio::task::JoinHandle<()>, BTreeMap<String, i128>) {
    let increments = e2e::Increment::workload(20_000, 1_000, seed);
    let expected = e2e::Increment::sums(&increments);
    let targets = Arc::new(Mutex::new(targets));
    (tokio::spawn(e2e::post_increments_until_acknowledged(targets, increments, CONCURRENCY)), expected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "chaos: run with scripts/chaos.sh"]
async fn chaos_10_increments_kill_9_of_processor_and_materializer() {
    let mut stack = Stack::new();
    stack.start_all().await;
    let (load, expected) = increment_load(vec![stack.addr("command")], 10);
    pause(3000).await;
    stack.kill9("processor");
    pause(1500).await;
    stack.start("processor", Service::Processor).await;
    pause(2000).await;
    stack.kill9("materializer");
    pause(1500).await;
    stack.start("materializer", Service::Materializer).await;
    pause(2000).await;
    stack.kill9("processor");
    stack.kill9("materializer");
    stack.start("processor", Service::Processor).await;
    stack.start("materializer", Service::Materializer).await;
    load.await.expect("load task");
    e2e::assert_sums_converge(&stack, &expected, CONVERGE).await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "chaos: run with scripts/chaos.sh"]
async fn chaos_11_increments_instances_added_and_removed() {
    let mut stack = Stack::new();
    stack.start_all().await;
    let command_2 = stack.start("command-2", Service::Command).await;
    let (load, expected) = increment_load(vec![stack.addr("command"), command_2], 11);
    pause(2000).await;
    stack.start("processor-2", Service::Processor).await;
    stack.start("materializer-2", Service::Materializer).await;
    pause(5000).await;
    let (ok, _) = stack.terminate("processor");
    assert!(ok, "processor exits cleanly on SIGTERM");
    stack.kill9("command-2");
    pause(2000).await;
    stack.kill9("materializer-2");
    stack.start("processor-3", Service::Processor).await;
    load.await.expect("load task");
    e2e::assert_sums_converge(&stack, &expected, CONVERGE).await;
    stack.cleanup().await;
}

/// Increment keys loaded by scenarios 12 and 13 (one increment each).
const HELD_KEYS: u64 = 1_000_000;

/// The `i`-th key of a bulk load.
fn held_key(i: u64) -> String {
    format!("{:08x}-0000-4000-8000-{:012x}", i >> 20, i)
}

/// Writes one increment of 1 to each of `n` keys straight to the increments
/// events topic, as the command would (the same Avro record and record key,
/// an idempotent `acks=all` producer), only faster: a million POSTs would
/// take minutes on this box.
async fn bulk_increments(stack: &Stack, n: u64) {
    use futures::StreamExt;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let kafka = common::engine::config::KafkaConfig { brokers: stack.kafka.brokers.clone(), create_topics: false };
    let tuning = common::engine::kafka::ProducerTuning {
        linger: Duration::from_millis(20),
        delivery_timeout: Duration::from_secs(120),
        queue_max_messages: 1_000_000,
    };
    let producer: FutureProducer = common::engine::kafka::producer_config(&kafka, "chaos-bulk", tuning)
        .set("batch.size", "1000000")
        .create()
        .expect("a producer");
    let topic = stack.kafka.increments_events_topic.as_str();
    let mut pending = futures::stream::FuturesUnordered::new();
    for i in 0..n {
        let event = increments::IncrementEvent {
            key: increments::IncrementKey::parse_canonical(&held_key(i)).expect("a canonical key"),
            value: increments::IncrementValue::new(1).expect("positive"),
            accepted_at_ms: common::now_ms(),
            id: None,
        };
        let (key, payload) = (event.partition_key(), increments::wire::encode_increment(&event));
        let p = producer.clone();
        pending.push(async move {
            let record = FutureRecord::to(topic).key(&key[..]).payload(&payload);
            p.send(record, Duration::from_secs(120)).await.map(|_| ()).map_err(|(e, _)| e)
        });
        if pending.len() >= 100_000 {
            pending.next().await.expect("a send").expect("the broker acknowledges");
        }
    }
    while let Some(sent) = pending.next().await {
        sent.expect("the broker acknowledges");
    }
}

/// The value of a gauge on a service's `/metrics`, by its name and labels as rendered.
async fn gauge(ops: std::net::SocketAddr, series: &str) -> Option<f64> {
    let (_, body) = common::test_util::http(ops, "GET", "/metrics").await.ok()?;
    body.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// The `q` quantile of `sorted` (seconds), 0 when empty.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted.get(((sorted.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "chaos: run with scripts/chaos.sh"]
async fn chaos_13_increments_staleness_after_a_materializer_restart_with_1m_keys() {
    use std::sync::atomic::Ordering;
    let mut stack = Stack::new();
    stack.start_all().await;
    let loading = std::time::Instant::now();
    bulk_increments(&stack, HELD_KEYS).await;
    println!("{HELD_KEYS} increments in the log after {:?}", loading.elapsed());
    let pool = common::engine::pg::pool(&stack.pg).expect("a pool");
    common::test_util::wait_until("every key in PostgreSQL", Duration::from_secs(900), || async {
        let client = pool.get().await.ok()?;
        let row = client.query_one("SELECT count(*) AS n FROM increments", &[]).await.ok()?;
        (row.get::<_, i64>("n") as u64 >= HELD_KEYS).then_some(())
    })
    .await;
    println!("{HELD_KEYS} keys held (PostgreSQL) after {:?}", loading.elapsed());

    // A steady load over the held keys (each increment a different key), on through the restart.
    let (command, query) = (stack.addr("command"), stack.addr("query"));
    let stop = Arc::new(AtomicBool::new(false));
    let background = tokio::spawn({
        let stop = stop.clone();
        async move {
            use futures::StreamExt;
            futures::stream::iter(0..8u64)
                .for_each_concurrent(8, |lane| {
                    let stop = stop.clone();
                    async move {
                        let mut i = lane;
                        while !stop.load(Ordering::Relaxed) {
                            let key = held_key(i * 7919 % HELD_KEYS);
                            let body = format!(r#"{{"key":"{key}","value":1}}"#);
                            let _ = common::test_util::http_body(
                                command,
                                "POST",
                                "/increment",
                                Some("application/json"),
                                body.as_bytes(),
                            )
                            .await;
                            i += 8;
                            pause(5).await;
                        }
                    }
                })
                .await;
        }
    });
    pause(5000).await;

    stack.kill9("materializer");
    let restarted = std::time::Instant::now();
    stack.start("materializer", Service::Materializer).await;
    let ops = stack.addr("materializer");

    // The probe: POST to a key of its own, then GET until the sum shows it.
    let probe = "ffffffff-0000-4000-8000-000000000013";
    let (mut samples, mut expected) = (Vec::<(f64, f64)>::new(), 0i128);
    let mut caught_up_after = None;
    while restarted.elapsed() < Duration::from_secs(90) {
        if caught_up_after.is_none()
            && gauge(ops, r#"analytics_materializer_redis_catching_up{workload="increments"}"#).await == Some(0.0)
        {
            caught_up_after = Some(restarted.elapsed());
        }
        let body = format!(r#"{{"key":"{probe}","value":1}}"#);
        match common::test_util::http_body(command, "POST", "/increment", Some("application/json"), body.as_bytes())
            .await
        {
            Ok((200, _)) => expected += 1,
            _ => continue,
        }
        let (posted_at, accepted) = (restarted.elapsed().as_secs_f64(), std::time::Instant::now());
        loop {
            let (status, body) =
                common::test_util::http(query, "GET", &format!("/increment/{probe}")).await.unwrap_or_default();
            let sum = (status == 200)
                .then(|| increments::IncrementRow::from_json(body.as_bytes()).ok().map(|r| r.sum))
                .flatten();
            if sum.is_some_and(|s| s >= expected) || accepted.elapsed() > Duration::from_secs(60) {
                samples.push((posted_at, accepted.elapsed().as_secs_f64()));
                break;
            }
            pause(5).await;
        }
        pause(50).await;
    }
    stop.store(true, Ordering::Relaxed);
    background.await.expect("the background load");
    pause(3000).await; // the last increments of the load reach both stores
    let window = |from: f64, to: f64| -> Vec<f64> {
        let mut s: Vec<f64> = samples.iter().filter(|(t, _)| (from..to).contains(t)).map(|(_, s)| *s).collect();
        s.sort_by(f64::total_cmp);
        s
    };
    let (first, after) = (window(0.0, 60.0), window(60.0, 90.0));
    println!(
        "staleness after the restart: first minute {} samples p50 {:.2} s p99 {:.2} s max {:.2} s; \
         60-90 s {} samples p50 {:.2} s p99 {:.2} s max {:.2} s; catch-up of Redis done after {caught_up_after:?}",
        first.len(),
        quantile(&first, 0.5),
        quantile(&first, 0.99),
        quantile(&first, 1.0),
        after.len(),
        quantile(&after, 0.5),
        quantile(&after, 0.99),
        quantile(&after, 1.0),
    );
    let caught_up_after = caught_up_after.expect("the materializer's catch-up of Redis finished within 90 s");
    assert!(!after.is_empty(), "no probe sample 60-90 s after the restart");
    // The goal is 10 s; twice that leaves room for a noisy shared 2-core box.
    assert!(quantile(&after, 0.99) < 20.0, "staleness p99 {:.2} s a minute after the restart", quantile(&after, 0.99));

    // Redis converged: a sample of held keys reads there as in PostgreSQL.
    let cache = increments::read_model::SumCache::connect(&stack.redis).await.expect("redis answers");
    let client = pool.get().await.expect("a connection");
    let rows = client
        .query(
            "SELECT key::text AS key, value::text AS value, input_offset FROM increments TABLESAMPLE SYSTEM (0.5)",
            &[],
        )
        .await
        .expect("a sample");
    let mut differ = 0;
    for r in &rows {
        let key = increments::IncrementKey::parse_canonical(r.get("key")).expect("a key");
        let cached = cache.get(&key).await.expect("redis answers");
        let value: &str = r.get("value");
        if cached.map(|c| (c.version, c.row.0.to_string())) != Some((r.get("input_offset"), value.to_owned())) {
            differ += 1;
        }
    }
    println!("{} sampled keys, {differ} differ in Redis; catch-up took {caught_up_after:?}", rows.len());
    assert_eq!(differ, 0, "keys whose Redis copy differs from PostgreSQL");
    stack.cleanup().await;
}

/// `SELECT count(*)` of a table of the stack's schema.
async fn count_rows(pool: &deadpool_postgres::Pool, table: &str) -> i64 {
    match pool.get().await {
        Ok(client) => {
            client.query_one(&format!("SELECT count(*) AS n FROM {table}"), &[]).await.map(|r| r.get("n")).unwrap_or(0)
        }
        Err(_) => 0,
    }
}

/// Posts a fresh key's increment and measures how long after its 200 the
/// query answers it: the increments staleness of one write.
async fn staleness_probe(command: std::net::SocketAddr, query: std::net::SocketAddr, n: usize) -> Duration {
    let key = format!("c12c12c2-0000-4000-8000-{n:012x}");
    let body = format!(r#"{{"key":"{key}","value":1}}"#);
    let path = format!("/increment?id=probe-{n}");
    loop {
        match common::test_util::http_body(command, "POST", &path, Some("application/json"), body.as_bytes()).await {
            Ok((200, _)) => break,
            _ => pause(100).await,
        }
    }
    let accepted = std::time::Instant::now();
    loop {
        if let Ok((200, _)) = common::test_util::http(query, "GET", &format!("/increment/{key}")).await {
            return accepted.elapsed();
        }
        pause(50).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// The processor holds a million increment keys and is killed with kill -9:
/// its restart claims the partitions (restoring every key) and re-sends only
/// its outbox, so new increments are visible again within seconds. Measures
/// the staleness (POST acknowledged → `GET /increment/{key}` answers it) of
/// probes sent every 250 ms during the minute after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "chaos: run with scripts/chaos.sh"]
async fn chaos_12_increments_kill_9_of_the_processor_holding_1m_keys() {
    let mut stack = Stack::new();
    stack.start_all().await;
    let pool = common::engine::pg::pool(&stack.pg).unwrap();
    let loading = std::time::Instant::now();
    bulk_increments(&stack, HELD_KEYS).await;
    println!("{HELD_KEYS} increments written in {:?}", loading.elapsed());
    let held = HELD_KEYS as i64;
    common::test_util::wait_until("the processor to hold every key", Duration::from_secs(600), || async {
        (count_rows(&pool, "processor_increment_sums").await >= held).then_some(())
    })
    .await;
    println!("processor holds {held} keys after {:?}", loading.elapsed());
    common::test_util::wait_until("the read model to hold every key", Duration::from_secs(900), || async {
        (count_rows(&pool, "increments").await >= held).then_some(())
    })
    .await;
    println!("read model holds {held} keys after {:?}", loading.elapsed());
    let (command, query) = (stack.addr("command"), stack.addr("query"));
    let before = staleness_probe(command, query, 0).await;
    println!("staleness before the kill: {before:?}");

    stack.kill9("processor");
    let restarted = std::time::Instant::now();
    stack.start("processor", Service::Processor).await;
    println!("processor ready {:?} after the kill", restarted.elapsed());
    let mut probes = Vec::new();
    let mut n = 1;
    while restarted.elapsed() < Duration::from_secs(60) {
        let sent_at = restarted.elapsed();
        probes.push((sent_at, tokio::spawn(staleness_probe(command, query, n))));
        n += 1;
        pause(250).await;
    }
    let mut measured = Vec::new();
    for (sent_at, probe) in probes {
        let staleness = tokio::time::timeout(Duration::from_secs(300), probe).await.expect("probe answered").unwrap();
        measured.push((sent_at, staleness));
    }
    let window = |from: u64, to: u64| {
        let mut w: Vec<Duration> = measured
            .iter()
            .filter(|(at, _)| *at >= Duration::from_secs(from) && *at < Duration::from_secs(to))
            .map(|(_, s)| *s)
            .collect();
        w.sort_unstable();
        w
    };
    let all = window(0, 60);
    let (first, second) = (window(0, 30), window(30, 60));
    for (name, w) in [("0-60 s", &all), ("0-30 s", &first), ("30-60 s", &second)] {
        println!(
            "staleness of increments sent {name} after the kill: n {}, p50 {:?}, p99 {:?}, max {:?}",
            w.len(),
            percentile(w, 0.5),
            percentile(w, 0.99),
            w.last().unwrap()
        );
    }
    let resent = count_rows(&pool, "processor_outbox").await;
    println!("outbox rows left: {resent}");
    // The goal is 10 s p99 within a minute of the restart; the bound is loose
    // for a shared 2-core machine (the printed numbers are the measurement).
    assert!(percentile(&all, 0.99) < Duration::from_secs(20), "p99 {:?}", percentile(&all, 0.99));
    assert!(percentile(&second, 0.99) < Duration::from_secs(10), "p99 {:?}", percentile(&second, 0.99));
    stack.cleanup().await;
}
