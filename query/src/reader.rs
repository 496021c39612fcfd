//! Reads an hour: Redis, then PostgreSQL (writing the answer back to Redis), then zeros.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::analytics::{HourCounts, HourStart};
use common::pg::PgError;
use common::store::cache::{CacheError, HourCache};
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
///
/// Entries keep the version (input offset sum) of the totals, and one is only
/// replaced by an equal or newer version, so concurrent reads finishing out of
/// order never move an answer backwards. An entry is timestamped when its read
/// *started*: a slow fallback read is as old as the moment it asked.
struct LocalCache {
    ttl: Duration,
    entries: Mutex<HashMap<HourStart, (HourTotals, Instant)>>,
}

impl LocalCache {
    fn get(&self, hour: HourStart) -> Option<HourCounts> {
        let entries = self.entries.lock().expect("local cache lock");
        entries.get(&hour).filter(|(_, at)| at.elapsed() < self.ttl).map(|(t, _)| t.counts)
    }

    fn put(&self, hour: HourStart, totals: HourTotals, read_started: Instant) {
        let mut entries = self.entries.lock().expect("local cache lock");
        if entries.len() >= 4096 {
            let ttl = self.ttl;
            entries.retain(|_, (_, at)| at.elapsed() < ttl);
        }
        match entries.get_mut(&hour) {
            Some((held, _)) if held.version > totals.version => {}
            Some(entry) => *entry = (totals, read_started.max(entry.1)),
            None => {
                entries.insert(hour, (totals, read_started));
            }
        }
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
        let started = Instant::now();
        let totals = self.read_stores(hour).await?;
        if let Some(local) = &self.local {
            local.put(hour, totals, started);
        }
        Ok(totals.counts)
    }

    async fn read_stores(&self, hour: HourStart) -> Result<HourTotals, ReadError> {
        let started = Instant::now();
        let mut lease = None;
        match self.cache.get(hour).await {
            Ok(Some(t)) => {
                metrics::histogram!(m::STORE_DURATION, "store" => "redis").record(started.elapsed().as_secs_f64());
                metrics::counter!(m::READS, "source" => "redis").increment(1);
                return Ok(t);
            }
            Ok(None) => {
                // Taken before the PostgreSQL read, so a write-back of that read can never
                // land over anything written after it began.
                lease = self.cache.lease(hour).await.ok().flatten();
            }
            // Degraded, not down: PostgreSQL has the same answer.
            Err(CacheError::BackingOff) => {}
            Err(e) => {
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
        if let Some(lease) = lease {
            if let Err(e) = self.cache.fill(hour, totals, &lease).await {
                tracing::debug!(error = %e, "redis write-back failed");
            }
        }
        Ok(totals)
    }

    pub async fn ready(&self) -> Result<(), String> {
        common::store::check_ready(&self.pool, &self.cache).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 1_800_000_000_000 / 3_600_000 * 3_600_000;

    fn totals(version: i64, clicks: u64) -> HourTotals {
        HourTotals { counts: HourCounts { unique_users: 1, clicks, impressions: 0 }, version }
    }

    fn cache() -> LocalCache {
        LocalCache { ttl: Duration::from_millis(500), entries: Mutex::default() }
    }

    #[test]
    fn an_older_version_never_replaces_a_newer_one() {
        let (c, h) = (cache(), HourStart::of(HOUR));
        c.put(h, totals(7, 70), Instant::now());
        c.put(h, totals(5, 50), Instant::now());
        assert_eq!(c.get(h).map(|x| x.clicks), Some(70));
        c.put(h, totals(7, 70), Instant::now());
        c.put(h, totals(9, 90), Instant::now());
        assert_eq!(c.get(h).map(|x| x.clicks), Some(90));
    }

    #[test]
    fn an_entry_is_as_old_as_the_start_of_its_read() {
        let (c, h) = (cache(), HourStart::of(HOUR));
        let slow_read_started = Instant::now() - Duration::from_millis(600);
        c.put(h, totals(3, 30), slow_read_started);
        assert_eq!(c.get(h), None, "a read that took longer than the ttl is stale on arrival");
    }
}
