//! The engine's deterministic simulation (docs/architecture.md,
//! "Deterministic simulation").
//!
//! One seed draws a run of one workload ([`Simulated`]: analytics or
//! increments): 1–3 events partitions, 2–3 processor instances, a stream of
//! events (late ones, retries of the same client id),
//! and a few hundred steps, each chosen by the seeded generator: the command
//! appends events; an instance consumes some of a partition it holds, or
//! checkpoints it (store, then emit); an instance crashes (its memory is
//! gone) or restarts; a partition moves to another instance, gracefully
//! (final checkpoint) or not (the former owner goes on as a zombie until a
//! fence or its heartbeat stops it); an instance heartbeats (claims what it
//! was given, drops what it lost); the next store or log transaction fails
//! (before commit, or after it with the reply lost). Then the run quiesces
//! (no faults, every instance up, every partition claimed, consumed to the
//! end and checkpointed) and the read model — per aggregate key, the
//! committed record with the highest input offset, the materializer's guard
//! — must equal the exact fold of the acknowledged events (each client id
//! once).
//!
//! `SIM_SEED=1234 cargo test -p <workload> --lib sim` replays one seed and prints its steps; `SIM_SEEDS=n` runs seeds 0..n
//! (default 1000).
//!
//! Public behind the `sim` feature: a workload crate simulates itself by
//! implementing [`Simulated`] in its tests and calling [`simulate`].

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use common::engine::progress::{decode_progress, PROGRESS_KEY_PREFIX};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{LogFault, MemLog, MemProducer, MemStore, StoreFault};
use crate::engine::emitter::AggregateEmitter;
use crate::engine::partition::{checkpoint_partition, claim_partition, FetchedRecord, OnRecord, OwnedPartition};
use crate::engine::pipeline::{after_checkpoint, AfterCheckpoint};
use crate::engine::plant;
use crate::engine::{Aggregation, Emit, Planted, ProcessorError};

pub const HOUR_MS: i64 = 3_600_000;
/// The start of the hour the simulated broker clock starts in.
pub const H0: i64 = 1_900_000_000_000 / HOUR_MS * HOUR_MS;
/// Hours close, and ids are forgotten, 30 minutes after their hour's end, on the partition's watermark.
pub const RETENTION_MS: i64 = 30 * 60_000;
const TOPIC: &str = "events";
/// Random steps before the run quiesces.
const STEPS: usize = 300;

/// A workload as the simulation drives it: what the command appends, and
/// what the read model must hold once the run quiesces.
pub trait Simulated: Aggregation<Event: Clone + std::fmt::Debug> {
    /// The read model's value of one aggregate key.
    type Value: std::fmt::Debug + PartialEq;

    /// The workload (with its hours closing, if it has any, after [`RETENTION_MS`]).
    fn get() -> &'static Self;

    /// A run's events in append order: broker time (the acceptance time)
    /// moves forward; some are retries of earlier ones (counted in `retries`).
    fn generate(rng: &mut StdRng, retries: &mut u32) -> Vec<Self::Event>;

    /// The event's record key (which sets its partition) and its bytes.
    fn record(event: &Self::Event) -> (Vec<u8>, Vec<u8>);

    /// An aggregates record's input offset and read-model value.
    fn read(record: &Emit) -> Result<(i64, Self::Value), String>;

    /// The exact fold of the acknowledged events, per aggregate key.
    fn fold(events: &[(i32, Self::Event)]) -> BTreeMap<String, Self::Value>;
}

type Owned<W> = OwnedPartition<<W as Aggregation>::State, MemProducer>;

/// One processor instance: what it holds in memory.
struct Instance<W: Simulated> {
    up: bool,
    owned: BTreeMap<i32, Owned<W>>,
}

/// The end of a claim or checkpoint.
enum Outcome<W: Simulated> {
    Claim(Result<Owned<W>, ProcessorError>),
    Checkpoint(Owned<W>, Result<Option<i64>, ProcessorError>),
}

/// A claim or checkpoint held up in the network (its emit stalled): the
/// run goes on around it, and a later step finishes it.
struct InFlight<W: Simulated> {
    instance: usize,
    partition: i32,
    op: Pin<Box<dyn Future<Output = Outcome<W>>>>,
}

