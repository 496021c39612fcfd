//! A rate-limited POST load (what wrk2 does; Debian has no wrk2): `--rate`
//! requests per second in total over `--connections` keep-alive connections,
//! the workload of `bench/wrk/post.lua`.
//!
//! Each connection has its own fixed schedule (every `connections / rate`
//! seconds, staggered); a connection that falls behind sends at once. Latency
//! is measured from the scheduled send time, so a stall is not hidden
//! (no coordinated omission). Prints the JSON line of `bench/wrk/common.lua`
//! plus `target_rps`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rand::SeedableRng;
use tokio::time::Instant;

/// POST /analytics at a fixed total rate.
#[derive(Debug, Parser)]
struct Args {
    /// Requests per second, all connections together.
    #[arg(long)]
    rate: f64,
    #[arg(long, default_value = "256")]
    connections: usize,
    #[arg(long, default_value = "30s", value_parser = common::engine::config::parse_duration)]
    duration: Duration,
    /// The command service.
    #[arg(long, default_value = "127.0.0.1:8081")]
    target: SocketAddr,
}

#[derive(Default)]
struct ConnStats {
    latencies_secs: Vec<f64>,
    non_2xx: u64,
    socket_errors: u64,
}

async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One POST on `sender`: its status, or an error if the connection failed.
async fn post(sender: &mut SendRequest<Empty<Bytes>>, path: &str) -> anyhow::Result<u16> {
    sender.ready().await?;
    let req = hyper::Request::post(path).header(hyper::header::HOST, "bench").body(Empty::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await?;
    Ok(status)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.rate > 0.0 && args.connections > 0, "--rate and --connections must be positive");
    let interval = Duration::from_secs_f64(args.connections as f64 / args.rate);
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + args.duration;
    let conns: Vec<_> = (0..args.connections)
        .map(|i| {
            let first = start + interval.mul_f64(i as f64 / args.connections as f64);
            tokio::spawn(async move {
                let mut stats = ConnStats::default();
                let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
                let mut sender = None;
                let mut due = first;
                while due < end {
                    tokio::time::sleep_until(due).await;
                    let s = match sender.as_mut() {
                        Some(s) => s,
                        None => match connect(args.target).await {
                            Ok(s) => sender.insert(s),
                            Err(_) => {
                                stats.socket_errors += 1;
                                due += interval;
                                continue;
                            }
                        },
                    };
                    let path = bench::post_path(&mut rng, common::now_ms());
                    match post(s, &path).await {
                        Ok(status) => {
                            let now = Instant::now();
                            if now <= end {
                                stats.latencies_secs.push((now - due).as_secs_f64());
                                stats.non_2xx += u64::from(!(200..300).contains(&status));
                            }
                        }
                        Err(_) => {
                            stats.socket_errors += 1;
                            sender = None;
                        }
                    }
                    due += interval;
                }
                stats
            })
        })
        .collect();
    let mut all = ConnStats::default();
    for c in conns {
        let s = c.await?;
        all.latencies_secs.extend(s.latencies_secs);
        all.non_2xx += s.non_2xx;
        all.socket_errors += s.socket_errors;
    }
    let requests = all.latencies_secs.len();
    let ms = bench::sorted_ms(all.latencies_secs);
    let out = serde_json::json!({
        "rps": bench::json_num(requests as f64 / args.duration.as_secs_f64()),
        "target_rps": bench::json_num(args.rate),
        "p50_ms": bench::json_num(bench::quantile(&ms, 0.5)),
        "p99_ms": bench::json_num(bench::quantile(&ms, 0.99)),
        "p999_ms": bench::json_num(bench::quantile(&ms, 0.999)),
        "socket_errors": all.socket_errors,
        "non_2xx": all.non_2xx,
        "requests": requests,
        "connections": args.connections,
    });
    println!("{out}");
    Ok(())
}
