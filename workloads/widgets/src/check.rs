//! The checks a run of the widgets workload must pass, on any view of the
//! graph: the processor's [`Graph`], or the read model as the e2e
//! concurrency test and the chaos checker read it back (`GET
//! /widgets/{serial}` of every serial they used, into a [`Snapshot`]).
//!
//! - [`Snapshot::check`]: every slot holds at most one association;
//!   associations are symmetric; no pair is associated twice on one type;
//!   none is with the widget itself or with a widget that does not exist.
//! - [`replay`] / [`replay_commands`]: the state equals the `2xx` answers
//!   applied in the order they were decided. Each one must be what its
//!   command decides on the state the earlier ones made (so a `201` for a
//!   slot that was not free fails here), and the replayed graph's snapshot
//!   must equal the one observed.
//! - [`check_history`]: a run's answers against its log (the commands by
//!   client id, the changes by offset): each `2xx` has exactly its change,
//!   a refusal or a retry none, a request answered before another was sent
//!   was decided first, and the changes replay.

use std::collections::{BTreeMap, BTreeSet};

use crate::graph::Graph;
use crate::input::{Port, Serial};
use crate::records::{Change, Command, Reject, Widget};

/// Every widget of a graph, by serial, in a normal form: each widget's
/// associations sorted by port, then partner (a read model need not keep
/// the slot order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot(BTreeMap<Serial, Widget>);

/// An invariant a [`Snapshot`] breaks, with the widget it shows on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("`{0}` is listed twice")]
    Duplicate(Serial),
    #[error("`{serial}` holds {held} associations on port {port} with {slots} slot(s) of that type")]
    SlotOverfull { serial: Serial, port: Port, slots: usize, held: usize },
    #[error("`{serial}` is associated with itself on port {port}")]
    WithItself { serial: Serial, port: Port },
    #[error("`{serial}` is associated with `{with}` on port {port} twice")]
    Twice { serial: Serial, with: Serial, port: Port },
    #[error("`{serial}` is associated with `{with}` on port {port}, which does not exist")]
    Dangling { serial: Serial, with: Serial, port: Port },
    #[error("`{serial}` is associated with `{with}` on port {port}, but not the other way")]
    Asymmetric { serial: Serial, with: Serial, port: Port },
}

impl Snapshot {
    /// The snapshot of `widgets`, normalised.
    ///
    /// # Errors
    /// [`Violation::Duplicate`] when a serial comes twice.
    pub fn from_widgets(widgets: impl IntoIterator<Item = Widget>) -> Result<Self, Violation> {
        let mut map = BTreeMap::new();
        for mut w in widgets {
            w.associations.sort_by(|x, y| (x.port, &x.with).cmp(&(y.port, &y.with)));
            if let Some(w) = map.insert(w.serial.clone(), w) {
                return Err(Violation::Duplicate(w.serial));
            }
        }
        Ok(Snapshot(map))
    }

    /// The snapshot of a graph.
    pub fn of(graph: &Graph) -> Self {
        Snapshot::from_widgets(graph.widgets()).expect("a graph's serials are unique")
    }

    pub fn get(&self, serial: &Serial) -> Option<&Widget> {
        self.0.get(serial)
    }

    pub fn widgets(&self) -> impl Iterator<Item = &Widget> {
        self.0.values()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Checks every invariant of the graph's rules.
    ///
    /// # Errors
    /// The first [`Violation`] found (widgets in serial order).
    pub fn check(&self) -> Result<(), Violation> {
        let mut ends = BTreeSet::new();
        for w in self.0.values() {
            for port in Port::ALL {
                let (slots, held) = (w.ports.count(port), w.associations.iter().filter(|a| a.port == port).count());
                if held > slots {
                    return Err(Violation::SlotOverfull { serial: w.serial.clone(), port, slots, held });
                }
            }
            for a in &w.associations {
                let (serial, with, port) = (w.serial.clone(), a.with.clone(), a.port);
                if a.with == w.serial {
                    return Err(Violation::WithItself { serial, port });
                }
                if !self.0.contains_key(&a.with) {
                    return Err(Violation::Dangling { serial, with, port });
                }
                if !ends.insert((&w.serial, &a.with, a.port)) {
                    return Err(Violation::Twice { serial, with, port });
                }
            }
        }
        // Each end once (checked above), so symmetric is: every end's mirror is an end.
        for &(serial, with, port) in &ends {
            if !ends.contains(&(with, serial, port)) {
                return Err(Violation::Asymmetric { serial: serial.clone(), with: with.clone(), port });
            }
        }
        Ok(())
    }
}

/// Why a history does not replay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("answer #{at} ({command:?}) was accepted, but on the state before it the rules refuse it: {reject}")]
    Refused { at: usize, command: Command, reject: Reject },
    #[error("answer #{at} is {answered:?}, but on the state before it its command changes {decided:?}")]
    Differs { at: usize, answered: Box<Change>, decided: Box<Change> },
}

