//! Fixtures for integration tests: endpoints from the environment, unique
//! names, and polling helpers.

use std::future::Future;
use std::time::{Duration, Instant};

use std::num::NonZeroU32;

use crate::engine::config::{
    AggregatesPartitionsConfig, EventsPartitionsConfig, KafkaConfig, PartitionsConfig, PgConfig, RedisConfig,
};

/// A short random suffix so parallel tests never share topics, schemas or keys.
pub fn unique_suffix() -> String {
    crate::random_suffix()
}

pub fn kafka_brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn pg_url() -> String {
    std::env::var("PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The Kafka side of a test deployment: the broker and both topics, from
/// which the config sections of each service are made.
#[derive(Debug, Clone)]
pub struct TestKafka {
    pub brokers: String,
    pub events_topic: String,
    pub events_partitions: NonZeroU32,
    pub aggregates_topic: String,
    pub aggregates_partitions: NonZeroU32,
    /// The increments workload's topics.
    pub increments_events_topic: String,
    pub increments_sums_topic: String,
}

impl TestKafka {
    /// The broker section, creating missing topics.
    pub fn broker(&self) -> KafkaConfig {
        KafkaConfig::new(self.brokers.clone(), true)
    }

    /// The deployment's partition counts.
    pub fn partitions(&self) -> PartitionsConfig {
        PartitionsConfig {
            events: EventsPartitionsConfig { events_partitions: self.events_partitions },
            aggregates: AggregatesPartitionsConfig { aggregates_partitions: self.aggregates_partitions },
        }
    }
}

/// Config sections pointing at fresh, test-private topics, schema and key prefix.
pub fn isolated(suffix: &str) -> (TestKafka, RedisConfig, PgConfig) {
    let kafka = TestKafka {
        brokers: kafka_brokers(),
        events_topic: format!("test-events-{suffix}"),
        events_partitions: 3.try_into().expect("non-zero"),
        aggregates_topic: format!("test-aggregates-{suffix}"),
        aggregates_partitions: 2.try_into().expect("non-zero"),
        increments_events_topic: format!("test-increments-{suffix}"),
        increments_sums_topic: format!("test-sums-{suffix}"),
    };
    let redis = RedisConfig {
        url: redis_url(),
        key_prefix: format!("test-{suffix}"),
        ttl: Duration::from_secs(600),
        cluster: false,
    };
    let pg = PgConfig {
        url: pg_url(),
        schema: format!("test_{suffix}"),
        pool_size: 4.try_into().expect("non-zero"),
        timeout: Duration::from_secs(5),
    };
    (kafka, redis, pg)
}

/// The command line of a service reading this test's stores: `bin`, the
/// PostgreSQL and Redis flags of `pg` and `redis`, then `extra`.
pub fn store_args(bin: &str, redis: &RedisConfig, pg: &PgConfig, extra: &[&str]) -> Vec<String> {
    let stores = [
        "--pg-url",
        &pg.url,
        "--pg-schema",
        &pg.schema,
        "--redis-url",
        &redis.url,
        "--redis-key-prefix",
        &redis.key_prefix,
    ];
    let cluster = redis.cluster.then_some("--redis-cluster");
    std::iter::once(bin).chain(stores).chain(cluster).chain(extra.iter().copied()).map(str::to_owned).collect()
}

/// Polls `check` until it returns `Some`, or panics after `limit` with `what`.
pub async fn wait_until<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(started.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Drops a test schema (cleanup).
pub async fn drop_schema(pg: &PgConfig) {
    if let Ok((client, conn)) = tokio_postgres::connect(&pg.url, tokio_postgres::NoTls).await {
        tokio::spawn(conn);
        let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", pg.schema)).await;
    }
}

/// A raw HTTP/1.1 exchange on a fresh connection (`Connection: close`): the
/// status code and body. Raw on purpose: tests send bytes a client library
/// would refuse to produce.
pub async fn http_raw(addr: std::net::SocketAddr, request: impl AsRef<[u8]>) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(request.as_ref()).await?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// `METHOD path_and_query` with an empty body; see [`http_raw`].
pub async fn http(addr: std::net::SocketAddr, method: &str, path_and_query: &str) -> std::io::Result<(u16, String)> {
    http_raw(
        addr,
        &format!("{method} {path_and_query} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// One request with a body and, if given, a `Content-Type`.
pub async fn http_body(
    addr: std::net::SocketAddr,
    method: &str,
    path_and_query: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let content_type = content_type.map(|c| format!("Content-Type: {c}\r\n")).unwrap_or_default();
    let head = format!(
        "{method} {path_and_query} HTTP/1.1\r\nHost: test\r\n{content_type}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    http_raw(addr, [head.as_bytes(), body].concat()).await
}

/// A local Redis Cluster of its own (three masters, a replica each), started
/// by `scripts/redis-cluster.sh` on `base_port` and the five ports after it,
/// under a run directory of its own; reset (stopped, its files deleted) when dropped.
pub struct RedisCluster {
    run_dir: std::path::PathBuf,
    base_port: u16,
    /// The nodes' URLs, comma-separated: `RedisConfig::url` with `cluster: true`.
    pub urls: String,
}

impl RedisCluster {
    /// Starts the cluster and waits until it serves; panics if it cannot.
    pub fn start(base_port: u16) -> Self {
        let run_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/tmp")
            .join(format!("redis-cluster-{base_port}"));
        let mut cluster = RedisCluster { run_dir, base_port, urls: String::new() };
        cluster.script("reset");
        cluster.script("up");
        cluster.urls = cluster.script("urls").trim().to_owned();
        cluster
    }

    /// The PID file of the node on `port`.
    pub fn pid_file(&self, port: u16) -> std::path::PathBuf {
        self.run_dir.join(format!("redis-cluster/{port}.pid"))
    }

    /// The ports of the six nodes.
    pub fn ports(&self) -> std::ops::Range<u16> {
        self.base_port..self.base_port + 6
    }

    /// Runs `scripts/redis-cluster.sh <command>` for this cluster; its standard
    /// output. Panics if it fails.
    pub fn script(&self, command: &str) -> String {
        self.run(command).unwrap_or_else(|| panic!("scripts/redis-cluster.sh {command} failed"))
    }

    fn run(&self, command: &str) -> Option<String> {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/redis-cluster.sh");
        let out = std::process::Command::new(script)
            .arg(command)
            .env("RUN_DIR", &self.run_dir)
            .env("REDIS_CLUSTER_PORT", self.base_port.to_string())
            .stderr(std::process::Stdio::inherit())
            .output()
            .ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The config of a test-private key prefix on this cluster.
    pub fn config(&self, suffix: &str) -> RedisConfig {
        RedisConfig {
            url: self.urls.clone(),
            key_prefix: format!("test-{suffix}"),
            ttl: Duration::from_secs(600),
            cluster: true,
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        // Not a panic while a failed test unwinds: the next start resets anyway.
        let _ = self.run("reset");
        let _ = std::fs::remove_dir(&self.run_dir);
    }
}

/// Deletes every Redis key under a prefix (cleanup).
pub async fn clear_redis_prefix(redis: &RedisConfig) {
    if let Ok(cache) = crate::engine::store::cache::RedisStore::connect(redis).await {
        let _ = cache.clear().await;
    }
}

/// Deletes a test's topics (cleanup), so repeated runs do not pile up partitions on the broker.
pub async fn delete_topics(kafka: &TestKafka) {
    let topics =
        [&kafka.events_topic, &kafka.aggregates_topic, &kafka.increments_events_topic, &kafka.increments_sums_topic];
    delete_topic_names(&kafka.brokers, &topics.map(String::clone)).await;
}

/// Deletes topics by name (cleanup); a name the broker does not have is no error.
pub async fn delete_topic_names(brokers: &str, topics: &[String]) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: Result<AdminClient<DefaultClientContext>, _> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).create();
    if let Ok(admin) = admin {
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let _ = admin.delete_topics(&names, &opts).await;
    }
}

/// A test-only second workload's read model: exact per-key sums (beyond
/// `i64`), to show the engine carries rows it was not written for. Declared
/// as a counter-versioned table; the engine writes, guards and reads it.
pub mod sums {
    use std::sync::LazyLock;

    use crate::engine::pg::PgError;
    use crate::engine::store::{CachedRow, Column, ColumnType, Row, Value, Version, VersionedTable};

    /// The sum of one key.
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub struct Sum {
        pub total: i128,
    }

    /// `test_sums (key TEXT PRIMARY KEY, total NUMERIC, version BIGINT, updated_at)`.
    pub static TABLE: LazyLock<VersionedTable> = LazyLock::new(|| {
        VersionedTable::new(
            "test_sums",
            vec![Column::new("key", ColumnType::Text)],
            vec![Column::new("total", ColumnType::Numeric).cached_as("t")],
            Version::Counter("version"),
        )
    });

    impl CachedRow for Sum {
        type Id = String;
        const KIND: &'static str = "sum";

        fn table() -> &'static VersionedTable {
            &TABLE
        }

        fn key(id: &String) -> Row {
            Row::new().with("key", Value::Text(id.clone()))
        }

        fn id(key: &Row) -> Result<String, PgError> {
            key.text("key").map(str::to_owned)
        }

        fn to_row(&self) -> Row {
            Row::new().with("total", Value::Text(self.total.to_string()))
        }

        fn from_row(row: &Row) -> Result<Self, PgError> {
            let total = row.text("total")?;
            let total = total.parse().map_err(|_| PgError::Corrupt(format!("test_sums: total {total}")))?;
            Ok(Sum { total })
        }
    }

    /// An absolute value for a key: replays are no-ops (the version only moves on a change).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct SetSum {
        pub key: String,
        pub total: i128,
    }

    /// Creates the table of the sums in the pool's schema.
    pub async fn create_table(client: &deadpool_postgres::Client) {
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS test_sums (key TEXT PRIMARY KEY, total NUMERIC NOT NULL,
                     version BIGINT NOT NULL, updated_at TIMESTAMPTZ NOT NULL DEFAULT now())",
            )
            .await
            .expect("creating test_sums");
    }

    /// Writes the batch in `tx`; returns the keys it touched.
    ///
    /// # Errors
    /// [`PgError`].
    pub async fn write(tx: &impl crate::engine::store::Conn, batch: &[SetSum]) -> Result<Vec<String>, PgError> {
        let rows: Vec<Row> =
            batch.iter().map(|s| Sum::key(&s.key).with("total", Value::Text(s.total.to_string()))).collect();
        TABLE.upsert(tx, rows).await?;
        Ok(batch.iter().map(|s| s.key.clone()).collect())
    }
}

/// An answer read by [`request`]: status, headers (names lowercased) and body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }
}

/// `METHOD path_and_query` with extra request headers, on a fresh connection;
/// the whole answer, headers included.
pub async fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Answer> {
    request_with_body(addr, method, path_and_query, headers, b"").await
}

/// [`request`] with a body (its `Content-Type`, if any, among `headers`).
pub async fn request_with_body(
    addr: std::net::SocketAddr,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Answer> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let extra: String = headers.iter().map(|(n, v)| format!("{n}: {v}\r\n")).collect();
    let head = format!(
        "{method} {path_and_query} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(&[head.as_bytes(), body].concat()).await?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Answer { status, headers, body: body.to_owned() })
}

/// A Server-Sent Events client on a raw connection: [`SseClient::next_data`]
/// returns each `data:` payload in turn (comments such as heartbeats skipped).
pub struct SseClient {
    reader: tokio::io::BufReader<tokio::net::TcpStream>,
    /// Status code of the answer.
    pub status: u16,
}

impl SseClient {
    /// Opens `GET path` with extra headers and reads the answer's head.
    pub async fn open(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Self> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let extra: String = headers.iter().map(|(n, v)| format!("{n}: {v}\r\n")).collect();
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n{extra}\r\n").as_bytes(),
            )
            .await?;
        let mut reader = tokio::io::BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).await?;
        let status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        loop {
            line.clear();
            if reader.read_line(&mut line).await? == 0 || line == "\r\n" {
                break;
            }
        }
        Ok(SseClient { reader, status })
    }

    /// The next `data:` payload; `None` when the stream ends. The chunked
    /// transfer coding's size lines are skipped (each event is one chunk).
    pub async fn next_data(&mut self) -> std::io::Result<Option<String>> {
        use tokio::io::AsyncBufReadExt;
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line).await? == 0 {
                return Ok(None);
            }
            if let Some(data) = line.trim_end().strip_prefix("data: ") {
                return Ok(Some(data.to_owned()));
            }
        }
    }
}
