//! The Redis catch-up at scale (issue #18, defect 3): a materializer that
//! starts with 300k rows changed within the Redis TTL copies them all to
//! Redis in bounded calls, writes the read-your-writes progress marks once
//! done, and no call of it runs 50 ms or more inside Redis (SLOWLOG), so
//! Redis keeps answering other clients throughout (a PING is timed too).
//! Real PostgreSQL and Redis; the increments workload as it runs.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::engine::pg::migrations;
use common::engine::progress::Progress;
use common::engine::store::cache::VersionedCache;
use common::test_util::{drop_schema, isolated, unique_suffix};
use increments::materializer::Increments;
use increments::read_model::StoredSum;
use increments::{IncrementKey, IncrementSum};
use materializer::engine::sink::ReadModelSink;

const ROWS: i64 = 300_000;
/// The longest Redis may take to answer a PING while the catch-up runs.
const PING_LIMIT: Duration = Duration::from_millis(50);

/// Pings Redis every 2 ms on its own connection and thread (so the test's
/// own work does not delay it) until stopped; the slowest answer in µs.
fn pinger(url: String, stop: Arc<AtomicBool>, slowest_us: Arc<AtomicU64>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let client = redis::Client::open(url).expect("redis url");
        let mut conn = client.get_connection().expect("redis answers");
        let mut pings = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let _: String = redis::cmd("PING").query(&mut conn).expect("PING answered");
            slowest_us.fetch_max(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            pings += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        pings
    })
}

/// Redis' own count of script calls and the µs spent in them (`INFO commandstats`, every client's).
async fn script_time(url: &str) -> (u64, u64) {
    let client = redis::Client::open(url).expect("redis url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("redis answers");
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut conn).await.expect("INFO");
    let stat = |line: &str, name: &str| -> u64 {
        line.split([':', ',']).find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok()).unwrap_or(0)
    };
    info.lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .fold((0, 0), |(calls, usec), l| (calls + stat(l, "calls"), usec + stat(l, "usec")))
}

/// What Redis itself logged (SLOWLOG) as taking `limit` or more since
/// `since_unix` (seconds): (µs, whether it names a key under `prefix`, the command).
async fn slow_commands(url: &str, prefix: &str, since_unix: i64, limit: Duration) -> Vec<(i64, bool, String)> {
    let client = redis::Client::open(url).expect("redis url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("redis answers");
    let entries: Vec<redis::Value> =
        redis::cmd("SLOWLOG").arg("GET").arg(128).query_async(&mut conn).await.expect("SLOWLOG");
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        redis::Value::Int(i) => i.to_string(),
        _ => String::new(),
    };
    entries
        .iter()
        .filter_map(|e| {
            let redis::Value::Array(fields) = e else { return None };
            let (redis::Value::Int(at), redis::Value::Int(us), redis::Value::Array(args)) =
                (fields.get(1)?, fields.get(2)?, fields.get(3)?)
            else {
                return None;
            };
            let args: Vec<String> = args.iter().map(text).collect();
            let ours = args.iter().any(|a| a.starts_with(&format!("{prefix}:")));
            (*at >= since_unix && *us >= limit.as_micros() as i64)
                .then(|| (*us, ours, args.iter().take(3).cloned().collect::<Vec<_>>().join(" ")))
        })
        .collect()
}

/// Judges a PING slower than the limit by Redis' own clock: fails if one of
/// our calls ran that long inside Redis (SLOWLOG, which a busy machine's
/// scheduling does not enter). Otherwise the wait was another client's slow
/// command (the Redis every test shares: some clean up with `KEYS`) or this
/// process or Redis not getting a core in time, and is only reported.
async fn judge_slow_ping(url: &str, prefix: &str, since_unix: i64, slowest: Duration) {
    let slow = slow_commands(url, prefix, since_unix, PING_LIMIT).await;
    let ours: Vec<_> = slow.iter().filter(|(_, ours, _)| *ours).collect();
    assert!(ours.is_empty(), "our Redis calls took {PING_LIMIT:?} or more: {ours:?}");
    println!("a PING took {slowest:?}; none of our calls ran that long in Redis; other slow commands: {slow:?}");
}

