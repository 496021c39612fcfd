//! The increments workload's topics: one config section, flattened by the
//! services that use them. Their partition counts are the deployment's
//! (`--events-partitions`, `--aggregates-partitions`).

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct IncrementsTopicsConfig {
    /// Topic of accepted increments (key: the counter's UUID).
    #[arg(long, env = "INCREMENTS_EVENTS_TOPIC", default_value = "increments.events")]
    pub increments_events_topic: String,
    /// Topic of per-key sums (key: the counter's UUID, compacted).
    #[arg(long, env = "INCREMENTS_SUMS_TOPIC", default_value = "increments.sums")]
    pub increments_sums_topic: String,
}
