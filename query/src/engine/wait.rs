//! Read-your-writes at the query: `&after=<token>&wait_ms=<ms>` on any
//! route holds the answer until the token's event is reflected in the read
//! models ([`common::engine::progress`]), or answers 503 once `wait_ms` is up.
//!
//! The progress is read from Redis, where the materializer writes it only
//! after the rows it covers, and from PostgreSQL when Redis does not answer.
//! A check runs on every change notification of any workload, and at least
//! every [`RECHECK`] in case a notification was lost.

use std::time::Duration;

use common::engine::progress::{self, ReadToken};
use common::engine::store::cache::RedisStore;
use deadpool_postgres::Pool;

use super::changes::Changes;

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

/// The read-your-writes wait of one process.
#[derive(Clone)]
pub struct ProgressWait {
    redis: RedisStore,
    pool: Pool,
    changes: Changes,
}

impl ProgressWait {
    pub fn new(redis: RedisStore, pool: Pool, changes: Changes) -> Self {
        ProgressWait { redis, pool, changes }
    }

    /// Where `token`'s event is seen reflected: Redis, else PostgreSQL;
    /// `None` when not yet, or neither answers (the wait goes on).
    async fn reflected(&self, token: &ReadToken) -> Option<Reflected> {
        match self.redis.progress(&token.topic, token.partition).await {
            Ok(marks) => progress::reflected(&marks, token.offset).then_some(Reflected::InRedis),
            Err(_) => {
                let marks = async {
                    let client = self.pool.get().await.ok()?;
                    progress::pg::marks(&client, &token.topic, token.partition).await.ok()
                };
                marks.await.is_some_and(|m| progress::reflected(&m, token.offset)).then_some(Reflected::InPostgres)
            }
        }
    }

    /// Returns once `token`'s event is reflected (where it was seen), or after `limit` (`None`).
    pub async fn wait(&self, token: &ReadToken, limit: Duration) -> Option<Reflected> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut changes = self.changes.subscribe(None);
        loop {
            // Marked seen before the check: a change during it wakes the next wait at once.
            changes.borrow_and_update();
            if let Some(seen) = self.reflected(token).await {
                return Some(seen);
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return None,
                _ = changes.changed() => {}
                _ = tokio::time::sleep(RECHECK) => {}
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
