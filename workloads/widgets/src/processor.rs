//! The widgets workload in the processor: the owner of the shard's
//! partition of `widgets.commands` decides each command in log order with
//! the in-memory graph ([`WidgetsState`]), publishes its reply at once
//! (keyed by the request), emits its change with the next checkpoint (one
//! record per change), and persists the rows of the widgets and ids that
//! changed since the last checkpoint: `processor_widgets` (one row per live
//! widget, slot by slot) and `processor_widget_ids`. A claim streams both
//! back into the graph a chunk of rows at a time ([`Restore`]).
//!
//! The pure part is `crate::state` and `crate::graph`; this module only
//! maps it onto the engine's [`Aggregation`] and its rows.

use std::sync::LazyLock;

use common::engine::avro::DecodeError;
use common::engine::pg::PgError;
use common::engine::store::{Cells, Column, ColumnType, Row, Value};

use crate::graph::StoredCells;
use crate::input::{Name, Ports, Serial, MAX_PORTS};
use crate::log::{Outcome, WidgetCommand};
use crate::records::{Status, StoredWidget};
use crate::state::{At, Checkpoint, IdPolicy, Memo, Restore, WidgetsState};
use crate::wire::{decode_command, encode_change, encode_reply};

use ::processor::engine::tables::{RowTable, StateTx};
use ::processor::engine::{Aggregation, DedupId, Emit, Position, Record, Scope, Skip};

pub const GRAPH_WIDGETS: &str = "analytics_processor_widgets";
pub const GRAPH_IDS: &str = "analytics_processor_widget_ids";
/// Heap bytes of the graphs held (`Graph::heap_bytes`, by capacity): ÷ the widgets, the graph's bytes per widget.
pub const GRAPH_BYTES: &str = "analytics_processor_widgets_graph_bytes";

/// The slot columns, slot i's partner ('' when free): of `processor_widgets`
/// and of the read model's `widgets` alike ([`with_partners`]).
pub(crate) const SLOTS: [&str; MAX_PORTS] = ["slot0", "slot1", "slot2"];

/// `row` with each slot's partner in its [`SLOTS`] column, '' when free
/// (and past the ports, where a [`StoredWidget`]'s slots are always free).
pub(crate) fn with_partners(mut row: Row, slots: &[Option<Serial>; MAX_PORTS]) -> Row {
    for (column, partner) in SLOTS.iter().zip(slots) {
        row = row.with(column, Value::Text(partner.as_ref().map(Serial::to_string).unwrap_or_default()));
    }
    row
}

/// `processor_widgets (topic, partition, serial, name, ports, slot0, slot1, slot2)`.
static WIDGETS: LazyLock<RowTable> = LazyLock::new(|| RowTable {
    table: "processor_widgets",
    key: Column::new("serial", ColumnType::Text),
    values: vec![
        Column::new("name", ColumnType::Text),
        Column::new("ports", ColumnType::Text),
        Column::new(SLOTS[0], ColumnType::Text),
        Column::new(SLOTS[1], ColumnType::Text),
        Column::new(SLOTS[2], ColumnType::Text),
    ],
});

/// `processor_widget_ids (topic, partition, key, outcome, reason, at_ms, command_offset)`.
static IDS: LazyLock<RowTable> = LazyLock::new(|| RowTable {
    table: "processor_widget_ids",
    key: Column::new("key", ColumnType::Text),
    values: vec![
        Column::new("outcome", ColumnType::Int),
        Column::new("reason", ColumnType::Text),
        Column::new("at_ms", ColumnType::BigInt),
        Column::new("command_offset", ColumnType::BigInt),
    ],
});

/// The widgets workload.
#[derive(Debug, Clone, Copy)]
pub struct Widgets {
    policy: IdPolicy,
}

impl Widgets {
    /// Ids are remembered per `policy` (the deployment horizon's retention).
    pub const fn new(policy: IdPolicy) -> Self {
        Widgets { policy }
    }
}

fn widget_row(w: &StoredWidget) -> Row {
    let row = Row::new()
        .with("serial", Value::Text(w.serial.to_string()))
        .with("name", Value::Text(w.name.to_string()))
        .with("ports", Value::Text(w.ports.to_string()));
    with_partners(row, &w.slots)
}

fn corrupt(what: String) -> PgError {
    PgError::Corrupt(format!("processor_widgets: {what}"))
}

/// A stored widget's cells, checked where they lie in the row (a restore copies each once, into the graph).
fn cells_of_row(row: &dyn Cells) -> Result<StoredCells<'_>, PgError> {
    let serial = row.text("serial")?;
    Serial::check(serial).map_err(|_| corrupt(format!("serial {serial:?}")))?;
    let name = row.text("name")?;
    Name::check(name).map_err(|_| corrupt(format!("{serial}: name")))?;
    let ports = Ports::parse(row.text("ports")?).map_err(|_| corrupt(format!("{serial}: ports")))?;
    let mut slots: [Option<&str>; MAX_PORTS] = [None; MAX_PORTS];
    for (slot, column) in slots.iter_mut().zip(SLOTS) {
        let partner = row.text(column)?;
        if !partner.is_empty() {
            Serial::check(partner).map_err(|_| corrupt(format!("{serial}: {column}")))?;
            *slot = Some(partner);
        }
    }
    Ok(StoredCells { serial, name, ports, slots })
}

