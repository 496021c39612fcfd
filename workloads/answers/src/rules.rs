//! The rules of an answer, as the partition's owner decides them: one key's
//! state ([`Entry`]), one command ([`Op`] with its value and id), and the
//! pure [`decide`] giving the outcome, the version and the change, if any.
//!
//! Per key, `version` counts every change over the key's whole life and
//! `value` is `Some` while the key is live:
//!
//! | op     | live                         | not live (never, or deleted)   |
//! |--------|------------------------------|--------------------------------|
//! | create | `Exists`, no change          | `Created`, version + 1         |
//! | update | `Updated`, version + 1       | `NotFound`, no change          |
//! | delete | `Deleted`, version + 1       | `NotFound`, no change          |
//!
//! A delete's change carries the value it removed.
//!
//! # Ids
//! A command with a client id (`?id=`) whose (key, id) was decided before
//! answers that first decision again (same outcome, same version) and
//! changes nothing. The key remembers its ids in an [`IdMemo`], forgotten
//! deterministically — a function of the log alone, so a replay from any
//! checkpoint decides the same:
//!
//! - an id is *visible* while its decision's time (the partition's watermark
//!   when it was decided, which only moves forward) is within
//!   [`Policy::id_retention_ms`] of the watermark now;
//! - a key keeps at most [`Policy::max_ids_per_key`] ids: remembering one
//!   more forgets its oldest.
//!
//! Entries past their retention are only dropped when their key is touched;
//! as they are invisible anyway and always the oldest, when that happens
//! changes no decision.

use std::collections::VecDeque;

use crate::request::Op;

/// What a command decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Created,
    Updated,
    Deleted,
    /// A create of a live key: 409.
    Exists,
    /// An update or delete of a key that is not live: 404.
    NotFound,
}

impl Outcome {
    /// The change the outcome makes, if any.
    pub fn event(self) -> Option<Event> {
        match self {
            Outcome::Created => Some(Event::Create),
            Outcome::Updated => Some(Event::Update),
            Outcome::Deleted => Some(Event::Delete),
            Outcome::Exists | Outcome::NotFound => None,
        }
    }

    /// Its code in the processor's state rows (part of the data format).
    fn code(self) -> u8 {
        match self {
            Outcome::Created => 1,
            Outcome::Updated => 2,
            Outcome::Deleted => 3,
            Outcome::Exists => 4,
            Outcome::NotFound => 5,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Outcome::Created,
            2 => Outcome::Updated,
            3 => Outcome::Deleted,
            4 => Outcome::Exists,
            5 => Outcome::NotFound,
            _ => return None,
        })
    }
}

/// A change of a key, as the history lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Event {
    Create,
    Update,
    Delete,
}

impl Event {
    /// Its name in the history's JSON and in the `answers_history` table.
    pub fn name(self) -> &'static str {
        match self {
            Event::Create => "create",
            Event::Update => "update",
            Event::Delete => "delete",
        }
    }

    /// From [`Event::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "create" => Event::Create,
            "update" => Event::Update,
            "delete" => Event::Delete,
            _ => return None,
        })
    }
}

/// How long, and how many, ids a key remembers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// An id answers its first decision while that decision is at most this
    /// old on the partition's watermark: the deployment horizon's retention,
    /// as the engine holds the other workloads' ids.
    pub id_retention_ms: i64,
    /// Most ids one key remembers; one more forgets the oldest.
    pub max_ids_per_key: usize,
}

impl Policy {
    /// The default cap of ids per key: retries of one write come in ones and
    /// twos; a key written by many clients at once keeps its newest 64.
    pub const MAX_IDS_PER_KEY: usize = 64;

    pub fn new(id_retention_ms: i64) -> Self {
        Policy { id_retention_ms, max_ids_per_key: Self::MAX_IDS_PER_KEY }
    }
}

/// One remembered decision of a (key, id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Memo {
    pub id: String,
    pub outcome: Outcome,
    /// The version the decision answered (0 for a refusal).
    pub version: u64,
    /// The partition's watermark when it was decided.
    pub at_ms: i64,
}

