//! The Redis copy of a read model: one hash per row,
//! `<prefix>:<kind>:<id>`, with the version in field `v` first, then the
//! row's cached columns under their fields (see [`CachedRow`]), and a TTL.
//! The fields and their values come from the row's table declaration, by
//! column name; the Lua scripts below are the only Redis writes of rows.
//!
//! Two writers: the materializer ([`VersionedCache::put_if_newer`]) and the
//! query's write-back of what it read from PostgreSQL ([`VersionedCache::fill`]).
//! The version guard alone cannot stop a write-back from moving a value
//! backwards once the newer copy is gone (a flush, a Redis restart, an
//! expiry): the write-back's read may predate the newest PostgreSQL row. So a
//! write-back needs a *fill lease*, `<key>:fill`, taken before its PostgreSQL
//! read ([`VersionedCache::lease`]); every materializer write deletes it, and
//! so does a flush or restart. A write-back lands only if its own lease is
//! still there, that is if nothing was written to the row since its read began.
//!
//! [`RedisStore`] is the connection (timeouts, back-off, reconnects), shared
//! by every workload of a service; [`VersionedCache`] is its typed view for
//! one kind of row.
//!
//! On a Redis Cluster (`--redis-cluster`) the same operations run over the
//! cluster's masters. A row's key carries its id as a hash tag,
//! `<prefix>:<kind>:{<id>}`, so the row and its fill lease `<key>:fill` share
//! a slot and each script touches one slot; a batch of rows is one script
//! call per slot. The progress marks share one slot,
//! `<prefix>:{<prefix>:progress}:<topic>:<partition>`, so their script and
//! pipeline stay one call. Every batch of rows is acknowledged only once each
//! master's replica has it (`WAIT`), so a master's failover loses no row the
//! materializer counts as copied (docs/architecture.md, Redis).

use std::marker::PhantomData;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo, SingleNodeRoutingInfo};
use redis::Script;

use super::{CachedRow, Versioned, VERSION_FIELD};
use crate::engine::config::RedisConfig;

