//! Reads a workload's row by id: the in-process copy, then Redis, then
//! PostgreSQL (the row's declared table, writing the answer back to Redis),
//! then the empty row.
//!
//! Reads never go backwards within a process. PostgreSQL is the record and
//! Redis may lag it (a materializer write to Redis that failed is pending;
//! a write-back skipped during the Redis back-off), so once a row was
//! answered from PostgreSQL at version `v` without Redis taking `v`, the
//! reader keeps `v` as the row's *floor*: a Redis copy below it is stale,
//! is not answered, and is repaired by the write-back of a PostgreSQL read.
//! An answer to `after=` whose write was seen reflected in PostgreSQL's
//! progress (Redis did not answer) reads the rows from PostgreSQL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::engine::pg::PgError;
use common::engine::store::cache::{CacheError, RedisStore, VersionedCache};
use common::engine::store::{self, CachedRow, Versioned};
use deadpool_postgres::Pool;

use super::QueryWorkload;
use crate::metrics as m;

/// The row could not be answered: Redis missed and PostgreSQL is unavailable.
#[derive(Debug, thiserror::Error)]
#[error("history store unavailable: {0}")]
pub struct ReadError(#[from] PgError);

/// How long the query reuses an answer in process before asking Redis again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reuse {
    /// While change notifications are not heard (Redis' subscription lost or
    /// not yet made): the staleness this may add. Zero turns reuse off.
    pub ttl: Duration,
    /// While they are heard: an answer is reused until its workload's read
    /// model changes, but never longer than this, in case a notification was
    /// lost without the subscription (a materializer whose publish failed).
    /// Zero: the ttl alone.
    pub until_change: Duration,
}

impl Reuse {
    /// Every read asks the stores.
    pub const OFF: Reuse = Reuse { ttl: Duration::ZERO, until_change: Duration::ZERO };

    /// Reuse for `ttl` only, whatever notifications say.
    pub fn ttl(ttl: Duration) -> Self {
        Reuse { ttl, until_change: Duration::ZERO }
    }

    fn longest(&self) -> Duration {
        self.ttl.max(self.until_change)
    }
}

/// Answers kept in process: a few hot ids take most reads, and serving them
/// from memory instead of a Redis round trip each is the query's main lever.
/// A copy is reused while its workload's read model has not changed since its
/// read began (the materializer publishes a change after every batch that
/// reached Redis, [`super::Changes`]), at most [`Reuse::until_change`]; when
/// changes are not heard, for [`Reuse::ttl`] only.
///
/// Entries keep the version of the row, and one is only replaced by an equal
/// or newer version, so concurrent reads finishing out of order never move
/// an answer backwards. An entry is stamped with the time and the change
/// count at which its read *started*: a slow read is as old as the moment it
/// asked, and a change published while it ran makes it stale at once.
struct LocalCache<R: CachedRow> {
    reuse: Reuse,
    /// Bounded in entries only: [`get`](Self::get) judges the age. quick_cache
    /// rather than moka here: moka's bookkeeping of every read (its read log,
    /// its LRU deques) was 3 % of the query's CPU answering cached rows, a
    /// lookup under a sharded read lock is a fraction of it (docs/benchmarks-notes.md).
    entries: quick_cache::sync::Cache<R::Id, Copy<R>>,
}

/// One answer held in process, with when (and at which change count) its read began.
#[derive(Clone)]
struct Copy<R> {
    row: Versioned<R>,
    read_at: Instant,
    epoch: Option<u64>,
}

/// Rows kept in process (a few are read at once; this only bounds a scan).
const LOCAL_CAPACITY: usize = 4096;

impl<R: CachedRow> LocalCache<R> {
    fn new(reuse: Reuse) -> Self {
        LocalCache { reuse, entries: quick_cache::sync::Cache::new(LOCAL_CAPACITY) }
    }

    /// The entry of `id` if it is still current at change count `epoch` (or
    /// younger than the ttl) and its read started no earlier than `not_before`.
    fn get(&self, id: &R::Id, not_before: Option<Instant>, epoch: Option<u64>) -> Option<Versioned<R>> {
        self.entries
            .get(id)
            .filter(|c| {
                let age = c.read_at.elapsed();
                let unchanged = c.epoch.is_some() && c.epoch == epoch && age < self.reuse.until_change;
                (unchanged || age < self.reuse.ttl) && not_before.is_none_or(|t| c.read_at >= t)
            })
            .map(|c| c.row)
    }

