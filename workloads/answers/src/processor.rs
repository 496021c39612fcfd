//! The answers workload in the processor: the owner of a partition of
//! `answers.commands` decides each command in log order ([`AnswersState`]),
//! publishes its reply at once (keyed by the request) and emits its change
//! with the next checkpoint (one record per change), and persists each
//! touched key's row in `processor_answers`.
//!
//! The pure part is `crate::rules` and `crate::state`; this module only maps
//! it onto the engine's [`Aggregation`] and its rows.

use std::sync::LazyLock;

use common::engine::avro::DecodeError;
use common::engine::pg::PgError;
use common::engine::store::{Column, ColumnType, Row, Value};

use crate::key::AnswerKey;
use crate::records::AnswerCommand;
use crate::rules::{Entry, IdMemo, Policy};
use crate::state::{AnswersState, At, Checkpoint};
use crate::wire::{decode_command, encode_change, encode_reply};

use ::processor::engine::tables::{RowTable, StateTx};
use ::processor::engine::{Aggregation, DedupId, Emit, Position, Record, Scope, Skip};

pub const STATE_KEYS: &str = "analytics_processor_state_keys";

/// `processor_answers (topic, partition, key TEXT, version BIGINT, live INT,
/// value BYTEA, ids BYTEA)`. The engine's rows have no NULL, so a key that is
/// not live has `live` 0 and an empty `value`.
static ANSWERS: LazyLock<RowTable> = LazyLock::new(|| RowTable {
    table: "processor_answers",
    key: Column::new("key", ColumnType::Text),
    values: vec![
        Column::new("version", ColumnType::BigInt),
        Column::new("live", ColumnType::Int),
        Column::new("value", ColumnType::Bytea),
        Column::new("ids", ColumnType::Bytea),
    ],
});

/// The answers workload.
#[derive(Debug, Clone, Copy)]
pub struct Answers {
    policy: Policy,
}

impl Answers {
    /// Ids are remembered for `policy`'s retention (the deployment horizon's).
    pub const fn new(policy: Policy) -> Self {
        Answers { policy }
    }
}

fn to_row(key: &AnswerKey, entry: &Entry) -> Row {
    let version = i64::try_from(entry.version).expect("a key's changes fit a bigint");
    Row::new()
        .with("key", Value::Text(key.as_str().to_owned()))
        .with("version", Value::BigInt(version))
        .with("live", Value::Int(i32::from(entry.value.is_some())))
        .with("value", Value::Bytes(entry.value.as_deref().unwrap_or_default().as_bytes().to_vec()))
        .with("ids", Value::Bytes(entry.ids.encode()))
}

fn from_row(row: &Row) -> Result<(AnswerKey, Entry), PgError> {
    let corrupt = |what: &str| PgError::Corrupt(format!("processor_answers: {what}"));
    let key = row.text("key")?;
    let key = AnswerKey::parse(key).map_err(|_| corrupt(&format!("key {key:?}")))?;
    let version = u64::try_from(row.big_int("version")?).map_err(|_| corrupt("negative version"))?;
    let value = match row.int("live")? {
        0 => None,
        1 => Some(String::from_utf8(row.bytes("value")?.to_vec()).map_err(|_| corrupt("value not UTF-8"))?),
        other => return Err(corrupt(&format!("live {other}"))),
    };
    let ids = IdMemo::decode(row.bytes("ids")?).ok_or_else(|| corrupt("ids"))?;
    Ok((key, Entry { version, value, ids }))
}

impl Aggregation for Answers {
    const NAME: &'static str = "answers";
    type Event = AnswerCommand;
    type State = AnswersState;
    type Changes = Checkpoint;
    type Receipt = ();

    fn decode(&self, payload: &[u8]) -> Result<AnswerCommand, DecodeError> {
        decode_command(payload)
    }

    fn accepted_at_ms(&self, event: &AnswerCommand) -> i64 {
        event.accepted_at_ms
    }

    /// None: an id answers its first decision, which the engine's id window
    /// (count once, skip the rest) cannot give; the state remembers ids per key.
    fn dedup_id(&self, _: &AnswerCommand) -> Option<DedupId> {
        None
    }

    fn apply(&self, state: &mut AnswersState, record: Record, event: AnswerCommand) -> Result<(), Skip> {
        let at = At { offset: record.offset, accepted_at_ms: record.accepted_at_ms, watermark_ms: record.watermark_ms };
        state.apply(&event, at);
        Ok(())
    }

    fn changes(&self, state: &mut AnswersState) -> Option<Checkpoint> {
        state.checkpoint()
    }

    /// Reads the keys a page at a time.
    async fn restore<T: StateTx>(&self, tx: &mut T, scope: Scope<'_>, _: Position) -> Result<AnswersState, PgError> {
        let mut state = AnswersState::new(scope.partition, self.policy);
        tx.read_rows(&ANSWERS, scope, |rows| {
            state.reserve(rows.len());
            for row in &rows {
                let (key, entry) = from_row(row)?;
                state.restore(key, entry);
            }
            Ok(())
        })
        .await?;
        Ok(state)
    }

