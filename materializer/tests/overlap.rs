//! The pipeline reads its next batch while the current one is written, and
//! writes it only after: through a real topic, lease group, PostgreSQL and
//! Redis, with a test workload whose writes wait while the test holds them.
//! Batches reach the stores in the order they were read, the positions move
//! only after the rows they cover are in PostgreSQL, a full batch stops
//! reading, and a replay from the start (new records arriving while a write
//! is held) changes nothing it already wrote.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use common::engine::avro::DecodeError;
use common::engine::config::LeaseConfig;
use common::engine::kafka::{ensure_topics, TopicSpec};
use common::engine::pg::PgError;
use common::engine::shutdown::CancellationToken;
use common::engine::store::cache::{RedisStore, VersionedCache};
use common::engine::store::{CachedRow, Column, ColumnType, Row, Value, Version, Versioned, VersionedTable, WriteTx};
use common::test_util::{clear_redis_prefix, delete_topic_names, drop_schema, isolated, unique_suffix, wait_until};
use materializer::engine::{Engine, Registration, SinkWorkload, Source};
use rdkafka::producer::{FutureProducer, FutureRecord};

const MAX_BATCH: usize = 8;
const KEYS: usize = 4;
const PARTITIONS: i32 = 2;
const WAIT: Duration = Duration::from_secs(60);

/// `overlap_rows (key TEXT, value BIGINT cached as x, seq BIGINT, updated_at)`:
/// a key's newest record, versioned by its sequence number (the input offset of a real workload).
static TABLE: LazyLock<VersionedTable> = LazyLock::new(|| {
    VersionedTable::new(
        "overlap_rows",
        vec![Column::new("key", ColumnType::Text)],
        vec![Column::new("value", ColumnType::BigInt).cached_as("x")],
        Version::Offset("seq"),
    )
});

#[derive(Debug, Clone, PartialEq, Eq)]
struct Latest {
    value: i64,
}

impl CachedRow for Latest {
    type Id = String;
    const KIND: &'static str = "latest";

    fn table() -> &'static VersionedTable {
        &TABLE
    }

    fn key(id: &String) -> Row {
        Row::new().with("key", Value::Text(id.clone()))
    }

    fn id(key: &Row) -> Result<String, PgError> {
        key.text("key").map(str::to_owned)
    }

    fn to_row(&self) -> Row {
        Row::new().with("value", Value::BigInt(self.value))
    }

    fn from_row(row: &Row) -> Result<Self, PgError> {
        Ok(Latest { value: row.big_int("value")? })
    }
}

/// One record: `<key>:<seq>`, its value `seq * 10`.
#[derive(Debug, Clone)]
struct Record {
    key: String,
    seq: i64,
}

/// What the test sees of the workload's calls, and its hold on the writes.
struct Probe {
    /// While true, a write waits (inside its transaction) before writing anything.
    hold: tokio::sync::watch::Sender<bool>,
    decoded: AtomicUsize,
    /// Writes begun, and the size of the last one begun.
    entered: AtomicUsize,
    last_size: AtomicUsize,
    writing: AtomicBool,
    /// Two writes were in progress at once.
    overlapped: AtomicBool,
    /// Per write, in the order they were made: each key's highest sequence in it.
    writes: Mutex<Vec<BTreeMap<String, i64>>>,
}

impl Probe {
    fn new() -> Arc<Self> {
        Arc::new(Probe {
            hold: tokio::sync::watch::channel(false).0,
            decoded: AtomicUsize::new(0),
            entered: AtomicUsize::new(0),
            last_size: AtomicUsize::new(0),
            writing: AtomicBool::new(false),
            overlapped: AtomicBool::new(false),
            writes: Mutex::new(Vec::new()),
        })
    }
}

struct HeldWrites(Arc<Probe>);

impl SinkWorkload for HeldWrites {
    const NAME: &'static str = "overlap";
    type Aggregate = Record;
    type Row = Latest;

