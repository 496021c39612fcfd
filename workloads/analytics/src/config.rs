//! The analytics workload's config section: its two topics. Every service
//! adds it to its command line (the topics' partition counts are the
//! deployment's: `--events-partitions`, `--aggregates-partitions`; the
//! horizon is engine policy: `--horizon-*`).

use clap::Args;

/// The section.
#[derive(Debug, Clone, Args)]
pub struct AnalyticsConfig {
    /// Topic of accepted events (key: user id). Written by the command, read by the processor.
    #[arg(long, env = "EVENTS_TOPIC", default_value = "analytics.events")]
    pub events_topic: String,
    /// Topic of hourly aggregates (key: `<hour_start_ms>:<partition>`, compacted). Written by the processor, read
    /// by the materializer.
    #[arg(long, env = "AGGREGATES_TOPIC", default_value = "analytics.hourly-aggregates")]
    pub aggregates_topic: String,
}
