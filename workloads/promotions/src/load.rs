//! One events partition's part of the generations being loaded, as a pure
//! state: the processor's [`Aggregation`](::processor::engine::Aggregation)
//! state of the workload (`crate::processor` maps it onto the engine).
//!
//! Each file sends a partition its rows, then one end record with their
//! count (or an abort). Between checkpoints a partition buffers the rows it
//! applied ([`Loads::apply`]); a checkpoint copies them into the
//! generation's storage and, once the end record is in, reports the
//! partition's count; the partition whose report completes the generation
//! decides its fate ([`decide`], then the switch). What a checkpoint does is
//! [`Changes`], a function of the records applied, never of a clock, so a
//! replay decides the same.
//!
//! What the switch decides is announced on the generations topic by the
//! next checkpoint: its records are written before the checkpoint's
//! transaction decides, so the decision waits in [`Announcement`]s, stored
//! with that transaction, until the next one emits them.

use std::collections::BTreeMap;

use common::engine::store::bulk::Duplicate;
use common::engine::store::CopyText;

use crate::generation::Failure;
use crate::records::{End, FileRecord, GenerationStatus};

/// Generations a partition remembers once its part of them is finished
/// (ended or failed): enough to skip a late record of any recent file.
pub const KEEP_FINISHED: usize = 32;

/// Where a partition's part of a generation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Rows are arriving.
    Loading,
    /// The end record is in and the partition reported its count.
    Ended,
    /// The file was aborted: nothing of it is kept.
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Loading => "loading",
            Phase::Ended => "ended",
            Phase::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Phase::Loading, Phase::Ended, Phase::Failed].into_iter().find(|p| p.as_str() == text)
    }
}

/// A partition's part of one generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Load {
    /// As of the last checkpoint.
    pub phase: Phase,
    /// Rows in the generation's storage, as of the last checkpoint.
    pub copied: u64,
    /// Rows applied since, to copy at the next checkpoint: as the `COPY`
    /// text that stores them (about 70 bytes a row, nothing decoded held).
    pub buffer: CopyBuffer,
    /// The begin record was applied since the last checkpoint (partition 0 only).
    pub begun: bool,
    /// The end record, applied since the last checkpoint.
    pub end: Option<End>,
    /// The abort record, applied since the last checkpoint.
    pub abort: Option<Failure>,
}

impl Load {
    fn new() -> Self {
        Load { phase: Phase::Loading, copied: 0, buffer: CopyBuffer::default(), begun: false, end: None, abort: None }
    }

    /// Still taking rows: neither its end nor an abort has been applied.
    fn open(&self) -> bool {
        self.phase == Phase::Loading && self.end.is_none() && self.abort.is_none()
    }

    fn dirty(&self) -> bool {
        self.begun || self.end.is_some() || self.abort.is_some() || self.buffer.rows > 0
    }
}

/// Rows waiting for a checkpoint, as the lines of `COPY` text of the
/// generation's table ([`crate::read_model::push_promotion`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyBuffer {
    /// In shared blocks: a checkpoint's snapshot copies none of it.
    pub text: CopyText,
    pub rows: usize,
}

impl CopyBuffer {
    fn push(&mut self, line: Option<u64>, promotion: &crate::line::Promotion) {
        self.text.push_with(|out| crate::read_model::push_promotion(out, promotion, line));
        self.rows += 1;
    }

    /// Forgets the first `rows` rows, `bytes` of text (copied by a checkpoint).
    fn drain(&mut self, rows: usize, bytes: usize) {
        self.text.drain_front(bytes);
        self.rows = self.rows.saturating_sub(rows);
    }
}

/// A generation's status decided by a checkpoint, waiting for the next one
/// to emit it. `key` (`<generation>:<state>`) tells a generation's
/// announcements apart (it may be active and replaced before either is out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    pub key: String,
    pub status: GenerationStatus,
}

