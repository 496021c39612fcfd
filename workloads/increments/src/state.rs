//! Per-partition state of the processor: the exact sum of every key seen in
//! the partition and which of them changed since the last checkpoint.
//! (Client ids are deduplicated by the engine, before an increment gets here.)
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

use super::event::{IncrementEvent, IncrementKey};

/// The exact sum of one key over one partition's increments up to
/// `input_offset` (exclusive): what the processor emits on `increments.sums`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IncrementSum {
    pub key: IncrementKey,
    /// At least 1: a key appears once it has an increment.
    pub sum: i128,
    pub partition: i32,
    pub input_offset: i64,
    /// Newest acceptance time among the increments it reflects.
    pub watermark_ms: i64,
}

impl IncrementSum {
    /// The record key on `increments.sums`: the canonical key, so compaction
    /// keeps the latest sum of each key.
    pub fn record_key(&self) -> [u8; super::event::KEY_LEN] {
        self.key.canonical()
    }
}

/// The state of one partition of `increments.events`.
///
/// Deterministic: it depends only on the increments applied and their order,
/// never on a clock, so a replay from a checkpoint rebuilds it exactly. The
/// engine owns offsets, checkpoints and sinks; this owns the sums.
#[derive(Debug, Clone, Default)]
pub struct IncrementState {
    sums: HashMap<IncrementKey, i128>,
    changed: HashSet<IncrementKey>,
}

impl IncrementState {
    pub fn new() -> Self {
        IncrementState::default()
    }

    /// Adds one increment to its key's sum.
    ///
    /// # Panics
    /// If a sum would pass `i128::MAX`, which takes over 2^64 increments (see
    /// the module documentation).
    pub fn apply(&mut self, e: &IncrementEvent) {
        self.add(e.key, i128::from(e.value.get()));
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
        !self.changed.is_empty()
    }

    /// Forgets what changed: call once [`IncrementState::changed`] is durably checkpointed.
    pub fn mark_checkpointed(&mut self) {
        self.changed.clear();
    }

    /// Forgets what changed as of `persisted` (an answer of
    /// [`IncrementState::changed`], now durable), whatever was applied since:
    /// a key whose sum moved after it stays changed. A sum only grows, so an
    /// equal sum is the persisted one.
    pub fn mark_persisted(&mut self, persisted: &[(IncrementKey, i128)]) {
        for (key, sum) in persisted {
            if self.sums.get(key) == Some(sum) {
                self.changed.remove(key);
            }
        }
    }

    /// Makes room for `more` keys (a restore knows how many it reads).
    pub fn reserve(&mut self, more: usize) {
        self.sums.reserve(more);
    }

    /// Sets a key's sum as read from a checkpoint; not a change.
    pub fn restore(&mut self, key: IncrementKey, sum: i128) {
        self.sums.insert(key, sum);
        self.changed.remove(&key);
    }

    /// Adds the sums of a state built from other increments (another slice of
    /// the log, or another partition merged for a rebalance): the result holds
    /// the sums over both. Every key of `other` counts as changed.
    ///
    /// # Panics
    /// As [`IncrementState::apply`], if a sum would pass `i128::MAX`.
    pub fn merge(&mut self, other: IncrementState) {
        for (key, sum) in other.sums {
            self.add(key, sum);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{IncrementValue, MAX_VALUE};
    use proptest::prelude::*;

    fn key(n: u128) -> IncrementKey {
        IncrementKey::from_uuid(uuid::Uuid::from_u128(n))
    }

    fn inc(k: u128, value: i64, at: i64) -> IncrementEvent {
        IncrementEvent { key: key(k), value: IncrementValue::new(value).unwrap(), accepted_at_ms: at, id: None }
    }

    fn state_of(events: &[IncrementEvent]) -> IncrementState {
        let mut s = IncrementState::new();
        for e in events {
            s.apply(e);
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
        s.apply(&inc(2, 1, 3));
        assert_eq!(s.changed(), vec![(key(2), 8)]);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn a_key_changed_after_the_persisted_snapshot_stays_changed() {
        let mut s = state_of(&[inc(1, 5, 0), inc(2, 7, 1)]);
        let persisted = s.changed();
        // Applied while that checkpoint was in flight.
        s.apply(&inc(2, 1, 2));
        s.apply(&inc(3, 4, 3));
        s.mark_persisted(&persisted);
        assert_eq!(s.changed(), vec![(key(2), 8), (key(3), 4)], "key 1 is durable; 2 moved, 3 is new");
    }

    #[test]
    fn restored_sums_continue_and_are_not_changes() {
        let mut s = IncrementState::new();
        s.restore(key(1), 100);
        assert!(!s.has_changes());
        s.apply(&inc(1, 1, 0));
        assert_eq!(s.changed(), vec![(key(1), 101)]);
    }

    #[test]
    fn two_to_the_forty_max_value_increments_do_not_overflow() {
        const N: i128 = 1 << 40;
        let mut s = IncrementState::new();
        // The sum after N − 1 of them, then the last one applied.
        s.restore(key(1), (N - 1) * i128::from(MAX_VALUE));
        s.apply(&inc(1, MAX_VALUE, 0));
        let sum = s.sum(&key(1)).unwrap();
        assert_eq!(sum, N * i128::from(MAX_VALUE));
        assert!(sum < 1 << 103);
        // Two such keys merged still fit with room to spare.
        let mut other = IncrementState::new();
        other.restore(key(1), sum);
        s.merge(other);
        assert_eq!(s.sum(&key(1)), Some(2 * sum));
    }

    #[test]
    #[should_panic(expected = "i128 sum")]
    fn an_overflow_stops_rather_than_wraps() {
        let mut s = IncrementState::new();
        s.restore(key(1), i128::MAX - 1);
        s.apply(&inc(1, 2, 0));
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
            let mut resumed = IncrementState::new();
            for (k, sum) in checkpoint {
                resumed.restore(k, sum);
            }
            for e in &events[cut..] {
                resumed.apply(e);
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
