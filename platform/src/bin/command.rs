//! The command service: `POST` of every listed workload → its events topic.

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