    fn put(&self, id: &R::Id, row: &Versioned<R>, read_at: Instant, epoch: Option<u64>) {
        // One atomic step per key, so that of two racing reads the newer version wins.
        merge_or_insert(
            &self.entries,
            id,
            |held| {
                if held.row.version <= row.version {
                    // The same version read again: the later start and count are as true.
                    let (read_at, epoch) =
                        if held.read_at > read_at { (held.read_at, held.epoch) } else { (read_at, epoch) };
                    *held = Copy { row: row.clone(), read_at, epoch };
                }
            },
            || Copy { row: row.clone(), read_at, epoch },
        );
    }
}

/// Changes the value held for `key` with `merge`, or inserts `fresh()` if
/// none is: one step under the key's shard lock, so racing callers merge in turn.
fn merge_or_insert<K, V>(
    cache: &quick_cache::sync::Cache<K, V>,
    key: &K,
    merge: impl FnOnce(&mut V),
    fresh: impl FnOnce() -> V,
) where
    K: Clone + Eq + std::hash::Hash,
    V: Clone,
{
    use quick_cache::sync::{EntryAction, EntryResult};
    let placed = cache.entry(key, None, |_, held| {
        merge(held);
        EntryAction::Retain(())
    });
    if let EntryResult::Vacant(slot) = placed {
        // Racing `entry` calls on the key wait for this placeholder; only a removal of the
        // key in between refuses it, and no caller here removes a key it has not seen held.
        let _ = slot.insert(fresh());
    }
}

/// Versions below which a Redis copy is stale: the highest version of each
/// row answered from PostgreSQL and not (known to be) in Redis. An entry
/// goes once Redis is seen at or above it, or when the bound evicts it (a
/// floor kept longer than needed only sends reads of a Redis copy below it
/// to PostgreSQL, whose write-back repairs Redis).
struct Floors<Id: Clone + Eq + std::hash::Hash + Send + Sync + 'static> {
    versions: quick_cache::sync::Cache<Id, i64>,
}

/// Rows with a floor held at once: those read from PostgreSQL while Redis lagged.
const FLOOR_CAPACITY: usize = 100_000;

impl<Id: Clone + Eq + std::hash::Hash + Send + Sync + 'static> Floors<Id> {
    fn new() -> Self {
        Floors { versions: quick_cache::sync::Cache::new(FLOOR_CAPACITY) }
    }

    fn get(&self, id: &Id) -> i64 {
        self.versions.get(id).unwrap_or(0)
    }

    /// Raises the floor of `id` to `version` (never lowers it), in one step under the shard's lock.
    fn raise(&self, id: &Id, version: i64) {
        merge_or_insert(&self.versions, id, |held| *held = (*held).max(version), || version);
    }

    /// Redis holds `version` of `id`: a floor at or below it is no longer needed.
    fn reached(&self, id: &Id, version: i64) {
        // A read lock first: most rows have no floor, and the removal takes the write lock.
        if self.versions.get(id).is_some() {
            self.versions.remove_if(id, |held| *held <= version);
        }
    }
}

/// What the answer to a read-your-writes request must be at least as fresh as.
#[derive(Debug, Clone, Copy)]
pub struct Fresh {
    /// The moment the write was seen reflected: in-process copies read before it may predate it.
    pub since: Instant,
    /// The write was seen reflected in PostgreSQL's progress, which can be
    /// ahead of Redis: read the rows from PostgreSQL.
    pub from_postgres: bool,
}

tokio::task_local! {
    /// Set for the answer to a read-your-writes request (and a live snapshot).
    static FRESH: Fresh;
}

/// Runs `answer` so that every [`Reader::read`] in it ignores in-process
/// copies whose read started before `since` (they may predate the write a
/// read token waited for, or the change a live snapshot shows).
pub async fn fresh_since<F: std::future::Future>(since: Instant, answer: F) -> F::Output {
    fresh_as(Fresh { since, from_postgres: false }, answer).await
}

