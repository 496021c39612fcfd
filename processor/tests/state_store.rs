//! The processor's state store against real PostgreSQL: a checkpoint
//! restores exactly, and an instance that lost its partition cannot write.

use std::collections::HashMap;

use common::analytics::bucket::Observation;
use common::analytics::{EventKind, HourCounts, HourStart};
use common::test_util::{drop_schema, isolated, unique_suffix};
use processor::state_store::{StateStore, StoreError};

const H: i64 = 1_900_000_000_000 / 3_600_000 * 3_600_000;
const RETENTION: i64 = 8 * 24 * 3_600_000;

fn obs(hour_offset: i64, user: u64, kind: EventKind) -> Observation {
    Observation {
        hour: HourStart::of(H + hour_offset * 3_600_000),
        user_hash: user,
        kind,
        accepted_at_ms: H,
        id_hash: None,
    }
}

#[tokio::test]
async fn checkpoints_restore_exactly_and_zombies_are_fenced() {
    let (_, _, pg) = isolated(&unique_suffix());
    let pool = common::engine::pg::pool(&pg).unwrap();
    common::engine::pg::migrate(&pool, &pg, processor::MIGRATIONS).await.unwrap();
    let store = StateStore::new(pool.clone(), "events".into());

    // Instance A claims partition 0 and checkpoints twice (the second adds users to an existing hour).
    let mut a = store.claim(0, RETENTION).await.unwrap();
    assert_eq!((a.epoch, a.window.next_offset()), (1, 0));
    for (i, u) in [1u64, 2, 3, 0].iter().enumerate() {
        a.window.apply(i as i64, obs(0, *u, EventKind::Click)).unwrap();
    }
    a.window.apply(4, obs(1, 9, EventKind::Impression)).unwrap();
    store.commit(0, a.epoch, &a.window.checkpoint(), &mut a.chunks).await.unwrap();
    a.window.mark_checkpointed();
    a.window.apply(5, obs(0, 2, EventKind::Impression)).unwrap();
    a.window.apply(6, obs(0, 4, EventKind::Click)).unwrap();
    store.commit(0, a.epoch, &a.window.checkpoint(), &mut a.chunks).await.unwrap();
    a.window.mark_checkpointed();
    a.window.apply(7, obs(0, 5, EventKind::Click)).unwrap(); // not checkpointed: must not survive

    // Instance B takes over: it sees exactly the checkpointed state.
    let b = store.claim(0, RETENTION).await.unwrap();
    assert_eq!(b.epoch, 2);
    assert_eq!(b.window.next_offset(), 7);
    let counts: HashMap<HourStart, HourCounts> = b.window.counts().collect();
    assert_eq!(counts[&HourStart::of(H)], HourCounts { unique_users: 5, clicks: 5, impressions: 1 });
    assert_eq!(counts[&HourStart::of(H + 3_600_000)], HourCounts { unique_users: 1, clicks: 0, impressions: 1 });

    // A, now a zombie, cannot write any more.
    match store.commit(0, a.epoch, &a.window.checkpoint(), &mut a.chunks).await {
        Err(StoreError::Fenced(0)) => {}
        other => panic!("expected the zombie to be fenced, got {other:?}"),
    }
    // Other partitions are independent.
    assert_eq!(store.claim(1, RETENTION).await.unwrap().epoch, 1);
    drop_schema(&pg).await;
}

#[tokio::test]
async fn many_checkpoints_of_one_hour_are_merged_and_still_restore_exactly() {
    let (_, _, pg) = isolated(&unique_suffix());
    let pool = common::engine::pg::pool(&pg).unwrap();
    common::engine::pg::migrate(&pool, &pg, processor::MIGRATIONS).await.unwrap();
    let store = StateStore::new(pool.clone(), "events".into());
    let mut a = store.claim(3, RETENTION).await.unwrap();
    for i in 0..150u64 {
        a.window.apply(i as i64, obs(0, i % 120 + 1, EventKind::Click)).unwrap();
        store.commit(3, a.epoch, &a.window.checkpoint(), &mut a.chunks).await.unwrap();
        a.window.mark_checkpointed();
    }
    let chunks: i64 = pool
        .get()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM processor_user_chunks WHERE partition = 3", &[])
        .await
        .unwrap()
        .get(0);
    assert!(chunks < 64, "{chunks} chunks left after merging");
    let b = store.claim(3, RETENTION).await.unwrap();
    let counts: HashMap<HourStart, HourCounts> = b.window.counts().collect();
    assert_eq!(counts[&HourStart::of(H)], HourCounts { unique_users: 120, clicks: 150, impressions: 0 });
    drop_schema(&pg).await;
}
