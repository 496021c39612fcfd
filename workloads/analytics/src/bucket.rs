//! Per-(hour, partition) and per-(day, partition) state and the absolute
//! aggregates it yields.
//!
//! A [`PartitionWindow`] is the analytics state of one input partition: one
//! [`HourBucket`] per open hour, one [`DayUsers`] (the exact user set) per
//! open UTC day, and the partition's watermark (the newest acceptance time
//! seen), which closes hours and days. The engine keeps the position
//! and the event ids beside it. It is a pure function of the partition's log
//! prefix: replaying the same records yields the same buckets, which is what
//! makes offset-tagged aggregates idempotent.

use std::collections::BTreeMap;

pub use super::counts::HourCounts;
use super::event::{ClickEvent, EventKind};
use super::sketch::UserSketch;
use super::time::{DayStart, EpochMillis, HourStart};
use super::user_set::UserSet;

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
    /// The per-kind counts (its `unique_users` unused: the set is the truth).
    kinds: HourCounts,
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
        self.kinds.add(kind);
        self.dirty = true;
    }

    pub fn counts(&self) -> HourCounts {
        HourCounts { unique_users: self.users.len() as u64, ..self.kinds }
    }

    /// Unions another bucket of the same hour into this one.
    pub fn merge(&mut self, other: &HourBucket) {
        for h in other.users.iter() {
            if self.users.insert(h) {
                self.new_users.push(h);
            }
        }
        self.kinds = self.kinds.merge(other.kinds);
        self.dirty = true;
    }

    /// Rebuilds a bucket from a checkpoint; it starts clean (nothing to persist).
    /// `kinds`: the stored per-kind counts (their `unique_users` is ignored).
    pub fn restore(kinds: HourCounts, users: impl IntoIterator<Item = u64>, size_hint: usize) -> Self {
        let mut hashes = Vec::with_capacity(size_hint);
        hashes.extend(users);
        HourBucket {
            users: UserSet::from_hashes(hashes),
            kinds: HourCounts { unique_users: 0, ..kinds },
            new_users: Vec::new(),
            dirty: false,
        }
    }

    pub fn heap_bytes(&self) -> usize {
        self.users.heap_bytes() + self.new_users.capacity() * 8
    }

    /// The mergeable sketch of the hour's users, as stored ([`UserSketch::to_bytes`]).
    ///
    /// Derived from the exact set when asked (at emit time) rather than kept
    /// beside it: a sketch is 64 KiB of registers, an hour's set usually far less.
    pub fn sketch_bytes(&self) -> Vec<u8> {
        self.users.iter().collect::<UserSketch>().to_bytes()
    }
}

/// The exact user set of one UTC day in one partition, built like an
/// [`HourBucket`]'s: the union of the day's hours, kept until the day closes
/// (so also past the close of its first hours).
#[derive(Debug, Clone, Default)]
pub struct DayUsers {
    users: UserSet,
    /// Users first seen since the last checkpoint: the delta to persist.
    new_users: Vec<u64>,
}

impl DayUsers {
    /// Adds a user; order does not matter.
    pub fn insert(&mut self, user_hash: u64) {
        if self.users.insert(user_hash) {
            self.new_users.push(user_hash);
        }
    }

    /// Rebuilds a day from a checkpoint; it starts clean.
    pub fn restore(users: impl IntoIterator<Item = u64>, size_hint: usize) -> Self {
        let mut hashes = Vec::with_capacity(size_hint);
        hashes.extend(users);
        DayUsers { users: UserSet::from_hashes(hashes), new_users: Vec::new() }
    }

    pub fn unique_users(&self) -> u64 {
        self.users.len() as u64
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
    /// Open days whose user set grew, with the users to persist.
    pub changed_days: Vec<ChangedDay>,
    /// Days closed since the last checkpoint: drop their user sets.
    pub closed_days: Vec<DayStart>,
}

/// One hour as persisted and emitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedHour {
    pub hour: HourStart,
    pub counts: HourCounts,
    pub new_users: Vec<u64>,
    /// [`HourBucket::sketch_bytes`] of the hour.
    pub sketch: Vec<u8>,
    /// Distinct users of the hour's UTC day so far, in this partition.
    pub day_unique_users: u64,
}

/// One open day whose user set grew since the last checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedDay {
    pub day: DayStart,
    pub unique_users: u64,
    pub new_users: Vec<u64>,
}

