//! A mergeable distinct-count sketch (HyperLogLog) over the 64-bit user hashes.
//!
//! The processor keeps one [`UserSketch`] beside each exact hourly user set;
//! the materializer stores its [`UserSketch::to_bytes`] (PostgreSQL `BYTEA`,
//! Avro `bytes`) for as long as the hour totals; the query merges the hours of
//! a range (register-wise max, so merging equals sketching the union) and
//! reads [`UserSketch::estimate`] where no exact set answers.
//!
//! # Why our own and not a crate
//! The sketch goes to storage for ever, so its byte format must be ours and
//! versioned, and the registers must be reachable to write it. None of the
//! crates.io HyperLogLogs checked offers that with pre-hashed input:
//! `hyperloglogplus` and `hyperloglog` keep their registers private and
//! persist only through serde of their internal structs (`hyperloglog`
//! includes its SipHash keys); `cardinality-estimator` serialises a tagged
//! pointer word; `probabilistic-collections` and `hyperloglog-rs` hash every
//! item again with their own hasher. A plain HLL is ~100 lines.
//!
//! # Parameters
//! - Input: the XXH3-64 user hashes of [`super::event::hash_user`], already
//!   uniform, so no hasher (and no random seed) is involved: the same hashes
//!   give the same registers in any order, in any process.
//! - Precision 16: 65,536 registers, standard error 1.04/√m = 0.41 %, so the
//!   1 % bound at 1M users is ~2.5 σ, not ~1.2 σ as at precision 14.
//! - Register `i` = top 16 bits of the hash; rank = leading zeros of the other
//!   48 bits + 1 (49 when all are zero).
//! - Estimate: Ertl's "improved" estimator (Ertl 2017, "New cardinality
//!   estimation algorithms for HyperLogLog sketches", algorithm 6). It is
//!   unbiased from 0 to far beyond 1M with no empirical bias tables and no
//!   switch-over between linear counting and the raw estimate, which is where
//!   classic HLL is off by a few percent (around 2.5 m ≈ 160k users here).
//!
//! # Byte format, version 1
//! `[version = 1][precision = 16][encoding]` then:
//! - encoding 0, dense: the 65,536 ranks packed 6 bits each, little-endian
//!   within 3-byte groups of 4 registers: 49,152 bytes.
//! - encoding 1, sparse: for each non-zero register in ascending index, one
//!   LEB128 varint of `gap << 6 | rank`, where `gap` is the distance from the
//!   previous non-zero register minus one (the first register's gap is its
//!   index).
//!
//! [`UserSketch::to_bytes`] writes whichever is shorter; both decode to the
//! same registers. Measured: 3 bytes empty, 7 for one user, 265 for 100,
//! 1,966 for 1,000, 33,751 for 30,000; dense (49,155) from ~60,000 users.
//!
//! # Measured error
//! Relative error over 10–20 seeds of distinct user ids (RMS / worst):
//! 1k 0.27 / 0.60 %, 10k 0.27 / 0.53 %, 100k 0.46 / 0.74 %,
//! 160k 0.29 / 0.59 %, 400k 0.33 / 0.80 %, 1M 0.29 / 0.58 %. Exact at 0, 1,
//! 10 and 100 users.

use std::fmt;

/// Index bits per hash: 2^16 registers.
pub const PRECISION: u8 = 16;
/// The current byte format, the first byte of [`UserSketch::to_bytes`].
pub const FORMAT_VERSION: u8 = 1;

const REGISTERS: usize = 1 << PRECISION;
/// Hash bits left for the rank once the index is taken.
const RANK_BITS: u32 = 64 - PRECISION as u32;
/// The largest rank: every rank bit zero.
const MAX_RANK: u8 = RANK_BITS as u8 + 1;
const HEADER_LEN: usize = 3;
const DENSE_LEN: usize = REGISTERS * 6 / 8;
const ENCODING_DENSE: u8 = 0;
const ENCODING_SPARSE: u8 = 1;
/// The low bits of a sparse entry that hold the rank (ranks are at most 49).
const SPARSE_RANK_BITS: u32 = 6;

/// A HyperLogLog sketch of distinct user hashes; see the module doc.
#[derive(Clone, PartialEq, Eq)]
pub struct UserSketch {
    /// One rank per register, `0` for a register no hash has reached.
    registers: Box<[u8]>,
}

