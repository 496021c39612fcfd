//! Partition assignment through PostgreSQL leases.
//!
//! Each instance of a lease group (the processors, the materializers)
//! heartbeats into `group_members`; the live members, sorted by id, split the
//! partitions round-robin; a partition changes hands only once its owner
//! released it, its lease expired, or its owner is gone. The services do not
//! use Kafka consumer groups: partitions are assigned by hand, and positions
//! live in the services' own stores (docs/architecture.md, "Assignment").
//!
//! A member is live while it heartbeats *and* holds its presence lock: a
//! session-level advisory lock on a connection of its own. PostgreSQL drops
//! that lock the moment the session ends, and a killed process's socket is
//! closed by its kernel, so a kill -9 is seen at the others' next heartbeat
//! (`--member-heartbeat`) rather than after the lease; the lease still bounds
//! an instance that is alive but silent (stalled, cut off).
//!
//! Leases give liveness and balance only. Correctness never depends on them:
//! the processor fences its state store by epoch, and every sink write is
//! guarded by input offsets, so two instances briefly consuming the same
//! partition still produce exact counts.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use deadpool_postgres::{ClientWrapper, Object, Pool};
use tokio::sync::Mutex;

use crate::engine::pg::PgError;

/// The partitions `me` should own, given the live members: round-robin over the sorted ids.
///
/// Every partition goes to exactly one member, and counts differ by at most one.
pub fn desired_partitions(members: &[String], me: &str, partitions: i32) -> BTreeSet<i32> {
    let mut sorted: Vec<&str> = members.iter().map(String::as_str).collect();
    if !sorted.contains(&me) {
        sorted.push(me);
    }
    sorted.sort_unstable();
    sorted.dedup();
    let index = sorted.iter().position(|m| *m == me).expect("inserted above") as i32;
    let n = sorted.len() as i32;
    (0..partitions).filter(|p| p % n == index).collect()
}

/// What to change after a heartbeat.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Newly acquired: start consuming them.
    pub acquired: Vec<i32>,
    /// Owned but now meant for another member: flush, then [`Membership::release`] them.
    pub to_release: Vec<i32>,
    /// Owned, but the lease is gone (we were too slow): drop at once, without flushing.
    pub lost: Vec<i32>,
}

/// A heartbeat in flight beside a loop ([`Membership::changes`], or a
/// simulation's): the loop goes on while its round trips run, and applies the
/// plan when it comes.
pub type Heartbeat = std::pin::Pin<Box<dyn std::future::Future<Output = Option<Plan>> + Send>>;

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.acquired.is_empty() && self.to_release.is_empty() && self.lost.is_empty()
    }
}

/// The members of a group that are live: heartbeat within the lease, and
/// presence lock held (or no presence key: a member of an older version).
/// While this member's own session is young (`$3`: presence not judged yet),
/// a member without its lock still counts if it may be taking it again: it
/// heartbeated within `$4` ms (two heartbeats), or PostgreSQL itself started
/// within the lease (every session is new then). So a member killed a while
/// ago is judged dead at once by a process that just started, instead of
/// after its settling (a restarted processor takes its partitions back a
/// second sooner). `pg_locks` is read once per call, in the CTE.
const LIVE_MEMBERS: &str = "WITH held AS (
        SELECT (l.classid::bigint << 32) | l.objid::bigint AS key FROM pg_locks l
        WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))
    SELECT member_id FROM group_members m
    WHERE group_name = $1 AND heartbeat_at > now() - $2 * interval '1 millisecond'
      AND (presence_key IS NULL OR presence_key IN (SELECT key FROM held)
           OR ($3 AND (heartbeat_at > now() - $4 * interval '1 millisecond'
                       OR pg_postmaster_start_time() > now() - $2 * interval '1 millisecond')))";

/// One instance's membership in a group.
pub struct Membership {
    pool: Pool,
    group: String,
    member: String,
    lease: Duration,
    heartbeat: Duration,
    partitions: i32,
    /// The advisory lock key of this member's presence.
    presence_key: i64,
    /// The session holding the presence lock (a connection taken out of the
    /// pool for good: dropping it closes it, which releases the lock), and
    /// when it took the lock.
    presence: Mutex<Option<(ClientWrapper, Instant)>>,
}

/// How many heartbeats a member's own presence session must have lived
/// before it judges the others' presence: after PostgreSQL restarts or a
/// connection blip every member re-takes its lock at its next heartbeat, and
/// none should take the partitions of a peer that has not come round yet.
const PRESENCE_SETTLE_HEARTBEATS: u32 = 5;

