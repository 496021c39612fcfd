//! The analytics workload in the engine's deterministic simulation
//! (`processor::engine::sim`, docs/architecture.md "Deterministic simulation"):
//! its generated events and the exact fold the read model must equal.
//! `cargo test -p analytics --lib sim`; `SIM_SEED=n` replays one seed.

use std::collections::{BTreeMap, HashSet};

use ::processor::engine::sim::harness::{self, Simulated, RETENTION_MS};
use ::processor::engine::Emit;
use rand::rngs::StdRng;
use rand::Rng;

use crate::processor::Analytics;
use crate::wire::{decode_hour_aggregate, encode_event};
use crate::{ClickEvent, EventKind, HourBucket, HourCounts, UserId};

const ANALYTICS: Analytics = Analytics { retention_ms: RETENTION_MS };

impl Simulated for Analytics {
    type Value = HourCounts;

    fn get() -> &'static Self {
        &ANALYTICS
    }

    /// Users 0..12, event times up to the retention late (so every event
    /// is counted: its hour is open at its append), 10% without an id, 15%
    /// retries of one of the last 12 events with an id (same user, id and
    /// time; appended later, possibly once its hour closed: then skipped).
    fn generate(rng: &mut StdRng, retries: &mut u32) -> Vec<ClickEvent> {
        let n = rng.random_range(30..150);
        let mut now = harness::clock(rng);
        let mut events: Vec<ClickEvent> = Vec::with_capacity(n);
        for i in 0..n {
            let now = now(rng);
            let with_id: Vec<&ClickEvent> = events.iter().rev().take(12).filter(|e| e.id.is_some()).collect();
            let event = if !with_id.is_empty() && rng.random_bool(0.15) {
                *retries += 1;
                ClickEvent { accepted_at_ms: now, ..with_id[rng.random_range(0..with_id.len())].clone() }
            } else {
                ClickEvent {
                    timestamp_ms: now - rng.random_range(0..RETENTION_MS),
                    user: UserId::parse(&format!("user-{}", rng.random_range(0..12))).expect("a valid user id"),
                    kind: EventKind::ALL[rng.random_range(0..EventKind::ALL.len())],
                    accepted_at_ms: now,
                    id: rng.random_bool(0.9).then(|| format!("e{i}")),
                }
            };
            events.push(event);
        }
        events
    }

    /// Keyed by the user, as the command writes it.
    fn record(event: &ClickEvent) -> (Vec<u8>, Vec<u8>) {
        (event.user.as_str().as_bytes().to_vec(), encode_event(event))
    }

    fn read(record: &Emit) -> Result<(i64, HourCounts), String> {
        let a = decode_hour_aggregate(&record.payload).map_err(|e| e.to_string())?;
        Ok((a.input_offset, a.counts))
    }

    /// Per (hour, partition): the counts of the events, each (user, id) once.
    fn fold(events: &[(i32, ClickEvent)]) -> BTreeMap<String, HourCounts> {
        let mut seen = HashSet::new();
        let mut buckets: BTreeMap<String, HourBucket> = BTreeMap::new();
        for (partition, e) in events {
            if e.id.as_ref().is_some_and(|id| !seen.insert((e.user.clone(), id.clone()))) {
                continue;
            }
            let key = format!("{}:{partition}", e.hour().start_ms());
            buckets.entry(key).or_default().apply(e.user.hash64(), e.kind);
        }
        buckets.into_iter().map(|(k, b)| (k, b.counts())).collect()
    }
}

#[test]
fn sim_analytics_yields_the_exact_fold_of_the_acknowledged_events() {
    harness::simulate::<Analytics>();
}

/// Every planted bug fails some seed: the simulation can fail.
#[test]
fn sim_catches_every_planted_bug() {
    harness::catches::<Analytics>(&harness::BUGS);
}

/// How many of 1,000 seeds catch each planted bug (docs/architecture.md):
/// `cargo test -p analytics --lib sim_planted_bug_catch_rates -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement for the docs: 1,000 seeds per planted bug"]
fn sim_planted_bug_catch_rates() {
    harness::catch_rates::<Analytics>();
}
