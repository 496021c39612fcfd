//! Writes a batch of a workload's aggregates to its read model: PostgreSQL
//! first (the record, one transaction through [`SinkWorkload::write`]), then
//! Redis (the hot copy), each guarded so replays are no-ops.
//!
//! PostgreSQL is the truth and must keep advancing whatever Redis does: a
//! batch only fails on a PostgreSQL error. When Redis does not answer, the
//! rows it missed are kept (newest version each) and written once it answers
//! again, under the same version guard, so it catches up without ever moving
//! backwards. A materializer that dies with rows still pending leaves Redis
//! possibly stale for them; every pipeline therefore starts by copying to
//! Redis every row PostgreSQL changed within one Redis TTL (any older Redis
//! entry has expired), again under the version guard.
//!
//! The processor's progress records ([`common::engine::progress`]) ride along:
//! written to PostgreSQL in the batch's transaction, and to Redis only once
//! no row is pending there any more, so a query that sees a progress in
//! Redis reads rows at least that fresh. After each round that wrote
//! anything, a change notification goes out on Redis pub/sub (the query's
//! token waits and live streams listen to it).

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::engine::pg::PgError;
use common::engine::progress::{self, Progress};
use common::engine::store::cache::{CacheError, VersionedCache};
use common::engine::store::{CachedRow, Versioned};
use deadpool_postgres::Pool;

use super::{Keyed, SinkWorkload};
use crate::metrics as m;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Redis(#[from] CacheError),
}

impl SinkError {
    /// Worth retrying the batch: PostgreSQL unavailable, or Redis (which only delays its copy).
    pub fn is_retryable(&self) -> bool {
        match self {
            SinkError::Pg(e) => e.is_retryable(),
            SinkError::Redis(_) => true,
        }
    }
}

/// What Redis still has to receive.
struct RedisBacklog<R: CachedRow> {
    /// Rows whose newest version Redis has not acknowledged.
    pending: BTreeMap<R::Id, Versioned<R>>,
    /// The startup copy of recently changed rows is still to do.
    resync: bool,
    /// Redis failed last time (to log an outage once).
    failing: bool,
    /// Progress marks to copy to Redis once no row is pending: the furthest per
    /// (events topic, partition, aggregates partition).
    progress: BTreeMap<(String, i32, i32), Progress>,
    /// Something reached Redis or is on its way: a change notification is due.
    notify: bool,
}

impl<R: CachedRow> RedisBacklog<R> {
    /// Holds each events partition's furthest progress per aggregates partition.
    fn keep_furthest(&mut self, records: impl IntoIterator<Item = Progress>) {
        for p in records {
            let key = (p.events_topic.clone(), p.partition, p.aggregates_partition);
            match self.progress.entry(key) {
                Entry::Occupied(e) if e.get().next_offset >= p.next_offset => {}
                Entry::Occupied(mut e) => {
                    e.insert(p);
                }
                Entry::Vacant(e) => {
                    e.insert(p);
                }
            }
        }
    }

    /// Holds each row's newest version (equal versions are equal rows).
    fn keep_newest(&mut self, rows: impl IntoIterator<Item = Keyed<R>>) {
        for (id, row) in rows {
            match self.pending.entry(id) {
                Entry::Vacant(e) => {
                    e.insert(row);
                }
                Entry::Occupied(mut e) if row.version > e.get().version => {
                    e.insert(row);
                }
                Entry::Occupied(_) => {}
            }
        }
    }
}

pub struct ReadModelSink<W: SinkWorkload> {
    workload: W,
    pool: Pool,
    cache: VersionedCache<W::Row>,
    redis_ttl: Duration,
    backlog: Mutex<RedisBacklog<W::Row>>,
}

impl<W: SinkWorkload> ReadModelSink<W> {
    pub fn new(workload: W, pool: Pool, cache: VersionedCache<W::Row>, redis_ttl: Duration) -> Self {
        let backlog = RedisBacklog {
            pending: BTreeMap::new(),
            resync: true,
            failing: false,
            progress: BTreeMap::new(),
            notify: false,
        };
        ReadModelSink { workload, pool, cache, redis_ttl, backlog: Mutex::new(backlog) }
    }

    pub fn workload(&self) -> &W {
        &self.workload
    }