impl Membership {
    /// A member of `group` sharing `partitions` partitions; `lease` is how
    /// long a silent member keeps its partitions, `heartbeat` how often it
    /// heartbeats (at most a third of the lease).
    pub fn new(pool: Pool, group: &str, partitions: i32, lease: Duration, heartbeat: Duration) -> Self {
        let member = format!(
            "{}-{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into()),
            std::process::id(),
            crate::random_suffix()
        );
        // Unique per member (its id is), spread over the whole key space so that it
        // meets no other advisory lock user's small constants.
        let presence_key = fnv1a(format!("member presence/{group}/{member}").as_bytes()) as i64;
        Membership {
            pool,
            group: group.to_owned(),
            member,
            lease,
            heartbeat: heartbeat.min(lease / 3),
            partitions,
            presence_key,
            presence: Mutex::new(None),
        }
    }

    /// Joins `group` for the partitions of `topic`, as many as the broker says it has;
    /// `--member-lease` sets how long a silent member keeps them.
    ///
    /// # Errors
    /// When the broker does not know the topic.
    pub async fn join(
        pool: Pool,
        kafka: &crate::engine::config::KafkaConfig,
        lease: &crate::engine::config::LeaseConfig,
        group: &str,
        topic: &str,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let partitions = crate::engine::kafka::partition_count(kafka, topic)
            .await
            .with_context(|| format!("reading the partition count of {topic}"))?;
        Ok(Membership::new(pool, group, partitions, lease.member_lease, lease.member_heartbeat))
    }

    pub fn member_id(&self) -> &str {
        &self.member
    }

