//! The materializer: every listed workload's aggregates → its read models.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (cfg, workloads) = platform::materializer().parse::<materializer::Config>();
    let token = common::engine::shutdown::on_signals();
    let metrics = common::engine::telemetry::init("materializer", &cfg.telemetry, &token);
    let ops = common::engine::http::bind(cfg.ops_listen).await?;
    let limit = cfg.telemetry.shutdown_timeout;
    let run = materializer::run(cfg, &workloads, metrics, ops, token.clone());
    common::engine::shutdown::bounded(run, token, limit).await
}
