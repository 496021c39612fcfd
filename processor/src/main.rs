use clap::Parser;
use processor::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = Config::parse();
    let metrics = common::telemetry::init("processor", &cfg.telemetry);
    let token = common::shutdown::on_signals();
    let ops = common::http::bind(cfg.ops_listen).await?;
    let limit = cfg.telemetry.shutdown_timeout;
    let run = processor::run(cfg, metrics, ops, token.clone());
    common::shutdown::bounded(run, token, limit).await
}
