//! The increments workload's config section: its two topics. Every service
//! adds it to its command line (the topics' partition counts are the
//! deployment's: `--events-partitions`, `--aggregates-partitions`).

use clap::Args;

/// The section.
#[derive(Debug, Clone, Args)]
pub struct IncrementsConfig {
    /// Topic of accepted increments (key: the counter's UUID). Written by the command, read by the processor.
    #[arg(long, env = "INCREMENTS_EVENTS_TOPIC", default_value = "increments.events")]
    pub increments_events_topic: String,
    /// Topic of per-key sums (key: the counter's UUID, compacted). Written by the processor, read by the materializer.
    #[arg(long, env = "INCREMENTS_SUMS_TOPIC", default_value = "increments.sums")]
    pub increments_sums_topic: String,
}
