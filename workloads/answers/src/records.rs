//! The three records of the workload, as they travel (Avro in [`crate::wire`]):
//!
//! ```text
//! command ──AnswerCommand──▶ answers.commands ──▶ processor ──Reply──▶ answers.replies ──▶ command
//!                                                           └─Change─▶ answers.changes ──▶ materializer
//! ```

use uuid::Uuid;

use crate::key::AnswerKey;
use crate::request::{AnswerValue, Op, WriteRequest};
use crate::rules::{Event, Outcome};
use common::engine::request::EventId;

/// One accepted write, not yet decided: what the command appends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerCommand {
    /// The attempt, minted by the command service; the reply is keyed by it.
    pub request: Uuid,
    /// The client's id (`?id=`), checked by [`EventId::parse`].
    pub id: Option<String>,
    pub op: Op,
    pub key: AnswerKey,
    /// `Some` for a create or update, `None` for a delete.
    pub value: Option<AnswerValue>,
    /// The command service's clock when it accepted the write.
    pub accepted_at_ms: i64,
}

impl AnswerCommand {
    /// The command of a valid write, for the attempt `request`.
    pub fn new(write: WriteRequest, request: Uuid, accepted_at_ms: i64) -> Self {
        AnswerCommand {
            request,
            id: write.id.map(EventId::into_string),
            op: write.op,
            key: write.key,
            value: write.value,
            accepted_at_ms,
        }
    }

    /// The record key on `answers.commands`: the answer key's bytes, so
    /// every command of a key lands in one partition, in order, and has one
    /// decider.
    pub fn partition_key(&self) -> &[u8] {
        self.key.as_str().as_bytes()
    }
}

/// One decided change of a key: what the processor emits on `answers.changes`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Change {
    pub key: AnswerKey,
    pub event: Event,
    /// The value written; for a delete, the value removed.
    pub value: String,
    /// 1, 2, 3, … over the key's whole life.
    pub version: u64,
    /// When the command was accepted: the events topic's log-append time.
    pub at_ms: i64,
    /// The partition of `answers.commands` the command was in.
    pub partition: i32,
    /// The command's offset plus one. A function of the log, like the rest
    /// of the record, so a replay emits the very same bytes.
    pub input_offset: i64,
}

impl Change {
    /// The record key on `answers.changes`: `<version>:<key>`, one per
    /// change. Not the bare answer key: the topic is compacted, and
    /// compaction would keep only a key's newest change; one checkpoint's
    /// outbox also keeps one record per record key. Starting with a digit,
    /// it can never be taken for the engine's progress records (`progress:…`).
    pub fn record_key(&self) -> String {
        format!("{}:{}", self.version, self.key)
    }
}

/// The decision of one command: what the processor publishes on `answers.replies`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Reply {
    pub request: Uuid,
    pub outcome: Outcome,
    /// The version after the change; 0 for a refusal.
    pub version: u64,
}

impl Reply {
    /// The record key on `answers.replies`: the request, as the command waits for it.
    pub fn record_key(&self) -> String {
        self.request.to_string()
    }
}
