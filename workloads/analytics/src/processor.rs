//! The hourly analytics workload in the processor: events → exact counts per
//! (hour, partition) and exact unique users per (UTC day, partition),
//! persisted as hour rows and user-set chunks (hours and days), emitted as
//! `HourAggregate` records that carry the hour's sketch and its day's count.
//!
//! The pure part is [`PartitionWindow`] (`crate::bucket`); this module
//! only maps it onto the engine's [`Aggregation`] and its rows.

use crate::bucket::{ChangedHour, Checkpoint, DayUsers, Observation, Skipped};
use crate::event::event_id_hash;
use crate::read_model::{COUNTS, COUNT_FIELDS};
use crate::wire::{decode_event, encode_hour_aggregate, DecodeError, HourAggregate};
use crate::{ClickEvent, DayStart, HourBucket, HourCounts, HourStart, PartitionWindow};
use common::engine::pg::PgError;
use common::engine::store::{Column, ColumnType, Row, Value};

use ::processor::engine::state_store::{
    append_chunks, decode_hashes, delete_chunks, read_chunks, record_chunks, ChunkCounts, ChunkTable,
};
use ::processor::engine::tables::{RowTable, StateTx};
use ::processor::engine::{Aggregation, DedupId, Emit, Position, Record, Scope, Skip};

pub const OPEN_HOURS: &str = "analytics_processor_open_hours";
pub const STATE_BYTES: &str = "analytics_processor_state_bytes";
pub const STATE_USER_HOURS: &str = "analytics_processor_state_user_hours";
pub const OPEN_DAYS: &str = "analytics_processor_open_days";
/// Heap bytes of the day user sets; divided by [`STATE_USER_DAYS`]: bytes per user-day.
pub const STATE_DAY_BYTES: &str = "analytics_processor_state_day_bytes";
pub const STATE_USER_DAYS: &str = "analytics_processor_state_user_days";

/// The key column of [`HOURS`].
const HOUR_KEY: &str = "hour_start_ms";

/// The counts of open hours: one column per value of [`COUNT_FIELDS`].
static HOURS: std::sync::LazyLock<RowTable> = std::sync::LazyLock::new(|| RowTable {
    table: "processor_hours",
    key: Column::new(HOUR_KEY, ColumnType::BigInt),
    values: COUNT_FIELDS.iter().map(|f| Column::new(f.column, ColumnType::BigInt)).collect(),
});

/// The user sets of open hours, as chunks of hashes.
const USER_CHUNKS: ChunkTable = ChunkTable { table: "processor_user_chunks", column: "users" };
/// The user sets of open days, as chunks of hashes (keyed by the day's start).
const DAY_USER_CHUNKS: ChunkTable = ChunkTable { table: "processor_day_user_chunks", column: "users" };

/// The analytics workload; holds the deployment's hour retention.
#[derive(Debug, Clone, Copy)]
pub struct Analytics {
    /// How long after its end an hour stays open, on the partition's watermark.
    pub retention_ms: i64,
}

/// One partition's open hours and days and how many user chunks each has stored.
pub struct AnalyticsState {
    window: PartitionWindow,
    user_chunks: ChunkCounts,
    day_user_chunks: ChunkCounts,
}

/// What one checkpoint persists and emits: the window's changes, and how
/// many user chunks the hours and days it appends to have stored (to merge
/// an hour's chunks once it has many), taken with it.
pub struct Changes {
    cp: Checkpoint,
    user_chunks: ChunkCounts,
    day_user_chunks: ChunkCounts,
}

/// User chunks appended per hour and per day by one checkpoint.
pub struct Appended {
    hours: Vec<(i64, u32)>,
    days: Vec<(i64, u32)>,
}

impl AnalyticsState {
    /// The open hours.
    pub fn window(&self) -> &PartitionWindow {
        &self.window
    }
}

/// The stored chunk counts of `keys` (hours or days): what a checkpoint appending to them needs.
fn chunk_counts(held: &ChunkCounts, keys: impl Iterator<Item = i64>) -> ChunkCounts {
    keys.filter_map(|k| held.get(&k).map(|n| (k, *n))).collect()
}

/// `closing`: the checkpoint drops the hour, so the outbox must keep the bytes.
fn aggregate(partition: i32, position: Position, hour: &ChangedHour, closing: bool) -> Emit {
    let agg = HourAggregate {
        hour: hour.hour,
        partition,
        counts: hour.counts,
        input_offset: position.next_offset,
        watermark_ms: position.watermark_ms,
        sketch: Some(hour.sketch.clone()),
        day_unique_users: Some(hour.day_unique_users),
    };
    Emit { key: agg.key(), payload: encode_hour_aggregate(&agg), keep_payload: closing }
}

