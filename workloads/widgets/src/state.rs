//! The state of the one decision partition (the shard) in the processor:
//! the [`Graph`], the client ids it remembers, and what happened since the
//! engine last asked: the widgets and ids to write at the next checkpoint,
//! the changes to emit with it, and the replies to publish at once.
//!
//! Deterministic: it depends only on the commands applied, their offsets
//! and the partition's watermark, never on a clock, so a replay from a
//! checkpoint decides every command again exactly as the first time.
//!
//! # Ids
//! A command with a client id (`?id=`) whose (id, serial) was decided before
//! answers that first decision again and changes nothing. The memo forgets,
//! as a function of the log alone: an id whose decision's watermark is more
//! than [`IdPolicy::retention_ms`] behind the watermark now, and beyond
//! [`IdPolicy::max_ids`] the oldest.

use std::collections::{BTreeSet, HashMap, VecDeque};

use crate::graph::{Graph, GraphBuilder, StoredCells};
use crate::input::Serial;
use crate::log::{After, Logged, Outcome, Reply, WidgetCommand};
use crate::records::{Change, StoredWidget};

/// Where a command sits in the log, as the engine hands it over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At {
    pub offset: i64,
    /// The command's log-append time: the change's `at_ms`.
    pub accepted_at_ms: i64,
    /// The partition's watermark, this command included: the ids' clock.
    pub watermark_ms: i64,
}

/// How long, and how many, ids the shard remembers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdPolicy {
    /// An id answers its first decision while that decision is at most this
    /// old on the partition's watermark: the deployment horizon's retention.
    pub retention_ms: i64,
    /// Most ids remembered; one more forgets the oldest.
    pub max_ids: usize,
}

impl IdPolicy {
    /// The default cap: a million ids, about 100 s of writes at 10,000 a second, all with ids.
    pub const MAX_IDS: usize = 1_000_000;

    pub fn new(retention_ms: i64) -> Self {
        IdPolicy { retention_ms, max_ids: Self::MAX_IDS }
    }
}

/// One remembered decision of an (id, serial).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Memo {
    pub outcome: Outcome,
    /// The partition's watermark when it was decided.
    pub at_ms: i64,
    /// The command's offset: the memo's order.
    pub offset: i64,
}

/// The remembered ids, by `<id>:<serial>` (an id holds no `:`), oldest first in `order`.
#[derive(Debug, Clone, Default)]
struct IdMemo {
    by_key: HashMap<String, Memo>,
    order: VecDeque<String>,
}

impl IdMemo {
    fn get(&self, key: &str) -> Option<&Memo> {
        self.by_key.get(key)
    }

    /// Forgets what `now_ms` puts past the retention and what is beyond the cap, noting each key in `gone`.
    fn forget(&mut self, now_ms: i64, policy: &IdPolicy, gone: &mut BTreeSet<String>) {
        while let Some(front) = self.order.front() {
            let memo = &self.by_key[front];
            if now_ms.saturating_sub(memo.at_ms) <= policy.retention_ms && self.order.len() <= policy.max_ids {
                break;
            }
            let key = self.order.pop_front().expect("a front");
            self.by_key.remove(&key);
            gone.insert(key);
        }
    }

    /// Remembers a key not held (the caller looked it up first).
    fn remember(&mut self, key: String, memo: Memo) {
        self.order.push_back(key.clone());
        let old = self.by_key.insert(key, memo);
        debug_assert!(old.is_none(), "a key is remembered once");
    }
}

/// What a checkpoint writes and emits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// The widgets changed since the last checkpoint, sorted by serial;
    /// `None`: deleted (its row goes).
    pub widgets: Vec<(Serial, Option<StoredWidget>)>,
    /// The ids remembered or forgotten since, sorted by key; `None`: forgotten.
    pub ids: Vec<(String, Option<Memo>)>,
    /// The changes decided since, in log order.
    pub changes: Vec<Logged>,
}

/// Why a restore failed: the stored rows are not a graph.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the stored widgets are not a graph: {0}")]
pub struct Corrupt(pub String);

/// Builds a [`WidgetsState`] from a checkpoint's rows, in any order.
#[derive(Debug)]
pub struct Restore {
    partition: i32,
    policy: IdPolicy,
    graph: GraphBuilder,
    ids: Vec<(String, Memo)>,
}

impl Restore {
    pub fn new(partition: i32, policy: IdPolicy) -> Self {
        Restore { partition, policy, graph: GraphBuilder::default(), ids: Vec::new() }
    }

