//! An exact set of 64-bit user hashes in one flat open-addressing table.
//!
//! 8 bytes per slot at a load factor kept between 7/12 and 7/8 (the table
//! grows by 1.5×), so 9.2–13.8 bytes per user-hour, against 50+ for a
//! `HashSet<String>`. The hashes come from XXH3 and are already well mixed, so
//! the slot is the hash scaled onto the table (`hash * len >> 64`, which works
//! for any length) and linear probing stays short.

/// An exact set of user hashes.
#[derive(Debug, Clone, Default)]
pub struct UserSet {
    /// `0` marks an empty slot; the hash `0` itself is tracked by `has_zero`.
    slots: Box<[u64]>,
    /// Occupied slots (not counting `has_zero`).
    occupied: usize,
    has_zero: bool,
}

const MIN_CAPACITY: usize = 16;

impl UserSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// A set sized so that `n` users fit without growing.
    pub fn with_capacity(n: usize) -> Self {
        let mut set = Self::new();
        if n > 0 {
            set.slots = vec![0; capacity_for(n)].into_boxed_slice();
        }
        set
    }

    pub fn len(&self) -> usize {
        self.occupied + usize::from(self.has_zero)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds a hash; returns true if it was not there before.
    pub fn insert(&mut self, hash: u64) -> bool {
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

    pub fn contains(&self, hash: u64) -> bool {
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

    /// All members, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.has_zero.then_some(0).into_iter().chain(self.slots.iter().copied().filter(|h| *h != 0))
    }

    /// Heap bytes held by the table.
    pub fn heap_bytes(&self) -> usize {
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

    #[test]
    fn zero_is_a_member_like_any_other() {
        let mut s = UserSet::new();
        assert!(!s.contains(0));
        assert!(s.insert(0));
        assert!(!s.insert(0));
        assert!(s.contains(0));
        assert_eq!(s.len(), 1);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0]);
    }

    #[test]
    fn stays_within_14_bytes_per_member() {
        let mut s = UserSet::new();
        for i in 1..=100_000u64 {
            s.insert(xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()));
            if s.len() >= MIN_CAPACITY {
                assert!(s.heap_bytes() <= 14 * s.len(), "{} bytes for {}", s.heap_bytes(), s.len());
            }
        }
        assert_eq!(s.len(), 100_000);
    }

    proptest! {
        #[test]
        fn behaves_like_a_hash_set(ops in proptest::collection::vec(0u64..64, 0..500), shift in 0u32..60) {
            let mut ours = UserSet::with_capacity(3);
            let mut reference = HashSet::new();
            for op in ops {
                let h = op << shift; // clustered hashes: long probe runs and wrap-around
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
    }
}
