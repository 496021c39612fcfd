//! Staleness of the increments read model while the load runs: POST an
//! increment to a probe key nothing else writes, then GET until the sum shows
//! it. Prints JSON with p50/p99 in ms (from the POST's 200 to the GET that
//! reflects it).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bench::{json_num, quantile, sorted_ms};
use common::test_util::{http, http_body};
use increments::IncrementRow;

async fn sum(query: SocketAddr, key: &str) -> Option<i128> {
    let (status, body) = http(query, "GET", &format!("/increment/{key}")).await.ok()?;
    (status == 200).then(|| IncrementRow::from_json(body.as_bytes()).ok().map(|r| r.sum))?
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let secs: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20);
    let command: SocketAddr = "127.0.0.1:8081".parse()?;
    let query: SocketAddr = "127.0.0.1:8082".parse()?;
    // A key outside the load's pool (which ends in 0..100k), new for every run.
    let key = format!("ffffffff-0000-4000-8000-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
    let (mut samples, mut expected) = (Vec::new(), 0i128);
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        let body = format!(r#"{{"key":"{key}","value":1}}"#);
        match http_body(command, "POST", "/increment", Some("application/json"), body.as_bytes()).await {
            Ok((200, _)) => expected += 1,
            _ => continue,
        }
        let accepted = Instant::now();
        loop {
            if sum(query, &key).await.is_some_and(|s| s >= expected) {
                samples.push(accepted.elapsed().as_secs_f64());
                break;
            }
            if accepted.elapsed() > Duration::from_secs(10) {
                samples.push(10.0);
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ms = sorted_ms(samples);
    let out = serde_json::json!({
        "increment_staleness_samples": ms.len(),
        "increment_staleness_p50_ms": json_num(quantile(&ms, 0.5)),
        "increment_staleness_p99_ms": json_num(quantile(&ms, 0.99)),
        "increment_staleness_max_ms": json_num(quantile(&ms, 1.0)),
    });
    println!("{out}");
    Ok(())
}