/// Writes each row only if its version is newer than the stored one, and
/// refreshes the TTL of what it writes. Atomic per call.
///
/// ARGV: the TTL in ms, the number `n` of hash fields, their `n` names (the
/// version first), then `n` values per key.
const PUT_IF_NEWER: &str = r"
local ttl = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local written = 0
for i, key in ipairs(KEYS) do
  local base = 2 + n + (i - 1) * n
  local v = tonumber(ARGV[base + 1])
  local cur = tonumber(redis.call('HGET', key, ARGV[3]))
  if cur == nil or cur < v then
    local args = {}
    for f = 1, n do
      args[#args + 1] = ARGV[2 + f]
      args[#args + 1] = ARGV[base + f]
    end
    redis.call('HSET', key, unpack(args))
    redis.call('PEXPIRE', key, ttl)
    written = written + 1
  end
  -- Any write-back whose read began before this write is now void.
  redis.call('DEL', key .. ':fill')
end
return written
";

/// A query's write-back: only under its own, still valid fill lease, and only if newer.
///
/// ARGV: the TTL in ms, the lease, the number `n` of hash fields, their `n`
/// names (the version first), then their `n` values.
const FILL: &str = r"
local key = KEYS[1]
if redis.call('GET', key .. ':fill') ~= ARGV[2] then
  return 0
end
redis.call('DEL', key .. ':fill')
local n = tonumber(ARGV[3])
local cur = tonumber(redis.call('HGET', key, ARGV[4]))
if cur == nil or cur < tonumber(ARGV[4 + n]) then
  local args = {}
  for f = 1, n do
    args[#args + 1] = ARGV[3 + f]
    args[#args + 1] = ARGV[3 + n + f]
  end
  redis.call('HSET', key, unpack(args))
  redis.call('PEXPIRE', key, tonumber(ARGV[1]))
  return 1
end
return 0
";

/// Moves progress marks forward only: per key (one events partition), field
/// `<aggregates partition>` holds `<next_offset>/<aggregates partitions>`.
///
/// ARGV: per key, the field, the next offset and the partition count.
const PUT_PROGRESS: &str = r"
for i, key in ipairs(KEYS) do
  local field = ARGV[(i - 1) * 3 + 1]
  local offset = tonumber(ARGV[(i - 1) * 3 + 2])
  local cur = redis.call('HGET', key, field)
  local cur_offset = cur and tonumber(string.match(cur, '^(%d+)/')) or nil
  if cur_offset == nil or cur_offset < offset then
    redis.call('HSET', key, field, ARGV[(i - 1) * 3 + 2] .. '/' .. ARGV[(i - 1) * 3 + 3])
  end
end
return 0
";

/// The hash fields of a row of kind `R` after the version: its table's cached columns.
fn fields<R: CachedRow>() -> Vec<&'static str> {
    R::table().cached().filter_map(|c| c.cached_as).collect()
}

/// Adds the number of hash fields and their names (the version first) to a script call.
fn field_names<R: CachedRow>(inv: &mut redis::ScriptInvocation<'_>) {
    let fields = fields::<R>();
    inv.arg(fields.len() + 1);
    inv.arg(VERSION_FIELD);
    for name in fields {
        inv.arg(name);
    }
}

/// Adds the values of one row's hash fields, in the order of [`field_names`].
fn field_values<R: CachedRow>(inv: &mut redis::ScriptInvocation<'_>, versioned: &Versioned<R>) {
    // Named, not lined up: the table picks each cached column from the row by name.
    let values = R::table()
        .to_cache(&versioned.row.to_row())
        .unwrap_or_else(|e| panic!("{}: to_row gives every cached column: {e}", R::KIND));
    inv.arg(versioned.version);
    for value in values {
        inv.arg(value);
    }
}

/// Most rows one call of the write script takes. The version-guarded write
/// costs Redis about 7 µs a row (1.8 ms a call of 250 on the shared 2-core
/// test box), and a script holds Redis for its whole run: no call blocks it for long.
pub const ROWS_PER_SCRIPT: usize = 250;

/// Script calls of one batch sent before the first answers. Redis runs the
/// commands a client has pipelined one after another, before another client's:
/// all of a 2,000-row round at once held a PING 53 ms behind them (the
/// materializer catch-up test). Two keep one call queued while the other runs.
pub const SCRIPTS_IN_FLIGHT: usize = 2;

/// Removes settled marks that still hold the value read: ARGV is pairs of
/// (instance, value); returns how many went.
const FORGET_SETTLED: &str = r"
local gone = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    gone = gone + redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return gone
";

/// How long a fill lease lives: longer than any PostgreSQL read it covers.
const FILL_LEASE: Duration = Duration::from_secs(10);

/// Redis could not be used; always transient from the caller's point of view.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis: no answer within {0:?}")]
    Timeout(Duration),
    /// A recent failure: Redis is not asked again before the back-off ends.
    #[error("redis: unavailable (backing off)")]
    BackingOff,
    /// A hash whose values the row does not accept (written by something else).
    #[error("redis: malformed value under {0}")]
    Malformed(String),
    /// A cluster master took the write but its replica did not acknowledge it
    /// in time: the write could be lost in a failover, so it counts as failed.
    /// `written` is how many rows the masters took (a retry of the batch
    /// finds them there and writes only the rest).
    #[error("redis: a replica did not acknowledge the write within {waited:?} ({written} rows taken by the masters)")]
    NotReplicated { waited: Duration, written: usize },
}

/// Longest wait for one Redis command. Redis answers in well under a
/// millisecond on a sound network; past this the caller has a better source
/// (PostgreSQL) and must not hang. Measured reason for it: while redis-rs'
/// connection manager reconnects to a stopped server, commands can wait
/// indefinitely despite its own response timeout, and it did not recover
/// once the server was back; so a failure drops the manager and the next
/// command after the back-off connects afresh.
const OP_TIMEOUT: Duration = Duration::from_millis(500);
/// After a failure, Redis is skipped for this long, so an outage costs each
/// request nothing instead of one timeout.
const BACK_OFF: Duration = Duration::from_secs(1);
/// On a cluster, how long a batch of rows waits for every master's replica
/// (`WAIT`); a replica on the same network acknowledges in about a millisecond,
/// but 2,000 rows at once on a loaded 2-core machine missed 100 ms (the
/// Redis Cluster test). Within [`OP_TIMEOUT`], which bounds the writes and the wait together.
const REPLICA_ACK: Duration = Duration::from_millis(300);

/// How the store reaches Redis: one server, or a cluster through its seeds.
#[derive(Clone)]
enum Backend {
    Single { client: redis::Client, manager_config: redis::aio::ConnectionManagerConfig },
    Cluster { client: redis::cluster::ClusterClient, seeds: Vec<redis::Client> },
}

impl Backend {
    async fn connect(&self) -> Result<Conn, redis::RedisError> {
        Ok(match self {
            Backend::Single { client, manager_config } => {
                Conn::Single(ConnectionManager::new_with_config(client.clone(), manager_config.clone()).await?)
            }
            Backend::Cluster { client, .. } => Conn::Cluster(client.get_async_connection().await?),
        })
    }
}

/// A live connection of either kind; commands, scripts and pipelines run on
/// both (the cluster one routes each to the master of its key's slot).
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The cluster slot of `key` (CRC16 of its hash tag, or of the whole key
/// without one, modulo 16384), as Redis computes it. Written here: the
/// `redis` crate's own `get_slot` is crate-private, and ten lines beat a
/// dependency for one checksum (its test compares with `CLUSTER KEYSLOT`).
pub fn key_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = bytes
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &bytes[open + 1..];
            rest.iter().position(|&b| b == b'}').filter(|&len| len > 0).map(|len| &rest[..len])
        })
        .unwrap_or(bytes);
    // CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0.
    let mut crc: u16 = 0;
    for &b in hashed {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc % 16384
}

/// Whether every master's replica has this connection's writes: `WAIT` on
/// each master; one that answers 0 passes only if it has no replica at all
/// (`ROLE`), since then no failover can lose the write (a replica attached
/// later copies it with the rest).
async fn replicated(conn: &mut ClusterConnection) -> Result<bool, redis::RedisError> {
    let mut wait = redis::cmd("WAIT");
    wait.arg(1).arg(REPLICA_ACK.as_millis() as u64);
    let acks = conn.route_command(&wait, RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None))).await?;
    let acks: std::collections::BTreeMap<String, i64> = redis::from_redis_value(&acks)?;
    for (addr, acked) in acks {
        if acked > 0 {
            continue;
        }
        let Some((host, port)) = addr.rsplit_once(':').and_then(|(h, p)| Some((h.to_owned(), p.parse().ok()?))) else {
            return Ok(false);
        };
        let role = conn
            .route_command(
                &redis::cmd("ROLE"),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port }),
            )
            .await?;
        let (_, _, replicas): (String, i64, Vec<redis::Value>) = redis::from_redis_value(&role)?;
        if !replicas.is_empty() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The Redis connection of a service and its key prefix, TTL and scripts.
