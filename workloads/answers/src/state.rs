//! Per-partition state of the processor: every key of the partition with
//! its [`Entry`], and what happened since the engine last asked: the keys to
//! write at the next checkpoint, the changes to emit with it, and the
//! replies to publish at once.
//!
//! Deterministic: it depends only on the commands applied, their offsets
//! and the partition's watermark, never on a clock, so a replay from a
//! checkpoint decides every command again exactly as the first time.

use std::collections::{BTreeSet, HashMap};

use crate::key::AnswerKey;
use crate::records::{AnswerCommand, Change, Reply};
use crate::request::AnswerValue;
use crate::rules::{self, Decision, Entry, Policy};

/// Where a command sits in the log, as the engine hands it over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At {
    pub offset: i64,
    /// The command's log-append time: the change's `at_ms`.
    pub accepted_at_ms: i64,
    /// The partition's watermark, this command included: the ids' clock.
    pub watermark_ms: i64,
}

/// What a checkpoint writes and emits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// The rows of the keys touched since the last checkpoint, sorted by key;
    /// `None`: the key holds nothing any more (its row is deleted).
    pub rows: Vec<(AnswerKey, Option<Entry>)>,
    /// The changes decided since the last checkpoint, in log order.
    pub changes: Vec<Change>,
}

/// The state of one partition of `answers.commands`.
#[derive(Debug, Clone)]
pub struct AnswersState {
    partition: i32,
    policy: Policy,
    keys: HashMap<AnswerKey, Entry>,
    /// Keys touched since the last checkpoint (sorted: rows are locked in one order).
    touched: BTreeSet<AnswerKey>,
    changes: Vec<Change>,
    replies: Vec<Reply>,
}

impl AnswersState {
    pub fn new(partition: i32, policy: Policy) -> Self {
        AnswersState {
            partition,
            policy,
            keys: HashMap::new(),
            touched: BTreeSet::new(),
            changes: Vec::new(),
            replies: Vec::new(),
        }
    }

    /// Decides one command, in log order: records its reply, and its change if it made one.
    pub fn apply(&mut self, command: &AnswerCommand, at: At) -> Decision {
        let entry = self.keys.entry(command.key.clone()).or_default();
        let rules_command = rules::Command {
            op: command.op,
            value: command.value.as_ref().map(AnswerValue::as_str),
            id: command.id.as_deref(),
        };
        let decision = rules::step(entry, rules_command, at.watermark_ms, &self.policy);
        self.replies.push(Reply { request: command.request, outcome: decision.outcome, version: decision.version });
        if decision.repeated {
            // Nothing changed: not even the ids.
            return decision;
        }
        if let Some((event, value)) = &decision.change {
            self.changes.push(Change {
                key: command.key.clone(),
                event: *event,
                value: value.clone(),
                version: decision.version,
                at_ms: at.accepted_at_ms,
                partition: self.partition,
                input_offset: at.offset + 1,
            });
        }
        if entry.is_vacant() {
            self.keys.remove(&command.key);
        }
        self.touched.insert(command.key.clone());
        decision
    }

    /// The key's entry, if the partition holds anything of it.
    pub fn entry(&self, key: &AnswerKey) -> Option<&Entry> {
        self.keys.get(key)
    }

    /// What the next checkpoint writes and emits, or `None` when nothing
    /// happened. Gives the same answer again until [`Self::mark_checkpointed`].
    pub fn checkpoint(&self) -> Option<Checkpoint> {
        if self.touched.is_empty() && self.changes.is_empty() {
            return None;
        }
        let rows = self.touched.iter().map(|k| (k.clone(), self.keys.get(k).cloned())).collect();
        Some(Checkpoint { rows, changes: self.changes.clone() })
    }

    /// Forgets what was checkpointed: call once [`Self::checkpoint`]'s answer is durable.
    pub fn mark_checkpointed(&mut self) {
        self.touched.clear();
        self.changes.clear();
    }

    /// Forgets what `persisted` (an answer of [`Self::checkpoint`], now
    /// durable) wrote, whatever was applied since: a key whose entry is no
    /// longer the row persisted stays touched, and the changes decided since
    /// (after the persisted ones, in log order) stay to emit.
    pub fn mark_persisted(&mut self, persisted: &Checkpoint) {
        for (key, row) in &persisted.rows {
            if self.keys.get(key) == row.as_ref() {
                self.touched.remove(key);
            }
        }
        self.changes.drain(..persisted.changes.len().min(self.changes.len()));
    }

    /// The replies decided since the last call, in log order.
    pub fn take_replies(&mut self) -> Vec<Reply> {
        std::mem::take(&mut self.replies)
    }

    /// Sets a key's entry as read from a checkpoint; not a change.
    pub fn restore(&mut self, key: AnswerKey, entry: Entry) {
        self.keys.insert(key, entry);
    }

