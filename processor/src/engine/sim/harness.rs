//! The engine's deterministic simulation (docs/architecture.md,
//! "Deterministic simulation").
//!
//! One seed draws a run of one workload ([`Simulated`]: analytics or
//! increments): 1–3 events partitions, 2–3 processor instances, a stream of
//! events (late ones, retries of the same client id). Each instance is a
//! real [`Processor`] — the production loop, `run` to `leave` — over
//! [`SimIo`]: the in-memory store and log, and a consumer, a lease group
//! and timers the harness controls. Its loop is a future the harness polls
//! (no runtime, no threads, a no-op waker) until it waits again; it only
//! ever waits for the harness: a timer, a record, a heartbeat, a stalled
//! transaction.
//!
//! Then a few hundred steps, each chosen by the seeded generator: the
//! command appends events; an instance's consumer delivers some records of
//! a partition it is assigned (sometimes again from a few records back); its
//! checkpoint or heartbeat timer fires (a heartbeat may fail: the instance
//! keeps what it holds); an instance crashes (its future dropped: memory and
//! transactions in flight gone) or is stopped (final checkpoint, leave), or
//! restarts; a partition moves to another instance, handed over at its
//! holder's next heartbeat or taken behind its back (the former holder goes
//! on as a zombie until a heartbeat or a fence stops it); a stalled
//! transaction goes on; the next store or log transaction fails (before
//! commit, after it with the reply lost) or stalls (a checkpoint's store
//! commit, a log transaction: pending until a later step lets it go on). Then the run quiesces
//! (no faults, every instance up, rounds of heartbeats, deliveries and
//! checkpoints until nothing is written) and the read model — per aggregate
//! key, the committed record with the highest input offset, the
//! materializer's guard — must equal the exact fold of the acknowledged
//! events (each client id once).
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
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use common::engine::config::KafkaConfig;
use common::engine::progress::{decode_progress, PROGRESS_KEY_PREFIX};
use common::engine::shutdown::CancellationToken;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::io::{Control, Leases, SimClock, SimIo, SimMembers, SimSource};
use super::{LogFault, MemLog, MemStore, StoreFault};
use crate::engine::emitter::AggregateEmitter;
use crate::engine::io::Timer;
use crate::engine::partition::bound_pending;
use crate::engine::plant;
use crate::engine::{Aggregation, Emit, Parts, Planted, Processor, ProcessorError, ProcessorSettings};

pub const HOUR_MS: i64 = 3_600_000;
/// The start of the hour the simulated broker clock starts in.
pub const H0: i64 = 1_900_000_000_000 / HOUR_MS * HOUR_MS;
/// Hours close, and ids are forgotten, 30 minutes after their hour's end, on the partition's watermark.
pub const RETENTION_MS: i64 = 30 * 60_000;

/// A workload's event clock for [`Simulated::generate`]: acceptance times
/// from a random point of the first hour ([`H0`]), forward by up to 8 minutes
/// each (a run spans a few hours, which close).
pub fn clock(rng: &mut StdRng) -> impl FnMut(&mut StdRng) -> i64 {
    let mut now = H0 + rng.random_range(0..HOUR_MS);
    move |rng| {
        now += rng.random_range(0..8 * 60_000);
        now
    }
}
/// The commands of a decided-write workload's run ([`Simulated::generate`]):
/// 30 to 150 of them, each a new request (a random id); 20 % are retries (a
/// new request, the same id and write) of one of the last 10 commands that
/// have an id, while the first attempt is at most 25 minutes old (inside the
/// ids' retention, so a retry answers the first decision), counted in
/// `retries`; the others are `fresh(rng, i, request, now)`. `retry(first,
/// request, now)` is that command again as a new request; a request's id is
/// 128 random bits (a UUID's).
pub fn decided_commands<C>(
    rng: &mut StdRng,
    retries: &mut u32,
    mut fresh: impl FnMut(&mut StdRng, usize, u128, i64) -> C,
    retry: impl Fn(&C, u128, i64) -> C,
    has_id: impl Fn(&C) -> bool,
) -> Vec<C> {
    let n = rng.random_range(30..150);
    let mut now = clock(rng);
    let mut commands: Vec<C> = Vec::with_capacity(n);
    let mut first_ms: Vec<i64> = Vec::with_capacity(n);
    for i in 0..n {
        let now = now(rng);
        let request: u128 = rng.random();
        let recent: Vec<usize> = (0..commands.len())
            .rev()
            .take(10)
            .filter(|k| has_id(&commands[*k]) && now - first_ms[*k] <= 25 * 60_000)
            .collect();
        let command = if !recent.is_empty() && rng.random_bool(0.2) {
            *retries += 1;
            let k = recent[rng.random_range(0..recent.len())];
            first_ms.push(first_ms[k]);
            retry(&commands[k], request, now)
        } else {
            first_ms.push(now);
            fresh(rng, i, request, now)
        };
        commands.push(command);
    }
    commands
}

