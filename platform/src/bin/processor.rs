//! The processor: every listed workload's events → its aggregates.

/// glibc's malloc arenas the process may use. By default glibc opens one per
/// thread that meets contention, up to eight per core, and each keeps the
/// memory its threads freed; the processor runs over a hundred threads
/// (librdkafka's, per producer and consumer), several filling large fetch and
/// COPY buffers, so a promotions load's peak RSS was mostly arenas holding
/// freed buffers (docs/benchmarks-notes.md, "Promotions in batches"). Two
/// keep the tokio workers apart on this machine's two cores.
const MALLOC_ARENAS: i32 = 2;

fn main() -> anyhow::Result<()> {
    // Before any thread starts, so that no thread has an arena of its own yet.
    // SAFETY: mallopt only sets a parameter of the allocator; no other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
    }
    tokio::runtime::Runtime::new()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let (cfg, workloads) = platform::processor().parse::<processor::Config>();
    let token = common::engine::shutdown::on_signals();
    let metrics = common::engine::telemetry::init("processor", &cfg.telemetry, &token);
    let ops = common::engine::http::bind(cfg.ops_listen).await?;
    let limit = cfg.telemetry.shutdown_timeout;
    let run = processor::run(cfg, &workloads, metrics, ops, token.clone());
    common::engine::shutdown::bounded(run, token, limit).await
}
