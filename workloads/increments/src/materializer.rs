//! The increments workload in the materializer: the processor's per-key sums
//! → the `increments` table, guarded by input offset
//! ([`crate::read_model`]) → the sums in Redis.

use std::time::SystemTime;

use crate::read_model::{self, StoredSum, SumRow};
use crate::wire::decode_increment_sum;
use crate::{IncrementKey, IncrementSum};
use common::engine::avro::DecodeError;
use common::engine::pg::PgError;
use common::engine::store::ChangedPage;
use deadpool_postgres::{Client, Transaction};

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

    async fn write(
        &self,
        tx: &Transaction<'_>,
        batch: &[IncrementSum],
    ) -> Result<Vec<(IncrementKey, SumRow)>, PgError> {
        read_model::write_sums(tx, batch).await
    }

    async fn changed_page(
        &self,
        client: &Client,
        since: SystemTime,
        after: Option<&IncrementKey>,
        limit: i64,
    ) -> Result<ChangedPage<StoredSum>, PgError> {
        read_model::changed_page(client, since, after.copied(), limit).await
    }
}
