//! Processor configuration: every field is a flag and an env var.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use common::engine::config::{
    parse_duration, HorizonConfig, KafkaConfig, LeaseConfig, PartitionsConfig, PgConfig, TelemetryConfig,
};

/// Turns each workload's events into exact aggregates, per events-topic partition.
#[derive(Debug, Clone, Parser)]
#[command(name = "processor", version)]
pub struct Config {
    /// Address of `/health`, `/ready` and `/metrics`.
    #[arg(long, env = "PROCESSOR_OPS_LISTEN", default_value = "0.0.0.0:9101")]
    pub ops_listen: SocketAddr,
    /// Lease group of the processor instances (partition leases in PostgreSQL, not a Kafka consumer group).
    /// Also the Kafka group.id under which consumed offsets are committed as a hint for lag tooling, and the
    /// prefix of the aggregate producers' transactional.id (`<group>.<events topic>.<partition>`).
    #[arg(long, env = "PROCESSOR_GROUP", default_value = "analytics-processor")]
    pub group_id: String,
    /// How often changed hours are checkpointed and emitted (bounds freshness), for every workload that does not
    /// declare its own cadence (or is not named in --checkpoint-intervals); a workload with a replies topic (decided
    /// writes) gets 200 ms unless it declares another.
    #[arg(long, env = "PROCESSOR_CHECKPOINT_INTERVAL", default_value = "50ms", value_parser = parse_duration)]
    pub checkpoint_interval: Duration,
    /// Per-workload checkpoint intervals, `<workload>=<duration>` separated by commas (`widgets=100ms,answers=50ms`):
    /// over the workload's declared cadence and --checkpoint-interval.
    #[arg(long, env = "PROCESSOR_CHECKPOINT_INTERVALS", value_delimiter = ',', value_parser = parse_workload_interval)]
    pub checkpoint_intervals: Vec<(String, Duration)>,
    /// Aggregate bytes per second this instance's checkpoints may emit (0: no limit). A round of checkpoints that
    /// emitted B bytes holds the next one back B / this (seconds), so that more events fold into each record when
    /// changes are spread over many open hours (each carries its hour's whole sketch, up to 49 KB).
    #[arg(long, env = "PROCESSOR_EMIT_BYTES_PER_SEC", default_value_t = 32 << 20)]
    pub emit_bytes_per_sec: u64,
    /// An emitted aggregate not acknowledged within this time fails its checkpoint's emit: the partition is claimed
    /// again, which re-sends the records the state store holds in its outbox.
    #[arg(long, env = "PROCESSOR_DELIVERY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub delivery_timeout: Duration,
    /// How long the replies' producer batches the decisions' replies (decided writes) before sending: sub-millisecond
    /// values are kept (`500us`). 0 sends each as it comes, a produce request per reply or two under load.
    #[arg(long, env = "PROCESSOR_REPLIES_LINGER", default_value = "1ms", value_parser = parse_duration)]
    pub replies_linger: Duration,
    #[command(flatten)]
    pub kafka: KafkaConfig,
    #[command(flatten)]
    pub partitions: PartitionsConfig,
    #[command(flatten)]
    pub lease: LeaseConfig,
    #[command(flatten)]
    pub pg: PgConfig,
    #[command(flatten)]
    pub horizon: HorizonConfig,
    #[command(flatten)]
    pub telemetry: TelemetryConfig,
}

impl Config {
    /// How long after its end an hour stays open, measured on the partition's watermark.
    pub fn retention_ms(&self) -> i64 {
        self.horizon.horizon().retention_ms()
    }

    /// The checkpoint interval of the workload `name`, which declares `declared`
    /// (`Aggregation::CHECKPOINT_INTERVAL`) and whose writes are answered by
    /// their decision if `decided_writes` (it has a replies topic): the
    /// operator's for it, else its own, else
    /// [`DECIDED_WRITES_CHECKPOINT_INTERVAL`](crate::engine::DECIDED_WRITES_CHECKPOINT_INTERVAL)
    /// for decided writes, else the engine's.
    pub fn checkpoint_interval_of(&self, name: &str, declared: Option<Duration>, decided_writes: bool) -> Duration {
        let named = self.checkpoint_intervals.iter().rev().find(|(w, _)| w == name).map(|(_, d)| *d);
        let decided = decided_writes.then_some(crate::engine::DECIDED_WRITES_CHECKPOINT_INTERVAL);
        named.or(declared).or(decided).unwrap_or(self.checkpoint_interval)
    }
}

/// `<workload>=<duration>`, one of --checkpoint-intervals.
fn parse_workload_interval(raw: &str) -> Result<(String, Duration), String> {
    let (name, interval) = raw.split_once('=').ok_or_else(|| format!("'{raw}' is not <workload>=<duration>"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("'{raw}' names no workload"));
    }
    let interval = parse_duration(interval.trim())?;
    if interval.is_zero() {
        return Err(format!("'{raw}': an interval of zero would checkpoint without pause"));
    }
    Ok((name.to_owned(), interval))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_are_consistent_and_defaults_parse() {
        Config::command().debug_assert();
        Config::try_parse_from(["bin"]).expect("defaults are valid");
    }

    #[test]
    fn a_workload_interval_is_the_operators_then_its_own_then_the_engines() {
        let cfg = Config::try_parse_from(["bin", "--checkpoint-intervals", "widgets=300ms, answers=20ms"]).unwrap();
        let ms = Duration::from_millis;
        assert_eq!(cfg.checkpoint_interval_of("widgets", Some(ms(100)), true), ms(300));
        assert_eq!(cfg.checkpoint_interval_of("answers", None, true), ms(20));
        assert_eq!(cfg.checkpoint_interval_of("promotions", Some(ms(200)), false), ms(200));
        assert_eq!(cfg.checkpoint_interval_of("analytics", None, false), ms(50));
        // Decided writes (a replies topic): the engine's interval for them, unless the workload names its own.
        assert_eq!(cfg.checkpoint_interval_of("decided", None, true), ms(200));
        assert_eq!(cfg.checkpoint_interval_of("decided", Some(ms(100)), true), ms(100));
        for bad in ["widgets", "=1s", "widgets=soon", "widgets=0ms"] {
            assert!(Config::try_parse_from(["bin", "--checkpoint-intervals", bad]).is_err(), "{bad}");
        }
    }
}
