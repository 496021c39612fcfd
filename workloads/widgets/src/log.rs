//! The three records of the workload as they travel on its topics (Avro in
//! [`crate::wire`]):
//!
//! ```text
//! command ──WidgetCommand──▶ widgets.commands ──▶ processor ──Reply──▶ widgets.replies ──▶ command
//!                                                            └─Logged─▶ widgets.changes ──▶ materializer
//! ```

use uuid::Uuid;

use crate::input::Serial;
use crate::records::{Change, Command, Reject, Status, StoredWidget};

/// The record key of every command on `widgets.commands`: the shard's. One
/// shard for now, so every command lands in one partition, in order, with
/// one decider (docs/architecture.md, "Widgets").
pub const SHARD_KEY: &[u8] = b"0";

/// One accepted write, not yet decided: what the command appends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WidgetCommand {
    /// The attempt, minted by the command service; the reply is keyed by it.
    pub request: Uuid,
    /// The client's id (`?id=`), checked by `EventId::parse`.
    pub id: Option<String>,
    pub command: Command,
    /// The command service's clock when it accepted the write.
    pub accepted_at_ms: i64,
}

/// What a command decided, as its reply tells the waiting command service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Outcome {
    Created,
    Deleted,
    Associated,
    Dissociated,
    /// A refusal: its status and one-line reason (the response's body).
    Refused(Status, String),
}

impl Outcome {
    /// The outcome of a decision.
    pub fn of(decision: &Result<Change, Reject>) -> Self {
        match decision {
            Ok(Change::Created { .. }) => Outcome::Created,
            Ok(Change::Deleted { .. }) => Outcome::Deleted,
            Ok(Change::Associated { .. }) => Outcome::Associated,
            Ok(Change::Dissociated { .. }) => Outcome::Dissociated,
            Err(reject) => Outcome::Refused(reject.status(), reject.to_string()),
        }
    }

    /// True for a change (`2xx`).
    pub fn is_change(&self) -> bool {
        !matches!(self, Outcome::Refused(..))
    }
}

/// The decision of one command: what the processor publishes on `widgets.replies`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reply {
    pub request: Uuid,
    pub outcome: Outcome,
}

impl Reply {
    /// The record key on `widgets.replies`: the request, as the command waits for it.
    pub fn record_key(&self) -> String {
        self.request.to_string()
    }
}

/// A widget after a change: stored, or deleted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct After {
    pub serial: Serial,
    /// `None`: the change deleted it.
    pub widget: Option<StoredWidget>,
}

/// One decided change, as the processor emits it on `widgets.changes`: the
/// change, and the state after it of every widget it touched (the addressed
/// one first), so a read model keeps each widget's newest state by
/// `input_offset` whatever order the records arrive in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Logged {
    pub change: Change,
    pub after: Vec<After>,
    /// When the command was accepted: the commands topic's log-append time.
    pub at_ms: i64,
    /// The partition of `widgets.commands` the command was in.
    pub partition: i32,
    /// The command's offset plus one: the decided order, and each state's version.
    pub input_offset: i64,
}

impl Logged {
    /// The record key on `widgets.changes`: `<input_offset>:<serial>`, one
    /// per change (compaction and a checkpoint's outbox keep one record per
    /// key). Starting with a digit, it is never an engine progress record.
    pub fn record_key(&self) -> String {
        format!("{}:{}", self.input_offset, self.change.serial())
    }
}