    /// Applies a batch. Safe to call again with the same batch after any failure.
    ///
    /// # Errors
    /// [`SinkError::Pg`]: retry the whole batch (PostgreSQL keeps what it has,
    /// guarded by offsets). Redis failures are not errors: see [`Self::catch_up`].
    pub async fn write(&self, batch: &[W::Aggregate], progress: &[Progress]) -> Result<(), SinkError> {
        let started = Instant::now();
        let rows = async {
            let mut client = self.pool.get().await.map_err(PgError::from)?;
            let tx = client.transaction().await?;
            let rows = if batch.is_empty() { Vec::new() } else { self.workload.write(&tx, batch).await? };
            progress::pg::write(&tx, progress).await?;
            tx.commit().await?;
            Ok::<_, PgError>(rows)
        }
        .await
        .inspect_err(|_| metrics::counter!(m::SINK_ERRORS, "sink" => "postgres", "workload" => W::NAME).increment(1))?;
        metrics::histogram!(m::SINK_DURATION, "sink" => "postgres", "workload" => W::NAME)
            .record(started.elapsed().as_secs_f64());

        {
            let mut backlog = self.backlog.lock().expect("backlog lock");
            backlog.keep_newest(rows);
            backlog.keep_furthest(progress.iter().cloned());
            backlog.notify = true;
        }
        self.catch_up().await;

        let now = common::now_ms();
        let freshness = metrics::histogram!(m::FRESHNESS, "workload" => W::NAME);
        for a in batch {
            freshness.record((now - self.workload.watermark_ms(a)).max(0) as f64 / 1000.0);
        }
        Ok(())
    }

    /// Writes to Redis what it has not received yet (after a failure, the
    /// cache skips Redis for a moment, so an outage costs the batches nothing).
    /// Never fails: what Redis refuses stays pending.
    pub async fn catch_up(&self) {
        let (resync, pending, marks, notify) = {
            let mut backlog = self.backlog.lock().expect("backlog lock");
            let b = &mut *backlog;
            (b.resync, std::mem::take(&mut b.pending), std::mem::take(&mut b.progress), std::mem::take(&mut b.notify))
        };
        let mut result = Ok(());
        if resync {
            result = self.resync().await;
        }
        let pending: Vec<Keyed<W::Row>> = pending.into_iter().collect();
        if result.is_ok() && !pending.is_empty() {
            let started = Instant::now();
            result = self.cache.put_if_newer(&pending).await.map(|written| {
                metrics::histogram!(m::SINK_DURATION, "sink" => "redis", "workload" => W::NAME)
                    .record(started.elapsed().as_secs_f64());
                metrics::counter!(m::REDIS_WRITES, "workload" => W::NAME).increment(written as u64);
            });
        }
        // Progress only after every pending row: then Redis is at least as fresh as it says.
        let marks: Vec<Progress> = marks.into_values().collect();
        if result.is_ok() && !marks.is_empty() {
            result = self.cache.store().put_progress(&marks).await;
        }
        if result.is_ok() && notify {
            // Best effort: listeners also poll, so a lost notification only delays them.
            if let Err(e) = self.cache.store().publish_change(W::NAME).await {
                tracing::debug!(workload = W::NAME, error = %e, "change notification not sent");
            }
        }
        let mut backlog = self.backlog.lock().expect("backlog lock");
        match result {
            Ok(()) => {
                if backlog.failing {
                    tracing::info!(workload = W::NAME, "redis answers again; caught up");
                }
                backlog.resync = false;
                backlog.failing = false;
            }
            Err(e) => {
                if !matches!(e, CacheError::BackingOff) {
                    metrics::counter!(m::SINK_ERRORS, "sink" => "redis", "workload" => W::NAME).increment(1);
                }
                if !backlog.failing {
                    tracing::warn!(workload = W::NAME, error = %e, "redis unavailable; PostgreSQL goes on, Redis catches up when it answers");
                }
                backlog.failing = true;
                // Put back what was taken, unless a newer version arrived meanwhile.
                backlog.keep_newest(pending);
                backlog.keep_furthest(marks);
                backlog.notify |= notify;
            }
        }
        metrics::gauge!(m::REDIS_PENDING, "workload" => W::NAME).set(backlog.pending.len() as f64);
    }

    /// Copies every row PostgreSQL changed within one Redis TTL to Redis.
    async fn resync(&self) -> Result<(), CacheError> {
        let recent = async {
            let client = self.pool.get().await.map_err(PgError::from)?;
            self.workload.changed_within(&client, self.redis_ttl).await
        }
        .await;
        match recent {
            Ok(recent) => {
                let written = self.cache.put_if_newer(&recent).await?;
                tracing::info!(
                    workload = W::NAME,
                    rows = recent.len(),
                    written,
                    "redis brought up to date with PostgreSQL"
                );
                Ok(())
            }
            Err(e) => {
                // Not Redis' fault: try again on the next round.
                tracing::warn!(workload = W::NAME, error = %e, "could not list recently changed rows; redis resync postponed");
                Ok(())
            }
        }
    }
}