/// All state of one input partition.
#[derive(Debug, Clone)]
pub struct PartitionWindow {
    hours: BTreeMap<HourStart, HourBucket>,
    /// The user set of every day with an open hour or not yet closed itself.
    days: BTreeMap<DayStart, DayUsers>,
    watermark_ms: EpochMillis,
    /// An hour closes once `watermark >= hour end + retention`; a day likewise.
    retention_ms: i64,
    closed_pending: Vec<HourStart>,
    closed_days_pending: Vec<DayStart>,
    /// Final counts of hours that closed with changes not yet checkpointed:
    /// they must still be persisted and emitted once.
    closing: Vec<ChangedHour>,
}

impl PartitionWindow {
    /// An empty window at `watermark_ms`.
    pub fn new(watermark_ms: EpochMillis, retention_ms: i64) -> Self {
        PartitionWindow {
            hours: BTreeMap::new(),
            days: BTreeMap::new(),
            watermark_ms,
            retention_ms,
            closed_pending: Vec::new(),
            closed_days_pending: Vec::new(),
            closing: Vec::new(),
        }
    }

    /// Adds a restored hour (see [`HourBucket::restore`]).
    ///
    /// Its users also join its day's set: a no-op when the day was restored
    /// too (an hour's users are always in its day), and what seeds the day
    /// of a state written before days were kept (those users are then new,
    /// to be persisted with the next checkpoint).
    pub fn restore_hour(&mut self, hour: HourStart, bucket: HourBucket) {
        let day = self.days.entry(hour.day()).or_default();
        for h in bucket.users.iter() {
            day.insert(h);
        }
        self.hours.insert(hour, bucket);
    }

    /// Adds a restored day (see [`DayUsers::restore`]); call before [`restore_hour`](Self::restore_hour).
    pub fn restore_day(&mut self, day: DayStart, users: DayUsers) {
        self.days.insert(day, users);
    }

    pub fn watermark_ms(&self) -> EpochMillis {
        self.watermark_ms
    }

    /// True once no record can reach `hour` any more.
    pub fn is_closed(&self, hour: HourStart) -> bool {
        hour.end_ms().saturating_add(self.retention_ms) <= self.watermark_ms
    }

    /// True once no record can reach `day` any more: after its last hour closed.
    pub fn is_day_closed(&self, day: DayStart) -> bool {
        day.end_ms().saturating_add(self.retention_ms) <= self.watermark_ms
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
        // An open hour's day is open too: it ends no earlier.
        self.days.entry(obs.hour.day()).or_default().insert(obs.user_hash);
        Ok(())
    }

    /// Distinct users of `day` so far (0 for a day with none).
    pub fn day_unique_users(&self, day: DayStart) -> u64 {
        self.days.get(&day).map_or(0, DayUsers::unique_users)
    }

