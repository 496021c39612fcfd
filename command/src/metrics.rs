//! Metric names of the command service, in one place.
//!
//! Every per-event metric and the producer queue carry the label `workload`
//! (`analytics`, ...: `Intake::NAME`).

pub const EVENTS_ACCEPTED: &str = "analytics_command_events_accepted_total";
/// Label `reason`: the workload's `Reject::label` (analytics: see `RejectReason::label`), `body_unreadable`, or
/// `body_idle` (a streamed upload that appended nothing for `--upload-idle-timeout`).
pub const EVENTS_REJECTED: &str = "analytics_command_events_rejected_total";
/// Label `reason`: `queue_full`, `timeout`, `broker`, `overloaded`, `partition_count_changed`.
pub const EVENTS_UNAVAILABLE: &str = "analytics_command_events_unavailable_total";
pub const PRODUCE_DURATION: &str = "analytics_command_produce_duration_seconds";
/// Requests holding an in-flight permit, across workloads (no `workload` label).
pub const IN_FLIGHT: &str = "analytics_command_requests_in_flight";
pub const PRODUCER_QUEUE: &str = "analytics_command_producer_queue_messages";
