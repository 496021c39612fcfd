//! The processor: every listed workload's events → its aggregates.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (cfg, workloads) = platform::processor().parse::<processor::Config>();
    let token = common::engine::shutdown::on_signals();
    let metrics = common::engine::telemetry::init("processor", &cfg.telemetry, &token);
    let ops = common::engine::http::bind(cfg.ops_listen).await?;
    let limit = cfg.telemetry.shutdown_timeout;
    let run = processor::run(cfg, &workloads, metrics, ops, token.clone());
    common::engine::shutdown::bounded(run, token, limit).await
}
