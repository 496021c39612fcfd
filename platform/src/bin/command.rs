use clap::Parser;
use command::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = Config::parse();
    let metrics = common::engine::telemetry::init("command", &cfg.telemetry);
    let token = common::engine::shutdown::on_signals();
    let app = command::build(&cfg, metrics, common::now_ms).await?;
    let listener = common::engine::http::bind(cfg.listen).await?;
    let limits = common::engine::http::ServerLimits::from_edge(&cfg.edge)?;
    command::run(app, listener, limits, token, cfg.telemetry.shutdown_timeout).await
}
