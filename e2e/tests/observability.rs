//! Every service exposes Prometheus metrics that a real Prometheus (Debian's
//! package, as `make observe` runs it) scrapes and answers queries about.

use std::process::{Command, Stdio};
use std::time::Duration;

use common::test_util::http;
use e2e::{free_port, post_all, Event, Kind, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_scrapes_a_metric_from_each_service() {
    let mut stack = Stack::new();
    stack.start_all().await;
    post_all(
        stack.addr("command"),
        &[Event { timestamp_ms: common::now_ms(), user: "m".into(), kind: Kind::Click }],
        1,
    )
    .await;
    let _ = http(stack.addr("query"), "GET", &format!("/analytics?timestamp={}", common::now_ms())).await;

    let dir = stack.log_dir().join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let targets: Vec<String> =
        ["command", "processor", "materializer", "query"].iter().map(|s| format!("'{}'", stack.addr(s))).collect();
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: analytics\n    static_configs:\n      - targets: [{}]\n",
        targets.join(", ")
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let port = free_port();
    let mut prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus is installed (scripts/stack.sh prometheus-deps)");
    let api: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // One metric that only each service exports, plus the shared build info.
    let wanted = [
        "analytics_command_events_accepted_total",
        "analytics_processor_events_applied_total",
        "analytics_materializer_batches_total",
        "analytics_query_reads_total",
    ];
    let mut missing: Vec<&str> = wanted.to_vec();
    for _ in 0..120 {
        let mut still = Vec::new();
        for metric in &missing {
            let found = http(api, "GET", &format!("/api/v1/query?query={metric}")).await.is_ok_and(|(status, body)| {
                status == 200 && body.contains("\"status\":\"success\"") && body.contains(metric)
            });
            if !found {
                still.push(*metric);
            }
        }
        missing = still;
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (_, build) = http(api, "GET", "/api/v1/query?query=count(analytics_build_info)").await.unwrap_or_default();
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    assert!(missing.is_empty(), "Prometheus never saw {missing:?}");
    assert!(build.contains("\"4\""), "four services report build info: {build}");
    stack.cleanup().await;
}