#[derive(Clone)]
pub struct RedisStore {
    backend: Backend,
    /// The live connection; `None` after a failure, until the next connect.
    conn: std::sync::Arc<std::sync::Mutex<Option<Conn>>>,
    prefix: String,
    ttl: Duration,
    put: Script,
    fill: Script,
    put_progress: Script,
    forget_settled: Script,
    /// Until when Redis is skipped after a failure.
    skip_until: std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

impl RedisStore {
    /// Connects (with automatic reconnection afterwards).
    ///
    /// # Errors
    /// When Redis is unreachable at startup or the URL is invalid.
    pub async fn connect(cfg: &RedisConfig) -> Result<Self, CacheError> {
        let backend = if cfg.cluster {
            let urls: Vec<&str> = cfg.url.split(',').map(str::trim).filter(|u| !u.is_empty()).collect();
            let client = redis::cluster::ClusterClient::builder(urls.clone())
                .connection_timeout(Duration::from_secs(2))
                .response_timeout(Duration::from_secs(2))
                .retries(2)
                .build()?;
            let seeds = urls.into_iter().map(redis::Client::open).collect::<Result<_, _>>()?;
            Backend::Cluster { client, seeds }
        } else {
            let client = redis::Client::open(cfg.url.as_str())?;
            let manager_config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Duration::from_secs(2))
                .set_response_timeout(Duration::from_secs(2))
                .set_number_of_retries(2);
            Backend::Single { client, manager_config }
        };
        let conn = backend.connect().await?;
        Ok(RedisStore {
            backend,
            conn: std::sync::Arc::new(std::sync::Mutex::new(Some(conn))),
            prefix: cfg.key_prefix.clone(),
            ttl: cfg.ttl,
            put: Script::new(PUT_IF_NEWER),
            fill: Script::new(FILL),
            put_progress: Script::new(PUT_PROGRESS),
            forget_settled: Script::new(FORGET_SETTLED),
            skip_until: std::sync::Arc::default(),
        })
    }