/// An outcome's code in `processor_widget_ids.outcome` (part of the data format).
fn outcome_code(o: &Outcome) -> i32 {
    match o {
        Outcome::Created => 1,
        Outcome::Deleted => 2,
        Outcome::Associated => 3,
        Outcome::Dissociated => 4,
        Outcome::Refused(Status::NotFound, _) => 5,
        Outcome::Refused(Status::Conflict, _) => 6,
    }
}

fn id_row(key: &str, m: &Memo) -> Row {
    let reason = match &m.outcome {
        Outcome::Refused(_, reason) => reason.clone(),
        _ => String::new(),
    };
    Row::new()
        .with("key", Value::Text(key.to_owned()))
        .with("outcome", Value::Int(outcome_code(&m.outcome)))
        .with("reason", Value::Text(reason))
        .with("at_ms", Value::BigInt(m.at_ms))
        .with("command_offset", Value::BigInt(m.offset))
}

fn id_from_row(row: &Row) -> Result<(String, Memo), PgError> {
    let reason = row.text("reason")?.to_owned();
    let outcome = match row.int("outcome")? {
        1 => Outcome::Created,
        2 => Outcome::Deleted,
        3 => Outcome::Associated,
        4 => Outcome::Dissociated,
        5 => Outcome::Refused(Status::NotFound, reason),
        6 => Outcome::Refused(Status::Conflict, reason),
        other => return Err(PgError::Corrupt(format!("processor_widget_ids: outcome {other}"))),
    };
    let memo = Memo { outcome, at_ms: row.big_int("at_ms")?, offset: row.big_int("command_offset")? };
    Ok((row.text("key")?.to_owned(), memo))
}

impl Aggregation for Widgets {
    const NAME: &'static str = "widgets";
    type Event = WidgetCommand;
    type State = WidgetsState;
    type Changes = Checkpoint;
    type Receipt = ();

    fn decode(&self, payload: &[u8]) -> Result<WidgetCommand, DecodeError> {
        decode_command(payload)
    }

    fn accepted_at_ms(&self, event: &WidgetCommand) -> i64 {
        event.accepted_at_ms
    }

    /// None: an id answers its first decision, which the engine's id window
    /// (count once, skip the rest) cannot give; the state remembers ids.
    fn dedup_id(&self, _: &WidgetCommand) -> Option<DedupId> {
        None
    }

    fn apply(&self, state: &mut WidgetsState, record: Record, event: WidgetCommand) -> Result<(), Skip> {
        let at = At { offset: record.offset, accepted_at_ms: record.accepted_at_ms, watermark_ms: record.watermark_ms };
        state.apply(&event, at);
        Ok(())
    }

    fn changes(&self, state: &mut WidgetsState) -> Option<Checkpoint> {
        state.checkpoint()
    }

    /// Reads the widgets a chunk of rows at a time straight into the graph
    /// (no second copy of ten million rows), then the ids.
    async fn restore<T: StateTx>(&self, tx: &mut T, scope: Scope<'_>, _: Position) -> Result<WidgetsState, PgError> {
        let mut restore = Restore::new(scope.partition, self.policy);
        // Lent, not handed over: millions of widgets, each read where the copy holds it.
        tx.read_cells(&WIDGETS, scope, |row| {
            restore.widget_cells(cells_of_row(row)?).map_err(|e| corrupt(e.to_string()))
        })
        .await?;
        tx.read_rows(&IDS, scope, |rows| {
            for row in &rows {
                let (key, memo) = id_from_row(row)?;
                restore.id(key, memo);
            }
            Ok(())
        })
        .await?;
        restore.finish().map_err(|e| corrupt(e.to_string()))
    }

    /// The rows of what changed since the last checkpoint, sorted by key.
    async fn persist<T: StateTx>(&self, tx: &mut T, scope: Scope<'_>, cp: &Checkpoint) -> Result<(), PgError> {
        let rows: Vec<Row> = cp.widgets.iter().filter_map(|(_, w)| w.as_ref().map(widget_row)).collect();
        let gone: Vec<Value> =
            cp.widgets.iter().filter(|(_, w)| w.is_none()).map(|(s, _)| Value::Text(s.to_string())).collect();
        tx.upsert_rows(&WIDGETS, scope, &rows).await?;
        if !gone.is_empty() {
            tx.delete_rows(&WIDGETS, scope, &gone).await?;
        }
        let ids: Vec<Row> = cp.ids.iter().filter_map(|(k, m)| m.as_ref().map(|m| id_row(k, m))).collect();
        let forgotten: Vec<Value> =
            cp.ids.iter().filter(|(_, m)| m.is_none()).map(|(k, _)| Value::Text(k.clone())).collect();
        tx.upsert_rows(&IDS, scope, &ids).await?;
        if !forgotten.is_empty() {
            tx.delete_rows(&IDS, scope, &forgotten).await?;
        }
        Ok(())
    }

