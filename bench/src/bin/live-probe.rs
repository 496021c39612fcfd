//! The live side under measurement, against a running stack:
//!
//! - the read-your-writes round trip: POST, then `GET /analytics?..&after=<token>`
//!   of the POST's hour, sequentially (`--token-tries`); each answer is checked
//!   to count the event (its hour's clicks grew since the previous try);
//! - the SSE fan-out: `--streams` open `GET /analytics/live` streams, then
//!   `--rounds` POSTs, each timed until every stream has shown it: from the
//!   POST, and from the change reaching the read model (the materializer's
//!   change notification on Redis that the query re-rendered on).
//!
//! Prints one JSON object on one line, p50/p99/max in ms (null without samples).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use analytics::HourStart;
use bench::{json_num, quantile, sorted_ms};
use clap::Parser;
use common::engine::config::RedisConfig;
use common::engine::store::cache::RedisStore;
use common::test_util::{request, SseClient};
use futures::StreamExt;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8081")]
    command: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:8082")]
    query: SocketAddr,
    /// Sequential POST → GET after=token round trips.
    #[arg(long, default_value = "200")]
    token_tries: usize,
    /// Open SSE streams.
    #[arg(long, default_value = "1000")]
    streams: usize,
    /// POSTs timed through all streams.
    #[arg(long, default_value = "10")]
    rounds: usize,
    /// Bearer token for reads, if the query needs one.
    #[arg(long)]
    read_token: Option<String>,
    /// The Redis the materializer announces changes on (as the query service reads it).
    #[command(flatten)]
    redis: RedisConfig,
}

/// The analytics workload's name (its materializer workload's `NAME`), as published on the changes channel.
const WORKLOAD: &[u8] = b"analytics";

async fn post(command: SocketAddr, timestamp_ms: i64, user: &str) -> anyhow::Result<String> {
    let path = format!("/analytics?timestamp={timestamp_ms}&user={user}&click");
    let answer = request(command, "POST", &path, &[]).await?;
    anyhow::ensure!(answer.status == 204, "POST answered {}: {}", answer.status, answer.body);
    answer.header("analytics-token").map(str::to_owned).ok_or_else(|| anyhow::anyhow!("no token"))
}

/// `<name>_{samples,p50_ms,p99_ms,max_ms}` into `out`.
fn summary(out: &mut serde_json::Map<String, serde_json::Value>, name: &str, secs: Vec<f64>) {
    let ms = sorted_ms(secs);
    out.insert(format!("{name}_samples"), ms.len().into());
    out.insert(format!("{name}_p50_ms"), json_num(quantile(&ms, 0.5)));
    out.insert(format!("{name}_p99_ms"), json_num(quantile(&ms, 0.99)));
    out.insert(format!("{name}_max_ms"), json_num(ms.last().copied().unwrap_or(f64::NAN)));
}

/// The clicks of a `GET /analytics` CSV answer.
fn clicks(csv: &str) -> Option<u64> {
    csv.lines().find_map(|l| l.strip_prefix("clicks,")).and_then(|n| n.trim().parse().ok())
}