impl Announcement {
    pub fn new(status: GenerationStatus) -> Self {
        Announcement { key: format!("{}:{}", status.generation, status.state.as_str()), status }
    }
}

/// What one checkpoint does for one generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenChange {
    pub generation: i64,
    /// Copy the first `copy` buffered rows: the buffer's text as it was, `text`.
    pub copy: usize,
    /// Those rows' text, taken with the checkpoint (the buffer grows while it
    /// commits), sharing the buffer's blocks.
    pub text: CopyText,
    /// Rows in the generation's storage before this copy.
    pub copied: u64,
    /// Announce it loading (its begin record is in).
    pub begin: bool,
    /// Report the partition's count: its end record is in.
    pub end: Option<End>,
    /// Rows this partition holds of it once the copy is done.
    pub loaded: u64,
    /// Drop it: the file was aborted.
    pub abort: Option<Failure>,
}

impl GenChange {
    /// Why the partition's count disagrees with its end record, if it does.
    pub fn mismatch(&self, partition: i32) -> Option<String> {
        let end = self.end.as_ref()?;
        (end.rows != self.loaded)
            .then(|| format!("partition {partition} loaded {} of the {} rows the file sent it", self.loaded, end.rows))
    }
}

/// What a checkpoint does: the generations it copies, reports, drops; the
/// announcements it emits; the finished generations it forgets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub gens: Vec<GenChange>,
    pub announce: Vec<Announcement>,
    pub prune: Vec<i64>,
}

impl Changes {
    /// The statuses this checkpoint emits, known before its transaction: a
    /// begun generation is loading, an aborted one failed (every partition
    /// says so, alike), a partition whose count disagrees fails it; and the
    /// decisions of the checkpoint before.
    pub fn statuses(&self, partition: i32) -> Vec<GenerationStatus> {
        let mut out = Vec::new();
        for g in &self.gens {
            if g.begin {
                out.push(GenerationStatus::loading(g.generation));
            }
            if let Some(abort) = &g.abort {
                out.push(GenerationStatus::failed(g.generation, abort.error.clone()));
            } else if let Some(why) = g.mismatch(partition) {
                out.push(GenerationStatus::failed(g.generation, why));
            }
        }
        out.extend(self.announce.iter().map(|a| a.status.clone()));
        out
    }
}

/// What a committed checkpoint leaves to record: the rows each generation's
/// copy stored, and the decisions to announce next.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Receipt {
    pub copied: Vec<(i64, u64)>,
    pub decided: Vec<Announcement>,
}

/// Why a record was read but not applied (a label for the engine's skip metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Late(pub &'static str);

/// The generations of one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loads {
    /// The partition these are of, once known (restored by a claim): a
    /// batch of another partition's rows is skipped, as the engine skips a
    /// keyed record of another partition.
    partition: Option<i32>,
    loads: BTreeMap<i64, Load>,
    /// Decided by a committed checkpoint, not yet emitted.
    announce: Vec<Announcement>,
}

impl Loads {
    pub fn new() -> Self {
        Self::default()
    }

    /// Partition `partition`'s state as stored: each generation's phase and copied rows, and the pending
    /// announcements.
    pub fn restored(
        partition: i32,
        loads: impl IntoIterator<Item = (i64, Phase, u64)>,
        announce: Vec<Announcement>,
    ) -> Self {
        let loads = loads.into_iter().map(|(g, phase, copied)| (g, Load { phase, copied, ..Load::new() })).collect();
        Loads { partition: Some(partition), loads, announce }
    }

    pub fn get(&self, generation: i64) -> Option<&Load> {
        self.loads.get(&generation)
    }

    /// Rows held in memory, waiting for a checkpoint.
    pub fn buffered(&self) -> usize {
        self.loads.values().map(|l| l.buffer.rows).sum()
    }

    pub fn generations(&self) -> usize {
        self.loads.len()
    }

