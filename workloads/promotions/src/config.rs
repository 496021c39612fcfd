//! The promotions workload's config section: its two topics, the
//! command's watched directory and stalled-upload janitor, the pointer
//! lease of the switch and the query's row cache. Every service
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
    /// The pointer lease `L` (read by the processor, at each switch): a query instance answers from the active
    /// generation it read this long without reading PostgreSQL's pointer again. A switch becomes visible this long
    /// (plus `--promotions-clock-skew`) after it commits.
    #[arg(long, env = "PROMOTIONS_READ_LEASE", default_value = "1s", value_parser = parse_duration)]
    pub promotions_read_lease: Duration,
    /// The bound `ε` on how far the clocks of the query machines and PostgreSQL's differ (read by the processor, at
    /// each switch): atomic switches rest on it. Requests that arrive within 2ε before a switch becomes visible
    /// wait until it is.
    #[arg(long, env = "PROMOTIONS_CLOCK_SKEW", default_value = "250ms", value_parser = parse_duration)]
    pub promotions_clock_skew: Duration,
    /// The query's in-process cache of promotions by (generation, id), absent ids too, in MB (0 turns it off):
    /// rows of a generation never change, so nothing but the generation in the key invalidates them.
    #[arg(long, env = "PROMOTIONS_ROW_CACHE_MB", default_value_t = 64)]
    pub promotions_row_cache_mb: u64,
}

impl PromotionsConfig {
    /// The lease the processor's switches write for readers.
    pub fn read_lease(&self) -> common::engine::store::bulk::ReadLease {
        common::engine::store::bulk::ReadLease { lease: self.promotions_read_lease, skew: self.promotions_clock_skew }
    }
}