/// A key's remembered ids, oldest first (their times never go down).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdMemo(VecDeque<Memo>);

impl IdMemo {
    /// The visible decision of `id` at watermark `now_ms`, if any.
    pub fn lookup(&self, id: &str, now_ms: i64, policy: &Policy) -> Option<&Memo> {
        self.0.iter().rev().find(|m| m.id == id).filter(|m| visible(m, now_ms, policy))
    }

    /// Remembers a decision, then forgets what is past its retention and beyond the cap.
    fn remember(&mut self, memo: Memo, policy: &Policy) {
        let now_ms = memo.at_ms;
        self.0.push_back(memo);
        self.forget_expired(now_ms, policy);
        while self.0.len() > policy.max_ids_per_key {
            self.0.pop_front();
        }
    }

    /// Drops the entries no longer visible at `now_ms` (all at the front).
    pub fn forget_expired(&mut self, now_ms: i64, policy: &Policy) {
        while self.0.front().is_some_and(|m| !visible(m, now_ms, policy)) {
            self.0.pop_front();
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Memo> {
        self.0.iter()
    }

    /// The memo as stored in the processor's `ids` column: a format byte
    /// (1), then per entry, oldest first: the id's length (1 byte), the id,
    /// the outcome's code, the version (8 bytes) and the time (8 bytes),
    /// big-endian. Part of the data format.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.0.iter().map(|m| m.id.len() + 18).sum::<usize>());
        out.push(1);
        for m in &self.0 {
            out.push(u8::try_from(m.id.len()).expect("ids are at most 128 bytes"));
            out.extend_from_slice(m.id.as_bytes());
            out.push(m.outcome.code());
            out.extend_from_slice(&m.version.to_be_bytes());
            out.extend_from_slice(&m.at_ms.to_be_bytes());
        }
        out
    }

    /// Reads [`IdMemo::encode`]'s bytes; `None` if they are not such.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (&format, mut rest) = bytes.split_first()?;
        if format != 1 {
            return None;
        }
        let mut memo = VecDeque::new();
        while let Some((&len, tail)) = rest.split_first() {
            let (id, tail) = tail.split_at_checked(usize::from(len))?;
            let (&code, tail) = tail.split_first()?;
            let (version, tail) = tail.split_first_chunk::<8>()?;
            let (at_ms, tail) = tail.split_first_chunk::<8>()?;
            memo.push_back(Memo {
                id: std::str::from_utf8(id).ok()?.to_owned(),
                outcome: Outcome::from_code(code)?,
                version: u64::from_be_bytes(*version),
                at_ms: i64::from_be_bytes(*at_ms),
            });
            rest = tail;
        }
        Some(IdMemo(memo))
    }
}

fn visible(m: &Memo, now_ms: i64, policy: &Policy) -> bool {
    m.at_ms >= now_ms.saturating_sub(policy.id_retention_ms)
}

/// One key's state in its partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    /// Changes so far (0: never created).
    pub version: u64,
    /// The value while live; `None` when never created or deleted.
    pub value: Option<String>,
    pub ids: IdMemo,
}

impl Entry {
    /// True when the entry holds nothing worth keeping (a key only ever refused, its ids forgotten).
    pub fn is_vacant(&self) -> bool {
        self.version == 0 && self.value.is_none() && self.ids.is_empty()
    }
}

/// One command as the rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command<'a> {
    pub op: Op,
    /// The value of a create or update.
    pub value: Option<&'a str>,
    pub id: Option<&'a str>,
}

/// What a command decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    /// The key's version after the change; 0 for a refusal; a repeated id's first version.
    pub version: u64,
    /// The change made: its event and value (a delete's: the value removed). `None` when nothing changed.
    pub change: Option<(Event, String)>,
    /// True when the id was decided before: this is that first decision again.
    pub repeated: bool,
}

