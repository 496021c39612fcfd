//! The hourly analytics workload in the materializer: the processor's
//! absolute (hour, partition) aggregates → the per-partition rows guarded by
//! input offset and the per-hour totals with a version (tables declared in
//! [`crate::read_model`], written by the engine's statements through
//! [`crate::read_model::pg`]) → the hour totals in Redis.

use crate::read_model::pg;
use crate::wire::{decode_hour_aggregate, DecodeError, HourAggregate};
use crate::{HourCounts, HourStart};
use common::engine::pg::PgError;
use common::engine::store::WriteTx;

use ::materializer::engine::SinkWorkload;

/// The hourly analytics read model.
pub struct Analytics;

impl SinkWorkload for Analytics {
    const NAME: &'static str = "analytics";
    type Aggregate = HourAggregate;
    type Row = HourCounts;

    fn decode(&self, bytes: &[u8]) -> Result<HourAggregate, DecodeError> {
        decode_hour_aggregate(bytes)
    }

    fn watermark_ms(&self, aggregate: &HourAggregate) -> i64 {
        aggregate.watermark_ms
    }

    async fn write(&self, tx: &WriteTx<'_>, batch: &[HourAggregate]) -> Result<Vec<HourStart>, PgError> {
        pg::write_aggregates(tx, batch).await
    }
}
