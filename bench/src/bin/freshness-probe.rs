//! Freshness while the load runs: POST an event for a new user in a probe
//! hour nothing else writes to, then GET until that hour shows one more
//! unique user. Prints JSON with p50/p99 in ms.
//!
//! Each sample also places its event on the broker's clock: the POST's read
//! token names the record (partition, offset), and once the probing is over
//! the probe reads those records' log-append times back from the events
//! topic, so that "appended → POST answered" and "appended → seen by a GET"
//! share their origin with the engine's `_input_age_seconds` histograms
//! (which `make bench` scrapes around this probe: docs/benchmarks.md, "Freshness").

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use common::engine::progress::{ReadToken, TOKEN_HEADER};
use common::test_util::http;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, Timestamp};
use rdkafka::{Offset, TopicPartitionList};

/// How long the probe waits for one record of the events topic when it reads the log-append times back.
const READ_BACK_WAIT: Duration = Duration::from_secs(5);

async fn unique_users(query: SocketAddr, ts: i64) -> Option<u64> {
    let (status, body) = http(query, "GET", &format!("/analytics?timestamp={ts}")).await.ok()?;
    (status == 200).then(|| body.lines().next()?.split_once(',')?.1.parse().ok())?
}

/// A POST on a fresh connection: its status and its read token, if it carried one.
async fn post(addr: SocketAddr, path: &str) -> std::io::Result<(u16, Option<ReadToken>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("POST {path} HTTP/1.1\r\nHost: probe\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let head = text.split_once("\r\n\r\n").map_or(&*text, |(h, _)| h);
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let token = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim().eq_ignore_ascii_case(TOKEN_HEADER).then(|| ReadToken::parse(value.trim()).ok())?
    });
    Ok((status, token))
}

/// Wall-clock milliseconds (fractional), the clock the broker stamps log-append times with.
fn wall_ms() -> f64 {
    SystemTime::UNIX_EPOCH.elapsed().map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// One probe event: where it went, when the POST was answered and when a GET first showed it.
struct Sample {
    token: Option<ReadToken>,
    answered_ms: f64,
    seen_ms: Option<f64>,
}

/// The log-append time (ms) of each token's record, read back from the events topic, one seek each; `None` where
/// the record was not found in [`READ_BACK_WAIT`] or the topic does not stamp log-append times.
fn appended_at(brokers: &str, tokens: &[Option<ReadToken>]) -> anyhow::Result<Vec<Option<i64>>> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench-freshness-probe")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let mut out = Vec::with_capacity(tokens.len());
    for token in tokens {
        let Some(t) = token else {
            out.push(None);
            continue;
        };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&t.topic, t.partition, Offset::Offset(t.offset))?;
        consumer.assign(&tpl)?;
        let deadline = Instant::now() + READ_BACK_WAIT;
        let mut found = None;
        while found.is_none() && Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) if m.partition() == t.partition && m.offset() == t.offset => {
                    found = Some(match m.timestamp() {
                        Timestamp::LogAppendTime(ms) => Some(ms),
                        _ => None,
                    });
                }
                _ => {}
            }
        }
        out.push(found.flatten());
    }
    Ok(out)
}

/// The p-quantile (nearest rank) of sorted values, NaN when there are none.
fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted.get(((sorted.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(f64::NAN)
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// Probes freshness while a load runs.
#[derive(Debug, clap::Parser)]
struct Args {
    #[command(flatten)]
    probe: bench::Probe,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Args { probe: bench::Probe { secs, command, query } } = clap::Parser::parse();
    // The brokers as the command is configured (KAFKA_BROKERS), to read the probe's records back.
    let (cmd, _) = platform::command().try_parse_from::<command::Config, _, _>(["command"])?;
    // An hour ~5 days back: inside the horizon, outside the load's hours with high probability of no overlap.
    let now = common::now_ms();
    let probe_ts = (now - 5 * 86_400_000 - 1_800_000) / 3_600_000 * 3_600_000 + 1_234_567;
    let tag = common::random_suffix();
    let mut samples = Vec::new();
    let mut probes = Vec::new();
    let end = Instant::now() + Duration::from_secs(secs);
    let mut i = 0;
    while Instant::now() < end {
        let before = unique_users(query, probe_ts).await.unwrap_or(0);
        let path = format!("/analytics?timestamp={probe_ts}&user=probe-{tag}-{i}&click");
        i += 1;
        let token = match post(command, &path).await {
            Ok((204, token)) => token,
            _ => continue,
        };
        let accepted = Instant::now();
        let mut probe = Sample { token, answered_ms: wall_ms(), seen_ms: None };
        loop {
            if unique_users(query, probe_ts).await.is_some_and(|u| u > before) {
                probe.seen_ms = Some(wall_ms());
                samples.push(accepted.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            if accepted.elapsed() > Duration::from_secs(10) {
                samples.push(10_000.0);
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        probes.push(probe);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let samples = sorted(samples);
    // The broker's side, read back once the probing (and its load) is over.
    let tokens: Vec<Option<ReadToken>> = probes.iter_mut().map(|p| p.token.take()).collect();
    let brokers = cmd.kafka.brokers.clone();
    let appended = tokio::task::spawn_blocking(move || appended_at(&brokers, &tokens)).await??;
    let placed: Vec<(f64, &Sample)> =
        appended.iter().zip(&probes).filter_map(|(a, p)| a.map(|a| (a as f64, p))).collect();
    let answered = sorted(placed.iter().map(|(a, p)| p.answered_ms - a).collect());
    let seen = sorted(placed.iter().map(|(a, p)| p.seen_ms.map_or(10_000.0, |s| s - a)).collect());
    let out = serde_json::json!({
        "freshness_samples": samples.len(),
        "freshness_p50_ms": bench::json_num(pct(&samples, 0.5)),
        "freshness_p99_ms": bench::json_num(pct(&samples, 0.99)),
        "freshness_max_ms": bench::json_num(pct(&samples, 1.0)),
        "freshness_appended_samples": placed.len(),
        "freshness_appended_to_answered_p50_ms": bench::json_num(pct(&answered, 0.5)),
        "freshness_appended_to_answered_p99_ms": bench::json_num(pct(&answered, 0.99)),
        "freshness_appended_to_seen_p50_ms": bench::json_num(pct(&seen, 0.5)),
        "freshness_appended_to_seen_p99_ms": bench::json_num(pct(&seen, 0.99)),
    });
    println!("{out}");
    Ok(())
}
