//! Reads a workload's row by id: the in-process copy, then Redis, then
//! PostgreSQL (writing the answer back to Redis), then the empty row.

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::engine::pg::PgError;
use common::engine::store::cache::{CacheError, RedisStore, VersionedCache};
use common::engine::store::{CachedRow, Versioned};
use deadpool_postgres::Pool;
use moka::ops::compute::Op;

use super::QueryWorkload;
use crate::metrics as m;

/// The row could not be answered: Redis missed and PostgreSQL is unavailable.
#[derive(Debug, thiserror::Error)]
#[error("history store unavailable: {0}")]
pub struct ReadError(#[from] PgError);

/// Answers kept in process for a few milliseconds: a few hot ids take most
/// reads, and serving a burst of them from memory instead of a Redis round
/// trip each costs at most `ttl` of extra staleness.
///
/// Entries keep the version of the row, and one is only replaced by an equal
/// or newer version, so concurrent reads finishing out of order never move
/// an answer backwards. An entry is timestamped when its read *started*: a
/// slow fallback read is as old as the moment it asked.
struct LocalCache<R: CachedRow> {
    ttl: Duration,
    /// The value keeps the start of its read: moka's own time to live counts from
    /// the insert, so it only evicts; [`get`](Self::get) judges the age.
    entries: moka::sync::Cache<R::Id, (Versioned<R>, Instant)>,
}

/// Rows kept in process (a few are read at once; this only bounds a scan).
const LOCAL_CAPACITY: u64 = 4096;

impl<R: CachedRow> LocalCache<R> {
    fn new(ttl: Duration) -> Self {
        LocalCache { ttl, entries: moka::sync::Cache::builder().max_capacity(LOCAL_CAPACITY).time_to_live(ttl).build() }
    }

    /// The entry of `id` if it is younger than the ttl and its read started no earlier than `not_before`.
    fn get(&self, id: &R::Id, not_before: Option<Instant>) -> Option<Versioned<R>> {
        self.entries
            .get(id)
            .filter(|(_, at)| at.elapsed() < self.ttl && not_before.is_none_or(|t| *at >= t))
            .map(|(row, _)| row)
    }

    fn put(&self, id: &R::Id, row: &Versioned<R>, read_started: Instant) {
        // One atomic step per key, so that of two racing reads the newer version wins.
        self.entries.entry_by_ref(id).and_compute_with(|held| match held.map(|e| e.into_value()) {
            Some((held, _)) if held.version > row.version => Op::Nop,
            Some((_, at)) => Op::Put((row.clone(), read_started.max(at))),
            None => Op::Put((row.clone(), read_started)),
        });
    }
}

tokio::task_local! {
    /// Set for the answer to a read-your-writes request: the moment its write
    /// was seen reflected. In-process copies read before it are too old.
    static FRESH_SINCE: Instant;
}

/// Runs `answer` so that every [`Reader::read`] in it ignores in-process
/// copies whose read started before `since` (they may predate the write a
/// read token waited for).
pub async fn fresh_since<F: std::future::Future>(since: Instant, answer: F) -> F::Output {
    FRESH_SINCE.scope(since, answer).await
}

/// The read path of one workload's rows.
pub struct Reader<W: QueryWorkload> {
    workload: Arc<W>,
    cache: VersionedCache<W::Row>,
    pool: Pool,
    local: Option<Arc<LocalCache<W::Row>>>,
    changes: Option<super::Changes>,
}

impl<W: QueryWorkload> Clone for Reader<W> {
    fn clone(&self) -> Self {
        Reader {
            workload: self.workload.clone(),
            cache: self.cache.clone(),
            pool: self.pool.clone(),
            local: self.local.clone(),
            changes: self.changes.clone(),
        }
    }
}

impl<W: QueryWorkload> Reader<W> {
    /// The PostgreSQL pool it reads (for a workload's own reads beside the row's).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// `local_ttl` of zero turns the in-process cache off.
    pub fn new(workload: W, redis: RedisStore, pool: Pool, local_ttl: Duration) -> Self {
        let local = (!local_ttl.is_zero()).then(|| Arc::new(LocalCache::new(local_ttl)));
        Reader { workload: Arc::new(workload), cache: VersionedCache::new(redis), pool, local, changes: None }
    }

    /// The same reader, with the process's change notifications (for [`Reader::live`]).
    pub fn with_changes(mut self, changes: super::Changes) -> Self {
        self.changes = Some(changes);
        self
    }

    /// A live feed of this workload: `render` turns the reader's rows into
    /// the JSON snapshot every stream receives when the read model changes.
    pub fn live<F, Fut>(&self, render: F) -> super::LiveFeed
    where
        F: Fn(Reader<W>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<String, super::QueryError>> + Send + 'static,
    {
        let changes = self.changes.clone().unwrap_or_else(|| super::Changes::new(self.cache.store().clone()));
        let reader = self.clone();
        super::LiveFeed::new(W::NAME, changes, move || render(reader.clone()))
    }

    /// The row `id`; the empty row at version 0 when no store holds it.
    ///
    /// # Errors
    /// [`ReadError`] only when Redis has no copy and PostgreSQL cannot answer.
    pub async fn read(&self, id: &<W::Row as CachedRow>::Id) -> Result<Versioned<W::Row>, ReadError> {
        let not_before = FRESH_SINCE.try_with(|since| *since).ok();
        if let Some(row) = self.local.as_ref().and_then(|l| l.get(id, not_before)) {
            metrics::counter!(m::READS, "source" => "local", "workload" => W::NAME).increment(1);
            return Ok(row);
        }
        let started = Instant::now();
        let row = self.read_stores(id).await?;
        if let Some(local) = &self.local {
            local.put(id, &row, started);
        }
        Ok(row)
    }

    async fn read_stores(&self, id: &<W::Row as CachedRow>::Id) -> Result<Versioned<W::Row>, ReadError> {
        let started = Instant::now();
        let mut lease = None;
        match self.cache.get(id).await {
            Ok(Some(row)) => {
                metrics::histogram!(m::STORE_DURATION, "store" => "redis", "workload" => W::NAME)
                    .record(started.elapsed().as_secs_f64());
                metrics::counter!(m::READS, "source" => "redis", "workload" => W::NAME).increment(1);
                return Ok(row);
            }
            Ok(None) => {
                // Taken before the PostgreSQL read, so a write-back of that read can never
                // land over anything written after it began.
                lease = self.cache.lease(id).await.ok().flatten();
            }
            // Degraded, not down: PostgreSQL has the same answer.
            Err(CacheError::BackingOff) => {}
            Err(e) => {
                tracing::warn!(workload = W::NAME, error = %e, "redis read failed; falling back to postgres");
                metrics::counter!(m::STORE_ERRORS, "store" => "redis", "workload" => W::NAME).increment(1);
            }
        }
        let started = Instant::now();
        let found = async {
            let client = self.pool.get().await?;
            self.workload.read(&client, id).await
        }
        .await
        .inspect_err(|_| {
            metrics::counter!(m::STORE_ERRORS, "store" => "postgres", "workload" => W::NAME).increment(1)
        })?;
        metrics::histogram!(m::STORE_DURATION, "store" => "postgres", "workload" => W::NAME)
            .record(started.elapsed().as_secs_f64());
        let (row, source) = match found {
            Some(row) => (row, "postgres"),
            None => (Versioned::absent(), "empty"),
        };
        metrics::counter!(m::READS, "source" => source, "workload" => W::NAME).increment(1);
        if let Some(lease) = lease {
            if let Err(e) = self.cache.fill(id, &row, &lease).await {
                tracing::debug!(error = %e, "redis write-back failed");
            }
        }
        Ok(row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::test_util::sums::Sum;

    fn totals(version: i64, total: u64) -> Versioned<Sum> {
        Versioned { row: Sum { total: i128::from(total) }, version }
    }

    fn key() -> String {
        "key".to_owned()
    }

    fn cache() -> LocalCache<Sum> {
        LocalCache::new(Duration::from_millis(500))
    }

    #[test]
    fn an_older_version_never_replaces_a_newer_one() {
        let (c, h) = (cache(), key());
        c.put(&h, &totals(7, 70), Instant::now());
        c.put(&h, &totals(5, 50), Instant::now());
        assert_eq!(c.get(&h, None).map(|x| x.row.total), Some(70));
        c.put(&h, &totals(7, 70), Instant::now());
        c.put(&h, &totals(9, 90), Instant::now());
        assert_eq!(c.get(&h, None).map(|x| x.row.total), Some(90));
    }

    #[test]
    fn an_entry_is_as_old_as_the_start_of_its_read() {
        let (c, h) = (cache(), key());
        let slow_read_started = Instant::now() - Duration::from_millis(600);
        c.put(&h, &totals(3, 30), slow_read_started);
        assert_eq!(c.get(&h, None), None, "a read that took longer than the ttl is stale on arrival");
    }

    #[test]
    fn a_fresh_read_ignores_copies_read_before_its_write_was_reflected() {
        let (c, h) = (cache(), key());
        let read_started = Instant::now();
        c.put(&h, &totals(3, 30), read_started);
        let reflected_at = Instant::now() + Duration::from_millis(1);
        assert_eq!(c.get(&h, Some(reflected_at)), None);
        assert_eq!(c.get(&h, Some(read_started)).map(|x| x.row.total), Some(30));
    }

    #[test]
    fn an_entry_expires_after_the_ttl() {
        let (c, h) = (LocalCache::<Sum>::new(Duration::from_millis(50)), key());
        c.put(&h, &totals(1, 10), Instant::now());
        assert_eq!(c.get(&h, None).map(|x| x.row.total), Some(10));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(c.get(&h, None), None);
    }

    #[test]
    fn racing_reads_keep_the_newest_version() {
        let (c, h) = (Arc::new(cache()), key());
        let writers: Vec<_> = (0..8)
            .map(|t| {
                let (c, h) = (c.clone(), h.clone());
                std::thread::spawn(move || {
                    for v in 0..200 {
                        let version = (v * 8 + t) as i64;
                        c.put(&h, &totals(version, version as u64), Instant::now());
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().expect("writer");
        }
        assert_eq!(c.get(&h, None).map(|x| x.row.total), Some(199 * 8 + 7));
    }
}
