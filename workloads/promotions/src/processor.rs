//! The promotions workload in the processor: each events partition loads its
//! rows of every file into the file's generation, and the partition whose
//! report completes a generation switches to it.
//!
//! Per checkpoint, inside the engine's transaction (so a crash replays
//! exactly what was not committed): the rows applied since the last one are
//! copied into the generation's storage (one `COPY` of the text they were
//! buffered as); an end record reports the partition's count; the report that
//! completes the generation (every partition reported, the rows add up, no
//! newer generation active, no id twice) activates it and drops what the
//! switch before left behind: the generation it replaced stays until the
//! next switch, for readers holding a lease on the pointer before this one
//! (the next switch first waits until this one is visible to every reader).
//! An abort drops the generation. The pure part is [`Loads`] (`crate::load`).
//!
//! Each partition keeps in its own tables what a claim restores: the phase
//! and copied rows of each recent generation ([`LOADS`]) and the decisions
//! not yet announced on the generations topic ([`ANNOUNCEMENTS`]).

use std::sync::LazyLock;

use common::engine::avro::DecodeError;
use common::engine::pg::PgError;
use common::engine::store::{Column, ColumnType, Row, Value};

use ::processor::engine::tables::{ReadLease, RowTable, StateTx};
use ::processor::engine::{Aggregation, DedupId, Emit, Position, Record, Scope, Skip};

use crate::load::{self, Announcement, Changes, Decision, Loads, Phase, Receipt};
use crate::read_model::PROMOTIONS;
use crate::records::{Announced, End, FileRecord, GenerationStatus};
use crate::wire::{decode_file_record, encode_generation};
use crate::GenerationState;

/// Rows buffered for the next checkpoint, over the partitions this instance owns.
pub const ROWS_BUFFERED: &str = "analytics_processor_promotion_rows_buffered";

/// `processor_promotion_loads (topic, partition, generation, phase, copied)`.
pub static LOADS: LazyLock<RowTable> = LazyLock::new(|| RowTable {
    table: "processor_promotion_loads",
    key: Column::new("generation", ColumnType::BigInt),
    values: vec![Column::new("phase", ColumnType::Text), Column::new("copied", ColumnType::BigInt)],
});

/// `processor_promotion_announcements (topic, partition, announcement, generation, state, rows, error)`:
/// rows −1 and error '' when not known.
pub static ANNOUNCEMENTS: LazyLock<RowTable> = LazyLock::new(|| RowTable {
    table: "processor_promotion_announcements",
    key: Column::new("announcement", ColumnType::Text),
    values: vec![
        Column::new("generation", ColumnType::BigInt),
        Column::new("state", ColumnType::Text),
        Column::new("rows", ColumnType::BigInt),
        Column::new("error", ColumnType::Text),
    ],
});

/// The promotions workload.
#[derive(Debug, Clone, Copy, Default)]
pub struct Promotions {
    /// The pointer lease each switch writes for readers (`--promotions-read-lease`, `--promotions-clock-skew`).
    pub lease: ReadLease,
}

fn load_row(generation: i64, phase: Phase, copied: u64) -> Row {
    Row::new()
        .with("generation", Value::BigInt(generation))
        .with("phase", Value::Text(phase.as_str().to_owned()))
        .with("copied", Value::BigInt(i64::try_from(copied).expect("rows fit a BIGINT")))
}

fn announcement_row(a: &Announcement) -> Row {
    let s = &a.status;
    Row::new()
        .with("announcement", Value::Text(a.key.clone()))
        .with("generation", Value::BigInt(s.generation))
        .with("state", Value::Text(s.state.as_str().to_owned()))
        .with("rows", Value::BigInt(s.rows.map_or(-1, |n| i64::try_from(n).expect("rows fit a BIGINT"))))
        .with("error", Value::Text(s.error.clone().unwrap_or_default()))
}