/// Runs `answer` so that every [`Reader::read`] in it is at least as fresh as `fresh`.
pub async fn fresh_as<F: std::future::Future>(fresh: Fresh, answer: F) -> F::Output {
    FRESH.scope(fresh, answer).await
}

/// The read path of one workload's rows. Cloned by every request that reads
/// (a route's answer owns it), so a clone is one reference count: cloning
/// its parts, the Redis store's scripts and prefix among them, was a visible
/// part of a cached answer's CPU (docs/benchmarks-notes.md).
pub struct Reader<W: QueryWorkload> {
    parts: Arc<Parts<W>>,
}

struct Parts<W: QueryWorkload> {
    workload: Arc<W>,
    cache: VersionedCache<W::Row>,
    pool: Pool,
    local: Option<Arc<LocalCache<W::Row>>>,
    /// The change count the local copies are judged by.
    epoch: super::changes::Epoch,
    floors: Arc<Floors<<W::Row as CachedRow>::Id>>,
    changes: Option<super::Changes>,
    /// The places for live streams, shared by every live route of the process.
    live_slots: Option<Arc<tokio::sync::Semaphore>>,
    /// Reads answered in process, counted by a handle made once: the macro's
    /// lookup by name and labels on every read was a visible part of its CPU.
    local_reads: metrics::Counter,
}

impl<W: QueryWorkload> Clone for Reader<W> {
    fn clone(&self) -> Self {
        Reader { parts: self.parts.clone() }
    }
}

impl<W: QueryWorkload> Clone for Parts<W> {
    fn clone(&self) -> Self {
        Parts {
            workload: self.workload.clone(),
            cache: self.cache.clone(),
            pool: self.pool.clone(),
            local: self.local.clone(),
            epoch: self.epoch.clone(),
            floors: self.floors.clone(),
            changes: self.changes.clone(),
            live_slots: self.live_slots.clone(),
            local_reads: self.local_reads.clone(),
        }
    }
}

impl<W: QueryWorkload> Reader<W> {
    /// The workload whose rows it reads.
    pub fn workload(&self) -> &W {
        &self.parts.workload
    }

    /// The PostgreSQL pool it reads (for a workload's own reads beside the row's).
    pub fn pool(&self) -> &Pool {
        &self.parts.pool
    }

    /// [`Reuse::OFF`] turns the in-process cache off. Copies live by their
    /// time only until [`Reader::with_changes`] gives the change notifications.
    pub fn new(workload: W, redis: RedisStore, pool: Pool, reuse: Reuse) -> Self {
        let local = (!reuse.longest().is_zero()).then(|| Arc::new(LocalCache::new(reuse)));
        let parts = Parts {
            workload: Arc::new(workload),
            cache: VersionedCache::new(redis),
            pool,
            local,
            epoch: super::changes::Epoch::unheard(),
            floors: Arc::new(Floors::new()),
            changes: None,
            live_slots: None,
            local_reads: metrics::counter!(m::READS, "source" => "local", "workload" => W::NAME),
        };
        Reader { parts: Arc::new(parts) }
    }

    /// The same reader, with the process's change notifications and live-stream
    /// places (for [`Reader::live`]).
    pub fn with_changes(self, changes: super::Changes, live_slots: Arc<tokio::sync::Semaphore>) -> Self {
        let mut parts = Parts::clone(&self.parts);
        if parts.local.as_ref().is_some_and(|l| !l.reuse.until_change.is_zero()) {
            parts.epoch = changes.epoch(W::NAME);
        }
        parts.changes = Some(changes);
        parts.live_slots = Some(live_slots);
        Reader { parts: Arc::new(parts) }
    }

