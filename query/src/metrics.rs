//! Metric names of the query service, in one place. The reader's metrics
//! carry the label `workload` (its [`QueryWorkload::NAME`](crate::engine::QueryWorkload::NAME)).

/// Label `source`: `local` (in-process, ≤ --local-cache-ttl old), `redis`, `postgres`, `empty` (no data anywhere: zeros).
pub const READS: &str = "analytics_query_reads_total";
/// Redis copies not answered because they were older than an answer already
/// given from PostgreSQL (Redis lagging after a failure); label `workload`.
pub const STALE_REDIS: &str = "analytics_query_stale_redis_reads_total";
/// Label `store`: `redis`, `postgres`.
pub const STORE_ERRORS: &str = "analytics_query_store_errors_total";
/// Label `store`: `redis`, `postgres`.
pub const STORE_DURATION: &str = "analytics_query_store_duration_seconds";
/// Label `reason`: see `RejectReason::label`.
pub const REJECTED: &str = "analytics_query_requests_rejected_total";
/// How long a read with `after=<token>` waited for its write; label `outcome`: `reflected`, `timeout`.
pub const TOKEN_WAIT_DURATION: &str = "analytics_query_token_wait_seconds";
/// Reads of the read-your-writes progress (one per round trip to a store, however
/// many partitions it covers); label `store`: `redis`, `postgres`.
pub const PROGRESS_READS: &str = "analytics_query_progress_reads_total";
/// Server-Sent Events streams open now; label `workload`.
pub const LIVE_STREAMS: &str = "analytics_query_live_streams";
/// Snapshots pushed to live streams (one per stream per change); label `workload`.
pub const LIVE_EVENTS: &str = "analytics_query_live_events_total";