/// A pool on the test's schema, with the sums read model and the read progress migrated.
async fn read_model_pool(pg: &common::engine::config::PgConfig) -> deadpool_postgres::Pool {
    let pool = common::engine::pg::pool(pg).unwrap();
    common::engine::pg::migrate(&pool, pg, &[increments::migrations::READ_MODEL, migrations::READ_PROGRESS])
        .await
        .unwrap();
    pool
}

/// Every row of `increments` as (Redis key, version, sum).
async fn postgres_rows(
    client: &deadpool_postgres::Client,
    cache: &VersionedCache<StoredSum>,
) -> Vec<(String, i64, String)> {
    let rows = client
        .query("SELECT key::text AS key, input_offset, value::text AS value FROM increments ORDER BY key", &[])
        .await
        .expect("reading increments");
    rows.iter().map(|r| (cache.store().key("increment", r.get("key")), r.get("input_offset"), r.get("value"))).collect()
}

/// The rows whose Redis copy differs from PostgreSQL's (pipelined HMGETs, a few thousand at a time).
async fn differences(url: &str, want: &[(String, i64, String)]) -> usize {
    let client = redis::Client::open(url).expect("redis url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("redis answers");
    let mut wrong = 0;
    for chunk in want.chunks(5_000) {
        let mut pipe = redis::pipe();
        for (key, _, _) in chunk {
            pipe.cmd("HMGET").arg(key).arg("v").arg("s");
        }
        let got: Vec<(Option<i64>, Option<String>)> = pipe.query_async(&mut conn).await.expect("HMGETs");
        wrong +=
            chunk.iter().zip(got).filter(|((_, v, s), (gv, gs))| *gv != Some(*v) || gs.as_ref() != Some(s)).count();
    }
    wrong
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_catch_up_of_300k_rows_completes_in_bounded_calls_while_redis_keeps_answering() {
    let (_, redis, pg) = isolated(&unique_suffix());
    // Whatever happens, 300k keys must not stay in the Redis every test shares.
    let outcome = tokio::spawn(catch_up_of_300k_rows(redis.clone(), pg.clone())).await;
    common::test_util::clear_redis_prefix(&redis).await;
    drop_schema(&pg).await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn catch_up_of_300k_rows(redis: common::engine::config::RedisConfig, pg: common::engine::config::PgConfig) {
    let pool = read_model_pool(&pg).await;
    let client = pool.get().await.unwrap();
    // 300k keys changed just now (within the TTL), none of them in Redis: what
    // a materializer restart finds after a load (or after dying with rows pending).
    client
        .execute(
            "INSERT INTO increments (key, value, partition, input_offset)
             SELECT md5(i::text)::uuid, i * 7, 0, i FROM generate_series(1, $1::bigint) AS i",
            &[&ROWS],
        )
        .await
        .unwrap();
    let cache = VersionedCache::<StoredSum>::connect(&redis).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let slowest_us = Arc::new(AtomicU64::new(0));
    let pings = pinger(redis.url.clone(), stop.clone(), slowest_us.clone());
    tokio::time::sleep(Duration::from_millis(50)).await;

    // The restarted materializer's first batch: one new sum and a progress record.
    let sink = ReadModelSink::new(Increments, pool.clone(), cache.clone(), redis.ttl);
    let fresh = IncrementKey::from_uuid(uuid::Uuid::from_u128(u128::MAX - 1));
    let sum =
        IncrementSum { key: fresh, sum: 42, partition: 0, input_offset: ROWS + 1, watermark_ms: common::now_ms() };
    let progress = Progress {
        events_topic: "events".into(),
        partition: 0,
        next_offset: ROWS + 2,
        aggregates_partition: 0,
        aggregates_partitions: 1,
    };
    let (calls_before, usec_before) = script_time(&redis.url).await;
    let since_unix = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs() as i64 - 1;
    let started = Instant::now();
    let within = Duration::from_secs(120);
    sink.write(&[sum], std::slice::from_ref(&progress), None).await.unwrap();
    // The materializer's heartbeat drives the catch-up; here the test does.
    let marked = loop {
        let slowest = Duration::from_micros(slowest_us.load(Ordering::Relaxed));
        if slowest >= PING_LIMIT {
            // Fails at once if unexplained, rather than keep blocking the Redis every test shares.
            judge_slow_ping(&redis.url, &redis.key_prefix, since_unix, slowest).await;
            slowest_us.store(0, Ordering::Relaxed);
        }
        let marks = cache.store().progress("events", 0).await.unwrap_or_default();
        if marks.iter().any(|m| m.next_offset == progress.next_offset) {
            break started.elapsed();
        }
        assert!(started.elapsed() < within, "progress marks not in Redis after {within:?}");
        sink.catch_up().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    stop.store(true, Ordering::Relaxed);
    let pings = pings.join().expect("the pinger");
    let slowest = Duration::from_micros(slowest_us.load(Ordering::Relaxed));
    let (calls, usec) = script_time(&redis.url).await;
    let (calls, usec) = (calls - calls_before, usec - usec_before);
    println!(
        "caught up {ROWS} rows, marks written after {marked:?}; {pings} PINGs, slowest not explained by another \
         client {slowest:?}; \
         Redis ran {calls} scripts (all clients) averaging {} µs",
        usec / calls.max(1)
    );
    if slowest >= PING_LIMIT {
        judge_slow_ping(&redis.url, &redis.key_prefix, since_unix, slowest).await;
    }
    let ours = slow_commands(&redis.url, &redis.key_prefix, since_unix, PING_LIMIT).await;
    assert!(ours.iter().all(|(_, ours, _)| !ours), "our Redis calls took {PING_LIMIT:?} or more: {ours:?}");

    // Marks only once Redis holds every row: all 300k and the new one, as PostgreSQL has them.
    let want = postgres_rows(&client, &cache).await;
    assert_eq!(want.len(), ROWS as usize + 1);
    assert_eq!(differences(&redis.url, &want).await, 0, "rows whose Redis copy differs from PostgreSQL");
}

/// A TCP proxy in front of Redis that can stall: while stalled, it forwards
/// nothing either way (a Redis that stopped answering without closing).
struct StallingProxy {
    addr: std::net::SocketAddr,
    stalled: Arc<AtomicBool>,
}

impl StallingProxy {
    async fn start(upstream: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let stalled = Arc::new(AtomicBool::new(false));
        let (upstream, flag) = (upstream.to_owned(), stalled.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else { continue };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(Self::pump(cr, sw, flag.clone()));
                tokio::spawn(Self::pump(sr, cw, flag.clone()));
            }
        });
        StallingProxy { addr, stalled }
    }

    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        stalled: Arc<AtomicBool>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            while stalled.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_never_wait_for_a_redis_that_stopped_answering() {
    let (_, mut redis, pg) = isolated(&unique_suffix());
    let pool = read_model_pool(&pg).await;
    let direct = VersionedCache::<StoredSum>::connect(&redis).await.unwrap();
    let upstream = redis.url.trim_start_matches("redis://").trim_end_matches('/').to_owned();
    let proxy = StallingProxy::start(&upstream).await;
    redis.url = format!("redis://{}", proxy.addr);
    let cache = VersionedCache::<StoredSum>::connect(&redis).await.unwrap();
    let sink = Arc::new(ReadModelSink::new(Increments, pool.clone(), cache, redis.ttl));
    // The materializer's heartbeat, driving the copy to Redis in the background.
    let stop = Arc::new(AtomicBool::new(false));
    let copier = tokio::spawn({
        let (sink, stop) = (sink.clone(), stop.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                sink.catch_up().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let key = |i: u128| IncrementKey::from_uuid(uuid::Uuid::from_u128((7 << 64) + i));
    let batch = |round: i64| -> Vec<IncrementSum> {
        (0..100u128)
            .map(|i| IncrementSum {
                key: key(i),
                sum: i128::from(round) * 10 + i as i128,
                partition: 0,
                input_offset: round,
                watermark_ms: common::now_ms(),
            })
            .collect()
    };
    sink.write(&batch(1), &[], None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Redis stops answering: every batch still commits at PostgreSQL's pace.
    proxy.stalled.store(true, Ordering::Relaxed);
    let mut slowest = Duration::ZERO;
    for round in 2..=30 {
        let started = Instant::now();
        sink.write(&batch(round), &[], None).await.unwrap();
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("slowest batch while Redis stalled: {slowest:?}");
    assert!(slowest < Duration::from_millis(400), "a batch waited {slowest:?} for a Redis that does not answer");

    // Redis answers again: it gets the newest rows.
    proxy.stalled.store(false, Ordering::Relaxed);
    common::test_util::wait_until("Redis to catch up", Duration::from_secs(30), || async {
        for i in 0..100u128 {
            let got = direct.get(&key(i)).await.ok()??;
            if (got.version, got.row.0) != (30, 300 + i as i128) {
                return None;
            }
        }
        Some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    copier.await.unwrap();
    common::test_util::clear_redis_prefix(&redis).await;
    drop_schema(&pg).await;
}

/// A sum of `key(i)` at `offset`.
fn sum_of(i: u128, offset: i64) -> IncrementSum {
    IncrementSum {
        key: IncrementKey::from_uuid(uuid::Uuid::from_u128((9 << 64) + i)),
        sum: i128::from(offset) * 1000 + i as i128,
        partition: 0,
        input_offset: offset,
        watermark_ms: common::now_ms(),
    }
}

#[tokio::test]
async fn the_catch_up_copies_the_rows_changed_within_the_ttl_and_rows_dropped_when_too_many_were_held() {
    let (_, redis, pg) = isolated(&unique_suffix());
    let pool = read_model_pool(&pg).await;
    let client = pool.get().await.unwrap();
    let cache = VersionedCache::<StoredSum>::connect(&redis).await.unwrap();
    // Rows changed long ago (beyond one TTL: their Redis copies expired) and a minute ago.
    let old: Vec<IncrementSum> = (0..30).map(|i| sum_of(i, 1)).collect();
    let recent: Vec<IncrementSum> = (30..60).map(|i| sum_of(i, 2)).collect();
    {
        let mut c = pool.get().await.unwrap();
        let tx = c.transaction().await.unwrap();
        increments::read_model::write_sums(&tx, &old).await.unwrap();
        increments::read_model::write_sums(&tx, &recent).await.unwrap();
        tx.commit().await.unwrap();
    }
    client
        .execute(
            "UPDATE increments SET updated_at = now() - CASE input_offset WHEN 1 THEN interval '3 hours'
                 ELSE interval '1 minute' END",
            &[],
        )
        .await
        .unwrap();

    // The start-up catch-up: what changed within the TTL, a page at a time.
    let sink = ReadModelSink::with_max_held(Increments, pool.clone(), cache.clone(), redis.ttl, 10);
    sink.catch_up().await;
    for s in &recent {
        let cached = cache.get(&s.key).await.unwrap().map(|c| (c.version, c.row.0));
        assert_eq!(cached, Some((s.input_offset, s.sum)), "{:?}: changed within the TTL", s.key);
    }
    for s in &old {
        assert_eq!(cache.get(&s.key).await.unwrap(), None, "{:?} changed before the TTL: not copied", s.key);
    }

    // At most 10 rows held: a batch of 12 overflows, so Redis gets them from
    // PostgreSQL, by a catch-up of what changed since that batch began only.
    let mut conn = redis::Client::open(redis.url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    for s in &recent {
        let key = cache.store().key("increment", &s.key.to_string());
        let _: () = redis::cmd("UNLINK").arg(key).query_async(&mut conn).await.unwrap();
    }
    let progress = Progress {
        events_topic: "events".into(),
        partition: 0,
        next_offset: 100,
        aggregates_partition: 0,
        aggregates_partitions: 1,
    };
    let fresh: Vec<IncrementSum> = (60..72).map(|i| sum_of(i, 3)).collect();
    sink.write(&fresh, std::slice::from_ref(&progress), None).await.unwrap();
    sink.catch_up().await;
    for s in &fresh {
        let cached = cache.get(&s.key).await.unwrap().map(|c| (c.version, c.row.0));
        assert_eq!(cached, Some((s.input_offset, s.sum)), "{:?}: dropped, then caught up", s.key);
    }
    for s in &recent {
        assert_eq!(cache.get(&s.key).await.unwrap(), None, "{:?}: older than the dropped batch", s.key);
    }
    let marks = cache.store().progress("events", 0).await.unwrap();
    assert_eq!(marks.iter().map(|m| m.next_offset).collect::<Vec<_>>(), vec![100], "marks once caught up");

    common::test_util::clear_redis_prefix(&redis).await;
    drop_schema(&pg).await;
}

/// A start catches Redis up from the settled marks the materializers before
/// it left, not over the whole TTL: after a clean stop nothing is copied again;
/// after one killed with rows held, exactly those rows.
#[tokio::test]
async fn a_start_catches_up_from_the_last_settled_mark_not_over_the_whole_ttl() {
    let (_, redis, pg) = isolated(&unique_suffix());
    let pool = read_model_pool(&pg).await;
    let cache = VersionedCache::<StoredSum>::connect(&redis).await.unwrap();
    let sink = || ReadModelSink::with_max_held(Increments, pool.clone(), cache.clone(), redis.ttl, 1_000);
    // 50 rows changed a minute ago: within the TTL, so a first start (no mark) copies them.
    let early: Vec<IncrementSum> = (0..50).map(|i| sum_of(i, 1)).collect();
    {
        let mut c = pool.get().await.unwrap();
        let tx = c.transaction().await.unwrap();
        increments::read_model::write_sums(&tx, &early).await.unwrap();
        tx.execute("UPDATE increments SET updated_at = now() - interval '1 minute'", &[]).await.unwrap();
        tx.commit().await.unwrap();
    }
    let first = sink();
    first.catch_up().await;
    assert_eq!(first.caught_up_rows(), 50, "no mark yet: one TTL back");
    drop(first);

    // A clean stop left its mark: the next start copies nothing (it used to copy the 50 again).
    let second = sink();
    second.catch_up().await;
    assert_eq!(second.caught_up_rows(), 0, "nothing changed since the clean stop");

    // Killed holding rows: written to PostgreSQL, never copied to Redis.
    let held: Vec<IncrementSum> = (50..60).map(|i| sum_of(i, 2)).collect();
    second.write(&held, &[], None).await.unwrap();
    drop(second);
    for s in &held {
        assert_eq!(cache.get(&s.key).await.unwrap(), None, "{:?} never reached Redis", s.key);
    }
    let third = sink();
    third.catch_up().await;
    assert_eq!(third.caught_up_rows(), held.len(), "what the killed one held, not the 50 before it");
    for s in &held {
        let cached = cache.get(&s.key).await.unwrap().map(|c| (c.version, c.row.0));
        assert_eq!(cached, Some((s.input_offset, s.sum)), "{:?}: caught up", s.key);
    }
    let marks = cache.store().settled_marks("increments").await.unwrap();
    assert_eq!(marks.len(), 1, "the marks the third start covered are gone, its own stays: {marks:?}");

    common::test_util::clear_redis_prefix(&redis).await;
    drop_schema(&pg).await;
}
