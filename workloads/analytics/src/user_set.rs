//! An exact set of 64-bit user hashes in under 8 bytes per member.
//!
//! Two parts (issue 23, "state ≤ 8 bytes per user-hour"):
//!
//! - a **packed** base ([`Packed`]): the members sorted and split by their
//!   top `b` bits into `2^b` runs of 16–32 members (one `u32` offset per
//!   run), each member keeping only its low `64 − b` bits, bit-packed. For
//!   300k members that is 50 bits plus ¼ byte of offsets: 6.5 bytes, against
//!   the raw hash's 8. Immutable; a lookup is a short binary search in one run.
//! - a **delta**: an open-addressing table ([`Table`], 8 bytes a slot at a
//!   load between 7/12 and 7/8) of the members added since the base was
//!   built. When it holds more than an eighth of the base it is merged in (one
//!   pass over both, sorted), so a set spends at most an eighth of its members
//!   at the table's 9–14 bytes: 7.9 bytes per member at worst, about 7 on
//!   average, and every insert costs a constant amortized share of the merges.
//!
//! Small sets (under [`PACK_FROM`] members) stay in the table alone: packing
//! saves nothing at that size. The hashes come from XXH3 and are already well
//! mixed, so both the table's slot and the base's run are plain bits of the hash.
//! Hand-written rather than a crate's: what is measured here is bytes per
//! member, and the general-purpose succinct-set crates spend more (rank/select
//! indexes) for operations this set never needs.

/// An exact set of user hashes.
#[derive(Debug, Clone, Default)]
pub struct UserSet {
    base: Packed,
    delta: Table,
}

/// Fewest members worth packing: below, the run offsets and the 62-bit
/// entries save nothing on the table.
const PACK_FROM: usize = 64;
/// Members per run of the packed base, on average between this and twice it.
const RUN: usize = 16;

impl UserSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// The set of `hashes` (any order, repeats allowed), packed at once: how a
    /// checkpoint's stored users come back.
    pub fn from_hashes(mut hashes: Vec<u64>) -> Self {
        hashes.sort_unstable();
        hashes.dedup();
        if hashes.len() < PACK_FROM {
            let mut delta = Table::with_capacity(hashes.len());
            for h in hashes {
                delta.insert(h);
            }
            return UserSet { base: Packed::default(), delta };
        }
        UserSet { base: Packed::from_sorted(&hashes), delta: Table::default() }
    }

    pub fn len(&self) -> usize {
        self.base.len() + self.delta.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds a hash; returns true if it was not there before.
    pub fn insert(&mut self, hash: u64) -> bool {
        if self.base.contains(hash) || !self.delta.insert(hash) {
            return false;
        }
        if self.delta.len() >= PACK_FROM && self.delta.len() * 8 > self.base.len() {
            self.pack();
        }
        true
    }

    pub fn contains(&self, hash: u64) -> bool {
        self.delta.contains(hash) || self.base.contains(hash)
    }

    /// All members, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.base.iter().chain(self.delta.iter())
    }

    /// Heap bytes held by both parts.
    pub fn heap_bytes(&self) -> usize {
        self.base.heap_bytes() + self.delta.heap_bytes()
    }

    /// Merges the delta into a new base. The merge holds the members once
    /// unpacked (8 bytes each) while it runs.
    fn pack(&mut self) {
        let mut added: Vec<u64> = self.delta.iter().collect();
        added.sort_unstable();
        let mut merged = Vec::with_capacity(self.base.len() + added.len());
        let mut added = added.into_iter().peekable();
        for h in self.base.iter() {
            while let Some(a) = added.next_if(|a| *a < h) {
                merged.push(a);
            }
            merged.push(h);
        }
        merged.extend(added);
        self.base = Packed::from_sorted(&merged);
        self.delta = Table::default();
    }
}

/// Sorted members split by their top `bits` into runs; each keeps its low
/// `64 − bits`, bit-packed in `words`.
#[derive(Debug, Clone, Default)]
struct Packed {
    /// `starts[r]..starts[r + 1]`: the members of run `r` (empty when the set is).
    starts: Box<[u32]>,
    /// The low bits of every member, `width` bits each, in order, plus one
    /// spare word so that a read never checks for the end.
    words: Box<[u64]>,
    bits: u32,
    width: u32,
    len: usize,
}