const TOPIC: &str = "events";
/// Random steps before the run quiesces.
const STEPS: usize = 300;

/// A workload as the simulation drives it: what the command appends, and
/// what the read model must hold once the run quiesces.
pub trait Simulated: Aggregation<Event: Clone + std::fmt::Debug> + Clone {
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

    /// For a workload that replies ([`Aggregation::replies`]): checks the
    /// reply of each request (by its key) against the sequential model of
    /// `events`. The harness has already checked that every publication of
    /// one request's reply (a replay's, a zombie's) is the same bytes.
    fn check_replies(events: &[(i32, Self::Event)], replies: &BTreeMap<String, Vec<u8>>) -> Result<(), String> {
        let _ = events;
        match replies.is_empty() {
            true => Ok(()),
            false => Err(format!("{} replies from a workload whose simulation does not check them", replies.len())),
        }
    }
}

/// The loop's checkpoint interval (each checkpoint tick moves an instance's clock by it).
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(50);

/// One processor instance: a real [`Processor`] over [`SimIo`], its loop a
/// future the harness polls, and what the harness controls of it.
struct Instance {
    control: Arc<Control>,
    token: CancellationToken,
    /// The processor's `run`, until it crashes (dropped) or stops; `None`: down.
    run: Option<Running>,
}

/// A processor's `run`, as the harness polls it.
type Running = Pin<Box<dyn Future<Output = Result<(), ProcessorError>>>>;

/// What a run (or the sum of runs) did, for the summaries.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub crashes: u32,
    pub stops: u32,
    pub moves: u32,
    pub zombie_fences: u32,
    pub store_faults: u32,
    pub log_faults: u32,
    pub claims: u32,
    pub checkpoints: u32,
    /// Log transactions stalled.
    pub stalls: u32,
    /// Checkpoint commits stalled in the store.
    pub store_stalls: u32,
    pub redeliveries: u32,
    pub failed_heartbeats: u32,
    pub retries: u32,
}

impl Counts {
    fn add(&mut self, o: Counts) {
        self.crashes += o.crashes;
        self.stops += o.stops;
        self.moves += o.moves;
        self.zombie_fences += o.zombie_fences;
        self.store_faults += o.store_faults;
        self.log_faults += o.log_faults;
        self.claims += o.claims;
        self.checkpoints += o.checkpoints;
        self.stalls += o.stalls;
        self.store_stalls += o.store_stalls;
        self.redeliveries += o.redeliveries;
        self.failed_heartbeats += o.failed_heartbeats;
        self.retries += o.retries;
    }
}

