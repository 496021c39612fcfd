//! Configuration sections shared by the services.
//!
//! Each service has one `Config` (clap derive) that `#[command(flatten)]`s the
//! sections it needs from here. Every field is a flag and an environment
//! variable, so `--help` documents all of them. Raw values become checked
//! types (`Duration`, `NonZeroU32`) while parsing, so a bad value fails at
//! startup with a readable message.

use std::num::NonZeroU32;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::engine::horizon::Horizon;

/// The Kafka broker, for the services that use the log (command, processor,
/// materializer). Each of them flattens, beside it, the partition counts of
/// the topics it creates ([`EventsPartitionsConfig`],
/// [`AggregatesPartitionsConfig`]); the topics' names are each workload's config.
#[derive(Debug, Clone, Args)]
pub struct KafkaConfig {
    /// Bootstrap brokers, comma-separated host:port.
    #[arg(
        id = "kafka_brokers",
        value_name = "HOST:PORT,..",
        long = "kafka-brokers",
        env = "KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub brokers: String,
    /// Create the missing topics this service uses at startup.
    #[arg(long, env = "KAFKA_CREATE_TOPICS", default_value = "true", action = clap::ArgAction::Set)]
    pub create_topics: bool,
    /// Longest time the broker holds a consumer's fetch that finds nothing new (librdkafka's
    /// `fetch.wait.max.ms`). Records arriving, and a commit making them readable, answer a
    /// held fetch at once, so this bounds only how often an idle consumer asks again: 100 ms
    /// took the idle stack from 25 % to 11 % of a core with the same freshness as 10 ms
    /// (docs/benchmarks-notes.md, "Idle fetches").
    #[arg(long = "kafka-fetch-wait", value_name = "DURATION", env = "KAFKA_FETCH_WAIT", default_value = FETCH_WAIT_DEFAULT, value_parser = parse_duration)]
    pub fetch_wait: Duration,
}

/// [`KafkaConfig::fetch_wait`] unless set.
const FETCH_WAIT_DEFAULT: &str = "100ms";

impl KafkaConfig {
    /// `brokers` with the defaults of the flags (tests and tools that build their own).
    pub fn new(brokers: impl Into<String>, create_topics: bool) -> Self {
        let fetch_wait = parse_duration(FETCH_WAIT_DEFAULT).expect("the default parses");
        KafkaConfig { brokers: brokers.into(), create_topics, fetch_wait }
    }
}

/// The partition count of every workload's events topic, for the services
/// that create those topics (command, processor). A workload names its topics
/// in its own config section ([`crate::engine::workload::Workload::topics`]).
#[derive(Debug, Clone, Args)]
pub struct EventsPartitionsConfig {
    /// Partitions of each events topic when the service creates it. Bounds processor parallelism;
    /// never change it on an existing topic (users would move between partitions).
    #[arg(long, env = "EVENTS_PARTITIONS", default_value = "4")]
    pub events_partitions: NonZeroU32,
}

/// The partition count of every workload's aggregates topic, for the services
/// that create those topics (processor, materializer).
#[derive(Debug, Clone, Args)]
pub struct AggregatesPartitionsConfig {
    /// Partitions of each aggregates topic when the service creates it. Bounds materializer parallelism.
    #[arg(long, env = "AGGREGATES_PARTITIONS", default_value = "4")]
    pub aggregates_partitions: NonZeroU32,
}

/// Both partition counts: the processor reads one topic and writes the other.
#[derive(Debug, Clone, Args)]
pub struct PartitionsConfig {
    #[command(flatten)]
    pub events: EventsPartitionsConfig,
    #[command(flatten)]
    pub aggregates: AggregatesPartitionsConfig,
}

/// Partition leases in PostgreSQL, for the services that split a topic's
/// partitions among their instances (processor, materializer).
#[derive(Debug, Clone, Args)]
pub struct LeaseConfig {
    /// How long a silent instance keeps its partitions before another instance of its lease group takes them over.
    #[arg(long, env = "MEMBER_LEASE", default_value = "6s", value_parser = parse_duration)]
    pub member_lease: Duration,
    /// How often an instance heartbeats its lease group (at most a third of the lease): how soon the others see a
    /// killed instance's presence lock gone and take its partitions.
    #[arg(long, env = "MEMBER_HEARTBEAT", default_value = "200ms", value_parser = parse_duration)]
    pub member_heartbeat: Duration,
}