/// Why bytes are not a sketch. Always the bytes' fault (corrupt, or written
/// by a newer format), never transient: retrying cannot help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SketchDecodeError {
    #[error("sketch bytes are shorter than the {HEADER_LEN}-byte header")]
    MissingHeader,
    #[error("unknown sketch format version {0}")]
    UnknownVersion(u8),
    #[error("sketch precision {0} is not the supported {PRECISION}")]
    UnsupportedPrecision(u8),
    #[error("unknown sketch encoding {0}")]
    UnknownEncoding(u8),
    #[error("dense sketch body has {0} bytes, expected {DENSE_LEN}")]
    DenseLength(usize),
    #[error("sketch register {index} has rank {rank}, above the maximum {MAX_RANK}")]
    RankTooHigh { index: usize, rank: u8 },
    #[error("sparse sketch entry at byte {0} is truncated or too long")]
    BadVarint(usize),
    #[error("sparse sketch entry at byte {0} has rank 0")]
    ZeroRank(usize),
    #[error("sparse sketch entry at byte {0} points past the last register")]
    IndexOutOfRange(usize),
}

impl UserSketch {
    /// An empty sketch (estimate 0).
    pub fn new() -> Self {
        Self { registers: vec![0; REGISTERS].into_boxed_slice() }
    }

    /// Adds one user hash (see [`super::event::hash_user`]). Adding a hash
    /// again changes nothing.
    pub fn insert(&mut self, user_hash: u64) {
        let index = (user_hash >> RANK_BITS) as usize;
        let rank = (user_hash << PRECISION).leading_zeros().min(RANK_BITS) as u8 + 1;
        let register = &mut self.registers[index];
        *register = (*register).max(rank);
    }

    /// Folds `other` in: afterwards `self` is the sketch of the union.
    pub fn merge(&mut self, other: &UserSketch) {
        for (mine, theirs) in self.registers.iter_mut().zip(other.registers.iter()) {
            *mine = (*mine).max(*theirs);
        }
    }

    /// True when no hash was ever added.
    pub fn is_empty(&self) -> bool {
        self.registers.iter().all(|&r| r == 0)
    }

    /// The estimated number of distinct hashes added (0 for an empty sketch).
    pub fn estimate(&self) -> u64 {
        let mut histogram = [0u32; MAX_RANK as usize + 1];
        for &rank in self.registers.iter() {
            histogram[usize::from(rank)] += 1;
        }
        let m = REGISTERS as f64;
        let q = RANK_BITS as usize;
        let mut z = m * tau(1.0 - f64::from(histogram[q + 1]) / m);
        for &count in histogram[1..=q].iter().rev() {
            z = 0.5 * (z + f64::from(count));
        }
        z += m * sigma(f64::from(histogram[0]) / m);
        let alpha_inf = 1.0 / (2.0 * std::f64::consts::LN_2);
        // An empty sketch makes z infinite and the estimate exactly 0.
        (alpha_inf * m * m / z).round() as u64
    }

    /// The compact, versioned bytes of this sketch (see the module doc): 3
    /// bytes when empty, 2–3 bytes per user while sparse, at most 49,155.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = vec![FORMAT_VERSION, PRECISION, ENCODING_SPARSE];
        let mut previous: Option<usize> = None;
        for (index, &rank) in self.registers.iter().enumerate() {
            if rank == 0 {
                continue;
            }
            let gap = match previous {
                None => index,
                Some(p) => index - p - 1,
            };
            previous = Some(index);
            write_varint(&mut bytes, ((gap as u64) << SPARSE_RANK_BITS) | u64::from(rank));
            if bytes.len() >= HEADER_LEN + DENSE_LEN {
                return self.to_dense_bytes();
            }
        }
        bytes
    }

    fn to_dense_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(HEADER_LEN + DENSE_LEN);
        bytes.extend_from_slice(&[FORMAT_VERSION, PRECISION, ENCODING_DENSE]);
        for group in self.registers.chunks_exact(4) {
            let packed =
                u32::from(group[0]) | u32::from(group[1]) << 6 | u32::from(group[2]) << 12 | u32::from(group[3]) << 18;
            bytes.extend_from_slice(&packed.to_le_bytes()[..3]);
        }
        bytes
    }

    /// Reads bytes written by [`UserSketch::to_bytes`].
    ///
    /// # Errors
    /// A [`SketchDecodeError`] when the bytes are corrupt or of an unknown
    /// version, precision or encoding.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SketchDecodeError> {
        let mut sketch = Self::new();
        for_each_register(bytes, |index, rank| sketch.registers[index] = rank)?;
        Ok(sketch)
    }

    /// Merges a stored sketch straight from its bytes, without building it
    /// first: how the query folds the hours of a range.
    ///
    /// # Errors
    /// As [`UserSketch::from_bytes`]; on error `self` is left unchanged.
    pub fn merge_bytes(&mut self, bytes: &[u8]) -> Result<(), SketchDecodeError> {
        for_each_register(bytes, |_, _| {})?;
        for_each_register(bytes, |index, rank| {
            let register = &mut self.registers[index];
            *register = (*register).max(rank);
        })
    }
}

