//! Per-partition state of the processor: the exact sum of every key seen in
//! the partition, which of them changed since the last checkpoint, and the
//! client ids held for deduplication.
//!
//! # Why `i128` cannot overflow
//! A sum only grows by values of at most 2^63−1, so after `n` increments a
//! sum is below `n · 2^63`. `i128::MAX` is 2^127−1, so overflow needs more
//! than 2^64 increments of the largest value on one key: at a million per
//! second, 584,000 years. 2^40 increments (a trillion) of the largest value
//! stay below 2^103, 24 bits clear of the limit (tested below). The additions
//! are checked anyway: reaching the limit would be a bug elsewhere, and a
//! wrong sum is worse than a stopped partition.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::event::{IncrementEvent, IncrementKey};
use crate::analytics::EpochMillis;

/// The exact sum of one key over one partition's increments up to
/// `input_offset` (exclusive): what the processor emits on `increments.sums`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IncrementSum {
    pub key: IncrementKey,
    /// At least 1: a key appears once it has an increment.
    pub sum: i128,
    pub partition: i32,
    pub input_offset: i64,
}

impl IncrementSum {
    /// The record key on `increments.sums`: the canonical key, so compaction
    /// keeps the latest sum of each key.
    pub fn record_key(&self) -> [u8; super::event::KEY_LEN] {
        self.key.canonical()
    }
}

/// Why an increment was read but not added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Skipped {
    /// Its (key, id) was added before, within the deduplication window.
    #[error("duplicate id within the deduplication window")]
    DuplicateId,
}

impl Skipped {
    /// A short, fixed label for metrics (`reason="duplicate_id"`).
    pub fn label(self) -> &'static str {
        match self {
            Skipped::DuplicateId => "duplicate_id",
        }
    }
}

/// The state of one partition of `increments.events`.
///
/// Deterministic: it depends only on the increments applied and their order,
/// never on a clock, so a replay from a checkpoint rebuilds it exactly. The
/// engine owns offsets, checkpoints and sinks; this owns the sums.
#[derive(Debug, Clone)]
pub struct IncrementState {
    sums: HashMap<IncrementKey, i128>,
    changed: HashSet<IncrementKey>,
    /// Id hash ([`IncrementEvent::id_hash`]) → `accepted_at_ms` of the increment that carried it.
    ids: HashMap<u64, EpochMillis>,
    new_ids: Vec<(u64, EpochMillis)>,
    /// Newest `accepted_at_ms` applied: the clock ids expire by.
    watermark_ms: EpochMillis,
    dedup_window_ms: i64,
}

impl IncrementState {
    /// An empty state that holds ids for `dedup_window` of accepted time: a
    /// retry of the same (key, id) within it is added once.
    pub fn new(dedup_window: Duration) -> Self {
        IncrementState {
            sums: HashMap::new(),
            changed: HashSet::new(),
            ids: HashMap::new(),
            new_ids: Vec::new(),
            watermark_ms: i64::MIN,
            dedup_window_ms: i64::try_from(dedup_window.as_millis()).unwrap_or(i64::MAX),
        }
    }

    /// Adds one increment to its key's sum, unless its id was added before.
    ///
    /// # Errors
    /// [`Skipped::DuplicateId`]; the state is unchanged but for the watermark.
    ///
    /// # Panics
    /// If a sum would pass `i128::MAX`, which takes over 2^64 increments (see
    /// the module documentation).
    pub fn apply(&mut self, e: &IncrementEvent) -> Result<(), Skipped> {
        self.watermark_ms = self.watermark_ms.max(e.accepted_at_ms);
        if let Some(hash) = e.id_hash() {
            // Expiry is decided here, from the watermark, not by when
            // `evict_expired_ids` last ran, so a replay decides the same way.
            let held = self.ids.get(&hash).is_some_and(|at| !self.is_expired(*at));
            if held {
                return Err(Skipped::DuplicateId);
            }
            self.ids.insert(hash, e.accepted_at_ms);
            self.new_ids.push((hash, e.accepted_at_ms));
        }
        self.add(e.key, i128::from(e.value.get()));
        Ok(())
    }

