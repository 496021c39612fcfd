//! The read model of the widgets workload, written by the materializer from
//! `widgets.changes` and read by the query (migrations `0002_read_models.sql`
//! and `0003_slots_in_widgets.sql`): `widgets`, each widget's newest state by
//! serial, its slots partner by partner (the view `widget_associations` lists
//! the held ones), with the GET body (`{"serial","name","ports",
//! "associations"}`) cached in Redis (`<prefix>:widget:<serial>`, field `b`),
//! so a read renders nothing; empty once deleted.
//!
//! One row per widget, slots included: a touched widget is one upsert, not
//! four (the slots had a table of their own, three rows a widget, the largest
//! table at 10M widgets and the mixed load's busiest statement).
//!
//! An offset-guarded [`VersionedTable`]: a change carries the state after it
//! of every widget it touched ([`crate::log::Logged`]), and a row only moves
//! to a higher `input_offset` (the decided order of the one decision
//! partition), so changes may arrive in any order, or twice.

use std::sync::LazyLock;

use serde::Serialize;

use crate::input::{Serial, MAX_PORTS};
use crate::log::{After, Logged};
use crate::processor::{with_partners, SLOTS};
use crate::records::Widget;
use common::engine::pg::PgError;
use common::engine::store::{CachedRow, Column, ColumnType, Conn, Row, Value, Version, VersionedTable};

/// A deleted widget's slots: all free.
const FREED: [Option<Serial>; MAX_PORTS] = [None, None, None];

/// `widgets (serial, live, name, ports, at_ms, body, slot0, slot1, slot2, input_offset, updated_at)`,
/// the body cached as `b`.
pub static WIDGETS: LazyLock<VersionedTable> = LazyLock::new(|| {
    VersionedTable::new(
        "widgets",
        vec![Column::new("serial", ColumnType::Text)],
        vec![
            Column::new("live", ColumnType::Int),
            Column::new("name", ColumnType::Text),
            Column::new("ports", ColumnType::Text),
            Column::new("at_ms", ColumnType::BigInt),
            Column::new("body", ColumnType::Text).cached_as("b"),
            Column::new(SLOTS[0], ColumnType::Text),
            Column::new(SLOTS[1], ColumnType::Text),
            Column::new(SLOTS[2], ColumnType::Text),
        ],
        Version::Offset("input_offset"),
    )
});

/// One end of an association in a body.
#[derive(Debug, Serialize)]
pub struct AssociationJson<'a> {
    pub with: &'a str,
    pub port: String,
}

/// A widget as `GET /widgets/{serial}` and a create's 201 show it.
#[derive(Debug, Serialize)]
pub struct WidgetBody<'a> {
    pub serial: &'a str,
    pub name: &'a str,
    pub ports: String,
    pub associations: Vec<AssociationJson<'a>>,
}

impl<'a> WidgetBody<'a> {
    /// The body of a widget, its associations in slot order.
    pub fn of(w: &'a Widget) -> Self {
        WidgetBody {
            serial: w.serial.as_str(),
            name: w.name.as_str(),
            ports: w.ports.to_string(),
            associations: w
                .associations
                .iter()
                .map(|a| AssociationJson { with: a.with.as_str(), port: a.port.to_string() })
                .collect(),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("strings always serialize")
    }
}

/// A widget as the GET serves it: the JSON body, empty once deleted (and
/// for a serial no store holds, at version 0).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WidgetRow {
    pub body: String,
}

impl WidgetRow {
    /// The row of a widget's state after a change.
    pub fn after(after: &After) -> Self {
        let body = after.widget.as_ref().map(|w| WidgetBody::of(&w.widget()).to_json()).unwrap_or_default();
        WidgetRow { body }
    }

    /// True while the widget exists.
    pub fn is_live(&self) -> bool {
        !self.body.is_empty()
    }
}

impl CachedRow for WidgetRow {
    type Id = Serial;
    const KIND: &'static str = "widget";

