//! Uploads whose writer died: what the janitor ([`crate::janitor`]) keeps of
//! the rows topic, as a pure state.
//!
//! An upload is open from its begin record until every partition has its end
//! or abort record. A live upload never leaves the log quiet for long: the
//! command ends an upload whose body brings no record for
//! `--upload-idle-timeout` (I), with an abort in every partition. So an open
//! upload with no record for the stall bound T (several times I) lost its
//! writer (a command killed mid-upload): the janitor appends an abort record
//! to each partition it has not closed, and the processors fail the
//! generation. Which wins, the janitor's abort or a late end of a writer that
//! was only slow, the log decides, the same for every replay: in each
//! partition the first of the two is applied and the other skipped, and the
//! generation becomes active only if every partition had its end first
//! (`crate::load`). Several janitors may abort one upload: the later aborts
//! are skipped alike.
//!
//! Times are the broker's log-append times of the records (the rows topic is
//! stamped so), compared with the janitor's clock: T must exceed the skew
//! between the broker's clock and the commands'.

use std::collections::{BTreeMap, BTreeSet};

use crate::generation::Failure;

/// What the janitor reads of one rows-topic record: which upload it belongs
/// to and whether it closes a partition (rows are not decoded beyond their generation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// A begin record: its offset plus one is the generation.
    Begin {
        partitions: u32,
    },
    Row {
        generation: i64,
    },
    End {
        generation: i64,
    },
    Abort {
        generation: i64,
    },
}

/// One open upload.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Open {
    partitions: u32,
    /// Partitions with their end or abort.
    closed: BTreeSet<i32>,
    /// The newest record's log-append time.
    last_ms: i64,
    /// When this janitor last appended its aborts (it waits another bound before trying again).
    aborted_ms: Option<i64>,
}

/// An upload to abort: its generation and the partitions not closed yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stalled {
    pub generation: i64,
    pub open: Vec<i32>,
}

/// The open uploads seen since the janitor started following the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Uploads {
    open: BTreeMap<i64, Open>,
}

impl Uploads {
    pub fn new() -> Self {
        Self::default()
    }

    /// Open uploads.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Takes in the record at `partition`/`offset`, appended at `appended_ms`.
    /// A record of an upload whose begin was not seen (it began before the
    /// janitor's start) is ignored: its partitions are unknown.
    pub fn observe(&mut self, partition: i32, offset: i64, appended_ms: i64, mark: Mark) {
        let (generation, closes) = match mark {
            Mark::Begin { partitions } => {
                // A begin is always in partition 0; anything else is not a file's start.
                if partition == 0 && partitions > 0 {
                    let open = Open { partitions, closed: BTreeSet::new(), last_ms: appended_ms, aborted_ms: None };
                    self.open.entry(offset + 1).or_insert(open);
                }
                return;
            }
            Mark::Row { generation } => (generation, false),
            Mark::End { generation } | Mark::Abort { generation } => (generation, true),
        };
        let Some(upload) = self.open.get_mut(&generation) else { return };
        upload.last_ms = upload.last_ms.max(appended_ms);
        if closes && (0..upload.partitions as i32).contains(&partition) {
            upload.closed.insert(partition);
        }
        if upload.closed.len() == upload.partitions as usize {
            self.open.remove(&generation);
        }
    }

    /// The open uploads with no record for more than `bound_ms` at `now_ms`
    /// (and not aborted by this janitor within the last `bound_ms`), oldest first.
    pub fn stalled(&self, now_ms: i64, bound_ms: i64) -> Vec<Stalled> {
        self.open
            .iter()
            .filter(|(_, u)| now_ms - u.last_ms > bound_ms && u.aborted_ms.is_none_or(|at| now_ms - at > bound_ms))
            .map(|(g, u)| Stalled {
                generation: *g,
                open: (0..u.partitions as i32).filter(|p| !u.closed.contains(p)).collect(),
            })
            .collect()
    }

    /// Records that this janitor appended the aborts of `generation` at `now_ms`.
    pub fn aborted(&mut self, generation: i64, now_ms: i64) {
        if let Some(u) = self.open.get_mut(&generation) {
            u.aborted_ms = Some(now_ms);
        }
    }
}

/// Why the janitor failed an upload: `the upload stopped (no record for 2m)`.
pub fn stopped(bound: std::time::Duration) -> Failure {
    Failure { line: None, error: format!("the upload stopped (no record for {})", humanize(bound)) }
}

/// `2m`, `90s`, `1.5s`: the bound as an operator wrote it.
fn humanize(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    match (secs, d.subsec_millis()) {
        (s, 0) if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        (s, 0) => format!("{s}s"),
        _ => format!("{}ms", d.as_millis()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const T: i64 = 10_000;

    /// An upload of generation 8 (its begin at offset 7) over 3 partitions, begun at 1000.
    fn begun() -> Uploads {
        let mut u = Uploads::new();
        u.observe(0, 7, 1_000, Mark::Begin { partitions: 3 });
        u
    }

    #[test]
    fn an_upload_that_ended_everywhere_is_forgotten() {
        let mut u = begun();
        u.observe(1, 40, 1_500, Mark::Row { generation: 8 });
        for p in 0..3 {
            assert_eq!(u.len(), 1);
            u.observe(p, 50, 2_000, Mark::End { generation: 8 });
        }
        assert!(u.is_empty());
        assert_eq!(u.stalled(1_000_000, T), vec![]);
    }

    #[test]
    fn an_open_upload_stalls_only_after_the_bound_from_its_newest_record() {
        let mut u = begun();
        u.observe(2, 9, 5_000, Mark::Row { generation: 8 });
        u.observe(1, 3, 6_000, Mark::End { generation: 8 });
        assert_eq!(u.stalled(6_000 + T, T), vec![], "not yet: exactly the bound");
        assert_eq!(u.stalled(6_001 + T, T), vec![Stalled { generation: 8, open: vec![0, 2] }]);
        // A late row resets it: the writer lives.
        u.observe(0, 12, 9_000, Mark::Row { generation: 8 });
        assert_eq!(u.stalled(6_001 + T, T), vec![]);
    }

    #[test]
    fn an_aborted_upload_is_not_aborted_again_within_the_bound_and_its_aborts_close_it() {
        let mut u = begun();
        let now = 1_001 + T;
        assert_eq!(u.stalled(now, T).len(), 1);
        u.aborted(8, now);
        assert_eq!(u.stalled(now + T, T), vec![], "its aborts may be on their way");
        assert_eq!(u.stalled(now + T + 1, T).len(), 1, "they never came: again");
        for p in 0..3 {
            u.observe(p, 100, now + 5, Mark::Abort { generation: 8 });
        }
        assert!(u.is_empty(), "closed by the aborts (this janitor's or another's)");
    }

    #[test]
    fn records_of_an_upload_begun_before_the_start_and_foreign_begins_are_ignored() {
        let mut u = Uploads::new();
        u.observe(1, 5, 100, Mark::Row { generation: 3 });
        u.observe(1, 6, 100, Mark::End { generation: 3 });
        u.observe(2, 7, 100, Mark::Begin { partitions: 3 });
        assert!(u.is_empty());
    }

    #[test]
    fn the_reason_names_the_bound() {
        assert_eq!(stopped(Duration::from_secs(120)).error, "the upload stopped (no record for 2m)");
        assert_eq!(stopped(Duration::from_secs(5)).error, "the upload stopped (no record for 5s)");
        assert_eq!(stopped(Duration::from_millis(1500)).error, "the upload stopped (no record for 1500ms)");
    }
}