struct Sim<W: Simulated> {
    rng: StdRng,
    log: MemLog,
    store: MemStore,
    partitions: i32,
    instances: Vec<Instance>,
    /// Each partition's lease: the instance it is meant for, and its holder.
    leases: Arc<Mutex<Leases>>,
    /// The run's start on every instance's clock.
    start: Instant,
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
        let leases = Leases {
            meant: (0..partitions).map(|p| (p, p as usize % n)).collect(),
            holder: (0..partitions).map(|p| (p, None)).collect(),
        };
        let instances =
            (0..n).map(|_| Instance { control: Arc::default(), token: CancellationToken::new(), run: None }).collect();
        let mut sim = Sim {
            rng,
            log,
            store: MemStore::new(TOPIC),
            partitions,
            instances,
            leases: Arc::new(Mutex::new(leases)),
            start: Instant::now(),
            pending,
            counts,
            verbose,
        };
        for i in 0..n {
            sim.start(i);
        }
        sim
    }

    fn trace(&self, what: impl FnOnce() -> String) {
        if self.verbose {
            eprintln!("  {}", what());
        }
    }

    fn is_up(&self, i: usize) -> bool {
        self.instances[i].run.is_some()
    }

    fn up_instances(&self) -> Vec<usize> {
        (0..self.instances.len()).filter(|i| self.is_up(*i)).collect()
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> Option<T> {
        (!from.is_empty()).then(|| from[self.rng.random_range(0..from.len())])
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, Leases> {
        self.leases.lock().expect("no panic while the leases are held")
    }

    /// Starts instance `i`: a new processor (nothing of a former one's memory), its loop not yet polled.
    fn start(&mut self, i: usize) {
        let control = Arc::new(Control::default());
        let settings = ProcessorSettings {
            kafka: KafkaConfig::new("sim", false),
            events_topic: TOPIC.to_owned(),
            aggregates_topic: "aggregates".to_owned(),
            replies_topic: None,
            aggregates_partitions: 1,
            group_id: "sim".to_owned(),
            checkpoint_interval: CHECKPOINT_INTERVAL,
            emit_bytes_per_sec: 0,
            delivery_timeout: Duration::from_secs(10),
            replies_linger: Duration::from_millis(1),
            retention_ms: RETENTION_MS,
            partitions: self.partitions,
        };
        let parts = Parts::<SimIo> {
            source: SimSource::new(self.log.clone(), control.clone()),
            members: SimMembers::new(i, self.leases.clone(), control.clone()),
            store: self.store.clone(),
            emitter: AggregateEmitter::over(self.log.clone(), TOPIC, 1),
            clock: SimClock::new(control.clone(), self.start),
        };
        let processor = Processor::<W, SimIo>::assemble(W::get().clone(), &settings, parts);
        let token = CancellationToken::new();
        self.instances[i] = Instance { control, token: token.clone(), run: Some(Box::pin(processor.run(token))) };
    }

    /// Runs instance `i`'s loop until it waits (for a timer, a record, a
    /// stalled transaction) or ends.
    ///
    /// # Errors
    /// When the loop fails: nothing the simulation does may fail it.
    fn poll(&mut self, i: usize) -> Result<(), String> {
        let Some(run) = self.instances[i].run.as_mut() else { return Ok(()) };
        match run.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Pending => Ok(()),
            Poll::Ready(Ok(())) => {
                self.trace(|| format!("i{i} stopped"));
                self.instances[i].run = None;
                Ok(())
            }
            Poll::Ready(Err(e)) => Err(format!("i{i}: the processor's loop failed: {e}")),
        }
    }

    fn poll_all(&mut self) -> Result<(), String> {
        (0..self.instances.len()).try_for_each(|i| self.poll(i))
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

    /// Instance `i`'s consumer delivers up to `max` records of `partition`, and its loop runs.
    fn deliver(&mut self, i: usize, partition: i32, max: usize) -> Result<(), String> {
        let control = self.instances[i].control.clone();
        let from = control.assigned().get(&partition).copied();
        control.deliver(Some((partition, max)));
        let polled = self.poll(i);
        control.deliver(None);
        let to = control.assigned().get(&partition).copied();
        self.trace(|| format!("i{i} consumes p{partition}: {from:?} -> {to:?}"));
        polled
    }

    /// One of instance `i`'s timers fires, and its loop runs.
    fn fire(&mut self, i: usize, timer: Timer) -> Result<(), String> {
        let period = match timer {
            Timer::Checkpoint => CHECKPOINT_INTERVAL,
            Timer::Heartbeat => Duration::from_secs(1),
            Timer::Gauges => Duration::ZERO,
        };
        self.trace(|| format!("i{i}: {timer:?} timer"));
        self.instances[i].control.fire(timer, period);
        let before = self.store.counts();
        let polled = self.poll(i);
        let after = self.store.counts();
        if after != before {
            self.trace(|| format!("  claims, checkpoints, fenced: {before:?} -> {after:?}"));
        }
        polled
    }

    /// Leases not renewed expire: those of instances that are down, and
    /// those their holder neither consumes nor is meant to (a heartbeat
    /// renews only those); a live instance is meant to take a down one's.
    fn expire_leases(&mut self) {
        let up = self.up_instances();
        for p in 0..self.partitions {
            let (meant, holder) = {
                let leases = self.leases();
                (leases.meant[&p], leases.holder[&p])
            };
            let renewed =
                |h: usize| self.is_up(h) && (h == meant || self.instances[h].control.assigned().contains_key(&p));
            if holder.is_some_and(|h| !renewed(h)) {
                self.leases().holder.insert(p, None);
            }
            if !self.is_up(meant) {
                if let Some(to) = self.pick(&up) {
                    self.leases().meant.insert(p, to);
                }
            }
        }
    }

    fn step(&mut self) -> Result<(), String> {
        let up = self.up_instances();
        match self.rng.random_range(0..1000) {
            0..170 => {
                let n = self.rng.random_range(1..=4);
                self.append(n);
            }
            170..440 => {
                let Some(i) = self.pick(&up) else { return Ok(()) };
                let assigned: Vec<i32> = self.instances[i].control.assigned().into_keys().collect();
                let Some(p) = self.pick(&assigned) else { return Ok(()) };
                if self.rng.random_bool(0.1) {
                    // The consumer fetches again records it delivered (a re-fetch after a reconnect).
                    let back = self.rng.random_range(1..=3);
                    self.counts.redeliveries += 1;
                    self.trace(|| format!("i{i}: p{p} delivered again from {back} back"));
                    self.instances[i].control.rewind(p, back);
                }
                let max = self.rng.random_range(1..=8);
                self.deliver(i, p, max)?;
            }
            440..680 => {
                let Some(i) = self.pick(&up) else { return Ok(()) };
                if self.rng.random_bool(0.1) {
                    self.instances[i].control.fire(Timer::Gauges, Duration::ZERO);
                }
                self.fire(i, Timer::Checkpoint)?;
            }
            680..740 => {
                let stalled = self.stalled();
                if stalled > 0 {
                    let k = self.rng.random_range(0..stalled);
                    self.release_stalled(k);
                    self.poll_all()?;
                }
            }
            740..755 => {
                let Some(i) = self.pick(&up) else { return Ok(()) };
                if self.rng.random_bool(0.2) {
                    // Stopped: a final checkpoint and leave (or later, if the checkpoint stalls).
                    self.counts.stops += 1;
                    self.trace(|| format!("i{i} is stopped"));
                    self.instances[i].token.cancel();
                    self.poll(i)?;
                } else {
                    // Its memory and its transactions in flight are gone (a checkpoint's store
                    // commit may be done, its emit not).
                    self.counts.crashes += 1;
                    self.trace(|| format!("i{i} crashes"));
                    self.instances[i].run = None;
                }
            }
            755..790 => {
                let down: Vec<usize> = (0..self.instances.len()).filter(|i| !self.is_up(*i)).collect();
                if let Some(i) = self.pick(&down) {
                    self.trace(|| format!("i{i} restarts"));
                    self.start(i);
                    self.poll(i)?;
                }
            }
            790..830 => {
                // A partition moves (a member joined or left): handed over at its holder's
                // next heartbeat, or taken behind its back (its lease expired: the holder
                // goes on as a zombie until its heartbeat or a fence stops it).
                let p = self.rng.random_range(0..self.partitions);
                let from = self.leases().meant[&p];
                let others: Vec<usize> = up.iter().copied().filter(|i| *i != from).collect();
                let Some(to) = self.pick(&others) else { return Ok(()) };
                self.counts.moves += 1;
                let graceful = self.rng.random_bool(0.5);
                self.trace(|| format!("p{p} moves i{from} -> i{to}, graceful: {graceful}"));
                let mut leases = self.leases();
                leases.meant.insert(p, to);
                if !graceful {
                    // Its lease expired: free for the instance meant to take it.
                    leases.holder.insert(p, None);
                }
            }
            830..940 => {
                self.expire_leases();
                let Some(i) = self.pick(&up) else { return Ok(()) };
                // A heartbeat that does not get through: the instance keeps what it holds.
                let fails = self.rng.random_bool(0.3);
                if fails {
                    self.counts.failed_heartbeats += 1;
                }
                self.instances[i].control.set_heartbeat_fails(fails);
                self.fire(i, Timer::Heartbeat)?;
            }
            940..965 => {
                self.counts.store_faults += 1;
                let fault = match self.rng.random_range(0..10) {
                    0..4 => StoreFault::Fail,
                    4..7 => StoreFault::LostReply,
                    _ => StoreFault::Stall,
                };
                if fault == StoreFault::Stall {
                    self.counts.store_stalls += 1;
                }
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
                if fault == LogFault::Stall {
                    self.counts.stalls += 1;
                }
                self.trace(|| format!("next log transaction: {fault:?}"));
                self.log.inject(Some(fault));
            }
        }
        Ok(())
    }

    /// What changes when anything is written: the store's version, the log's transactions.
    fn fingerprint(&self) -> (u64, (u64, u64), u64) {
        (self.store.version(), self.log.transactions(), self.log.fenced())
    }

    /// Every partition is held by the instance it is meant for, whose consumer is at its end.
    fn settled(&self) -> bool {
        let leases = self.leases();
        (0..self.partitions).all(|p| {
            let meant = leases.meant[&p];
            leases.holder[&p] == Some(meant)
                && self.instances[meant].control.assigned().get(&p) == Some(&self.log.events_end(p))
        })
    }

    /// Log transactions and store commits stalled, in all.
    fn stalled(&self) -> usize {
        self.log.stalled() + self.store.stalled()
    }

    /// Lets the `k`-th stalled operation go on: the log's transactions, then the store's commits.
    fn release_stalled(&mut self, k: usize) {
        let in_log = self.log.stalled();
        if k < in_log {
            self.trace(|| format!("stalled log transaction {k} of {in_log} goes on"));
            self.log.release_stalled(k);
        } else {
            let (k, in_store) = (k - in_log, self.store.stalled());
            self.trace(|| format!("stalled store commit {k} of {in_store} goes on"));
            self.store.release_stalled(k);
        }
    }

    /// No more faults; every instance up; every stalled transaction finished;
    /// then rounds of heartbeats, deliveries to the end and checkpoints on
    /// every instance until a whole round writes nothing and every partition
    /// is held by its lease's instance, consumed to the end.
    fn quiesce(&mut self) -> Result<(), String> {
        self.trace(|| "quiesce".to_owned());
        self.store.inject(None);
        self.log.inject(None);
        self.append(usize::MAX);
        for _ in 0..20 {
            let before = self.fingerprint();
            while self.stalled() > 0 {
                self.release_stalled(0);
                self.poll_all()?;
            }
            for i in 0..self.instances.len() {
                if !self.is_up(i) {
                    self.start(i);
                    self.poll(i)?;
                }
                self.instances[i].control.set_heartbeat_fails(false);
            }
            self.expire_leases();
            for i in 0..self.instances.len() {
                self.fire(i, Timer::Heartbeat)?;
            }
            for i in 0..self.instances.len() {
                for p in self.instances[i].control.assigned().into_keys().collect::<Vec<_>>() {
                    self.deliver(i, p, usize::MAX)?;
                }
            }
            for i in 0..self.instances.len() {
                self.fire(i, Timer::Checkpoint)?;
            }
            if self.fingerprint() == before && self.stalled() == 0 && self.settled() {
                return Ok(());
            }
        }
        let assigned: Vec<_> = self.instances.iter().map(|i| i.control.assigned()).collect();
        let ends: Vec<i64> = (0..self.partitions).map(|p| self.log.events_end(p)).collect();
        Err(format!(
            "the run does not quiesce without faults: {:?}, consumers at {assigned:?}, ends {ends:?}",
            self.leases()
        ))
    }

    /// What the store and the log counted.
    fn count_io(&mut self) {
        let (claims, checkpoints, fenced) = self.store.counts();
        self.counts.claims = claims as u32;
        self.counts.checkpoints = checkpoints as u32;
        self.counts.zombie_fences = (fenced + self.log.fenced()) as u32;
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
        // A decision is a function of the log prefix: every publication of a reply is the same.
        let mut replies: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for r in self.log.replies() {
            match replies.get(&r.key) {
                Some(first) if *first != r.payload => {
                    return Err(format!("request {}: a replay replied differently from the first decision", r.key))
                }
                Some(_) => {}
                None => {
                    replies.insert(r.key, r.payload);
                }
            }
        }
        W::check_replies(events, &replies)?;
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
    if verbose {
        // The loop's own log lines, between the harness's steps.
        let log = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .finish();
        return tracing::subscriber::with_default(log, || run_seed_quietly::<W>(seed, true));
    }
    run_seed_quietly::<W>(seed, false)
}

/// The bound of pending records a seed's partitions run with: half the
/// seeds keep the engine's (50,000: never reached in a run), half draw one
/// of 2–32 records, so that checkpoints start at half of it and partitions
/// stop reading at it ([`bound_pending`]). Drawn from a generator of its own:
/// the seed's steps are those it drew before bounds were.
fn pending_bound(seed: u64) -> Option<usize> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_b0d5);
    rng.random_bool(0.5).then(|| rng.random_range(2..=32))
}