    /// # Errors
    /// [`Corrupt`] for a slot past the ports.
    pub fn widget(&mut self, w: StoredWidget) -> Result<(), Corrupt> {
        self.graph.add(w).map_err(Corrupt)
    }

    /// [`Restore::widget`] from the row's cells, borrowed (checked by the caller).
    ///
    /// # Errors
    /// [`Corrupt`] for a slot past the ports.
    pub fn widget_cells(&mut self, w: StoredCells<'_>) -> Result<(), Corrupt> {
        self.graph.add_cells(w).map_err(Corrupt)
    }

    pub fn id(&mut self, key: String, memo: Memo) {
        self.ids.push((key, memo));
    }

    /// # Errors
    /// [`Corrupt`] for a serial stored twice, or slots that do not wire up into a graph.
    pub fn finish(self) -> Result<WidgetsState, Corrupt> {
        let mut state = WidgetsState::new(self.partition, self.policy);
        state.graph = self.graph.finish().map_err(Corrupt)?;
        let mut ids = self.ids;
        ids.sort_by_key(|(_, m)| m.offset);
        for (key, memo) in ids {
            state.ids.remember(key, memo);
        }
        Ok(state)
    }
}

/// The state of the shard's partition of `widgets.commands`.
#[derive(Debug, Clone)]
pub struct WidgetsState {
    partition: i32,
    policy: IdPolicy,
    graph: Graph,
    ids: IdMemo,
    /// Widgets changed since the last checkpoint (sorted: rows are locked in one order).
    touched: BTreeSet<Serial>,
    /// Id keys remembered or forgotten since the last checkpoint.
    ids_touched: BTreeSet<String>,
    changes: Vec<Logged>,
    replies: Vec<Reply>,
}

impl WidgetsState {
    pub fn new(partition: i32, policy: IdPolicy) -> Self {
        WidgetsState {
            partition,
            policy,
            graph: Graph::new(),
            ids: IdMemo::default(),
            touched: BTreeSet::new(),
            ids_touched: BTreeSet::new(),
            changes: Vec::new(),
            replies: Vec::new(),
        }
    }

    /// Decides one command, in log order: records its reply, and its change if it made one.
    pub fn apply(&mut self, c: &WidgetCommand, at: At) -> Outcome {
        self.ids.forget(at.watermark_ms, &self.policy, &mut self.ids_touched);
        let memo_key = c.id.as_ref().map(|id| format!("{id}:{}", c.command.serial()));
        if let Some(memo) = memo_key.as_deref().and_then(|k| self.ids.get(k)) {
            // A retry: its first decision again, and nothing changes.
            let outcome = memo.outcome.clone();
            self.replies.push(Reply { request: c.request, outcome: outcome.clone() });
            return outcome;
        }
        let decision = self.graph.execute(&c.command);
        let outcome = Outcome::of(&decision);
        if let Ok(change) = decision {
            let after: Vec<After> = touched_by(&change)
                .into_iter()
                .map(|serial| After { widget: self.graph.stored(serial.as_str()), serial })
                .collect();
            self.touched.extend(after.iter().map(|a| a.serial.clone()));
            self.changes.push(Logged {
                change,
                after,
                at_ms: at.accepted_at_ms,
                partition: self.partition,
                input_offset: at.offset + 1,
            });
        }
        if let Some(key) = memo_key {
            self.ids_touched.insert(key.clone());
            self.ids.remember(key, Memo { outcome: outcome.clone(), at_ms: at.watermark_ms, offset: at.offset });
            self.ids.forget(at.watermark_ms, &self.policy, &mut self.ids_touched);
        }
        self.replies.push(Reply { request: c.request, outcome: outcome.clone() });
        outcome
    }

    /// What the next checkpoint writes and emits, or `None` when nothing
    /// happened. Gives the same answer again until [`Self::mark_checkpointed`].
    pub fn checkpoint(&self) -> Option<Checkpoint> {
        if self.touched.is_empty() && self.ids_touched.is_empty() && self.changes.is_empty() {
            return None;
        }
        let widgets = self.touched.iter().map(|s| (s.clone(), self.graph.stored(s.as_str()))).collect();
        let ids = self.ids_touched.iter().map(|k| (k.clone(), self.ids.get(k).cloned())).collect();
        Some(Checkpoint { widgets, ids, changes: self.changes.clone() })
    }

    /// Forgets what was checkpointed: call once [`Self::checkpoint`]'s answer is durable.
    pub fn mark_checkpointed(&mut self) {
        self.touched.clear();
        self.ids_touched.clear();
        self.changes.clear();
    }

