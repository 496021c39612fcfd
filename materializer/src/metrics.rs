//! Metric names of the materializer, in one place. Every metric a pipeline
//! records carries the label `workload` (its [`SinkWorkload::NAME`](crate::engine::SinkWorkload::NAME)),
//! except the lag and stall gauges, which are labelled by partition only.

pub const AGGREGATES_CONSUMED: &str = "analytics_materializer_aggregates_consumed_total";
pub const BATCHES: &str = "analytics_materializer_batches_total";
pub const BATCH_SIZE: &str = "analytics_materializer_batch_aggregates";
/// Label `sink`: `postgres`, `redis`.
pub const SINK_ERRORS: &str = "analytics_materializer_sink_errors_total";
/// Label `sink`: `postgres`, `redis`.
pub const SINK_DURATION: &str = "analytics_materializer_sink_duration_seconds";
/// Rows written to PostgreSQL that Redis has not received yet (it did not answer).
/// The name predates other workloads than the hourly one.
pub const REDIS_PENDING: &str = "analytics_materializer_redis_pending_hours";
/// Rows dropped from those held for Redis (more than the limit): a catch-up re-reads them from PostgreSQL.
pub const REDIS_DROPPED: &str = "analytics_materializer_redis_dropped_rows_total";
/// Rows copied to Redis by a catch-up (at start, or after rows were dropped).
pub const REDIS_CAUGHT_UP: &str = "analytics_materializer_redis_catch_up_rows_total";
/// 1 while a catch-up of Redis runs (progress marks wait for it), else 0.
pub const REDIS_CATCHING_UP: &str = "analytics_materializer_redis_catching_up";
/// Row copies written to Redis after batches. The name predates other workloads than the hourly one.
pub const REDIS_WRITES: &str = "analytics_materializer_redis_hours_written_total";
/// Input accepted → its read-model row visible in Redis.
pub const FRESHNESS: &str = "analytics_materializer_freshness_seconds";
/// Label `stage`: how old the newest input behind an aggregate is (now minus its `watermark_ms`, the broker's
/// log-append time of the newest event of its partition at the checkpoint that emitted it) when the
/// materializer has `read` the aggregate, when its batch is in `postgres` (the transaction committed) and its
/// rows in `redis` (as [`FRESHNESS`]). One sample per distinct watermark of a batch, so about one per
/// checkpoint of an events partition, as the processor's `analytics_processor_input_age_seconds` (which this
/// continues, on the same clock), however many aggregates the checkpoint emitted.
pub const INPUT_AGE: &str = "analytics_materializer_input_age_seconds";

/// Records [`INPUT_AGE`] at `stage`, once for each distinct time in `watermarks_ms`.
pub(crate) fn record_input_age(workload: &'static str, stage: &'static str, watermarks_ms: &[i64]) {
    if watermarks_ms.is_empty() {
        return;
    }
    let mut distinct = watermarks_ms.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let now_us = std::time::SystemTime::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_micros() as i64);
    let age = metrics::histogram!(INPUT_AGE, "workload" => workload, "stage" => stage);
    for w in distinct {
        age.record((now_us - w * 1000).max(0) as f64 / 1e6);
    }
}
/// Label `partition`: high watermark of the aggregates topic minus the next offset to write.
pub const CONSUMER_LAG: &str = "analytics_materializer_consumer_lag_messages";
/// Label `partition`: 1 while this instance holds the partition stopped at an
/// undecodable record (needs an operator), else 0.
pub const PARTITION_STALLED: &str = "analytics_materializer_partition_stalled";
