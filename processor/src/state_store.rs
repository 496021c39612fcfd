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
use common::engine::pg::PgError;
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

impl StoreError {
    /// Worth retrying: PostgreSQL unavailable or a transient conflict, not a fence.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Fenced(_) => false,
            StoreError::Pg(e) => e.is_retryable(),
        }
    }
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

/// How many chunk rows each open hour has, per chunk table (to merge them when many).
#[derive(Debug, Default)]
pub struct Chunks {
    pub users: HashMap<HourStart, u32>,
    pub ids: HashMap<HourStart, u32>,
}

/// The two chunk tables: user sets and event ids, both of 8-byte hashes.
#[derive(Clone, Copy)]
enum ChunkTable {
    Users,
    Ids,
}

impl ChunkTable {
    fn table(self) -> &'static str {
        match self {
            ChunkTable::Users => "processor_user_chunks",
            ChunkTable::Ids => "processor_id_chunks",
        }
    }

    fn column(self) -> &'static str {
        match self {
            ChunkTable::Users => "users",
            ChunkTable::Ids => "ids",
        }
    }

    fn counts(self, chunks: &mut Chunks) -> &mut HashMap<HourStart, u32> {
        match self {
            ChunkTable::Users => &mut chunks.users,
            ChunkTable::Ids => &mut chunks.ids,
        }
    }
}

/// A partition's state as claimed from the store.
pub struct Claimed {
    pub epoch: i64,
    pub window: PartitionWindow,
    pub chunks: Chunks,
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
        let (epoch, next_offset, watermark_ms): (i64, i64, i64) =
            (row.get("epoch"), row.get("next_offset"), row.get("watermark_ms"));
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
        let id_chunks = tx
            .query(
                "SELECT hour_start_ms, ids FROM processor_id_chunks WHERE topic = $1 AND partition = $2",
                &[&self.topic, &partition],
            )
            .await?;
        tx.commit().await?;

        let mut users: HashMap<i64, Vec<&[u8]>> = HashMap::new();
        for c in &chunks {
            users.entry(c.get("hour_start_ms")).or_default().push(c.get::<_, &[u8]>("users"));
        }
        let mut window = PartitionWindow::new(next_offset, watermark_ms, retention_ms);
        let mut chunk_counts = Chunks::default();
        for c in &id_chunks {
            let Some(hour) = HourStart::from_aligned(c.get("hour_start_ms")) else { continue };
            window.restore_ids(hour, decode_hashes(c.get::<_, &[u8]>("ids")));
            *chunk_counts.ids.entry(hour).or_default() += 1;
        }
        for h in &hours {
            let Some(hour) = HourStart::from_aligned(h.get("hour_start_ms")) else { continue };
            let parts = users.remove(&hour.start_ms()).unwrap_or_default();
            let expected = usize::try_from(h.get::<_, i64>("unique_users")).unwrap_or(0);
            let bucket = HourBucket::restore(
                u64::try_from(h.get::<_, i64>("clicks")).unwrap_or(0),
                u64::try_from(h.get::<_, i64>("impressions")).unwrap_or(0),
                parts.iter().flat_map(|p| decode_hashes(p)),
                expected,
            );
            debug_assert_eq!(bucket.counts().unique_users as usize, expected, "user chunks match the stored count");
            chunk_counts.users.insert(hour, parts.len() as u32);
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
        chunks: &mut Chunks,
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
        let new_users: Vec<(HourStart, &[u64])> = cp.changed.iter().map(|c| (c.hour, c.new_users.as_slice())).collect();
        let mut new_ids: HashMap<HourStart, Vec<u64>> = HashMap::new();
        for (hour, id) in &cp.new_ids {
            new_ids.entry(*hour).or_default().push(*id);
        }
        let new_ids: Vec<(HourStart, &[u64])> = new_ids.iter().map(|(h, ids)| (*h, ids.as_slice())).collect();
        let users_added = self.append_chunks(&tx, partition, ChunkTable::Users, &new_users, chunks).await?;
        let ids_added = self.append_chunks(&tx, partition, ChunkTable::Ids, &new_ids, chunks).await?;
        if !cp.closed.is_empty() {
            let closed: Vec<i64> = cp.closed.iter().map(|h| h.start_ms()).collect();
            tx.execute(
                "DELETE FROM processor_hours WHERE topic = $1 AND partition = $2 AND hour_start_ms = ANY($3)",
                &[&self.topic, &partition, &closed],
            )
            .await?;
            for table in [ChunkTable::Users, ChunkTable::Ids] {
                tx.execute(
                    &format!(
                        "DELETE FROM {} WHERE topic = $1 AND partition = $2 AND hour_start_ms = ANY($3)",
                        table.table()
                    ),
                    &[&self.topic, &partition, &closed],
                )
                .await?;
            }
        }
        tx.commit().await?;
        // Only now that it is durable: the new chunk counts.
        for (table, added) in [(ChunkTable::Users, users_added), (ChunkTable::Ids, ids_added)] {
            let counts = table.counts(chunks);
            for (hour, n) in added {
                counts.insert(hour, n);
            }
            for h in &cp.closed {
                counts.remove(h);
            }
        }
        Ok(())
    }

    /// Appends one chunk per hour with new hashes, and merges the chunks of an
    /// hour that has [`MAX_CHUNKS_PER_HOUR`], so a restore reads few rows.
    /// Returns the hours' chunk counts after the transaction commits.
    async fn append_chunks(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        partition: i32,
        table: ChunkTable,
        new: &[(HourStart, &[u64])],
        chunks: &mut Chunks,
    ) -> Result<Vec<(HourStart, u32)>, StoreError> {
        let (hours, blobs): (Vec<i64>, Vec<Vec<u8>>) =
            new.iter().filter(|(_, h)| !h.is_empty()).map(|(hour, h)| (hour.start_ms(), encode_hashes(h))).unzip();
        if hours.is_empty() {
            return Ok(Vec::new());
        }
        let (name, column) = (table.table(), table.column());
        tx.execute(
            &format!(
                "INSERT INTO {name} (topic, partition, hour_start_ms, {column})
                 SELECT $1, $2, * FROM unnest($3::bigint[], $4::bytea[])"
            ),
            &[&self.topic, &partition, &hours, &blobs],
        )
        .await?;
        let counts = table.counts(chunks);
        let mut after = Vec::with_capacity(hours.len());
        for h in hours {
            let hour = HourStart::from_aligned(h).expect("aligned by construction");
            let n = counts.get(&hour).copied().unwrap_or(0) + 1;
            if n >= MAX_CHUNKS_PER_HOUR {
                tx.execute(
                    &format!(
                        "WITH old AS (
                             DELETE FROM {name} WHERE topic = $1 AND partition = $2 AND hour_start_ms = $3
                             RETURNING seq, {column})
                         INSERT INTO {name} (topic, partition, hour_start_ms, {column})
                         SELECT $1, $2, $3, string_agg({column}, ''::bytea ORDER BY seq) FROM old"
                    ),
                    &[&self.topic, &partition, &h],
                )
                .await?;
                after.push((hour, 1));
            } else {
                after.push((hour, n));
            }
        }
        Ok(after)
    }
}
