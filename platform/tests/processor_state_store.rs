//! The processor's state store against real PostgreSQL, with the analytics
//! workload: a checkpoint restores exactly (position, event ids and the
//! workload's state), and an instance that lost its partition cannot write.

use std::collections::HashMap;

use analytics::processor::{Analytics, AnalyticsState};
use analytics::{ClickEvent, EventKind, HourCounts, HourStart, UserId};
use common::test_util::{drop_schema, isolated, unique_suffix};
use processor::engine::state_store::{record_chunks, Claimed, EngineCheckpoint, StateStore, Store, StoreError};
use processor::engine::{Aggregation, Record};

const H: i64 = 1_900_000_000_000 / 3_600_000 * 3_600_000;
const RETENTION: i64 = 8 * 24 * 3_600_000;
const WORKLOAD: Analytics = Analytics { retention_ms: RETENTION };

fn event(hour_offset: i64, user: u64, kind: EventKind, id: Option<&str>) -> ClickEvent {
    ClickEvent {
        timestamp_ms: H + hour_offset * 3_600_000,
        user: UserId::parse(&format!("user-{user}")).unwrap(),
        kind,
        accepted_at_ms: H,
        id: id.map(str::to_owned),
    }
}

/// What the engine does with one record: position, dedup, apply.
fn apply(p: &mut Claimed<AnalyticsState>, event: ClickEvent) {
    let offset = p.position.next_offset;
    p.position.next_offset += 1;
    p.position.watermark_ms = p.position.watermark_ms.max(event.accepted_at_ms);
    if let Some(id) = WORKLOAD.dedup_id(&event) {
        if !p.ids.admit(id, p.position.watermark_ms) {
            return;
        }
    }
    let record = Record { offset, accepted_at_ms: event.accepted_at_ms, watermark_ms: p.position.watermark_ms };
    WORKLOAD.apply(&mut p.state, record, event).unwrap();
}

/// What the engine does at a checkpoint.
async fn checkpoint(store: &StateStore, partition: i32, p: &mut Claimed<AnalyticsState>) -> Result<(), StoreError> {
    let changes = WORKLOAD.changes(&mut p.state);
    let cp = EngineCheckpoint {
        position: p.position,
        epoch: p.epoch,
        new_ids: &p.ids.new_ids(),
        closed_id_hours: &[],
        id_chunks: &p.id_chunks,
        emits: &[],
        emitted_through: None,
    };
    let (ids_added, receipt) = store.commit(&WORKLOAD, partition, cp, changes.as_ref()).await?;
    record_chunks(&mut p.id_chunks, ids_added, &[]);
    p.ids.mark_checkpointed();
    if let (Some(changes), Some(receipt)) = (changes, receipt) {
        WORKLOAD.committed(&mut p.state, changes, receipt);
    }
    Ok(())
}

fn counts(p: &Claimed<AnalyticsState>) -> HashMap<HourStart, HourCounts> {
    p.state.window().counts().collect()
}

#[tokio::test]
async fn checkpoints_restore_exactly_and_zombies_are_fenced() {
    let (_, _, pg) = isolated(&unique_suffix());
    let pool = common::engine::pg::pool(&pg).unwrap();
    common::engine::pg::migrate(&pool, &pg, &platform::processor().migrations()).await.unwrap();
    let store = StateStore::new(pool.clone(), "events".into());

    // Instance A claims partition 0 and checkpoints twice (the second adds users to an existing hour).
    let mut a = store.claim(&WORKLOAD, 0, RETENTION).await.unwrap();
    assert_eq!((a.epoch, a.position.next_offset), (1, 0));
    for u in [1u64, 2, 3, 0] {
        apply(&mut a, event(0, u, EventKind::Click, None));
    }
    apply(&mut a, event(1, 9, EventKind::Impression, Some("first")));
    checkpoint(&store, 0, &mut a).await.unwrap();
    apply(&mut a, event(0, 2, EventKind::Impression, None));
    apply(&mut a, event(0, 4, EventKind::Click, None));
    checkpoint(&store, 0, &mut a).await.unwrap();
    apply(&mut a, event(0, 5, EventKind::Click, None)); // not checkpointed: must not survive

    // Instance B takes over: it sees exactly the checkpointed state, ids included.
    let mut b = store.claim(&WORKLOAD, 0, RETENTION).await.unwrap();
    assert_eq!(b.epoch, 2);
    assert_eq!(b.position.next_offset, 7);
    assert_eq!(counts(&b)[&HourStart::of(H)], HourCounts { unique_users: 5, clicks: 5, impressions: 1 });
    let next_hour = HourStart::of(H + 3_600_000);
    assert_eq!(counts(&b)[&next_hour], HourCounts { unique_users: 1, clicks: 0, impressions: 1 });
    apply(&mut b, event(1, 9, EventKind::Impression, Some("first"))); // a client's retry
    assert_eq!(counts(&b)[&next_hour].impressions, 1, "a restored partition still knows the id");

    // A, now a zombie, cannot write any more.
    match checkpoint(&store, 0, &mut a).await {
        Err(StoreError::Fenced(0)) => {}
        other => panic!("expected the zombie to be fenced, got {other:?}"),
    }
    // Other partitions are independent.
    assert_eq!(store.claim(&WORKLOAD, 1, RETENTION).await.unwrap().epoch, 1);
    drop_schema(&pg).await;
}

