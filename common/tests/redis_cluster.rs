//! The engine's Redis cache on a real local Redis Cluster (three masters, a
//! replica each, started by `scripts/redis-cluster.sh` on ports of its own):
//! batches spanning many slots and every master, reads, fill leases, progress
//! marks, change notifications and the clear, with the outcomes read back
//! from the nodes themselves, replicas included.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::engine::progress::Progress;
use common::engine::store::cache::{key_slot, CacheError, RedisStore, VersionedCache};
use common::engine::store::Versioned;
use common::test_util::sums::Sum;
use common::test_util::{unique_suffix, RedisCluster};
use futures::StreamExt;

/// First port of this test's cluster (six nodes; buses at +10000).
const BASE_PORT: u16 = 7201;
/// Rows per round, as the materializer's copier sends them (`materializer::engine::sink::ROWS_PER_ROUND`).
const ROWS_PER_ROUND: usize = 2_000;

async fn node(port: u16) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap().get_multiplexed_async_connection().await.unwrap()
}

/// Each master's slot ranges and its replicas' ports (`CLUSTER SLOTS`).
async fn layout(port: u16) -> Vec<(u16, u16, u16, Vec<u16>)> {
    let slots: Vec<Vec<redis::Value>> =
        redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut node(port).await).await.unwrap();
    slots
        .into_iter()
        .map(|range| {
            let start: u16 = redis::from_redis_value(&range[0]).unwrap();
            let end: u16 = redis::from_redis_value(&range[1]).unwrap();
            let port_of = |v: &redis::Value| -> u16 {
                let node: Vec<redis::Value> = redis::from_redis_value(v).unwrap();
                redis::from_redis_value(&node[1]).unwrap()
            };
            (start, end, port_of(&range[2]), range[3..].iter().map(port_of).collect())
        })
        .collect()
}

/// Every key under `prefix` on the node at `port`.
async fn keys_on(port: u16, prefix: &str) -> Vec<String> {
    redis::cmd("KEYS").arg(format!("{prefix}:*")).query_async(&mut node(port).await).await.unwrap()
}

fn sum(total: i128, version: i64) -> Versioned<Sum> {
    Versioned { row: Sum { total }, version }
}