/// Redis, the hot read model.
#[derive(Debug, Clone, Args)]
pub struct RedisConfig {
    /// Redis URL; with `--redis-cluster`, the URLs of some of the cluster's nodes (seeds), comma-separated.
    #[arg(
        id = "redis_url",
        value_name = "URL",
        long = "redis-url",
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub url: String,
    /// Prefix of every key this deployment writes (`<prefix>:hour:<hour_start_ms>`).
    #[arg(
        id = "redis_key_prefix",
        value_name = "PREFIX",
        long = "redis-key-prefix",
        env = "REDIS_KEY_PREFIX",
        default_value = "analytics"
    )]
    pub key_prefix: String,
    /// Lifetime of an hour's copy in Redis, refreshed on every write.
    #[arg(id = "redis_ttl", value_name = "DURATION", long = "redis-ttl", env = "REDIS_TTL", default_value = "2h", value_parser = parse_duration)]
    pub ttl: Duration,
    /// The Redis URLs are seeds of a Redis Cluster: rows are spread over its masters by slot, each batch of rows is
    /// acknowledged only once a replica has it (see docs/architecture.md, Redis).
    #[arg(
        id = "redis_cluster",
        value_name = "BOOL",
        long = "redis-cluster",
        env = "REDIS_CLUSTER",
        default_value = "false",
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub cluster: bool,
}

/// PostgreSQL: history, and the processor's state store.
#[derive(Debug, Clone, Args)]
pub struct PgConfig {
    /// PostgreSQL connection URL.
    #[arg(
        id = "pg_url",
        long = "pg-url",
        env = "PG_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub url: String,
    /// Schema holding the tables; at startup this service creates and migrates those it uses.
    #[arg(id = "pg_schema", value_name = "SCHEMA", long = "pg-schema", env = "PG_SCHEMA", default_value = "analytics")]
    pub schema: String,
    /// Connections in the pool.
    #[arg(id = "pg_pool_size", value_name = "N", long = "pg-pool-size", env = "PG_POOL_SIZE", default_value = "8")]
    pub pool_size: NonZeroU32,
    /// Time limit of one PostgreSQL statement or connection attempt.
    #[arg(id = "pg_timeout", value_name = "DURATION", long = "pg-timeout", env = "PG_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// The accepted window of event times: engine policy ([`Horizon`]) that the
/// command and the processor hand to each workload.
#[derive(Debug, Clone, Args)]
pub struct HorizonConfig {
    /// How far back an event may be (late events within it update their hour).
    #[arg(id = "horizon_past", value_name = "DURATION", long = "horizon-past", env = "HORIZON_PAST", default_value = "7d", value_parser = parse_duration)]
    pub past: Duration,
    /// How far into the future an event may be (client clock skew).
    #[arg(id = "horizon_future", value_name = "DURATION", long = "horizon-future", env = "HORIZON_FUTURE", default_value = "5m", value_parser = parse_duration)]
    pub future: Duration,
    /// Extra time past the horizon before an hour closes (absorbs command clocks behind the broker's).
    #[arg(id = "horizon_grace", value_name = "DURATION", long = "horizon-grace", env = "HORIZON_GRACE", default_value = "1h", value_parser = parse_duration)]
    pub grace: Duration,
}

impl HorizonConfig {
    pub fn horizon(&self) -> Horizon {
        Horizon { past: self.past, future: self.future, grace: self.grace }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line (for containers and log shippers).
    Json,
}

/// Logging.
#[derive(Debug, Clone, Args)]
pub struct TelemetryConfig {
    /// Log line format; the level filter comes from RUST_LOG (default `info`).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "human")]
    pub log_format: LogFormat,
    /// Time limit for a graceful shutdown after SIGTERM / SIGINT.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
}

/// Parses `250ms`, `30s`, `5m`, `2h`, `7d` (or a bare number of seconds), and
/// anything else [`humantime`] reads, such as `1h 30m`.
///
/// # Errors
/// A one-line message for clap when the value has no known unit or overflows.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    // humantime wants a unit; a bare number has always meant seconds here.
    if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) {
        return raw.parse().map(Duration::from_secs).map_err(|_| format!("duration `{raw}` is too large"));
    }
    humantime::parse_duration(raw)
        .map_err(|e| format!("`{raw}` is not a duration like 250ms, 30s, 5m, 2h or 7d ({e})").replace('\n', " "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn every_unit_in_use_still_parses() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7_200)));
        assert_eq!(parse_duration(" 6s "), Ok(Duration::from_secs(6)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5_400)));
        assert!(parse_duration("99999999999999999999").is_err());
        assert!(parse_duration("-5s").is_err());
    }

    #[test]
    fn errors_are_one_line_and_name_the_input() {
        for bad in ["5 parsecs", "", "ms", "99999999999999999999d", "99999999999999999999"] {
            let e = parse_duration(bad).expect_err(bad);
            assert!(!e.contains('\n') && e.contains(&format!("`{bad}`")), "{e}");
        }
    }

    #[test]
    fn a_kafka_config_made_in_code_has_the_flags_defaults_and_the_consumer_uses_its_fetch_wait() {
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            kafka: KafkaConfig,
        }
        let parsed = <Flags as clap::Parser>::try_parse_from(["t"]).expect("defaults parse").kafka;
        let made = KafkaConfig::new("127.0.0.1:9092", true);
        assert_eq!((parsed.brokers.as_str(), parsed.create_topics), (made.brokers.as_str(), made.create_topics));
        assert_eq!(parsed.fetch_wait, made.fetch_wait);
        assert_eq!(made.fetch_wait, Duration::from_millis(100));
        let set = <Flags as clap::Parser>::try_parse_from(["t", "--kafka-fetch-wait", "25ms"]).expect("parses").kafka;
        let consumer = crate::engine::kafka::consumer_config(&set, "g", "c");
        assert_eq!(consumer.get("fetch.wait.max.ms"), Some("25"));
    }
}

