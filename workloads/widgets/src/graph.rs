//! The widget graph of one shard, held in memory by its single writer (the
//! owner of the shard's partition of `widgets.commands`): [`Graph::decide`]
//! reads a command against the graph and gives the [`Change`] it makes or
//! the [`Reject`]; [`Graph::apply`] makes the change. Both are pure and
//! deterministic (no clock, no I/O, no iteration over a hash table), so the
//! same log decides the same on every replay.
//!
//! # The rules, in the order they are checked
//!
//! | command    | refusals, first that holds wins                                                          | change        |
//! |------------|-------------------------------------------------------------------------------------------|---------------|
//! | create     | serial live: `Exists` (409)                                                               | `Created`     |
//! | delete     | serial not live: `NotFound` (404)                                                         | `Deleted` (with the associations it frees) |
//! | associate  | either not live: `NotFound` (404, `serial` first); same widget: `WithItself` (409); already associated on that port: `AlreadyAssociated` (409); no free slot of that port: `NoFreeSlot` (409, `serial` first) | `Associated` |
//! | dissociate | either not live: `NotFound` (404); no such association: `NoSuchAssociation` (404)        | `Dissociated` |
//!
//! An association takes the first free slot of its type on each widget; a
//! delete frees every slot of its partners that held it. A deleted serial
//! may be created again: it is a new widget, with no associations.
//!
//! # Layout (ten million widgets in one process)
//!
//! - `nodes`: one fixed 24-byte [`Node`] per widget id (a `u32`): an offset
//!   into the text arena, the three slots' partner ids, the lengths and the
//!   ports in one byte. No per-widget allocation. Ids of deleted widgets are
//!   reused (last freed, first reused); a delete clears every slot that
//!   pointed at the widget first, so a reused id is never a stale partner.
//! - `text`: one arena holding every live widget's serial then name; a
//!   delete leaves its bytes as garbage, compacted once garbage outweighs
//!   the live text (moving offsets only, never ids).
//! - `index`: serial → id, a [`HashTable`] of bare ids hashed by the
//!   serial they point at (no second copy of a serial). Its hasher is
//!   [`RandomState`], seeded per process against hash flooding by chosen
//!   serials: harmless to determinism, as no decision iterates the table.

use std::hash::{BuildHasher, RandomState};

use hashbrown::hash_table::Entry;
use hashbrown::HashTable;

use crate::input::{Name, Port, Ports, Serial, MAX_NAME_BYTES, MAX_PORTS, MAX_SERIAL_BYTES};
use crate::records::{Association, Change, Command, Reject, StoredWidget, Widget};

/// A widget's place in `nodes`.
type Id = u32;
/// A slot holding no association.
const EMPTY: Id = Id::MAX;
/// Below this much garbage the arena is never compacted.
const MIN_GARBAGE_TO_COMPACT: usize = 1 << 20;

/// One widget, or an unused id (`serial_len == 0`).
#[derive(Debug, Clone, Copy)]
struct Node {
    /// Where the serial starts in `text`; the name follows it.
    text: u64,
    /// Slot i's partner, or [`EMPTY`]; slots past `ports.len()` stay empty.
    partners: [Id; MAX_PORTS],
    name_len: u16,
    /// 0: the id is unused (serials are at least one byte).
    serial_len: u8,
    ports: Ports,
}

impl Node {
    fn is_live(&self) -> bool {
        self.serial_len != 0
    }

    /// Slot indexes of type `port`.
    fn slots(&self, port: Port) -> impl Iterator<Item = usize> + '_ {
        self.ports.iter().enumerate().filter(move |(_, p)| *p == port).map(|(i, _)| i)
    }

    fn slot_with(&self, port: Port, partner: Id) -> Option<usize> {
        self.slots(port).find(|i| self.partners[*i] == partner)
    }

    fn free_slot(&self, port: Port) -> Option<usize> {
        self.slot_with(port, EMPTY)
    }
}

const _: () = assert!(std::mem::size_of::<Node>() == 24, "a widget's fixed part stays 24 bytes");

/// The graph of one shard: every live widget and its associations.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    nodes: Vec<Node>,
    /// Unused ids, the last freed on top.
    unused: Vec<Id>,
    index: HashTable<Id>,
    hasher: RandomState,
    text: String,
    /// Bytes of `text` no live widget points at.
    garbage: usize,
    live: usize,
}

impl Graph {
    pub fn new() -> Self {
        Graph::default()
    }

