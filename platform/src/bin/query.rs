use clap::Parser;
use query::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = Config::parse();
    let metrics = common::engine::telemetry::init("query", &cfg.telemetry);
    let token = common::engine::shutdown::on_signals();
    let app = query::build(&cfg, metrics).await?;
    let listener = common::engine::http::bind(cfg.listen).await?;
    let limits = common::engine::http::ServerLimits::from_edge(&cfg.edge)?;
    query::run(app, listener, limits, token, cfg.telemetry.shutdown_timeout).await
}