/// Security and limits at the HTTP edge of the public services (command, query).
/// Authentication of writes, for the services that take them (the command).
#[derive(Debug, Clone, Default, Args)]
pub struct WriteAuthConfig {
    /// Require `Authorization: Bearer <token>` on writes (POST). Unset: no authentication.
    #[arg(long, env = "API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
}

/// Authentication of reads, for the services that serve them (the query).
#[derive(Debug, Clone, Default, Args)]
pub struct ReadAuthConfig {
    /// Require `Authorization: Bearer <token>` on reads (GET). Unset: no authentication.
    #[arg(long, env = "READ_TOKEN", hide_env_values = true)]
    pub read_token: Option<String>,
}

/// Reads from web pages of other origins (CORS), for the services that serve reads (the query).
#[derive(Debug, Clone, Default, Args)]
pub struct CorsConfig {
    /// Origins whose web pages may read the API, comma-separated (`https://app.example,http://localhost:3000`);
    /// `*` allows any. Unset: none (browsers refuse cross-origin reads).
    #[arg(long, env = "CORS_ORIGINS", value_name = "ORIGIN,..", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct EdgeConfig {
    /// Requests per second allowed per client IP address (token bucket); 0 turns rate limiting off.
    #[arg(long, env = "RATE_LIMIT_PER_SEC", default_value = "0")]
    pub rate_limit_per_sec: u32,
    /// Requests a client may send in a burst above its rate.
    #[arg(long, env = "RATE_LIMIT_BURST", default_value = "200")]
    pub rate_limit_burst: NonZeroU32,
    /// Time limit for answering one request; beyond it the answer is 503.
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Largest request body accepted (only `POST /increment` takes one: larger is 400 there, 413 elsewhere).
    #[arg(long, env = "MAX_BODY_BYTES", default_value = "1024")]
    pub max_body_bytes: u64,
    /// Serve HTTPS with this PEM certificate chain (requires --tls-key).
    #[arg(long, env = "TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
}