    /// Applies the record at `offset`.
    ///
    /// # Errors
    /// [`Late`] for a record of a file whose part here is already finished
    /// (a row after its end record, a second end or abort): not applied.
    pub fn apply(&mut self, offset: i64, record: FileRecord) -> Result<(), Late> {
        match record {
            FileRecord::Begin(_) => {
                let load = self.loads.entry(offset + 1).or_insert_with(Load::new);
                load.begun = load.phase == Phase::Loading;
            }
            FileRecord::Row(row) => {
                let load = self.loads.entry(row.generation).or_insert_with(Load::new);
                if !load.open() {
                    return Err(Late("row_after_end"));
                }
                load.buffer.push(row.line, &row.promotion);
            }
            FileRecord::Batch(batch) => {
                if self.partition.is_some_and(|p| p != batch.partition) {
                    return Err(Late("misrouted"));
                }
                let generation = batch.generation;
                let load = self.loads.entry(generation).or_insert_with(Load::new);
                if !load.open() {
                    return Err(Late("row_after_end"));
                }
                for (line, promotion) in &batch.rows {
                    load.buffer.push(Some(*line), promotion);
                }
            }
            FileRecord::End(end) => {
                let load = self.loads.entry(end.generation).or_insert_with(Load::new);
                if !load.open() {
                    return Err(Late("repeated_end"));
                }
                load.end = Some(end);
            }
            FileRecord::Abort(abort) => {
                let load = self.loads.entry(abort.generation).or_insert_with(Load::new);
                // A partition that reported its count may be part of a visible generation: never failed then.
                if !load.open() {
                    return Err(Late("abort_after_end"));
                }
                load.buffer = CopyBuffer::default();
                load.abort = Some(abort.failure);
            }
        }
        Ok(())
    }

    /// What the next checkpoint does, or `None`: a snapshot, with the rows'
    /// bytes. Leaves the state as it is: asked again before
    /// [`Loads::committed`], it answers the same (and what was applied since).
    pub fn changes(&self) -> Option<Changes> {
        let gens: Vec<GenChange> = self
            .loads
            .iter()
            .filter(|(_, l)| l.dirty())
            .map(|(g, l)| GenChange {
                generation: *g,
                copy: l.buffer.rows,
                text: l.buffer.text.clone(),
                copied: l.copied,
                begin: l.begun,
                end: l.end,
                loaded: l.copied + l.buffer.rows as u64,
                abort: l.abort.clone(),
            })
            .collect();
        let finished: Vec<i64> =
            self.loads.iter().filter(|(_, l)| l.phase != Phase::Loading && !l.dirty()).map(|(g, _)| *g).collect();
        let prune = finished[..finished.len().saturating_sub(KEEP_FINISHED)].to_vec();
        let changes = Changes { gens, announce: self.announce.clone(), prune };
        (!changes.gens.is_empty() || !changes.announce.is_empty() || !changes.prune.is_empty()).then_some(changes)
    }

    /// Records that `changes` are durable, with what their transaction did.
    /// Rows, ends and aborts applied since the snapshot stay for the next
    /// checkpoint: only the copied rows leave the buffer (its first ones).
    pub fn committed(&mut self, changes: Changes, receipt: Receipt) {
        for g in changes.gens {
            let Some(load) = self.loads.get_mut(&g.generation) else { continue };
            load.buffer.drain(g.copy, g.text.len());
            load.begun = false;
            if g.end.is_some() {
                load.end = None;
                load.phase = Phase::Ended;
            }
            if g.abort.is_some() {
                load.abort = None;
                load.phase = Phase::Failed;
            }
            if load.phase != Phase::Loading {
                // Finished here: its buffer's memory goes now, not when the generation is forgotten
                // (KEEP_FINISHED files later): each file's buffers would otherwise stay allocated.
                load.buffer = CopyBuffer::default();
            }
        }
        for (g, copied) in receipt.copied {
            if let Some(load) = self.loads.get_mut(&g) {
                load.copied += copied;
            }
        }
        for g in changes.prune {
            self.loads.remove(&g);
        }
        self.announce.retain(|a| changes.announce.iter().all(|sent| sent.key != a.key));
        self.announce.extend(receipt.decided);
    }
}

