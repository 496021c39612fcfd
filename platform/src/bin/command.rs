//! The command service: `POST` of every listed workload → its events topic.

/// The request path allocates per request (headers, bodies, futures): mimalloc
/// answers more POSTs per core than glibc's malloc (docs/benchmarks-notes.md,
/// "The allocator"). The processor keeps glibc's: with mimalloc its peak RSS in
/// a promotions load grew past the 100 MB goal.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (cfg, workloads) = platform::command().parse::<command::Config>();
    let token = common::engine::shutdown::on_signals();
    let metrics = common::engine::telemetry::init("command", &cfg.telemetry, &token);
    let app = command::build(&cfg, &workloads, metrics, common::now_ms).await?;
    let listener = common::engine::http::bind(cfg.listen).await?;
    let limits = common::engine::http::ServerLimits::from_edge(&cfg.edge)?;
    command::run(app, listener, limits, token, cfg.telemetry.shutdown_timeout).await
}