/// The graph that `changes` (the decided changes, in decided order, as the
/// log records them) make from an empty graph.
///
/// # Errors
/// The first change that is not exactly what its command decides on the
/// state the earlier ones made.
pub fn replay<'a>(changes: impl IntoIterator<Item = &'a Change>) -> Result<Graph, ReplayError> {
    let mut graph = Graph::new();
    for (at, answered) in changes.into_iter().enumerate() {
        let decided = decide(&graph, at, &answered.command())?;
        if decided != *answered {
            return Err(ReplayError::Differs { at, answered: Box::new(answered.clone()), decided: Box::new(decided) });
        }
        graph.apply(&decided);
    }
    Ok(graph)
}

/// The graph that the commands answered `2xx`, in decided order, make from
/// an empty graph: the client's view of a history (it knows what it asked
/// and that it was accepted, not e.g. which associations a delete freed).
///
/// # Errors
/// The first command the rules refuse on the state the earlier ones made.
pub fn replay_commands<'a>(accepted: impl IntoIterator<Item = &'a Command>) -> Result<Graph, ReplayError> {
    let mut graph = Graph::new();
    for (at, command) in accepted.into_iter().enumerate() {
        let change = decide(&graph, at, command)?;
        graph.apply(&change);
    }
    Ok(graph)
}

/// One client request as the client saw it: its id (`?id=`, one per
/// request and its retries), the command, the final status (`201`, `204`,
/// `404` or `409`: retried with the same id until decided), when its first
/// attempt was sent and when its decision was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered<T> {
    pub id: String,
    pub command: Command,
    pub status: u16,
    pub sent: T,
    pub answered: T,
}

