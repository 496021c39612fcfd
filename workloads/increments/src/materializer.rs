//! The increments workload in the materializer: the processor's per-key sums
//! → the `increments` table (declared in [`crate::read_model`]; the engine
//! writes it under the input-offset guard) → the sums in Redis.

use crate::read_model::{self, StoredSum};
use crate::wire::decode_increment_sum;
use crate::{IncrementKey, IncrementSum};
use common::engine::avro::DecodeError;
use common::engine::pg::PgError;
use common::engine::store::WriteTx;

use ::materializer::engine::SinkWorkload;

/// The per-key sums read model.
pub struct Increments;

impl SinkWorkload for Increments {
    const NAME: &'static str = "increments";
    type Aggregate = IncrementSum;
    type Row = StoredSum;

    fn decode(&self, bytes: &[u8]) -> Result<IncrementSum, DecodeError> {
        decode_increment_sum(bytes)
    }

    fn watermark_ms(&self, sum: &IncrementSum) -> i64 {
        sum.watermark_ms
    }

    async fn write(&self, tx: &WriteTx<'_>, batch: &[IncrementSum]) -> Result<Vec<IncrementKey>, PgError> {
        read_model::write_sums(tx, batch).await
    }
}
