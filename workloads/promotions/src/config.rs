//! The promotions workload's config section: its two topics. Every service
//! adds it to its command line (the topics' partition counts are the
//! deployment's: `--events-partitions`, `--aggregates-partitions`).

use clap::Args;

/// The section.
#[derive(Debug, Clone, Args)]
pub struct PromotionsConfig {
    /// Topic of uploaded files: a begin record, the rows keyed by id, an end record per partition (or an abort).
    /// Written by the command, read by the processor.
    #[arg(long, env = "PROMOTIONS_ROWS_TOPIC", default_value = "promotions.rows")]
    pub promotions_rows_topic: String,
    /// Topic of the generations' states (key: the generation number, compacted). Written by the processor, read by
    /// the materializer.
    #[arg(long, env = "PROMOTIONS_GENERATIONS_TOPIC", default_value = "promotions.generations")]
    pub promotions_generations_topic: String,
}