    /// Live widgets.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// What `command` does to the graph as it is: the change, or why not.
    ///
    /// # Errors
    /// The [`Reject`] of the first rule that refuses it (the table in the module's doc).
    pub fn decide(&self, command: &Command) -> Result<Change, Reject> {
        match command {
            Command::Create { serial, name, ports } => match self.find(serial.as_str()) {
                Some(_) => Err(Reject::Exists(serial.clone())),
                None => Ok(Change::Created { serial: serial.clone(), name: name.clone(), ports: *ports }),
            },
            Command::Delete { serial } => {
                let id = self.live_id(serial)?;
                Ok(Change::Deleted { serial: serial.clone(), freed: self.associations(id) })
            }
            Command::Associate { serial, with, port } => {
                let (a, b) = (self.live_id(serial)?, self.live_id(with)?);
                if a == b {
                    return Err(Reject::WithItself);
                }
                let (na, nb) = (&self.nodes[a as usize], &self.nodes[b as usize]);
                if na.slot_with(*port, b).is_some() {
                    return Err(Reject::AlreadyAssociated { serial: serial.clone(), with: with.clone(), port: *port });
                }
                for (node, serial) in [(na, serial), (nb, with)] {
                    if node.free_slot(*port).is_none() {
                        return Err(Reject::NoFreeSlot { serial: serial.clone(), port: *port });
                    }
                }
                Ok(Change::Associated { serial: serial.clone(), with: with.clone(), port: *port })
            }
            Command::Dissociate { serial, other, port } => {
                let (a, b) = (self.live_id(serial)?, self.live_id(other)?);
                match self.nodes[a as usize].slot_with(*port, b) {
                    // `a == b` never matches: no widget holds itself.
                    Some(_) => Ok(Change::Dissociated { serial: serial.clone(), other: other.clone(), port: *port }),
                    None => {
                        Err(Reject::NoSuchAssociation { serial: serial.clone(), other: other.clone(), port: *port })
                    }
                }
            }
        }
    }

