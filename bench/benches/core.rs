//! The pure aggregation core: `PartitionWindow::apply` on one core.
//! 10M events (2M with QUICK=1), 1M distinct users (skewed), 6 hours.
//! Also writes target/bench/core_state.json: state bytes per unique user-hour.

use std::time::Duration;

use analytics::bucket::Observation;
use analytics::event::hash_user;
use analytics::{EventKind, HourStart, PartitionWindow};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rand::{Rng, SeedableRng};

const H0: i64 = 1_900_000_000_000 / 3_600_000 * 3_600_000;

fn events(n: usize) -> Vec<Observation> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    (0..n)
        .map(|_| {
            let user = bench::skewed_user(&mut rng, 1_000_000);
            let hour = rng.random_range(0..6i64);
            Observation {
                hour: HourStart::of(H0 + hour * 3_600_000),
                user_hash: hash_user(format!("user-{user}").as_bytes()),
                kind: if rng.random_bool(0.3) { EventKind::Click } else { EventKind::Impression },
                accepted_at_ms: H0 + 6 * 3_600_000,
            }
        })
        .collect()
}

fn apply_all(events: &[Observation]) -> PartitionWindow {
    let mut w = PartitionWindow::new(0, 8 * 24 * 3_600_000);
    for o in events {
        let _ = w.apply(*o);
    }
    w
}

fn core(c: &mut Criterion) {
    let n = if std::env::var("QUICK").is_ok_and(|v| v == "1") { 2_000_000 } else { 10_000_000 };
    let events = events(n);
    let mut w = apply_all(&events);
    // Steady state: the pending deltas are gone once a checkpoint committed them.
    w.mark_checkpointed();
    let per_user_hour = w.heap_bytes() as f64 / w.user_hours() as f64;
    let _ = std::fs::create_dir_all("../target/bench");
    let _ = std::fs::write(
        "../target/bench/core_state.json",
        format!(
            "{{\"core_events\": {n}, \"state_bytes\": {}, \"state_user_hours\": {}, \"state_bytes_per_user_hour\": {per_user_hour:.2}}}\n",
            w.heap_bytes(),
            w.user_hours()
        ),
    );
    let mut group = c.benchmark_group("core");
    group.throughput(Throughput::Elements(n as u64));
    group.sample_size(10).measurement_time(Duration::from_secs(if n > 2_000_000 { 20 } else { 8 }));
    group.bench_function("apply", |b| b.iter_batched(|| (), |_| apply_all(&events), BatchSize::PerIteration));
    group.finish();
}

criterion_group!(benches, core);
criterion_main!(benches);
