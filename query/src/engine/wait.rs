//! Read-your-writes at the query: `&after=<token>&wait_ms=<ms>` on any
//! route holds the answer until the token's event is reflected in the read
//! models ([`common::engine::progress`]), or answers 503 once `wait_ms` is up.
//!
//! Waiting is cheap and capped. One watcher task per process reads the
//! progress of every events partition someone waits on, all of them in one
//! round trip: from Redis, where the materializer writes it only after the
//! rows it covers, and from PostgreSQL when Redis does not answer. It reads
//! on every change notification of any workload, at least every [`RECHECK`]
//! (a notification may be lost), and at once for a partition nobody waited
//! on yet; and hands the marks to the waiters through a [`watch`] channel
//! per partition. The progress reads therefore grow with the partitions
//! waited on (a handful), not with the requests. At most `max_waits`
//! requests wait at once ([`ProgressWait::admit`]); beyond, 503.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::engine::progress::{self, Mark, ReadToken};
use common::engine::store::cache::RedisStore;
use deadpool_postgres::Pool;
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};

use super::changes::Changes;
use crate::metrics as m;

/// The wait when a request names none.
pub const DEFAULT_WAIT: Duration = Duration::from_millis(5_000);
/// The longest wait a request may ask for.
pub const MAX_WAIT: Duration = Duration::from_millis(30_000);
/// Re-check this often even without a notification.
const RECHECK: Duration = Duration::from_millis(200);

/// What a request asks of the read-your-writes wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct After {
    pub token: ReadToken,
    pub wait: Duration,
}

/// A malformed `after` or `wait_ms`: the client's fault (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AfterError {
    #[error("after: {0}")]
    Token(#[from] progress::TokenError),
    #[error("wait_ms must be a whole number of milliseconds from 0 to {max}", max = MAX_WAIT.as_millis())]
    Wait,
    #[error("{0} given twice")]
    Repeated(&'static str),
}

impl AfterError {
    /// A fixed label for the rejection metric.
    pub fn label(&self) -> &'static str {
        match self {
            AfterError::Token(_) => "bad_token",
            AfterError::Wait => "bad_wait",
            AfterError::Repeated(_) => "repeated_param",
        }
    }
}

/// Takes `after` and `wait_ms` out of a raw query string: what they ask,
/// and the rest of the query for the route's own parser (`None` if empty).
///
/// # Errors
/// [`AfterError`] for a bad or repeated value. `wait_ms` alone is checked and otherwise ignored.
pub fn split_query(query: Option<&str>) -> Result<(Option<After>, Option<String>), AfterError> {
    let Some(query) = query else { return Ok((None, None)) };
    let (mut token, mut wait, mut rest) = (None, None, Vec::new());
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "after" if token.is_some() => return Err(AfterError::Repeated("after")),
            "after" => token = Some(ReadToken::parse(value)?),
            "wait_ms" if wait.is_some() => return Err(AfterError::Repeated("wait_ms")),
            "wait_ms" => {
                let ms: u64 = value.parse().map_err(|_| AfterError::Wait)?;
                let ms = Duration::from_millis(ms);
                wait = Some((ms <= MAX_WAIT).then_some(ms).ok_or(AfterError::Wait)?);
            }
            _ => rest.push(pair),
        }
    }
    let rest = (!rest.is_empty()).then(|| rest.join("&"));
    Ok((token.map(|token| After { token, wait: wait.unwrap_or(DEFAULT_WAIT) }), rest))
}

/// Which store's progress showed a write reflected. The materializer writes
/// a mark to Redis only after the rows it covers, so Redis' rows are then at
/// least as fresh; PostgreSQL's mark commits with its rows, but Redis' rows
/// may still lag it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reflected {
    InRedis,
    InPostgres,
}

/// One events partition: (events topic, partition).
type PartitionKey = (String, i32);

/// The progress of one events partition as last read, and from where.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    marks: Vec<Mark>,
    source: Reflected,
}

/// The read-your-writes wait of one process: the shared watcher and the cap. Cheap to clone.
#[derive(Clone)]
pub struct ProgressWait {
    inner: Arc<Watcher>,
}

struct Watcher {
    redis: RedisStore,
    pool: Pool,
    changes: Changes,
    /// The partitions waited on, each with the latest marks read (`None` before the first read).
    watched: Mutex<HashMap<PartitionKey, watch::Sender<Option<Seen>>>>,
    /// A partition nobody waited on is now waited on: read at once.
    wake: Notify,
    started: OnceLock<()>,
    slots: Arc<Semaphore>,
}

impl ProgressWait {
    /// At most `max_waits` requests wait at once.
    pub fn new(redis: RedisStore, pool: Pool, changes: Changes, max_waits: usize) -> Self {
        let watcher = Watcher {
            redis,
            pool,
            changes,
            watched: Mutex::default(),
            wake: Notify::new(),
            started: OnceLock::new(),
            slots: Arc::new(Semaphore::new(max_waits)),
        };
        ProgressWait { inner: Arc::new(watcher) }
    }