    /// Makes a change [`Graph::decide`] gave on this very graph.
    ///
    /// # Panics
    /// If the change does not fit the graph (it was decided on another
    /// state): a bug, never the client's fault. [`crate::check::replay`]
    /// checks a history without panicking.
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::Created { serial, name, ports } => self.insert(serial, name, *ports),
            Change::Deleted { serial, freed } => self.remove(serial, freed),
            Change::Associated { serial, with, port } => {
                let (a, b) = (self.expect_id(serial), self.expect_id(with));
                assert_ne!(a, b, "an association of `{serial}` with itself");
                for (x, y) in [(a, b), (b, a)] {
                    let node = &mut self.nodes[x as usize];
                    let slot = node.free_slot(*port).expect("a change decided on this graph: a free slot");
                    node.partners[slot] = y;
                }
            }
            Change::Dissociated { serial, other, port } => {
                let (a, b) = (self.expect_id(serial), self.expect_id(other));
                for (x, y) in [(a, b), (b, a)] {
                    let node = &mut self.nodes[x as usize];
                    let slot = node.slot_with(*port, y).expect("a change decided on this graph: the association");
                    node.partners[slot] = EMPTY;
                }
            }
        }
    }

    /// Decides `command` and, if allowed, applies its change: the single writer's step.
    ///
    /// # Errors
    /// As [`Graph::decide`]; nothing changes then.
    pub fn execute(&mut self, command: &Command) -> Result<Change, Reject> {
        let change = self.decide(command)?;
        self.apply(&change);
        Ok(change)
    }

    /// The live widget `serial`, as a read shows it.
    pub fn widget(&self, serial: &str) -> Option<Widget> {
        self.find(serial).map(|id| self.view(id))
    }

    /// Every live widget, in id order (a function of the history: deterministic).
    pub fn widgets(&self) -> impl Iterator<Item = Widget> + '_ {
        (0..self.nodes.len() as Id).filter(|id| self.nodes[*id as usize].is_live()).map(|id| self.view(id))
    }

    /// The live widget `serial` slot by slot: what a checkpoint persists.
    pub fn stored(&self, serial: &str) -> Option<StoredWidget> {
        let id = self.find(serial)?;
        let n = &self.nodes[id as usize];
        let partner = |i: usize| {
            (n.partners[i] != EMPTY)
                .then(|| Serial::parse(self.serial_of(n.partners[i])).expect("a serial checked when created"))
        };
        Some(StoredWidget {
            serial: Serial::parse(self.serial_of(id)).expect("a serial checked when created"),
            name: Name::parse(self.name_of(id)).expect("a name checked when created"),
            ports: n.ports,
            slots: [partner(0), partner(1), partner(2)],
        })
    }

    /// Bytes the graph holds on the heap (by capacity: what the allocator gave it).
    pub fn heap_bytes(&self) -> usize {
        // A hashbrown table: per bucket one id and one control byte, plus a
        // group (16) of control bytes; it reports 7/8 of its buckets as its
        // capacity (all but one below 8 buckets).
        let index_bytes = match self.index.capacity() {
            0 => 0,
            small @ 1..7 => (small + 1) * (std::mem::size_of::<Id>() + 1) + 16,
            cap => (cap * 8 / 7).next_power_of_two() * (std::mem::size_of::<Id>() + 1) + 16,
        };
        self.nodes.capacity() * std::mem::size_of::<Node>()
            + self.unused.capacity() * std::mem::size_of::<Id>()
            + self.text.capacity()
            + index_bytes
    }

    /// Checks the representation against itself: the index finds exactly
    /// the live widgets, unused ids hold nothing, every partner is a live
    /// widget holding this one back on a slot of the same type, and
    /// `len()` counts the live widgets. The graph's rules themselves are
    /// checked on its [`crate::check::Snapshot`].
    ///
    /// # Errors
    /// The first inconsistency, in words.
    pub fn check_representation(&self) -> Result<(), String> {
        let live = self.nodes.iter().filter(|n| n.is_live()).count();
        if live != self.live || self.index.len() != live {
            return Err(format!("{} live nodes, len() {}, {} in the index", live, self.live, self.index.len()));
        }
        if live + self.unused.len() != self.nodes.len() {
            return Err(format!("{live} live and {} unused of {} ids", self.unused.len(), self.nodes.len()));
        }
        for &id in &self.unused {
            let n = &self.nodes[id as usize];
            if n.is_live() || n.partners != [EMPTY; MAX_PORTS] {
                return Err(format!("unused id {id} holds a widget or a partner"));
            }
        }
        for (id, n) in self.nodes.iter().enumerate().filter(|(_, n)| n.is_live()) {
            let serial = self.serial_of(id as Id);
            if self.find(serial) != Some(id as Id) {
                return Err(format!("`{serial}` (id {id}) is not found by its serial"));
            }
            for (slot, &p) in n.partners.iter().enumerate() {
                if p == EMPTY {
                    continue;
                }
                if slot >= n.ports.len() {
                    return Err(format!("`{serial}` holds a partner past its {} slots", n.ports.len()));
                }
                let port = n.ports.get(slot);
                let partner = self.nodes.get(p as usize).filter(|n| n.is_live());
                if partner.is_none_or(|pn| pn.slot_with(port, id as Id).is_none()) {
                    return Err(format!("`{serial}`'s slot {slot} ({port}) holds id {p}, which does not hold it back"));
                }
            }
        }
        Ok(())
    }

    fn view(&self, id: Id) -> Widget {
        let n = &self.nodes[id as usize];
        Widget {
            serial: Serial::parse(self.serial_of(id)).expect("a serial checked when created"),
            name: Name::parse(self.name_of(id)).expect("a name checked when created"),
            ports: n.ports,
            associations: self.associations(id),
        }
    }

    /// `id`'s associations, in slot order.
    fn associations(&self, id: Id) -> Vec<Association> {
        let n = &self.nodes[id as usize];
        (0..n.ports.len())
            .filter(|i| n.partners[*i] != EMPTY)
            .map(|i| Association {
                with: Serial::parse(self.serial_of(n.partners[i])).expect("a serial checked when created"),
                port: n.ports.get(i),
            })
            .collect()
    }

    fn find(&self, serial: &str) -> Option<Id> {
        let hash = self.hasher.hash_one(serial);
        self.index.find(hash, |&id| serial_of(&self.nodes, &self.text, id) == serial).copied()
    }

    fn live_id(&self, serial: &Serial) -> Result<Id, Reject> {
        self.find(serial.as_str()).ok_or_else(|| Reject::NotFound(serial.clone()))
    }

    fn expect_id(&self, serial: &Serial) -> Id {
        self.find(serial.as_str()).unwrap_or_else(|| panic!("a change decided on this graph: no widget `{serial}`"))
    }

    fn serial_of(&self, id: Id) -> &str {
        serial_of(&self.nodes, &self.text, id)
    }

    fn name_of(&self, id: Id) -> &str {
        let n = &self.nodes[id as usize];
        let start = n.text as usize + usize::from(n.serial_len);
        &self.text[start..start + usize::from(n.name_len)]
    }

    fn insert(&mut self, serial: &Serial, name: &Name, ports: Ports) {
        debug_assert!(self.find(serial.as_str()).is_none(), "a change decided on this graph: `{serial}` exists");
        let node = Node {
            text: self.text.len() as u64,
            partners: [EMPTY; MAX_PORTS],
            name_len: u16::try_from(name.as_str().len()).expect("names are at most 256 bytes"),
            serial_len: u8::try_from(serial.as_str().len()).expect("serials are at most 128 bytes"),
            ports,
        };
        self.text.push_str(serial.as_str());
        self.text.push_str(name.as_str());
        let id = match self.unused.pop() {
            Some(id) => {
                self.nodes[id as usize] = node;
                id
            }
            None => {
                let id = Id::try_from(self.nodes.len()).ok().filter(|id| *id != EMPTY);
                self.nodes.push(node);
                id.expect("fewer than 2^32 - 1 widgets in one shard")
            }
        };
        let Graph { nodes, index, hasher, text, .. } = self;
        index.insert_unique(hasher.hash_one(serial.as_str()), id, |&id| hasher.hash_one(serial_of(nodes, text, id)));
        self.live += 1;
    }

    fn remove(&mut self, serial: &Serial, freed: &[Association]) {
        let id = self.expect_id(serial);
        debug_assert_eq!(self.associations(id), freed, "a change decided on this graph: what `{serial}` frees");
        let node = self.nodes[id as usize];
        for (slot, &partner) in node.partners.iter().enumerate().filter(|(_, p)| **p != EMPTY) {
            let port = node.ports.get(slot);
            let pn = &mut self.nodes[partner as usize];
            let back = pn.slot_with(port, id).expect("partners hold each other");
            pn.partners[back] = EMPTY;
        }
        let hash = self.hasher.hash_one(serial.as_str());
        self.index.find_entry(hash, |&x| x == id).expect("a live widget is in the index").remove();
        self.garbage += usize::from(node.serial_len) + usize::from(node.name_len);
        self.nodes[id as usize] =
            Node { text: 0, partners: [EMPTY; MAX_PORTS], name_len: 0, serial_len: 0, ports: node.ports };
        self.unused.push(id);
        self.live -= 1;
        if self.garbage >= MIN_GARBAGE_TO_COMPACT && self.garbage * 2 > self.text.len() {
            self.compact();
        }
    }

    /// Copies the live text into a new arena: offsets move, ids (and so the index) do not.
    fn compact(&mut self) {
        let mut text = String::with_capacity(self.text.len() - self.garbage);
        for n in self.nodes.iter_mut().filter(|n| n.is_live()) {
            let start = n.text as usize;
            let end = start + usize::from(n.serial_len) + usize::from(n.name_len);
            n.text = text.len() as u64;
            text.push_str(&self.text[start..end]);
        }
        self.text = text;
        self.garbage = 0;
    }
}