    /// Makes room for `more` keys (a restore knows how many it reads).
    pub fn reserve(&mut self, more: usize) {
        self.keys.reserve(more);
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::request::Op;
    use crate::rules::Outcome;
    use proptest::prelude::*;
    use uuid::Uuid;

    pub(crate) const POLICY: Policy = Policy { id_retention_ms: 10_000, max_ids_per_key: 8 };

    pub(crate) fn command(n: u128, key: &str, op: Op, value: &str, id: Option<&str>) -> AnswerCommand {
        AnswerCommand {
            request: Uuid::from_u128(n),
            id: id.map(Into::into),
            op,
            key: AnswerKey::parse(key).unwrap(),
            value: (op != Op::Delete).then(|| AnswerValue::new(value.to_owned()).unwrap()),
            accepted_at_ms: 0,
        }
    }

    fn at(offset: i64) -> At {
        At { offset, accepted_at_ms: 1_000 + offset, watermark_ms: 1_000 + offset }
    }

    #[test]
    fn replies_and_changes_follow_the_rules_and_checkpoints_write_touched_keys() {
        let mut s = AnswersState::new(3, POLICY);
        let log = [
            command(1, "a", Op::Create, "x", None),
            command(2, "a", Op::Create, "y", None),
            command(3, "b", Op::Update, "y", None),
            command(4, "a", Op::Delete, "", None),
        ];
        for (i, c) in log.iter().enumerate() {
            s.apply(c, at(i as i64));
        }
        let replies = s.take_replies();
        let outcomes: Vec<(u128, Outcome, u64)> =
            replies.iter().map(|r| (r.request.as_u128(), r.outcome, r.version)).collect();
        assert_eq!(
            outcomes,
            [(1, Outcome::Created, 1), (2, Outcome::Exists, 0), (3, Outcome::NotFound, 0), (4, Outcome::Deleted, 2)]
        );
        assert!(s.take_replies().is_empty(), "replies are handed over once");
        let cp = s.checkpoint().expect("something happened");
        // b was only refused without an id: it holds nothing, and its (absent) row is deleted.
        let rows: Vec<(&str, Option<u64>)> =
            cp.rows.iter().map(|(k, e)| (k.as_str(), e.as_ref().map(|e| e.version))).collect();
        assert_eq!(rows, [("a", Some(2)), ("b", None)]);
        let changes: Vec<(u64, &str, i64, i32)> =
            cp.changes.iter().map(|c| (c.version, c.value.as_str(), c.input_offset, c.partition)).collect();
        assert_eq!(changes, [(1, "x", 1, 3), (2, "x", 4, 3)]);
        assert_eq!(cp.changes[1].record_key(), "2:a");
        assert_eq!(s.checkpoint(), Some(cp), "the same answer until marked");
        s.mark_checkpointed();
        assert_eq!(s.checkpoint(), None);
        assert_eq!(s.len(), 1);
    }

    fn log() -> impl Strategy<Value = Vec<AnswerCommand>> {
        let op = prop_oneof![Just(Op::Create), Just(Op::Update), Just(Op::Delete)];
        prop::collection::vec((0u8..4, op, 0u8..5, prop::option::of(0u8..5)), 0..150).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (k, op, val, id))| {
                    let id = id.map(|i| format!("i{i}"));
                    command(i as u128, &format!("k{k}"), op, &format!("v{val}\u{0}"), id.as_deref())
                })
                .collect()
        })
    }

    /// What a restore reads back: the checkpointed rows.
    fn restore_from(rows: &std::collections::BTreeMap<AnswerKey, Entry>) -> AnswersState {
        let mut s = AnswersState::new(3, POLICY);
        for (k, e) in rows {
            s.restore(k.clone(), e.clone());
        }
        s
    }

    proptest! {
        /// A crash after any checkpoint, with the rest of the log replayed
        /// on the restored state, publishes the very same replies and
        /// changes as the run without a crash.
        #[test]
        fn a_replay_from_any_checkpoint_decides_the_same(log in log(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..4)) {
            let mut whole = AnswersState::new(3, POLICY);
            for (i, c) in log.iter().enumerate() {
                whole.apply(c, at(i as i64 * 700));
            }
            let (replies, changes) = (whole.take_replies(), whole.checkpoint().map(|c| c.changes).unwrap_or_default());

            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(log.len() + 1)).collect();
            cuts.sort_unstable();
            let mut stored = std::collections::BTreeMap::new();
            let (mut got_replies, mut got_changes) = (Vec::new(), Vec::new());
            let mut from = 0;
            for cut in cuts.into_iter().chain([log.len()]) {
                // A crash before the next checkpoint: what was published again is the same.
                let mut probe = restore_from(&stored);
                for (i, c) in log.iter().enumerate().skip(from) {
                    probe.apply(c, at(i as i64 * 700));
                }
                prop_assert_eq!(&probe.take_replies()[..], &replies[from..]);
                // Restore what the last checkpoint stored, replay up to the cut, checkpoint.
                let mut s = restore_from(&stored);
                for (i, c) in log.iter().enumerate().take(cut).skip(from) {
                    s.apply(c, at(i as i64 * 700));
                }
                got_replies.extend(s.take_replies());
                if let Some(cp) = s.checkpoint() {
                    for (k, e) in cp.rows {
                        match e { Some(e) => stored.insert(k, e), None => stored.remove(&k) };
                    }
                    got_changes.extend(cp.changes);
                }
                from = cut.max(from);
            }
            prop_assert_eq!(got_replies, replies);
            prop_assert_eq!(got_changes, changes);
        }

        /// Every key's changes have versions 1..n, each once.
        #[test]
        fn every_key_gets_versions_one_to_n(log in log()) {
            let mut s = AnswersState::new(0, POLICY);
            for (i, c) in log.iter().enumerate() {
                s.apply(c, at(i as i64));
            }
            let mut per_key: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
            for c in s.checkpoint().map(|c| c.changes).unwrap_or_default() {
                per_key.entry(c.key.into_string()).or_default().push(c.version);
            }
            for (key, versions) in per_key {
                prop_assert_eq!(versions.clone(), (1..=versions.len() as u64).collect::<Vec<_>>(), "{}", key);
            }
        }
    }
}