/// What a run (or the sum of runs) did, for the summaries.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub crashes: u32,
    pub moves: u32,
    pub zombie_fences: u32,
    pub store_faults: u32,
    pub log_faults: u32,
    pub claims: u32,
    pub checkpoints: u32,
    pub stalls: u32,
    pub retries: u32,
}

impl Counts {
    fn add(&mut self, o: Counts) {
        self.crashes += o.crashes;
        self.moves += o.moves;
        self.zombie_fences += o.zombie_fences;
        self.store_faults += o.store_faults;
        self.log_faults += o.log_faults;
        self.claims += o.claims;
        self.checkpoints += o.checkpoints;
        self.stalls += o.stalls;
        self.retries += o.retries;
    }
}

struct Sim<W: Simulated> {
    rng: StdRng,
    log: MemLog,
    store: MemStore,
    partitions: i32,
    instances: Vec<Instance<W>>,
    /// The lease of each partition: the instance meant to hold it.
    lease: BTreeMap<i32, usize>,
    in_flight: Vec<InFlight<W>>,
    /// Set when a checkpoint wrote or failed: the quiescing run is not done yet.
    busy: bool,
    /// Events the command has yet to append, in order.
    pending: VecDeque<(i32, W::Event)>,
    counts: Counts,
    verbose: bool,
}

