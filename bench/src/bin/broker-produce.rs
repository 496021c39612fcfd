//! The broker's raw produce rate with rdkafka: idempotent, acks=all, 100-byte
//! messages to a fresh topic (deleted afterwards). Prints JSON.

use std::time::{Duration, Instant};

use common::engine::kafka::BROKER_DEFAULT_REPLICATION;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let topic = format!("bench-produce-{}", common::random_suffix());
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", &brokers).create()?;
    admin.create_topics(&[NewTopic::new(&topic, 4, BROKER_DEFAULT_REPLICATION)], &AdminOptions::new()).await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let payload = vec![b'x'; 100];
    let started = Instant::now();
    let mut pending = futures::stream::FuturesUnordered::new();
    use futures::StreamExt;
    for i in 0..n {
        let key = format!("k{}", i % 10_000);
        let p = producer.clone();
        let (payload, topic) = (payload.clone(), topic.clone());
        pending.push(async move {
            p.send(FutureRecord::to(&topic).key(&key).payload(&payload), Duration::from_secs(30)).await.map(|_| ())
        });
        if pending.len() >= 50_000 {
            pending.next().await.transpose().map_err(|(e, _)| e)?;
        }
    }
    while let Some(r) = pending.next().await {
        r.map_err(|(e, _)| e)?;
    }
    let secs = started.elapsed().as_secs_f64();
    let _ = admin.delete_topics(&[&topic], &AdminOptions::new()).await;
    println!("{{\"broker_produce_msgs_per_sec\": {:.0}, \"broker_produce_messages\": {n}}}", n as f64 / secs);
    Ok(())
}
