//! The widgets workload in the materializer: the processor's decided
//! changes → `widgets` (each touched widget's newest state, slots included,
//! declared in [`crate::read_model`] and written by the engine's
//! offset-guarded upsert) → the GET bodies in Redis.

use common::engine::avro::DecodeError;
use common::engine::pg::PgError;
use common::engine::store::WriteTx;

use crate::input::Serial;
use crate::log::Logged;
use crate::read_model::{self, WidgetRow};
use crate::wire::decode_change;

use ::materializer::engine::SinkWorkload;

/// The widgets read models.
pub struct Widgets;

impl SinkWorkload for Widgets {
    const NAME: &'static str = "widgets";
    type Aggregate = Logged;
    type Row = WidgetRow;

    fn decode(&self, bytes: &[u8]) -> Result<Logged, DecodeError> {
        decode_change(bytes)
    }

    fn watermark_ms(&self, change: &Logged) -> i64 {
        change.at_ms
    }

    /// Safe to repeat, in any order: every row is a widget's absolute
    /// state, and only moves to a higher offset.
    async fn write(&self, tx: &WriteTx<'_>, batch: &[Logged]) -> Result<Vec<Serial>, PgError> {
        read_model::write_changes(tx, batch).await
    }
}
