//! Per-(hour, partition) state and the absolute aggregates it yields.
//!
//! A [`PartitionWindow`] is the analytics state of one input partition: one
//! [`HourBucket`] per open hour and the partition's watermark (the newest
//! acceptance time seen), which closes hours. The engine keeps the position
//! and the event ids beside it. It is a pure function of the partition's log
//! prefix: replaying the same records yields the same buckets, which is what
//! makes offset-tagged aggregates idempotent.

use std::collections::BTreeMap;

use super::event::{ClickEvent, EventKind};
use super::time::{EpochMillis, HourStart};
use super::user_set::UserSet;

/// Counts of one hour, for one partition or summed over partitions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HourCounts {
    pub unique_users: u64,
    pub clicks: u64,
    pub impressions: u64,
}

impl HourCounts {
    /// Combines the counts of two disjoint user populations (two partitions).
    ///
    /// Users are partitioned by key, so one user's events are all in one
    /// partition and unique users add up exactly.
    pub fn merge(self, other: HourCounts) -> HourCounts {
        HourCounts {
            unique_users: self.unique_users + other.unique_users,
            clicks: self.clicks + other.clicks,
            impressions: self.impressions + other.impressions,
        }
    }

    /// The `text/plain` answer of `GET /analytics`.
    pub fn to_csv(self) -> String {
        format!("unique_users,{}\nclicks,{}\nimpressions,{}\n", self.unique_users, self.clicks, self.impressions)
    }
}

/// What the processor needs of an event: its hour, the user's hash, kind and acceptance time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    pub hour: HourStart,
    pub user_hash: u64,
    pub kind: EventKind,
    pub accepted_at_ms: EpochMillis,
}

impl From<&ClickEvent> for Observation {
    fn from(e: &ClickEvent) -> Self {
        Observation { hour: e.hour(), user_hash: e.user.hash64(), kind: e.kind, accepted_at_ms: e.accepted_at_ms }
    }
}

/// The exact state of one hour in one partition.
#[derive(Debug, Clone, Default)]
pub struct HourBucket {
    users: UserSet,
    clicks: u64,
    impressions: u64,
    /// Users first seen since the last checkpoint: the delta to persist.
    new_users: Vec<u64>,
    dirty: bool,
}

impl HourBucket {
    /// Counts one observation. Order does not matter: the result is a set and two sums.
    pub fn apply(&mut self, user_hash: u64, kind: EventKind) {
        if self.users.insert(user_hash) {
            self.new_users.push(user_hash);
        }
        match kind {
            EventKind::Click => self.clicks += 1,
            EventKind::Impression => self.impressions += 1,
        }
        self.dirty = true;
    }

    pub fn counts(&self) -> HourCounts {
        HourCounts { unique_users: self.users.len() as u64, clicks: self.clicks, impressions: self.impressions }
    }

    /// Unions another bucket of the same hour into this one.
    pub fn merge(&mut self, other: &HourBucket) {
        for h in other.users.iter() {
            if self.users.insert(h) {
                self.new_users.push(h);
            }
        }
        self.clicks += other.clicks;
        self.impressions += other.impressions;
        self.dirty = true;
    }

    /// Rebuilds a bucket from a checkpoint; it starts clean (nothing to persist).
    pub fn restore(clicks: u64, impressions: u64, users: impl IntoIterator<Item = u64>, size_hint: usize) -> Self {
        let mut set = UserSet::with_capacity(size_hint);
        for h in users {
            set.insert(h);
        }
        HourBucket { users: set, clicks, impressions, new_users: Vec::new(), dirty: false }
    }

    pub fn heap_bytes(&self) -> usize {
        self.users.heap_bytes() + self.new_users.capacity() * 8
    }
}

/// Why [`PartitionWindow::apply`] did not count a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skipped {
    /// The hour was closed before this record arrived (it is older than horizon + grace).
    ClosedHour,
}

/// The changes since the last checkpoint of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Hours that changed, with their absolute counts and newly seen users.
    pub changed: Vec<ChangedHour>,
    /// Hours closed since the last checkpoint: drop their state.
    pub closed: Vec<HourStart>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedHour {
    pub hour: HourStart,
    pub counts: HourCounts,
    pub new_users: Vec<u64>,
}