    /// Runs one Redis operation with the timeout and the back-off after failures.
    async fn guarded<T, F, Fut>(&self, op: F) -> Result<T, CacheError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T, redis::RedisError>>,
    {
        let now = std::time::Instant::now();
        if self.skip_until.lock().expect("back-off lock").is_some_and(|until| now < until) {
            return Err(CacheError::BackingOff);
        }
        let attempt = async {
            let held = self.conn.lock().expect("connection lock").clone();
            let conn = match held {
                Some(c) => c,
                None => {
                    let c = self.backend.connect().await?;
                    *self.conn.lock().expect("connection lock") = Some(c.clone());
                    c
                }
            };
            op(conn).await
        };
        let result = match tokio::time::timeout(OP_TIMEOUT, attempt).await {
            Ok(r) => r.map_err(CacheError::from),
            Err(_) => Err(CacheError::Timeout(OP_TIMEOUT)),
        };
        if result.is_err() {
            self.conn.lock().expect("connection lock").take();
        }
        let mut skip = self.skip_until.lock().expect("back-off lock");
        *skip = result.is_err().then(|| std::time::Instant::now() + BACK_OFF);
        result
    }

    /// Whether this store runs on a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.backend, Backend::Cluster { .. })
    }

    /// The key of the row `id` of kind `kind`; on a cluster the id is the
    /// hash tag, so the row and its fill lease share a slot.
    pub fn key(&self, kind: &str, id: &str) -> String {
        if self.is_cluster() {
            format!("{}:{kind}:{{{id}}}", self.prefix)
        } else {
            format!("{}:{kind}:{id}", self.prefix)
        }
    }

    /// Deletes every key under the prefix (tests and operators), a thousand
    /// at a time (`SCAN`, then `UNLINK`): a million keys never block Redis for
    /// more than a moment, as one `KEYS` and `DEL` would (1.3 s seen).
    ///
    /// # Errors
    /// [`CacheError`] when Redis does not answer; some keys may be deleted.
    pub async fn clear(&self) -> Result<(), CacheError> {
        if !self.is_cluster() {
            return self.clear_on(None).await;
        }
        // A SCAN sees one server's keys: scan every master the connection knows.
        let masters = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
        let pongs: std::collections::BTreeMap<String, String> = self
            .guarded(|conn| async move {
                let Conn::Cluster(mut conn) = conn else { unreachable!("a cluster store has a cluster connection") };
                redis::from_redis_value(&conn.route_command(&redis::cmd("PING"), masters).await?)
            })
            .await?;
        for (addr, _) in pongs {
            let (host, port) = addr
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
                .ok_or_else(|| CacheError::Malformed(addr.clone()))?;
            self.clear_on(Some(SingleNodeRoutingInfo::ByAddress { host, port })).await?;
        }
        Ok(())
    }

    /// [`RedisStore::clear`] on one server: the single one, or one master of a cluster.
    async fn clear_on(&self, node: Option<SingleNodeRoutingInfo>) -> Result<(), CacheError> {
        let pattern = format!("{}:*", self.prefix);
        let mut cursor: u64 = 0;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000);
            let node = node.clone();
            let (next, keys): (u64, Vec<String>) = self
                .guarded(|conn| async move {
                    match (conn, node) {
                        (Conn::Cluster(mut conn), Some(node)) => {
                            redis::from_redis_value(&conn.route_command(&scan, RoutingInfo::SingleNode(node)).await?)
                        }
                        (mut conn, _) => scan.query_async(&mut conn).await,
                    }
                })
                .await?;
            if !keys.is_empty() {
                // On a cluster the connection splits this by slot.
                let mut unlink = redis::cmd("UNLINK");
                unlink.arg(keys);
                self.guarded(|mut conn| async move { unlink.query_async::<()>(&mut conn).await }).await?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// The key of the progress marks of one events partition; on a cluster
    /// all of a prefix's marks share one slot (one script call, one pipeline).
    fn progress_key(&self, topic: &str, partition: i32) -> String {
        if self.is_cluster() {
            format!("{0}:{{{0}:progress}}:{topic}:{partition}", self.prefix)
        } else {
            format!("{}:progress:{topic}:{partition}", self.prefix)
        }
    }

    /// The pub/sub channel announcing that a workload's read model changed;
    /// each message is the workload's name.
    pub fn changes_channel(&self) -> String {
        format!("{}:changes", self.prefix)
    }

    /// Stores progress marks, each only moving forward (no TTL: a few small
    /// hashes per events topic, and a wait must not start over after expiry).
    ///
    /// # Errors
    /// [`CacheError`] when Redis does not answer; some marks may be written.
    pub async fn put_progress(&self, records: &[crate::engine::progress::Progress]) -> Result<(), CacheError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut inv = self.put_progress.prepare_invoke();
        for p in records {
            inv.key(self.progress_key(&p.events_topic, p.partition));
            inv.arg(p.aggregates_partition).arg(p.next_offset).arg(p.aggregates_partitions);
        }
        self.guarded(|mut conn| async move { inv.invoke_async::<()>(&mut conn).await }).await
    }

    /// The progress marks of one events partition; empty when none is stored.
    ///
    /// # Errors
    /// [`CacheError`] when Redis does not answer or holds a malformed mark.
    pub async fn progress(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Vec<crate::engine::progress::Mark>, CacheError> {
        let key = self.progress_key(topic, partition);
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(&key);
        let fields: Vec<(String, String)> =
            self.guarded(|mut conn| async move { cmd.query_async(&mut conn).await }).await?;
        parse_marks(key, &fields)
    }

    /// The progress marks of several events partitions, in one round trip
    /// (the query's shared watcher reads every partition waited on at once).
    ///
    /// # Errors
    /// [`CacheError`] when Redis does not answer or holds a malformed mark.
    pub async fn progress_many(
        &self,
        partitions: &[(String, i32)],
    ) -> Result<Vec<Vec<crate::engine::progress::Mark>>, CacheError> {
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = partitions.iter().map(|(topic, p)| self.progress_key(topic, *p)).collect();
        let mut pipe = redis::pipe();
        for key in &keys {
            pipe.cmd("HGETALL").arg(key);
        }
        let all: Vec<Vec<(String, String)>> =
            self.guarded(|mut conn| async move { pipe.query_async(&mut conn).await }).await?;
        keys.into_iter().zip(all.iter()).map(|(key, fields)| parse_marks(key, fields)).collect()
    }

    /// The hash of the materializers' *settled marks* of one workload: per
    /// materializer instance, a wall-clock time (ms since the epoch) before
    /// which every row it wrote to PostgreSQL is in Redis. A starting
    /// materializer catches Redis up only from the oldest of them
    /// (`materializer::engine::sink`). No TTL: one small field per instance,
    /// removed by the next start once covered or past one TTL.
    fn settled_key(&self, workload: &str) -> String {
        format!("{}:settled:{workload}", self.prefix)
    }

    /// Every settled mark of `workload`: (instance, ms since the epoch).
    ///
    /// # Errors
    /// [`CacheError`] when Redis does not answer or holds a malformed mark.
    pub async fn settled_marks(&self, workload: &str) -> Result<Vec<(String, i64)>, CacheError> {
        let key = self.settled_key(workload);
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(&key);
        let fields: Vec<(String, String)> =
            self.guarded(|mut conn| async move { cmd.query_async(&mut conn).await }).await?;
        fields
            .into_iter()
            .map(|(instance, at)| at.parse().map(|at| (instance, at)).map_err(|_| CacheError::Malformed(key.clone())))
            .collect()
    }

    /// Sets `instance`'s settled mark of `workload` to `at_ms`.
    ///
    /// # Errors
    /// [`CacheError`] when Redis does not answer.
    pub async fn put_settled(&self, workload: &str, instance: &str, at_ms: i64) -> Result<(), CacheError> {
        let mut cmd = redis::cmd("HSET");
        cmd.arg(self.settled_key(workload)).arg(instance).arg(at_ms);
        self.guarded(|mut conn| async move { cmd.query_async::<i64>(&mut conn).await }).await.map(|_| ())
    }

    /// Removes each of `marks` of `workload` that still holds the value
    /// given (a mark its instance moved since stays).
    ///
    /// # Errors
    /// [`CacheError`] when Redis does not answer; some may be removed.
    pub async fn forget_settled(&self, workload: &str, marks: &[(String, i64)]) -> Result<(), CacheError> {
        if marks.is_empty() {
            return Ok(());
        }
        let mut inv = self.forget_settled.prepare_invoke();
        inv.key(self.settled_key(workload));
        for (instance, at) in marks {
            inv.arg(instance).arg(*at);
        }
        self.guarded(|mut conn| async move { inv.invoke_async::<i64>(&mut conn).await }).await.map(|_| ())
    }

    /// Announces on [`RedisStore::changes_channel`] that `workload`'s read model changed.
    ///
    /// # Errors
    /// [`CacheError`] when Redis does not answer.
    pub async fn publish_change(&self, workload: &str) -> Result<(), CacheError> {
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(self.changes_channel()).arg(workload);
        self.guarded(|mut conn| async move { cmd.query_async::<i64>(&mut conn).await }).await.map(|_| ())
    }

    /// A dedicated connection subscribed to [`RedisStore::changes_channel`].
    /// On a cluster it is to the first seed that answers: a cluster delivers
    /// every `PUBLISH` to the subscribers of all its nodes.
    ///
    /// # Errors
    /// [`CacheError`] when Redis (every seed, on a cluster) does not answer.
    pub async fn subscribe_changes(&self) -> Result<redis::aio::PubSub, CacheError> {
        let channel = self.changes_channel();
        let clients = match &self.backend {
            Backend::Single { client, .. } => std::slice::from_ref(client),
            Backend::Cluster { seeds, .. } => seeds.as_slice(),
        };
        let subscribe = async {
            let mut last = None;
            for client in clients {
                let attempt = async {
                    let mut pubsub = client.get_async_pubsub().await?;
                    pubsub.subscribe(&channel).await?;
                    Ok::<_, redis::RedisError>(pubsub)
                };
                match attempt.await {
                    Ok(pubsub) => return Ok(pubsub),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| (redis::ErrorKind::InvalidClientConfig, "no Redis URL").into()))
        };
        match tokio::time::timeout(Duration::from_secs(2), subscribe).await {
            Ok(r) => r.map_err(CacheError::from),
            Err(_) => Err(CacheError::Timeout(Duration::from_secs(2))),
        }
    }

    /// Answers whether Redis responds to PING within `limit`.
    pub async fn ping(&self, limit: Duration) -> bool {
        let ping = self.guarded(|mut conn| async move { redis::cmd("PING").query_async::<String>(&mut conn).await });
        matches!(tokio::time::timeout(limit, ping).await, Ok(Ok(_)))
    }
}