/// One stored widget as its cells read: borrowed text, checked by the caller
/// ([`Serial::check`], [`Name::check`]); a free slot is `None`.
#[derive(Debug, Clone, Copy)]
pub struct StoredCells<'a> {
    pub serial: &'a str,
    pub name: &'a str,
    pub ports: Ports,
    pub slots: [Option<&'a str>; MAX_PORTS],
}

/// An occupied slot waiting for its partner's id: the partner's serial is
/// `partner_text[start..start + len]`.
#[derive(Debug, Clone, Copy)]
struct Pending {
    id: Id,
    slot: u8,
    len: u8,
    start: usize,
}

/// Rebuilds a graph from its stored widgets, in any order, in one pass
/// over them and one over the index: each widget goes straight into the
/// node vector and the text arena as it is read (nothing allocated per
/// widget, the cells borrowed from the row), its occupied slots' partner
/// serials into a second arena; [`GraphBuilder::finish`] then builds the
/// serial index once, sized to the widgets counted (it never grows, so
/// never rehashes), one probe per widget (which also finds a serial
/// stored twice), and wires each occupied slot to its partner, one probe
/// per slot. A restore of millions of widgets holds, besides the graph,
/// only the occupied slots' partner serials.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    /// Every widget added, its slots still empty; its index still empty.
    graph: Graph,
    partner_text: String,
    pending: Vec<Pending>,
}

impl GraphBuilder {
    /// Adds one stored widget (owned: the tests' and the simulation's form).
    ///
    /// # Errors
    /// A slot past its ports is held.
    pub fn add(&mut self, w: StoredWidget) -> Result<(), String> {
        let slots = std::array::from_fn(|i| w.slots[i].as_ref().map(Serial::as_str));
        self.add_cells(StoredCells { serial: w.serial.as_str(), name: w.name.as_str(), ports: w.ports, slots })
    }

    /// Adds one stored widget from its cells. A serial stored twice is found by [`GraphBuilder::finish`].
    ///
    /// # Errors
    /// A slot past its ports is held, or a cell is longer than a serial or a
    /// name may be (the caller checks them: [`Serial::check`], [`Name::check`]).
    pub fn add_cells(&mut self, w: StoredCells<'_>) -> Result<(), String> {
        let too_long = || format!("`{}`: a serial or a name too long", w.serial);
        let serial_len = u8::try_from(w.serial.len()).ok().filter(|l| usize::from(*l) <= MAX_SERIAL_BYTES);
        let name_len = u16::try_from(w.name.len()).ok().filter(|l| usize::from(*l) <= MAX_NAME_BYTES);
        let (Some(serial_len), Some(name_len)) = (serial_len, name_len) else { return Err(too_long()) };
        if serial_len == 0 {
            return Err("an empty serial".into());
        }
        let graph = &mut self.graph;
        let id = Id::try_from(graph.nodes.len()).ok().filter(|id| *id != EMPTY);
        let id = id.ok_or("more than 2^32 - 2 widgets in one shard")?;
        for (slot, partner) in w.slots.iter().enumerate() {
            let Some(partner) = partner else { continue };
            if slot >= w.ports.len() {
                return Err(format!("`{}` holds a partner past its {} slots", w.serial, w.ports.len()));
            }
            let len = u8::try_from(partner.len()).ok().filter(|l| usize::from(*l) <= MAX_SERIAL_BYTES);
            let len = len.ok_or_else(|| format!("`{}`: slot {slot} holds a serial too long", w.serial))?;
            self.pending.push(Pending { id, slot: slot as u8, len, start: self.partner_text.len() });
            self.partner_text.push_str(partner);
        }
        graph.nodes.push(Node {
            text: graph.text.len() as u64,
            partners: [EMPTY; MAX_PORTS],
            name_len,
            serial_len,
            ports: w.ports,
        });
        graph.text.push_str(w.serial);
        graph.text.push_str(w.name);
        graph.live += 1;
        Ok(())
    }

    /// The graph: its index built, every slot wired to its partner.
    ///
    /// # Errors
    /// A serial stored twice, a partner that is not a stored widget, or a
    /// slot its partner does not hold back on a slot of the same type.
    pub fn finish(self) -> Result<Graph, String> {
        let GraphBuilder { mut graph, partner_text, pending } = self;
        // Sized once: inserting never grows it (the rehash of every serial, at each doubling, is gone).
        let mut index = HashTable::with_capacity(graph.nodes.len());
        let (nodes, text, hasher) = (&graph.nodes, &graph.text, &graph.hasher);
        for id in 0..nodes.len() as Id {
            let serial = serial_of(nodes, text, id);
            let rehash = |&x: &Id| hasher.hash_one(serial_of(nodes, text, x));
            match index.entry(hasher.hash_one(serial), |&x| serial_of(nodes, text, x) == serial, rehash) {
                Entry::Occupied(_) => return Err(format!("`{serial}` is stored twice")),
                Entry::Vacant(v) => {
                    v.insert(id);
                }
            }
        }
        graph.index = index;
        for p in &pending {
            let partner = &partner_text[p.start..p.start + usize::from(p.len)];
            let found = graph.find(partner);
            let found =
                found.ok_or_else(|| format!("`{}` holds `{partner}`, which is not stored", graph.serial_of(p.id)))?;
            graph.nodes[p.id as usize].partners[usize::from(p.slot)] = found;
        }
        // Every partner is a widget (all are live); each must hold this one back on a slot of the same
        // type: the part of `check_representation` the build does not give by construction.
        for p in &pending {
            let n = &graph.nodes[p.id as usize];
            let (port, partner) = (n.ports.get(usize::from(p.slot)), n.partners[usize::from(p.slot)]);
            if graph.nodes[partner as usize].slot_with(port, p.id).is_none() {
                let serial = graph.serial_of(p.id);
                return Err(format!(
                    "`{serial}`'s slot {} ({port}) holds `{}`, which does not hold it back",
                    p.slot,
                    graph.serial_of(partner)
                ));
            }
        }
        debug_assert_eq!(graph.check_representation(), Ok(()), "a graph built from stored widgets");
        Ok(graph)
    }
}