impl<W: Simulated> Sim<W> {
    fn new(seed: u64, verbose: bool) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let partitions = rng.random_range(1..=3);
        let n = rng.random_range(2..=3);
        let log = MemLog::new();
        let mut counts = Counts::default();
        let pending = W::generate(&mut rng, &mut counts.retries)
            .into_iter()
            .map(|e| (common::engine::kafka::partition_for(&W::record(&e).0, partitions), e))
            .collect();
        let instances = (0..n).map(|_| Instance { up: true, owned: BTreeMap::new() }).collect();
        let lease = (0..partitions).map(|p| (p, p as usize % n)).collect();
        let store = MemStore::new(TOPIC);
        Sim {
            rng,
            log,
            store,
            partitions,
            instances,
            lease,
            in_flight: Vec::new(),
            busy: false,
            pending,
            counts,
            verbose,
        }
    }

    fn trace(&self, what: impl FnOnce() -> String) {
        if self.verbose {
            eprintln!("  {}", what());
        }
    }

    fn up_instances(&self) -> Vec<usize> {
        (0..self.instances.len()).filter(|i| self.instances[*i].up).collect()
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> Option<T> {
        (!from.is_empty()).then(|| from[self.rng.random_range(0..from.len())])
    }

    /// The command appends up to `n` events.
    fn append(&mut self, n: usize) {
        for _ in 0..n {
            let Some((partition, event)) = self.pending.pop_front() else { return };
            let (key, payload) = W::record(&event);
            let offset = self.log.append_event(partition, key, payload, W::get().accepted_at_ms(&event));
            self.trace(|| format!("append p{partition}@{offset} {event:?}"));
        }
    }

    /// What the loop does with fetched records of an owned partition (`on_message`).
    fn consume(&mut self, i: usize, partition: i32, max: usize) {
        let records = {
            let Some(owned) = self.instances[i].owned.get(&partition) else { return };
            self.log.read_events(partition, owned.position.next_offset, max)
        };
        let owned = self.instances[i].owned.get_mut(&partition).expect("checked above");
        for r in &records {
            let fetched = FetchedRecord {
                offset: r.offset,
                key: Some(&r.key),
                payload: Some(&r.payload),
                log_append_ms: Some(r.appended_ms),
            };
            let outcome = owned.on_record(W::get(), self.partitions, partition, fetched);
            if let OnRecord::Stalled(e) = outcome {
                panic!("p{partition}@{}: the simulation writes only valid events: {e:?}", r.offset);
            }
        }
        let next = owned.position.next_offset;
        self.trace(|| format!("i{i} consumes p{partition}: {} records, next {next}", records.len()));
    }

    /// Starts a checkpoint of one partition (`checkpoint_partition`); it
    /// finishes at once unless its emit stalls.
    fn checkpoint(&mut self, i: usize, partition: i32) {
        let Some(mut owned) = self.instances[i].owned.remove(&partition) else { return };
        self.counts.checkpoints += 1;
        let store = self.store.clone();
        let op = async move {
            let result = checkpoint_partition(W::get(), &store, partition, &mut owned).await;
            Outcome::Checkpoint(owned, result)
        };
        self.start(i, partition, Box::pin(op));
    }

    /// Starts a claim of a partition leased to `i` (`Processor::claim`, one
    /// attempt); it finishes at once unless its re-send stalls.
    fn claim(&mut self, i: usize, partition: i32) {
        self.counts.claims += 1;
        let (store, log) = (self.store.clone(), self.log.clone());
        let op = async move {
            let emitter = AggregateEmitter::over(log, TOPIC, 1);
            Outcome::Claim(claim_partition(W::get(), &store, &emitter, partition, RETENTION_MS).await)
        };
        self.start(i, partition, Box::pin(op));
    }

    fn start(&mut self, instance: usize, partition: i32, op: Pin<Box<dyn Future<Output = Outcome<W>>>>) {
        let mut op = InFlight { instance, partition, op };
        if !self.poll(&mut op) {
            self.counts.stalls += 1;
            self.trace(|| format!("i{instance}: p{partition}'s operation stalls"));
            self.in_flight.push(op);
        }
    }

    /// Polls an operation; true when it finished (and its outcome was applied).
    fn poll(&mut self, op: &mut InFlight<W>) -> bool {
        let (i, partition) = (op.instance, op.partition);
        match op.op.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Pending => false,
            Poll::Ready(Outcome::Claim(Ok(owned))) => {
                self.trace(|| format!("i{i} claims p{partition}: epoch {}, {:?}", owned.epoch, owned.position));
                self.instances[i].owned.insert(partition, owned);
                true
            }
            Poll::Ready(Outcome::Claim(Err(e))) => {
                // Retried at the next heartbeat.
                self.trace(|| format!("i{i} claim of p{partition} failed: {e}"));
                true
            }
            Poll::Ready(Outcome::Checkpoint(owned, result)) => {
                self.trace(|| format!("i{i} checkpoints p{partition}: {result:?}"));
                // What the loop does with the outcome (`checkpoint_all`): keep the partition,
                // or drop it (fenced; or its emit failed: the next heartbeat claims it again).
                let after = after_checkpoint(&result);
                if after == (AfterCheckpoint::Drop { fenced: true }) {
                    self.counts.zombie_fences += 1;
                }
                if after == AfterCheckpoint::Keep {
                    self.instances[i].owned.insert(partition, owned);
                }
                if matches!(result, Ok(Some(_)) | Err(_)) {
                    self.busy = true;
                }
                true
            }
        }
    }

    /// Polls a stalled operation again.
    fn resume(&mut self, k: usize) {
        let mut op = self.in_flight.remove(k);
        if !self.poll(&mut op) {
            self.in_flight.push(op);
        }
    }

    fn is_in_flight(&self, i: usize, partition: i32) -> bool {
        self.in_flight.iter().any(|op| op.instance == i && op.partition == partition)
    }

    /// A heartbeat of `i` (`Processor::rebalance`): drops the partitions whose
    /// lease it lost (unless it is too slow to notice: a zombie), claims those
    /// leased to it.
    fn heartbeat(&mut self, i: usize, notices_loss: bool) {
        let held: Vec<i32> = self.instances[i].owned.keys().copied().collect();
        for p in held {
            if self.lease.get(&p) != Some(&i) && notices_loss {
                self.trace(|| format!("i{i} drops p{p}: lease lost"));
                self.instances[i].owned.remove(&p);
            }
        }
        let mine: Vec<i32> = self.lease.iter().filter(|(_, owner)| **owner == i).map(|(p, _)| *p).collect();
        for p in mine {
            if !self.instances[i].owned.contains_key(&p) && !self.is_in_flight(i, p) {
                self.claim(i, p);
            }
        }
    }

    /// Leases of partitions whose holder is down expire: another live instance takes them.
    fn expire_leases(&mut self) {
        let up = self.up_instances();
        for p in 0..self.partitions {
            if !self.instances[self.lease[&p]].up {
                if let Some(to) = self.pick(&up) {
                    self.lease.insert(p, to);
                }
            }
        }
    }

    fn step(&mut self) {
        let up = self.up_instances();
        match self.rng.random_range(0..1000) {
            0..170 => {
                let n = self.rng.random_range(1..=4);
                self.append(n);
            }
            170..440 => {
                let Some(i) = self.pick(&up) else { return };
                let held: Vec<i32> = self.instances[i].owned.keys().copied().collect();
                let Some(p) = self.pick(&held) else { return };
                let max = self.rng.random_range(1..=8);
                self.consume(i, p, max);
            }
            440..680 => {
                let Some(i) = self.pick(&up) else { return };
                let held: Vec<i32> = self.instances[i].owned.keys().copied().collect();
                if let Some(p) = self.pick(&held) {
                    self.checkpoint(i, p);
                }
            }
            680..740 => {
                if !self.in_flight.is_empty() {
                    let k = self.rng.random_range(0..self.in_flight.len());
                    self.resume(k);
                }
            }
            740..755 => {
                let Some(i) = self.pick(&up) else { return };
                self.counts.crashes += 1;
                self.trace(|| format!("i{i} crashes"));
                let instance = &mut self.instances[i];
                instance.up = false;
                instance.owned.clear();
                // Its claims and checkpoints in flight die with it (a checkpoint's store commit may be done).
                self.in_flight.retain(|op| op.instance != i);
            }
            755..790 => {
                let down: Vec<usize> = (0..self.instances.len()).filter(|i| !self.instances[*i].up).collect();
                if let Some(i) = self.pick(&down) {
                    self.trace(|| format!("i{i} restarts"));
                    self.instances[i].up = true;
                }
            }
            790..830 => {
                // A partition moves (a member joined or left): gracefully, or behind its owner's back.
                let p = self.rng.random_range(0..self.partitions);
                let from = self.lease[&p];
                let others: Vec<usize> = up.iter().copied().filter(|i| *i != from).collect();
                let Some(to) = self.pick(&others) else { return };
                self.counts.moves += 1;
                let graceful = self.rng.random_bool(0.5);
                self.trace(|| format!("p{p} moves i{from} -> i{to}, graceful: {graceful}"));
                if graceful && self.instances[from].up {
                    // The final checkpoint before the hand-over; the partition is released either way.
                    self.checkpoint(from, p);
                    self.instances[from].owned.remove(&p);
                }
                self.lease.insert(p, to);
            }
            830..940 => {
                self.expire_leases();
                let Some(i) = self.pick(&up) else { return };
                let notices = self.rng.random_bool(0.5);
                self.heartbeat(i, notices);
            }
            940..965 => {
                self.counts.store_faults += 1;
                let fault = if self.rng.random_bool(0.6) { StoreFault::Fail } else { StoreFault::LostReply };
                self.trace(|| format!("next store transaction: {fault:?}"));
                self.store.inject(Some(fault));
            }
            _ => {
                self.counts.log_faults += 1;
                let fault = match self.rng.random_range(0..10) {
                    0..4 => LogFault::Abort,
                    4..6 => LogFault::LostCommit,
                    _ => LogFault::Stall,
                };
                self.trace(|| format!("next log transaction: {fault:?}"));
                self.log.inject(Some(fault));
            }
        }
    }

    /// No more faults; every instance up; every stalled operation finished;
    /// every partition claimed by its lease holder, consumed to the end and
    /// checkpointed until nothing is left to do.
    fn quiesce(&mut self) -> Result<(), String> {
        self.trace(|| "quiesce".to_owned());
        self.store.inject(None);
        self.log.inject(None);
        self.append(usize::MAX);
        for i in 0..self.instances.len() {
            self.instances[i].up = true;
        }
        for _ in 0..20 {
            self.busy = false;
            while !self.in_flight.is_empty() {
                self.resume(0);
            }
            for i in 0..self.instances.len() {
                self.heartbeat(i, true);
            }
            for p in 0..self.partitions {
                let i = self.lease[&p];
                if !self.instances[i].owned.contains_key(&p) {
                    self.busy = true; // its claim failed or stalled: the next round finishes it
                    continue;
                }
                if self.instances[i].owned[&p].position.next_offset < self.log.events_end(p) {
                    self.busy = true;
                    self.consume(i, p, usize::MAX);
                }
                // A fenced zombie copy (the lease came back to an instance still holding an
                // old epoch) is dropped by its failed checkpoint and claimed at the next heartbeat.
                self.checkpoint(i, p);
            }
            if !self.busy && self.in_flight.is_empty() {
                return Ok(());
            }
        }
        Err("the run does not quiesce without faults".to_owned())
    }

    /// The read model against the exact fold, and each partition's newest progress record against its end.
    fn check(&self, events: &[(i32, W::Event)]) -> Result<(), String> {
        let expected = W::fold(events);
        let committed = self.log.committed_aggregates();
        let records = decode::<W>(&committed)?;
        // The log itself: a key's records never go back in input offset (compaction keeps the newest).
        let mut newest: BTreeMap<&str, i64> = BTreeMap::new();
        for (key, input_offset, _) in &records {
            if let Some(newest) = newest.insert(key, *input_offset).filter(|n| input_offset < n) {
                return Err(format!(
                    "{key}: a record of input offset {input_offset} was committed after one of {newest}"
                ));
            }
        }
        compare(&read_model::<W>(records), &expected, "read model")?;
        // Without transactions (a broker with no read_committed and no fencing): every record
        // sent, aborted or fenced ones included. The guard alone must still give the fold.
        let sent = self.log.sent_aggregates();
        compare(&read_model::<W>(decode::<W>(&sent)?), &expected, "read model without transactions")?;
        let mut progress: BTreeMap<i32, i64> = BTreeMap::new();
        for r in committed.iter().filter(|r| r.key.starts_with(PROGRESS_KEY_PREFIX)) {
            let p = decode_progress(&r.payload).map_err(|e| format!("progress {}: {e}", r.key))?;
            let newest = progress.entry(p.partition).or_default();
            *newest = (*newest).max(p.next_offset);
        }
        for p in 0..self.partitions {
            let end = self.log.events_end(p);
            if end > 0 && progress.get(&p) != Some(&end) {
                return Err(format!("p{p}: newest progress {:?}, end of log {end}", progress.get(&p)));
            }
        }
        Ok(())
    }
}

