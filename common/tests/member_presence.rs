//! Lease groups against the real PostgreSQL: a member whose process is gone
//! (its presence session closed, as a kill -9 closes it) loses its partitions
//! at the survivor's next heartbeat, long before its lease would expire; a
//! member that is alive keeps them however long the lease, and a member that
//! left hands them over at once.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::engine::membership::Membership;
use common::test_util::{drop_schema, isolated, unique_suffix};

/// Far longer than any wait below: a partition that moves moved because of presence.
const LEASE: Duration = Duration::from_secs(120);
const HEARTBEAT: Duration = Duration::from_millis(50);
const PARTITIONS: i32 = 4;

/// Heartbeats `member` until it owns `want` (applying each plan as the loops
/// do), for at most 20 s: far less than the lease, so whatever it acquired
/// from a member that did not release it, it acquired through presence.
async fn settle(member: &Membership, owned: &mut BTreeSet<i32>, want: &BTreeSet<i32>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while owned != want {
        assert!(Instant::now() < deadline, "owns {owned:?}, not {want:?}, after 20 s");
        let plan = member.heartbeat(owned).await;
        if let Ok(plan) = plan {
            owned.extend(plan.acquired);
            for p in plan.to_release.iter().chain(&plan.lost) {
                owned.remove(p);
            }
            member.release(&plan.to_release).await.unwrap();
        }
        tokio::time::sleep(HEARTBEAT).await;
    }
}

/// A pool on a schema of its own, with the membership tables.
async fn migrated() -> (deadpool_postgres::Pool, common::engine::config::PgConfig) {
    let (_, _, pg) = isolated(&unique_suffix());
    let pool = common::engine::pg::pool(&pg).unwrap();
    use common::engine::pg::migrations::{COORDINATION, MEMBER_PRESENCE};
    common::engine::pg::migrate(&pool, &pg, &[COORDINATION, MEMBER_PRESENCE]).await.unwrap();
    (pool, pg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_members_partitions_move_at_the_next_heartbeat_not_after_its_lease() {
    let (pool, pg) = migrated().await;
    let group = "presence-test";
    let all: BTreeSet<i32> = (0..PARTITIONS).collect();

    let a = Membership::new(pool.clone(), group, PARTITIONS, LEASE, HEARTBEAT);
    let mut a_owned = BTreeSet::new();
    settle(&a, &mut a_owned, &all).await;

    // A second member: the two split the partitions (a hands its share over, b takes it once released).
    let b = Membership::new(pool.clone(), group, PARTITIONS, LEASE, HEARTBEAT);
    let ids = [a.member_id().to_owned(), b.member_id().to_owned()];
    let share = |me: &str| common::engine::membership::desired_partitions(&ids, me, PARTITIONS);
    let mut b_owned = BTreeSet::new();
    let (a_share, b_share) = (share(a.member_id()), share(b.member_id()));
    for _ in 0..200 {
        let _ = b.heartbeat(&b_owned).await.map(|plan| b_owned.extend(plan.acquired));
        if let Ok(plan) = a.heartbeat(&a_owned).await {
            a.release(&plan.to_release).await.unwrap();
            for p in &plan.to_release {
                a_owned.remove(p);
            }
        }
        if a_owned == a_share && b_owned == b_share {
            break;
        }
        tokio::time::sleep(HEARTBEAT).await;
    }
    assert_eq!((&a_owned, &b_owned), (&a_share, &b_share), "the two members split the partitions");

    // Alive, b keeps its share: a's heartbeats over several settle periods take nothing.
    for _ in 0..12 {
        let plan = a.heartbeat(&a_owned).await.unwrap();
        assert!(plan.acquired.is_empty(), "a took {:?} from a live member", plan.acquired);
        b.heartbeat(&b_owned).await.unwrap();
        tokio::time::sleep(HEARTBEAT).await;
    }

    // b's process dies: its sessions close without a word (no leave, no release).
    drop(b);
    settle(&a, &mut a_owned, &all).await;

    a.leave().await.unwrap();
    drop_schema(&pg).await;
}

/// A process that has just started (its presence session younger than its
/// settling) judges at once a member whose lock is gone and whose heartbeat
/// is older than two heartbeats: a killed instance's partitions move at the
/// new process's first heartbeat, not after it settled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_member_takes_a_long_dead_members_partitions_at_its_first_heartbeat() {
    let (pool, pg) = migrated().await;
    let group = "presence-first-beat";
    let all: BTreeSet<i32> = (0..PARTITIONS).collect();
    // A lease long enough that nothing expires during the test, short enough that PostgreSQL started before it.
    let lease = Duration::from_secs(3);
    // The judgment holds back while PostgreSQL itself is younger than the lease (every session is new then).
    let client = pool.get().await.unwrap();
    let lease_ms = lease.as_millis() as f64;
    while client
        .query_one("SELECT pg_postmaster_start_time() > now() - $1 * interval '1 millisecond'", &[&lease_ms])
        .await
        .unwrap()
        .get::<_, bool>(0)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(client);

    let a = Membership::new(pool.clone(), group, PARTITIONS, lease, HEARTBEAT);
    let mut a_owned = BTreeSet::new();
    settle(&a, &mut a_owned, &all).await;
    drop(a); // killed: its presence session closes, its leases stay
    tokio::time::sleep(HEARTBEAT * 4).await;

    let c = Membership::new(pool.clone(), group, PARTITIONS, lease, HEARTBEAT);
    let plan = c.heartbeat(&BTreeSet::new()).await.unwrap();
    let acquired: BTreeSet<i32> = plan.acquired.into_iter().collect();
    assert_eq!(acquired, all, "every partition of the dead member at the first heartbeat");
    c.leave().await.unwrap();
    drop_schema(&pg).await;
}