fn serial_of<'a>(nodes: &[Node], text: &'a str, id: Id) -> &'a str {
    let n = &nodes[id as usize];
    let start = n.text as usize;
    &text[start..start + usize::from(n.serial_len)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Snapshot;
    use crate::records::Status;

    fn s(serial: &str) -> Serial {
        Serial::parse(serial).expect("a test serial")
    }

    fn create(serial: &str, ports: &str) -> Command {
        Command::Create {
            serial: s(serial),
            name: Name::parse("a widget").unwrap(),
            ports: Ports::parse(ports).unwrap(),
        }
    }

    fn delete(serial: &str) -> Command {
        Command::Delete { serial: s(serial) }
    }

    fn associate(serial: &str, with: &str, port: Port) -> Command {
        Command::Associate { serial: s(serial), with: s(with), port }
    }

    fn dissociate(serial: &str, other: &str, port: Port) -> Command {
        Command::Dissociate { serial: s(serial), other: s(other), port }
    }

    /// A graph made by `commands`, each of which must be accepted.
    fn graph(commands: &[Command]) -> Graph {
        let mut g = Graph::new();
        for c in commands {
            g.execute(c).unwrap_or_else(|r| panic!("{c:?}: {r}"));
        }
        checked(&g);
        g
    }

    fn checked(g: &Graph) {
        g.check_representation().expect("a consistent representation");
        Snapshot::of(g).check().expect("the rules' invariants");
    }

    /// `serial`'s associations as `"<with>:<port>"`, in slot order.
    fn partners(g: &Graph, serial: &str) -> Vec<String> {
        let w = g.widget(serial).expect("a live widget");
        w.associations.iter().map(|a| format!("{}:{}", a.with, a.port)).collect()
    }

    #[test]
    fn a_created_widget_reads_back_with_its_ports_in_order_and_no_associations() {
        let mut g = Graph::new();
        let change = g.execute(&create("SN-1", "PRR")).unwrap();
        assert_eq!(
            change,
            Change::Created {
                serial: s("SN-1"),
                name: Name::parse("a widget").unwrap(),
                ports: Ports::parse("PRR").unwrap()
            }
        );
        let w = g.widget("SN-1").unwrap();
        assert_eq!((w.name.as_str(), w.ports.to_string(), w.associations), ("a widget", "PRR".into(), vec![]));
        assert_eq!((g.len(), g.widget("SN-2")), (1, None));
    }

    #[test]
    fn a_serial_is_unique_among_live_widgets() {
        let mut g = graph(&[create("a", "P")]);
        let reject = g.execute(&create("a", "QQ")).unwrap_err();
        assert_eq!((reject.status(), reject.to_string()), (Status::Conflict, "a widget with serial `a` exists".into()));
        assert_eq!(g.widget("a").unwrap().ports.to_string(), "P", "the refused create changed nothing");
        assert!(g.execute(&create("A", "P")).is_ok(), "serials compare byte for byte");
    }

    #[test]
    fn deleting_a_widget_that_is_not_there_is_not_found() {
        let mut g = graph(&[create("a", "P"), delete("a")]);
        assert_eq!(g.widget("a"), None);
        for serial in ["a", "never"] {
            let reject = g.execute(&delete(serial)).unwrap_err();
            assert_eq!((reject.status(), reject), (Status::NotFound, Reject::NotFound(s(serial))));
        }
    }

    #[test]
    fn an_association_takes_a_free_slot_of_its_type_on_both_widgets() {
        let g = graph(&[create("a", "QPP"), create("b", "RP"), associate("a", "b", Port::P)]);
        assert_eq!(partners(&g, "a"), ["b:P"]);
        assert_eq!(partners(&g, "b"), ["a:P"], "bidirectional");
        // Slot order: a's first P is its second slot.
        assert_eq!(g.nodes[0].partners, [EMPTY, 1, EMPTY]);
    }

    #[test]
    fn an_association_needs_both_widgets() {
        let mut g = graph(&[create("a", "P")]);
        assert_eq!(g.execute(&associate("a", "x", Port::P)), Err(Reject::NotFound(s("x"))));
        assert_eq!(g.execute(&associate("x", "a", Port::P)), Err(Reject::NotFound(s("x"))));
        assert_eq!(g.execute(&associate("x", "y", Port::P)), Err(Reject::NotFound(s("x"))), "serial first");
        assert_eq!(g.execute(&associate("x", "x", Port::P)), Err(Reject::NotFound(s("x"))), "404 before itself");
        assert_eq!(Reject::NotFound(s("x")).status(), Status::NotFound);
    }

    #[test]
    fn a_widget_cannot_be_associated_with_itself_even_with_two_free_slots() {
        let mut g = graph(&[create("a", "PP")]);
        let reject = g.execute(&associate("a", "a", Port::P)).unwrap_err();
        assert_eq!(
            (reject.status(), reject.to_string()),
            (Status::Conflict, "a widget cannot be associated with itself".into())
        );
        assert_eq!(partners(&g, "a"), Vec::<String>::new());
    }

    #[test]
    fn two_widgets_may_be_associated_more_than_once_but_not_twice_on_one_port_type() {
        let mut g = graph(&[create("a", "PPR"), create("b", "RPP"), associate("a", "b", Port::P)]);
        let reject = g.execute(&associate("b", "a", Port::P)).unwrap_err();
        assert_eq!(reject, Reject::AlreadyAssociated { serial: s("b"), with: s("a"), port: Port::P });
        assert_eq!(
            (reject.status(), reject.to_string()),
            (Status::Conflict, "`b` and `a` are already associated on port P".into())
        );
        g.execute(&associate("b", "a", Port::R)).expect("another type");
        assert_eq!(partners(&g, "a"), ["b:P", "b:R"]);
        assert_eq!(partners(&g, "b"), ["a:R", "a:P"]);
        checked(&g);
    }

    #[test]
    fn an_association_needs_a_free_slot_of_its_type_on_each() {
        let mut g = graph(&[create("a", "P"), create("b", "PP"), create("c", "P"), create("q", "Q")]);
        g.execute(&associate("a", "b", Port::P)).unwrap();
        // a's only P is taken: refused whichever side asks, naming a.
        let full_a = Reject::NoFreeSlot { serial: s("a"), port: Port::P };
        assert_eq!(g.execute(&associate("a", "c", Port::P)), Err(full_a.clone()));
        assert_eq!(g.execute(&associate("c", "a", Port::P)), Err(full_a.clone()));
        assert_eq!((full_a.status(), full_a.to_string()), (Status::Conflict, "`a` has no free P slot".into()));
        // A widget without a slot of the type has no free one.
        assert_eq!(g.execute(&associate("q", "c", Port::P)), Err(Reject::NoFreeSlot { serial: s("q"), port: Port::P }));
        assert_eq!(g.execute(&associate("c", "q", Port::Q)), Err(Reject::NoFreeSlot { serial: s("c"), port: Port::Q }));
        // b's second P is free.
        g.execute(&associate("c", "b", Port::P)).unwrap();
        assert_eq!(partners(&g, "b"), ["a:P", "c:P"]);
        checked(&g);
    }

    #[test]
    fn a_dissociation_frees_the_slot_on_both_widgets() {
        let mut g = graph(&[create("a", "P"), create("b", "P"), create("c", "P"), associate("a", "b", Port::P)]);
        // Either side may remove it.
        let change = g.execute(&dissociate("b", "a", Port::P)).unwrap();
        assert_eq!(change, Change::Dissociated { serial: s("b"), other: s("a"), port: Port::P });
        assert!(partners(&g, "a").is_empty() && partners(&g, "b").is_empty());
        g.execute(&associate("a", "c", Port::P)).expect("a's slot is free again");
        g.execute(&associate("b", "a", Port::P)).expect_err("but taken by c now");
        checked(&g);
    }

    #[test]
    fn dissociating_what_is_not_there_is_not_found() {
        let mut g = graph(&[create("a", "PR"), create("b", "PR"), create("c", "P"), associate("a", "b", Port::P)]);
        let none =
            |serial: &str, other: &str, port| Reject::NoSuchAssociation { serial: s(serial), other: s(other), port };
        assert_eq!(g.execute(&dissociate("a", "b", Port::R)), Err(none("a", "b", Port::R)), "another type");
        assert_eq!(g.execute(&dissociate("a", "c", Port::P)), Err(none("a", "c", Port::P)), "another widget");
        assert_eq!(g.execute(&dissociate("a", "a", Port::P)), Err(none("a", "a", Port::P)), "itself");
        assert_eq!(g.execute(&dissociate("a", "x", Port::P)), Err(Reject::NotFound(s("x"))));
        assert_eq!(g.execute(&dissociate("x", "a", Port::P)), Err(Reject::NotFound(s("x"))));
        let reject = none("a", "b", Port::R);
        assert_eq!(
            (reject.status(), reject.to_string()),
            (Status::NotFound, "`a` is not associated with `b` on port R".into())
        );
        assert_eq!(partners(&g, "a"), ["b:P"]);
    }

    #[test]
    fn removing_a_widget_removes_its_associations_and_frees_its_partners_slots() {
        let mut g = graph(&[
            create("hub", "PPR"),
            create("b", "P"),
            create("c", "PR"),
            associate("hub", "b", Port::P),
            associate("c", "hub", Port::P),
            associate("c", "hub", Port::R),
        ]);
        let change = g.execute(&delete("hub")).unwrap();
        let freed: Vec<String> = match &change {
            Change::Deleted { freed, .. } => freed.iter().map(|a| format!("{}:{}", a.with, a.port)).collect(),
            other => panic!("{other:?}"),
        };
        assert_eq!(freed, ["b:P", "c:P", "c:R"], "every association the delete removes, in slot order");
        assert!(partners(&g, "b").is_empty() && partners(&g, "c").is_empty());
        g.execute(&associate("b", "c", Port::P)).expect("both freed P slots are usable");
        checked(&g);
    }

    #[test]
    fn a_deleted_serial_can_be_created_again_as_a_new_widget() {
        let mut g = graph(&[create("a", "P"), create("b", "P"), associate("a", "b", Port::P), delete("a")]);
        g.execute(&create("a", "QR")).expect("the serial is free again");
        assert_eq!(g.widget("a").unwrap().ports.to_string(), "QR", "the new widget's ports");
        assert!(partners(&g, "a").is_empty() && partners(&g, "b").is_empty(), "no association survives");
        assert_eq!(
            g.execute(&dissociate("b", "a", Port::P)),
            Err(Reject::NoSuchAssociation { serial: s("b"), other: s("a"), port: Port::P })
        );
        checked(&g);
    }

    #[test]
    fn a_reused_id_is_never_a_stale_partner() {
        let mut g = graph(&[create("a", "P"), create("b", "P"), associate("a", "b", Port::P), delete("a")]);
        g.execute(&create("z", "P")).unwrap();
        assert_eq!(g.nodes.len(), 2, "z took a's id");
        assert!(partners(&g, "b").is_empty() && partners(&g, "z").is_empty());
        g.execute(&associate("z", "b", Port::P)).unwrap();
        checked(&g);
    }

    #[test]
    fn a_refusal_changes_nothing() {
        let mut g = graph(&[create("a", "P"), create("b", "P"), associate("a", "b", Port::P)]);
        let before = Snapshot::of(&g);
        for c in [
            create("a", "Q"),
            delete("x"),
            associate("a", "b", Port::P),
            associate("a", "a", Port::P),
            dissociate("a", "b", Port::Q),
        ] {
            assert!(g.execute(&c).is_err(), "{c:?}");
        }
        assert_eq!(Snapshot::of(&g), before);
    }

    fn stored(serial: &str, ports: &str, slots: [Option<&str>; MAX_PORTS]) -> StoredWidget {
        StoredWidget {
            serial: s(serial),
            name: Name::parse("n").unwrap(),
            ports: Ports::parse(ports).unwrap(),
            slots: slots.map(|p| p.map(s)),
        }
    }

    fn built(widgets: Vec<StoredWidget>) -> Result<Graph, String> {
        let mut b = GraphBuilder::default();
        for w in widgets {
            b.add(w)?;
        }
        b.finish()
    }

    #[test]
    fn a_graph_builds_from_its_stored_widgets_in_any_order() {
        let g = built(vec![
            stored("b", "PR", [Some("a"), Some("c"), None]),
            stored("c", "R", [Some("b"), None, None]),
            stored("a", "QP", [None, Some("b"), None]),
        ])
        .unwrap();
        assert_eq!(
            (partners(&g, "a"), partners(&g, "b"), partners(&g, "c")),
            (vec!["b:P".into()], vec!["a:P".into(), "c:R".into()], vec!["b:R".into()])
        );
        checked(&g);
    }

    #[test]
    fn stored_widgets_that_are_not_a_graph_are_refused() {
        let twice = built(vec![stored("a", "P", [None; 3]), stored("a", "Q", [None; 3])]);
        assert_eq!(twice.unwrap_err(), "`a` is stored twice");
        let missing = built(vec![stored("a", "P", [Some("x"), None, None])]);
        assert_eq!(missing.unwrap_err(), "`a` holds `x`, which is not stored");
        let one_way = built(vec![stored("a", "P", [Some("b"), None, None]), stored("b", "P", [None; 3])]);
        assert_eq!(one_way.unwrap_err(), "`a`'s slot 0 (P) holds `b`, which does not hold it back");
        let other_type =
            built(vec![stored("a", "P", [Some("b"), None, None]), stored("b", "R", [Some("a"), None, None])]);
        assert!(other_type.unwrap_err().contains("does not hold it back"));
        let past = built(vec![stored("a", "P", [None, Some("b"), None])]);
        assert_eq!(past.unwrap_err(), "`a` holds a partner past its 1 slots");
    }

    #[test]
    fn compacting_the_text_keeps_every_widget_and_association() {
        let mut g = Graph::new();
        let name = Name::parse(&"n".repeat(256)).unwrap();
        let n = 20_000;
        for i in 0..n {
            g.execute(&Command::Create {
                serial: s(&format!("w{i}")),
                name: name.clone(),
                ports: Ports::parse("PQ").unwrap(),
            })
            .unwrap();
        }
        for i in (0..n).step_by(2) {
            g.execute(&associate(&format!("w{i}"), &format!("w{}", i + 1), Port::Q)).unwrap();
        }
        let before = g.text.capacity();
        for i in (0..n).filter(|i| i % 10 != 0) {
            g.execute(&delete(&format!("w{i}"))).unwrap();
        }
        assert!(g.text.len() < before / 5, "compacted: {} of {before} bytes", g.text.len());
        assert_eq!(g.len(), n / 10);
        assert_eq!(g.widget("w10").unwrap().name, name);
        assert!(partners(&g, "w10").is_empty(), "w11 is gone");
        checked(&g);
    }
}