/// All state of one input partition.
#[derive(Debug, Clone)]
pub struct PartitionWindow {
    hours: BTreeMap<HourStart, HourBucket>,
    watermark_ms: EpochMillis,
    /// An hour closes once `watermark >= hour end + retention`.
    retention_ms: i64,
    closed_pending: Vec<HourStart>,
    /// Final counts of hours that closed with changes not yet checkpointed:
    /// they must still be persisted and emitted once.
    closing: Vec<ChangedHour>,
}

impl PartitionWindow {
    /// An empty window at `watermark_ms`.
    pub fn new(watermark_ms: EpochMillis, retention_ms: i64) -> Self {
        PartitionWindow {
            hours: BTreeMap::new(),
            watermark_ms,
            retention_ms,
            closed_pending: Vec::new(),
            closing: Vec::new(),
        }
    }

    /// Adds a restored hour (see [`HourBucket::restore`]).
    pub fn restore_hour(&mut self, hour: HourStart, bucket: HourBucket) {
        self.hours.insert(hour, bucket);
    }

    pub fn watermark_ms(&self) -> EpochMillis {
        self.watermark_ms
    }

    /// True once no record can reach `hour` any more.
    pub fn is_closed(&self, hour: HourStart) -> bool {
        hour.end_ms().saturating_add(self.retention_ms) <= self.watermark_ms
    }

    /// Applies one record, in log order. Deterministic: depends only on the
    /// records applied before it, never on a clock. (Replays and duplicate ids
    /// are the engine's: it never hands this a record twice.)
    pub fn apply(&mut self, obs: Observation) -> Result<(), Skipped> {
        self.watermark_ms = self.watermark_ms.max(obs.accepted_at_ms);
        if self.is_closed(obs.hour) {
            return Err(Skipped::ClosedHour);
        }
        self.hours.entry(obs.hour).or_default().apply(obs.user_hash, obs.kind);
        Ok(())
    }