    /// A place among the waiting requests, held until dropped; `None` when all are taken.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.inner.slots.clone().try_acquire_owned().ok()
    }

    /// Returns once `token`'s event is reflected (where it was seen), or after `limit` (`None`).
    pub async fn wait(&self, token: &ReadToken, limit: Duration) -> Option<Reflected> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut marks = self.watch(token);
        let stop = self.inner.changes.stopping().clone();
        loop {
            if let Some(seen) = marks.borrow_and_update().as_ref() {
                if progress::reflected(&seen.marks, token.offset) {
                    return Some(seen.source);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return None,
                // The service is stopping, the watcher with it: answer now (503), the client retries elsewhere.
                _ = stop.cancelled() => return None,
                changed = marks.changed() => if changed.is_err() {
                    return None;
                },
            }
        }
    }

    /// The marks of `token`'s partition as the watcher reads them (started on first use).
    fn watch(&self, token: &ReadToken) -> watch::Receiver<Option<Seen>> {
        let inner = &self.inner;
        inner.started.get_or_init(|| {
            let watcher = inner.clone();
            inner.changes.spawn(async move { watcher.run().await });
        });
        let mut watched = inner.watched.lock().expect("watched lock");
        let key = (token.topic.clone(), token.partition);
        match watched.get(&key) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(None);
                watched.insert(key, tx);
                inner.wake.notify_one();
                rx
            }
        }
    }
}

impl Watcher {
    /// Reads the progress of the partitions waited on, until the service stops.
    async fn run(&self) {
        let mut changes = self.changes.subscribe(None);
        let stop = self.changes.stopping().clone();
        loop {
            let partitions = self.waited_on();
            if partitions.is_empty() {
                // Nothing to read until someone waits.
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = self.wake.notified() => continue,
                }
            }
            // Marked seen before the read: a change during it triggers the next read at once.
            changes.borrow_and_update();
            if let Some(read) = self.read(&partitions).await {
                let watched = self.watched.lock().expect("watched lock");
                for (key, seen) in partitions.into_iter().zip(read) {
                    if let Some(tx) = watched.get(&key) {
                        tx.send_if_modified(|held| {
                            let changed = held.as_ref() != Some(&seen);
                            if changed {
                                *held = Some(seen);
                            }
                            changed
                        });
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = changes.changed() => {}
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(RECHECK) => {}
            }
        }
    }

    /// The partitions someone waits on now; forgets the others.
    fn waited_on(&self) -> Vec<PartitionKey> {
        let mut watched = self.watched.lock().expect("watched lock");
        watched.retain(|_, tx| tx.receiver_count() > 0);
        watched.keys().cloned().collect()
    }

    /// The marks of `partitions`, in order: from Redis in one round trip, else
    /// from PostgreSQL in one query; `None` when neither answers.
    async fn read(&self, partitions: &[PartitionKey]) -> Option<Vec<Seen>> {
        metrics::counter!(m::PROGRESS_READS, "store" => "redis").increment(1);
        match self.redis.progress_many(partitions).await {
            Ok(all) => Some(all.into_iter().map(|marks| Seen { marks, source: Reflected::InRedis }).collect()),
            Err(e) => {
                tracing::debug!(error = %e, "progress not read from redis; reading postgres");
                metrics::counter!(m::PROGRESS_READS, "store" => "postgres").increment(1);
                let client = self.pool.get().await.ok()?;
                let mut found = progress::pg::marks_many(&client, partitions).await.ok()?;
                let seen = partitions
                    .iter()
                    .map(|key| Seen { marks: found.remove(key).unwrap_or_default(), source: Reflected::InPostgres });
                Some(seen.collect())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> ReadToken {
        ReadToken { topic: "t".into(), partition: 1, offset: 5 }
    }

    #[test]
    fn after_and_wait_are_taken_out_of_the_query() {
        let raw = token().encode();
        let q = format!("timestamp=5&after={raw}&wait_ms=250");
        let (after, rest) = split_query(Some(&q)).expect("valid");
        assert_eq!(after, Some(After { token: token(), wait: Duration::from_millis(250) }));
        assert_eq!(rest.as_deref(), Some("timestamp=5"));
        let (after, rest) = split_query(Some(&format!("after={raw}"))).expect("valid");
        assert_eq!(after.map(|a| a.wait), Some(DEFAULT_WAIT));
        assert_eq!(rest, None);
        assert_eq!(split_query(Some("timestamp=5&click")).expect("valid"), (None, Some("timestamp=5&click".into())));
        assert_eq!(split_query(None).expect("valid"), (None, None));
    }

    #[test]
    fn bad_values_are_refused() {
        let raw = token().encode();
        assert!(matches!(split_query(Some("after=nonsense")), Err(AfterError::Token(_))));
        assert!(matches!(split_query(Some("after=")), Err(AfterError::Token(_))));
        for wait in ["x", "-1", "30001", "1.5", ""] {
            assert_eq!(split_query(Some(&format!("after={raw}&wait_ms={wait}"))), Err(AfterError::Wait), "{wait}");
        }
        assert!(split_query(Some(&format!("after={raw}&wait_ms=30000"))).is_ok());
        assert!(split_query(Some(&format!("after={raw}&wait_ms=0"))).is_ok());
        assert_eq!(split_query(Some(&format!("after={raw}&after={raw}"))), Err(AfterError::Repeated("after")));
    }
}
