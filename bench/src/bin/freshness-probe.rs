//! Freshness while the load runs: POST an event for a new user in a probe
//! hour nothing else writes to, then GET until that hour shows one more
//! unique user. Prints JSON with p50/p99 in ms.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::test_util::http;

async fn unique_users(query: SocketAddr, ts: i64) -> Option<u64> {
    let (status, body) = http(query, "GET", &format!("/analytics?timestamp={ts}")).await.ok()?;
    (status == 200).then(|| body.lines().next()?.split_once(',')?.1.parse().ok())?
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let secs: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20);
    let command: SocketAddr = "127.0.0.1:8081".parse()?;
    let query: SocketAddr = "127.0.0.1:8082".parse()?;
    // An hour ~5 days back: inside the horizon, outside the load's hours with high probability of no overlap.
    let now = common::now_ms();
    let probe_ts = (now - 5 * 86_400_000 - 1_800_000) / 3_600_000 * 3_600_000 + 1_234_567;
    let tag = common::random_suffix();
    let mut samples = Vec::new();
    let end = Instant::now() + Duration::from_secs(secs);
    let mut i = 0;
    while Instant::now() < end {
        let before = unique_users(query, probe_ts).await.unwrap_or(0);
        let path = format!("/analytics?timestamp={probe_ts}&user=probe-{tag}-{i}&click");
        i += 1;
        match http(command, "POST", &path).await {
            Ok((204, _)) => {}
            _ => continue,
        }
        let accepted = Instant::now();
        loop {
            if unique_users(query, probe_ts).await.is_some_and(|u| u > before) {
                samples.push(accepted.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            if accepted.elapsed() > Duration::from_secs(10) {
                samples.push(10_000.0);
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| samples.get(((samples.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(f64::NAN);
    println!(
        "{{\"freshness_samples\": {}, \"freshness_p50_ms\": {:.1}, \"freshness_p99_ms\": {:.1}, \"freshness_max_ms\": {:.1}}}",
        samples.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    Ok(())
}
