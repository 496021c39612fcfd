//! Materializer configuration: every field is a flag and an env var.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use clap::Parser;
use common::engine::config::{
    parse_duration, AggregatesPartitionsConfig, KafkaConfig, LeaseConfig, PgConfig, RedisConfig, TelemetryConfig,
};

/// Keeps the read models (PostgreSQL history, Redis hot copy) in line with each workload's aggregates topic.
#[derive(Debug, Clone, Parser)]
#[command(name = "materializer", version)]
pub struct Config {
    /// Address of `/health`, `/ready` and `/metrics`.
    #[arg(long, env = "MATERIALIZER_OPS_LISTEN", default_value = "0.0.0.0:9102")]
    pub ops_listen: SocketAddr,
    /// Lease group of the materializer instances (partition leases in PostgreSQL, not a Kafka consumer group;
    /// positions are stored in PostgreSQL with the writes). Also the group.id of its Kafka consumer.
    #[arg(long, env = "MATERIALIZER_GROUP", default_value = "analytics-materializer")]
    pub group_id: String,
    /// Most aggregates written in one transaction.
    #[arg(long, env = "MATERIALIZER_MAX_BATCH", default_value = "2000")]
    pub max_batch: NonZeroU32,
    /// Longest wait to fill a batch once the first aggregate arrived (adds to freshness).
    #[arg(long, env = "MATERIALIZER_BATCH_WAIT", default_value = "5ms", value_parser = parse_duration)]
    pub batch_wait: Duration,
    #[command(flatten)]
    pub kafka: KafkaConfig,
    #[command(flatten)]
    pub partitions: AggregatesPartitionsConfig,
    #[command(flatten)]
    pub lease: LeaseConfig,
    #[command(flatten)]
    pub pg: PgConfig,
    #[command(flatten)]
    pub redis: RedisConfig,
    #[command(flatten)]
    pub telemetry: TelemetryConfig,
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