    fn decode(&self, bytes: &[u8]) -> Result<Record, DecodeError> {
        let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::Invalid("not utf-8"))?;
        let (key, seq) = text.split_once(':').ok_or(DecodeError::Invalid("no ':'"))?;
        let seq = seq.parse().map_err(|_| DecodeError::Invalid("seq"))?;
        self.0.decoded.fetch_add(1, Ordering::SeqCst);
        Ok(Record { key: key.to_owned(), seq })
    }

    fn watermark_ms(&self, _: &Record) -> i64 {
        common::now_ms()
    }

    async fn write(&self, tx: &WriteTx<'_>, batch: &[Record]) -> Result<Vec<String>, PgError> {
        let probe = &self.0;
        probe.overlapped.fetch_or(probe.writing.swap(true, Ordering::SeqCst), Ordering::SeqCst);
        probe.last_size.store(batch.len(), Ordering::SeqCst);
        probe.entered.fetch_add(1, Ordering::SeqCst);
        let _ = probe.hold.subscribe().wait_for(|held| !held).await;
        let rows: Vec<Row> = batch
            .iter()
            .map(|r| Latest::key(&r.key).with("value", Value::BigInt(r.seq * 10)).with("seq", Value::BigInt(r.seq)))
            .collect();
        let written = TABLE.upsert(tx, rows).await;
        let mut newest = BTreeMap::new();
        for r in batch {
            let seq = newest.entry(r.key.clone()).or_insert(r.seq);
            *seq = (*seq).max(r.seq);
        }
        probe.writes.lock().unwrap().push(newest.clone());
        probe.writing.store(false, Ordering::SeqCst);
        written?;
        Ok(newest.into_keys().collect())
    }
}

fn key(k: usize) -> String {
    format!("k{k}")
}

/// Sends `<key>:<seq>` for every key and seq, each key always to the same partition.
async fn produce(
    producer: &FutureProducer,
    topic: &str,
    keys: impl Iterator<Item = usize>,
    seqs: std::ops::Range<i64>,
) {
    let keys: Vec<usize> = keys.collect();
    for seq in seqs {
        for &k in &keys {
            let payload = format!("{}:{seq}", key(k));
            let record = FutureRecord::to(topic).partition(k as i32 % PARTITIONS).key(&payload).payload(&payload);
            producer.send(record, Duration::from_secs(10)).await.expect("producing");
        }
    }
}

/// The sum of the stored next offsets of `group` (its records written), or `None` before any is stored.
async fn stored(pool: &deadpool_postgres::Pool, group: &str) -> Option<i64> {
    let client = pool.get().await.unwrap();
    let row = client
        .query_one("SELECT sum(next_offset)::bigint AS n FROM consumer_offsets WHERE group_name = $1", &[&group])
        .await
        .unwrap();
    row.get("n")
}

/// `(key, value, seq, updated_at)` of every row, by key.
async fn rows(pool: &deadpool_postgres::Pool) -> Vec<(String, i64, i64, std::time::SystemTime)> {
    let client = pool.get().await.unwrap();
    let rows = client.query("SELECT key, value, seq, updated_at FROM overlap_rows ORDER BY key", &[]).await.unwrap();
    rows.iter().map(|r| (r.get("key"), r.get("value"), r.get("seq"), r.get("updated_at"))).collect()
}

