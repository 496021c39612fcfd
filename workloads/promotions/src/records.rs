//! The workload's records, as the pure core sees them: what a file becomes
//! on the rows topic ([`FileRecord`]) and what the processor decides of a
//! generation ([`GenerationStatus`], on the generations topic, and the body
//! of `GET /promotions/generations/{n}`).

use serde::Serialize;

use crate::generation::{Failure, GenerationState};
use crate::line::Promotion;

/// The start of a file: always in partition 0; its offset plus one is the generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begin {
    /// The partitions the file is spread over.
    pub partitions: u32,
}

/// One valid line of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRow {
    pub generation: i64,
    /// Its line number in the file (from 1); `None` from a command of an
    /// earlier release, which did not write it.
    pub line: Option<u64>,
    pub promotion: Promotion,
}

/// Several valid lines of a file, every one for one partition: what the
/// command writes (one record per row cost the upload its rate). Each row's
/// id maps to `partition` under `partitions` as a record keyed by the id
/// would have been partitioned ([`common::engine::kafka::partition_for`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileBatch {
    pub generation: i64,
    /// The partition the record is in.
    pub partition: i32,
    /// The partitions the file is spread over.
    pub partitions: u32,
    /// In the file's order; each with its line number (from 1).
    pub rows: Vec<(u64, Promotion)>,
}

/// The end of a file in one partition: after every row the file sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    pub generation: i64,
    pub partition: i32,
    pub partitions: u32,
    /// The rows the file sent this partition.
    pub rows: u64,
    /// The rows of the whole file.
    pub total: u64,
}

/// A failed file: one per partition, instead of the end records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Abort {
    pub generation: i64,
    pub failure: Failure,
}

/// One record of the rows topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileRecord {
    Begin(Begin),
    Row(FileRow),
    Batch(FileBatch),
    End(End),
    Abort(Abort),
}

/// What is known of one generation: its state, its rows once every
/// partition loaded them, why it failed. The body of
/// `GET /promotions/generations/{n}`: `{"generation": n, "state": "active", "rows": 1000, "error": null}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GenerationStatus {
    pub generation: i64,
    pub state: GenerationState,
    pub rows: Option<u64>,
    pub error: Option<String>,
}

/// A status as the generations topic carries it: with the log-append time
/// of the newest rows-topic record behind it (the freshness metric's start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announced {
    pub status: GenerationStatus,
    pub at_ms: i64,
}

impl GenerationStatus {
    pub fn loading(generation: i64) -> Self {
        GenerationStatus { generation, state: GenerationState::Loading, rows: None, error: None }
    }

    pub fn active(generation: i64, rows: u64) -> Self {
        GenerationStatus { generation, state: GenerationState::Active, rows: Some(rows), error: None }
    }

    /// Written by the switch that replaced it, which does not know its rows.
    pub fn replaced(generation: i64) -> Self {
        GenerationStatus { generation, state: GenerationState::Replaced, rows: None, error: None }
    }

    pub fn failed(generation: i64, error: String) -> Self {
        GenerationStatus { generation, state: GenerationState::Failed, rows: None, error: Some(error) }
    }

    /// How far along its life the state is: a generation's state only moves
    /// to a higher rank (active and failed exclude each other).
    pub fn rank(&self) -> i64 {
        match self.state {
            GenerationState::Loading => 1,
            GenerationState::Active | GenerationState::Failed => 2,
            GenerationState::Replaced => 3,
        }
    }

    /// `self` (stored, if any) after `newer` arrived: `None` when it changes
    /// nothing (a replay, or a record older than what is stored), else the
    /// newer state keeping what the stored one knew and the newer does not
    /// (a replaced generation keeps its rows).
    pub fn merge(stored: Option<&Self>, newer: &Self) -> Option<Self> {
        match stored {
            Some(s) if s.rank() >= newer.rank() => None,
            Some(s) => Some(GenerationStatus {
                generation: newer.generation,
                state: newer.state,
                rows: newer.rows.or(s.rows),
                error: newer.error.clone().or_else(|| s.error.clone()),
            }),
            None => Some(newer.clone()),
        }
    }

    /// The `GET /promotions/generations/{n}` body.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("numbers and text always serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generation_only_moves_forward_and_a_replaced_one_keeps_its_rows() {
        let active = GenerationStatus::active(7, 1000);
        let merged = GenerationStatus::merge(Some(&GenerationStatus::loading(7)), &active).expect("forward");
        assert_eq!(merged, active);
        assert_eq!(GenerationStatus::merge(Some(&active), &GenerationStatus::loading(7)), None, "never backwards");
        assert_eq!(GenerationStatus::merge(Some(&active), &active), None, "a replay changes nothing");
        let replaced = GenerationStatus::merge(Some(&active), &GenerationStatus::replaced(7)).expect("forward");
        assert_eq!((replaced.state, replaced.rows), (GenerationState::Replaced, Some(1000)));
        let failed = GenerationStatus::failed(8, "line 3: bad UUID `x`".into());
        assert_eq!(GenerationStatus::merge(None, &failed), Some(failed.clone()));
        assert_eq!(GenerationStatus::merge(Some(&failed), &GenerationStatus::failed(8, "other".into())), None);
    }

    #[test]
    fn the_answer_names_the_state_and_writes_unknowns_as_null() {
        let json = String::from_utf8(GenerationStatus::loading(3).to_json()).unwrap();
        assert_eq!(json, r#"{"generation":3,"state":"loading","rows":null,"error":null}"#);
        let json = String::from_utf8(GenerationStatus::active(3, 12).to_json()).unwrap();
        assert_eq!(json, r#"{"generation":3,"state":"active","rows":12,"error":null}"#);
    }
}
