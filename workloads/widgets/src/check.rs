//! The checks a run of the widgets workload must pass, on any view of the
//! graph: the processor's [`Graph`], or the read model as the e2e
//! concurrency test and the chaos checker read it back (`GET
//! /widgets/{serial}` of every serial they used, into a [`Snapshot`]).
//!
//! - [`Snapshot::check`]: every slot holds at most one association;
//!   associations are symmetric; no pair is associated twice on one type;
//!   none is with the widget itself or with a widget that does not exist.
//! - [`replay`] / [`replay_commands`]: the state equals the `2xx` answers
//!   applied in the order they were decided. Each one must be what its
//!   command decides on the state the earlier ones made (so a `201` for a
//!   slot that was not free fails here), and the replayed graph's snapshot
//!   must equal the one observed.

use std::collections::{BTreeMap, BTreeSet};

use crate::graph::Graph;
use crate::input::{Port, Serial};
use crate::records::{Change, Command, Reject, Widget};

/// Every widget of a graph, by serial, in a normal form: each widget's
/// associations sorted by port, then partner (a read model need not keep
/// the slot order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot(BTreeMap<Serial, Widget>);

/// An invariant a [`Snapshot`] breaks, with the widget it shows on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("`{0}` is listed twice")]
    Duplicate(Serial),
    #[error("`{serial}` holds {held} associations on port {port} with {slots} slot(s) of that type")]
    SlotOverfull { serial: Serial, port: Port, slots: usize, held: usize },
    #[error("`{serial}` is associated with itself on port {port}")]
    WithItself { serial: Serial, port: Port },
    #[error("`{serial}` is associated with `{with}` on port {port} twice")]
    Twice { serial: Serial, with: Serial, port: Port },
    #[error("`{serial}` is associated with `{with}` on port {port}, which does not exist")]
    Dangling { serial: Serial, with: Serial, port: Port },
    #[error("`{serial}` is associated with `{with}` on port {port}, but not the other way")]
    Asymmetric { serial: Serial, with: Serial, port: Port },
}

impl Snapshot {
    /// The snapshot of `widgets`, normalised.
    ///
    /// # Errors
    /// [`Violation::Duplicate`] when a serial comes twice.
    pub fn from_widgets(widgets: impl IntoIterator<Item = Widget>) -> Result<Self, Violation> {
        let mut map = BTreeMap::new();
        for mut w in widgets {
            w.associations.sort();
            if let Some(w) = map.insert(w.serial.clone(), w) {
                return Err(Violation::Duplicate(w.serial));
            }
        }
        Ok(Snapshot(map))
    }

    /// The snapshot of a graph.
    pub fn of(graph: &Graph) -> Self {
        Snapshot::from_widgets(graph.widgets()).expect("a graph's serials are unique")
    }

    pub fn get(&self, serial: &Serial) -> Option<&Widget> {
        self.0.get(serial)
    }

    pub fn widgets(&self) -> impl Iterator<Item = &Widget> {
        self.0.values()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Checks every invariant of the graph's rules.
    ///
    /// # Errors
    /// The first [`Violation`] found (widgets in serial order).
    pub fn check(&self) -> Result<(), Violation> {
        let mut ends = BTreeSet::new();
        for w in self.0.values() {
            for port in Port::ALL {
                let (slots, held) = (w.ports.count(port), w.associations.iter().filter(|a| a.port == port).count());
                if held > slots {
                    return Err(Violation::SlotOverfull { serial: w.serial.clone(), port, slots, held });
                }
            }
            for a in &w.associations {
                let (serial, with, port) = (w.serial.clone(), a.with.clone(), a.port);
                if a.with == w.serial {
                    return Err(Violation::WithItself { serial, port });
                }
                if !self.0.contains_key(&a.with) {
                    return Err(Violation::Dangling { serial, with, port });
                }
                if !ends.insert((&w.serial, &a.with, a.port)) {
                    return Err(Violation::Twice { serial, with, port });
                }
            }
        }
        // Each end once (checked above), so symmetric is: every end's mirror is an end.
        for &(serial, with, port) in &ends {
            if !ends.contains(&(with, serial, port)) {
                return Err(Violation::Asymmetric { serial: serial.clone(), with: with.clone(), port });
            }
        }
        Ok(())
    }
}

/// Why a history does not replay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("answer #{at} ({command:?}) was accepted, but on the state before it the rules refuse it: {reject}")]
    Refused { at: usize, command: Command, reject: Reject },
    #[error("answer #{at} is {answered:?}, but on the state before it its command changes {decided:?}")]
    Differs { at: usize, answered: Box<Change>, decided: Box<Change> },
}

/// The graph that `changes` (the decided changes, in decided order, as the
/// log records them) make from an empty graph.
///
/// # Errors
/// The first change that is not exactly what its command decides on the
/// state the earlier ones made.
pub fn replay<'a>(changes: impl IntoIterator<Item = &'a Change>) -> Result<Graph, ReplayError> {
    let mut graph = Graph::new();
    for (at, answered) in changes.into_iter().enumerate() {
        let decided = decide(&graph, at, &answered.command())?;
        if decided != *answered {
            return Err(ReplayError::Differs { at, answered: Box::new(answered.clone()), decided: Box::new(decided) });
        }
        graph.apply(&decided);
    }
    Ok(graph)
}

/// The graph that the commands answered `2xx`, in decided order, make from
/// an empty graph: the client's view of a history (it knows what it asked
/// and that it was accepted, not e.g. which associations a delete freed).
///
/// # Errors
/// The first command the rules refuse on the state the earlier ones made.
pub fn replay_commands<'a>(accepted: impl IntoIterator<Item = &'a Command>) -> Result<Graph, ReplayError> {
    let mut graph = Graph::new();
    for (at, command) in accepted.into_iter().enumerate() {
        let change = decide(&graph, at, command)?;
        graph.apply(&change);
    }
    Ok(graph)
}

fn decide(graph: &Graph, at: usize, command: &Command) -> Result<Change, ReplayError> {
    graph.decide(command).map_err(|reject| ReplayError::Refused { at, command: command.clone(), reject })
}