/// Decides `command` against the key's `entry` at watermark `now_ms`. Pure.
pub fn decide(entry: &Entry, command: Command<'_>, now_ms: i64, policy: &Policy) -> Decision {
    if let Some(first) = command.id.and_then(|id| entry.ids.lookup(id, now_ms, policy)) {
        return Decision { outcome: first.outcome, version: first.version, change: None, repeated: true };
    }
    let next = entry.version + 1;
    let (outcome, version, change) = match (command.op, &entry.value) {
        (Op::Create, Some(_)) => (Outcome::Exists, 0, None),
        (Op::Create, None) => (Outcome::Created, next, Some((Event::Create, value_of(command)))),
        (Op::Update, Some(_)) => (Outcome::Updated, next, Some((Event::Update, value_of(command)))),
        (Op::Delete, Some(old)) => (Outcome::Deleted, next, Some((Event::Delete, old.clone()))),
        (Op::Update | Op::Delete, None) => (Outcome::NotFound, 0, None),
    };
    Decision { outcome, version, change, repeated: false }
}

fn value_of(command: Command<'_>) -> String {
    command.value.expect("a create or update carries a value (checked by the decoder)").to_owned()
}

/// Decides `command` and records the decision in `entry`: the change, and the id.
pub fn step(entry: &mut Entry, command: Command<'_>, now_ms: i64, policy: &Policy) -> Decision {
    let decision = decide(entry, command, now_ms, policy);
    if decision.repeated {
        return decision;
    }
    if let Some((event, value)) = &decision.change {
        entry.version = decision.version;
        entry.value = match event {
            Event::Create | Event::Update => Some(value.clone()),
            Event::Delete => None,
        };
    }
    match command.id {
        Some(id) => entry.ids.remember(
            Memo { id: id.to_owned(), outcome: decision.outcome, version: decision.version, at_ms: now_ms },
            policy,
        ),
        None => entry.ids.forget_expired(now_ms, policy),
    }
    decision
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const POLICY: Policy = Policy { id_retention_ms: 1_000, max_ids_per_key: 4 };

    fn cmd(op: Op, value: Option<&str>) -> Command<'_> {
        Command { op, value, id: None }
    }

    fn create(v: &str) -> Command<'_> {
        cmd(Op::Create, Some(v))
    }

    fn update(v: &str) -> Command<'_> {
        cmd(Op::Update, Some(v))
    }

    fn delete() -> Command<'static> {
        cmd(Op::Delete, None)
    }

    /// The outcomes and versions of `commands` applied in order to a new key.
    fn run(commands: &[Command<'_>]) -> Vec<(Outcome, u64)> {
        let mut entry = Entry::default();
        commands.iter().map(|c| step(&mut entry, *c, 0, &POLICY)).map(|d| (d.outcome, d.version)).collect()
    }

    #[test]
    fn the_tasks_allowed_sequences_succeed() {
        use Outcome::*;
        assert_eq!(
            run(&[create("a"), delete(), create("b"), update("c")]),
            [(Created, 1), (Deleted, 2), (Created, 3), (Updated, 4)]
        );
        assert_eq!(
            run(&[create("a"), update("b"), delete(), create("c"), update("d")]),
            [(Created, 1), (Updated, 2), (Deleted, 3), (Created, 4), (Updated, 5)]
        );
    }

    #[test]
    fn the_tasks_refused_sequences_refuse_and_take_no_version() {
        use Outcome::*;
        assert_eq!(run(&[create("a"), delete(), update("b")]), [(Created, 1), (Deleted, 2), (NotFound, 0)]);
        assert_eq!(run(&[create("a"), create("b")]), [(Created, 1), (Exists, 0)]);
        assert_eq!(run(&[update("a"), delete(), create("b")]), [(NotFound, 0), (NotFound, 0), (Created, 1)]);
        assert_eq!(run(&[create("a"), delete(), delete()]), [(Created, 1), (Deleted, 2), (NotFound, 0)]);
    }

    #[test]
    fn a_delete_carries_the_value_it_removed() {
        let mut entry = Entry::default();
        step(&mut entry, create("first"), 0, &POLICY);
        step(&mut entry, update("second"), 0, &POLICY);
        let d = step(&mut entry, delete(), 0, &POLICY);
        assert_eq!(d.change, Some((Event::Delete, "second".to_owned())));
        assert_eq!((entry.version, entry.value), (3, None));
    }

    #[test]
    fn a_repeated_id_answers_the_first_outcome_and_changes_nothing() {
        let mut entry = Entry::default();
        let first = step(&mut entry, Command { id: Some("r1"), ..create("a") }, 10, &POLICY);
        assert_eq!((first.outcome, first.version, first.repeated), (Outcome::Created, 1, false));
        // The key is deleted meanwhile; the retry of the create still answers "created, version 1".
        step(&mut entry, delete(), 20, &POLICY);
        let before = entry.clone();
        let again = step(&mut entry, Command { id: Some("r1"), ..create("other") }, 30, &POLICY);
        assert_eq!((again.outcome, again.version, again.change, again.repeated), (Outcome::Created, 1, None, true));
        assert_eq!(entry, before);
        // A refusal is remembered too: a retried 404 stays 404 even once the key exists.
        let refused = step(&mut entry, Command { id: Some("r2"), ..update("x") }, 40, &POLICY);
        assert_eq!(refused.outcome, Outcome::NotFound);
        step(&mut entry, create("b"), 50, &POLICY);
        let retried = step(&mut entry, Command { id: Some("r2"), ..update("y") }, 60, &POLICY);
        assert_eq!((retried.outcome, retried.version, retried.repeated), (Outcome::NotFound, 0, true));
    }

    #[test]
    fn ids_are_forgotten_after_the_retention_and_beyond_the_cap() {
        let mut entry = Entry::default();
        step(&mut entry, Command { id: Some("r"), ..create("a") }, 0, &POLICY);
        assert!(entry.ids.lookup("r", 1_000, &POLICY).is_some(), "held for the whole retention");
        assert!(entry.ids.lookup("r", 1_001, &POLICY).is_none(), "invisible past it");
        let late = step(&mut entry, Command { id: Some("r"), ..create("b") }, 1_001, &POLICY);
        assert_eq!((late.outcome, late.repeated), (Outcome::Exists, false), "decided anew");
        assert_eq!(entry.ids.len(), 1, "the expired entry was dropped when the key was touched");
        for (i, id) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
            step(&mut entry, Command { id: Some(id), ..update("v") }, 1_002 + i as i64, &POLICY);
        }
        assert_eq!(entry.ids.len(), POLICY.max_ids_per_key);
        assert!(entry.ids.lookup("a", 1_010, &POLICY).is_none(), "the oldest beyond the cap is forgotten");
        assert!(entry.ids.lookup("e", 1_010, &POLICY).is_some());
    }

    #[test]
    fn the_memo_round_trips_its_bytes() {
        let mut memo = IdMemo::default();
        assert_eq!(IdMemo::decode(&memo.encode()), Some(memo.clone()));
        for (i, outcome) in [Outcome::Created, Outcome::Exists, Outcome::NotFound].into_iter().enumerate() {
            memo.remember(
                Memo { id: "x".repeat(128 - i), outcome, version: u64::MAX - i as u64, at_ms: -5 + i as i64 },
                &Policy::new(i64::MAX),
            );
        }
        let bytes = memo.encode();
        assert_eq!(IdMemo::decode(&bytes).as_ref(), Some(&memo));
        for len in 0..bytes.len() {
            assert_ne!(IdMemo::decode(&bytes[..len]).as_ref(), Some(&memo), "{len} of {} bytes", bytes.len());
        }
        assert_eq!(IdMemo::decode(&[2]), None);
    }

    fn commands() -> impl Strategy<Value = Vec<(Op, Option<u8>, Option<u8>)>> {
        let op = prop_oneof![Just(Op::Create), Just(Op::Update), Just(Op::Delete)];
        prop::collection::vec((op, any::<u8>().prop_map(|v| Some(v % 8)), prop::option::of(0u8..6)), 0..120)
    }

    /// The plain model of the rules, without ids.
    fn model(ops: &[Op]) -> Vec<Outcome> {
        let mut live = false;
        ops.iter()
            .map(|op| match (op, live) {
                (Op::Create, true) => Outcome::Exists,
                (Op::Create, false) => {
                    live = true;
                    Outcome::Created
                }
                (Op::Update, true) => Outcome::Updated,
                (Op::Delete, true) => {
                    live = false;
                    Outcome::Deleted
                }
                (_, false) => Outcome::NotFound,
            })
            .collect()
    }

    proptest! {
        /// Versions are 1..n without gaps, the history replays to the value,
        /// and without ids every outcome is the plain model's.
        #[test]
        fn versions_count_the_changes_and_history_replays_to_the_value(cmds in commands()) {
            let mut entry = Entry::default();
            let mut history: Vec<(u64, Event, String)> = Vec::new();
            let values: Vec<String> = cmds.iter().map(|(_, v, _)| format!("v{}\u{0}", v.unwrap_or(0))).collect();
            let mut outcomes = Vec::new();
            for ((op, _, _), value) in cmds.iter().zip(&values) {
                let value = (*op != Op::Delete).then_some(value.as_str());
                let d = step(&mut entry, Command { op: *op, value, id: None }, 0, &POLICY);
                outcomes.push(d.outcome);
                prop_assert_eq!(d.change.is_some(), d.outcome.event().is_some());
                prop_assert_eq!(d.version == 0, d.change.is_none());
                if let Some((event, v)) = d.change {
                    history.push((d.version, event, v));
                }
            }
            let ops: Vec<Op> = cmds.iter().map(|(op, _, _)| *op).collect();
            prop_assert_eq!(outcomes, model(&ops));
            let versions: Vec<u64> = history.iter().map(|h| h.0).collect();
            prop_assert_eq!(versions, (1..=history.len() as u64).collect::<Vec<_>>());
            prop_assert_eq!(entry.version, history.len() as u64);
            // Replaying the history gives the latest value.
            let mut replayed = None;
            for (_, event, v) in &history {
                replayed = match event { Event::Delete => None, _ => Some(v.clone()) };
            }
            prop_assert_eq!(replayed, entry.value.clone());
        }

        /// With ids: a repeated id answers exactly its first decision and changes nothing,
        /// and every other command is decided as the model without it would decide.
        #[test]
        fn a_repeated_id_answers_its_first_decision(cmds in commands()) {
            let policy = Policy { id_retention_ms: i64::MAX / 2, max_ids_per_key: 1_000 };
            let mut entry = Entry::default();
            let mut first: std::collections::HashMap<String, (Outcome, u64)> = Default::default();
            let mut fresh_ops = Vec::new();
            let mut fresh_outcomes = Vec::new();
            for (op, v, id) in &cmds {
                let id = id.map(|i| format!("id{i}"));
                let value = v.map(|v| v.to_string());
                let value = (*op != Op::Delete).then(|| value.as_deref().unwrap_or("")) ;
                let before = entry.clone();
                let d = step(&mut entry, Command { op: *op, value, id: id.as_deref() }, 0, &policy);
                match id.as_ref().and_then(|i| first.get(i)) {
                    Some(&(outcome, version)) => {
                        prop_assert!(d.repeated);
                        prop_assert_eq!((d.outcome, d.version), (outcome, version));
                        prop_assert_eq!(&entry, &before);
                    }
                    None => {
                        prop_assert!(!d.repeated);
                        if let Some(id) = id { first.insert(id, (d.outcome, d.version)); }
                        fresh_ops.push(*op);
                        fresh_outcomes.push(d.outcome);
                    }
                }
            }
            prop_assert_eq!(fresh_outcomes, model(&fresh_ops));
        }
    }
}