    fn table() -> &'static VersionedTable {
        &WIDGETS
    }

    fn key(serial: &Serial) -> Row {
        Row::new().with("serial", Value::Text(serial.to_string()))
    }

    fn id(row: &Row) -> Result<Serial, PgError> {
        let serial = row.text("serial")?;
        Serial::parse(serial).map_err(|_| PgError::Corrupt(format!("widgets: serial {serial:?}")))
    }

    fn to_row(&self) -> Row {
        Row::new().with("body", Value::Text(self.body.clone()))
    }

    fn from_row(row: &Row) -> Result<Self, PgError> {
        Ok(WidgetRow { body: row.text("body")?.to_owned() })
    }
}

/// The rows of a batch of changes: every touched widget's, slots included.
pub fn rows(changes: &[Logged]) -> Vec<Row> {
    let mut rows = Vec::new();
    for c in changes {
        for a in &c.after {
            let live = a.widget.is_some();
            let (name, ports) =
                a.widget.as_ref().map(|w| (w.name.to_string(), w.ports.to_string())).unwrap_or_default();
            let row = WidgetRow::key(&a.serial)
                .with("live", Value::Int(i32::from(live)))
                .with("name", Value::Text(name))
                .with("ports", Value::Text(ports))
                .with("at_ms", Value::BigInt(c.at_ms))
                .with("body", Value::Text(WidgetRow::after(a).body))
                .with("input_offset", Value::BigInt(c.input_offset));
            rows.push(with_partners(row, a.widget.as_ref().map_or(&FREED, |w| &w.slots)));
        }
    }
    rows
}

/// Writes a batch of changes within `tx`: each touched widget's newest
/// state (only to a higher offset). Returns every touched serial, changed
/// or not, so a replay still refreshes Redis.
///
/// # Errors
/// [`PgError`]; the caller rolls the transaction back.
pub async fn write_changes(tx: &impl Conn, changes: &[Logged]) -> Result<Vec<Serial>, PgError> {
    // The upsert keeps, of several rows of one key, the highest offset.
    WIDGETS.upsert(tx, rows(changes)).await?;
    let mut serials: Vec<Serial> = changes.iter().flat_map(|c| c.after.iter().map(|a| a.serial.clone())).collect();
    serials.sort_unstable();
    serials.dedup();
    Ok(serials)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{Change, StoredWidget};
    use crate::{Name, Ports};

    fn s(serial: &str) -> Serial {
        Serial::parse(serial).unwrap()
    }

    #[test]
    fn the_cached_body_is_the_get_answer_and_empty_once_deleted() {
        let w = StoredWidget {
            serial: s("a"),
            name: Name::parse("n\"").unwrap(),
            ports: Ports::parse("PQ").unwrap(),
            slots: [None, Some(s("b")), None],
        };
        let live = WidgetRow::after(&After { serial: s("a"), widget: Some(w) });
        assert_eq!(live.body, r#"{"serial":"a","name":"n\"","ports":"PQ","associations":[{"with":"b","port":"Q"}]}"#);
        let hash = WIDGETS.to_cache(&live.to_row()).unwrap();
        assert_eq!(WidgetRow::from_row(&WIDGETS.from_cache(&hash).unwrap()).unwrap(), live);
        assert!(!WidgetRow::after(&After { serial: s("a"), widget: None }).is_live());
    }

    #[test]
    fn every_touched_widget_writes_one_row_with_its_slots() {
        let held = StoredWidget {
            serial: s("a"),
            name: Name::parse("n").unwrap(),
            ports: Ports::parse("PQ").unwrap(),
            slots: [None, Some(s("b")), None],
        };
        let logged = |widget, input_offset| Logged {
            change: Change::Deleted { serial: s("a"), freed: vec![] },
            after: vec![After { serial: s("a"), widget }],
            at_ms: 1,
            partition: 0,
            input_offset,
        };
        let rows = rows(&[logged(Some(held), 6), logged(None, 7)]);
        assert_eq!(rows.len(), 2);
        let slots = |row: &Row| SLOTS.map(|c| row.text(c).unwrap().to_owned());
        assert_eq!(slots(&rows[0]), ["", "b", ""]);
        assert_eq!(rows[0].text("ports").unwrap(), "PQ");
        assert_eq!(slots(&rows[1]), ["", "", ""], "a deleted widget holds no slot");
        assert!(
            WIDGETS.upsert_sql().contains("WHERE widgets.input_offset < EXCLUDED.input_offset"),
            "{}",
            WIDGETS.upsert_sql()
        );
    }
}