impl Aggregation for Analytics {
    const NAME: &'static str = "analytics";
    type Event = ClickEvent;
    type State = AnalyticsState;
    type Changes = Changes;
    /// User chunks appended per hour and per day.
    type Receipt = Appended;

    fn decode(&self, payload: &[u8]) -> Result<ClickEvent, DecodeError> {
        decode_event(payload)
    }

    fn accepted_at_ms(&self, event: &ClickEvent) -> i64 {
        event.accepted_at_ms
    }

    /// Ids are unique per user, and forgotten when the event's hour closes
    /// (after which no retry of it can be counted anyway).
    fn dedup_id(&self, event: &ClickEvent) -> Option<DedupId> {
        let id = event.id.as_deref()?;
        Some(DedupId { bucket_ms: event.hour().start_ms(), hash: event_id_hash(&event.user, id) })
    }

    fn apply(&self, state: &mut AnalyticsState, record: Record, event: ClickEvent) -> Result<(), Skip> {
        // The window closes hours by the partition's watermark: the engine's.
        let obs = Observation { accepted_at_ms: record.watermark_ms, ..Observation::from(&event) };
        state.window.apply(obs).map_err(|Skipped::ClosedHour| {
            tracing::warn!(offset = record.offset, hour = %obs.hour, "event for a closed hour not counted");
            Skip("closed_hour")
        })
    }

    fn changes(&self, state: &mut AnalyticsState) -> Option<Changes> {
        state.window.evict_closed();
        if !state.window.has_changes() {
            return None;
        }
        let cp = state.window.checkpoint();
        let user_chunks = chunk_counts(&state.user_chunks, cp.changed.iter().map(|c| c.hour.start_ms()));
        let day_user_chunks = chunk_counts(&state.day_user_chunks, cp.changed_days.iter().map(|d| d.day.start_ms()));
        Some(Changes { cp, user_chunks, day_user_chunks })
    }

    async fn restore<T: StateTx>(
        &self,
        tx: &mut T,
        scope: Scope<'_>,
        position: Position,
    ) -> Result<AnalyticsState, PgError> {
        let mut hours = Vec::new();
        tx.read_rows(&HOURS, scope, |rows| {
            hours.extend(rows);
            Ok(())
        })
        .await?;
        let mut users = read_chunks(tx, USER_CHUNKS, scope).await?;
        let mut window = PartitionWindow::new(position.watermark_ms, self.retention_ms);
        let mut day_user_chunks = ChunkCounts::new();
        // Days first: restoring an hour adds its users to its day.
        for (day, parts) in read_chunks(tx, DAY_USER_CHUNKS, scope).await? {
            let Some(day) = DayStart::from_aligned(day) else { continue };
            let size: usize = parts.iter().map(|p| p.len() / 8).sum();
            day_user_chunks.insert(day.start_ms(), parts.len() as u32);
            window.restore_day(day, DayUsers::restore(parts.iter().flat_map(|p| decode_hashes(p)), size));
        }
        let mut user_chunks = ChunkCounts::new();
        for h in &hours {
            let Some(hour) = HourStart::from_aligned(h.big_int(HOUR_KEY)?) else { continue };
            let parts = users.remove(&hour.start_ms()).unwrap_or_default();
            let mut counts = [0u64; COUNTS];
            for (count, field) in counts.iter_mut().zip(COUNT_FIELDS.iter()) {
                *count = u64::try_from(h.big_int(field.column)?).unwrap_or(0);
            }
            let stored = HourCounts::from_array(counts);
            let expected = usize::try_from(stored.unique_users).unwrap_or(0);
            let bucket = HourBucket::restore(stored, parts.iter().flat_map(|p| decode_hashes(p)), expected);
            debug_assert_eq!(bucket.counts().unique_users as usize, expected, "user chunks match the stored count");
            user_chunks.insert(hour.start_ms(), parts.len() as u32);
            window.restore_hour(hour, bucket);
        }
        Ok(AnalyticsState { window, user_chunks, day_user_chunks })
    }