impl Packed {
    /// `sorted`: strictly increasing.
    fn from_sorted(sorted: &[u64]) -> Self {
        debug_assert!(sorted.windows(2).all(|w| w[0] < w[1]));
        let len = sorted.len();
        if len == 0 {
            return Packed::default();
        }
        // At least RUN members a run on average: the offsets cost ≤ 4/RUN bytes a member.
        let bits = (len / RUN).max(1).ilog2();
        let width = 64 - bits;
        let mut starts = vec![0u32; (1usize << bits) + 1];
        for h in sorted {
            starts[run_of(*h, width) + 1] += 1;
        }
        for r in 1..starts.len() {
            starts[r] += starts[r - 1];
        }
        let mut words = vec![0u64; (len * width as usize).div_ceil(64) + 1];
        let mask = low_mask(width);
        for (i, h) in sorted.iter().enumerate() {
            let (bit, low) = (i * width as usize, h & mask);
            let (word, shift) = (bit / 64, (bit % 64) as u32);
            words[word] |= low << shift;
            if shift + width > 64 {
                words[word + 1] |= low >> (64 - shift);
            }
        }
        Packed { starts: starts.into_boxed_slice(), words: words.into_boxed_slice(), bits, width, len }
    }

    fn len(&self) -> usize {
        self.len
    }

    /// The low bits of member `i`.
    fn low(&self, i: usize) -> u64 {
        let bit = i * self.width as usize;
        let (word, shift) = (bit / 64, (bit % 64) as u32);
        let mut v = self.words[word] >> shift;
        if shift + self.width > 64 {
            v |= self.words[word + 1] << (64 - shift);
        }
        v & low_mask(self.width)
    }

    fn contains(&self, hash: u64) -> bool {
        if self.len == 0 {
            return false;
        }
        let run = run_of(hash, self.width);
        let (start, end) = (self.starts[run] as usize, self.starts[run + 1] as usize);
        if start == end {
            return false;
        }
        // The low bits of a run are uniform over their range, so the member's
        // place is about its share of that range: start there and step (one or
        // two cache lines, where a binary search would touch five).
        let want = hash & low_mask(self.width);
        let guess = start + ((u128::from(want) * (end - start) as u128) >> self.width) as usize;
        let mut i = guess.min(end - 1);
        if self.low(i) > want {
            while i > start {
                i -= 1;
                match self.low(i) {
                    l if l == want => return true,
                    l if l < want => return false,
                    _ => {}
                }
            }
            false
        } else {
            while i < end {
                match self.low(i) {
                    l if l == want => return true,
                    l if l > want => return false,
                    _ => i += 1,
                }
            }
            false
        }
    }

    /// Every member, ascending.
    fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        let runs = if self.len == 0 { 0 } else { 1usize << self.bits };
        (0..runs).flat_map(move |r| {
            let high = if self.bits == 0 { 0 } else { (r as u64) << self.width };
            (self.starts[r] as usize..self.starts[r + 1] as usize).map(move |i| high | self.low(i))
        })
    }

    fn heap_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.starts) + std::mem::size_of_val(&*self.words)
    }
}

/// The run of `hash`: its bits above the `width` low ones.
fn run_of(hash: u64, width: u32) -> usize {
    if width == 64 {
        0
    } else {
        (hash >> width) as usize
    }
}

fn low_mask(width: u32) -> u64 {
    if width == 64 {
        u64::MAX
    } else {
        (1u64 << width) - 1
    }
}

/// The delta: one flat open-addressing table. 8 bytes per slot at a load
/// factor kept between 7/12 and 7/8 (it grows by 1.5×); the slot is the hash
/// scaled onto the table (`hash * len >> 64`, which works for any length) and
/// linear probing stays short.
#[derive(Debug, Clone, Default)]
struct Table {
    /// `0` marks an empty slot; the hash `0` itself is tracked by `has_zero`.
    slots: Box<[u64]>,
    /// Occupied slots (not counting `has_zero`).
    occupied: usize,
    has_zero: bool,
}

const MIN_CAPACITY: usize = 16;

impl Table {
    fn with_capacity(n: usize) -> Self {
        let mut table = Self::default();
        if n > 0 {
            table.slots = vec![0; capacity_for(n)].into_boxed_slice();
        }
        table
    }

    fn len(&self) -> usize {
        self.occupied + usize::from(self.has_zero)
    }

    fn insert(&mut self, hash: u64) -> bool {
        if hash == 0 {
            return !std::mem::replace(&mut self.has_zero, true);
        }
        if (self.occupied + 1) * 8 > self.slots.len() * 7 {
            self.grow();
        }
        let mut i = self.home(hash);
        loop {
            match self.slots[i] {
                0 => {
                    self.slots[i] = hash;
                    self.occupied += 1;
                    return true;
                }
                h if h == hash => return false,
                _ => i = self.next(i),
            }
        }
    }

    fn contains(&self, hash: u64) -> bool {
        if hash == 0 {
            return self.has_zero;
        }
        if self.slots.is_empty() {
            return false;
        }
        let mut i = self.home(hash);
        loop {
            match self.slots[i] {
                0 => return false,
                h if h == hash => return true,
                _ => i = self.next(i),
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.has_zero.then_some(0).into_iter().chain(self.slots.iter().copied().filter(|h| *h != 0))
    }

    fn heap_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.slots)
    }

