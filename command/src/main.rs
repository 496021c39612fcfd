use clap::Parser;
use command::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = Config::parse();
    let metrics = common::telemetry::init("command", &cfg.telemetry);
    let token = common::shutdown::on_signals();
    let app = command::build(&cfg, metrics, common::now_ms).await?;
    let listener = common::http::bind(cfg.listen).await?;
    let limits = common::http::ServerLimits::from_edge(&cfg.edge)?;
    command::run(app, listener, limits, token, cfg.telemetry.shutdown_timeout).await
}
