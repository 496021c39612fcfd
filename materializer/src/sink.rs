//! Writes a batch of aggregates to the read models: PostgreSQL first (the
//! record), then Redis (the hot copy), each guarded so replays are no-ops.
//!
//! PostgreSQL is the truth and must keep advancing whatever Redis does: a
//! batch only fails on a PostgreSQL error. When Redis does not answer, the
//! hours it missed are kept (newest version each) and written once it answers
//! again, under the same version guard, so it catches up without ever moving
//! backwards. A materializer that dies with hours still pending leaves Redis
//! possibly stale for them; every materializer therefore starts by copying to
//! Redis every hour PostgreSQL changed within one Redis TTL (any older Redis
//! entry has expired), again under the version guard.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::analytics::HourStart;
use common::engine::avro::HourAggregate;
use common::engine::pg::PgError;
use common::engine::store::cache::{CacheError, HourCache};
use common::engine::store::{hours, HourTotals};
use deadpool_postgres::Pool;

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
#[derive(Default)]
struct RedisBacklog {
    /// Hours whose newest totals Redis has not acknowledged.
    pending: BTreeMap<HourStart, HourTotals>,
    /// The startup copy of recently changed hours is still to do.
    resync: bool,
    /// Redis failed last time (to log an outage once).
    failing: bool,
}

impl RedisBacklog {
    /// Holds each hour's newest totals (equal versions are equal totals).
    fn keep_newest(&mut self, totals: impl IntoIterator<Item = (HourStart, HourTotals)>) {
        for (hour, t) in totals {
            let held = self.pending.entry(hour).or_insert(t);
            if t.version > held.version {
                *held = t;
            }
        }
    }
}

pub struct ReadModelSink {
    pool: Pool,
    cache: HourCache,
    redis_ttl: Duration,
    backlog: Mutex<RedisBacklog>,
}

impl ReadModelSink {
    pub fn new(pool: Pool, cache: HourCache, redis_ttl: Duration) -> Self {
        let backlog = RedisBacklog { resync: true, ..RedisBacklog::default() };
        ReadModelSink { pool, cache, redis_ttl, backlog: Mutex::new(backlog) }
    }

    /// Applies a batch. Safe to call again with the same batch after any failure.
    ///
    /// # Errors
    /// [`SinkError::Pg`]: retry the whole batch (PostgreSQL keeps what it has,
    /// guarded by offsets). Redis failures are not errors: see [`Self::catch_up`].
    pub async fn write(&self, batch: &[HourAggregate]) -> Result<(), SinkError> {
        let started = Instant::now();
        let totals = async {
            let mut client = self.pool.get().await.map_err(PgError::from)?;
            hours::apply_aggregates(&mut client, batch).await
        }
        .await
        .inspect_err(|_| metrics::counter!(m::SINK_ERRORS, "sink" => "postgres").increment(1))?;
        metrics::histogram!(m::SINK_DURATION, "sink" => "postgres").record(started.elapsed().as_secs_f64());

        self.enqueue(totals);
        self.catch_up().await;

        let now = common::now_ms();
        for a in batch {
            metrics::histogram!(m::FRESHNESS).record((now - a.watermark_ms).max(0) as f64 / 1000.0);
        }
        Ok(())
    }

    fn enqueue(&self, totals: Vec<(HourStart, HourTotals)>) {
        self.backlog.lock().expect("backlog lock").keep_newest(totals);
    }

    /// Writes to Redis what it has not received yet (after a failure, the
    /// cache skips Redis for a moment, so an outage costs the batches nothing).
    /// Never fails: what Redis refuses stays pending.
    pub async fn catch_up(&self) {
        let (resync, pending) = {
            let mut backlog = self.backlog.lock().expect("backlog lock");
            (backlog.resync, std::mem::take(&mut backlog.pending))
        };
        let mut result = Ok(());
        if resync {
            result = self.resync().await;
        }
        let pending: Vec<(HourStart, HourTotals)> = pending.into_iter().collect();
        if result.is_ok() && !pending.is_empty() {
            let started = Instant::now();
            result = self.cache.put_if_newer(&pending).await.map(|written| {
                metrics::histogram!(m::SINK_DURATION, "sink" => "redis").record(started.elapsed().as_secs_f64());
                metrics::counter!(m::REDIS_WRITES).increment(written as u64);
            });
        }
        let mut backlog = self.backlog.lock().expect("backlog lock");
        match result {
            Ok(()) => {
                if backlog.failing {
                    tracing::info!("redis answers again; caught up");
                }
                backlog.resync = false;
                backlog.failing = false;
            }
            Err(e) => {
                if !matches!(e, CacheError::BackingOff) {
                    metrics::counter!(m::SINK_ERRORS, "sink" => "redis").increment(1);
                }
                if !backlog.failing {
                    tracing::warn!(error = %e, "redis unavailable; PostgreSQL goes on, Redis catches up when it answers");
                }
                backlog.failing = true;
                // Put back what was taken, unless a newer version arrived meanwhile.
                backlog.keep_newest(pending);
            }
        }
        metrics::gauge!(m::REDIS_PENDING_HOURS).set(backlog.pending.len() as f64);
    }

    /// Copies every hour PostgreSQL changed within one Redis TTL to Redis.
    async fn resync(&self) -> Result<(), CacheError> {
        let recent = async {
            let client = self.pool.get().await.map_err(PgError::from)?;
            hours::changed_within(&client, self.redis_ttl).await
        }
        .await;
        match recent {
            Ok(recent) => {
                let written = self.cache.put_if_newer(&recent).await?;
                tracing::info!(hours = recent.len(), written, "redis brought up to date with PostgreSQL");
                Ok(())
            }
            Err(e) => {
                // Not Redis' fault: try again on the next round.
                tracing::warn!(error = %e, "could not list recently changed hours; redis resync postponed");
                Ok(())
            }
        }
    }
}