    async fn persist<T: StateTx>(&self, tx: &mut T, scope: Scope<'_>, cp: &Checkpoint) -> Result<(), PgError> {
        // Sorted by key (AnswersState::checkpoint): concurrent writers lock rows in one order.
        let rows: Vec<Row> = cp.rows.iter().filter_map(|(k, e)| e.as_ref().map(|e| to_row(k, e))).collect();
        let gone: Vec<Value> =
            cp.rows.iter().filter(|(_, e)| e.is_none()).map(|(k, _)| Value::Text(k.as_str().to_owned())).collect();
        tx.upsert_rows(&ANSWERS, scope, &rows).await?;
        if !gone.is_empty() {
            tx.delete_rows(&ANSWERS, scope, &gone).await?;
        }
        Ok(())
    }

    fn committed(&self, state: &mut AnswersState, cp: Checkpoint, (): ()) {
        state.mark_persisted(&cp);
    }

    /// One record per change, kept whole in the outbox: once a later change
    /// of its key is applied, the state cannot render it again.
    fn emits(&self, _: Scope<'_>, _: Position, cp: &Checkpoint) -> Vec<Emit> {
        cp.changes.iter().map(|c| Emit { key: c.record_key(), payload: encode_change(c), keep_payload: true }).collect()
    }

    /// Nothing to render: every change is kept whole ([`Self::emits`]).
    fn render(&self, _: Scope<'_>, _: Position, _: &AnswersState, _: &[String]) -> Vec<Emit> {
        Vec::new()
    }

    fn replies(&self, state: &mut AnswersState) -> Vec<Emit> {
        state
            .take_replies()
            .iter()
            .map(|r| Emit { key: r.record_key(), payload: encode_reply(r), keep_payload: false })
            .collect()
    }

    fn record_gauges<'a>(&self, states: impl Iterator<Item = &'a AnswersState>) {
        let keys: usize = states.map(AnswersState::len).sum();
        metrics::gauge!(STATE_KEYS, "workload" => Self::NAME).set(keys as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Op;
    use crate::rules::Outcome;
    use crate::state::tests::{command, POLICY};
    use crate::wire::{decode_change, decode_reply};

    #[test]
    fn rows_round_trip_every_entry() {
        let mut state = AnswersState::new(0, POLICY);
        let at = |offset| At { offset, accepted_at_ms: 5, watermark_ms: 5 };
        state.apply(&command(1, "live", Op::Create, "a\u{0}é", Some("r1")), at(0));
        state.apply(&command(2, "gone", Op::Create, "x", None), at(1));
        state.apply(&command(3, "gone", Op::Delete, "", Some("r2")), at(2));
        state.apply(&command(4, "empty", Op::Create, "", None), at(3));
        for (key, entry) in state.checkpoint().unwrap().rows {
            let entry = entry.expect("every key holds something");
            assert_eq!(from_row(&to_row(&key, &entry)).unwrap(), (key, entry));
        }
        let bad = to_row(&AnswerKey::parse("k").unwrap(), &Entry::default()).with("live", Value::Int(2));
        assert!(matches!(from_row(&bad), Err(PgError::Corrupt(_))));
    }

    #[test]
    fn replies_are_keyed_by_request_and_changes_uniquely() {
        let w = Answers::new(POLICY);
        let mut state = AnswersState::new(1, POLICY);
        let record = |offset| Record { offset, accepted_at_ms: 9, watermark_ms: 9 };
        w.apply(&mut state, record(0), command(1, "k", Op::Create, "a", None)).unwrap();
        w.apply(&mut state, record(1), command(2, "k", Op::Update, "b", None)).unwrap();
        w.apply(&mut state, record(2), command(3, "k", Op::Create, "c", None)).unwrap();
        let replies = w.replies(&mut state);
        let keys: Vec<&str> = replies.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(
            keys,
            [uuid::Uuid::from_u128(1), uuid::Uuid::from_u128(2), uuid::Uuid::from_u128(3)].map(|u| u.to_string())
        );
        assert_eq!(decode_reply(&replies[2].payload).map(|r| r.outcome), Ok(Outcome::Exists));
        let cp = w.changes(&mut state).unwrap();
        let scope = Scope { topic: "t", partition: 1 };
        let emits = w.emits(scope, Position::default(), &cp);
        assert_eq!(emits.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(), ["1:k", "2:k"]);
        assert!(emits.iter().all(|e| e.keep_payload));
        assert_eq!(decode_change(&emits[1].payload).map(|c| (c.value, c.input_offset)), Ok(("b".to_owned(), 2)));
        w.committed(&mut state, cp, ());
        assert!(w.changes(&mut state).is_none());
    }
}
