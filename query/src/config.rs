//! Query service configuration: every field is a flag and an env var.

use std::net::SocketAddr;

use clap::Parser;
use std::time::Duration;

use common::engine::config::{
    parse_duration, CorsConfig, EdgeConfig, PgConfig, ReadAuthConfig, RedisConfig, TelemetryConfig,
};

/// Answers each workload's reads from Redis, falling back to PostgreSQL.
#[derive(Debug, Clone, Parser)]
#[command(name = "query", version)]
pub struct Config {
    /// Address of the HTTP API (`GET /`: the dashboard, `GET /analytics…`, `GET /increment/{key}`, `/health`, `/ready`, `/metrics`).
    #[arg(long, env = "QUERY_LISTEN", default_value = "0.0.0.0:8082")]
    pub listen: SocketAddr,
    /// How long an answer is reused in process before asking Redis again while change
    /// notifications are not heard (Redis' subscription lost); adds at most this much staleness.
    /// 0 with `--local-cache-until-change 0` turns the in-process copies off.
    #[arg(long, env = "QUERY_LOCAL_CACHE_TTL", default_value = "10ms", value_parser = parse_duration)]
    pub local_cache_ttl: Duration,
    /// While change notifications are heard, an answer is reused until its workload's read model
    /// changes (the materializer publishes after every batch it wrote to Redis), at most this long
    /// (a bound for a notification lost while subscribed). 0: the ttl alone.
    #[arg(long, env = "QUERY_LOCAL_CACHE_UNTIL_CHANGE", default_value = "1s", value_parser = parse_duration)]
    pub local_cache_until_change: Duration,
    /// Most requests waiting at once for their write (`after=`); beyond, 503 with `Retry-After: 1`.
    /// Waiting is cheap: one progress watcher per process serves every waiting request.
    #[arg(long, env = "QUERY_MAX_TOKEN_WAITS", default_value = "4096", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_token_waits: u32,
    /// Most live streams (`GET /analytics/live`) open at once; beyond, 503 with `Retry-After: 1`.
    #[arg(long, env = "QUERY_MAX_LIVE_STREAMS", default_value = "1024", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_live_streams: u32,
    /// Where the query keeps its local copies of bulk generations (the promotions files), each process in a folder
    /// of its own (`<dir>/<pid>`, removed when it stops; a killed process's folder is removed by the next one to
    /// start): a lookup reads the copy (the page cache) instead of PostgreSQL once it is built, seconds after a
    /// switch. `off`: every lookup reads PostgreSQL.
    #[arg(long, env = "QUERY_BULK_COPIES_DIR", default_value = "/tmp/analytics-query-copies")]
    pub bulk_copies_dir: String,
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

impl Config {
    /// How the in-process copies are reused, from the two flags.
    pub fn reuse(&self) -> crate::engine::Reuse {
        crate::engine::Reuse { ttl: self.local_cache_ttl, until_change: self.local_cache_until_change }
    }

    /// The caps of [`crate::engine::Limits`] these flags set.
    /// The folder of local copies of bulk generations, opened (`None`: `off`).
    ///
    /// # Errors
    /// When the folder cannot be created.
    pub fn bulk_copies(&self) -> std::io::Result<Option<std::sync::Arc<common::engine::store::bulk_copy::CopiesDir>>> {
        if self.bulk_copies_dir.is_empty() || self.bulk_copies_dir == "off" {
            return Ok(None);
        }
        let dir = common::engine::store::bulk_copy::CopiesDir::open(std::path::Path::new(&self.bulk_copies_dir))?;
        Ok(Some(std::sync::Arc::new(dir)))
    }

    pub fn limits(&self) -> crate::engine::Limits {
        crate::engine::Limits {
            token_waits: self.max_token_waits as usize,
            live_streams: self.max_live_streams as usize,
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
        let cfg = Config::try_parse_from(["bin"]).expect("defaults are valid");
        assert_eq!(cfg.limits(), crate::engine::Limits::default());
        assert!(Config::try_parse_from(["bin", "--max-token-waits", "0"]).is_err());
    }
}
