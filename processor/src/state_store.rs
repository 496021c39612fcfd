//! The processor's state store in PostgreSQL.
//!
//! Per events partition: the position (`next_offset`), the watermark, the
//! counts of each open hour and its user set as append-only chunks of hashes.
//! A checkpoint writes all of it in one transaction, so the state and the
//! offset it reflects are always committed together. Each claim of a
//! partition bumps its `epoch`; a checkpoint only commits under the writer's
//! own epoch, so an instance that lost the partition can no longer write.

use std::collections::HashMap;

use common::analytics::bucket::Checkpoint;
use common::analytics::user_set::{decode_hashes, encode_hashes};
use common::analytics::{HourBucket, HourStart, PartitionWindow};
use common::pg::PgError;
use deadpool_postgres::Pool;

/// Chunks an hour may have before they are merged into one.
const MAX_CHUNKS_PER_HOUR: u32 = 64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another instance claimed the partition since we did: drop our state.
    #[error("partition {0} was claimed by another instance")]
    Fenced(i32),
    #[error(transparent)]
    Pg(#[from] PgError),
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError::Pg(e.into())
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::Pg(e.into())
    }
}

/// A partition's state as claimed from the store.
pub struct Claimed {
    pub epoch: i64,
    pub window: PartitionWindow,
    pub chunks: HashMap<HourStart, u32>,
}

#[derive(Clone)]
pub struct StateStore {
    pool: Pool,
    topic: String,
}

impl StateStore {
    pub fn new(pool: Pool, topic: String) -> Self {
        StateStore { pool, topic }
    }

    /// Takes ownership of a partition (bumping its epoch) and loads its state.
    ///
    /// # Errors
    /// [`StoreError::Pg`] when PostgreSQL cannot answer.
    pub async fn claim(&self, partition: i32, retention_ms: i64) -> Result<Claimed, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_one(
                "INSERT INTO processor_partitions (topic, partition, epoch, next_offset, watermark_ms)
                 VALUES ($1, $2, 1, 0, 0)
                 ON CONFLICT (topic, partition) DO UPDATE SET epoch = processor_partitions.epoch + 1, updated_at = now()
                 RETURNING epoch, next_offset, watermark_ms",
                &[&self.topic, &partition],
            )
            .await?;
        let (epoch, next_offset, watermark_ms): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        let hours = tx
            .query(
                "SELECT hour_start_ms, clicks, impressions, unique_users FROM processor_hours
                 WHERE topic = $1 AND partition = $2",
                &[&self.topic, &partition],
            )
            .await?;
        let chunks = tx
            .query(
                "SELECT hour_start_ms, users FROM processor_user_chunks
                 WHERE topic = $1 AND partition = $2 ORDER BY hour_start_ms, seq",
                &[&self.topic, &partition],
            )
            .await?;
        tx.commit().await?;

