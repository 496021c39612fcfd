//! The closed-loop broker ceiling for POST: what the command could reach if
//! it added nothing to the broker's acknowledgement.
//!
//! `--in-flight N` loops each send one event and await its `acks=all`
//! acknowledgement before sending the next, like N keep-alive connections of
//! wrk against a command that does no work. The producer is the command's:
//! `common::engine::kafka::producer_config` with the command's own tuning
//! (`COMMAND_LINGER`, `COMMAND_DELIVERY_TIMEOUT`, `COMMAND_QUEUE_MAX_MESSAGES`,
//! `COMMAND_PRODUCERS`, read through `command::Config`), the same Avro record
//! and key, a zero queue timeout. It writes to a fresh topic with the events
//! topic's partition count (deleted afterwards), so the pipeline sees nothing.
//! Prints JSON: `post_closed_loop_ceiling_rps_<N>` and the send latencies.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use common::engine::kafka::BROKER_DEFAULT_REPLICATION;
use rand::SeedableRng;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;

/// Closed-loop produce: N sends in flight, each awaited before the next.
#[derive(Debug, Parser)]
struct Args {
    /// Sends in flight (the "connections").
    #[arg(long, default_value = "64")]
    in_flight: usize,
    /// How long to measure (after a warm-up).
    #[arg(long, default_value = "30s", value_parser = common::engine::config::parse_duration)]
    duration: Duration,
    /// Not measured: lets the producer learn the new topic's leaders.
    #[arg(long, default_value = "2s", value_parser = common::engine::config::parse_duration)]
    warm_up: Duration,
}

/// What one loop saw inside the measured window.
#[derive(Default)]
struct LoopStats {
    latencies_secs: Vec<f64>,
    errors: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cmd = command::Config::try_parse_from(["command"])?;
    let topic = format!("bench-closed-loop-{}", common::random_suffix());
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &cmd.kafka.brokers).create()?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let partitions = cmd.partitions.events_partitions.get() as i32;
    for r in admin.create_topics(&[NewTopic::new(&topic, partitions, BROKER_DEFAULT_REPLICATION)], &opts).await? {
        r.map_err(|(t, code)| anyhow::anyhow!("creating topic {t}: {code:?}"))?;
    }
    let producers: Arc<Vec<FutureProducer>> = Arc::new(
        (0..cmd.producers.get())
            .map(|i| {
                common::engine::kafka::producer_config(
                    &cmd.kafka,
                    &format!("bench-closed-loop-{i}"),
                    cmd.producer_tuning(false),
                )
                .create()
            })
            .collect::<Result<_, _>>()?,
    );
    let measure_from = Instant::now() + args.warm_up;
    let end = measure_from + args.duration;
    let loops: Vec<_> = (0..args.in_flight)
        .map(|i| {
            let (producers, topic) = (producers.clone(), topic.clone());
            tokio::spawn(async move {
                let producer = &producers[i % producers.len()];
                let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
                let mut stats = LoopStats::default();
                loop {
                    let started = Instant::now();
                    if started >= end {
                        return stats;
                    }
                    let event = bench::backlog_event(&mut rng, common::now_ms(), 0);
                    let payload = analytics::wire::encode_event(&event);
                    let record = FutureRecord::to(&topic).key(event.user.as_str()).payload(&payload);
                    let result = producer.send(record, Timeout::After(Duration::ZERO)).await;
                    let done = Instant::now();
                    if started < measure_from || done > end {
                        continue;
                    }
                    match result {
                        Ok(_) => stats.latencies_secs.push((done - started).as_secs_f64()),
                        Err(_) => stats.errors += 1,
                    }
                }
            })
        })
        .collect();
    let mut all = LoopStats::default();
    for l in loops {
        let s = l.await?;
        all.latencies_secs.extend(s.latencies_secs);
        all.errors += s.errors;
    }
    let _ = admin.delete_topics(&[&topic], &opts).await;
    let acked = all.latencies_secs.len();
    let ms = bench::sorted_ms(all.latencies_secs);
    let n = args.in_flight;
    let mut out = serde_json::Map::new();
    let mut put = |k: String, v: serde_json::Value| out.insert(k, v);
    put(format!("post_closed_loop_ceiling_rps_{n}"), bench::json_num(acked as f64 / args.duration.as_secs_f64()));
    put(format!("post_closed_loop_p50_ms_{n}"), bench::json_num(bench::quantile(&ms, 0.5)));
    put(format!("post_closed_loop_p99_ms_{n}"), bench::json_num(bench::quantile(&ms, 0.99)));
    put(format!("post_closed_loop_p999_ms_{n}"), bench::json_num(bench::quantile(&ms, 0.999)));
    put(format!("post_closed_loop_errors_{n}"), all.errors.into());
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}
