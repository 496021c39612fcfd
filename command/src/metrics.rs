//! Metric names of the command service, in one place.

pub const EVENTS_ACCEPTED: &str = "analytics_command_events_accepted_total";
/// Label `reason`: see `RejectReason::label`.
pub const EVENTS_REJECTED: &str = "analytics_command_events_rejected_total";
/// Label `reason`: `queue_full`, `timeout`, `broker`, `overloaded`.
pub const EVENTS_UNAVAILABLE: &str = "analytics_command_events_unavailable_total";
pub const PRODUCE_DURATION: &str = "analytics_command_produce_duration_seconds";
pub const IN_FLIGHT: &str = "analytics_command_requests_in_flight";
pub const PRODUCER_QUEUE: &str = "analytics_command_producer_queue_messages";