    /// How often to call [`heartbeat`](Self::heartbeat).
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat
    }

    /// Holds the presence lock, on a new session if the last one ended;
    /// whether that session has lived long enough to judge the others'
    /// presence ([`PRESENCE_SETTLE_HEARTBEATS`]).
    ///
    /// # Errors
    /// [`PgError`] when PostgreSQL is unreachable, or the lock is still held
    /// by this member's previous session (not yet ended on the server side):
    /// not present, so this heartbeat renews nothing.
    async fn hold_presence(&self) -> Result<bool, PgError> {
        let mut presence = self.presence.lock().await;
        if let Some((client, since)) = presence.as_ref() {
            if !client.is_closed() {
                return Ok(since.elapsed() >= self.heartbeat * PRESENCE_SETTLE_HEARTBEATS);
            }
        }
        *presence = None;
        let client = Object::take(self.pool.get().await?);
        let held: bool = client.query_one("SELECT pg_try_advisory_lock($1)", &[&self.presence_key]).await?.get(0);
        if !held {
            return Err(PgError::PresenceHeld(self.member.clone()));
        }
        *presence = Some((client, Instant::now()));
        Ok(false)
    }

    fn lease_ms(&self) -> f64 {
        self.lease.as_millis() as f64
    }

    /// Renews membership and leases, and says what to acquire, release or drop.
    ///
    /// # Errors
    /// [`PgError`] when PostgreSQL is unreachable: keep going with what you own;
    /// if it lasts longer than the lease, others will take over (and fence you).
    pub async fn heartbeat(&self, owned: &BTreeSet<i32>) -> Result<Plan, PgError> {
        let judge_presence = self.hold_presence().await?;
        let client = self.pool.get().await?;
        let lease = self.lease_ms();
        client
            .execute(
                "INSERT INTO group_members (group_name, member_id, heartbeat_at, presence_key) VALUES ($1, $2, now(), $3)
                 ON CONFLICT (group_name, member_id) DO UPDATE SET heartbeat_at = now(), presence_key = $3",
                &[&self.group, &self.member, &self.presence_key],
            )
            .await?;
        let mut members: Vec<String> = client
            .query(LIVE_MEMBERS, &[&self.group, &lease, &!judge_presence, &(2.0 * self.heartbeat.as_millis() as f64)])
            .await?
            .iter()
            .map(|r| r.get("member_id"))
            .collect();
        if !members.contains(&self.member) {
            members.push(self.member.clone());
        }
        let desired = desired_partitions(&members, &self.member, self.partitions);
        let keep: Vec<i32> = owned.intersection(&desired).copied().collect();
        let renewed: BTreeSet<i32> = client
            .query(
                "UPDATE partition_leases SET lease_until = now() + $4 * interval '1 millisecond'
                 WHERE group_name = $1 AND owner = $2 AND partition = ANY($3) RETURNING partition",
                &[&self.group, &self.member, &keep, &lease],
            )
            .await?
            .iter()
            .map(|r| r.get("partition"))
            .collect();
        let wanted: Vec<i32> = desired.difference(owned).copied().collect();
        // A partition is free once released, expired, or owned by a member that is no longer live
        // (its presence lock went with its process).
        let acquired: Vec<i32> = client
            .query(
                "INSERT INTO partition_leases (group_name, partition, owner, lease_until)
                 SELECT $1, p, $2, now() + $4 * interval '1 millisecond' FROM unnest($3::int[]) AS p
                 ON CONFLICT (group_name, partition) DO UPDATE
                     SET owner = EXCLUDED.owner, lease_until = EXCLUDED.lease_until
                 WHERE partition_leases.owner IS NULL
                    OR partition_leases.owner = EXCLUDED.owner
                    OR partition_leases.lease_until < now()
                    OR partition_leases.owner <> ALL($5::text[])
                 RETURNING partition",
                &[&self.group, &self.member, &wanted, &lease, &members],
            )
            .await?
            .iter()
            .map(|r| r.get("partition"))
            .collect();
        // Forget members silent for much longer than a lease.
        client
            .execute(
                "DELETE FROM group_members WHERE group_name = $1 AND heartbeat_at < now() - $2 * interval '10 milliseconds'",
                &[&self.group, &lease],
            )
            .await?;
        Ok(Plan {
            acquired,
            to_release: owned.difference(&desired).copied().collect(),
            lost: keep.into_iter().filter(|p| !renewed.contains(p)).collect(),
        })
    }

    /// [`heartbeat`](Self::heartbeat) for a loop: `None` when nothing changes,
    /// or when PostgreSQL did not answer (logged; keep what you own and try
    /// again at the next tick).
    pub async fn changes(&self, owned: &BTreeSet<i32>) -> Option<Plan> {
        match self.heartbeat(owned).await {
            Ok(plan) if plan.is_empty() => None,
            Ok(plan) => Some(plan),
            Err(e) => {
                tracing::warn!(error = %e, group = self.group, "membership heartbeat failed");
                None
            }
        }
    }

    /// Gives partitions back so another member can take them at once.
    ///
    /// # Errors
    /// [`PgError`]; the leases then simply expire.
    pub async fn release(&self, partitions: &[i32]) -> Result<(), PgError> {
        if partitions.is_empty() {
            return Ok(());
        }
        let client = self.pool.get().await?;
        client
            .execute(
                "UPDATE partition_leases SET owner = NULL WHERE group_name = $1 AND owner = $2 AND partition = ANY($3)",
                &[&self.group, &self.member, &partitions],
            )
            .await?;
        Ok(())
    }

    /// The group's stored positions on `topic` (next offset to consume per partition).
    ///
    /// # Errors
    /// [`PgError`] when PostgreSQL cannot answer.
    pub async fn committed_offsets(&self, topic: &str) -> Result<std::collections::HashMap<i32, i64>, PgError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT partition, next_offset FROM consumer_offsets WHERE group_name = $1 AND topic = $2",
                &[&self.group, &topic],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get("partition"), r.get("next_offset"))).collect())
    }

    /// Stores positions through `client`: in the transaction of what was read
    /// up to them, they commit with it (a materializer's batch and the
    /// positions after it cost one commit). A position never moves backwards.
    ///
    /// # Errors
    /// [`PgError`].
    pub async fn store_offsets(
        &self,
        client: &impl deadpool_postgres::GenericClient,
        topic: &str,
        next: &std::collections::BTreeMap<i32, i64>,
    ) -> Result<(), PgError> {
        if next.is_empty() {
            return Ok(());
        }
        let (partitions, offsets): (Vec<i32>, Vec<i64>) = next.iter().map(|(p, o)| (*p, *o)).unzip();
        client
            .execute(
                "INSERT INTO consumer_offsets (group_name, topic, partition, next_offset)
                 SELECT $1, $2, * FROM unnest($3::int[], $4::bigint[])
                 ON CONFLICT (group_name, topic, partition)
                 DO UPDATE SET next_offset = GREATEST(consumer_offsets.next_offset, EXCLUDED.next_offset)",
                &[&self.group, &topic, &partitions, &offsets],
            )
            .await?;
        Ok(())
    }

    /// Leaves the group: releases every lease and removes the member row.
    ///
    /// # Errors
    /// [`PgError`]; the leases then simply expire.
    pub async fn leave(&self) -> Result<(), PgError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "UPDATE partition_leases SET owner = NULL WHERE group_name = $1 AND owner = $2",
                &[&self.group, &self.member],
            )
            .await?;
        client
            .execute("DELETE FROM group_members WHERE group_name = $1 AND member_id = $2", &[&self.group, &self.member])
            .await?;
        self.presence.lock().await.take();
        Ok(())
    }
}

/// FNV-1a, 64 bits: a stable hash of a member's name for its lock key (std's
/// hashers are seeded per process; this key must be the same in the row and the lock).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn every_partition_has_exactly_one_owner_and_loads_are_balanced(n in 1usize..8, partitions in 1i32..64) {
            let members: Vec<String> = (0..n).map(|i| format!("m{i:02}")).collect();
            let mut seen = vec![0; partitions as usize];
            let mut loads = Vec::new();
            for m in &members {
                let mine = desired_partitions(&members, m, partitions);
                loads.push(mine.len());
                for p in mine { seen[p as usize] += 1; }
            }
            prop_assert!(seen.iter().all(|c| *c == 1));
            prop_assert!(loads.iter().max().unwrap() - loads.iter().min().unwrap() <= 1);
        }
    }

    #[test]
    fn a_member_not_yet_listed_counts_itself() {
        let mine = desired_partitions(&["a".into()], "b", 4);
        assert_eq!(mine, BTreeSet::from([1, 3]));
    }
}
