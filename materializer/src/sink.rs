//! Writes a batch of aggregates to the read models: PostgreSQL first (the
//! record), then Redis (the hot copy), each guarded so replays are no-ops.

use std::time::Instant;

use common::avro::HourAggregate;
use common::pg::PgError;
use common::store::cache::{CacheError, HourCache};
use common::store::hours;
use deadpool_postgres::Pool;

use crate::metrics as m;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Redis(#[from] CacheError),
}

#[derive(Clone)]
pub struct ReadModelSink {
    pool: Pool,
    cache: HourCache,
}

impl ReadModelSink {
    pub fn new(pool: Pool, cache: HourCache) -> Self {
        ReadModelSink { pool, cache }
    }

    /// Applies a batch. Safe to call again with the same batch after any failure.
    ///
    /// # Errors
    /// [`SinkError`]: retry the whole batch (PostgreSQL keeps what it has, guarded by offsets).
    pub async fn write(&self, batch: &[HourAggregate]) -> Result<(), SinkError> {
        let started = Instant::now();
        let totals = async {
            let mut client = self.pool.get().await.map_err(PgError::from)?;
            hours::apply_aggregates(&mut client, batch).await
        }
        .await
        .inspect_err(|_| metrics::counter!(m::SINK_ERRORS, "sink" => "postgres").increment(1))?;
        metrics::histogram!(m::SINK_DURATION, "sink" => "postgres").record(started.elapsed().as_secs_f64());

        let started = Instant::now();
        let written = self
            .cache
            .put_if_newer(&totals)
            .await
            .inspect_err(|_| metrics::counter!(m::SINK_ERRORS, "sink" => "redis").increment(1))?;
        metrics::histogram!(m::SINK_DURATION, "sink" => "redis").record(started.elapsed().as_secs_f64());
        metrics::counter!(m::REDIS_WRITES).increment(written as u64);

        let now = common::now_ms();
        for a in batch {
            metrics::histogram!(m::FRESHNESS).record((now - a.watermark_ms).max(0) as f64 / 1000.0);
        }
        Ok(())
    }
}