/// The marks of one progress hash (`key`), each field `<aggregates partition>`
/// holding `<next_offset>/<aggregates partitions>`.
fn parse_marks(key: String, fields: &[(String, String)]) -> Result<Vec<crate::engine::progress::Mark>, CacheError> {
    fields
        .iter()
        .map(|(field, value)| {
            let (offset, n) = value.split_once('/')?;
            Some(crate::engine::progress::Mark {
                aggregates_partition: field.parse().ok()?,
                aggregates_partitions: n.parse().ok()?,
                next_offset: offset.parse().ok()?,
            })
        })
        .collect::<Option<Vec<_>>>()
        .ok_or(CacheError::Malformed(key))
}

/// The Redis copy of one kind of row, [`CachedRow`].
pub struct VersionedCache<R> {
    store: RedisStore,
    row: PhantomData<fn() -> R>,
}

impl<R> Clone for VersionedCache<R> {
    fn clone(&self) -> Self {
        VersionedCache { store: self.store.clone(), row: PhantomData }
    }
}

impl<R: CachedRow> VersionedCache<R> {
    /// The rows of kind `R` in `store`.
    pub fn new(store: RedisStore) -> Self {
        VersionedCache { store, row: PhantomData }
    }

    /// Connects a store of its own (tools and tests; services share one [`RedisStore`]).
    ///
    /// # Errors
    /// When Redis is unreachable at startup or the URL is invalid.
    pub async fn connect(cfg: &RedisConfig) -> Result<Self, CacheError> {
        Ok(Self::new(RedisStore::connect(cfg).await?))
    }