    fn add(&mut self, key: IncrementKey, amount: i128) {
        let sum = self.sums.entry(key).or_insert(0);
        *sum = sum.checked_add(amount).expect("an i128 sum holds 2^64 increments of 2^63-1");
        self.changed.insert(key);
    }

    /// The sum of `key`, if it was ever incremented (or restored).
    pub fn sum(&self, key: &IncrementKey) -> Option<i128> {
        self.sums.get(key).copied()
    }

    /// Every key and its sum, in no particular order.
    pub fn sums(&self) -> impl Iterator<Item = (IncrementKey, i128)> + '_ {
        self.sums.iter().map(|(k, s)| (*k, *s))
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.sums.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sums.is_empty()
    }

    /// The keys changed since the last [`IncrementState::mark_checkpointed`],
    /// with their sums, sorted by key: a checkpoint or sink writes them in one
    /// fixed order, so concurrent writers never lock rows in opposite orders.
    pub fn changed(&self) -> Vec<(IncrementKey, i128)> {
        let mut changed: Vec<(IncrementKey, i128)> = self.changed.iter().map(|k| (*k, self.sums[k])).collect();
        changed.sort_unstable_by_key(|(k, _)| *k);
        changed
    }

    /// True if a checkpoint has anything to write.
    pub fn has_changes(&self) -> bool {
        !self.changed.is_empty() || !self.new_ids.is_empty()
    }

    /// Ids added since the last checkpoint, as (hash, `accepted_at_ms`).
    pub fn new_ids(&self) -> &[(u64, EpochMillis)] {
        &self.new_ids
    }

    /// Forgets what changed: call once [`IncrementState::changed`] and
    /// [`IncrementState::new_ids`] are durably checkpointed.
    pub fn mark_checkpointed(&mut self) {
        self.changed.clear();
        self.new_ids.clear();
    }

    /// Sets a key's sum as read from a checkpoint; not a change.
    pub fn restore(&mut self, key: IncrementKey, sum: i128) {
        self.sums.insert(key, sum);
        self.changed.remove(&key);
    }

    /// Holds an id as read from a checkpoint; not a change.
    pub fn restore_id(&mut self, hash: u64, accepted_at_ms: EpochMillis) {
        self.ids.insert(hash, accepted_at_ms);
        self.watermark_ms = self.watermark_ms.max(accepted_at_ms);
    }

    /// Ids accepted before this are expired: a checkpoint may delete them.
    pub fn ids_expire_before_ms(&self) -> EpochMillis {
        self.watermark_ms.saturating_sub(self.dedup_window_ms)
    }

    fn is_expired(&self, accepted_at_ms: EpochMillis) -> bool {
        accepted_at_ms < self.ids_expire_before_ms()
    }

    /// Drops expired ids from memory. Only memory: [`IncrementState::apply`]
    /// already ignores them.
    pub fn evict_expired_ids(&mut self) {
        let before = self.ids_expire_before_ms();
        self.ids.retain(|_, at| *at >= before);
        self.new_ids.retain(|(_, at)| *at >= before);
    }

    /// Ids held for deduplication.
    pub fn held_ids(&self) -> usize {
        self.ids.len()
    }

    /// Adds the sums of a state built from other increments (another slice of
    /// the log, or another partition merged for a rebalance): the result holds
    /// the sums over both. Every key of `other` counts as changed; ids are united.
    ///
    /// # Panics
    /// As [`IncrementState::apply`], if a sum would pass `i128::MAX`.
    pub fn merge(&mut self, other: IncrementState) {
        for (key, sum) in other.sums {
            self.add(key, sum);
        }
        self.ids.extend(other.ids);
        self.new_ids.extend(other.new_ids);
        self.watermark_ms = self.watermark_ms.max(other.watermark_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::increments::event::{IncrementValue, MAX_VALUE};
    use proptest::prelude::*;

    const WINDOW: Duration = Duration::from_secs(600);

    fn key(n: u128) -> IncrementKey {
        IncrementKey::from_uuid(uuid::Uuid::from_u128(n))
    }

    fn inc(k: u128, value: i64, at: i64) -> IncrementEvent {
        IncrementEvent { key: key(k), value: IncrementValue::new(value).unwrap(), accepted_at_ms: at, id: None }
    }

    fn with_id(e: IncrementEvent, id: &str) -> IncrementEvent {
        IncrementEvent { id: Some(id.into()), ..e }
    }

    fn state_of(events: &[IncrementEvent]) -> IncrementState {
        let mut s = IncrementState::new(WINDOW);
        for e in events {
            let _ = s.apply(e);
        }
        s
    }

    fn sorted_sums(s: &IncrementState) -> Vec<(IncrementKey, i128)> {
        let mut v: Vec<_> = s.sums().collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn sums_add_per_key_and_report_changes_once() {
        let mut s = state_of(&[inc(1, 5, 0), inc(2, 7, 1), inc(1, 10, 2)]);
        assert_eq!(s.sum(&key(1)), Some(15));
        assert_eq!(s.sum(&key(2)), Some(7));
        assert_eq!(s.sum(&key(3)), None);
        assert_eq!(s.changed(), vec![(key(1), 15), (key(2), 7)]);
        assert!(s.has_changes());
        s.mark_checkpointed();
        assert!(!s.has_changes());
        assert_eq!(s.changed(), vec![]);
        s.apply(&inc(2, 1, 3)).unwrap();
        assert_eq!(s.changed(), vec![(key(2), 8)]);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn restored_sums_continue_and_are_not_changes() {
        let mut s = IncrementState::new(WINDOW);
        s.restore(key(1), 100);
        assert!(!s.has_changes());
        s.apply(&inc(1, 1, 0)).unwrap();
        assert_eq!(s.changed(), vec![(key(1), 101)]);
    }

    #[test]
    fn a_repeated_id_is_added_once_within_the_window() {
        let window_ms = i64::try_from(WINDOW.as_millis()).unwrap();
        let mut s = IncrementState::new(WINDOW);
        s.apply(&with_id(inc(1, 5, 1_000), "a")).unwrap();
        assert_eq!(s.apply(&with_id(inc(1, 5, 2_000), "a")), Err(Skipped::DuplicateId));
        // The same id on another key is another increment.
        s.apply(&with_id(inc(2, 5, 2_000), "a")).unwrap();
        assert_eq!((s.sum(&key(1)), s.sum(&key(2))), (Some(5), Some(5)));
        assert_eq!(s.new_ids().len(), 2);
        // Once the watermark passes the window, the id is new again, evicted or not.
        s.apply(&inc(3, 1, 1_000 + window_ms + 1)).unwrap();
        s.apply(&with_id(inc(1, 5, 1_000 + window_ms + 1), "a")).unwrap();
        assert_eq!(s.sum(&key(1)), Some(10));
        // A restored id deduplicates like an applied one.
        let mut r = IncrementState::new(WINDOW);
        r.restore_id(with_id(inc(1, 1, 0), "b").id_hash().unwrap(), 50);
        assert_eq!(r.apply(&with_id(inc(1, 1, 60), "b")), Err(Skipped::DuplicateId));
        assert!(!r.has_changes());
    }

    #[test]
    fn eviction_frees_memory_without_changing_decisions() {
        let window_ms = i64::try_from(WINDOW.as_millis()).unwrap();
        let events: Vec<_> = (0..100).map(|i| with_id(inc(1, 1, i * 60_000), &format!("id{}", i % 7))).collect();
        let mut evicting = IncrementState::new(WINDOW);
        let keeping = state_of(&events);
        for e in &events {
            let _ = evicting.apply(e);
            evicting.evict_expired_ids();
        }
        assert_eq!(evicting.sum(&key(1)), keeping.sum(&key(1)));
        assert!(evicting.held_ids() <= keeping.held_ids());
        assert_eq!(evicting.ids_expire_before_ms(), 99 * 60_000 - window_ms);
        assert_eq!(Skipped::DuplicateId.label(), "duplicate_id");
    }

    #[test]
    fn two_to_the_forty_max_value_increments_do_not_overflow() {
        const N: i128 = 1 << 40;
        let mut s = IncrementState::new(WINDOW);
        // The sum after N − 1 of them, then the last one applied.
        s.restore(key(1), (N - 1) * i128::from(MAX_VALUE));
        s.apply(&inc(1, MAX_VALUE, 0)).unwrap();
        let sum = s.sum(&key(1)).unwrap();
        assert_eq!(sum, N * i128::from(MAX_VALUE));
        assert!(sum < 1 << 103);
        // Two such keys merged still fit with room to spare.
        let mut other = IncrementState::new(WINDOW);
        other.restore(key(1), sum);
        s.merge(other);
        assert_eq!(s.sum(&key(1)), Some(2 * sum));
    }

    #[test]
    #[should_panic(expected = "i128 sum")]
    fn an_overflow_stops_rather_than_wraps() {
        let mut s = IncrementState::new(WINDOW);
        s.restore(key(1), i128::MAX - 1);
        let _ = s.apply(&inc(1, 2, 0));
    }

    fn events() -> impl Strategy<Value = Vec<IncrementEvent>> {
        prop::collection::vec((0u128..20, 1i64..=MAX_VALUE, 0i64..1_000_000), 0..200)
            .prop_map(|v| v.into_iter().map(|(k, val, at)| inc(k, val, at)).collect())
    }

    proptest! {
        #[test]
        fn any_order_of_applies_gives_the_same_sums(events in events(), seed in any::<u64>()) {
            let mut shuffled = events.clone();
            // A deterministic shuffle from the seed (Fisher-Yates on an LCG).
            let mut x = seed;
            for i in (1..shuffled.len()).rev() {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                shuffled.swap(i, (x >> 33) as usize % (i + 1));
            }
            prop_assert_eq!(sorted_sums(&state_of(&events)), sorted_sums(&state_of(&shuffled)));
        }

        #[test]
        fn split_and_restore_equals_whole(events in events(), cut in any::<prop::sample::Index>()) {
            let cut = cut.index(events.len() + 1);
            let whole = state_of(&events);
            // Checkpoint after the first part, restore into a fresh state, apply the rest.
            let mut first = state_of(&events[..cut]);
            let checkpoint = first.changed();
            first.mark_checkpointed();
            let mut resumed = IncrementState::new(WINDOW);
            for (k, sum) in checkpoint {
                resumed.restore(k, sum);
            }
            for e in &events[cut..] {
                resumed.apply(e).unwrap();
            }
            prop_assert_eq!(sorted_sums(&resumed), sorted_sums(&whole));
            // Merging the two halves' own states gives the same sums too.
            let mut merged = state_of(&events[..cut]);
            merged.merge(state_of(&events[cut..]));
            prop_assert_eq!(sorted_sums(&merged), sorted_sums(&whole));
        }

        #[test]
        fn a_sum_is_the_exact_total(values in prop::collection::vec(1i64..=MAX_VALUE, 1..500)) {
            let events: Vec<_> = values.iter().map(|v| inc(9, *v, 0)).collect();
            let total: i128 = values.iter().map(|v| i128::from(*v)).sum();
            prop_assert_eq!(state_of(&events).sum(&key(9)), Some(total));
        }
    }
}
