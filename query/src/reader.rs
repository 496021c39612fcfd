//! Reads an hour: Redis, then PostgreSQL (writing the answer back to Redis), then zeros.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::analytics::{HourCounts, HourStart};
use common::pg::PgError;
use common::store::cache::HourCache;
use common::store::{hours, HourTotals};
use deadpool_postgres::Pool;

use crate::metrics as m;

/// The hour could not be answered: Redis missed and PostgreSQL is unavailable.
#[derive(Debug, thiserror::Error)]
#[error("history store unavailable: {0}")]
pub struct ReadError(#[from] PgError);

/// Answers kept in process for a few milliseconds: the current hour takes 95 %
/// of reads, and serving a burst of them from memory instead of a Redis round
/// trip each costs at most `ttl` of extra staleness.
struct LocalCache {
    ttl: Duration,
    entries: Mutex<HashMap<HourStart, (HourCounts, Instant)>>,
}

impl LocalCache {
    fn get(&self, hour: HourStart) -> Option<HourCounts> {
        let entries = self.entries.lock().expect("local cache lock");
        entries.get(&hour).filter(|(_, at)| at.elapsed() < self.ttl).map(|(c, _)| *c)
    }

    fn put(&self, hour: HourStart, counts: HourCounts) {
        let mut entries = self.entries.lock().expect("local cache lock");
        if entries.len() >= 4096 {
            let ttl = self.ttl;
            entries.retain(|_, (_, at)| at.elapsed() < ttl);
        }
        entries.insert(hour, (counts, Instant::now()));
    }
}

#[derive(Clone)]
pub struct HourReader {
    cache: HourCache,
    pool: Pool,
    local: Option<Arc<LocalCache>>,
}

impl HourReader {
    /// `local_ttl` of zero turns the in-process cache off.
    pub fn new(cache: HourCache, pool: Pool, local_ttl: Duration) -> Self {
        let local = (!local_ttl.is_zero()).then(|| Arc::new(LocalCache { ttl: local_ttl, entries: Mutex::default() }));
        HourReader { cache, pool, local }
    }

    /// The counts of `hour`.
    ///
    /// # Errors
    /// [`ReadError`] only when Redis has no copy and PostgreSQL cannot answer.
    pub async fn read(&self, hour: HourStart) -> Result<HourCounts, ReadError> {
        if let Some(counts) = self.local.as_ref().and_then(|l| l.get(hour)) {
            metrics::counter!(m::READS, "source" => "local").increment(1);
            return Ok(counts);
        }
        let counts = self.read_stores(hour).await?;
        if let Some(local) = &self.local {
            local.put(hour, counts);
        }
        Ok(counts)
    }

    async fn read_stores(&self, hour: HourStart) -> Result<HourCounts, ReadError> {
        let started = Instant::now();
        match self.cache.get(hour).await {
            Ok(Some(t)) => {
                metrics::histogram!(m::STORE_DURATION, "store" => "redis").record(started.elapsed().as_secs_f64());
                metrics::counter!(m::READS, "source" => "redis").increment(1);
                return Ok(t.counts);
            }
            Ok(None) => {}
            Err(e) => {
                // Degraded, not down: PostgreSQL has the same answer.
                tracing::warn!(error = %e, "redis read failed; falling back to postgres");
                metrics::counter!(m::STORE_ERRORS, "store" => "redis").increment(1);
            }
        }
        let started = Instant::now();
        let found = async {
            let client = self.pool.get().await?;
            hours::read_hour(&client, hour).await
        }
        .await
        .inspect_err(|_| metrics::counter!(m::STORE_ERRORS, "store" => "postgres").increment(1))?;
        metrics::histogram!(m::STORE_DURATION, "store" => "postgres").record(started.elapsed().as_secs_f64());
        let (totals, source) = match found {
            Some(t) => (t, "postgres"),
            None => (HourTotals::EMPTY, "empty"),
        };
        metrics::counter!(m::READS, "source" => source).increment(1);
        // Write back under the version guard: never overwrites a newer copy.
        if let Err(e) = self.cache.put_if_newer(&[(hour, totals)]).await {
            tracing::debug!(error = %e, "redis write-back failed");
        }
        Ok(totals.counts)
    }

    pub async fn ready(&self) -> Result<(), String> {
        common::store::check_ready(&self.pool, &self.cache).await
    }
}