    /// Forgets what `persisted` (an answer of [`Self::checkpoint`], now
    /// durable) wrote, whatever was applied since: a widget or an id whose
    /// row is no longer the one persisted stays touched, and the changes
    /// decided since (after the persisted ones, in log order) stay to emit.
    pub fn mark_persisted(&mut self, persisted: &Checkpoint) {
        for (serial, row) in &persisted.widgets {
            if self.graph.stored(serial.as_str()) == *row {
                self.touched.remove(serial);
            }
        }
        for (key, row) in &persisted.ids {
            if self.ids.get(key) == row.as_ref() {
                self.ids_touched.remove(key);
            }
        }
        self.changes.drain(..persisted.changes.len().min(self.changes.len()));
    }

    /// The replies decided since the last call, in log order.
    pub fn take_replies(&mut self) -> Vec<Reply> {
        std::mem::take(&mut self.replies)
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Ids remembered.
    pub fn ids(&self) -> usize {
        self.ids.by_key.len()
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }
}

/// The widgets a change alters: the addressed one first, then its partners.
fn touched_by(change: &Change) -> Vec<Serial> {
    match change {
        Change::Created { serial, .. } => vec![serial.clone()],
        Change::Deleted { serial, freed } => {
            let mut out = vec![serial.clone()];
            for a in freed {
                if !out.contains(&a.with) {
                    out.push(a.with.clone());
                }
            }
            out
        }
        Change::Associated { serial, with, .. } => vec![serial.clone(), with.clone()],
        Change::Dissociated { serial, other, .. } => vec![serial.clone(), other.clone()],
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::check::tests::commands;
    use crate::records::{Command, Status};
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use uuid::Uuid;

    pub(crate) const POLICY: IdPolicy = IdPolicy { retention_ms: 10_000, max_ids: 16 };

    fn at(offset: i64) -> At {
        At { offset, accepted_at_ms: 1_000 + offset, watermark_ms: 1_000 + offset }
    }

    fn s(serial: &str) -> Serial {
        Serial::parse(serial).unwrap()
    }

    pub(crate) fn wc(n: u128, command: Command, id: Option<&str>) -> WidgetCommand {
        WidgetCommand { request: Uuid::from_u128(n), id: id.map(Into::into), command, accepted_at_ms: 0 }
    }

    fn create(serial: &str, ports: &str) -> Command {
        Command::Create {
            serial: s(serial),
            name: crate::Name::parse("n").unwrap(),
            ports: crate::Ports::parse(ports).unwrap(),
        }
    }

    #[test]
    fn a_change_carries_every_touched_widget_after_it_and_checkpoints_write_them() {
        let mut st = WidgetsState::new(0, POLICY);
        st.apply(&wc(1, create("a", "PP"), None), at(0));
        st.apply(&wc(2, create("b", "P"), None), at(1));
        st.apply(&wc(3, Command::Associate { serial: s("a"), with: s("b"), port: crate::Port::P }, None), at(2));
        let cp = st.checkpoint().unwrap();
        assert_eq!(
            cp.widgets.iter().map(|(s, w)| (s.as_str(), w.is_some())).collect::<Vec<_>>(),
            [("a", true), ("b", true)]
        );
        st.mark_checkpointed();
        let out = st.apply(&wc(4, Command::Delete { serial: s("b") }, Some("r")), at(3));
        assert_eq!(out, Outcome::Deleted);
        let cp = st.checkpoint().unwrap();
        let logged = &cp.changes[0];
        assert_eq!((logged.input_offset, logged.record_key()), (4, "4:b".to_owned()));
        assert_eq!(
            logged.after.iter().map(|a| (a.serial.as_str(), a.widget.is_some())).collect::<Vec<_>>(),
            [("b", false), ("a", true)]
        );
        assert_eq!(logged.after[1].widget.as_ref().unwrap().slots, [None, None, None], "a's slot is free again");
        assert_eq!(cp.ids.len(), 1);
        // The retry answers the first decision, though b is gone now.
        assert_eq!(st.apply(&wc(5, Command::Delete { serial: s("b") }, Some("r")), at(4)), Outcome::Deleted);
        assert!(matches!(
            st.apply(&wc(6, Command::Delete { serial: s("b") }, Some("q")), at(5)),
            Outcome::Refused(Status::NotFound, _)
        ));
        assert_eq!(st.take_replies().len(), 6);
    }

    #[test]
    fn what_is_decided_while_a_checkpoint_is_in_flight_is_in_the_next_one() {
        let mut st = WidgetsState::new(0, POLICY);
        st.apply(&wc(1, create("a", "PP"), None), at(0));
        st.apply(&wc(2, create("b", "P"), Some("r")), at(1));
        let persisted = st.checkpoint().unwrap();
        // Decided while that checkpoint commits: a changes again, c is new.
        st.apply(&wc(3, Command::Associate { serial: s("a"), with: s("b"), port: crate::Port::P }, None), at(2));
        st.apply(&wc(4, create("c", "Q"), None), at(3));
        st.mark_persisted(&persisted);
        let next = st.checkpoint().unwrap();
        let widgets: Vec<&str> = next.widgets.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(widgets, ["a", "b", "c"], "a and b changed since the snapshot, c is new");
        assert!(next.ids.is_empty(), "the id of b's create was persisted");
        assert_eq!(next.changes.iter().map(|c| c.input_offset).collect::<Vec<_>>(), [3, 4]);
        st.mark_persisted(&next);
        assert!(st.checkpoint().is_none());
    }

    #[test]
    fn ids_are_forgotten_past_the_retention_and_beyond_the_cap() {
        let mut st = WidgetsState::new(0, POLICY);
        for i in 0..20 {
            st.apply(&wc(i, Command::Delete { serial: s("x") }, Some(&format!("i{i}"))), at(i as i64));
        }
        assert_eq!(st.ids(), 16);
        st.apply(&wc(99, Command::Delete { serial: s("x") }, None), at(30_000));
        assert_eq!(st.ids(), 0);
        let cp = st.checkpoint().unwrap();
        assert!(cp.ids.iter().all(|(_, m)| m.is_none()), "every id remembered and forgotten: its row goes");
    }

    /// What a restore reads back: the checkpointed rows.
    fn restore(widgets: &BTreeMap<Serial, StoredWidget>, ids: &BTreeMap<String, Memo>) -> WidgetsState {
        let mut r = Restore::new(0, POLICY);
        for w in widgets.values().rev() {
            r.widget(w.clone()).unwrap();
        }
        for (k, m) in ids {
            r.id(k.clone(), m.clone());
        }
        r.finish().unwrap()
    }

    fn log() -> impl Strategy<Value = Vec<WidgetCommand>> {
        (commands(), prop::collection::vec((prop::option::of(0u8..6), any::<bool>()), 300)).prop_map(|(cs, ids)| {
            let mut out: Vec<WidgetCommand> = Vec::new();
            for (i, (c, (id, retry))) in cs.into_iter().zip(ids).enumerate() {
                // A retry repeats an earlier command with its id; else a fresh command.
                let earlier = out.iter().rev().take(5).find(|w| w.id.is_some()).cloned();
                match (retry, earlier) {
                    (true, Some(e)) => out.push(WidgetCommand { request: Uuid::from_u128(i as u128), ..e }),
                    _ => out.push(wc(i as u128, c, id.map(|n| format!("i{n}")).as_deref())),
                }
            }
            out
        })
    }

    proptest! {
        /// A crash after any checkpoint, with the rest of the log replayed
        /// on the restored state, publishes the very same replies and
        /// changes as the run without a crash.
        #[test]
        fn a_replay_from_any_checkpoint_decides_the_same(log in log(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..4)) {
            let step = |i: usize| at(i as i64 * 700);
            let mut whole = WidgetsState::new(0, POLICY);
            for (i, c) in log.iter().enumerate() {
                whole.apply(c, step(i));
            }
            let (replies, changes) = (whole.take_replies(), whole.checkpoint().map(|c| c.changes).unwrap_or_default());

            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(log.len() + 1)).collect();
            cuts.sort_unstable();
            let (mut widgets, mut ids) = (BTreeMap::new(), BTreeMap::new());
            let (mut got_replies, mut got_changes) = (Vec::new(), Vec::new());
            let mut from = 0;
            for cut in cuts.into_iter().chain([log.len()]) {
                let mut st = restore(&widgets, &ids);
                for (i, c) in log.iter().enumerate().take(cut).skip(from) {
                    st.apply(c, step(i));
                }
                got_replies.extend(st.take_replies());
                if let Some(cp) = st.checkpoint() {
                    for (s, w) in cp.widgets {
                        match w { Some(w) => widgets.insert(s, w), None => widgets.remove(&s) };
                    }
                    for (k, m) in cp.ids {
                        match m { Some(m) => ids.insert(k, m), None => ids.remove(&k) };
                    }
                    got_changes.extend(cp.changes);
                }
                from = cut.max(from);
            }
            prop_assert_eq!(got_replies, replies);
            prop_assert_eq!(got_changes, changes);
        }
    }
}
