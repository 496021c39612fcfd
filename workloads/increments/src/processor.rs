//! The increments workload in the processor: exact per-key sums per
//! partition (a key lives in one partition), persisted as NUMERIC rows and
//! emitted as `IncrementSum` records keyed by the counter.
//!
//! The pure part is [`IncrementState`] (`crate::state`); this module
//! only maps it onto the engine's [`Aggregation`] and its rows.

use crate::wire::{decode_increment, encode_increment_sum};
use crate::{IncrementEvent, IncrementKey, IncrementState, IncrementSum};
use common::engine::avro::DecodeError;
use common::engine::pg::PgError;
use common::engine::store::{Column, ColumnType, Row, Value};

use ::processor::engine::tables::{RowTable, StateTx};
use ::processor::engine::{Aggregation, DedupId, Emit, Position, Record, Scope, Skip};

pub const STATE_KEYS: &str = "analytics_processor_state_keys";
/// The sums: `processor_increment_sums (topic, partition, key UUID, sum NUMERIC)`.
static SUMS: std::sync::LazyLock<RowTable> = std::sync::LazyLock::new(|| RowTable {
    table: "processor_increment_sums",
    key: Column::new("key", ColumnType::Uuid),
    values: vec![Column::new("sum", ColumnType::Numeric)],
});

/// The increments workload.
#[derive(Debug, Clone, Copy)]
pub struct Increments;

/// Keys changed since the last checkpoint, with their sums, sorted by key.
pub type ChangedSums = Vec<(IncrementKey, i128)>;

fn sum_record(partition: i32, position: Position, key: IncrementKey, sum: i128) -> Emit {
    let record =
        IncrementSum { key, sum, partition, input_offset: position.next_offset, watermark_ms: position.watermark_ms };
    // A key's sum is never dropped from the state: a claim renders it again.
    Emit { key: key.to_string(), payload: encode_increment_sum(&record), keep_payload: false }
}

impl Aggregation for Increments {
    const NAME: &'static str = "increments";
    type Event = IncrementEvent;
    type State = IncrementState;
    type Changes = ChangedSums;
    type Receipt = ();

    fn decode(&self, payload: &[u8]) -> Result<IncrementEvent, DecodeError> {
        decode_increment(payload)
    }

    fn accepted_at_ms(&self, event: &IncrementEvent) -> i64 {
        event.accepted_at_ms
    }

    /// Ids are unique per key, and held for the deployment's horizon from the
    /// hour the increment was accepted in.
    fn dedup_id(&self, event: &IncrementEvent) -> Option<DedupId> {
        let hash = event.id_hash()?;
        Some(DedupId {
            bucket_ms: event.accepted_at_ms.div_euclid(<Self as Aggregation>::DEDUP_BUCKET_MS)
                * <Self as Aggregation>::DEDUP_BUCKET_MS,
            hash,
        })
    }

    fn apply(&self, state: &mut IncrementState, _: Record, event: IncrementEvent) -> Result<(), Skip> {
        state.apply(&event);
        Ok(())
    }

    fn changes(&self, state: &mut IncrementState) -> Option<ChangedSums> {
        state.has_changes().then(|| state.changed())
    }

    /// Reads the sums a page at a time (the engine bounds the fetches
    /// however many keys the partition holds).
    async fn restore<T: StateTx>(&self, tx: &mut T, scope: Scope<'_>, _: Position) -> Result<IncrementState, PgError> {
        let mut state = IncrementState::new();
        tx.read_rows(&SUMS, scope, |rows| {
            state.reserve(rows.len());
            for row in &rows {
                let (key, sum) = (row.text("key")?, row.text("sum")?);
                match (IncrementKey::parse_canonical(key), sum.parse::<i128>()) {
                    (Some(key), Ok(sum)) => state.restore(key, sum),
                    _ => return Err(PgError::Corrupt(format!("processor_increment_sums: key {key}, sum {sum}"))),
                }
            }
            Ok(())
        })
        .await?;
        Ok(state)
    }

