//! The live side under measurement, against a running stack:
//!
//! - the read-your-writes round trip: POST, then `GET /analytics?..&after=<token>`
//!   that must reflect it, sequentially (`--token-tries`);
//! - the SSE fan-out: `--streams` open `GET /analytics/live` streams, then
//!   `--rounds` POSTs, each timed until every stream has shown it.
//!
//! Prints one JSON object with p50/p99/max in ms.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bench::{quantile, sorted_ms};
use clap::Parser;
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
}

async fn post(command: SocketAddr, user: &str) -> anyhow::Result<String> {
    let path = format!("/analytics?timestamp={}&user={user}&click", common::now_ms());
    let answer = request(command, "POST", &path, &[]).await?;
    anyhow::ensure!(answer.status == 204, "POST answered {}: {}", answer.status, answer.body);
    answer.header("analytics-token").map(str::to_owned).ok_or_else(|| anyhow::anyhow!("no token"))
}

fn summary(name: &str, secs: Vec<f64>) -> String {
    let ms = sorted_ms(secs);
    format!(
        "\"{name}_samples\": {}, \"{name}_p50_ms\": {:.1}, \"{name}_p99_ms\": {:.1}, \"{name}_max_ms\": {:.1}",
        ms.len(),
        quantile(&ms, 0.5),
        quantile(&ms, 0.99),
        ms.last().copied().unwrap_or(f64::NAN)
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bearer = args.read_token.as_ref().map(|t| format!("Bearer {t}"));
    let auth: Vec<(&str, &str)> = bearer.iter().map(|b| ("Authorization", b.as_str())).collect();
    let tag = common::random_suffix();

    let mut round_trips = Vec::new();
    for i in 0..args.token_tries {
        let started = Instant::now();
        let token = post(args.command, &format!("rt-{tag}-{i}")).await?;
        let path = format!("/analytics?timestamp={}&after={token}&wait_ms=10000", common::now_ms());
        let answer = request(args.query, "GET", &path, &auth).await?;
        anyhow::ensure!(answer.status == 200, "GET after answered {}: {}", answer.status, answer.body);
        round_trips.push(started.elapsed().as_secs_f64());
    }

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
    let open_secs = opened.elapsed().as_secs_f64();
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

    let (mut first, mut all, mut each) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..args.rounds {
        tokio::time::sleep(Duration::from_millis(300)).await;
        while seen_rx.try_recv().is_ok() {} // a refresh between rounds (a new hour) is not this round's
        let posted = Instant::now();
        post(args.command, &format!("live-{tag}-{r}")).await?;
        let mut pending: std::collections::HashSet<usize> = (0..args.streams).collect();
        let deadline = posted + Duration::from_secs(10);
        while !pending.is_empty() {
            let Ok(Some((i, at))) = tokio::time::timeout_at(deadline.into(), seen_rx.recv()).await else {
                anyhow::bail!("round {r}: {} streams did not see the POST within 10 s", pending.len());
            };
            if pending.remove(&i) {
                let secs = (at - posted).as_secs_f64();
                if pending.len() == args.streams - 1 {
                    first.push(secs);
                }
                each.push(secs);
                if pending.is_empty() {
                    all.push(secs);
                }
            }
        }
    }
    println!(
        "{{{}, \"streams\": {}, \"streams_open_s\": {:.2}, {}, {}, {}}}",
        summary("token_round_trip", round_trips),
        args.streams,
        open_secs,
        summary("sse_post_to_first_stream", first),
        summary("sse_post_to_all_streams", all),
        summary("sse_post_to_each_stream", each),
    );
    Ok(())
}