/// An aggregates record as the read model sees it: key, input offset, value.
type Aggregate<'a, V> = (&'a str, i64, V);

/// The aggregates among `records` (progress records left out).
fn decode<W: Simulated>(records: &[Emit]) -> Result<Vec<Aggregate<'_, W::Value>>, String> {
    records
        .iter()
        .filter(|r| !r.key.starts_with(PROGRESS_KEY_PREFIX))
        .map(|r| W::read(r).map(|(offset, value)| (r.key.as_str(), offset, value)))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("an undecodable aggregate: {e}"))
}

/// What the materializer's guard keeps of `records`: per key, the value of
/// the record with the highest input offset (a record replaces the held one
/// only if strictly newer).
fn read_model<W: Simulated>(records: Vec<Aggregate<'_, W::Value>>) -> BTreeMap<String, W::Value> {
    let mut model: BTreeMap<String, (i64, W::Value)> = BTreeMap::new();
    for (key, input_offset, value) in records {
        if model.get(key).is_none_or(|(offset, _)| input_offset > *offset) {
            model.insert(key.to_owned(), (input_offset, value));
        }
    }
    model.into_iter().map(|(k, (_, v))| (k, v)).collect()
}

/// Fails with the keys where `model` and `expected` differ.
fn compare<V: std::fmt::Debug + PartialEq>(
    model: &BTreeMap<String, V>,
    expected: &BTreeMap<String, V>,
    what: &str,
) -> Result<(), String> {
    if model == expected {
        return Ok(());
    }
    let keys: std::collections::BTreeSet<&String> = model.keys().chain(expected.keys()).collect();
    let diff: Vec<String> = keys
        .into_iter()
        .filter(|k| model.get(*k) != expected.get(*k))
        .map(|k| format!("{k}: {what} {:?}, expected {:?}", model.get(k), expected.get(k)))
        .collect();
    Err(format!("{what} differs from the fold of the events:\n    {}", diff.join("\n    ")))
}