/// Checks that `bytes` are a sketch [`UserSketch::from_bytes`] reads,
/// without building it: how a reader refuses a corrupt sketch on the way in.
///
/// # Errors
/// As [`UserSketch::from_bytes`].
pub fn check_bytes(bytes: &[u8]) -> Result<(), SketchDecodeError> {
    for_each_register(bytes, |_, _| {})
}

impl Default for UserSketch {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for UserSketch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let used = self.registers.iter().filter(|&&r| r != 0).count();
        f.debug_struct("UserSketch").field("used_registers", &used).field("estimate", &self.estimate()).finish()
    }
}

impl Extend<u64> for UserSketch {
    fn extend<I: IntoIterator<Item = u64>>(&mut self, hashes: I) {
        for hash in hashes {
            self.insert(hash);
        }
    }
}

impl FromIterator<u64> for UserSketch {
    fn from_iter<I: IntoIterator<Item = u64>>(hashes: I) -> Self {
        let mut sketch = Self::new();
        sketch.extend(hashes);
        sketch
    }
}

/// Decodes `bytes` and calls `visit(index, rank)` for registers it sets
/// (every register when dense, the non-zero ones when sparse), checking each
/// before the visit.
fn for_each_register(bytes: &[u8], mut visit: impl FnMut(usize, u8)) -> Result<(), SketchDecodeError> {
    let [version, precision, encoding, body @ ..] = bytes else {
        return Err(SketchDecodeError::MissingHeader);
    };
    if *version != FORMAT_VERSION {
        return Err(SketchDecodeError::UnknownVersion(*version));
    }
    if *precision != PRECISION {
        return Err(SketchDecodeError::UnsupportedPrecision(*precision));
    }
    match *encoding {
        ENCODING_DENSE => {
            if body.len() != DENSE_LEN {
                return Err(SketchDecodeError::DenseLength(body.len()));
            }
            for (group, chunk) in body.chunks_exact(3).enumerate() {
                let packed = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], 0]);
                for k in 0..4 {
                    let index = group * 4 + k;
                    let rank = ((packed >> (6 * k)) & 0x3F) as u8;
                    if rank > MAX_RANK {
                        return Err(SketchDecodeError::RankTooHigh { index, rank });
                    }
                    visit(index, rank);
                }
            }
            Ok(())
        }
        ENCODING_SPARSE => {
            let mut at = 0;
            let mut next_index = 0usize;
            while at < body.len() {
                let start = HEADER_LEN + at;
                let (entry, len) = read_varint(&body[at..]).ok_or(SketchDecodeError::BadVarint(start))?;
                at += len;
                let rank = (entry & ((1 << SPARSE_RANK_BITS) - 1)) as u8;
                let gap = entry >> SPARSE_RANK_BITS;
                if rank == 0 {
                    return Err(SketchDecodeError::ZeroRank(start));
                }
                let index = usize::try_from(gap)
                    .ok()
                    .and_then(|gap| next_index.checked_add(gap))
                    .filter(|&index| index < REGISTERS)
                    .ok_or(SketchDecodeError::IndexOutOfRange(start))?;
                if rank > MAX_RANK {
                    return Err(SketchDecodeError::RankTooHigh { index, rank });
                }
                visit(index, rank);
                next_index = index + 1;
            }
            Ok(())
        }
        other => Err(SketchDecodeError::UnknownEncoding(other)),
    }
}

fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A LEB128 varint of at most 10 bytes and its length, or `None` when
/// truncated or too long.
fn read_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Ertl's σ(x) = x + Σ_{k≥1} x^(2^k) 2^(k-1), the linear-counting-like part
/// of the estimator that accounts for empty registers.
fn sigma(mut x: f64) -> f64 {
    if x == 1.0 {
        return f64::INFINITY;
    }
    let mut y = 1.0;
    let mut z = x;
    loop {
        x *= x;
        let previous = z;
        z += x * y;
        y += y;
        if z == previous {
            return z;
        }
    }
}

