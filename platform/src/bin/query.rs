//! The query service: every listed workload's `GET` routes over its read models.

/// The request path allocates per request (headers, bodies, futures): mimalloc
/// answers more GETs per core than glibc's malloc (docs/benchmarks-notes.md,
/// "The allocator"). The processor keeps glibc's: with mimalloc its peak RSS in
/// a promotions load grew past the 100 MB goal.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (cfg, workloads) = platform::query().parse::<query::Config>();
    let token = common::engine::shutdown::on_signals();
    let metrics = common::engine::telemetry::init("query", &cfg.telemetry, &token);
    let app = query::build(&cfg, &workloads, metrics).await?;
    let listener = common::engine::http::bind(cfg.listen).await?;
    let limits = common::engine::http::ServerLimits::from_edge(&cfg.edge)?;
    query::run(app, listener, limits, token, cfg.telemetry.shutdown_timeout).await
}
