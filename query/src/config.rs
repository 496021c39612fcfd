//! Query service configuration: every field is a flag and an env var.

use std::net::SocketAddr;

use clap::Parser;
use std::time::Duration;

use common::engine::config::{
    parse_duration, CorsConfig, EdgeConfig, PgConfig, ReadAuthConfig, RedisConfig, TelemetryConfig,
};

/// Answers hourly analytics from Redis, falling back to PostgreSQL.
#[derive(Debug, Clone, Parser)]
#[command(name = "query", version)]
pub struct Config {
    /// Address of the HTTP API (`GET /`: the dashboard, `GET /analytics…`, `GET /increment/{key}`, `/health`, `/ready`, `/metrics`).
    #[arg(long, env = "QUERY_LISTEN", default_value = "0.0.0.0:8082")]
    pub listen: SocketAddr,
    /// How long an answer is reused in process before asking Redis again (0 turns it off).
    /// Adds at most this much staleness; the current hour gets most reads.
    #[arg(long, env = "QUERY_LOCAL_CACHE_TTL", default_value = "10ms", value_parser = parse_duration)]
    pub local_cache_ttl: Duration,
    #[command(flatten)]
    pub pg: PgConfig,
    #[command(flatten)]
    pub redis: RedisConfig,
    #[command(flatten)]
    pub edge: EdgeConfig,
    #[command(flatten)]
    pub read_auth: ReadAuthConfig,
    #[command(flatten)]
    pub cors: CorsConfig,
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
