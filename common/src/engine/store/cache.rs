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

use std::marker::PhantomData;
use std::time::Duration;

use redis::aio::ConnectionManager;
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

/// The Redis connection of a service and its key prefix, TTL and scripts.
#[derive(Clone)]
pub struct RedisStore {
    client: redis::Client,
    manager_config: redis::aio::ConnectionManagerConfig,
    /// The live connection; `None` after a failure, until the next connect.
    conn: std::sync::Arc<std::sync::Mutex<Option<ConnectionManager>>>,
    prefix: String,
    ttl: Duration,
    put: Script,
    fill: Script,
    put_progress: Script,
    /// Until when Redis is skipped after a failure.
    skip_until: std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

impl RedisStore {
    /// Connects (with automatic reconnection afterwards).
    ///
    /// # Errors
    /// When Redis is unreachable at startup or the URL is invalid.
    pub async fn connect(cfg: &RedisConfig) -> Result<Self, CacheError> {
        let client = redis::Client::open(cfg.url.as_str())?;
        let mgr_cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(2))
            .set_response_timeout(Duration::from_secs(2))
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_with_config(client.clone(), mgr_cfg.clone()).await?;
        Ok(RedisStore {
            client,
            manager_config: mgr_cfg,
            conn: std::sync::Arc::new(std::sync::Mutex::new(Some(conn))),
            prefix: cfg.key_prefix.clone(),
            ttl: cfg.ttl,
            put: Script::new(PUT_IF_NEWER),
            fill: Script::new(FILL),
            put_progress: Script::new(PUT_PROGRESS),
            skip_until: std::sync::Arc::default(),
        })
    }

    /// Runs one Redis operation with the timeout and the back-off after failures.
    async fn guarded<T, F, Fut>(&self, op: F) -> Result<T, CacheError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
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
                    let c =
                        ConnectionManager::new_with_config(self.client.clone(), self.manager_config.clone()).await?;
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

    /// The key of the row `id` of kind `kind`.
    pub fn key(&self, kind: &str, id: &str) -> String {
        format!("{}:{kind}:{id}", self.prefix)
    }

    /// Deletes every key under the prefix (tests and operators), a thousand
    /// at a time (`SCAN`, then `UNLINK`): a million keys never block Redis for
    /// more than a moment, as one `KEYS` and `DEL` would (1.3 s seen).
    ///
    /// # Errors
    /// [`CacheError`] when Redis does not answer; some keys may be deleted.
    pub async fn clear(&self) -> Result<(), CacheError> {
        let pattern = format!("{}:*", self.prefix);
        let mut cursor: u64 = 0;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000);
            let (next, keys): (u64, Vec<String>) =
                self.guarded(|mut conn| async move { scan.query_async(&mut conn).await }).await?;
            if !keys.is_empty() {
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

    /// The key of the progress marks of one events partition.
    fn progress_key(&self, topic: &str, partition: i32) -> String {
        format!("{}:progress:{topic}:{partition}", self.prefix)
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
    ///
    /// # Errors
    /// [`CacheError`] when Redis does not answer.
    pub async fn subscribe_changes(&self) -> Result<redis::aio::PubSub, CacheError> {
        let channel = self.changes_channel();
        let subscribe = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
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

    /// Stores rows whose version is newer than what Redis holds; returns how many were written.
    ///
    /// # Errors
    /// [`CacheError`] when Redis does not answer; nothing or part may be written.
    pub async fn put_if_newer(&self, rows: &[(R::Id, Versioned<R>)]) -> Result<usize, CacheError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let mut inv = self.store.put.prepare_invoke();
        inv.arg(self.store.ttl.as_millis() as u64);
        field_names::<R>(&mut inv);
        for (id, row) in rows {
            inv.key(self.key(id));
            field_values(&mut inv, row);
        }
        self.store.guarded(|mut conn| async move { inv.invoke_async(&mut conn).await }).await
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