    async fn persist<T: StateTx>(&self, tx: &mut T, scope: Scope<'_>, changes: &Changes) -> Result<Appended, PgError> {
        let cp = &changes.cp;
        let rows: Vec<Row> = cp
            .changed
            .iter()
            .map(|c| {
                let mut row = Row::new().with(HOUR_KEY, Value::BigInt(c.hour.start_ms()));
                for (field, count) in COUNT_FIELDS.iter().zip(c.counts.to_array()) {
                    row.set(field.column, Value::BigInt(i64::try_from(count).unwrap_or(i64::MAX)));
                }
                row
            })
            .collect();
        tx.upsert_rows(&HOURS, scope, &rows).await?;
        let new_users: Vec<(i64, &[u64])> =
            cp.changed.iter().map(|c| (c.hour.start_ms(), c.new_users.as_slice())).collect();
        let added = append_chunks(tx, USER_CHUNKS, scope, &new_users, &changes.user_chunks).await?;
        let closed: Vec<i64> = cp.closed.iter().map(|h| h.start_ms()).collect();
        if !closed.is_empty() {
            let keys: Vec<Value> = closed.iter().map(|h| Value::BigInt(*h)).collect();
            tx.delete_rows(&HOURS, scope, &keys).await?;
            delete_chunks(tx, USER_CHUNKS, scope, &closed).await?;
        }
        let new_day_users: Vec<(i64, &[u64])> =
            cp.changed_days.iter().map(|d| (d.day.start_ms(), d.new_users.as_slice())).collect();
        let days = append_chunks(tx, DAY_USER_CHUNKS, scope, &new_day_users, &changes.day_user_chunks).await?;
        let closed_days: Vec<i64> = cp.closed_days.iter().map(|d| d.start_ms()).collect();
        delete_chunks(tx, DAY_USER_CHUNKS, scope, &closed_days).await?;
        Ok(Appended { hours: added, days })
    }

    fn committed(&self, state: &mut AnalyticsState, Changes { cp, .. }: Changes, added: Appended) {
        state.window.mark_persisted(&cp);
        let closed: Vec<i64> = cp.closed.iter().map(|h| h.start_ms()).collect();
        record_chunks(&mut state.user_chunks, added.hours, &closed);
        let closed_days: Vec<i64> = cp.closed_days.iter().map(|d| d.start_ms()).collect();
        record_chunks(&mut state.day_user_chunks, added.days, &closed_days);
    }

    /// From the checkpoint, not the window: an hour that closed in this batch is only there.
    fn emits(&self, scope: Scope<'_>, position: Position, changes: &Changes) -> Vec<Emit> {
        let cp = &changes.cp;
        cp.changed.iter().map(|c| aggregate(scope.partition, position, c, cp.closed.contains(&c.hour))).collect()
    }

    /// Keys are `<hour start ms>:<partition>` ([`HourAggregate::key`]); an
    /// hour no longer open is left out (its final record was kept whole).
    fn render(&self, scope: Scope<'_>, position: Position, state: &AnalyticsState, keys: &[String]) -> Vec<Emit> {
        keys.iter()
            .filter_map(|k| k.split_once(':')?.0.parse::<i64>().ok())
            .filter_map(HourStart::from_aligned)
            .filter_map(|hour| state.window.report_hour(hour))
            .map(|c| aggregate(scope.partition, position, &c, false))
            .collect()
    }

    fn record_gauges<'a>(&self, states: impl Iterator<Item = &'a AnalyticsState>) {
        let (mut hours, mut bytes, mut user_hours) = (0, 0, 0);
        let (mut days, mut day_bytes, mut user_days) = (0, 0, 0);
        for s in states {
            hours += s.window.open_hours();
            bytes += s.window.heap_bytes();
            user_hours += s.window.user_hours();
            days += s.window.open_days();
            day_bytes += s.window.day_heap_bytes();
            user_days += s.window.user_days();
        }
        metrics::gauge!(OPEN_HOURS, "workload" => Self::NAME).set(hours as f64);
        metrics::gauge!(STATE_BYTES, "workload" => Self::NAME).set(bytes as f64);
        metrics::gauge!(STATE_USER_HOURS, "workload" => Self::NAME).set(user_hours as f64);
        metrics::gauge!(OPEN_DAYS, "workload" => Self::NAME).set(days as f64);
        metrics::gauge!(STATE_DAY_BYTES, "workload" => Self::NAME).set(day_bytes as f64);
        metrics::gauge!(STATE_USER_DAYS, "workload" => Self::NAME).set(user_days as f64);
    }
}