/// Forwards the arrival time of every change notification of the workload.
async fn watch_changes(redis: &RedisConfig) -> anyhow::Result<tokio::sync::mpsc::UnboundedReceiver<Instant>> {
    let store = RedisStore::connect(redis).await?;
    let mut messages = store.subscribe_changes().await?.into_on_message();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(msg) = messages.next().await {
            if msg.get_payload_bytes() == WORKLOAD && tx.send(Instant::now()).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bearer = args.read_token.as_ref().map(|t| format!("Bearer {t}"));
    let auth: Vec<(&str, &str)> = bearer.iter().map(|b| ("Authorization", b.as_str())).collect();
    let tag = common::random_suffix();
    let mut out = serde_json::Map::new();

    // Each try reads the hour it posted to; its clicks must have grown since
    // the previous try of that hour (only this probe writes while it runs).
    let (mut round_trips, mut not_reflected, mut timeouts) = (Vec::new(), 0u64, 0u64);
    let mut last: Option<(HourStart, u64)> = None;
    for i in 0..args.token_tries {
        let started = Instant::now();
        let ts = common::now_ms();
        let token = post(args.command, ts, &format!("rt-{tag}-{i}")).await?;
        let path = format!("/analytics?timestamp={ts}&after={token}&wait_ms=10000");
        let answer = request(args.query, "GET", &path, &auth).await?;
        let elapsed = started.elapsed().as_secs_f64();
        match answer.status {
            200 => round_trips.push(elapsed),
            503 => {
                timeouts += 1;
                continue;
            }
            status => anyhow::bail!("GET after answered {status}: {}", answer.body),
        }
        let hour = HourStart::of(ts);
        let seen = clicks(&answer.body).ok_or_else(|| anyhow::anyhow!("not an hour's CSV: {}", answer.body))?;
        let before = last.filter(|(h, _)| *h == hour).map_or(0, |(_, c)| c);
        if seen <= before {
            not_reflected += 1;
        }
        last = Some((hour, seen));
    }
    out.insert("token_tries".into(), args.token_tries.into());
    out.insert("token_not_reflected".into(), not_reflected.into());
    out.insert("token_timeouts".into(), timeouts.into());
    summary(&mut out, "token_round_trip", round_trips);

    // Open every stream and read its first event before timing anything.
    let opened = Instant::now();
    let streams: Vec<SseClient> = futures::stream::iter(0..args.streams)
        .map(|_| {
            let auth = auth.clone();
            async move {
                let mut s = SseClient::open(args.query, "/analytics/live", &auth).await?;
                anyhow::ensure!(s.status == 200, "live answered {}", s.status);
                s.next_data().await?.ok_or_else(|| anyhow::anyhow!("stream ended"))?;
                Ok(s)
            }
        })
        .buffer_unordered(100)
        .collect::<Vec<anyhow::Result<SseClient>>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    out.insert("streams".into(), args.streams.into());
    out.insert("streams_open_s".into(), json_num(opened.elapsed().as_secs_f64()));
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    for (i, mut s) in streams.into_iter().enumerate() {
        let seen = seen_tx.clone();
        tokio::spawn(async move {
            while let Ok(Some(_)) = s.next_data().await {
                if seen.send((i, Instant::now())).is_err() {
                    break;
                }
            }
        });
    }
    let mut changes = watch_changes(&args.redis).await?;

    let (mut first, mut all, mut each, mut from_change) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in 0..args.rounds {
        tokio::time::sleep(Duration::from_millis(300)).await;
        while seen_rx.try_recv().is_ok() {} // a refresh between rounds (a new hour) is not this round's
        while changes.try_recv().is_ok() {}
        let posted = Instant::now();
        post(args.command, common::now_ms(), &format!("live-{tag}-{r}")).await?;
        let mut pending: std::collections::HashSet<usize> = (0..args.streams).collect();
        let deadline = posted + Duration::from_secs(10);
        let mut first_at = posted;
        while !pending.is_empty() {
            let Ok(Some((i, at))) = tokio::time::timeout_at(deadline.into(), seen_rx.recv()).await else {
                anyhow::bail!("round {r}: {} streams did not see the POST within 10 s", pending.len());
            };
            if pending.remove(&i) {
                let secs = (at - posted).as_secs_f64();
                if pending.len() == args.streams - 1 {
                    first.push(secs);
                    first_at = at;
                }
                each.push(secs);
                if pending.is_empty() {
                    all.push(secs);
                    // The snapshot the streams got was rendered on the last
                    // notification before the first stream saw it (none: the
                    // 1 s refresh rendered it, and the round has no such sample).
                    let mut change_at = None;
                    while let Ok(c) = changes.try_recv() {
                        if c <= first_at {
                            change_at = Some(c);
                        }
                    }
                    if let Some(c) = change_at {
                        from_change.push((at - c).as_secs_f64());
                    }
                }
            }
        }
    }
    summary(&mut out, "sse_post_to_first_stream", first);
    summary(&mut out, "sse_post_to_all_streams", all);
    summary(&mut out, "sse_post_to_each_stream", each);
    summary(&mut out, "sse_change_to_all_streams", from_change);
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}