    /// The first slot to probe: the hash scaled onto the table (Lemire's fast range).
    fn home(&self, hash: u64) -> usize {
        ((u128::from(hash) * self.slots.len() as u128) >> 64) as usize
    }

    fn next(&self, i: usize) -> usize {
        if i + 1 == self.slots.len() {
            0
        } else {
            i + 1
        }
    }

    fn grow(&mut self) {
        let new_cap = (self.slots.len() * 3 / 2).max(MIN_CAPACITY);
        let old = std::mem::replace(&mut self.slots, vec![0; new_cap].into_boxed_slice());
        self.occupied = 0;
        for h in old.iter().copied().filter(|h| *h != 0) {
            self.insert(h);
        }
    }
}

/// The smallest table that holds `n` entries at load ≤ 7/8.
fn capacity_for(n: usize) -> usize {
    (n * 8).div_ceil(7).max(MIN_CAPACITY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn hash(i: u64) -> u64 {
        xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes())
    }

    #[test]
    fn zero_and_all_ones_are_members_like_any_other() {
        for extreme in [0, u64::MAX] {
            let mut s = UserSet::new();
            assert!(!s.contains(extreme));
            assert!(s.insert(extreme));
            assert!(!s.insert(extreme));
            assert!(s.contains(extreme));
            assert_eq!(s.len(), 1);
            assert_eq!(s.iter().collect::<Vec<_>>(), vec![extreme]);
        }
        // And once packed, beside others.
        let mut hashes: Vec<u64> = (1..1_000).map(hash).collect();
        hashes.extend([0, u64::MAX]);
        let s = UserSet::from_hashes(hashes.clone());
        assert!(s.contains(0) && s.contains(u64::MAX));
        assert_eq!(s.len(), hashes.len());
    }

    #[test]
    fn stays_under_8_bytes_per_member_once_past_a_few_thousand() {
        let mut s = UserSet::new();
        let mut worst: f64 = 0.0;
        for i in 1..=300_000u64 {
            assert!(s.insert(hash(i)));
            if s.len() >= 4_096 {
                worst = worst.max(s.heap_bytes() as f64 / s.len() as f64);
            }
        }
        assert_eq!(s.len(), 300_000);
        assert!(worst < 8.0, "{worst:.2} bytes per member at worst");
        for i in 1..=300_000u64 {
            assert!(s.contains(hash(i)));
            assert!(!s.contains(hash(i + 1_000_000)));
        }
    }

    #[test]
    fn a_restored_set_is_packed_whole() {
        let hashes: Vec<u64> = (0..100_000u64).map(hash).collect();
        let s = UserSet::from_hashes(hashes.iter().chain(&hashes[..10]).copied().collect());
        assert_eq!(s.len(), 100_000);
        assert_eq!(s.delta.len(), 0);
        assert!(s.heap_bytes() < 7 * 100_000, "{} bytes", s.heap_bytes());
        let mut members: Vec<u64> = s.iter().collect();
        let mut expected = hashes;
        members.sort_unstable();
        expected.sort_unstable();
        assert_eq!(members, expected);
    }

    proptest! {
        #[test]
        fn behaves_like_a_hash_set(ops in proptest::collection::vec(0u64..4_096, 0..2_000), shift in 0u32..53) {
            let mut ours = UserSet::new();
            let mut reference = HashSet::new();
            for op in ops {
                let h = op << shift; // clustered hashes: long probe runs, wrap-around, one packed run
                prop_assert_eq!(ours.insert(h), reference.insert(h));
                prop_assert_eq!(ours.len(), reference.len());
            }
            for h in &reference {
                prop_assert!(ours.contains(*h));
            }
            let mut members: Vec<_> = ours.iter().collect();
            members.sort_unstable();
            let mut expected: Vec<_> = reference.into_iter().collect();
            expected.sort_unstable();
            prop_assert_eq!(members, expected);
        }

        #[test]
        fn packing_keeps_exactly_the_members(raw in proptest::collection::vec(any::<u64>(), 0..3_000), probes in proptest::collection::vec(any::<u64>(), 0..200)) {
            let set = UserSet::from_hashes(raw.clone());
            let reference: HashSet<u64> = raw.into_iter().collect();
            prop_assert_eq!(set.len(), reference.len());
            for h in reference.iter().chain(&probes) {
                prop_assert_eq!(set.contains(*h), reference.contains(h));
            }
            let mut members: Vec<_> = set.iter().collect();
            members.sort_unstable();
            let mut expected: Vec<_> = reference.into_iter().collect();
            expected.sort_unstable();
            prop_assert_eq!(members, expected);
        }
    }
}
