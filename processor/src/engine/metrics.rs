//! Metric names of the processor engine, in one place. Every series carries
//! the label `workload`; the per-partition ones also `topic`.

pub const EVENTS_APPLIED: &str = "analytics_processor_events_applied_total";
/// Label `reason`: `replayed`, `closed_hour`, `misrouted`, `duplicate_id`.
pub const EVENTS_SKIPPED: &str = "analytics_processor_events_skipped_total";
pub const AGGREGATES_EMITTED: &str = "analytics_processor_aggregates_emitted_total";
/// Key and payload bytes of the emitted aggregates (progress records not included):
/// `make bench` divides it by the events applied (bytes emitted per event).
pub const AGGREGATE_BYTES_EMITTED: &str = "analytics_processor_aggregate_bytes_emitted_total";
pub const CHECKPOINTS: &str = "analytics_processor_checkpoints_total";
/// Label `outcome`: `fenced`, `error` (the store; retried), `emit_error` (the partition is claimed again).
pub const CHECKPOINT_FAILURES: &str = "analytics_processor_checkpoint_failures_total";
pub const CHECKPOINT_DURATION: &str = "analytics_processor_checkpoint_duration_seconds";
/// Label `stage`: `store` (the PostgreSQL transaction), `emit` (the Kafka transaction).
pub const CHECKPOINT_STAGE_DURATION: &str = "analytics_processor_checkpoint_stage_duration_seconds";
pub const RESTORES: &str = "analytics_processor_restores_total";
pub const RESTORE_DURATION: &str = "analytics_processor_restore_duration_seconds";
/// Outbox records re-sent by claims (those a former owner may not have got into the log).
pub const CLAIM_RESENT: &str = "analytics_processor_claim_resent_total";
/// Claims that failed (retried at the next heartbeat); the workload's other partitions go on.
pub const CLAIM_FAILURES: &str = "analytics_processor_claim_failures_total";
/// Restarts of a workload's loop after a failure; the other workload goes on.
pub const WORKLOAD_RESTARTS: &str = "analytics_processor_workload_restarts_total";
pub const OWNED_PARTITIONS: &str = "analytics_processor_owned_partitions";
/// Event ids held for deduplication.
pub const HELD_IDS: &str = "analytics_processor_held_ids";
pub const ID_BYTES: &str = "analytics_processor_id_bytes";
/// Label `partition`: high watermark minus the next offset to apply.
pub const CONSUMER_LAG: &str = "analytics_processor_consumer_lag_messages";
/// Label `partition`: 1 while this instance holds the partition stopped at an
/// undecodable record (needs an operator), else 0.
pub const PARTITION_STALLED: &str = "analytics_processor_partition_stalled";
/// Decided replies that could not be enqueued for the replies topic (the producer queue was full).
pub const REPLIES_DROPPED: &str = "analytics_processor_replies_dropped_total";
/// Label `stage`: how old the newest input record is (now minus its log-append time, the broker's clock, where
/// the topic stamps it; else its writer's acceptance time) when the processor has `read` it (once per wake-up
/// of the loop that applied records), when its checkpoint is `stored` (the PostgreSQL transaction committed) and
/// `emitted` (the checkpoint's Kafka transaction committed), these two once per checkpoint of a partition that
/// read records. The materializer's `analytics_materializer_input_age_seconds` goes on from there, on the same
/// clock (the aggregates carry the same newest input's time as `watermark_ms`).
pub const INPUT_AGE: &str = "analytics_processor_input_age_seconds";

/// Records [`INPUT_AGE`] at `stage` for the newest input, accepted at `newest_ms` (ms since the epoch; 0 or
/// less: no input, nothing recorded).
pub(crate) fn record_input_age(workload: &'static str, stage: &'static str, newest_ms: i64) {
    if newest_ms > 0 {
        let now_us = std::time::SystemTime::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_micros() as i64);
        let age_us = (now_us - newest_ms * 1000).max(0);
        metrics::histogram!(INPUT_AGE, "workload" => workload, "stage" => stage).record(age_us as f64 / 1e6);
    }
}