/// Measurements for docs/architecture.md ("Widgets"), not assertions: run
/// `cargo test -p widgets --release --lib -- --ignored --nocapture --test-threads=1 measure`.
#[cfg(test)]
mod measure {
    use super::*;
    use std::time::Instant;

    /// xorshift64*: a fixed, dependency-free stream of choices.
    struct Choices(u64);

    impl Choices {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
        }
    }

    const PORTS: [&str; 6] = ["P", "PR", "PRQ", "QQ", "RRQ", "PPP"];

    fn serial(i: u64) -> Serial {
        Serial::parse(&format!("SN-{i:010}")).expect("a valid serial")
    }

    fn create(i: u64) -> Command {
        Command::Create {
            serial: serial(i),
            name: Name::parse(&format!("widget {i}")).expect("a valid name"),
            ports: Ports::parse(PORTS[(i % 6) as usize]).expect("valid ports"),
        }
    }

    /// CPU time this thread has run (user + system), from /proc (Linux):
    /// on a shared machine the wall clock also counts the time others ran.
    fn cpu_secs() -> f64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
        // Fields after the command's closing parenthesis; utime and stime are the 14th and 15th of the line.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let ticks: Vec<f64> = rest.split_whitespace().skip(11).take(2).filter_map(|t| t.parse().ok()).collect();
        ticks.iter().sum::<f64>() / 100.0
    }

    /// Resident set size of this process, from /proc (Linux).
    fn rss_bytes() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        statm.split_whitespace().nth(1).and_then(|p| p.parse::<usize>().ok()).unwrap_or(0) * 4096
    }

    /// 1M decisions (decide, and apply when allowed) of a mixed stream over
    /// 100k widgets: 20 % creates, 10 % deletes, 50 % associations, 20 %
    /// dissociations, between random widgets and ports (so many are refused,
    /// as under contention). The commands are built before the clock starts.
    #[test]
    #[ignore = "a measurement: run in release"]
    fn measure_decision_rate() {
        const SERIALS: u64 = 100_000;
        const DECISIONS: usize = 1_000_000;
        let mut g = Graph::new();
        for i in 0..SERIALS {
            g.execute(&create(i)).expect("a fresh serial");
        }
        let mut r = Choices(0x9e37_79b9_7f4a_7c15);
        let port = |r: &mut Choices| Port::ALL[r.below(3) as usize];
        let commands: Vec<Command> = (0..DECISIONS)
            .map(|_| match r.below(10) {
                0 | 1 => create(r.below(SERIALS)),
                2 => Command::Delete { serial: serial(r.below(SERIALS)) },
                3 | 4 => Command::Dissociate {
                    serial: serial(r.below(SERIALS)),
                    other: serial(r.below(SERIALS)),
                    port: port(&mut r),
                },
                _ => Command::Associate {
                    serial: serial(r.below(SERIALS)),
                    with: serial(r.below(SERIALS)),
                    port: port(&mut r),
                },
            })
            .collect();
        let (start, cpu) = (Instant::now(), cpu_secs());
        let accepted = commands.iter().filter(|c| g.execute(c).is_ok()).count();
        let (took, cpu) = (start.elapsed(), cpu_secs() - cpu);
        println!(
            "measure: {DECISIONS} decisions in {:.3} s = {:.0} decisions/s; {cpu:.2} CPU s = {:.0} decisions per CPU s ({accepted} accepted, {} widgets live)",
            took.as_secs_f64(),
            DECISIONS as f64 / took.as_secs_f64(),
            DECISIONS as f64 / cpu,
            g.len()
        );
        g.check_representation().expect("consistent");
    }

    /// The graph's bytes per widget at 10M widgets (serials `SN-0000000001`,
    /// 13 bytes; names `widget 1`, 8–14 bytes; 1–3 ports; half of them
    /// associated with a neighbour): its heap by capacity, and the process's
    /// RSS growth.
    #[test]
    #[ignore = "a measurement: run in release"]
    fn measure_bytes_per_widget() {
        const WIDGETS: u64 = 10_000_000;
        let rss_before = rss_bytes();
        let mut g = Graph::new();
        // Commands built in batches off the clock: the clock times the graph's creates alone.
        let (mut created, mut cpu) = (std::time::Duration::ZERO, 0.0);
        for batch in (0..WIDGETS).step_by(100_000) {
            let commands: Vec<Command> = (batch..batch + 100_000).map(create).collect();
            let (start, cpu_start) = (Instant::now(), cpu_secs());
            for c in &commands {
                g.execute(c).expect("a fresh serial");
            }
            created += start.elapsed();
            cpu += cpu_secs() - cpu_start;
        }
        for i in (0..WIDGETS - 1).step_by(2) {
            let port = g.nodes[i as usize].ports.get(0);
            let _ = g.execute(&Command::Associate { serial: serial(i), with: serial(i + 1), port });
        }
        let (heap, rss) = (g.heap_bytes(), rss_bytes().saturating_sub(rss_before));
        let text = g.text.len() as f64 / WIDGETS as f64;
        println!(
            "measure: {WIDGETS} widgets created in {:.2} s ({cpu:.2} CPU s); heap {} MB = {:.1} B/widget (text {text:.1} B/widget); RSS +{} MB = {:.1} B/widget",
            created.as_secs_f64(),
            heap >> 20,
            heap as f64 / WIDGETS as f64,
            rss >> 20,
            rss as f64 / WIDGETS as f64
        );
    }
}