/// One run: the seed's steps, then quiesce and check.
///
/// # Errors
/// What the run found wrong (the seed reproduces it).
pub fn run_seed<W: Simulated>(seed: u64, verbose: bool) -> Result<Counts, String> {
    let mut sim = Sim::<W>::new(seed, verbose);
    let events: Vec<(i32, W::Event)> = sim.pending.iter().cloned().collect();
    if verbose {
        eprintln!(
            "{} seed {seed}: {} partitions, {} instances, {} events",
            W::NAME,
            sim.partitions,
            sim.instances.len(),
            events.len()
        );
    }
    for _ in 0..STEPS {
        sim.step();
    }
    sim.quiesce()?;
    sim.check(&events)?;
    Ok(sim.counts)
}

/// Runs `seed`, turning a panic (an engine assertion) into a failure.
fn run_caught<W: Simulated>(seed: u64, verbose: bool) -> Result<Counts, String> {
    std::panic::catch_unwind(AssertUnwindSafe(|| run_seed::<W>(seed, verbose)))
        .unwrap_or_else(|panic| Err(format!("panicked: {panic:?}")))
}

/// The seeds among `seeds` that fail with `bug` planted, run on a few threads.
/// The seeds among `seeds` that fail with `bug` planted, and what the passing ones did in all.
fn failing_seeds<W: Simulated>(seeds: std::ops::Range<u64>, bug: Option<Planted>) -> (Vec<(u64, String)>, Counts) {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 4) as u64;
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let seeds = seeds.clone();
                s.spawn(move || {
                    plant(bug);
                    let (mut failed, mut total) = (Vec::new(), Counts::default());
                    for seed in seeds.filter(|seed| seed % threads == t) {
                        match run_caught::<W>(seed, false) {
                            Ok(counts) => total.add(counts),
                            Err(e) => failed.push((seed, e)),
                        }
                    }
                    plant(None);
                    (failed, total)
                })
            })
            .collect();
        let (mut failed, mut total) = (Vec::new(), Counts::default());
        for w in workers {
            let (f, t) = w.join().expect("a worker does not panic");
            failed.extend(f);
            total.add(t);
        }
        failed.sort_by_key(|(seed, _)| *seed);
        (failed, total)
    })
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}")))
}