/// Ertl's τ(x), the correction for saturated registers (all 48 rank bits
/// zero; practically never at 64-bit hashes, kept for exactness).
fn tau(mut x: f64) -> f64 {
    if x == 0.0 || x == 1.0 {
        return 0.0;
    }
    let mut y = 1.0;
    let mut z = 1.0 - x;
    loop {
        x = x.sqrt();
        let previous = z;
        y *= 0.5;
        z -= (1.0 - x).powi(2) * y;
        if z == previous {
            return z / 3.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::hash_user;
    use proptest::prelude::*;
    use std::fmt::Write as _;

    /// Hashes of `n` distinct user ids, like the processor makes them.
    fn user_hashes(seed: u64, n: u64) -> impl Iterator<Item = u64> {
        let mut id = String::new();
        (0..n).map(move |i| {
            id.clear();
            write!(id, "user-{seed}-{i}").expect("writing to a String cannot fail");
            hash_user(id.as_bytes())
        })
    }

    fn relative_error(estimate: u64, truth: u64) -> f64 {
        (estimate as f64 - truth as f64).abs() / truth as f64
    }

    /// Worst relative error over `seeds` runs of `n` distinct users.
    fn worst_error(n: u64, seeds: std::ops::Range<u64>) -> f64 {
        let mut worst = 0.0f64;
        for seed in seeds {
            let sketch: UserSketch = user_hashes(seed, n).collect();
            let error = relative_error(sketch.estimate(), n);
            let bytes = sketch.to_bytes().len();
            eprintln!("n={n} seed={seed} estimate={} error={:.3}% bytes={bytes}", sketch.estimate(), error * 100.0);
            worst = worst.max(error);
        }
        worst
    }

    #[test]
    fn empty_sketch_estimates_zero_in_three_bytes() {
        let sketch = UserSketch::new();
        assert!(sketch.is_empty());
        assert_eq!(sketch.estimate(), 0);
        assert_eq!(sketch.to_bytes(), vec![FORMAT_VERSION, PRECISION, ENCODING_SPARSE]);
    }

    #[test]
    fn small_counts_are_exact() {
        for n in [1, 2, 10, 100] {
            let mut sketch: UserSketch = user_hashes(7, n).collect();
            // Repeats of the same users change nothing.
            sketch.extend(user_hashes(7, n));
            assert_eq!(sketch.estimate(), n, "n={n}");
        }
        for n in [1_000, 10_000] {
            let sketch: UserSketch = user_hashes(7, n).collect();
            assert!(relative_error(sketch.estimate(), n) <= 0.01, "n={n} estimate={}", sketch.estimate());
        }
    }

    #[test]
    fn stays_within_one_percent_at_100k_users() {
        let worst = worst_error(100_000, 0..3);
        assert!(worst <= 0.01, "worst relative error {worst}");
    }

    /// The bound: at most 1 % relative error at 1M users, over five
    /// seeds (5M hashes, ~3 s in debug). Measured: 0.06–0.45 %, against a
    /// standard error of 0.41 %.
    #[test]
    fn stays_within_one_percent_at_1m_users() {
        let worst = worst_error(1_000_000, 0..5);
        assert!(worst <= 0.01, "worst relative error {worst}");
    }

    #[test]
    fn bytes_stay_compact() {
        let one: UserSketch = user_hashes(1, 1).collect();
        assert!(one.to_bytes().len() <= HEADER_LEN + 3);
        let hundred: UserSketch = user_hashes(1, 100).collect();
        assert!(hundred.to_bytes().len() <= HEADER_LEN + 3 * 100);
        let many: UserSketch = user_hashes(1, 200_000).collect();
        assert_eq!(many.to_bytes().len(), HEADER_LEN + DENSE_LEN);
        assert_eq!(UserSketch::from_bytes(&many.to_bytes()), Ok(many));
    }

    /// Pins format version 1: stored sketches must decode the same for ever.
    #[test]
    fn format_version_1_is_stable() {
        let sketch: UserSketch = [hash_user(b"alice"), hash_user(b"bob")].into_iter().collect();
        let bytes = sketch.to_bytes();
        assert_eq!(hex(&bytes), GOLDEN_ALICE_BOB);
        assert_eq!(UserSketch::from_bytes(&bytes), Ok(sketch));
    }

    const GOLDEN_ALICE_BOB: &str = "011001c18114c5ce39";

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn rank_counts_leading_zeros_after_the_index() {
        let mut sketch = UserSketch::new();
        sketch.insert(0x0003_8000_0000_0000); // register 3, first rank bit set
        sketch.insert(0x0005_0000_0000_0001); // register 5, 47 zeros then a one
        sketch.insert(0x0007_0000_0000_0000); // register 7, all rank bits zero
        assert_eq!(sketch.registers[3], 1);
        assert_eq!(sketch.registers[5], 48);
        assert_eq!(sketch.registers[7], MAX_RANK);
        assert_eq!(UserSketch::from_bytes(&sketch.to_bytes()), Ok(sketch.clone()));
        assert_eq!(UserSketch::from_bytes(&sketch.to_dense_bytes()), Ok(sketch));
    }

    #[test]
    fn rejects_bytes_it_did_not_write() {
        use SketchDecodeError as E;
        let header = [FORMAT_VERSION, PRECISION, ENCODING_SPARSE];
        assert_eq!(UserSketch::from_bytes(&[]), Err(E::MissingHeader));
        assert_eq!(UserSketch::from_bytes(&[1, 16]), Err(E::MissingHeader));
        assert_eq!(UserSketch::from_bytes(&[2, 16, 1]), Err(E::UnknownVersion(2)));
        assert_eq!(UserSketch::from_bytes(&[1, 14, 1]), Err(E::UnsupportedPrecision(14)));
        assert_eq!(UserSketch::from_bytes(&[1, 16, 9]), Err(E::UnknownEncoding(9)));
        assert_eq!(UserSketch::from_bytes(&[1, 16, 0, 0]), Err(E::DenseLength(1)));
        let mut dense = UserSketch::new().to_dense_bytes();
        dense[HEADER_LEN] = 63;
        assert_eq!(UserSketch::from_bytes(&dense), Err(E::RankTooHigh { index: 0, rank: 63 }));
        let at = |body: &[u8]| UserSketch::from_bytes(&[&header[..], body].concat());
        assert_eq!(at(&[0x81]), Err(E::BadVarint(3)));
        assert_eq!(at(&[0x40]), Err(E::ZeroRank(3)));
        assert_eq!(at(&[0x3F]), Err(E::RankTooHigh { index: 0, rank: 63 }));
        // Gap 65535 then a second entry past the last register.
        let mut body = Vec::new();
        write_varint(&mut body, (65_535 << 6) | 1);
        write_varint(&mut body, 1);
        assert_eq!(at(&body), Err(E::IndexOutOfRange(7)));
    }

    #[test]
    fn failed_merge_bytes_leaves_the_sketch_unchanged() {
        let mut sketch: UserSketch = user_hashes(3, 50).collect();
        let before = sketch.clone();
        let mut corrupt = user_hashes(4, 50).collect::<UserSketch>().to_bytes();
        corrupt.push(0x80);
        assert!(sketch.merge_bytes(&corrupt).is_err());
        assert_eq!(sketch, before);
    }

    fn sketch_of(hashes: &[u64]) -> UserSketch {
        hashes.iter().copied().collect()
    }

    proptest! {
        #[test]
        fn merge_equals_sketch_of_the_union(
            a in proptest::collection::vec(any::<u64>(), 0..300),
            b in proptest::collection::vec(any::<u64>(), 0..300),
        ) {
            let union: Vec<u64> = a.iter().chain(b.iter()).copied().collect();
            let mut merged = sketch_of(&a);
            merged.merge(&sketch_of(&b));
            prop_assert_eq!(&merged, &sketch_of(&union));
            let mut from_bytes = sketch_of(&b);
            from_bytes.merge_bytes(&sketch_of(&a).to_bytes()).expect("bytes we wrote decode");
            prop_assert_eq!(&from_bytes, &merged);
            // Merging again is idempotent.
            merged.merge(&sketch_of(&a));
            prop_assert_eq!(merged, sketch_of(&union));
        }

        #[test]
        fn order_of_insertion_does_not_matter(
            shuffled in proptest::collection::vec(any::<u64>(), 0..300)
                .prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle())),
        ) {
            let (original, permuted) = shuffled;
            let a = sketch_of(&original);
            let b = sketch_of(&permuted);
            prop_assert_eq!(a.to_bytes(), b.to_bytes());
            prop_assert_eq!(a, b);
        }

        #[test]
        fn bytes_round_trip(
            hashes in proptest::collection::vec(any::<u64>(), 0..2_000),
            low_rank_bits in 0u32..48,
        ) {
            // Clearing high rank bits reaches the large ranks too.
            let mask = !(((1u64 << 48) - 1) ^ ((1u64 << low_rank_bits) - 1));
            let sketch = sketch_of(&hashes.iter().map(|h| h & mask).collect::<Vec<_>>());
            prop_assert_eq!(UserSketch::from_bytes(&sketch.to_bytes()), Ok(sketch.clone()));
            prop_assert_eq!(UserSketch::from_bytes(&sketch.to_dense_bytes()), Ok(sketch));
        }
    }
}