        let mut users: HashMap<i64, Vec<&[u8]>> = HashMap::new();
        for c in &chunks {
            users.entry(c.get(0)).or_default().push(c.get::<_, &[u8]>(1));
        }
        let mut window = PartitionWindow::new(next_offset, watermark_ms, retention_ms);
        let mut chunk_counts = HashMap::new();
        for h in &hours {
            let Some(hour) = HourStart::from_aligned(h.get(0)) else { continue };
            let parts = users.remove(&hour.start_ms()).unwrap_or_default();
            let expected = usize::try_from(h.get::<_, i64>(3)).unwrap_or(0);
            let bucket = HourBucket::restore(
                u64::try_from(h.get::<_, i64>(1)).unwrap_or(0),
                u64::try_from(h.get::<_, i64>(2)).unwrap_or(0),
                parts.iter().flat_map(|p| decode_hashes(p)),
                expected,
            );
            debug_assert_eq!(bucket.counts().unique_users as usize, expected, "user chunks match the stored count");
            chunk_counts.insert(hour, parts.len() as u32);
            window.restore_hour(hour, bucket);
        }
        Ok(Claimed { epoch, window, chunks: chunk_counts })
    }

    /// Commits a checkpoint under `epoch`.
    ///
    /// # Errors
    /// [`StoreError::Fenced`] if the partition was claimed by someone else;
    /// [`StoreError::Pg`] otherwise (nothing is written then).
    pub async fn commit(
        &self,
        partition: i32,
        epoch: i64,
        cp: &Checkpoint,
        chunks: &mut HashMap<HourStart, u32>,
    ) -> Result<(), StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let updated = tx
            .execute(
                "UPDATE processor_partitions SET next_offset = $3, watermark_ms = $4, updated_at = now()
                 WHERE topic = $1 AND partition = $2 AND epoch = $5",
                &[&self.topic, &partition, &cp.next_offset, &cp.watermark_ms, &epoch],
            )
            .await?;
        if updated == 0 {
            return Err(StoreError::Fenced(partition));
        }
        let hours: Vec<i64> = cp.changed.iter().map(|c| c.hour.start_ms()).collect();
        let as_i64 = |f: fn(&common::analytics::bucket::ChangedHour) -> u64| -> Vec<i64> {
            cp.changed.iter().map(|c| i64::try_from(f(c)).unwrap_or(i64::MAX)).collect()
        };
        tx.execute(
            "INSERT INTO processor_hours (topic, partition, hour_start_ms, clicks, impressions, unique_users)
             SELECT $1, $2, * FROM unnest($3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[])
             ON CONFLICT (topic, partition, hour_start_ms) DO UPDATE SET
                 clicks = EXCLUDED.clicks, impressions = EXCLUDED.impressions, unique_users = EXCLUDED.unique_users",
            &[
                &self.topic,
                &partition,
                &hours,
                &as_i64(|c| c.counts.clicks),
                &as_i64(|c| c.counts.impressions),
                &as_i64(|c| c.counts.unique_users),
            ],
        )
        .await?;
        let (chunk_hours, chunk_users): (Vec<i64>, Vec<Vec<u8>>) = cp
            .changed
            .iter()
            .filter(|c| !c.new_users.is_empty())
            .map(|c| (c.hour.start_ms(), encode_hashes(&c.new_users)))
            .unzip();
        if !chunk_hours.is_empty() {
            tx.execute(
                "INSERT INTO processor_user_chunks (topic, partition, hour_start_ms, users)
                 SELECT $1, $2, * FROM unnest($3::bigint[], $4::bytea[])",
                &[&self.topic, &partition, &chunk_hours, &chunk_users],
            )
            .await?;
        }
        // Merge the chunks of hours that have many, so a restore reads few rows.
        let mut merged = Vec::new();
        for h in &cp.changed {
            let n = chunks.get(&h.hour).copied().unwrap_or(0) + u32::from(!h.new_users.is_empty());
            if n >= MAX_CHUNKS_PER_HOUR {
                tx.execute(
                    "WITH old AS (
                         DELETE FROM processor_user_chunks WHERE topic = $1 AND partition = $2 AND hour_start_ms = $3
                         RETURNING seq, users)
                     INSERT INTO processor_user_chunks (topic, partition, hour_start_ms, users)
                     SELECT $1, $2, $3, string_agg(users, ''::bytea ORDER BY seq) FROM old",
                    &[&self.topic, &partition, &h.hour.start_ms()],
                )
                .await?;
                merged.push(h.hour);
            }
        }
        if !cp.closed.is_empty() {
            let closed: Vec<i64> = cp.closed.iter().map(|h| h.start_ms()).collect();
            tx.execute(
                "DELETE FROM processor_hours WHERE topic = $1 AND partition = $2 AND hour_start_ms = ANY($3)",
                &[&self.topic, &partition, &closed],
            )
            .await?;
            tx.execute(
                "DELETE FROM processor_user_chunks WHERE topic = $1 AND partition = $2 AND hour_start_ms = ANY($3)",
                &[&self.topic, &partition, &closed],
            )
            .await?;
        }
        tx.commit().await?;
        for h in &cp.changed {
            if !h.new_users.is_empty() {
                *chunks.entry(h.hour).or_default() += 1;
            }
        }
        for h in merged {
            chunks.insert(h, 1);
        }
        for h in &cp.closed {
            chunks.remove(h);
        }
        Ok(())
    }
}