    /// The connection this view uses.
    pub fn store(&self) -> &RedisStore {
        &self.store
    }

    /// The Redis key of row `id`: `<prefix>:<KIND>:<its key columns' values joined by :>`.
    pub fn key(&self, id: &R::Id) -> String {
        let key = R::table()
            .cache_key(&R::key(id))
            .unwrap_or_else(|e| panic!("{}: key gives every key column: {e}", R::KIND));
        self.store.key(R::KIND, &key)
    }

    /// The cached row `id`, or `None` on a miss.
    ///
    /// # Errors
    /// [`CacheError`] when Redis does not answer or holds a malformed hash.
    pub async fn get(&self, id: &R::Id) -> Result<Option<Versioned<R>>, CacheError> {
        let key = self.key(id);
        let mut cmd = redis::cmd("HMGET");
        let fields = fields::<R>();
        cmd.arg(&key).arg(VERSION_FIELD).arg(&fields);
        let values: Vec<Option<String>> =
            self.store.guarded(|mut conn| async move { cmd.query_async(&mut conn).await }).await?;
        // Any field missing is a miss (an entry being written or expiring).
        let Some(mut values) = values.into_iter().collect::<Option<Vec<String>>>() else { return Ok(None) };
        if values.len() != fields.len() + 1 {
            return Ok(None);
        }
        let row_values = values.split_off(1);
        let version = values[0].parse::<i64>().map_err(|_| CacheError::Malformed(key.clone()))?;
        let row = R::table()
            .from_cache(&row_values)
            .and_then(|row| R::from_row(&row).ok())
            .ok_or(CacheError::Malformed(key))?;
        Ok(Some(Versioned { row, version }))
    }

