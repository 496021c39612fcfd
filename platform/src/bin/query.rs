//! The query service: every listed workload's `GET` routes over its read models.

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