fn announcement_of(row: &Row) -> Result<Announcement, PgError> {
    let state = row.text("state")?;
    let state = GenerationState::parse(state)
        .ok_or_else(|| PgError::Corrupt(format!("processor_promotion_announcements: state {state}")))?;
    let error = row.text("error")?;
    Ok(Announcement {
        key: row.text("announcement")?.to_owned(),
        status: GenerationStatus {
            generation: row.big_int("generation")?,
            state,
            rows: u64::try_from(row.big_int("rows")?).ok(),
            error: (!error.is_empty()).then(|| error.to_owned()),
        },
    })
}

fn status_emit(status: GenerationStatus, position: Position) -> Emit {
    let key = status.generation.to_string();
    let payload = encode_generation(&Announced { status, at_ms: position.watermark_ms });
    // Kept whole in the outbox: a decision is not in the state to render again.
    Emit { key, payload, keep_payload: true }
}

/// The report that may complete `generation`: decides it, and switches to it if complete.
/// Returns what it decided, to announce.
async fn settle<T: StateTx>(
    tx: &mut T,
    generation: i64,
    reports: &[(i32, i64)],
    end: &End,
    lease: ReadLease,
) -> Result<Vec<Announcement>, PgError> {
    let table = &*PROMOTIONS;
    let fail = |status: GenerationStatus| vec![Announcement::new(status)];
    let rows = match load::decide(reports, end) {
        Decision::Wait => return Ok(Vec::new()),
        Decision::Fail(why) => {
            tx.drop_generation(table, generation).await?;
            return Ok(fail(GenerationStatus::failed(generation, why)));
        }
        Decision::Complete(rows) => rows,
    };
    match tx.active_generation(table).await? {
        Some(active) if active == generation => return Ok(Vec::new()),
        // A later file switched first: an older one never replaces it.
        Some(active) if active > generation => {
            tx.drop_generation(table, generation).await?;
            return Ok(fail(load::superseded(generation, active)));
        }
        _ => {}
    }
    if let Some(dup) = tx.seal_generation(table, generation).await? {
        tx.drop_generation(table, generation).await?;
        return Ok(fail(load::duplicate(generation, &dup)));
    }
    let mut decided = vec![Announcement::new(GenerationStatus::active(generation, rows))];
    if let Some(previous) = tx.activate_generation(table, generation, lease).await? {
        // Kept: the one just replaced. Dropped: everything older (replaced a switch ago, or never to be active).
        for old in tx.bulk_generations(table).await? {
            if old < previous {
                tx.drop_generation(table, old).await?;
            }
        }
        decided.push(Announcement::new(GenerationStatus::replaced(previous)));
    }
    Ok(decided)
}

impl Aggregation for Promotions {
    const NAME: &'static str = "promotions";
    /// A fetch of 2 MB is about 60 batches (30,000 rows): a starved loop holds that beside its pending
    /// rows rather than 8 MB (docs/benchmarks-notes.md, "Fetches that wait, and a bound that holds").
    const PREFETCH_KBYTES: u32 = 2 * 1024;
    type Event = FileRecord;
    type State = Loads;
    type Changes = Changes;
    type Receipt = Receipt;

    fn decode(&self, payload: &[u8]) -> Result<FileRecord, DecodeError> {
        decode_file_record(payload)
    }

    /// The rows topic stamps the broker's log-append time: records carry no clock of their own.
    fn accepted_at_ms(&self, _: &FileRecord) -> i64 {
        0
    }

    /// A file is one upload: nothing is retried by id.
    fn dedup_id(&self, _: &FileRecord) -> Option<DedupId> {
        None
    }

    /// A batch counts for its rows: the engine's pending bound is a bound on the rows buffered.
    fn weight(&self, record: &FileRecord) -> usize {
        match record {
            FileRecord::Batch(b) => b.rows.len(),
            _ => 1,
        }
    }

    fn apply(&self, state: &mut Loads, record: Record, event: FileRecord) -> Result<(), Skip> {
        state.apply(record.offset, event).map_err(|load::Late(label)| Skip(label))
    }

