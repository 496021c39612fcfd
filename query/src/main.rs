use clap::Parser;
use query::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = Config::parse();
    let metrics = common::telemetry::init("query", &cfg.telemetry);
    let token = common::shutdown::on_signals();
    let app = query::build(&cfg, metrics).await?;
    let listener = common::http::bind(cfg.listen).await?;
    let limits = common::http::ServerLimits::from_edge(&cfg.edge)?;
    query::run(app, listener, limits, token, cfg.telemetry.shutdown_timeout).await
}