    /// Unique users of every open day.
    pub fn day_counts(&self) -> impl Iterator<Item = (DayStart, u64)> + '_ {
        self.days.iter().map(|(d, u)| (*d, u.unique_users()))
    }

    /// An hour as emitted: its counts, sketch and its day's unique users.
    fn report(&self, hour: HourStart, bucket: &HourBucket, new_users: Vec<u64>) -> ChangedHour {
        ChangedHour {
            hour,
            counts: bucket.counts(),
            new_users,
            sketch: bucket.sketch_bytes(),
            day_unique_users: self.day_unique_users(hour.day()),
        }
    }

    /// An open hour as emitted (new users left out), or `None` when it is not open.
    pub fn report_hour(&self, hour: HourStart) -> Option<ChangedHour> {
        self.hours.get(&hour).map(|b| self.report(hour, b, Vec::new()))
    }

    /// Counts of every open hour.
    pub fn counts(&self) -> impl Iterator<Item = (HourStart, HourCounts)> + '_ {
        self.hours.iter().map(|(h, b)| (*h, b.counts()))
    }

    pub fn has_changes(&self) -> bool {
        self.hours.values().any(|b| b.dirty)
            || self.days.values().any(|d| !d.new_users.is_empty())
            || !self.closed_pending.is_empty()
            || !self.closed_days_pending.is_empty()
            || !self.closing.is_empty()
    }

    /// Drops closed hours and days from memory and reports them in the next
    /// checkpoint. An hour that closes with unsaved changes keeps its final
    /// counts (and its day's) for that checkpoint, so its last update is
    /// persisted and emitted. Hours go first: a day closes with its last hour.
    pub fn evict_closed(&mut self) {
        let closed: Vec<HourStart> = self.hours.keys().copied().filter(|h| self.is_closed(*h)).collect();
        for h in closed {
            let bucket = self.hours.remove(&h).expect("key listed above");
            if bucket.dirty {
                let last = self.report(h, &bucket, Vec::new());
                self.closing.push(last);
            }
            self.closed_pending.push(h);
        }
        let closed: Vec<DayStart> = self.days.keys().copied().filter(|d| self.is_day_closed(*d)).collect();
        for d in closed {
            self.days.remove(&d);
            self.closed_days_pending.push(d);
        }
    }

    /// What changed since the last [`mark_checkpointed`](Self::mark_checkpointed).
    /// Leaves the window untouched, so a failed write can simply be retried.
    pub fn checkpoint(&self) -> Checkpoint {
        let changed = self
            .hours
            .iter()
            .filter(|(_, b)| b.dirty)
            .map(|(h, b)| self.report(*h, b, b.new_users.clone()))
            .chain(self.closing.iter().cloned())
            .collect();
        let changed_days = self
            .days
            .iter()
            .filter(|(_, d)| !d.new_users.is_empty())
            .map(|(day, d)| ChangedDay { day: *day, unique_users: d.unique_users(), new_users: d.new_users.clone() })
            .collect();
        Checkpoint {
            changed,
            closed: self.closed_pending.clone(),
            changed_days,
            closed_days: self.closed_days_pending.clone(),
        }
    }

    /// Records that the last [`checkpoint`](Self::checkpoint) is durable.
    pub fn mark_checkpointed(&mut self) {
        for b in self.hours.values_mut() {
            b.dirty = false;
            b.new_users = Vec::new();
        }
        for d in self.days.values_mut() {
            d.new_users = Vec::new();
        }
        self.closed_pending.clear();
        self.closed_days_pending.clear();
        self.closing.clear();
    }

    /// Records that `persisted` (an answer of [`checkpoint`](Self::checkpoint),
    /// now durable) is, whatever was applied since: its new users leave the
    /// deltas (those added since stay, after them), an hour stays dirty if
    /// its counts moved since, and the closed hours and days it reported go.
    /// (Hours close only in [`evict_closed`](Self::evict_closed), before a
    /// snapshot: the reported ones are the first of their lists.)
    pub fn mark_persisted(&mut self, persisted: &Checkpoint) {
        fn forget_first(users: &mut Vec<u64>, n: usize) {
            if n >= users.len() {
                *users = Vec::new(); // its memory goes too, as the deltas are transient
            } else {
                users.drain(..n);
            }
        }
        for c in &persisted.changed {
            if let Some(b) = self.hours.get_mut(&c.hour) {
                forget_first(&mut b.new_users, c.new_users.len());
                b.dirty = b.counts() != c.counts;
            }
        }
        for d in &persisted.changed_days {
            if let Some(day) = self.days.get_mut(&d.day) {
                forget_first(&mut day.new_users, d.new_users.len());
            }
        }
        let closing = persisted.changed.iter().filter(|c| persisted.closed.contains(&c.hour)).count();
        self.closing.drain(..closing.min(self.closing.len()));
        self.closed_pending.drain(..persisted.closed.len().min(self.closed_pending.len()));
        self.closed_days_pending.drain(..persisted.closed_days.len().min(self.closed_days_pending.len()));
    }

    /// Users held, summed over open hours (the denominator of bytes per user-hour).
    pub fn user_hours(&self) -> u64 {
        self.hours.values().map(|b| b.counts().unique_users).sum()
    }

    /// Users held, summed over open days (the denominator of bytes per user-day).
    pub fn user_days(&self) -> u64 {
        self.days.values().map(DayUsers::unique_users).sum()
    }

    /// Heap bytes of the hour buckets.
    pub fn heap_bytes(&self) -> usize {
        self.hours.values().map(HourBucket::heap_bytes).sum::<usize>()
    }

    /// Heap bytes of the day user sets.
    pub fn day_heap_bytes(&self) -> usize {
        self.days.values().map(DayUsers::heap_bytes).sum::<usize>()
    }

    pub fn open_days(&self) -> usize {
        self.days.len()
    }

    pub fn open_hours(&self) -> usize {
        self.hours.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::HOUR_MS;
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
    fn what_is_applied_while_a_checkpoint_is_in_flight_is_in_the_next_one() {
        let now = H0 + 30 * HOUR_MS + 10;
        let mut w = PartitionWindow::new(now, RETENTION);
        w.apply(obs(now, 1, EventKind::Click, now)).unwrap();
        w.apply(obs(now - 2 * HOUR_MS, 2, EventKind::Click, now)).unwrap();
        let persisted = w.checkpoint();
        // Applied while it commits: a new user of the current hour, and a repeat user.
        w.apply(obs(now, 3, EventKind::Impression, now)).unwrap();
        w.apply(obs(now, 1, EventKind::Click, now)).unwrap();
        w.mark_persisted(&persisted);
        let next = w.checkpoint();
        assert_eq!(next.changed.len(), 1, "the earlier hour is durable, the current one moved");
        assert_eq!(next.changed[0].hour, HourStart::of(now));
        assert_eq!(next.changed[0].new_users, vec![3], "user 1 was persisted, user 3 was not");
        assert_eq!(next.changed[0].counts, HourCounts { unique_users: 2, clicks: 2, impressions: 1 });
        assert_eq!(next.changed_days.iter().map(|d| d.new_users.clone()).collect::<Vec<_>>(), vec![vec![3]]);
        w.mark_persisted(&next);
        assert!(!w.has_changes());
    }

    #[test]
    fn restored_window_continues_exactly() {
        let events: Vec<_> =
            (0..100u64).map(|i| obs(H0 + (i as i64 % 3) * HOUR_MS, i % 17, EventKind::Click, H0)).collect();
        let mut whole = PartitionWindow::new(0, RETENTION);
        let mut first = PartitionWindow::new(0, RETENTION);
        let mut persisted: BTreeMap<HourStart, (u64, u64, Vec<u64>)> = BTreeMap::new();
        let mut persisted_days: BTreeMap<DayStart, Vec<u64>> = BTreeMap::new();
        for (i, o) in events.iter().enumerate() {
            whole.apply(*o).unwrap();
            if i < 60 {
                first.apply(*o).unwrap();
            }
            if i == 30 || i == 59 {
                for d in first.checkpoint().changed_days {
                    persisted_days.entry(d.day).or_default().extend(d.new_users);
                }
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
        for (d, users) in persisted_days {
            let n = users.len();
            restored.restore_day(d, DayUsers::restore(users, n));
        }
        for (h, (c, i, users)) in persisted {
            let n = users.len();
            restored.restore_hour(
                h,
                HourBucket::restore(HourCounts { unique_users: 0, clicks: c, impressions: i }, users, n),
            );
        }
        // The engine resumes at the restored position: record 60 onwards.
        for o in &events[60..] {
            restored.apply(*o).unwrap();
        }
        assert_eq!(totals(&restored), totals(&whole));
        assert_eq!(days(&restored), days(&whole));
    }

    fn days(w: &PartitionWindow) -> BTreeMap<DayStart, u64> {
        w.day_counts().collect()
    }

    #[test]
    fn a_day_counts_each_user_once_across_its_hours_and_late_events_join_their_own_day() {
        let mut w = PartitionWindow::new(0, RETENTION);
        let d0 = DayStart::of(H0);
        let now = d0.end_ms() + 5 * HOUR_MS; // the next day
        w.apply(obs(d0.start_ms(), 1, EventKind::Click, now)).unwrap();
        w.apply(obs(d0.start_ms() + 5 * HOUR_MS, 1, EventKind::Click, now)).unwrap();
        w.apply(obs(d0.end_ms() - 1, 2, EventKind::Impression, now)).unwrap();
        w.apply(obs(now, 1, EventKind::Click, now)).unwrap();
        assert_eq!(days(&w), BTreeMap::from([(d0, 2), (DayStart::of(now), 1)]));
        let cp = w.checkpoint();
        let last_hour = cp.changed.iter().find(|c| c.hour == HourStart::of(d0.end_ms() - 1)).unwrap();
        assert_eq!((last_hour.counts.unique_users, last_hour.day_unique_users), (1, 2));
        let mut changed_days: Vec<_> =
            cp.changed_days.iter().map(|d| (d.day, d.unique_users, d.new_users.clone())).collect();
        changed_days.sort();
        assert_eq!(changed_days, vec![(d0, 2, vec![1, 2]), (DayStart::of(now), 1, vec![1])]);
        w.mark_checkpointed();
        w.apply(obs(d0.start_ms() + HOUR_MS, 2, EventKind::Click, now)).unwrap();
        let cp = w.checkpoint();
        assert!(cp.changed_days.is_empty(), "user 2 was already in the day");
        assert_eq!(cp.changed[0].day_unique_users, 2);
    }

    #[test]
    fn a_day_closes_with_its_last_hour_and_its_final_count_is_emitted_once() {
        let d0 = DayStart::of(H0);
        let mut w = PartitionWindow::new(0, RETENTION);
        w.apply(obs(d0.start_ms(), 1, EventKind::Click, d0.start_ms())).unwrap();
        w.apply(obs(d0.end_ms() - 1, 2, EventKind::Click, d0.start_ms())).unwrap();
        w.mark_checkpointed();
        // Late, for the last hour, accepted just before it closes; then the watermark closes it.
        let almost = d0.end_ms() + RETENTION - 1;
        w.apply(obs(d0.end_ms() - 2, 3, EventKind::Click, almost)).unwrap();
        let close = d0.end_ms() + RETENTION;
        w.apply(obs(close, 4, EventKind::Click, close)).unwrap();
        assert!(w.is_day_closed(d0));
        assert_eq!(w.apply(obs(d0.end_ms() - 1, 5, EventKind::Click, close)), Err(Skipped::ClosedHour));
        w.evict_closed();
        let cp = w.checkpoint();
        assert_eq!(cp.closed_days, vec![d0]);
        let last = cp.changed.iter().find(|c| c.hour == HourStart::of(d0.end_ms() - 1)).expect("the closing hour");
        assert_eq!(last.day_unique_users, 3, "the day's final count rides on its last hour");
        assert!(cp.changed_days.iter().all(|d| d.day != d0), "a closed day's users are not persisted");
        w.mark_checkpointed();
        assert_eq!(days(&w).len(), 1);
        assert!(!w.has_changes());
    }

    #[test]
    fn an_hours_sketch_is_emitted_with_it() {
        let mut w = PartitionWindow::new(0, RETENTION);
        for u in 0..100u64 {
            w.apply(obs(H0, u.wrapping_mul(0x9E37_79B9_7F4A_7C15), EventKind::Click, H0)).unwrap();
        }
        let cp = w.checkpoint();
        let sketch = UserSketch::from_bytes(&cp.changed[0].sketch).unwrap();
        assert_eq!(sketch.estimate(), 100, "exact at small counts");
        assert_eq!(
            w.report_hour(HourStart::of(H0)),
            Some(ChangedHour { new_users: Vec::new(), ..cp.changed[0].clone() })
        );
    }

    #[test]
    fn restoring_days_before_days_were_kept_seeds_them_from_the_open_hours() {
        let mut w = PartitionWindow::new(H0, RETENTION);
        w.restore_hour(
            HourStart::of(H0),
            HourBucket::restore(HourCounts { unique_users: 0, clicks: 2, impressions: 0 }, [7, 8], 2),
        );
        w.restore_hour(
            HourStart::of(H0 + HOUR_MS),
            HourBucket::restore(HourCounts { unique_users: 0, clicks: 1, impressions: 0 }, [8, 9], 2),
        );
        assert_eq!(w.day_unique_users(DayStart::of(H0)), 3);
        assert!(w.has_changes(), "the seeded users are persisted");
        // With the day restored too, nothing is new.
        let mut w = PartitionWindow::new(H0, RETENTION);
        w.restore_day(DayStart::of(H0), DayUsers::restore([7, 8, 9, 10], 4));
        w.restore_hour(
            HourStart::of(H0),
            HourBucket::restore(HourCounts { unique_users: 0, clicks: 2, impressions: 0 }, [7, 8], 2),
        );
        assert_eq!(w.day_unique_users(DayStart::of(H0)), 4);
        assert!(!w.has_changes());
    }

    #[test]
    fn day_sets_stay_within_14_bytes_per_user_day() {
        let mut w = PartitionWindow::new(0, RETENTION);
        for i in 1..=200_000u64 {
            let hash = xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes());
            w.apply(obs(H0 + (i as i64 % 24) * HOUR_MS, hash, EventKind::Click, H0)).unwrap();
        }
        w.mark_checkpointed(); // the unsaved deltas are transient
        let per_user_day = w.day_heap_bytes() as f64 / w.user_days() as f64;
        assert!(per_user_day <= 14.0, "{per_user_day:.2} bytes per user-day");
        println!("day sets: {per_user_day:.2} bytes per user-day at {} user-days", w.user_days());
    }

    proptest! {
        #[test]
        fn a_days_users_are_the_union_of_its_hours_and_partitions_add_up(events in proptest::collection::vec((0i64..48 * HOUR_MS, 0u64..60), 0..300)) {
            let (mut p0, mut p1) = (PartitionWindow::new(0, RETENTION), PartitionWindow::new(0, RETENTION));
            let mut union: BTreeMap<DayStart, std::collections::BTreeSet<u64>> = BTreeMap::new();
            for (dt, u) in &events {
                let o = obs(H0 + dt, *u, EventKind::Click, H0 + 48 * HOUR_MS);
                if u % 2 == 0 { p0.apply(o).unwrap() } else { p1.apply(o).unwrap() }
                union.entry(o.hour.day()).or_default().insert(*u);
            }
            for (day, users) in &union {
                prop_assert_eq!(p0.day_unique_users(*day) + p1.day_unique_users(*day), users.len() as u64);
            }
        }

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
