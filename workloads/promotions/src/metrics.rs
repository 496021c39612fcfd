//! Metric names of the promotions workload's command tasks and query, in
//! one place (the processor's gauge is `crate::processor::ROWS_BUFFERED`).

/// Files of the watched directory by what became of them; label `outcome`:
/// `done`, `failed`, `retry` (left to be taken again), `stopped` (the command stopped mid-file).
pub const DIR_FILES: &str = "analytics_command_promotion_files_total";
/// Uploads the janitor found stopped (no record for `--promotions-upload-stall`) and aborted.
pub const UPLOADS_STOPPED: &str = "analytics_command_promotion_uploads_stopped_total";
/// `GET /promotions/{id}` answers by where they came from; label `result`: `copy` (the generation's local copy),
/// `hit` (the row cache), `miss` (PostgreSQL).
pub const ROW_CACHE: &str = "analytics_query_promotion_row_cache_total";
