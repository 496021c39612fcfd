//! Partition assignment through PostgreSQL leases.
//!
//! Each instance of a lease group (the processors, the materializers)
//! heartbeats into `group_members`; the live members, sorted by id, split the
//! partitions round-robin; a partition changes hands only once its owner
//! released it or its lease expired. The services do not use Kafka consumer
//! groups: partitions are assigned by hand, and positions live in the
//! services' own stores (docs/architecture.md, "Assignment").
//!
//! Leases give liveness and balance only. Correctness never depends on them:
//! the processor fences its state store by epoch, and every sink write is
//! guarded by input offsets, so two instances briefly consuming the same
//! partition still produce exact counts.

use std::collections::BTreeSet;
use std::time::Duration;

use deadpool_postgres::Pool;

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

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.acquired.is_empty() && self.to_release.is_empty() && self.lost.is_empty()
    }
}

/// One instance's membership in a group.
pub struct Membership {
    pool: Pool,
    group: String,
    member: String,
    lease: Duration,
    partitions: i32,
}

impl Membership {
    /// A member of `group` sharing `partitions` partitions; `lease` is how
    /// long a silent member keeps its partitions.
    pub fn new(pool: Pool, group: &str, partitions: i32, lease: Duration) -> Self {
        let member = format!(
            "{}-{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into()),
            std::process::id(),
            crate::random_suffix()
        );
        Membership { pool, group: group.to_owned(), member, lease, partitions }
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
        Ok(Membership::new(pool, group, partitions, lease.member_lease))
    }

    pub fn member_id(&self) -> &str {
        &self.member
    }

    /// How often to call [`heartbeat`](Self::heartbeat).
    pub fn heartbeat_interval(&self) -> Duration {
        self.lease / 3
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
        let client = self.pool.get().await?;
        let lease = self.lease_ms();
        client
            .execute(
                "INSERT INTO group_members (group_name, member_id, heartbeat_at) VALUES ($1, $2, now())
                 ON CONFLICT (group_name, member_id) DO UPDATE SET heartbeat_at = now()",
                &[&self.group, &self.member],
            )
            .await?;
        let members: Vec<String> = client
            .query(
                "SELECT member_id FROM group_members
                 WHERE group_name = $1 AND heartbeat_at > now() - $2 * interval '1 millisecond'",
                &[&self.group, &lease],
            )
            .await?
            .iter()
            .map(|r| r.get("member_id"))
            .collect();
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
        let acquired: Vec<i32> = client
            .query(
                "INSERT INTO partition_leases (group_name, partition, owner, lease_until)
                 SELECT $1, p, $2, now() + $4 * interval '1 millisecond' FROM unnest($3::int[]) AS p
                 ON CONFLICT (group_name, partition) DO UPDATE
                     SET owner = EXCLUDED.owner, lease_until = EXCLUDED.lease_until
                 WHERE partition_leases.owner IS NULL
                    OR partition_leases.owner = EXCLUDED.owner
                    OR partition_leases.lease_until < now()
                 RETURNING partition",
                &[&self.group, &self.member, &wanted, &lease],
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

    /// Stores positions; a position never moves backwards.
    ///
    /// # Errors
    /// [`PgError`]; the records after the old position are then consumed again.
    pub async fn commit_offsets(
        &self,
        topic: &str,
        next: &std::collections::BTreeMap<i32, i64>,
    ) -> Result<(), PgError> {
        if next.is_empty() {
            return Ok(());
        }
        let (partitions, offsets): (Vec<i32>, Vec<i64>) = next.iter().map(|(p, o)| (*p, *o)).unzip();
        let client = self.pool.get().await?;
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
        Ok(())
    }
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