/// Every key's highest sequence only grows from one write to the next.
fn assert_written_in_order(writes: &[BTreeMap<String, i64>]) {
    let mut last: BTreeMap<&str, i64> = BTreeMap::new();
    for (i, write) in writes.iter().enumerate() {
        for (k, seq) in write {
            let before = last.insert(k, *seq);
            assert!(before.is_none_or(|b| b < *seq), "write {i}: {k} at {seq} after {before:?}: {writes:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_batch_is_read_while_a_write_is_held_and_written_after_it_in_order() {
    let suffix = unique_suffix();
    let (kafka, redis, pg) = isolated(&suffix);
    let pool = common::engine::pg::pool(&pg).unwrap();
    let engine_tables = common::engine::pg::migrations_for(common::engine::workload::Service::Materializer, []);
    common::engine::pg::migrate(&pool, &pg, &engine_tables).await.unwrap();
    pool.get()
        .await
        .unwrap()
        .batch_execute(
            "CREATE TABLE overlap_rows (key TEXT PRIMARY KEY, value BIGINT NOT NULL, seq BIGINT NOT NULL,
                 updated_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .await
        .unwrap();
    let topic = TopicSpec::aggregates_named(&kafka.aggregates_topic, PARTITIONS as u32);
    ensure_topics(&kafka.broker(), std::slice::from_ref(&topic)).await.unwrap();
    let producer: FutureProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &kafka.brokers).create().unwrap();
    let cache = VersionedCache::<Latest>::connect(&redis).await.unwrap();
    let engine = Engine {
        pool: pool.clone(),
        redis: RedisStore::connect(&redis).await.unwrap(),
        redis_ttl: redis.ttl,
        kafka: kafka.broker(),
        lease: LeaseConfig { member_lease: Duration::from_secs(6), member_heartbeat: Duration::from_millis(200) },
        max_batch: MAX_BATCH,
        batch_wait: Duration::from_millis(5),
    };
    let start = |probe: &Arc<Probe>, group: &str, token: &CancellationToken| {
        let source = Source { topic: topic.clone(), group_id: group.to_owned() };
        tokio::spawn(Registration::new(HeldWrites(probe.clone()), source).run(engine.clone(), token.clone()))
    };

    // The first write is held; records arrive meanwhile.
    let probe = Probe::new();
    probe.hold.send_replace(true);
    produce(&producer, &topic.name, 0..KEYS, 0..3).await;
    let group = format!("test-overlap-{suffix}");
    let token = CancellationToken::new();
    let pipeline = start(&probe, &group, &token);
    wait_until("the first write", WAIT, || async { (probe.entered.load(Ordering::SeqCst) == 1).then_some(()) }).await;
    let first = probe.last_size.load(Ordering::SeqCst);
    produce(&producer, &topic.name, 0..KEYS, 3..6).await;
    // The next batch fills while the first is written, up to its bound, and no further.
    let read = wait_until("the next batch read while the first is written", WAIT, || async {
        let decoded = probe.decoded.load(Ordering::SeqCst);
        (decoded >= first + MAX_BATCH).then_some(decoded)
    })
    .await;
    assert_eq!(read, first + MAX_BATCH, "a full batch stops reading while a write is in flight");
    assert_eq!(probe.entered.load(Ordering::SeqCst), 1, "one write in flight");
    assert_eq!(stored(&pool, &group).await, None, "no position stored before the rows it covers");
    assert!(rows(&pool).await.is_empty());

    probe.hold.send_replace(false);
    let total = (KEYS * 6) as i64;
    wait_until("every record written", WAIT, || async { (stored(&pool, &group).await == Some(total)).then_some(()) })
        .await;
    let written = rows(&pool).await;
    let expected: Vec<(String, i64, i64)> = (0..KEYS).map(|k| (key(k), 50, 5)).collect();
    assert_eq!(written.iter().map(|(k, v, s, _)| (k.clone(), *v, *s)).collect::<Vec<_>>(), expected);
    assert!(probe.entered.load(Ordering::SeqCst) >= 3, "three batches at least (24 records, 8 a batch)");
    assert!(!probe.overlapped.load(Ordering::SeqCst), "one write at a time");
    assert_written_in_order(&probe.writes.lock().unwrap());
    for k in 0..KEYS {
        let want = Some(Versioned { row: Latest { value: 50 }, version: 5 });
        wait_until("the rows in Redis", WAIT, || async { (cache.get(&key(k)).await.unwrap() == want).then_some(()) })
            .await;
    }
    token.cancel();
    pipeline.await.unwrap().unwrap();

    // A replay from the start (another group), new records arriving while its first write is held:
    // what was written stays as it was (not even touched), the new records land.
    let replay = Probe::new();
    replay.hold.send_replace(true);
    let replay_group = format!("test-overlap-replay-{suffix}");
    let token = CancellationToken::new();
    let pipeline = start(&replay, &replay_group, &token);
    wait_until("the replay's first write", WAIT, || async {
        (replay.entered.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    produce(&producer, &topic.name, 0..2, 6..7).await;
    replay.hold.send_replace(false);
    wait_until("the replay and the new records written", WAIT, || async {
        (stored(&pool, &replay_group).await == Some(total + 2)).then_some(())
    })
    .await;
    let after = rows(&pool).await;
    assert_eq!(after[2..], written[2..], "replayed rows untouched");
    for (k, (id, value, seq, _)) in after.iter().enumerate().take(2) {
        assert_eq!((id.clone(), *value, *seq), (key(k), 60, 6));
        let want = Some(Versioned { row: Latest { value: 60 }, version: 6 });
        wait_until("the new rows in Redis", WAIT, || async {
            (cache.get(&key(k)).await.unwrap() == want).then_some(())
        })
        .await;
    }
    for k in 2..KEYS {
        assert_eq!(cache.get(&key(k)).await.unwrap(), Some(Versioned { row: Latest { value: 50 }, version: 5 }));
    }
    assert!(!replay.overlapped.load(Ordering::SeqCst), "one write at a time");
    assert_written_in_order(&replay.writes.lock().unwrap());
    token.cancel();
    pipeline.await.unwrap().unwrap();

    clear_redis_prefix(&redis).await;
    drop_schema(&pg).await;
    delete_topic_names(&kafka.brokers, std::slice::from_ref(&kafka.aggregates_topic)).await;
}
