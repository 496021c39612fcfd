//! A generation's lifecycle, as a pure state machine.
//!
//! ```text
//! loading ──every partition reported its count──▶ active ──the next one active──▶ replaced
//!    └──a malformed line, a duplicate id, a count that does not match──▶ failed
//! ```
//!
//! A generation is one file. It is `loading` from its first record; each
//! events partition reports once, with the rows the file sent it ([`Progress`]);
//! it becomes `active` once every partition has reported and each loaded
//! exactly its count, and `replaced` when a newer one becomes active. A
//! failure is final and keeps the first bad line's number and reason. Only
//! the active generation is ever read.

use std::collections::BTreeMap;

use serde::Serialize;

/// Where a generation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GenerationState {
    Loading,
    Active,
    Replaced,
    Failed,
}

impl GenerationState {
    /// The state's name, as stored and answered.
    pub fn as_str(self) -> &'static str {
        match self {
            GenerationState::Loading => "loading",
            GenerationState::Active => "active",
            GenerationState::Replaced => "replaced",
            GenerationState::Failed => "failed",
        }
    }

    /// Reads a stored name.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Loading, Self::Active, Self::Replaced, Self::Failed].into_iter().find(|s| s.as_str() == text)
    }

    /// The state of generation `n` as a reader sees it, when the readers
    /// answer from `answering` now. A switch commits before its new
    /// generation is visible (the pointer lease's wait, `visible_at`), so for
    /// that moment the stored state runs ahead of the reads: the new one is
    /// stored `active` while ids still answer from the old one, stored
    /// `replaced`. Answered so, a status of `active` means that reads answer
    /// from that generation. Pure.
    pub fn as_seen(self, n: i64, answering: Option<i64>) -> Self {
        match self {
            GenerationState::Failed | GenerationState::Loading => self,
            _ if answering == Some(n) => GenerationState::Active,
            GenerationState::Active if answering.is_some_and(|a| a > n) => GenerationState::Replaced,
            // Switched, not visible yet.
            GenerationState::Active => GenerationState::Loading,
            GenerationState::Replaced => GenerationState::Replaced,
        }
    }
}

/// A transition the lifecycle does not have (a bug in the caller, or a
/// replayed record whose effect is already in place).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a {from} generation cannot become {to}")]
pub struct IllegalTransition {
    pub from: &'static str,
    pub to: &'static str,
}

/// Why a generation failed: the first bad line (by number), or a partition's count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// The first bad line's number, when a line is to blame.
    pub line: Option<u64>,
    /// One line: `line 7: bad price `x`…`.
    pub error: String,
}

/// What each partition reported of one generation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// How many partitions the file was spread over (the end records say).
    pub partitions: Option<u32>,
    /// Per partition: the rows the file sent it, and the rows it loaded.
    pub reported: BTreeMap<i32, (u64, u64)>,
}

impl Progress {
    /// Records partition `partition`'s report: `sent` rows in the file for it, `loaded` in storage.
    /// A repeated report (a replay) replaces the first: it carries the same numbers.
    pub fn report(&mut self, partitions: u32, partition: i32, sent: u64, loaded: u64) {
        self.partitions = Some(partitions);
        self.reported.insert(partition, (sent, loaded));
    }

    /// The partitions whose loaded rows differ from what the file sent them.
    pub fn mismatched(&self) -> impl Iterator<Item = (i32, u64, u64)> + '_ {
        self.reported.iter().filter(|(_, (sent, loaded))| sent != loaded).map(|(p, (s, l))| (*p, *s, *l))
    }

    /// True once every partition reported and each loaded exactly its rows.
    pub fn is_complete(&self) -> bool {
        let Some(partitions) = self.partitions else { return false };
        (0..partitions as i32).all(|p| self.reported.contains_key(&p)) && self.mismatched().next().is_none()
    }

    /// Rows of the whole file, as loaded so far.
    pub fn rows(&self) -> u64 {
        self.reported.values().map(|(_, loaded)| loaded).sum()
    }
}

/// One generation: its number, state and what is known of its load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    pub number: i64,
    pub state: GenerationState,
    pub progress: Progress,
    pub failure: Option<Failure>,
}

impl Generation {
    /// A generation whose first record was seen.
    pub fn loading(number: i64) -> Self {
        Generation { number, state: GenerationState::Loading, progress: Progress::default(), failure: None }
    }

    /// Loading → active: every partition reported and the counts match.
    ///
    /// # Errors
    /// From any other state, or while the load is incomplete.
    pub fn activate(&mut self) -> Result<(), IllegalTransition> {
        self.to(GenerationState::Active, |g| g.state == GenerationState::Loading && g.progress.is_complete())
    }

    /// Active → replaced: a newer generation became active.
    ///
    /// # Errors
    /// From any state but active.
    pub fn replace(&mut self) -> Result<(), IllegalTransition> {
        self.to(GenerationState::Replaced, |g| g.state == GenerationState::Active)
    }

