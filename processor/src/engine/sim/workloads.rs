//! The two workloads as the simulation drives them ([`Simulated`]): their
//! generated events and the exact fold their read models must equal.

use std::collections::{BTreeMap, HashSet};

use common::analytics::wire::{decode_hour_aggregate, encode_event};
use common::analytics::{ClickEvent, EventKind, HourBucket, HourCounts, UserId};
use common::increments::wire::{decode_increment_sum, encode_increment};
use common::increments::{IncrementEvent, IncrementKey, IncrementValue};
use rand::rngs::StdRng;
use rand::Rng;

use super::harness::{Simulated, H0, HOUR_MS, RETENTION_MS};
use crate::analytics::Analytics;
use crate::engine::Emit;
use crate::increments::Increments;

const ANALYTICS: Analytics = Analytics { retention_ms: RETENTION_MS };

/// Acceptance times of `n` events: from a random point of the first hour,
/// forward by up to 8 minutes each (a run spans a few hours, which close).
fn clock(rng: &mut StdRng) -> impl FnMut(&mut StdRng) -> i64 {
    let mut now = H0 + rng.random_range(0..HOUR_MS);
    move |rng| {
        now += rng.random_range(0..8 * 60_000);
        now
    }
}

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
        let mut now = clock(rng);
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

impl Simulated for Increments {
    type Value = i128;

    fn get() -> &'static Self {
        &Increments
    }

    /// Keys 0..6, values 1..1000, 10% without an id, 15% retries of one of
    /// the last 12 increments with an id whose first attempt was accepted at
    /// most 25 minutes before (inside the id window, so a retry is never
    /// added again; a later one would be, as docs/api.md says).
    fn generate(rng: &mut StdRng, retries: &mut u32) -> Vec<IncrementEvent> {
        let n = rng.random_range(30..150);
        let mut now = clock(rng);
        let mut events: Vec<IncrementEvent> = Vec::with_capacity(n);
        // Each event's first attempt's acceptance time: the id window is measured from it.
        let mut first_ms: Vec<i64> = Vec::with_capacity(n);
        for i in 0..n {
            let now = now(rng);
            let recent: Vec<usize> = (0..events.len())
                .rev()
                .take(12)
                .filter(|k| events[*k].id.is_some() && now - first_ms[*k] <= 25 * 60_000)
                .collect();
            let event = if !recent.is_empty() && rng.random_bool(0.15) {
                *retries += 1;
                let k = recent[rng.random_range(0..recent.len())];
                first_ms.push(first_ms[k]);
                IncrementEvent { accepted_at_ms: now, ..events[k].clone() }
            } else {
                first_ms.push(now);
                IncrementEvent {
                    key: IncrementKey::from_uuid(uuid::Uuid::from_u128(rng.random_range(1..=6))),
                    value: IncrementValue::new(rng.random_range(1..1000)).expect("a positive value"),
                    accepted_at_ms: now,
                    id: rng.random_bool(0.9).then(|| format!("o{i}")),
                }
            };
            events.push(event);
        }
        events
    }

    /// Keyed by the counter's canonical key, as the command writes it.
    fn record(event: &IncrementEvent) -> (Vec<u8>, Vec<u8>) {
        (event.partition_key().to_vec(), encode_increment(event))
    }

    fn read(record: &Emit) -> Result<(i64, i128), String> {
        let s = decode_increment_sum(&record.payload).map_err(|e| e.to_string())?;
        Ok((s.input_offset, s.sum))
    }

    /// Per counter: the sum of its increments, each (key, id) once.
    fn fold(events: &[(i32, IncrementEvent)]) -> BTreeMap<String, i128> {
        let mut seen = HashSet::new();
        let mut sums: BTreeMap<String, i128> = BTreeMap::new();
        for (_, e) in events {
            if e.id.as_ref().is_some_and(|id| !seen.insert((e.key, id.clone()))) {
                continue;
            }
            *sums.entry(e.key.to_string()).or_default() += i128::from(e.value.get());
        }
        sums
    }
}
