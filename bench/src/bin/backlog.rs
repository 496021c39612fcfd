//! Writes exactly N valid events straight to the events topic, as the command
//! would have: the same Avro record (`analytics::wire::encode_event`), the same
//! key (the user id) and the same idempotent `acks=all`, `murmur2_random`
//! producer (`common::engine::kafka::producer_config`). Only the batching differs
//! (a longer linger and a larger queue), so the backlog is written fast.
//!
//! Event times: 80 % the current hour, 20 % the `--late-hours` hours before it;
//! users: the skewed 1M pool of the POST workload. The broker and topic come
//! from the command's own configuration (`KAFKA_BROKERS`, `EVENTS_TOPIC`).
//! Prints JSON.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use clap::Parser;
use common::engine::kafka::ProducerTuning;
use futures::StreamExt;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

/// Writes a backlog of events to the events topic.
#[derive(Debug, Parser)]
struct Args {
    /// Events to write.
    #[arg(default_value = "1000000")]
    events: usize,
    /// Hours before the current one that late events fall into.
    #[arg(long, default_value = "3")]
    late_hours: u32,
    /// Sends awaited at most at once.
    #[arg(long, default_value = "100000")]
    window: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (cmd, workloads) = platform::command().try_parse_from::<command::Config, _, _>(["command"])?;
    let analytics = workloads.iter().find(|w| w.name() == "analytics").expect("analytics is listed");
    let topic = analytics.topics().events;
    let tuning = ProducerTuning {
        linger: Duration::from_millis(20),
        delivery_timeout: Duration::from_secs(120),
        queue_max_messages: 1_000_000,
    };
    let producer: FutureProducer = common::engine::kafka::producer_config(&cmd.kafka, "bench-backlog", tuning)
        .set("batch.size", "1000000")
        .create()?;
    let topic = topic.as_str();
    let mut rng = rand::rng();
    let mut users = HashSet::new();
    let mut pending = futures::stream::FuturesUnordered::new();
    let started = Instant::now();
    for _ in 0..args.events {
        let event = bench::backlog_event(&mut rng, common::now_ms(), args.late_hours);
        users.insert(event.user.hash64());
        let payload = analytics::wire::encode_event(&event);
        let p = producer.clone();
        pending.push(async move {
            let record = FutureRecord::to(topic).key(event.user.as_str()).payload(&payload);
            p.send(record, Timeout::After(Duration::from_secs(60))).await.map(|_| ()).map_err(|(e, _)| e)
        });
        if pending.len() >= args.window {
            pending.next().await.transpose()?;
        }
    }
    while let Some(r) = pending.next().await {
        r?;
    }
    let secs = started.elapsed().as_secs_f64();
    let out = serde_json::json!({
        "backlog_events": args.events,
        "backlog_write_seconds": bench::json_num(secs),
        "backlog_write_events_per_sec": bench::json_num(args.events as f64 / secs),
        "backlog_distinct_users": users.len(),
        "backlog_hours": args.late_hours + 1,
    });
    println!("{out}");
    Ok(())
}
