//! Reads an hour: Redis, then PostgreSQL (writing the answer back to Redis), then zeros.

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::analytics::{HourCounts, HourStart};
use common::engine::pg::PgError;
use common::engine::store::cache::{CacheError, HourCache};
use common::engine::store::{hours, HourTotals};
use deadpool_postgres::Pool;
use moka::ops::compute::Op;

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
    /// The value keeps the start of its read: moka's own time to live counts from
    /// the insert, so it only evicts; [`get`](Self::get) judges the age.
    entries: moka::sync::Cache<HourStart, (HourTotals, Instant)>,
}

/// Hours kept in process (a few are read at once; this only bounds a scan).
const LOCAL_CAPACITY: u64 = 4096;

impl LocalCache {
    fn new(ttl: Duration) -> Self {
        LocalCache { ttl, entries: moka::sync::Cache::builder().max_capacity(LOCAL_CAPACITY).time_to_live(ttl).build() }
    }

    fn get(&self, hour: HourStart) -> Option<HourCounts> {
        self.entries.get(&hour).filter(|(_, at)| at.elapsed() < self.ttl).map(|(t, _)| t.counts)
    }

    fn put(&self, hour: HourStart, totals: HourTotals, read_started: Instant) {
        // One atomic step per key, so that of two racing reads the newer version wins.
        self.entries.entry(hour).and_compute_with(|held| match held.map(|e| e.into_value()) {
            Some((held, _)) if held.version > totals.version => Op::Nop,
            Some((_, at)) => Op::Put((totals, read_started.max(at))),
            None => Op::Put((totals, read_started)),
        });
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
        let local = (!local_ttl.is_zero()).then(|| Arc::new(LocalCache::new(local_ttl)));
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
        common::engine::store::check_ready(&self.pool, &self.cache).await
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
        LocalCache::new(Duration::from_millis(500))
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

    #[test]
    fn an_entry_expires_after_the_ttl() {
        let (c, h) = (LocalCache::new(Duration::from_millis(50)), HourStart::of(HOUR));
        c.put(h, totals(1, 10), Instant::now());
        assert_eq!(c.get(h).map(|x| x.clicks), Some(10));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(c.get(h), None);
    }

    #[test]
    fn racing_reads_keep_the_newest_version() {
        let (c, h) = (Arc::new(cache()), HourStart::of(HOUR));
        let writers: Vec<_> = (0..8)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for v in 0..200 {
                        let version = (v * 8 + t) as i64;
                        c.put(h, totals(version, version as u64), Instant::now());
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().expect("writer");
        }
        assert_eq!(c.get(h).map(|x| x.clicks), Some(199 * 8 + 7));
    }
}