    /// A live feed of this workload: `render` turns the reader's rows into
    /// the JSON snapshot every stream receives when the read model changes.
    pub fn live<F, Fut>(&self, render: F) -> super::LiveFeed
    where
        F: Fn(Reader<W>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<String, super::QueryError>> + Send + 'static,
    {
        let changes =
            self.parts.changes.clone().unwrap_or_else(|| super::Changes::new(self.parts.cache.store().clone()));
        let slots = self
            .parts
            .live_slots
            .clone()
            .unwrap_or_else(|| Arc::new(tokio::sync::Semaphore::new(super::Limits::default().live_streams)));
        let reader = self.clone();
        super::LiveFeed::new(W::NAME, changes, slots, move || render(reader.clone()))
    }

    /// The row `id`; the empty row at version 0 when no store holds it.
    ///
    /// # Errors
    /// [`ReadError`] only when Redis has no copy and PostgreSQL cannot answer.
    pub async fn read(&self, id: &<W::Row as CachedRow>::Id) -> Result<Versioned<W::Row>, ReadError> {
        let fresh = FRESH.try_with(|f| *f).ok();
        let from_postgres = fresh.is_some_and(|f| f.from_postgres);
        let epoch = self.parts.epoch.now();
        if !from_postgres {
            if let Some(row) = self.parts.local.as_ref().and_then(|l| l.get(id, fresh.map(|f| f.since), epoch)) {
                self.parts.local_reads.increment(1);
                return Ok(row);
            }
        }
        let started = Instant::now();
        let row = self.read_stores(id, from_postgres).await?;
        if let Some(local) = &self.parts.local {
            local.put(id, &row, started, epoch);
        }
        Ok(row)
    }

    /// Redis (unless `skip_redis`), then PostgreSQL with a write-back.
    async fn read_stores(
        &self,
        id: &<W::Row as CachedRow>::Id,
        skip_redis: bool,
    ) -> Result<Versioned<W::Row>, ReadError> {
        let started = Instant::now();
        let cached = if skip_redis { Ok(None) } else { self.parts.cache.get(id).await };
        let stale = match cached {
            Ok(Some(row)) if row.version >= self.parts.floors.get(id) => {
                self.parts.floors.reached(id, row.version);
                metrics::histogram!(m::STORE_DURATION, "store" => "redis", "workload" => W::NAME)
                    .record(started.elapsed().as_secs_f64());
                metrics::counter!(m::READS, "source" => "redis", "workload" => W::NAME).increment(1);
                return Ok(row);
            }
            // Older than an answer already given: PostgreSQL answers, and the write-back repairs Redis.
            Ok(Some(_)) => {
                metrics::counter!(m::STALE_REDIS, "workload" => W::NAME).increment(1);
                true
            }
            Ok(None) => true,
            // Degraded, not down: PostgreSQL has the same answer.
            Err(CacheError::BackingOff) => false,
            Err(e) => {
                tracing::warn!(workload = W::NAME, error = %e, "redis read failed; falling back to postgres");
                metrics::counter!(m::STORE_ERRORS, "store" => "redis", "workload" => W::NAME).increment(1);
                false
            }
        };
        // Taken before the PostgreSQL read, so a write-back of that read can never
        // land over anything written after it began.
        let lease = if stale || skip_redis { self.parts.cache.lease(id).await.ok().flatten() } else { None };
        let started = Instant::now();
        let found = async {
            let client = self.parts.pool.get().await?;
            store::read::<W::Row>(&client, id).await
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
        let mut filled = false;
        if let Some(lease) = lease {
            match self.parts.cache.fill(id, &row, &lease).await {
                Ok(written) => filled = written,
                Err(e) => tracing::debug!(error = %e, "redis write-back failed"),
            }
        }
        // Redis may hold an older copy than this answer (no write-back, or one
        // refused because something wrote the row since): later Redis copies
        // below it are stale.
        if !filled && row.version > 0 {
            self.parts.floors.raise(id, row.version);
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
        LocalCache::new(Reuse::ttl(Duration::from_millis(500)))
    }

    #[test]
    fn an_older_version_never_replaces_a_newer_one() {
        let (c, h) = (cache(), key());
        c.put(&h, &totals(7, 70), Instant::now(), None);
        c.put(&h, &totals(5, 50), Instant::now(), None);
        assert_eq!(c.get(&h, None, None).map(|x| x.row.total), Some(70));
        c.put(&h, &totals(7, 70), Instant::now(), None);
        c.put(&h, &totals(9, 90), Instant::now(), None);
        assert_eq!(c.get(&h, None, None).map(|x| x.row.total), Some(90));
    }

    #[test]
    fn an_entry_is_as_old_as_the_start_of_its_read() {
        let (c, h) = (cache(), key());
        let slow_read_started = Instant::now() - Duration::from_millis(600);
        c.put(&h, &totals(3, 30), slow_read_started, None);
        assert_eq!(c.get(&h, None, None), None, "a read that took longer than the ttl is stale on arrival");
    }

    #[test]
    fn a_fresh_read_ignores_copies_read_before_its_write_was_reflected() {
        let (c, h) = (cache(), key());
        let read_started = Instant::now();
        c.put(&h, &totals(3, 30), read_started, None);
        let reflected_at = Instant::now() + Duration::from_millis(1);
        assert_eq!(c.get(&h, Some(reflected_at), None), None);
        assert_eq!(c.get(&h, Some(read_started), None).map(|x| x.row.total), Some(30));
    }

    #[test]
    fn an_entry_expires_after_the_ttl() {
        let (c, h) = (LocalCache::<Sum>::new(Reuse::ttl(Duration::from_millis(50))), key());
        c.put(&h, &totals(1, 10), Instant::now(), None);
        assert_eq!(c.get(&h, None, None).map(|x| x.row.total), Some(10));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(c.get(&h, None, None), None);
    }

    fn until_change() -> LocalCache<Sum> {
        LocalCache::new(Reuse { ttl: Duration::from_millis(200), until_change: Duration::from_secs(2) })
    }

    #[test]
    fn a_copy_is_reused_past_the_ttl_while_its_workload_has_not_changed() {
        let (c, h) = (until_change(), key());
        c.put(&h, &totals(1, 10), Instant::now() - Duration::from_secs(1), Some(7));
        assert_eq!(c.get(&h, None, Some(7)).map(|x| x.row.total), Some(10));
        assert_eq!(c.get(&h, None, Some(8)), None, "a change was published since the read began");
        assert_eq!(c.get(&h, None, None), None, "changes are not heard: the ttl alone, long passed");
    }

    #[test]
    fn a_copy_is_never_reused_past_the_bound_nor_when_read_unheard() {
        let (c, h) = (until_change(), key());
        c.put(&h, &totals(1, 10), Instant::now() - Duration::from_millis(2100), Some(7));
        assert_eq!(c.get(&h, None, Some(7)), None, "older than until_change");
        let (c, h) = (until_change(), key());
        c.put(&h, &totals(1, 10), Instant::now() - Duration::from_millis(300), None);
        assert_eq!(c.get(&h, None, None), None, "read while unheard: past the ttl");
        assert_eq!(c.get(&h, None, Some(7)), None, "read while unheard, heard now: still by the ttl");
        c.put(&h, &totals(1, 10), Instant::now(), None);
        assert_eq!(c.get(&h, None, Some(7)).map(|x| x.row.total), Some(10), "within the ttl");
    }

    #[test]
    fn the_same_version_read_again_keeps_the_later_start_and_count() {
        let (c, h) = (until_change(), key());
        let later = Instant::now() - Duration::from_millis(500);
        c.put(&h, &totals(2, 20), later, Some(9));
        c.put(&h, &totals(2, 20), later - Duration::from_millis(500), Some(8));
        assert_eq!(c.get(&h, None, Some(9)).map(|x| x.row.total), Some(20));
        assert_eq!(c.get(&h, Some(later), Some(9)).map(|x| x.row.total), Some(20));
    }

    #[test]
    fn a_floor_only_rises_and_goes_once_redis_reaches_it() {
        let floors = Floors::<String>::new();
        let h = key();
        assert_eq!(floors.get(&h), 0);
        floors.raise(&h, 5);
        floors.raise(&h, 3);
        assert_eq!(floors.get(&h), 5);
        floors.reached(&h, 4);
        assert_eq!(floors.get(&h), 5, "Redis below the floor: kept");
        floors.reached(&h, 5);
        assert_eq!(floors.get(&h), 0);
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
                        c.put(&h, &totals(version, version as u64), Instant::now(), None);
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().expect("writer");
        }
        assert_eq!(c.get(&h, None, None).map(|x| x.row.total), Some(199 * 8 + 7));
    }
}
