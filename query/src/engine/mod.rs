//! The query service's engine: read-through readers and the HTTP routing
//! table, knowing a workload only through [`QueryWorkload`].
//!
//! - [`reader`]: a row by id, from the in-process copy, then Redis, then
//!   PostgreSQL (through the workload), written back to Redis under a fill lease.
//! - [`http`]: the routes the workloads registered, behind the edge checks
//!   (CORS, read token), the read-your-writes wait, the time limit and the
//!   request metrics; errors mapped to statuses in one place.
//! - [`wait`]: `after=<token>`: hold an answer until a write is reflected.
//! - [`changes`]: the Redis pub/sub notifications of read-model changes.
//! - [`live`]: Server-Sent Events streams of a workload's snapshot.

pub mod changes;
pub mod http;
pub mod live;
pub mod reader;
pub mod wait;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use common::engine::http::Body;
use common::engine::store::bulk::{BulkTable, PointerLease};
use common::engine::store::bulk_copy::CopiesDir;
use common::engine::store::cache::RedisStore;
use common::engine::store::CachedRow;
use deadpool_postgres::Pool;
use hyper::Response;

pub use self::changes::Changes;
pub use self::live::LiveFeed;
pub use self::reader::{ReadError, Reader, Reuse};
pub use self::wait::ProgressWait;

/// What a workload gives the query service: its read-model row and the
/// routes that answer from a [`Reader`]. The engine reads a row from
/// PostgreSQL by its table declaration ([`common::engine::store::read`]).
pub trait QueryWorkload: Sized + Send + Sync + 'static {
    /// Names the workload in logs and in the `workload` metric label.
    const NAME: &'static str;
    /// The read-model row; its [`Default`] at version 0 is the answer when no store holds an id.
    type Row: CachedRow + Default;

    /// The workload's HTTP routes, answering from `reader`.
    fn routes(reader: Reader<Self>) -> Vec<Route>;
}

/// What a route's handler answers: a response, or an error the engine maps to one.
pub type Answer = Pin<Box<dyn Future<Output = Result<Response<Body>, QueryError>> + Send>>;

/// A route's handler: given the path and the query string, the answer.
pub type Handler = Arc<dyn Fn(&str, Option<&str>) -> Answer + Send + Sync>;

/// One `GET` (and `HEAD`) route of a workload.
#[derive(Clone)]
pub struct Route {
    /// The exact path, or a prefix when it ends with `/` (`/increment/` serves
    /// `/increment/{key}`); `/` alone is exact (the dashboard), not a prefix of
    /// every path. Also the `route` label of the request metrics.
    pub path: &'static str,
    /// How to call it, for the answer to an unknown path (`GET /analytics?timestamp=<ms>`).
    pub usage: &'static str,
    pub handler: Handler,
}

impl Route {
    /// Whether this route serves `path`.
    pub fn matches(&self, path: &str) -> bool {
        match self.path.strip_suffix('/') {
            Some(parent) if !parent.is_empty() => path.len() > self.path.len() && path.starts_with(self.path),
            _ => path == self.path,
        }
    }
}