/// Why a run's answers do not fit its log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error("`{0}` was answered, but no command of the log carries its id")]
    NotInLog(String),
    #[error("`{id}` asked {asked:?}, but its first command in the log is {logged:?}")]
    Differs { id: String, asked: Box<Command>, logged: Box<Command> },
    #[error("`{id}` was answered {status}, but its first command (offset {offset}) {what}")]
    Mismatch { id: String, status: u16, offset: i64, what: &'static str },
    #[error("the change of offset {0} is not the first command of an answered request (a retry or an unknown write changed the graph)")]
    Unanswered(i64),
    #[error("`{later}` (offset {later_offset}) was sent after `{earlier}` (offset {earlier_offset}) was answered, but decided before it")]
    NotLinearizable { earlier: String, earlier_offset: i64, later: String, later_offset: i64 },
    #[error(transparent)]
    Replay(#[from] ReplayError),
}

/// Checks a run's answers against its log and gives the graph its `2xx`
/// history makes: `commands` are the decision partition's command records
/// (offset, client id, command), `changes` the decided changes (the offset
/// of the command each decided, and the change). Every answered request's
/// first command in the log is its command; it has a change exactly when it
/// was answered `2xx` (a retry's later records, and refusals, none); every
/// change is such a first command's; a request answered before another was
/// first sent was decided first; and the changes replay in log order
/// ([`replay`]). The caller compares the graph's [`Snapshot`] with the read model.
///
/// # Errors
/// The first [`HistoryError`] found.
pub fn check_history<T: Ord + Copy>(
    answered: &[Answered<T>],
    commands: &[(i64, Option<String>, Command)],
    changes: &[(i64, Change)],
) -> Result<Graph, HistoryError> {
    let mut first: BTreeMap<&str, (i64, &Command)> = BTreeMap::new();
    for (offset, id, command) in commands {
        if let Some(id) = id {
            let e = first.entry(id.as_str()).or_insert((*offset, command));
            if *offset < e.0 {
                *e = (*offset, command);
            }
        }
    }
    let changed: BTreeMap<i64, &Change> = changes.iter().map(|(o, c)| (*o, c)).collect();
    let mut decided_at: BTreeMap<&str, i64> = BTreeMap::new();
    for a in answered {
        let (offset, logged) = *first.get(a.id.as_str()).ok_or_else(|| HistoryError::NotInLog(a.id.clone()))?;
        if *logged != a.command {
            return Err(HistoryError::Differs {
                id: a.id.clone(),
                asked: Box::new(a.command.clone()),
                logged: Box::new(logged.clone()),
            });
        }
        let mismatch = |what| HistoryError::Mismatch { id: a.id.clone(), status: a.status, offset, what };
        match (a.status < 300, changed.get(&offset)) {
            (true, None) => return Err(mismatch("changed nothing")),
            (false, Some(_)) => return Err(mismatch("made a change")),
            (true, Some(c)) if c.command() != a.command => return Err(mismatch("made another change")),
            _ => {}
        }
        decided_at.insert(&a.id, offset);
    }
    let answered_offsets: BTreeSet<i64> = decided_at.values().copied().collect();
    if let Some(offset) = changed.keys().find(|o| !answered_offsets.contains(o)) {
        return Err(HistoryError::Unanswered(*offset));
    }
    // Real time: sweep the requests by first attempt, holding the latest
    // decision of those answered before it.
    let mut by_sent: Vec<&Answered<T>> = answered.iter().collect();
    by_sent.sort_by_key(|a| a.sent);
    let mut by_answer: Vec<&Answered<T>> = answered.iter().collect();
    by_answer.sort_by_key(|a| a.answered);
    let (mut i, mut latest): (usize, Option<(&str, i64)>) = (0, None);
    for a in by_sent {
        while i < by_answer.len() && by_answer[i].answered < a.sent {
            let (id, offset) = (by_answer[i].id.as_str(), decided_at[by_answer[i].id.as_str()]);
            if latest.is_none_or(|(_, o)| offset > o) {
                latest = Some((id, offset));
            }
            i += 1;
        }
        let own = decided_at[a.id.as_str()];
        if let Some((earlier, earlier_offset)) = latest.filter(|(_, o)| *o >= own) {
            return Err(HistoryError::NotLinearizable {
                earlier: earlier.to_owned(),
                earlier_offset,
                later: a.id.clone(),
                later_offset: own,
            });
        }
    }
    Ok(replay(changed.values().copied())?)
}

fn decide(graph: &Graph, at: usize, command: &Command) -> Result<Change, ReplayError> {
    graph.decide(command).map_err(|reject| ReplayError::Refused { at, command: command.clone(), reject })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::input::{Name, Ports};
    use crate::records::Association;
    use proptest::prelude::*;

    fn s(serial: &str) -> Serial {
        Serial::parse(serial).expect("a test serial")
    }

    /// A widget with `associations` given as `(with, port)`.
    fn widget(serial: &str, ports: &str, associations: &[(&str, Port)]) -> Widget {
        Widget {
            serial: s(serial),
            name: Name::parse("").unwrap(),
            ports: Ports::parse(ports).unwrap(),
            associations: associations.iter().map(|(w, port)| Association { with: s(w), port: *port }).collect(),
        }
    }

    fn check(widgets: Vec<Widget>) -> Result<(), Violation> {
        Snapshot::from_widgets(widgets)?.check()
    }

    #[test]
    fn the_checker_finds_every_kind_of_violation() {
        use Port::{P, R};
        assert_eq!(check(vec![widget("a", "PR", &[("b", P)]), widget("b", "P", &[("a", P)])]), Ok(()));
        assert_eq!(check(vec![widget("a", "P", &[]), widget("a", "P", &[])]), Err(Violation::Duplicate(s("a"))));
        assert_eq!(
            check(vec![
                widget("a", "PR", &[("b", P), ("c", P)]),
                widget("b", "P", &[("a", P)]),
                widget("c", "P", &[("a", P)])
            ]),
            Err(Violation::SlotOverfull { serial: s("a"), port: P, slots: 1, held: 2 })
        );
        assert_eq!(
            check(vec![widget("a", "PP", &[("a", P), ("a", P)])]),
            Err(Violation::WithItself { serial: s("a"), port: P })
        );
        assert_eq!(
            check(vec![widget("a", "PP", &[("b", P), ("b", P)]), widget("b", "PP", &[("a", P), ("a", P)])]),
            Err(Violation::Twice { serial: s("a"), with: s("b"), port: P })
        );
        assert_eq!(
            check(vec![widget("a", "R", &[("gone", R)])]),
            Err(Violation::Dangling { serial: s("a"), with: s("gone"), port: R })
        );
        assert_eq!(
            check(vec![widget("a", "PR", &[("b", R)]), widget("b", "PR", &[("a", P)])]),
            Err(Violation::Asymmetric { serial: s("a"), with: s("b"), port: R })
        );
    }

    #[test]
    fn a_replay_refuses_two_winners_of_one_last_slot() {
        let create = |serial: &str, ports: &str| Change::Created {
            serial: s(serial),
            name: Name::parse("").unwrap(),
            ports: Ports::parse(ports).unwrap(),
        };
        let associated =
            |serial: &str, with: &str| Change::Associated { serial: s(serial), with: s(with), port: Port::Q };
        let ok = [create("a", "Q"), create("b", "Q"), create("c", "Q"), associated("b", "a")];
        assert_eq!(replay(&ok).map(|g| g.len()), Ok(3));
        let raced = [&ok[..], &[associated("c", "a")]].concat();
        assert_eq!(
            replay(&raced).map(|g| g.len()),
            Err(ReplayError::Refused {
                at: 4,
                command: associated("c", "a").command(),
                reject: Reject::NoFreeSlot { serial: s("a"), port: Port::Q }
            })
        );
        let commands: Vec<Command> = raced.iter().map(Change::command).collect();
        assert!(matches!(replay_commands(&commands), Err(ReplayError::Refused { at: 4, .. })));
        // A delete answered with other freed associations than it frees.
        let forged = [&ok[..], &[Change::Deleted { serial: s("a"), freed: vec![] }]].concat();
        assert!(matches!(replay(&forged), Err(ReplayError::Differs { at: 4, .. })));
    }

    /// A plain model of the rules, written from the issue independently of
    /// the compact graph: widgets by serial, each slot `Some(partner)` or free.
    #[derive(Default)]
    struct Model(BTreeMap<String, (Vec<Port>, Vec<Option<String>>)>);

    impl Model {
        /// Decides and makes `c`: `Ok` when the rules allow it, else why not.
        fn step(&mut self, c: &Command) -> Result<(), Reject> {
            let nf = |x: &Serial| Reject::NotFound(x.clone());
            match c {
                Command::Create { serial, ports, .. } => {
                    if self.0.contains_key(serial.as_str()) {
                        return Err(Reject::Exists(serial.clone()));
                    }
                    self.0.insert(serial.to_string(), (ports.iter().collect(), vec![None; ports.len()]));
                }
                Command::Delete { serial } => {
                    let (ports, slots) = self.0.remove(serial.as_str()).ok_or_else(|| nf(serial))?;
                    for (port, partner) in ports.iter().zip(slots).filter_map(|(p, x)| Some((p, x?))) {
                        let (pp, ps) = self.0.get_mut(&partner).unwrap();
                        let i = (0..pp.len())
                            .find(|i| pp[*i] == *port && ps[*i].as_deref() == Some(serial.as_str()))
                            .unwrap();
                        ps[i] = None;
                    }
                }
                Command::Associate { serial, with, port } => {
                    let a = self.0.get(serial.as_str()).ok_or_else(|| nf(serial))?;
                    let b = self.0.get(with.as_str()).ok_or_else(|| nf(with))?;
                    if serial == with {
                        return Err(Reject::WithItself);
                    }
                    let has = |(ports, slots): &(Vec<Port>, Vec<Option<String>>), x: Option<&str>| {
                        (0..ports.len()).find(|i| ports[*i] == *port && slots[*i].as_deref() == x)
                    };
                    if has(a, Some(with.as_str())).is_some() {
                        return Err(Reject::AlreadyAssociated {
                            serial: serial.clone(),
                            with: with.clone(),
                            port: *port,
                        });
                    }
                    let full = |x: &Serial| Reject::NoFreeSlot { serial: x.clone(), port: *port };
                    let i = has(a, None).ok_or_else(|| full(serial))?;
                    let j = has(b, None).ok_or_else(|| full(with))?;
                    self.0.get_mut(serial.as_str()).unwrap().1[i] = Some(with.to_string());
                    self.0.get_mut(with.as_str()).unwrap().1[j] = Some(serial.to_string());
                }
                Command::Dissociate { serial, other, port } => {
                    for x in [serial, other] {
                        self.0.get(x.as_str()).ok_or_else(|| nf(x))?;
                    }
                    let none = Reject::NoSuchAssociation { serial: serial.clone(), other: other.clone(), port: *port };
                    for (x, y) in [(serial, other), (other, serial)] {
                        let (ports, slots) = self.0.get_mut(x.as_str()).unwrap();
                        let i = (0..ports.len())
                            .find(|i| ports[*i] == *port && slots[*i].as_deref() == Some(y.as_str()))
                            .ok_or(none.clone())?;
                        slots[i] = None;
                    }
                }
            }
            Ok(())
        }

        /// `serial -> sorted "(with, port)"`, to compare with a [`Snapshot`].
        fn view(&self) -> BTreeMap<String, Vec<(String, Port)>> {
            self.0
                .iter()
                .map(|(k, (ports, slots))| {
                    let mut a: Vec<(String, Port)> =
                        ports.iter().zip(slots).filter_map(|(p, x)| Some((x.clone()?, *p))).collect();
                    a.sort_by(|x, y| (x.1, &x.0).cmp(&(y.1, &y.0)));
                    (k.clone(), a)
                })
                .collect()
        }
    }

    pub(crate) fn view(snapshot: &Snapshot) -> BTreeMap<String, Vec<(String, Port)>> {
        snapshot
            .widgets()
            .map(|w| (w.serial.to_string(), w.associations.iter().map(|a| (a.with.to_string(), a.port)).collect()))
            .collect()
    }

    /// Commands over six serials (so they collide), one of them multi-byte;
    /// ports and types drawn so that slots run out and free up often.
    #[test]
    fn a_history_check_finds_answers_that_do_not_fit_the_log() {
        let create = |serial: &str| Command::Create {
            serial: s(serial),
            name: crate::Name::parse("n").unwrap(),
            ports: Ports::parse("P").unwrap(),
        };
        let answered = |id: &str, command: Command, status, sent, answered| Answered {
            id: id.into(),
            command,
            status,
            sent,
            answered,
        };
        let log = vec![
            (0, Some("a".to_owned()), create("x")),
            (1, Some("b".to_owned()), create("x")),
            (2, Some("a".to_owned()), create("x")),
        ];
        let created = Change::Created {
            serial: s("x"),
            name: crate::Name::parse("n").unwrap(),
            ports: Ports::parse("P").unwrap(),
        };
        let changes = vec![(0, created.clone())];
        let ok = [answered("a", create("x"), 201, 0, 5), answered("b", create("x"), 409, 1, 6)];
        assert_eq!(check_history(&ok, &log, &changes).map(|g| g.len()), Ok(1));
        let late = [answered("a", create("x"), 201, 0, 1), answered("b", create("x"), 409, 1, 6)];
        assert!(check_history(&late, &log, &changes).is_ok(), "b sent at 1, not after a's answer at 1");
        let wrong = [answered("a", create("x"), 201, 5, 6), answered("b", create("x"), 409, 0, 1)];
        assert!(matches!(check_history(&wrong, &log, &changes), Err(HistoryError::NotLinearizable { .. })));
        let refused = [answered("a", create("x"), 409, 0, 1)];
        assert!(matches!(check_history(&refused, &log, &changes), Err(HistoryError::Mismatch { .. })));
        assert!(matches!(check_history(&ok[1..], &log, &changes), Err(HistoryError::Unanswered(0))));
        assert!(matches!(
            check_history(&[answered("c", create("x"), 409, 0, 1)], &log, &[]),
            Err(HistoryError::NotInLog(_))
        ));
        let doubled = vec![(0, created.clone()), (2, created)];
        assert!(matches!(check_history(&ok, &log, &doubled), Err(HistoryError::Unanswered(2))));
    }

    pub(crate) fn commands() -> impl Strategy<Value = Vec<Command>> {
        let serial = prop::sample::select(vec!["s0", "s1", "s2", "s3", "s4", "s5·é"]).prop_map(s);
        let ports = prop::sample::select(vec!["P", "R", "Q", "PP", "PR", "QQ", "PRQ", "PPP", "RRQ"])
            .prop_map(|p| Ports::parse(p).unwrap());
        let port = prop::sample::select(Port::ALL.to_vec());
        let command = prop_oneof![
            2 => (serial.clone(), ports).prop_map(|(serial, ports)| Command::Create { serial, name: Name::parse("w").unwrap(), ports }),
            1 => serial.clone().prop_map(|serial| Command::Delete { serial }),
            5 => (serial.clone(), serial.clone(), port.clone()).prop_map(|(serial, with, port)| Command::Associate { serial, with, port }),
            2 => (serial.clone(), serial, port).prop_map(|(serial, other, port)| Command::Dissociate { serial, other, port }),
        ];
        prop::collection::vec(command, 0..300)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// After every command the graph keeps every invariant, decides as
        /// the plain model, and equals it; at the end the accepted changes,
        /// and the accepted commands, replay to the same graph.
        #[test]
        fn random_commands_keep_every_invariant_and_replay_to_the_same_graph(commands in commands()) {
            let mut graph = Graph::new();
            let mut model = Model::default();
            let (mut changes, mut accepted) = (Vec::new(), Vec::new());
            for c in &commands {
                let outcome = graph.execute(c);
                prop_assert_eq!(outcome.clone().map(|_| ()), model.step(c), "{:?}", c);
                if let Ok(change) = outcome {
                    prop_assert_eq!(change.command(), c.clone());
                    changes.push(change);
                    accepted.push(c.clone());
                }
                graph.check_representation().map_err(TestCaseError::fail)?;
                let snapshot = Snapshot::of(&graph);
                prop_assert_eq!(snapshot.check(), Ok(()));
                prop_assert_eq!(view(&snapshot), model.view());
            }
            let snapshot = Snapshot::of(&graph);
            prop_assert_eq!(Snapshot::of(&replay(&changes).expect("the accepted changes replay")), snapshot.clone());
            prop_assert_eq!(Snapshot::of(&replay_commands(&accepted).expect("the accepted commands replay")), snapshot);
        }

        /// A graph rebuilt from its stored widgets (any order: here newest
        /// id first) decides every later command exactly as the original,
        /// down to the slot order of a delete's freed associations.
        #[test]
        fn a_graph_rebuilt_from_its_stored_widgets_decides_the_same(commands in commands(), cut in any::<prop::sample::Index>()) {
            let cut = cut.index(commands.len() + 1);
            let mut graph = Graph::new();
            for c in &commands[..cut] {
                let _ = graph.execute(c);
            }
            let mut stored: Vec<_> = graph.widgets().map(|w| graph.stored(w.serial.as_str()).expect("live")).collect();
            stored.reverse();
            let mut builder = crate::graph::GraphBuilder::default();
            for w in stored {
                builder.add(w).map_err(TestCaseError::fail)?;
            }
            let mut rebuilt = builder.finish().map_err(TestCaseError::fail)?;
            prop_assert_eq!(Snapshot::of(&rebuilt), Snapshot::of(&graph));
            for c in &commands[cut..] {
                prop_assert_eq!(rebuilt.execute(c), graph.execute(c), "{:?}", c);
            }
        }
    }
}
