//! The broker's group protocol beside the services' presence locks (issue 24):
//! how long a consumer killed with `kill -9` keeps its partitions from the
//! rest of its Kafka consumer group, measured the way `make chaos` row 20
//! measures the processors and materializers (docs/operations.md, "Failover").
//!
//! On a fresh topic of four partitions, a survivor consumer runs for the
//! whole measurement; `--kills` times a second consumer joins, the tool waits
//! until the two split the partitions, kills the second with SIGKILL and
//! times until the survivor is assigned all four. Each consumer is a process
//! of its own (this binary with `--member`), reporting its assignment on
//! stdout whenever it changes. The group's liveness is the broker's: a
//! session timeout (`--session-timeout`, which the broker bounds by its
//! `group.min.session.timeout.ms`) with the classic protocol, or the broker's
//! own session settings with `--protocol consumer` (KIP-848).
//!
//! Prints one JSON object as its last line: the pauses' p50, p99 and max.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

const PARTITIONS: usize = 4;

#[derive(Debug, Parser)]
struct Args {
    /// How many times the second consumer is killed.
    #[arg(long, default_value = "10")]
    kills: usize,
    /// `classic` (session timeout and heartbeats) or `consumer` (KIP-848, the broker's settings).
    #[arg(long, default_value = "classic")]
    protocol: String,
    /// The classic protocol's session timeout: the broker refuses one below its `group.min.session.timeout.ms`.
    #[arg(long, default_value = "6s", value_parser = common::engine::config::parse_duration)]
    session_timeout: Duration,
    /// Run as one consumer of the group on the topic (internal).
    #[arg(long, num_args = 2, value_names = ["GROUP", "TOPIC"])]
    member: Option<Vec<String>>,
}

fn now_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_millis()
}

fn consumer_config(args: &Args, group: &str) -> ClientConfig {
    let brokers = common::test_util::kafka_brokers();
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers).set("group.id", group).set("group.protocol", &args.protocol);
    if args.protocol == "classic" {
        let session = args.session_timeout.as_millis();
        config
            .set("session.timeout.ms", session.to_string())
            .set("heartbeat.interval.ms", (session / 10).max(100).to_string());
    }
    config
}

/// One member: polls, and prints `<unix ms> <partitions>` whenever its assignment changes.
fn member(args: &Args, group: &str, topic: &str) -> anyhow::Result<()> {
    let consumer: BaseConsumer = consumer_config(args, group).create()?;
    consumer.subscribe(&[topic])?;
    let (mut last, mut last_error) = (None, String::new());
    loop {
        if let Some(Err(e)) = consumer.poll(Duration::from_millis(10)) {
            // Once per kind: e.g. the broker refusing a session timeout below its minimum.
            if e.to_string() != last_error {
                eprintln!("member: {e}");
                last_error = e.to_string();
            }
        }
        let mut owned: Vec<i32> = consumer.assignment()?.elements().iter().map(|e| e.partition()).collect();
        owned.sort_unstable();
        if last.as_ref() != Some(&owned) {
            let list = owned.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
            println!("{} {list}", now_ms());
            std::io::stdout().flush()?;
            last = Some(owned);
        }
    }
}

/// A member process, and a channel of (unix ms, partitions count) it reports.
fn spawn(args: &Args, group: &str, topic: &str) -> anyhow::Result<(Child, mpsc::Receiver<(u128, usize)>)> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--protocol", &args.protocol, "--session-timeout", &format!("{}ms", args.session_timeout.as_millis())])
        .args(["--member", group, topic])
        .stdout(Stdio::piped())
        .spawn()?;
    let out = BufReader::new(child.stdout.take().expect("piped"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            let (at, list) = line.split_once(' ').unwrap_or((&line, ""));
            let count = list.split(',').filter(|p| !p.is_empty()).count();
            if tx.send((at.parse().unwrap_or(0), count)).is_err() {
                break;
            }
        }
    });
    Ok((child, rx))
}

/// Waits until `rx` reports `count` partitions; the report's time.
fn wait_for(rx: &mpsc::Receiver<(u128, usize)>, count: usize, limit: Duration) -> anyhow::Result<u128> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (at, n) = rx.recv_timeout(left).map_err(|_| anyhow::anyhow!("no assignment of {count} in {limit:?}"))?;
        if n == count {
            return Ok(at);
        }
    }
}

fn quantile(sorted: &[u128], q: f64) -> u128 {
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(m) = &args.member {
        return member(&args, &m[0], &m[1]);
    }
    let suffix = common::random_suffix();
    let (topic, group) = (format!("bench-group-failover-{suffix}"), format!("bench-group-failover-{suffix}"));
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", common::test_util::kafka_brokers()).create()?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let replication = common::engine::kafka::BROKER_DEFAULT_REPLICATION;
    admin.create_topics(&[NewTopic::new(&topic, PARTITIONS as i32, replication)], &opts).await?;
    let measured = measure(&args, &group, &topic);
    admin.delete_topics(&[&topic], &opts).await?;
    let mut pauses = measured?;
    pauses.sort_unstable();
    println!(
        "{}",
        serde_json::json!({
            "group_failover_protocol": args.protocol,
            "group_failover_session_timeout_ms": args.session_timeout.as_millis() as u64,
            "group_failover_kills": pauses.len(),
            "group_failover_p50_ms": quantile(&pauses, 0.5) as u64,
            "group_failover_p99_ms": quantile(&pauses, 0.99) as u64,
            "group_failover_max_ms": *pauses.last().expect("a kill") as u64,
        })
    );
    Ok(())
}

fn measure(args: &Args, group: &str, topic: &str) -> anyhow::Result<Vec<u128>> {
    // Joining, leaving and the session timeout itself can each take a while with the broker's defaults.
    let limit = args.session_timeout * 3 + Duration::from_secs(60);
    let (mut survivor, survivor_rx) = spawn(args, group, topic)?;
    let result = (|| {
        wait_for(&survivor_rx, PARTITIONS, limit)?;
        let mut pauses = Vec::new();
        for kill in 1..=args.kills {
            let (mut second, second_rx) = spawn(args, group, topic)?;
            wait_for(&second_rx, PARTITIONS / 2, limit)?;
            wait_for(&survivor_rx, PARTITIONS / 2, limit)?;
            second.kill()?;
            let killed = now_ms();
            second.wait()?;
            let pause = wait_for(&survivor_rx, PARTITIONS, limit)?.saturating_sub(killed);
            eprintln!("kill {kill}: the survivor holds every partition {pause} ms after the kill");
            pauses.push(pause);
        }
        Ok(pauses)
    })();
    let _ = survivor.kill();
    let _ = survivor.wait();
    result
}
