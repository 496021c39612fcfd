//! Reads the hourly aggregates topic from the beginning and prints the totals of every hour.
//!
//! An example of a consumer outside the pipeline (see `docs/schemas.md`). It
//! does what the materializer does, in memory: per (hour, partition) it keeps
//! the record with the highest `input_offset`, then sums each hour over the
//! partitions. The sum is exact for unique users too, because the events are
//! partitioned by user: no user is counted in two partitions.
//!
//! ```text
//! cargo run -p common --example read_aggregates -- --idle-exit-secs 5
//! ```
//!
//! It assigns every partition itself (no consumer group, nothing committed),
//! so it can run beside the pipeline without taking part in it.

use std::collections::BTreeMap;
use std::time::Duration;

use analytics::wire::{decode_hour_aggregate, HourAggregate};
use analytics::{HourCounts, HourStart};
use anyhow::Context;
use clap::Parser;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::time::Instant;

/// Prints per-hour totals (summed over partitions) from the hourly aggregates topic.
#[derive(Parser)]
struct Args {
    /// Bootstrap brokers, comma-separated host:port.
    #[arg(long, value_name = "HOST:PORT,..", env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    kafka_brokers: String,
    /// The hourly aggregates topic.
    #[arg(long, value_name = "NAME", env = "AGGREGATES_TOPIC", default_value = "analytics.hourly-aggregates")]
    topic: String,
    /// Stop after this many seconds without a message.
    #[arg(long, value_name = "N", default_value = "3")]
    idle_exit_secs: u64,
}

/// What was read, for the summary line.
#[derive(Default)]
struct Tally {
    records: u64,
    superseded: u64,
    undecodable: u64,
    empty: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.kafka_brokers)
        .set("client.id", "read-aggregates-example")
        // librdkafka needs a group id to assign partitions, but this consumer never
        // joins the group: partitions are assigned by hand and nothing is committed.
        .set("group.id", "analytics-read-aggregates-example")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()
        .context("creating the consumer")?;

    let partitions = tokio::task::block_in_place(|| partitions_of(&consumer, &args.topic))?;
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment.add_partition_offset(&args.topic, p, Offset::Beginning)?;
    }
    consumer.assign(&assignment).context("assigning the partitions")?;
    eprintln!("reading {} ({partitions} partitions) from the beginning", args.topic);

    // One entry per record key, i.e. per (hour, events-topic partition).
    let mut latest: BTreeMap<(HourStart, i32), HourAggregate> = BTreeMap::new();
    let mut tally = Tally::default();
    let idle = Duration::from_secs(args.idle_exit_secs);
    let mut last_message = Instant::now();
    loop {
        // Errors do not reset the idle clock, so an unreachable broker still ends the run.
        let msg = match tokio::time::timeout_at(last_message + idle, consumer.recv()).await {
            Err(_) => break,
            Ok(Err(e)) => {
                eprintln!("consumer error: {e}");
                continue;
            }
            Ok(Ok(msg)) => msg,
        };
        last_message = Instant::now();
        tally.records += 1;
        // Read-your-writes progress marks (`progress:<partition>:<aggregates partition>`)
        // share the topic: they are not aggregates.
        if common::engine::progress::is_progress_key(msg.key()) {
            continue;
        }
        // The pipeline never writes a null value; skip one rather than guess what it means.
        let Some(payload) = msg.payload() else {
            tally.empty += 1;
            continue;
        };
        let agg = match decode_hour_aggregate(payload) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("skipping partition {} offset {}: {e}", msg.partition(), msg.offset());
                tally.undecodable += 1;
                continue;
            }
        };
        // A higher input_offset reflects more events of that partition: it supersedes.
        // Equal offsets carry equal counts, so keeping either is right.
        match latest.get(&(agg.hour, agg.partition)) {
            Some(kept) if kept.input_offset >= agg.input_offset => tally.superseded += 1,
            Some(_) => {
                tally.superseded += 1;
                latest.insert((agg.hour, agg.partition), agg);
            }
            None => {
                latest.insert((agg.hour, agg.partition), agg);
            }
        }
    }

    print_totals(&latest);
    eprintln!(
        "{} records: {} (hour, partition) pairs, {} superseded, {} undecodable, {} without a value",
        tally.records,
        latest.len(),
        tally.superseded,
        tally.undecodable,
        tally.empty
    );
    Ok(())
}

/// The partition count of `topic`; an error if the broker does not know it.
fn partitions_of(consumer: &StreamConsumer, topic: &str) -> anyhow::Result<i32> {
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("fetching the metadata of {topic}"))?;
    match metadata.topics().first() {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(t.partitions().len() as i32),
        _ => anyhow::bail!("topic {topic} does not exist (has the processor run yet?)"),
    }
}

/// One CSV line per hour, oldest first: the counts summed over the events-topic partitions.
fn print_totals(latest: &BTreeMap<(HourStart, i32), HourAggregate>) {
    let mut hours: BTreeMap<HourStart, (HourCounts, usize)> = BTreeMap::new();
    for ((hour, _), agg) in latest {
        let (counts, partitions) = hours.entry(*hour).or_default();
        *counts = counts.merge(agg.counts);
        *partitions += 1;
    }
    println!("hour_start_ms,hour_utc,partitions,unique_users,clicks,impressions");
    for (hour, (c, partitions)) in &hours {
        println!("{},{hour},{partitions},{},{},{}", hour.start_ms(), c.unique_users, c.clicks, c.impressions);
    }
}
