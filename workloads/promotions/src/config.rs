//! The promotions workload's config section: its two topics, and the
//! command's watched directory and stalled-upload janitor. Every service
//! adds it to its command line (the topics' partition counts are the
//! deployment's: `--events-partitions`, `--aggregates-partitions`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use common::engine::config::parse_duration;

/// The section.
#[derive(Debug, Clone, Args)]
pub struct PromotionsConfig {
    /// Topic of uploaded files: a begin record, the rows in batches by the partition of their id, an end record per
    /// partition (or an abort). Written by the command, read by the processor.
    #[arg(long, env = "PROMOTIONS_ROWS_TOPIC", default_value = "promotions.rows")]
    pub promotions_rows_topic: String,
    /// Topic of the generations' states (key: the generation number, compacted). Written by the processor, read by
    /// the materializer.
    #[arg(long, env = "PROMOTIONS_GENERATIONS_TOPIC", default_value = "promotions.generations")]
    pub promotions_generations_topic: String,
    /// A directory the command watches for files to load (off when unset). A regular file whose name does not start
    /// with `.` is taken as complete: write `.name.csv` (or elsewhere) and rename it into place. Loaded files move to
    /// `done/g<generation>.<name>`, refused ones to `failed/` beside a `.error` with the reason (docs/operations.md).
    #[arg(long, env = "PROMOTIONS_DIR")]
    pub promotions_dir: Option<PathBuf>,
    /// How often the command checks `--promotions-dir`.
    #[arg(long, env = "PROMOTIONS_DIR_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub promotions_dir_interval: Duration,
    /// An upload with no record in the rows topic for this long lost its writer (a command killed mid-upload): each
    /// command's janitor then fails its generation. At least twice the command's `--upload-idle-timeout`.
    #[arg(long, env = "PROMOTIONS_UPLOAD_STALL", default_value = "2m", value_parser = parse_duration)]
    pub promotions_upload_stall: Duration,
    /// How far back in the rows topic the janitor starts reading when the command starts.
    #[arg(long, env = "PROMOTIONS_UPLOAD_LOOKBACK", default_value = "1h", value_parser = parse_duration)]
    pub promotions_upload_lookback: Duration,
}
