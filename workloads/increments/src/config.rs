//! The increments workload's topics: one config section each, flattened by
//! the services that use them (command: events; processor: both;
//! materializer: sums). Their partition counts are the deployment's
//! (`--events-partitions`, `--aggregates-partitions`).

use clap::Args;

/// Written by the command, read by the processor.
#[derive(Debug, Clone, Args)]
pub struct IncrementsEventsTopicConfig {
    /// Topic of accepted increments (key: the counter's UUID).
    #[arg(long, env = "INCREMENTS_EVENTS_TOPIC", default_value = "increments.events")]
    pub increments_events_topic: String,
}

/// Written by the processor, read by the materializer.
#[derive(Debug, Clone, Args)]
pub struct IncrementsSumsTopicConfig {
    /// Topic of per-key sums (key: the counter's UUID, compacted).
    #[arg(long, env = "INCREMENTS_SUMS_TOPIC", default_value = "increments.sums")]
    pub increments_sums_topic: String,
}