/// Every bug the simulation must catch ([`Planted`]).
pub const BUGS: [Planted; 7] = [
    Planted::NoCheckpointFence,
    Planted::NoEmitFence,
    Planted::ResendDropsKept,
    Planted::ResendIgnoresOutbox,
    Planted::IdsNotRestored,
    Planted::OutboxSkipped,
    Planted::PositionBeforeState,
];

/// The first seed (of at most `max`) that fails with `bug` planted, on this thread.
pub fn first_failure<W: Simulated>(bug: Planted, max: u64) -> Option<(u64, String)> {
    plant(Some(bug));
    let found = (0..max).find_map(|seed| run_caught::<W>(seed, false).err().map(|e| (seed, e)));
    plant(None);
    found
}

/// Plants each of `bugs` in turn and panics unless some seed of 1,000 fails with it.
pub fn catches<W: Simulated>(bugs: &[Planted]) {
    for bug in bugs {
        let found = first_failure::<W>(*bug, 1000);
        assert!(found.is_some(), "{bug:?} planted: no {} seed of 1000 failed", W::NAME);
    }
}

/// How many of `SIM_SEEDS` (1,000) seeds catch each planted bug (docs/architecture.md).
pub fn catch_rates<W: Simulated>() {
    let seeds = env_u64("SIM_SEEDS").unwrap_or(1000);
    for bug in BUGS {
        let failed = failing_seeds::<W>(0..seeds, Some(bug)).0;
        let first = failed.first().map(|(seed, e)| format!("first seed {seed}: {}", e.lines().next().unwrap_or("")));
        eprintln!("{bug:?} {}: {} of {seeds} seeds fail; {}", W::NAME, failed.len(), first.unwrap_or_default());
    }
}

/// The simulation of a workload, as a test runs it: `SIM_SEED` alone
/// (printing its steps), or seeds 0..`SIM_SEEDS` (1000) on the available
/// cores; panics naming the first failing seed and how to replay it.
pub fn simulate<W: Simulated>() {
    if let Some(seed) = env_u64("SIM_SEED") {
        match run_seed::<W>(seed, true) {
            Ok(counts) => eprintln!("{} seed {seed} passed: {counts:?}", W::NAME),
            Err(e) => panic!("{} seed {seed} failed: {e}", W::NAME),
        }
        return;
    }
    let seeds = env_u64("SIM_SEEDS").unwrap_or(1000);
    let started = std::time::Instant::now();
    let (failed, total) = failing_seeds::<W>(0..seeds, None);
    eprintln!("{}: {seeds} seeds in {:.1} s; in all: {total:?}", W::NAME, started.elapsed().as_secs_f64());
    if let Some((seed, error)) = failed.first() {
        panic!(
            "{} of {seeds} {} seeds failed; the first, seed {seed}: {error}\nreproduce: SIM_SEED={seed} cargo test -p {} --lib sim -- --nocapture",
            failed.len(),
            W::NAME,
            W::NAME,
        );
    }
}
