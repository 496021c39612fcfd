//! Staleness of the increments read model while the load runs: POST an
//! increment to a probe key nothing else writes, then GET until the sum shows
//! it. Prints JSON with p50/p99 in ms (from the POST's 200 to the GET that
//! reflects it).
//!
//! With `--processor-metrics`, it also samples the processor's input lag on
//! the increments topic while it probes (the sum over partitions of
//! `analytics_processor_consumer_lag_messages`, a gauge the processor
//! refreshes every 5 s), so that the report can say whether the staleness
//! tail waits for the processor's input or for a later stage; `make bench`
//! scrapes the stages' `_input_age_seconds` histograms around the probe
//! (docs/benchmarks.md, "POST /increment").

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bench::{json_num, quantile, sorted_ms};
use common::test_util::{http, http_body};
use increments::IncrementRow;

/// How often the processor's lag gauge is sampled.
const LAG_SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// The lag gauge's series counted: those of a topic whose name holds this (`increments.events`, or an isolated
/// stack's suffixed copy).
const LAG_TOPIC: &str = "increments";
const LAG_GAUGE: &str = "analytics_processor_consumer_lag_messages";

#[derive(Debug, clap::Parser)]
struct Args {
    #[command(flatten)]
    probe: bench::Probe,
    /// The processor's metrics endpoint: its increments lag is sampled while the probe runs.
    #[arg(long)]
    processor_metrics: Option<SocketAddr>,
}

async fn sum(query: SocketAddr, key: &str) -> Option<i128> {
    let (status, body) = http(query, "GET", &format!("/increment/{key}")).await.ok()?;
    (status == 200).then(|| IncrementRow::from_json(body.as_bytes()).ok().map(|r| r.sum))?
}

/// The processor's lag on the increments topic (records, summed over partitions), `None` if unreachable.
async fn processor_lag(metrics: SocketAddr) -> Option<f64> {
    let (status, body) = http(metrics, "GET", "/metrics").await.ok()?;
    (status == 200)
        .then(|| body.lines().filter(|l| is_lag_of(l)).filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok()).sum())
}

/// A line of the lag gauge for a topic whose name contains [`LAG_TOPIC`].
fn is_lag_of(line: &str) -> bool {
    let Some(labels) = line.strip_prefix(LAG_GAUGE).and_then(|l| l.strip_prefix('{')) else { return false };
    labels.split(',').any(|label| label.strip_prefix("topic=\"").is_some_and(|topic| topic.contains(LAG_TOPIC)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Args { probe: bench::Probe { secs, command, query }, processor_metrics } = clap::Parser::parse();
    // A key outside the load's pool (which ends in 0..100k), new for every run.
    let key = format!("ffffffff-0000-4000-8000-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
    let (mut samples, mut expected) = (Vec::new(), 0i128);
    let end = Instant::now() + Duration::from_secs(secs);
    // The lag sampler: beside the probing, until its end.
    let lags = tokio::spawn(async move {
        let mut lags = Vec::new();
        let Some(metrics) = processor_metrics else { return lags };
        while Instant::now() < end {
            lags.extend(processor_lag(metrics).await);
            tokio::time::sleep(LAG_SAMPLE_EVERY).await;
        }
        lags
    });
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
    let mut lags = lags.await?;
    lags.sort_by(f64::total_cmp);
    let out = serde_json::json!({
        "increment_staleness_samples": ms.len(),
        "increment_staleness_p50_ms": json_num(quantile(&ms, 0.5)),
        "increment_staleness_p99_ms": json_num(quantile(&ms, 0.99)),
        "increment_staleness_max_ms": json_num(quantile(&ms, 1.0)),
        "increment_processor_lag_samples": lags.len(),
        "increment_processor_lag_p50": json_num(quantile(&lags, 0.5)),
        "increment_processor_lag_max": json_num(quantile(&lags, 1.0)),
    });
    println!("{out}");
    Ok(())
}
