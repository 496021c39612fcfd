//! Benchmark tools; see src/bin and benches, driven by scripts/bench.sh.

/// A skewed user id out of `pool`: low ids are drawn far more often (x^3).
pub fn skewed_user(rng: &mut impl rand::Rng, pool: u64) -> u64 {
    let x: f64 = rng.random();
    ((x * x * x) * pool as f64) as u64
}