fn run_seed_quietly<W: Simulated>(seed: u64, verbose: bool) -> Result<Counts, String> {
    let bound = pending_bound(seed);
    bound_pending(bound);
    let mut sim = Sim::<W>::new(seed, verbose);
    let events: Vec<(i32, W::Event)> = sim.pending.iter().cloned().collect();
    if verbose {
        eprintln!(
            "{} seed {seed}: {} partitions, {} instances, {} events, pending records bound {}",
            W::NAME,
            sim.partitions,
            sim.instances.len(),
            events.len(),
            bound.map_or_else(|| "50,000".to_owned(), |b| b.to_string()),
        );
    }
    for _ in 0..STEPS {
        sim.step()?;
    }
    sim.quiesce()?;
    sim.check(&events)?;
    sim.count_io();
    Ok(sim.counts)
}

/// Runs `seed`, turning a panic (an engine assertion) into a failure.
fn run_caught<W: Simulated>(seed: u64, verbose: bool) -> Result<Counts, String> {
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| run_seed::<W>(seed, verbose)))
        .unwrap_or_else(|panic| Err(format!("panicked: {panic:?}")));
    bound_pending(None);
    result
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
pub const BUGS: [Planted; 9] = [
    Planted::NoCheckpointFence,
    Planted::NoEmitFence,
    Planted::ResendDropsKept,
    Planted::ResendIgnoresOutbox,
    Planted::IdsNotRestored,
    Planted::OutboxSkipped,
    Planted::PositionBeforeState,
    Planted::CommittedClearsLaterChanges,
    Planted::EmitBeforeStored,
];