#[tokio::test]
async fn many_checkpoints_of_one_hour_are_merged_and_still_restore_exactly() {
    let (_, _, pg) = isolated(&unique_suffix());
    let pool = common::engine::pg::pool(&pg).unwrap();
    common::engine::pg::migrate(&pool, &pg, &platform::processor().migrations()).await.unwrap();
    let store = StateStore::new(pool.clone(), "events".into());
    let mut a = store.claim(&WORKLOAD, 3, RETENTION).await.unwrap();
    for i in 0..150u64 {
        apply(&mut a, event(0, i % 120 + 1, EventKind::Click, Some(&format!("id-{i}"))));
        checkpoint(&store, 3, &mut a).await.unwrap();
    }
    let client = pool.get().await.unwrap();
    for table in ["processor_user_chunks", "processor_id_chunks"] {
        let chunks: i64 = client
            .query_one(&format!("SELECT count(*) AS chunks FROM {table} WHERE partition = 3"), &[])
            .await
            .unwrap()
            .get("chunks");
        assert!(chunks < 64, "{chunks} chunks left in {table} after merging");
    }
    let b = store.claim(&WORKLOAD, 3, RETENTION).await.unwrap();
    assert_eq!(counts(&b)[&HourStart::of(H)], HourCounts { unique_users: 120, clicks: 150, impressions: 0 });
    assert_eq!(b.ids.held(), 150);
    drop_schema(&pg).await;
}

#[tokio::test]
async fn increment_sums_beyond_i64_restore_exactly() {
    use increments::processor::Increments;
    use increments::{IncrementEvent, IncrementKey, IncrementValue};

    let (_, _, pg) = isolated(&unique_suffix());
    let pool = common::engine::pg::pool(&pg).unwrap();
    common::engine::pg::migrate(&pool, &pg, &platform::processor().migrations()).await.unwrap();
    let store = StateStore::new(pool.clone(), "increments".into());
    let key = IncrementKey::parse("0B3C8F2E-7D41-4C55-9A1E-5F6B7C8D9E0F").unwrap();
    let mut a = store.claim(&Increments, 0, RETENTION).await.unwrap();
    for offset in 0..4 {
        let event = IncrementEvent { key, value: IncrementValue::new(i64::MAX).unwrap(), accepted_at_ms: H, id: None };
        a.position.next_offset = offset + 1;
        Increments.apply(&mut a.state, Record { offset, accepted_at_ms: H, watermark_ms: H }, event).unwrap();
    }
    let changes = Increments.changes(&mut a.state).expect("a key changed");
    assert_eq!(changes, vec![(key, 4 * i128::from(i64::MAX))]);
    let cp = EngineCheckpoint {
        position: a.position,
        epoch: a.epoch,
        new_ids: &a.ids.new_ids(),
        closed_id_hours: &[],
        id_chunks: &a.id_chunks,
        emits: &[],
        emitted_through: None,
    };
    store.commit(&Increments, 0, cp, Some(&changes)).await.unwrap();
    Increments.committed(&mut a.state, changes, ());
    assert!(Increments.changes(&mut a.state).is_none());

    let b = store.claim(&Increments, 0, RETENTION).await.unwrap();
    assert_eq!(b.position.next_offset, 4);
    assert_eq!(b.state.sum(&key), Some(4 * i128::from(i64::MAX)));
    let sql_sum: String = pool
        .get()
        .await
        .unwrap()
        .query_one(
            "SELECT sum::text AS sum FROM processor_increment_sums WHERE key = $1::text::uuid",
            &[&key.to_string()],
        )
        .await
        .unwrap()
        .get("sum");
    assert_eq!(sql_sum, "36893488147419103228");
    drop_schema(&pg).await;
}

#[tokio::test]
async fn day_user_sets_restore_exactly_and_are_dropped_when_their_day_closes() {
    use analytics::DayStart;
    let (_, _, pg) = isolated(&unique_suffix());
    let pool = common::engine::pg::pool(&pg).unwrap();
    common::engine::pg::migrate(&pool, &pg, &platform::processor().migrations()).await.unwrap();
    let store = StateStore::new(pool.clone(), "events".into());
    let day = DayStart::of(H);
    let hours_to_next_day = (day.end_ms() - H) / 3_600_000;
    let days = |p: &Claimed<AnalyticsState>| p.state.window().day_counts().collect::<HashMap<_, _>>();

    let mut a = store.claim(&WORKLOAD, 2, RETENTION).await.unwrap();
    for (hour, user) in [(0, 1), (0, 2), (hours_to_next_day - 1, 1), (hours_to_next_day - 1, 3)] {
        apply(&mut a, event(hour, user, EventKind::Click, None));
    }
    checkpoint(&store, 2, &mut a).await.unwrap();
    apply(&mut a, event(hours_to_next_day, 1, EventKind::Click, None)); // the next day
    apply(&mut a, event(0, 4, EventKind::Impression, None));
    checkpoint(&store, 2, &mut a).await.unwrap();
    let want = HashMap::from([(day, 4), (DayStart::of(day.end_ms()), 1)]);
    assert_eq!(days(&a), want);

    let mut b = store.claim(&WORKLOAD, 2, RETENTION).await.unwrap();
    assert_eq!(days(&b), want, "restored exactly");
    // The watermark moves past the day's close: its set leaves memory and the store.
    let late = ClickEvent {
        accepted_at_ms: day.end_ms() + RETENTION,
        ..event(hours_to_next_day + 200, 9, EventKind::Click, None)
    };
    apply(&mut b, late);
    checkpoint(&store, 2, &mut b).await.unwrap();
    assert!(!days(&b).contains_key(&day));
    let client = pool.get().await.unwrap();
    let left: i64 = client
        .query_one(
            "SELECT count(*) AS chunks FROM processor_day_user_chunks WHERE partition = 2 AND hour_start_ms = $1",
            &[&day.start_ms()],
        )
        .await
        .unwrap()
        .get("chunks");
    assert_eq!(left, 0);
    let c = store.claim(&WORKLOAD, 2, RETENTION).await.unwrap();
    assert_eq!(days(&c), days(&b));
    drop_schema(&pg).await;
}
