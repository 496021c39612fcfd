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
    /// How often changed hours are checkpointed and emitted (bounds freshness).
    #[arg(long, env = "PROCESSOR_CHECKPOINT_INTERVAL", default_value = "50ms", value_parser = parse_duration)]
    pub checkpoint_interval: Duration,
    /// Aggregate bytes per second this instance's checkpoints may emit (0: no limit). A round of checkpoints that
    /// emitted B bytes holds the next one back B / this (seconds), so that more events fold into each record when
    /// changes are spread over many open hours (each carries its hour's whole sketch, up to 49 KB).
    #[arg(long, env = "PROCESSOR_EMIT_BYTES_PER_SEC", default_value_t = 32 << 20)]
    pub emit_bytes_per_sec: u64,
    /// An emitted aggregate not acknowledged within this time fails its checkpoint's emit: the partition is claimed
    /// again, which re-sends the records the state store holds in its outbox.
    #[arg(long, env = "PROCESSOR_DELIVERY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub delivery_timeout: Duration,
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
}
