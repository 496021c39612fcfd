//! The increments workload in the materializer: the processor's per-key sums
//! → the `increments` table, guarded by input offset
//! ([`common::increments::read_model`]) → the sums in Redis.

use std::time::SystemTime;

use common::engine::avro::DecodeError;
use common::engine::kafka::TopicSpec;
use common::engine::pg::PgError;
use common::engine::store::ChangedPage;
use common::increments::read_model::{self, StoredSum, SumRow};
use common::increments::wire::decode_increment_sum;
use common::increments::{IncrementKey, IncrementSum};
use deadpool_postgres::{Client, Transaction};

use crate::engine::{SinkWorkload, Source};
use crate::Config;

/// The per-key sums read model.
pub struct Increments;

/// Its topic (`--increments-sums-topic`) and lease group (`<group>.increments`).
pub fn source(cfg: &Config) -> Source {
    let topic =
        TopicSpec::aggregates_named(&cfg.increments.increments_sums_topic, cfg.aggregates.aggregates_partitions.get());
    Source { topic, group_id: format!("{}.increments", cfg.group_id) }
}

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