    async fn persist<T: StateTx>(&self, tx: &mut T, scope: Scope<'_>, changed: &ChangedSums) -> Result<(), PgError> {
        // Sorted by key (IncrementState::changed): concurrent writers lock rows in one order.
        let rows: Vec<Row> = changed
            .iter()
            .map(|(k, s)| Row::new().with("key", Value::Text(k.to_string())).with("sum", Value::Text(s.to_string())))
            .collect();
        tx.upsert_rows(&SUMS, scope, &rows).await
    }

    fn committed(&self, state: &mut IncrementState, changed: ChangedSums, (): ()) {
        state.mark_persisted(&changed);
    }

    fn emits(&self, scope: Scope<'_>, position: Position, changed: &ChangedSums) -> Vec<Emit> {
        changed.iter().map(|(k, s)| sum_record(scope.partition, position, *k, *s)).collect()
    }

    fn render(&self, scope: Scope<'_>, position: Position, state: &IncrementState, keys: &[String]) -> Vec<Emit> {
        keys.iter()
            .filter_map(|k| IncrementKey::parse_canonical(k))
            .filter_map(|k| state.sum(&k).map(|sum| sum_record(scope.partition, position, k, sum)))
            .collect()
    }

    fn record_gauges<'a>(&self, states: impl Iterator<Item = &'a IncrementState>) {
        let keys: usize = states.map(IncrementState::len).sum();
        metrics::gauge!(STATE_KEYS, "workload" => Self::NAME).set(keys as f64);
    }
}

#[cfg(test)]
mod tests {
    use crate::IncrementValue;
    use common::engine::horizon::Horizon;

    use super::*;
    use ::processor::engine::dedup::{IdWindow, BUCKET_MS};

    /// 30 minutes into an hour: the window is measured from the hour the first attempt was accepted in.
    const FIRST_MS: i64 = 1_900_000_000_000 / BUCKET_MS * BUCKET_MS + 30 * 60_000;

    fn attempt(accepted_at_ms: i64) -> IncrementEvent {
        IncrementEvent {
            key: IncrementKey::parse("0b3c8f2e-7d41-4c55-9a1e-5f6b7c8d9e0f").expect("a UUID"),
            value: IncrementValue::new(5).expect("positive"),
            accepted_at_ms,
            id: Some("order-1234".into()),
        }
    }

    /// What the engine does with each record: the id first, then the sum.
    /// The broker's clock (the watermark) is the accepting clock here.
    fn post(ids: &mut IdWindow, state: &mut IncrementState, event: &IncrementEvent) {
        let id = Increments.dedup_id(event).expect("the attempt has an id");
        if ids.admit(id, event.accepted_at_ms) {
            state.apply(event);
        }
        ids.evict_closed(event.accepted_at_ms);
    }

    /// The promise of docs/api.md: a retry with the same id that reaches the
    /// broker within `--horizon-past` of the first attempt is added once; the
    /// id is held until `--horizon-past + --horizon-grace` after the end of
    /// the first attempt's hour, and a retry later than that is added again.
    #[test]
    fn a_retried_increment_is_added_once_within_the_id_window_and_again_after_it() {
        let horizon = Horizon::default();
        let mut ids = IdWindow::new(horizon.retention_ms());
        let mut state = IncrementState::new();
        let sum = |state: &IncrementState| state.sum(&attempt(0).key).expect("the key was added");
        post(&mut ids, &mut state, &attempt(FIRST_MS));
        assert_eq!(sum(&state), 5);

        let past_ms = i64::try_from(horizon.past.as_millis()).expect("days fit");
        let held_until_ms = FIRST_MS / BUCKET_MS * BUCKET_MS + BUCKET_MS + horizon.retention_ms();
        for retry_ms in [FIRST_MS + 1, FIRST_MS + past_ms, held_until_ms - 1] {
            post(&mut ids, &mut state, &attempt(retry_ms));
            assert_eq!(
                sum(&state),
                5,
                "a retry {} ms after the first attempt is the same increment",
                retry_ms - FIRST_MS
            );
        }
        assert!(held_until_ms - FIRST_MS > past_ms, "the window is at least --horizon-past");

        post(&mut ids, &mut state, &attempt(held_until_ms));
        assert_eq!(sum(&state), 10, "past the window the id is forgotten: the retry is added again");
    }
}
