// tier: unit
//! Settings the command refuses at startup, before it connects to anything.

fn fixed_clock() -> i64 {
    1_900_000_000_000
}

#[tokio::test]
async fn a_request_timeout_shorter_than_delivery_is_refused_at_startup() {
    let (cfg, workloads) = platform::parse::command([
        "command",
        "--request-timeout",
        "2s",
        "--delivery-timeout",
        "5s",
        "--create-topics",
        "false",
    ]);
    let err = command::build(&cfg, &workloads, common::engine::telemetry::prometheus(), fixed_clock)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("--request-timeout"), "{err}");
}
