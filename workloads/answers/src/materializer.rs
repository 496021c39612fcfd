//! The answers workload in the materializer: the processor's decided
//! changes → `answers_history` (each once) and `answers_latest` (the newest
//! version of each key), declared in [`crate::read_model`] and written by
//! the engine's guarded upserts → the latest answers in Redis.

use common::engine::avro::DecodeError;
use common::engine::pg::PgError;
use common::engine::store::WriteTx;

use crate::key::AnswerKey;
use crate::read_model::{self, LatestAnswer};
use crate::records::Change;
use crate::wire::decode_change;

use ::materializer::engine::SinkWorkload;

/// The answers read models.
pub struct Answers;

impl SinkWorkload for Answers {
    const NAME: &'static str = "answers";
    type Aggregate = Change;
    type Row = LatestAnswer;

    fn decode(&self, bytes: &[u8]) -> Result<Change, DecodeError> {
        decode_change(bytes)
    }

    fn watermark_ms(&self, change: &Change) -> i64 {
        change.at_ms
    }

    /// Safe to repeat: a change's history row is written once, and the
    /// latest row only moves to a higher version.
    async fn write(&self, tx: &WriteTx<'_>, batch: &[Change]) -> Result<Vec<AnswerKey>, PgError> {
        read_model::write_changes(tx, batch).await
    }
}
