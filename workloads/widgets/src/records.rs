//! What the graph decides on and what it decides: a [`Command`] (one valid
//! write), and its outcome, a [`Change`] (the `2xx`; what the log records
//! for the read side) or a [`Reject`] (`404`/`409`, nothing changes).
//!
//! ```text
//! command ──Command──▶ widgets.commands ──▶ processor: Graph::decide ──▶ Change (201/204) ──▶ materializer
//!                                                                   └─▶ Reject (404/409)
//! ```
//!
//! Everything names widgets by [`Serial`], never by the graph's internal ids,
//! so a change means the same to every reader of the log.

use crate::input::{Name, Port, Ports, Serial, MAX_PORTS};

/// One valid write, as the single writer decides it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Command {
    /// `POST /widgets`.
    Create { serial: Serial, name: Name, ports: Ports },
    /// `DELETE /widgets/{serial}`.
    Delete { serial: Serial },
    /// `POST /widgets/{serial}/associations` with `{"with", "port"}`.
    Associate { serial: Serial, with: Serial, port: Port },
    /// `DELETE /widgets/{serial}/associations/{other}/{port}`.
    Dissociate { serial: Serial, other: Serial, port: Port },
}

impl Command {
    /// The widget the command is addressed to.
    pub fn serial(&self) -> &Serial {
        match self {
            Command::Create { serial, .. }
            | Command::Delete { serial }
            | Command::Associate { serial, .. }
            | Command::Dissociate { serial, .. } => serial,
        }
    }
}

/// One end of an association, as seen from a widget: the partner and the type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Association {
    pub with: Serial,
    pub port: Port,
}

/// A decided change: the `2xx` of a command, and the record the read side applies.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Change {
    /// `201` with the widget (no associations yet).
    Created { serial: Serial, name: Name, ports: Ports },
    /// `204`. `freed`: the associations the delete removed, in slot order,
    /// so a read model frees the partners' slots without reading its own
    /// copy of the widget first.
    Deleted { serial: Serial, freed: Vec<Association> },
    /// `201`: one free slot of `port` on each now holds the other.
    Associated { serial: Serial, with: Serial, port: Port },
    /// `204`: the slot of `port` each held for the other is free again.
    Dissociated { serial: Serial, other: Serial, port: Port },
}

impl Change {
    /// The command that decides this change (on the state it was decided on).
    pub fn command(&self) -> Command {
        match self.clone() {
            Change::Created { serial, name, ports } => Command::Create { serial, name, ports },
            Change::Deleted { serial, .. } => Command::Delete { serial },
            Change::Associated { serial, with, port } => Command::Associate { serial, with, port },
            Change::Dissociated { serial, other, port } => Command::Dissociate { serial, other, port },
        }
    }

    /// The widget the change is addressed to.
    pub fn serial(&self) -> &Serial {
        match self {
            Change::Created { serial, .. }
            | Change::Deleted { serial, .. }
            | Change::Associated { serial, .. }
            | Change::Dissociated { serial, .. } => serial,
        }
    }
}

/// How a refusal is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// `404`: a widget, or the association, does not exist.
    NotFound,
    /// `409`: the graph's rules forbid it now.
    Conflict,
}

/// Why a valid command was refused by the rules: decided, in the log, and
/// changing nothing. Its message is one line, the response's body.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Reject {
    #[error("a widget with serial `{0}` exists")]
    Exists(Serial),
    #[error("no widget with serial `{0}`")]
    NotFound(Serial),
    #[error("a widget cannot be associated with itself")]
    WithItself,
    #[error("`{serial}` and `{with}` are already associated on port {port}")]
    AlreadyAssociated { serial: Serial, with: Serial, port: Port },
    #[error("`{serial}` has no free {port} slot")]
    NoFreeSlot { serial: Serial, port: Port },
    #[error("`{serial}` is not associated with `{other}` on port {port}")]
    NoSuchAssociation { serial: Serial, other: Serial, port: Port },
}

impl Reject {
    pub fn status(&self) -> Status {
        match self {
            Reject::NotFound(_) | Reject::NoSuchAssociation { .. } => Status::NotFound,
            Reject::Exists(_) | Reject::WithItself | Reject::AlreadyAssociated { .. } | Reject::NoFreeSlot { .. } => {
                Status::Conflict
            }
        }
    }
}

/// A widget as a read shows it (`GET /widgets/{serial}`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Widget {
    pub serial: Serial,
    pub name: Name,
    pub ports: Ports,
    /// From the graph: in slot order; in a [`crate::check::Snapshot`]: sorted by port, then partner.
    pub associations: Vec<Association>,
}

/// A widget slot by slot, as the single writer persists it and a change
/// carries it: slot *i* (of type `ports.get(i)`) holds its partner or is
/// free. Unlike [`Widget`], it keeps which slot holds what, so a restored
/// graph decides (and lists a delete's freed associations) exactly as before.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StoredWidget {
    pub serial: Serial,
    pub name: Name,
    pub ports: Ports,
    /// Slots past `ports.len()` are always `None`.
    pub slots: [Option<Serial>; MAX_PORTS],
}

impl StoredWidget {
    /// As a read shows it: the associations in slot order.
    pub fn widget(&self) -> Widget {
        Widget {
            serial: self.serial.clone(),
            name: self.name.clone(),
            ports: self.ports,
            associations: self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.as_ref().map(|with| Association { with: with.clone(), port: self.ports.get(i) }))
                .collect(),
        }
    }
}