    /// Loading → failed, keeping the first failure by line number (a line's
    /// failure before one without a line). Failing a failed generation again
    /// keeps whichever came first in the file.
    ///
    /// # Errors
    /// From active or replaced: a visible generation never fails.
    pub fn fail(&mut self, failure: Failure) -> Result<(), IllegalTransition> {
        match self.state {
            GenerationState::Loading => {
                self.state = GenerationState::Failed;
                self.failure = Some(failure);
                Ok(())
            }
            GenerationState::Failed => {
                let earlier = |f: &Failure| f.line.unwrap_or(u64::MAX);
                if self.failure.as_ref().is_none_or(|kept| earlier(&failure) < earlier(kept)) {
                    self.failure = Some(failure);
                }
                Ok(())
            }
            from => Err(IllegalTransition { from: from.as_str(), to: GenerationState::Failed.as_str() }),
        }
    }

    fn to(&mut self, to: GenerationState, allowed: impl Fn(&Self) -> bool) -> Result<(), IllegalTransition> {
        if !allowed(self) {
            return Err(IllegalTransition { from: self.state.as_str(), to: to.as_str() });
        }
        self.state = to;
        Ok(())
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_generation_is_seen_active_only_while_reads_answer_from_it() {
        use GenerationState::*;
        // The switch from 1 to 2 committed, not visible yet: reads answer from 1.
        assert_eq!(Active.as_seen(2, Some(1)), Loading);
        assert_eq!(Replaced.as_seen(1, Some(1)), Active);
        // The first file switched, not visible yet: nothing answers.
        assert_eq!(Active.as_seen(1, None), Loading);
        // Visible.
        assert_eq!(Active.as_seen(2, Some(2)), Active);
        assert_eq!(Replaced.as_seen(1, Some(2)), Replaced);
        // A stored state behind the pointer: already replaced by a newer one.
        assert_eq!(Active.as_seen(2, Some(3)), Replaced);
        // Loading and failed are what they are.
        assert_eq!(Loading.as_seen(4, Some(3)), Loading);
        assert_eq!(Failed.as_seen(4, Some(3)), Failed);
    }

    use proptest::prelude::*;

    use super::*;

    fn line_failure(line: u64) -> Failure {
        Failure { line: Some(line), error: format!("line {line}: bad UUID `x`") }
    }

    #[test]
    fn a_generation_becomes_active_only_once_every_partition_reported_its_exact_count() {
        let mut g = Generation::loading(1);
        assert!(g.activate().is_err(), "nothing reported");
        g.progress.report(3, 0, 10, 10);
        g.progress.report(3, 2, 5, 5);
        assert!(g.activate().is_err(), "partition 1 has not reported");
        g.progress.report(3, 1, 7, 6);
        assert!(g.activate().is_err(), "partition 1 lost a row");
        assert_eq!(g.progress.mismatched().collect::<Vec<_>>(), vec![(1, 7, 6)]);
        g.progress.report(3, 1, 7, 7);
        g.activate().expect("complete");
        assert_eq!((g.state, g.progress.rows()), (GenerationState::Active, 22));
    }

    #[test]
    fn only_an_active_generation_is_replaced_and_a_visible_one_never_fails() {
        let mut g = Generation::loading(1);
        assert!(g.replace().is_err());
        g.progress.report(1, 0, 0, 0);
        g.activate().unwrap();
        assert!(g.fail(line_failure(1)).is_err());
        g.replace().unwrap();
        assert_eq!(g.state, GenerationState::Replaced);
        assert!(g.activate().is_err() && g.fail(line_failure(1)).is_err() && g.replace().is_err());
    }

    #[test]
    fn a_failed_generation_keeps_its_first_bad_line_and_never_activates() {
        let mut g = Generation::loading(1);
        g.fail(line_failure(9)).unwrap();
        g.fail(Failure { line: None, error: "partition 0 lost rows".into() }).unwrap();
        g.fail(line_failure(4)).unwrap();
        g.fail(line_failure(6)).unwrap();
        assert_eq!(g.failure.as_ref().and_then(|f| f.line), Some(4));
        g.progress.report(1, 0, 0, 0);
        assert!(g.activate().is_err());
        assert_eq!(g.state, GenerationState::Failed);
    }

    #[test]
    fn states_read_back_from_their_names() {
        for s in [GenerationState::Loading, GenerationState::Active, GenerationState::Replaced, GenerationState::Failed]
        {
            assert_eq!(GenerationState::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{}\"", s.as_str()));
        }
        assert_eq!(GenerationState::parse("Active"), None);
    }

    proptest! {
        /// Reports in any order, replayed any number of times, complete the generation exactly when
        /// every partition has reported matching counts.
        #[test]
        fn reports_in_any_order_and_replayed_complete_the_same(
            counts in proptest::collection::vec(0u64..100, 1..8),
            order in proptest::collection::vec(any::<proptest::sample::Index>(), 0..30),
        ) {
            let partitions = counts.len() as u32;
            let mut progress = Progress::default();
            let mut seen = std::collections::BTreeSet::new();
            for i in order {
                let p = i.index(counts.len());
                progress.report(partitions, p as i32, counts[p], counts[p]);
                seen.insert(p);
                prop_assert_eq!(progress.is_complete(), seen.len() == counts.len());
            }
            for (p, c) in counts.iter().enumerate() {
                progress.report(partitions, p as i32, *c, *c);
            }
            prop_assert!(progress.is_complete());
            prop_assert_eq!(progress.rows(), counts.iter().sum::<u64>());
        }
    }
}
