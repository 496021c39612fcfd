//! A measurement, not a check: what the outbox adds to each checkpoint's
//! PostgreSQL writes for the analytics workload (whose records carry the
//! hour's sketch, up to 49 KB), on the `make bench` POST mix (95 % current
//! hour, 5 % the past week, skewed users of 1M, ~1000 events per 50 ms
//! checkpoint). Runs the same checkpoints with and without the outbox rows
//! and prints WAL bytes per checkpoint (PostgreSQL is shared: approximate).
//!
//! `cargo test --release -p processor --test outbox_cost -- --ignored --nocapture`

use analytics::processor::Analytics;
use analytics::{ClickEvent, EventKind, UserId};
use common::test_util::{drop_schema, isolated, unique_suffix};
use increments::processor::Increments;
use increments::{IncrementEvent, IncrementKey, IncrementValue};
use processor::engine::state_store::{record_chunks, Claimed, EngineCheckpoint, StateStore, Store};
use processor::engine::{Aggregation, Emit, Position, Record, Scope};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const HOUR: i64 = 3_600_000;
const RETENTION: i64 = 8 * 24 * HOUR;
const WORKLOAD: Analytics = Analytics { retention_ms: RETENTION };
const CHECKPOINTS: usize = 200;
const EVENTS_PER_CHECKPOINT: usize = 1000;

fn event(rng: &mut StdRng, now: i64) -> ClickEvent {
    let hour = now / HOUR * HOUR;
    let ts = if rng.random_bool(0.95) {
        rng.random_range(hour..=now)
    } else {
        now - rng.random_range(HOUR..7 * 24 * HOUR - HOUR)
    };
    let x: f64 = rng.random();
    let user = (x * x * x * 1_000_000.0) as u64;
    let kind = if rng.random_bool(0.3) { EventKind::Click } else { EventKind::Impression };
    ClickEvent {
        timestamp_ms: ts,
        user: UserId::parse(&format!("u{user}")).unwrap(),
        kind,
        accepted_at_ms: now,
        id: None,
    }
}

async fn wal_lsn(pool: &deadpool_postgres::Pool) -> i64 {
    let client = pool.get().await.unwrap();
    client.query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint AS b", &[]).await.unwrap().get("b")
}

/// Runs [`CHECKPOINTS`] checkpoints of [`EVENTS_PER_CHECKPOINT`] events from
/// `next_event` on `partition`, with or without the outbox rows; returns (WAL
/// bytes, bytes of the records emitted).
async fn run<W: Aggregation>(
    workload: &W,
    store: &StateStore,
    pool: &deadpool_postgres::Pool,
    partition: i32,
    outbox: bool,
    mut next_event: impl FnMut(&mut StdRng, i64) -> W::Event,
) -> (i64, usize) {
    let mut rng = StdRng::seed_from_u64(7);
    let mut p: Claimed<_> = store.claim(workload, partition, RETENTION).await.unwrap();
    let now = common::now_ms();
    let (mut wal, mut payload, mut emitted_through) = (0i64, 0usize, None);
    for _ in 0..CHECKPOINTS {
        for _ in 0..EVENTS_PER_CHECKPOINT {
            let e = next_event(&mut rng, now);
            let offset = p.position.next_offset;
            p.position = Position { next_offset: offset + 1, watermark_ms: now };
            let record = Record { offset, accepted_at_ms: now, watermark_ms: now };
            let _ = workload.apply(&mut p.state, record, e);
        }
        let changes = workload.changes(&mut p.state);
        let scope = Scope { topic: store.topic(), partition };
        let emits = changes.as_ref().map(|c| workload.emits(scope, p.position, c)).unwrap_or_default();
        payload += emits.iter().map(Emit::bytes).sum::<usize>();
        let cp = EngineCheckpoint {
            position: p.position,
            epoch: p.epoch,
            new_ids: &p.ids.new_ids(),
            closed_id_hours: &[],
            id_chunks: &p.id_chunks,
            emits: if outbox { &emits } else { &[] },
            emitted_through: if outbox { emitted_through } else { None },
        };
        let before = wal_lsn(pool).await;
        let (added, receipt) = store.commit(workload, partition, cp, changes.as_ref()).await.unwrap();
        wal += wal_lsn(pool).await - before;
        record_chunks(&mut p.id_chunks, added, &[]);
        if let (Some(c), Some(r)) = (changes, receipt) {
            workload.committed(&mut p.state, c, r);
        }
        emitted_through = Some(p.position.next_offset);
    }
    (wal, payload)
}

/// An increment of 1 to one of 100k keys (the `make bench` increments load:
/// nearly every increment a different key).
fn increment(rng: &mut StdRng, now: i64) -> IncrementEvent {
    let key = IncrementKey::from_uuid(uuid::Uuid::from_u128(rng.random_range(0..100_000u128)));
    IncrementEvent { key, value: IncrementValue::new(1).unwrap(), accepted_at_ms: now, id: None }
}

#[tokio::test]
#[ignore = "a measurement: run in release with --nocapture"]
async fn outbox_bytes_per_checkpoint_of_increments() {
    let (_, _, pg) = isolated(&unique_suffix());
    let pool = common::engine::pg::pool(&pg).unwrap();
    common::engine::pg::migrate(&pool, &pg, &platform::processor().migrations()).await.unwrap();
    let store = StateStore::new(pool.clone(), "increments".into());
    for round in 0..2 {
        let (without, _) = run(&Increments, &store, &pool, round * 2, false, increment).await;
        let (with, _) = run(&Increments, &store, &pool, round * 2 + 1, true, increment).await;
        let per = |b: i64| b / CHECKPOINTS as i64;
        println!(
            "increments round {round}: {CHECKPOINTS} checkpoints of {EVENTS_PER_CHECKPOINT} increments: WAL per checkpoint without the outbox {} B, with {} B ({:.2}x)",
            per(without),
            per(with),
            with as f64 / without as f64
        );
    }
    drop_schema(&pg).await;
}

#[tokio::test]
#[ignore = "a measurement: run in release with --nocapture"]
async fn outbox_bytes_per_checkpoint() {
    let (_, _, pg) = isolated(&unique_suffix());
    let pool = common::engine::pg::pool(&pg).unwrap();
    common::engine::pg::migrate(&pool, &pg, &platform::processor().migrations()).await.unwrap();
    let store = StateStore::new(pool.clone(), "events".into());
    for round in 0..2 {
        let (without, payload) = run(&WORKLOAD, &store, &pool, round * 2, false, event).await;
        let (with, _) = run(&WORKLOAD, &store, &pool, round * 2 + 1, true, event).await;
        let per = |b: i64| b / CHECKPOINTS as i64;
        println!(
            "round {round}: {CHECKPOINTS} checkpoints of {EVENTS_PER_CHECKPOINT} events: WAL per checkpoint without the outbox {} B, with {} B ({:.2}x); records emitted per checkpoint {} B",
            per(without),
            per(with),
            with as f64 / without as f64,
            payload / CHECKPOINTS
        );
    }
    drop_schema(&pg).await;
}