    fn committed(&self, state: &mut WidgetsState, cp: Checkpoint, (): ()) {
        state.mark_persisted(&cp);
    }

    /// One record per change, kept whole in the outbox: the state after a
    /// later change cannot render it again.
    fn emits(&self, _: Scope<'_>, _: Position, cp: &Checkpoint) -> Vec<Emit> {
        cp.changes.iter().map(|c| Emit { key: c.record_key(), payload: encode_change(c), keep_payload: true }).collect()
    }

    /// Nothing to render: every change is kept whole ([`Self::emits`]).
    fn render(&self, _: Scope<'_>, _: Position, _: &WidgetsState, _: &[String]) -> Vec<Emit> {
        Vec::new()
    }

    fn replies(&self, state: &mut WidgetsState) -> Vec<Emit> {
        state
            .take_replies()
            .iter()
            .map(|r| Emit { key: r.record_key(), payload: encode_reply(r), keep_payload: false })
            .collect()
    }

    fn record_gauges<'a>(&self, states: impl Iterator<Item = &'a WidgetsState>) {
        let (mut widgets, mut ids, mut bytes) = (0, 0, 0);
        for s in states {
            widgets += s.graph().len();
            ids += s.ids();
            bytes += s.graph().heap_bytes();
        }
        metrics::gauge!(GRAPH_WIDGETS).set(widgets as f64);
        metrics::gauge!(GRAPH_IDS).set(ids as f64);
        metrics::gauge!(GRAPH_BYTES).set(bytes as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Command;
    use crate::state::tests::{wc, POLICY};
    use crate::wire::{decode_change, decode_reply};
    use crate::{Port, Serial};

    fn s(serial: &str) -> Serial {
        Serial::parse(serial).unwrap()
    }

    #[test]
    fn rows_round_trip_every_widget_and_id() {
        let w = StoredWidget {
            serial: s("a é"),
            name: Name::parse("").unwrap(),
            ports: Ports::parse("PRQ").unwrap(),
            slots: [None, Some(s("b")), None],
        };
        let row = widget_row(&w);
        let cells = cells_of_row(&row).unwrap();
        assert_eq!((cells.serial, cells.name, cells.ports), ("a é", "", w.ports));
        assert_eq!(cells.slots, [None, Some("b"), None]);
        for outcome in [Outcome::Created, Outcome::Dissociated, Outcome::Refused(Status::Conflict, "why".into())] {
            let m = Memo { outcome, at_ms: 5, offset: 9 };
            assert_eq!(id_from_row(&id_row("r:a", &m)).unwrap(), ("r:a".to_owned(), m));
        }
        for (column, bad) in [("ports", "X"), ("serial", ""), ("slot2", "\u{7}"), ("name", "\n")] {
            let bad = widget_row(&w).with(column, Value::Text(bad.into()));
            assert!(matches!(cells_of_row(&bad), Err(PgError::Corrupt(_))), "{column}");
        }
    }

    #[test]
    fn replies_are_keyed_by_request_and_changes_by_offset() {
        let w = Widgets::new(POLICY);
        let mut state = WidgetsState::new(0, POLICY);
        let record = |offset| Record { offset, accepted_at_ms: 9, watermark_ms: 9 };
        let create = |serial: &str| Command::Create {
            serial: s(serial),
            name: Name::parse("n").unwrap(),
            ports: Ports::parse("P").unwrap(),
        };
        w.apply(&mut state, record(0), wc(1, create("a"), None)).unwrap();
        w.apply(&mut state, record(1), wc(2, create("b"), None)).unwrap();
        w.apply(&mut state, record(2), wc(3, Command::Associate { serial: s("a"), with: s("b"), port: Port::P }, None))
            .unwrap();
        w.apply(&mut state, record(3), wc(4, create("a"), None)).unwrap();
        let replies = w.replies(&mut state);
        assert_eq!(replies[0].key, uuid::Uuid::from_u128(1).to_string());
        assert!(matches!(decode_reply(&replies[3].payload).unwrap().outcome, Outcome::Refused(Status::Conflict, _)));
        let cp = w.changes(&mut state).unwrap();
        let emits = w.emits(Scope { topic: "t", partition: 0 }, Position::default(), &cp);
        assert_eq!(emits.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(), ["1:a", "2:b", "3:a"]);
        let assoc = decode_change(&emits[2].payload).unwrap();
        assert_eq!(assoc, cp.changes[2]);
        assert_eq!(assoc.after.len(), 2);
        w.committed(&mut state, cp, ());
        assert!(w.changes(&mut state).is_none());
    }
}