    /// Counts of every open hour.
    pub fn counts(&self) -> impl Iterator<Item = (HourStart, HourCounts)> + '_ {
        self.hours.iter().map(|(h, b)| (*h, b.counts()))
    }

    pub fn has_changes(&self) -> bool {
        self.hours.values().any(|b| b.dirty) || !self.closed_pending.is_empty() || !self.closing.is_empty()
    }

    /// Drops closed hours from memory and reports them in the next checkpoint.
    /// An hour that closes with unsaved changes keeps its final counts for that
    /// checkpoint, so its last update is persisted and emitted.
    pub fn evict_closed(&mut self) {
        let closed: Vec<HourStart> = self.hours.keys().copied().filter(|h| self.is_closed(*h)).collect();
        for h in closed {
            let bucket = self.hours.remove(&h).expect("key listed above");
            if bucket.dirty {
                self.closing.push(ChangedHour { hour: h, counts: bucket.counts(), new_users: Vec::new() });
            }
            self.closed_pending.push(h);
        }
    }

    /// What changed since the last [`mark_checkpointed`](Self::mark_checkpointed).
    /// Leaves the window untouched, so a failed write can simply be retried.
    pub fn checkpoint(&self) -> Checkpoint {
        let changed = self
            .hours
            .iter()
            .filter(|(_, b)| b.dirty)
            .map(|(h, b)| ChangedHour { hour: *h, counts: b.counts(), new_users: b.new_users.clone() })
            .chain(self.closing.iter().cloned())
            .collect();
        Checkpoint { changed, closed: self.closed_pending.clone() }
    }

    /// Records that the last [`checkpoint`](Self::checkpoint) is durable.
    pub fn mark_checkpointed(&mut self) {
        for b in self.hours.values_mut() {
            b.dirty = false;
            b.new_users = Vec::new();
        }
        self.closed_pending.clear();
        self.closing.clear();
    }

    /// Users held, summed over open hours (the denominator of bytes per user-hour).
    pub fn user_hours(&self) -> u64 {
        self.hours.values().map(|b| b.counts().unique_users).sum()
    }

    pub fn heap_bytes(&self) -> usize {
        self.hours.values().map(HourBucket::heap_bytes).sum::<usize>()
    }

    pub fn open_hours(&self) -> usize {
        self.hours.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::time::HOUR_MS;
    use proptest::prelude::*;

    const H0: i64 = 1_800_000_000_000 / HOUR_MS * HOUR_MS;
    const RETENTION: i64 = 7 * 24 * HOUR_MS + HOUR_MS;

    fn obs(ts: i64, user: u64, kind: EventKind, accepted: i64) -> Observation {
        Observation { hour: HourStart::of(ts), user_hash: user, kind, accepted_at_ms: accepted }
    }

    fn arb_obs() -> impl Strategy<Value = Observation> {
        (0i64..4 * HOUR_MS, 0u64..50, any::<bool>()).prop_map(|(dt, u, click)| {
            let kind = if click { EventKind::Click } else { EventKind::Impression };
            obs(H0 + dt, u, kind, H0 + 4 * HOUR_MS)
        })
    }

    fn totals(w: &PartitionWindow) -> BTreeMap<HourStart, HourCounts> {
        w.counts().collect()
    }

    #[test]
    fn late_event_counts_in_its_own_hour() {
        let mut w = PartitionWindow::new(0, RETENTION);
        let now = H0 + 30 * HOUR_MS;
        w.apply(obs(now, 1, EventKind::Click, now)).unwrap();
        w.apply(obs(H0 + 5, 1, EventKind::Impression, now)).unwrap();
        let t = totals(&w);
        assert_eq!(t[&HourStart::of(H0)], HourCounts { unique_users: 1, clicks: 0, impressions: 1 });
        assert_eq!(t[&HourStart::of(now)], HourCounts { unique_users: 1, clicks: 1, impressions: 0 });
    }

    #[test]
    fn hours_close_by_the_partition_watermark_not_a_clock() {
        let mut w = PartitionWindow::new(0, RETENTION);
        w.apply(obs(H0, 1, EventKind::Click, H0)).unwrap();
        let later = H0 + HOUR_MS + RETENTION; // exactly when H0 closes
        w.apply(obs(later, 2, EventKind::Click, later)).unwrap();
        assert!(w.is_closed(HourStart::of(H0)));
        assert_eq!(w.apply(obs(H0 + 1, 3, EventKind::Click, later)), Err(Skipped::ClosedHour));
        w.evict_closed();
        let cp = w.checkpoint();
        assert_eq!(cp.closed, vec![HourStart::of(H0)]);
        assert_eq!(w.open_hours(), 1);
    }

    #[test]
    fn an_hour_that_closes_with_unsaved_changes_still_yields_its_final_counts() {
        // Offset 100 is legal when accepted (A − 7 d + 1 s); offset 101 arrives 3 h later.
        // Both land in one batch, after which the hour closes before any checkpoint.
        let a = H0 + 30 * 24 * HOUR_MS;
        let old = a - 7 * 24 * HOUR_MS + 1000;
        let mut w = PartitionWindow::new(a - 1000, RETENTION);
        w.apply(obs(old, 1, EventKind::Click, a)).unwrap();
        w.apply(obs(a + 3 * HOUR_MS, 2, EventKind::Click, a + 3 * HOUR_MS)).unwrap();
        w.evict_closed();
        let cp = w.checkpoint();
        assert_eq!(cp.closed, vec![HourStart::of(old)]);
        let closing = cp.changed.iter().find(|c| c.hour == HourStart::of(old)).expect("the closing hour is emitted");
        assert_eq!(closing.counts, HourCounts { unique_users: 1, clicks: 1, impressions: 0 });
        w.mark_checkpointed();
        assert!(!w.has_changes(), "emitted once, then forgotten");
        assert!(w.checkpoint().changed.is_empty());
    }

    #[test]
    fn checkpoint_carries_only_changes_since_the_last_one() {
        let mut w = PartitionWindow::new(0, RETENTION);
        w.apply(obs(H0, 7, EventKind::Click, H0)).unwrap();
        w.apply(obs(H0 + HOUR_MS, 8, EventKind::Click, H0)).unwrap();
        let cp = w.checkpoint();
        assert_eq!(cp.changed.len(), 2);
        assert_eq!(cp.changed[0].new_users, vec![7]);
        // Not yet marked: asking again gives the same checkpoint (retry after a failed write).
        assert_eq!(w.checkpoint(), cp);
        w.mark_checkpointed();
        assert!(!w.has_changes());
        w.apply(obs(H0, 7, EventKind::Impression, H0)).unwrap();
        let cp = w.checkpoint();
        assert_eq!(cp.changed.len(), 1);
        assert!(cp.changed[0].new_users.is_empty(), "user 7 was already persisted");
        assert_eq!(cp.changed[0].counts, HourCounts { unique_users: 1, clicks: 1, impressions: 1 });
    }

    #[test]
    fn restored_window_continues_exactly() {
        let events: Vec<_> =
            (0..100u64).map(|i| obs(H0 + (i as i64 % 3) * HOUR_MS, i % 17, EventKind::Click, H0)).collect();
        let mut whole = PartitionWindow::new(0, RETENTION);
        let mut first = PartitionWindow::new(0, RETENTION);
        let mut persisted: BTreeMap<HourStart, (u64, u64, Vec<u64>)> = BTreeMap::new();
        for (i, o) in events.iter().enumerate() {
            whole.apply(*o).unwrap();
            if i < 60 {
                first.apply(*o).unwrap();
            }
            if i == 30 || i == 59 {
                for ch in first.checkpoint().changed {
                    let e = persisted.entry(ch.hour).or_default();
                    e.0 = ch.counts.clicks;
                    e.1 = ch.counts.impressions;
                    e.2.extend(ch.new_users);
                }
                first.mark_checkpointed();
            }
        }
        let mut restored = PartitionWindow::new(first.watermark_ms(), RETENTION);
        for (h, (c, i, users)) in persisted {
            let n = users.len();
            restored.restore_hour(h, HourBucket::restore(c, i, users, n));
        }
        // The engine resumes at the restored position: record 60 onwards.
        for o in &events[60..] {
            restored.apply(*o).unwrap();
        }
        assert_eq!(totals(&restored), totals(&whole));
    }

    proptest! {
        #[test]
        fn any_event_order_gives_the_same_buckets(mut events in proptest::collection::vec(arb_obs(), 0..300), seed in any::<u64>()) {
            let mut a = PartitionWindow::new(0, RETENTION);
            for o in &events { a.apply(*o).unwrap(); }
            // A deterministic shuffle driven by the seed.
            let n = events.len();
            let mut s = seed | 1;
            for i in (1..n).rev() {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                events.swap(i, (s % (i as u64 + 1)) as usize);
            }
            let mut b = PartitionWindow::new(0, RETENTION);
            for o in &events { b.apply(*o).unwrap(); }
            prop_assert_eq!(totals(&a), totals(&b));
        }

        #[test]
        fn merging_partial_buckets_equals_aggregating_the_union(events in proptest::collection::vec((0u64..40, any::<bool>()), 0..300), split in 0usize..300) {
            let kind = |c: bool| if c { EventKind::Click } else { EventKind::Impression };
            let split = split.min(events.len());
            let (mut left, mut right, mut all) = (HourBucket::default(), HourBucket::default(), HourBucket::default());
            for (i, (u, c)) in events.iter().enumerate() {
                if i < split { left.apply(*u, kind(*c)) } else { right.apply(*u, kind(*c)) }
                all.apply(*u, kind(*c));
            }
            left.merge(&right);
            prop_assert_eq!(left.counts(), all.counts());
        }

        #[test]
        fn disjoint_partitions_add_up(events in proptest::collection::vec((0u64..40, any::<bool>()), 0..300)) {
            // Users routed by key: each user's events go to exactly one of two partitions.
            let kind = |c: bool| if c { EventKind::Click } else { EventKind::Impression };
            let (mut p0, mut p1, mut all) = (HourBucket::default(), HourBucket::default(), HourBucket::default());
            for (u, c) in &events {
                if u % 2 == 0 { p0.apply(*u, kind(*c)) } else { p1.apply(*u, kind(*c)) }
                all.apply(*u, kind(*c));
            }
            prop_assert_eq!(p0.counts().merge(p1.counts()), all.counts());
        }

        #[test]
        fn unique_users_never_exceed_events(events in proptest::collection::vec(arb_obs(), 0..300)) {
            let mut w = PartitionWindow::new(0, RETENTION);
            for o in &events { w.apply(*o).unwrap(); }
            for (_, c) in w.counts() {
                prop_assert!(c.unique_users <= c.clicks + c.impressions);
                prop_assert!(c.unique_users >= 1);
            }
        }
    }
}