/// What the report that may complete a generation decides, from every
/// partition's report so far (`(partition, rows loaded)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A partition has not reported yet.
    Wait,
    /// Every partition reported, and the rows add up to the file's: switch to it (its rows).
    Complete(u64),
    /// Every partition reported, and rows are missing or extra.
    Fail(String),
}

/// Decides a generation from its reports and an end record's partitions and total.
pub fn decide(reports: &[(i32, i64)], end: &End) -> Decision {
    let partitions = end.partitions as i32;
    if !(0..partitions).all(|p| reports.iter().any(|(q, _)| *q == p)) {
        return Decision::Wait;
    }
    let loaded: i64 = reports.iter().filter(|(p, _)| (0..partitions).contains(p)).map(|(_, n)| n).sum();
    match u64::try_from(loaded) {
        Ok(rows) if rows == end.total => Decision::Complete(rows),
        _ => Decision::Fail(format!("the file has {} rows, {loaded} were loaded", end.total)),
    }
}

/// The status of a generation a switch left behind, by what it did.
pub fn superseded(generation: i64, active: i64) -> GenerationStatus {
    GenerationStatus::failed(
        generation,
        format!("superseded: generation {active}, from a later file, became active first"),
    )
}

/// The status of a generation whose file repeats an id: the line that
/// repeats one first (the first bad line of a file whose every line parsed),
/// and the id's first line; without the lines (rows of a command of an
/// earlier release), the id alone.
pub fn duplicate(generation: i64, dup: &Duplicate) -> GenerationStatus {
    let error = match (dup.repeat, dup.first) {
        (Some(line), Some(first)) => format!("line {line}: duplicate id {} (first on line {first})", dup.key),
        _ => format!("id {} appears more than once in the file", dup.key),
    };
    GenerationStatus::failed(generation, error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::line::{parse_line, Promotion};
    use crate::records::{Abort, Begin, FileRow};

    fn promotion(i: u32) -> Promotion {
        parse_line(1, &format!("00000000-0000-4000-8000-{i:012x},1.50,2018-08-04 05:32:31 +0200 CEST")).unwrap()
    }

    fn row(generation: i64, i: u32) -> FileRecord {
        FileRecord::Row(FileRow { generation, line: Some(u64::from(i)), promotion: promotion(i) })
    }

    fn end(generation: i64, partition: i32, rows: u64, total: u64) -> FileRecord {
        FileRecord::End(End { generation, partition, partitions: 2, rows, total })
    }

    /// The line numbers of generation `g`'s buffered rows, read back from their `COPY` text.
    fn buffered_lines(loads: &Loads, g: i64) -> Vec<i64> {
        let rows =
            crate::read_model::PROMOTIONS.rows_of_copy_text(&loads.get(g).unwrap().buffer.text.to_vec()).unwrap();
        rows.iter().map(|r| r.big_int("line").unwrap()).collect()
    }

    /// Commits what `changes` asks as a store would: every buffered row copied.
    fn commit(loads: &mut Loads, decided: Vec<Announcement>) -> Changes {
        let changes = loads.changes().expect("something to do");
        let copied = changes.gens.iter().map(|g| (g.generation, g.copy as u64)).collect();
        loads.committed(changes.clone(), Receipt { copied, decided });
        changes
    }

    #[test]
    fn rows_are_buffered_until_a_checkpoint_copies_them_and_the_end_reports_the_count() {
        let mut loads = Loads::new();
        loads.apply(9, FileRecord::Begin(Begin { partitions: 2 })).unwrap();
        loads.apply(10, row(10, 1)).unwrap();
        loads.apply(11, row(10, 2)).unwrap();
        let first = loads.changes().unwrap();
        assert_eq!(loads.changes().unwrap(), first, "asked twice, the same answer");
        assert_eq!(first.statuses(0), vec![GenerationStatus::loading(10)]);
        commit(&mut loads, vec![]);
        assert_eq!((loads.get(10).unwrap().copied, loads.buffered()), (2, 0));
        assert_eq!(loads.changes(), None, "nothing new");

        loads.apply(12, row(10, 3)).unwrap();
        loads.apply(13, end(10, 0, 3, 5)).unwrap();
        assert_eq!(loads.apply(14, row(10, 4)), Err(Late("row_after_end")));
        let changes = commit(&mut loads, vec![Announcement::new(GenerationStatus::active(10, 5))]);
        assert_eq!((changes.gens[0].copy, changes.gens[0].loaded, changes.gens[0].mismatch(0)), (1, 3, None));
        assert_eq!(loads.get(10).unwrap().phase, Phase::Ended);
        assert_eq!(loads.get(10).unwrap().buffer.text.capacity(), 0, "a finished part holds no buffer");

        // The decision is announced by the next checkpoint, once.
        let next = commit(&mut loads, vec![]);
        assert_eq!(next.statuses(0), vec![GenerationStatus::active(10, 5)]);
        assert_eq!(loads.changes(), None);
    }

    #[test]
    fn an_abort_drops_the_buffer_and_every_partition_fails_the_generation_alike() {
        let mut loads = Loads::new();
        loads.apply(0, row(4, 1)).unwrap();
        let failure = Failure { line: Some(3), error: "line 3: bad UUID `x`".into() };
        loads.apply(1, FileRecord::Abort(Abort { generation: 4, failure: failure.clone() })).unwrap();
        let changes = commit(&mut loads, vec![]);
        assert_eq!(changes.gens[0].copy, 0, "nothing of an aborted file is copied");
        assert_eq!(changes.statuses(1), vec![GenerationStatus::failed(4, failure.error)]);
        assert_eq!(loads.get(4).unwrap().phase, Phase::Failed);
    }

    #[test]
    fn a_janitors_abort_racing_a_late_end_is_decided_by_the_log_order_in_each_partition() {
        let stopped = || {
            FileRecord::Abort(Abort {
                generation: 4,
                failure: Failure { line: None, error: "the upload stopped (no record for 2m)".into() },
            })
        };
        // Partition 0: the late end first, then the janitor's abort: the abort is skipped.
        let mut p0 = Loads::new();
        p0.apply(0, row(4, 1)).unwrap();
        p0.apply(1, end(4, 0, 1, 2)).unwrap();
        assert_eq!(p0.apply(2, stopped()), Err(Late("abort_after_end")));
        // Partition 1: the abort first (and a second janitor's): the end is skipped, the generation fails.
        let mut p1 = Loads::new();
        p1.apply(0, row(4, 2)).unwrap();
        p1.apply(1, stopped()).unwrap();
        assert_eq!(p1.apply(2, stopped()), Err(Late("abort_after_end")), "aborts are idempotent");
        assert_eq!(p1.apply(3, end(4, 1, 1, 2)), Err(Late("repeated_end")));
        let changes = commit(&mut p1, vec![]);
        assert!(changes.gens[0].end.is_none(), "partition 1 never reports: the generation cannot complete");
        assert_eq!(changes.statuses(1)[0].state, crate::GenerationState::Failed);
        // Replayed, the same records decide the same.
        let mut again = Loads::new();
        again.apply(0, row(4, 2)).unwrap();
        again.apply(1, stopped()).unwrap();
        assert_eq!(again.apply(3, end(4, 1, 1, 2)), Err(Late("repeated_end")));
    }

    #[test]
    fn a_count_that_disagrees_with_the_end_record_fails_the_generation() {
        let mut loads = Loads::new();
        loads.apply(0, row(4, 1)).unwrap();
        loads.apply(1, end(4, 1, 2, 2)).unwrap();
        let changes = loads.changes().unwrap();
        let why = "partition 1 loaded 1 of the 2 rows the file sent it".to_owned();
        assert_eq!(changes.statuses(1), vec![GenerationStatus::failed(4, why)]);
    }

    #[test]
    fn a_generation_completes_once_every_partition_reported_and_the_rows_add_up() {
        let e = End { generation: 1, partition: 0, partitions: 2, rows: 3, total: 5 };
        assert_eq!(decide(&[(0, 3)], &e), Decision::Wait);
        assert_eq!(decide(&[(0, 3), (1, 2)], &e), Decision::Complete(5));
        assert!(matches!(decide(&[(0, 3), (1, 1)], &e), Decision::Fail(_)));
    }

    #[test]
    fn a_duplicate_id_fails_at_the_line_that_repeats_it_naming_its_first() {
        let id = "00000000-0000-4000-8000-00000000000a";
        let placed = Duplicate { key: id.into(), first: Some(3), repeat: Some(7) };
        let why = format!("line 7: duplicate id {id} (first on line 3)");
        assert_eq!(duplicate(5, &placed), GenerationStatus::failed(5, why));
        let unplaced = Duplicate::unplaced(id.into());
        let why = format!("id {id} appears more than once in the file");
        assert_eq!(duplicate(5, &unplaced), GenerationStatus::failed(5, why), "rows written without their lines");
    }

    #[test]
    fn rows_keep_their_lines_until_the_checkpoint_copies_them() {
        let mut loads = Loads::new();
        loads.apply(0, row(4, 7)).unwrap();
        loads.apply(1, row(4, 9)).unwrap();
        assert_eq!(buffered_lines(&loads, 4), vec![7, 9]);
    }

    #[test]
    fn a_batch_buffers_its_rows_with_their_lines_and_one_of_another_partition_is_skipped() {
        use crate::records::FileBatch;
        let batch = |partition, lines: &[u32]| {
            let rows = lines.iter().map(|i| (u64::from(*i), promotion(*i))).collect();
            FileRecord::Batch(FileBatch { generation: 4, partition, partitions: 2, rows })
        };
        let mut loads = Loads::restored(1, [], vec![]);
        loads.apply(0, batch(1, &[3, 5])).unwrap();
        assert_eq!(loads.apply(1, batch(0, &[7])), Err(Late("misrouted")));
        loads.apply(2, batch(1, &[8])).unwrap();
        assert_eq!(buffered_lines(&loads, 4), vec![3, 5, 8]);
        loads.apply(3, end(4, 1, 3, 3)).unwrap();
        assert_eq!(loads.apply(4, batch(1, &[9])), Err(Late("row_after_end")));
        assert_eq!(loads.changes().unwrap().gens[0].mismatch(1), None, "the end's count is the batches' rows");
    }

    #[test]
    fn finished_generations_beyond_the_kept_few_are_forgotten() {
        let mut loads = Loads::new();
        for g in 0..(KEEP_FINISHED as i64 + 3) {
            loads.apply(g, end(g, 0, 0, 0)).unwrap();
        }
        commit(&mut loads, vec![]);
        let pruned = commit(&mut loads, vec![]).prune;
        assert_eq!(pruned, vec![0, 1, 2]);
        assert_eq!(loads.generations(), KEEP_FINISHED);
        assert_eq!(loads.changes(), None);
    }

    #[test]
    fn restored_state_skips_late_records_of_finished_files() {
        let mut loads = Loads::restored(0, [(3, Phase::Ended, 10), (4, Phase::Loading, 2)], vec![]);
        assert_eq!(loads.apply(0, row(3, 1)), Err(Late("row_after_end")));
        loads.apply(1, row(4, 1)).unwrap();
        assert_eq!(loads.changes().unwrap().gens[0].loaded, 3);
    }
}
