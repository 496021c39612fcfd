//! Hourly totals in Redis: one hash per hour, `<prefix>:hour:<hour_start_ms>`,
//! with fields `v` (version), `u`, `c`, `i`, and a TTL.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

use super::HourTotals;
use crate::analytics::{HourCounts, HourStart};
use crate::config::RedisConfig;

/// Writes each hour only if its version is newer than the stored one, and
/// refreshes the TTL of what it writes. Atomic per call.
const PUT_IF_NEWER: &str = r"
local ttl = tonumber(ARGV[1])
local written = 0
for i, key in ipairs(KEYS) do
  local base = 1 + (i - 1) * 4
  local v = tonumber(ARGV[base + 1])
  local cur = tonumber(redis.call('HGET', key, 'v'))
  if cur == nil or cur < v then
    redis.call('HSET', key, 'v', ARGV[base + 1], 'u', ARGV[base + 2], 'c', ARGV[base + 3], 'i', ARGV[base + 4])
    redis.call('PEXPIRE', key, ttl)
    written = written + 1
  end
end
return written
";

/// Redis could not be used; always transient from the caller's point of view.
#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct CacheError(#[from] redis::RedisError);

/// The Redis copy of the hourly totals.
#[derive(Clone)]
pub struct HourCache {
    conn: ConnectionManager,
    prefix: String,
    ttl: Duration,
    script: Script,
}

impl HourCache {
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
        let conn = ConnectionManager::new_with_config(client, mgr_cfg).await?;
        Ok(HourCache { conn, prefix: cfg.key_prefix.clone(), ttl: cfg.ttl, script: Script::new(PUT_IF_NEWER) })
    }

    pub fn key(&self, hour: HourStart) -> String {
        format!("{}:hour:{}", self.prefix, hour.start_ms())
    }

    /// The cached totals of an hour, or `None` on a miss.
    ///
    /// # Errors
    /// [`CacheError`] when Redis does not answer.
    pub async fn get(&self, hour: HourStart) -> Result<Option<HourTotals>, CacheError> {
        let mut conn = self.conn.clone();
        let (v, u, c, i): (Option<i64>, Option<u64>, Option<u64>, Option<u64>) =
            redis::cmd("HMGET").arg(self.key(hour)).arg(&["v", "u", "c", "i"]).query_async(&mut conn).await?;
        Ok(match (v, u, c, i) {
            (Some(version), Some(unique_users), Some(clicks), Some(impressions)) => {
                Some(HourTotals { counts: HourCounts { unique_users, clicks, impressions }, version })
            }
            _ => None,
        })
    }

    /// Stores totals whose version is newer than what Redis holds; returns how many were written.
    ///
    /// # Errors
    /// [`CacheError`] when Redis does not answer; nothing or part may be written.
    pub async fn put_if_newer(&self, totals: &[(HourStart, HourTotals)]) -> Result<usize, CacheError> {
        if totals.is_empty() {
            return Ok(0);
        }
        let mut inv = self.script.prepare_invoke();
        inv.arg(self.ttl.as_millis() as u64);
        for (hour, t) in totals {
            inv.key(self.key(*hour))
                .arg(t.version)
                .arg(t.counts.unique_users)
                .arg(t.counts.clicks)
                .arg(t.counts.impressions);
        }
        let mut conn = self.conn.clone();
        Ok(inv.invoke_async(&mut conn).await?)
    }

    /// Deletes every key under the prefix (tests and operators).
    ///
    /// # Errors
    /// [`CacheError`] when Redis does not answer.
    pub async fn clear(&self) -> Result<(), CacheError> {
        let mut conn = self.conn.clone();
        let keys: Vec<String> = conn.keys(format!("{}:*", self.prefix)).await?;
        if !keys.is_empty() {
            let _: () = conn.del(keys).await?;
        }
        Ok(())
    }

    /// Answers whether Redis responds to PING within `limit`.
    pub async fn ping(&self, limit: Duration) -> bool {
        let mut conn = self.conn.clone();
        let ping = async move { redis::cmd("PING").query_async::<String>(&mut conn).await };
        matches!(tokio::time::timeout(limit, ping).await, Ok(Ok(_)))
    }
}