    /// Stores rows whose version is newer than what Redis holds; returns how
    /// many were written. The rows go in script calls of at most
    /// [`ROWS_PER_SCRIPT`] (each atomic, so none blocks Redis for long),
    /// [`SCRIPTS_IN_FLIGHT`] at a time on the multiplexed connection, so the
    /// round trips overlap the scripts' runs (on a cluster, one call per slot,
    /// and then the replicas' acknowledgement).
    ///
    /// # Errors
    /// [`CacheError`] when Redis does not answer; nothing or part may be written.
    pub async fn put_if_newer(&self, rows: &[(R::Id, Versioned<R>)]) -> Result<usize, CacheError> {
        if rows.is_empty() {
            return Ok(0);
        }
        if self.store.is_cluster() {
            // A call per slot, so a round of rows is as many calls as rows: sent and
            // acknowledged by the replicas 250 rows at a time, each within the command
            // timeout (a 2,000-row round took over 500 ms on a loaded 2-core machine).
            let mut written = 0;
            for chunk in rows.chunks(ROWS_PER_SCRIPT) {
                written += self.put_if_newer_by_slot(chunk).await?;
            }
            return Ok(written);
        }
        let calls: Vec<redis::ScriptInvocation<'_>> = rows
            .chunks(ROWS_PER_SCRIPT)
            .map(|chunk| {
                let mut inv = self.store.put.prepare_invoke();
                inv.arg(self.store.ttl.as_millis() as u64);
                field_names::<R>(&mut inv);
                for (id, row) in chunk {
                    inv.key(self.key(id));
                    field_values(&mut inv, row);
                }
                inv
            })
            .collect();
        self.store
            .guarded(|conn| async move {
                // Each call loads the script itself if Redis lacks it (NOSCRIPT), then retries.
                use futures::{StreamExt, TryStreamExt};
                // Collected first: a lazy `map` in the stream makes the future too general to spawn.
                let writes: Vec<_> = calls
                    .iter()
                    .map(|inv| {
                        let mut conn = conn.clone();
                        async move { inv.invoke_async::<usize>(&mut conn).await }
                    })
                    .collect();
                let written = futures::stream::iter(writes).buffer_unordered(SCRIPTS_IN_FLIGHT);
                written.try_fold(0, |sum, n| async move { Ok(sum + n) }).await
            })
            .await
    }