#[tokio::test]
async fn the_cache_works_across_the_masters_of_a_cluster_and_its_replicas_hold_every_acknowledged_row() {
    let cluster = RedisCluster::start(BASE_PORT);
    let redis = cluster.config(&unique_suffix());
    let store = RedisStore::connect(&redis).await.unwrap();
    let sums = VersionedCache::<Sum>::new(store.clone());
    assert!(store.is_cluster());

    // Our slot function is Redis' own.
    let ids: Vec<String> = (0..3000).map(|i| format!("row-{i}")).collect();
    for id in ids.iter().step_by(97) {
        let key = sums.key(id);
        assert_eq!(key, format!("{}:sum:{{{id}}}", redis.key_prefix), "the id is the hash tag");
        let slot: u16 =
            redis::cmd("CLUSTER").arg("KEYSLOT").arg(&key).query_async(&mut node(BASE_PORT).await).await.unwrap();
        assert_eq!(key_slot(&key), slot, "{key}");
        assert_eq!(key_slot(&format!("{key}:fill")), slot, "a row and its fill lease share a slot");
    }

    // Batches as the materializer sends them, each over hundreds of slots on every master.
    let rows: Vec<(String, Versioned<Sum>)> =
        ids.iter().enumerate().map(|(i, id)| (id.clone(), sum(i as i128 * 1000, 2))).collect();
    let slots: BTreeSet<u16> = ids.iter().map(|id| key_slot(&sums.key(id))).collect();
    assert!(slots.len() > 2000, "{} slots", slots.len());
    let put = |rows: Vec<(String, Versioned<Sum>)>| {
        let sums = sums.clone();
        async move {
            let mut written = 0;
            for batch in rows.chunks(ROWS_PER_ROUND) {
                // As the materializer's catch-up does: a batch a replica did not acknowledge in
                // time is sent again (on a loaded machine a WAIT can miss its bound).
                let mut attempts = 0;
                loop {
                    match sums.put_if_newer(batch).await {
                        Ok(n) => break written += n,
                        Err(CacheError::NotReplicated { written: n, .. }) if attempts < 10 => {
                            written += n;
                            attempts += 1;
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            written
        }
    };
    assert_eq!(put(rows.clone()).await, rows.len());
    for (id, row) in rows.iter().step_by(7) {
        assert_eq!(sums.get(id).await.unwrap().as_ref(), Some(row), "{id}");
    }
    // The version guard per row: older ones are refused, newer ones land.
    let older: Vec<_> = ids.iter().map(|id| (id.clone(), sum(-1, 1))).collect();
    assert_eq!(put(older).await, 0);
    let newer: Vec<_> = ids.iter().step_by(2).map(|id| (id.clone(), sum(7, 3))).collect();
    assert_eq!(put(newer.clone()).await, newer.len());
    assert_eq!(sums.get(&ids[0]).await.unwrap(), Some(sum(7, 3)));
    assert_eq!(sums.get(&ids[1]).await.unwrap(), Some(sum(1000, 2)));

    // Each master holds its slots' rows, and its replica holds them too: the
    // batch was acknowledged only once replicated.
    let layout = layout(BASE_PORT).await;
    let masters: BTreeSet<u16> = layout.iter().map(|(_, _, m, _)| *m).collect();
    assert_eq!(masters.len(), 3, "three masters: {layout:?}");
    let mut per_master: BTreeMap<u16, usize> = BTreeMap::new();
    for (start, end, master, replicas) in &layout {
        let want: BTreeSet<String> =
            ids.iter().map(|id| sums.key(id)).filter(|k| (*start..=*end).contains(&key_slot(k))).collect();
        *per_master.entry(*master).or_default() += want.len();
        let on_master: BTreeSet<String> = keys_on(*master, &redis.key_prefix)
            .await
            .into_iter()
            .filter(|k| (*start..=*end).contains(&key_slot(k)))
            .collect();
        assert_eq!(on_master, want, "master :{master}, slots {start}-{end}");
        for replica in replicas {
            let on_replica: BTreeSet<String> = keys_on(*replica, &redis.key_prefix)
                .await
                .into_iter()
                .filter(|k| (*start..=*end).contains(&key_slot(k)))
                .collect();
            assert_eq!(on_replica, want, "replica :{replica} of :{master}");
        }
    }
    assert!(per_master.values().all(|n| *n > 500), "rows spread over the masters: {per_master:?}");

    // Fill leases: a write-back lands under its lease; a row written since voids it.
    let fresh = "fresh-row".to_owned();
    let lease = sums.lease(&fresh).await.unwrap().expect("free");
    assert!(sums.lease(&fresh).await.unwrap().is_none(), "one reader at a time");
    assert!(sums.fill(&fresh, &sum(5, 1), &lease).await.unwrap());
    assert_eq!(sums.get(&fresh).await.unwrap(), Some(sum(5, 1)));
    let lease = sums.lease(&fresh).await.unwrap().expect("free again");
    assert_eq!(sums.put_if_newer(&[(fresh.clone(), sum(6, 2))]).await.unwrap(), 1);
    assert!(!sums.fill(&fresh, &sum(5, 1), &lease).await.unwrap(), "voided by the write");
    assert_eq!(sums.get(&fresh).await.unwrap(), Some(sum(6, 2)));

    // Progress marks of many partitions: one slot, one script call, one pipeline; only forward.
    let marks: Vec<Progress> = (0..8)
        .flat_map(|p| {
            (0..2).map(move |ap| Progress {
                events_topic: if p % 2 == 0 { "events-a".into() } else { "events-b".into() },
                partition: p,
                next_offset: 100 + i64::from(p),
                aggregates_partition: ap,
                aggregates_partitions: 2,
            })
        })
        .collect();
    store.put_progress(&marks).await.unwrap();
    let back_marks: Vec<Progress> =
        marks.iter().map(|m| Progress { next_offset: m.next_offset - 50, ..m.clone() }).collect();
    store.put_progress(&back_marks).await.unwrap();
    let wanted: Vec<(String, i32)> = marks.iter().map(|m| (m.events_topic.clone(), m.partition)).collect();
    let read = store.progress_many(&wanted).await.unwrap();
    for ((topic, p), got) in wanted.iter().zip(&read) {
        assert_eq!(got.len(), 2, "{topic}/{p}");
        assert!(got.iter().all(|m| m.next_offset == 100 + i64::from(*p) && m.aggregates_partitions == 2));
    }
    assert_eq!(store.progress("events-a", 4).await.unwrap().len(), 2);

    // Change notifications: published through the cluster connection, and on
    // any node, they reach a subscriber on another node.
    let mut messages = store.subscribe_changes().await.unwrap().into_on_message();
    store.publish_change("increments").await.unwrap();
    let last = *cluster.ports().collect::<Vec<_>>().last().unwrap();
    let _: i64 = redis::cmd("PUBLISH")
        .arg(store.changes_channel())
        .arg("analytics")
        .query_async(&mut node(last).await)
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        let msg = tokio::time::timeout(Duration::from_secs(5), messages.next()).await.expect("a notification");
        got.push(msg.expect("subscribed").get_payload::<String>().unwrap());
    }
    got.sort();
    assert_eq!(got, ["analytics", "increments"]);

    // The clear scans every master and deletes across slots.
    store.clear().await.unwrap();
    for master in &masters {
        assert_eq!(keys_on(*master, &redis.key_prefix).await, Vec::<String>::new(), "master :{master}");
    }
    assert_eq!(sums.get(&ids[0]).await.unwrap(), None);
}