/// The planted bugs a decided-write workload (one that replies, and whose
/// changes are decided from the log alone) can be caught by: all but a
/// zombie's emits landing ([`Planted::NoEmitFence`]: a change and its record
/// key are functions of the log alone, so a former owner's copy is the same
/// bytes under the same key as the new owner's, and changes nothing a reader
/// sees), the engine's ids not restored ([`Planted::IdsNotRestored`]: such a
/// workload gives the engine no ids, its own are in its rows) and a log
/// transaction committed before its store ([`Planted::EmitBeforeStored`]: the
/// next owner decides the same commands again into the same records).
pub fn decided_write_bugs() -> Vec<Planted> {
    BUGS.into_iter()
        .filter(|b| !matches!(b, Planted::NoEmitFence | Planted::IdsNotRestored | Planted::EmitBeforeStored))
        .collect()
}

/// For [`Simulated::check_replies`]: one reply per request of `expected`
/// (the sequential model's decisions, by request key), each decoded by
/// `decode` and `agrees` with its decision.
///
/// # Errors
/// The first request whose reply is missing, unreadable or another decision.
pub fn replies_as_modelled<M: std::fmt::Debug, R: std::fmt::Debug, E: std::fmt::Display>(
    expected: &BTreeMap<String, M>,
    replies: &BTreeMap<String, Vec<u8>>,
    decode: impl Fn(&[u8]) -> Result<R, E>,
    agrees: impl Fn(&str, &R, &M) -> bool,
) -> Result<(), String> {
    if replies.len() != expected.len() {
        return Err(format!("{} replies for {} commands", replies.len(), expected.len()));
    }
    for (request, want) in expected {
        let payload = replies.get(request).ok_or_else(|| format!("request {request}: no reply"))?;
        let got = decode(payload).map_err(|e| format!("request {request}: {e}"))?;
        if !agrees(request, &got, want) {
            return Err(format!("request {request}: replied {got:?}, the sequential model decides {want:?}"));
        }
    }
    Ok(())
}

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

/// How many of `SIM_SEEDS` (1,000) seeds catch each planted bug
/// (docs/architecture.md); `SIM_BUG=<name>` measures only that one.
pub fn catch_rates<W: Simulated>() {
    let seeds = env_u64("SIM_SEEDS").unwrap_or(1000);
    let only = std::env::var("SIM_BUG").ok();
    for bug in BUGS.into_iter().filter(|bug| only.as_ref().is_none_or(|name| *name == format!("{bug:?}"))) {
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