    /// [`VersionedCache::put_if_newer`] on a cluster: one script call per
    /// slot (at most [`ROWS_PER_SCRIPT`] rows each), all at once, then a
    /// replica's acknowledgement from every master.
    async fn put_if_newer_by_slot(&self, rows: &[(R::Id, Versioned<R>)]) -> Result<usize, CacheError> {
        let mut by_slot: std::collections::BTreeMap<u16, Vec<(String, &Versioned<R>)>> = Default::default();
        for (id, row) in rows {
            let key = self.key(id);
            by_slot.entry(key_slot(&key)).or_default().push((key, row));
        }
        let calls: Vec<redis::ScriptInvocation<'_>> = by_slot
            .into_values()
            .flat_map(|slot_rows| {
                let mut chunks = Vec::new();
                let mut slot_rows = slot_rows.into_iter().peekable();
                while slot_rows.peek().is_some() {
                    chunks.push(slot_rows.by_ref().take(ROWS_PER_SCRIPT).collect::<Vec<_>>());
                }
                chunks
            })
            .map(|slot_rows| {
                let mut inv = self.store.put.prepare_invoke();
                inv.arg(self.store.ttl.as_millis() as u64);
                field_names::<R>(&mut inv);
                for (key, row) in slot_rows {
                    inv.key(key);
                    field_values(&mut inv, row);
                }
                inv
            })
            .collect();
        let script = &self.store.put;
        let (written, replicated) = self
            .store
            .guarded(|conn| async move {
                // Loaded on every master first (a cached script: one quick broadcast), or each of the calls
                // would meet NOSCRIPT on a master that lacks it (a new one, a promoted replica) and load it itself.
                script.load_async(&mut conn.clone()).await?;
                let writes = calls.iter().map(|inv| {
                    let mut conn = conn.clone();
                    async move { inv.invoke_async::<usize>(&mut conn).await }
                });
                let written: usize = futures::future::try_join_all(writes).await?.into_iter().sum();
                let Conn::Cluster(mut conn) = conn else { unreachable!("a cluster store has a cluster connection") };
                Ok((written, replicated(&mut conn).await?))
            })
            .await?;
        if replicated {
            Ok(written)
        } else {
            Err(CacheError::NotReplicated { waited: REPLICA_ACK, written })
        }
    }

    /// Takes the fill lease of a row before reading it from PostgreSQL; `None`
    /// if another reader holds it (then do not write back).
    ///
    /// # Errors
    /// [`CacheError`] when Redis does not answer.
    pub async fn lease(&self, id: &R::Id) -> Result<Option<String>, CacheError> {
        let token = crate::random_suffix();
        let mut cmd = redis::cmd("SET");
        cmd.arg(format!("{}:fill", self.key(id))).arg(&token).arg("NX").arg("PX").arg(FILL_LEASE.as_millis() as u64);
        let set: Option<String> =
            self.store.guarded(|mut conn| async move { cmd.query_async(&mut conn).await }).await?;
        Ok(set.map(|_| token))
    }

    /// Writes back a row read from PostgreSQL under the lease taken before the
    /// read; true if written. Nothing is written if anything wrote the row, or
    /// Redis lost the lease, since the lease was taken.
    ///
    /// # Errors
    /// [`CacheError`] when Redis does not answer.
    pub async fn fill(&self, id: &R::Id, row: &Versioned<R>, lease: &str) -> Result<bool, CacheError> {
        let mut inv = self.store.fill.prepare_invoke();
        inv.key(self.key(id)).arg(self.store.ttl.as_millis() as u64).arg(lease);
        field_names::<R>(&mut inv);
        field_values(&mut inv, row);
        let written: i64 = self.store.guarded(|mut conn| async move { inv.invoke_async(&mut conn).await }).await?;
        Ok(written == 1)
    }

    /// Deletes every key under the store's prefix, of every kind (tests and operators).
    ///
    /// # Errors
    /// [`CacheError`] when Redis does not answer.
    pub async fn clear(&self) -> Result<(), CacheError> {
        self.store.clear().await
    }
}

#[cfg(test)]
mod tests {
    use super::key_slot;

    #[test]
    fn slots_are_those_redis_computes_with_hash_tags() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(key_slot("123456789"), 0x31C3);
        assert_eq!(key_slot("foo"), 12182);
        assert_eq!(key_slot("{user1000}.following"), key_slot("{user1000}.followers"));
        assert_eq!(key_slot("{user1000}.following"), key_slot("user1000"));
        // An empty tag hashes the whole key; only the first `{...}` counts.
        assert_eq!(key_slot("foo{}{bar}"), 8363);
        assert_eq!(key_slot("foo{{bar}}zap"), key_slot("{bar"));
        assert_eq!(key_slot("foo{bar}{zap}"), key_slot("bar"));
        assert_eq!(key_slot("a:sum:{row-1}"), key_slot("a:sum:{row-1}:fill"));
    }
}