    fn changes(&self, state: &mut Loads) -> Option<Changes> {
        state.changes()
    }

    async fn restore<T: StateTx>(&self, tx: &mut T, scope: Scope<'_>, _: Position) -> Result<Loads, PgError> {
        let mut loads = Vec::new();
        tx.read_rows(&LOADS, scope, |rows| {
            for row in &rows {
                let phase = row.text("phase")?;
                let phase = Phase::parse(phase)
                    .ok_or_else(|| PgError::Corrupt(format!("processor_promotion_loads: phase {phase}")))?;
                loads.push((row.big_int("generation")?, phase, row.count("copied")?));
            }
            Ok(())
        })
        .await?;
        let mut announce = Vec::new();
        tx.read_rows(&ANNOUNCEMENTS, scope, |rows| {
            for row in &rows {
                announce.push(announcement_of(row)?);
            }
            Ok(())
        })
        .await?;
        Ok(Loads::restored(scope.partition, loads, announce))
    }

    async fn persist<T: StateTx>(&self, tx: &mut T, scope: Scope<'_>, changes: &Changes) -> Result<Receipt, PgError> {
        let table = &*PROMOTIONS;
        // This checkpoint's outbox holds them now.
        if !changes.announce.is_empty() {
            let keys: Vec<Value> = changes.announce.iter().map(|a| Value::Text(a.key.clone())).collect();
            tx.delete_rows(&ANNOUNCEMENTS, scope, &keys).await?;
        }
        let mut receipt = Receipt::default();
        let mut loads = Vec::with_capacity(changes.gens.len());
        for g in &changes.gens {
            if g.abort.is_some() {
                tx.drop_generation(table, g.generation).await?;
                loads.push(load_row(g.generation, Phase::Failed, g.copied));
                continue;
            }
            if g.copy > 0 || g.end.is_some() {
                tx.create_generation(table, g.generation).await?;
            }
            // The rows' COPY text as buffered: one statement, streamed in pieces.
            let copied = tx.copy_text(table, g.generation, &g.text).await?;
            receipt.copied.push((g.generation, copied));
            let held = g.copied + copied;
            let phase = match &g.end {
                Some(end) => {
                    let rows = i64::try_from(held).expect("rows fit a BIGINT");
                    let reports = tx.report_partition(table, g.generation, scope.partition, rows).await?;
                    receipt.decided.extend(settle(tx, g.generation, &reports, end, self.lease).await?);
                    Phase::Ended
                }
                None => Phase::Loading,
            };
            loads.push(load_row(g.generation, phase, held));
        }
        tx.upsert_rows(&LOADS, scope, &loads).await?;
        if !changes.prune.is_empty() {
            let keys: Vec<Value> = changes.prune.iter().map(|g| Value::BigInt(*g)).collect();
            tx.delete_rows(&LOADS, scope, &keys).await?;
        }
        let mut decided: Vec<Row> = receipt.decided.iter().map(announcement_row).collect();
        decided.sort_by(|a, b| a.get("announcement").cmp(&b.get("announcement")));
        tx.upsert_rows(&ANNOUNCEMENTS, scope, &decided).await?;
        Ok(receipt)
    }

    fn committed(&self, state: &mut Loads, changes: Changes, receipt: Receipt) {
        state.committed(changes, receipt);
    }

    fn emits(&self, scope: Scope<'_>, position: Position, changes: &Changes) -> Vec<Emit> {
        changes.statuses(scope.partition).into_iter().map(|s| status_emit(s, position)).collect()
    }

    /// Every emit is kept whole in the outbox: nothing to render.
    fn render(&self, _: Scope<'_>, _: Position, _: &Loads, _: &[String]) -> Vec<Emit> {
        Vec::new()
    }

    fn record_gauges<'a>(&self, states: impl Iterator<Item = &'a Loads>) {
        let buffered: usize = states.map(Loads::buffered).sum();
        metrics::gauge!(ROWS_BUFFERED, "workload" => Self::NAME).set(buffered as f64);
    }
}