/// Why a route could not answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The caller's fault: 400 with `message`; counted under `label`, a fixed short string.
    #[error("{message}")]
    Rejected { label: &'static str, message: String },
    /// Nothing is known under this id: 404 with the message.
    #[error("{0}")]
    NotFound(String),
    /// The stores cannot answer: 503, retry later.
    #[error(transparent)]
    Unavailable(#[from] ReadError),
    /// A cap of [`Limits`] is reached: 503 with the message, retry after a second.
    #[error("{message}")]
    Busy { label: &'static str, message: String },
}

/// Caps on the requests that hold on for long: beyond them, 503 with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Requests waiting at once for their write (`after=`).
    pub token_waits: usize,
    /// Live streams (Server-Sent Events) open at once, over every live route.
    pub live_streams: usize,
}

impl Default for Limits {
    /// The defaults of the flags `--max-token-waits` and `--max-live-streams`.
    fn default() -> Self {
        Limits { token_waits: 4096, live_streams: 1024 }
    }
}

/// The stores every workload reads, shared, the notifications of their
/// changes, and the process's read-your-writes wait and live-stream places.
#[derive(Clone)]
pub struct Stores {
    pub pool: Pool,
    pub redis: RedisStore,
    /// How long an answer is reused in process.
    pub reuse: Reuse,
    changes: Changes,
    progress: ProgressWait,
    live_slots: Arc<tokio::sync::Semaphore>,
    bulk_copies: Option<Arc<CopiesDir>>,
}

impl Stores {
    /// The stores, with the default [`Limits`].
    pub fn new(pool: Pool, redis: RedisStore, reuse: Reuse) -> Self {
        Self::with_limits(pool, redis, reuse, Limits::default())
    }

    pub fn with_limits(pool: Pool, redis: RedisStore, reuse: Reuse, limits: Limits) -> Self {
        let changes = Changes::new(redis.clone());
        let progress = ProgressWait::new(redis.clone(), pool.clone(), changes.clone(), limits.token_waits);
        let live_slots = Arc::new(tokio::sync::Semaphore::new(limits.live_streams));
        Stores { pool, redis, reuse, changes, progress, live_slots, bulk_copies: None }
    }

    /// Bulk generations are read from local copies in `dir` (`--bulk-copies-dir`), none without.
    pub fn with_bulk_copies(mut self, dir: Option<Arc<CopiesDir>>) -> Self {
        self.bulk_copies = dir;
        self
    }

    /// A lease on `table`'s pointer for a workload's reads, over this process's local copies if it keeps them
    /// (then kept current in the background, so a new generation's copy is built right after its switch).
    pub fn bulk_lease(&self, table: &'static BulkTable) -> Arc<PointerLease> {
        let lease = Arc::new(PointerLease::with_copies(table, self.bulk_copies.clone()));
        lease.keep_copies_current(&self.pool);
        lease
    }

    /// The routes of `workload`, reading these stores (a workload's [`crate::QueryRole`] calls it).
    pub fn register<W: QueryWorkload>(&self, workload: W) -> Vec<Route> {
        let reader = Reader::new(workload, self.redis.clone(), self.pool.clone(), self.reuse);
        W::routes(reader.with_changes(self.changes.clone(), self.live_slots.clone()))
    }

    /// The notifications of read-model changes (one subscription per process).
    pub fn changes(&self) -> &Changes {
        &self.changes
    }

    /// The read-your-writes wait over these stores (one watcher per process).
    pub fn progress(&self) -> ProgressWait {
        self.progress.clone()
    }

    /// Readiness: see [`common::engine::store::check_ready`].
    pub async fn ready(&self) -> Result<(), String> {
        common::engine::store::check_ready(&self.pool, &self.redis).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(path: &'static str) -> Route {
        let handler: Handler = Arc::new(|_, _| Box::pin(async { Ok(common::engine::http::no_content()) }));
        Route { path, usage: path, handler }
    }

    #[test]
    fn a_path_ending_in_a_slash_is_a_prefix_of_longer_paths_only() {
        let r = route("/increment/");
        assert!(r.matches("/increment/abc"));
        assert!(!r.matches("/increment/"));
        assert!(!r.matches("/increment"));
        assert!(!r.matches("/other/abc"));
    }

    #[test]
    fn the_root_is_exact_not_a_prefix_of_every_path() {
        let r = route("/");
        assert!(r.matches("/"));
        assert!(!r.matches("/nope"));
        assert!(!r.matches("/analytics"));
        assert!(!r.matches(""));
    }

    #[test]
    fn other_paths_are_exact() {
        let r = route("/analytics");
        assert!(r.matches("/analytics"));
        assert!(!r.matches("/analytics/"));
        assert!(!r.matches("/analytics/live"));
    }
}
