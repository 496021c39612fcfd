//! Command service configuration: every field is a flag and an env var.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use clap::Parser;
use common::engine::config::{
    parse_duration, EdgeConfig, EventsPartitionsConfig, HorizonConfig, KafkaConfig, PgConfig, TelemetryConfig,
    WriteAuthConfig,
};
use common::engine::kafka::ProducerTuning;

/// Accepts events over HTTP (analytics, increments) and appends them durably to each workload's events topic.
#[derive(Debug, Clone, Parser)]
#[command(name = "command", version)]
pub struct Config {
    /// Address of the HTTP API (`POST /analytics`, `POST /increment`, `/health`, `/ready`, `/metrics`).
    #[arg(long, env = "COMMAND_LISTEN", default_value = "0.0.0.0:8081")]
    pub listen: SocketAddr,
    /// Requests being processed at once; beyond it POST answers 503 with Retry-After.
    #[arg(long, env = "COMMAND_MAX_IN_FLIGHT", default_value = "16384")]
    pub max_in_flight: NonZeroU32,
    /// How long the producer batches before sending (adds to POST latency).
    #[arg(long, env = "COMMAND_LINGER", default_value = "1ms", value_parser = parse_duration)]
    pub linger: Duration,
    /// How long the producer of a workload with decided writes (answers, widgets) batches before sending. Such a
    /// write waits for its decision anyway (the append, the owner's decision, its reply), so a longer linger adds
    /// less to it, and under load it saves a produce request, and the processor's fetch of it, every few writes.
    #[arg(long, env = "COMMAND_DECIDED_LINGER", default_value = "2ms", value_parser = parse_duration)]
    pub decided_linger: Duration,
    /// A POST whose event is not acknowledged by the broker within this time answers 503.
    #[arg(long, env = "COMMAND_DELIVERY_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub delivery_timeout: Duration,
    /// A decided write (answers) whose decision does not come back within this
    /// time answers 503 "outcome unknown" (retry with the same id).
    #[arg(long, env = "COMMAND_DECISION_TIMEOUT", default_value = "4s", value_parser = parse_duration)]
    pub decision_timeout: Duration,
    /// A streamed upload (`POST /promotions/files`) that appends no record for this long while it waits for the
    /// body (a client gone silent, or sending slower than a line at a time) is ended: 408, and its workload voids
    /// what it appended. Bounds how long a live upload leaves its records' topic quiet.
    #[arg(long, env = "COMMAND_UPLOAD_IDLE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub upload_idle_timeout: Duration,
    /// Kafka producers (connections) events are spread over; more lift the broker's per-request latency cap.
    #[arg(long, env = "COMMAND_PRODUCERS", default_value = "1")]
    pub producers: NonZeroU32,
    /// Events each producer queue may hold; when full, POST answers 503 at once.
    #[arg(long, env = "COMMAND_QUEUE_MAX_MESSAGES", default_value = "100000")]
    pub queue_max_messages: NonZeroU32,
    #[command(flatten)]
    pub kafka: KafkaConfig,
    #[command(flatten)]
    pub partitions: EventsPartitionsConfig,
    /// The accepted window of event times: engine policy, handed to each workload's intake.
    #[command(flatten)]
    pub horizon: HorizonConfig,
    /// PostgreSQL, read at startup only: the deployment's horizon, partition counts and workload settings to agree with.
    #[command(flatten)]
    pub pg: PgConfig,
    #[command(flatten)]
    pub auth: WriteAuthConfig,
    #[command(flatten)]
    pub edge: EdgeConfig,
    #[command(flatten)]
    pub telemetry: TelemetryConfig,
}

impl Config {
    /// The producer settings of a workload's topic; `decided`: its writes wait for a decision (a replies topic).
    pub fn producer_tuning(&self, decided: bool) -> ProducerTuning {
        ProducerTuning {
            linger: if decided { self.decided_linger } else { self.linger },
            delivery_timeout: self.delivery_timeout,
            queue_max_messages: self.queue_max_messages.get(),
        }
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
