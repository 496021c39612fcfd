//! The promotions workload in the materializer: the generations topic →
//! `promotion_generations` (declared in [`crate::read_model`]; each record
//! merged onto the stored state, which only moves forward) → Redis.
//!
//! The promotions themselves do not pass here: the processor loads them
//! straight into their generation's storage, in the transaction that
//! commits its position, because a switch must see every partition's rows
//! in place; the materializer keeps the generations' states, which the
//! processor decides and announces.

use common::engine::avro::DecodeError;
use common::engine::pg::PgError;
use common::engine::store::WriteTx;

use ::materializer::engine::SinkWorkload;

use crate::read_model::{self, StoredGeneration};
use crate::records::Announced;
use crate::wire::decode_generation;

/// The generations' states read model.
pub struct Generations;

impl SinkWorkload for Generations {
    const NAME: &'static str = "promotions";
    type Aggregate = Announced;
    type Row = StoredGeneration;

    fn decode(&self, bytes: &[u8]) -> Result<Announced, DecodeError> {
        decode_generation(bytes)
    }

    fn watermark_ms(&self, announced: &Announced) -> i64 {
        announced.at_ms
    }

    /// Safe to repeat: a generation's row only moves to a later state.
    async fn write(&self, tx: &WriteTx<'_>, batch: &[Announced]) -> Result<Vec<i64>, PgError> {
        let statuses: Vec<_> = batch.iter().map(|a| a.status.clone()).collect();
        read_model::write_statuses(tx, &statuses).await
    }
}
