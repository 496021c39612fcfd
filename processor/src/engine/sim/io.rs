//! The loop's I/O in memory ([`SimIo`]): the events topic as a consumer
//! sees it ([`SimSource`]), the lease group ([`SimMembers`]) and the timers
//! ([`SimClock`]), each instance's controlled by the harness through its
//! [`Control`]: a timer fires, records arrive, a heartbeat answers only when
//! the harness says so. Nothing waits on anything else, so the harness
//! polls a real `Processor`'s loop with a no-op waker until it is pending.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use common::engine::kafka::PositionOutsideLog;
use common::engine::membership::Plan;
use common::engine::pg::PgError;
use rdkafka::error::KafkaError;

use super::{LogRecord, MemLog, MemStore};
use crate::engine::io::{Clock, Io, Members, Source, SourceMessage, Task, Ticker, Timer};
use crate::engine::partition::FetchedRecord;

/// The simulation's I/O: memory, driven by the harness.
pub struct SimIo;

impl Io for SimIo {
    type Source = SimSource;
    type Members = SimMembers;
    type Store = MemStore;
    type Log = MemLog;
    type Clock = SimClock;
}

#[derive(Debug, Default)]
struct ControlState {
    /// Timers due: each fires once when the loop next polls it.
    due: [bool; 3],
    /// Records the source may deliver now: of this partition, this many.
    deliver: Option<(i32, usize)>,
    /// The next heartbeats fail (PostgreSQL unreachable: the instance keeps what it holds).
    heartbeat_fails: bool,
    /// Milliseconds since the run began, on this instance's clock.
    now_ms: u64,
    /// The consumer's assignment: each partition's next offset to deliver.
    assigned: BTreeMap<i32, i64>,
    /// Partitions stopped at an undecodable record.
    paused: BTreeSet<i32>,
}

/// What the harness controls of one instance, and sees of its consumer.
#[derive(Debug, Default)]
pub struct Control(Mutex<ControlState>);

fn slot(timer: Timer) -> usize {
    match timer {
        Timer::Checkpoint => 0,
        Timer::Heartbeat => 1,
        Timer::Gauges => 2,
    }
}

impl Control {
    fn lock(&self) -> std::sync::MutexGuard<'_, ControlState> {
        self.0.lock().expect("no panic while the control is held")
    }

    /// Makes `timer` due (and moves this instance's clock by `period`).
    pub fn fire(&self, timer: Timer, period: Duration) {
        let mut c = self.lock();
        c.due[slot(timer)] = true;
        c.now_ms += period.as_millis() as u64;
    }

    /// Lets the source deliver up to `max` records of `partition` (`None`: none).
    pub fn deliver(&self, what: Option<(i32, usize)>) {
        self.lock().deliver = what;
    }

    pub fn set_heartbeat_fails(&self, fails: bool) {
        self.lock().heartbeat_fails = fails;
    }

    /// The consumed partitions (not stopped) and the next offset of each.
    pub fn assigned(&self) -> BTreeMap<i32, i64> {
        let c = self.lock();
        c.assigned.iter().filter(|(p, _)| !c.paused.contains(p)).map(|(p, o)| (*p, *o)).collect()
    }

    /// The consumer delivers `partition` again from `back` records before its position (a re-fetch).
    pub fn rewind(&self, partition: i32, back: i64) {
        if let Some(next) = self.lock().assigned.get_mut(&partition) {
            *next = (*next - back).max(0);
        }
    }
}

/// A record as [`SimSource`] delivers it.
pub struct SimMessage {
    partition: i32,
    record: LogRecord,
}

impl SourceMessage for SimMessage {
    fn partition(&self) -> i32 {
        self.partition
    }

    fn fetched(&self) -> FetchedRecord<'_> {
        FetchedRecord {
            offset: self.record.offset,
            key: Some(&self.record.key),
            payload: Some(&self.record.payload),
            log_append_ms: Some(self.record.appended_ms),
        }
    }
}

/// The events topic of a [`MemLog`] as one instance's consumer sees it.
pub struct SimSource {
    log: MemLog,
    control: Arc<Control>,
}

impl SimSource {
    pub fn new(log: MemLog, control: Arc<Control>) -> Self {
        SimSource { log, control }
    }

    fn next(&self) -> Option<SimMessage> {
        let mut c = self.control.lock();
        let (partition, left) = c.deliver?;
        if left == 0 || c.paused.contains(&partition) {
            return None;
        }
        let next = c.assigned.get_mut(&partition)?;
        let record = self.log.read_events(partition, *next, 1).pop()?;
        *next += 1;
        c.deliver = Some((partition, left - 1));
        Some(SimMessage { partition, record })
    }
}

impl Source for SimSource {
    type Message<'a> = SimMessage;

    fn assign(&self, positions: Vec<(i32, i64)>) -> Result<(), KafkaError> {
        let mut c = self.control.lock();
        c.assigned = positions.into_iter().collect();
        c.paused.clear();
        Ok(())
    }

    fn recv(&self) -> impl Future<Output = Option<Result<SimMessage, KafkaError>>> + Send {
        futures::future::poll_fn(move |_| match self.next() {
            Some(message) => Poll::Ready(Some(Ok(message))),
            None => Poll::Pending,
        })
    }

    fn try_recv(&self) -> Option<Result<SimMessage, KafkaError>> {
        self.next().map(Ok)
    }

    fn stall(&self, partition: i32, _: i64, _: Option<String>) {
        self.control.lock().paused.insert(partition);
    }

    fn check_position(
        &self,
        partition: i32,
        stored: i64,
    ) -> impl Future<Output = Result<(), PositionOutsideLog>> + Send {
        let end = self.log.events_end(partition);
        let checked = if stored > end {
            Err(PositionOutsideLog::BeyondEnd { topic: "events".to_owned(), partition, stored, end })
        } else {
            Ok(())
        };
        std::future::ready(checked)
    }

    fn commit_hint(&self, _: &[(i32, i64)]) -> Result<(), KafkaError> {
        Ok(())
    }

    fn record_lag(&self, _: Vec<(i32, i64)>) {}
}

/// The leases of a run's partitions, shared by its instances' [`SimMembers`].
#[derive(Debug, Default)]
pub struct Leases {
    /// The instance each partition is meant for (the balance the group computes).
    pub meant: BTreeMap<i32, usize>,
    /// The instance holding each partition's lease, if any.
    pub holder: BTreeMap<i32, Option<usize>>,
}

/// One instance's membership of the group, over the shared [`Leases`].
pub struct SimMembers {
    me: usize,
    id: String,
    leases: Arc<Mutex<Leases>>,
    control: Arc<Control>,
}

impl SimMembers {
    pub fn new(me: usize, leases: Arc<Mutex<Leases>>, control: Arc<Control>) -> Self {
        SimMembers { me, id: format!("i{me}"), leases, control }
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, Leases> {
        self.leases.lock().expect("no panic while the leases are held")
    }
}

impl Members for SimMembers {
    fn member_id(&self) -> &str {
        &self.id
    }

    fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(1)
    }

    /// As `Membership::heartbeat`: what is meant for another goes back
    /// (after a final checkpoint), what is meant for me and free (or mine)
    /// is acquired, and what is meant for me but held by another is lost.
    fn changes(&self, owned: &BTreeSet<i32>) -> impl Future<Output = Option<Plan>> + Send {
        let plan = (!self.control.lock().heartbeat_fails).then(|| {
            let mut leases = self.leases();
            let me = Some(self.me);
            let mut plan = Plan::default();
            let partitions: Vec<i32> = leases.meant.keys().copied().collect();
            for p in partitions {
                let (meant, holder) = (leases.meant[&p], leases.holder.get(&p).copied().flatten());
                match (owned.contains(&p), meant == self.me) {
                    (true, false) => plan.to_release.push(p),
                    (true, true) if holder != me => plan.lost.push(p),
                    (false, true) if holder.is_none() || holder == me => {
                        leases.holder.insert(p, me);
                        plan.acquired.push(p);
                    }
                    _ => {}
                }
            }
            plan
        });
        std::future::ready(plan.filter(|plan| !plan.is_empty()))
    }

    fn release(&self, partitions: &[i32]) -> impl Future<Output = Result<(), PgError>> + Send {
        let mut leases = self.leases();
        for p in partitions {
            if leases.holder.get(p) == Some(&Some(self.me)) {
                leases.holder.insert(*p, None);
            }
        }
        std::future::ready(Ok(()))
    }

    fn leave(&self) -> impl Future<Output = Result<(), PgError>> + Send {
        let mut leases = self.leases();
        for holder in leases.holder.values_mut() {
            if *holder == Some(self.me) {
                *holder = None;
            }
        }
        std::future::ready(Ok(()))
    }
}

/// One instance's clock: its timers fire when the harness makes them due,
/// its time moves when they do, and a pause or a backoff passes at once.
pub struct SimClock {
    control: Arc<Control>,
    start: Instant,
}

impl SimClock {
    /// A clock whose time is `start` plus the time the harness moved it.
    pub fn new(control: Arc<Control>, start: Instant) -> Self {
        SimClock { control, start }
    }
}

/// A timer of a [`SimClock`].
pub struct SimTicker {
    control: Arc<Control>,
    slot: usize,
}

impl Ticker for SimTicker {
    fn tick(&mut self) -> impl Future<Output = ()> + Send {
        futures::future::poll_fn(|_| {
            let mut c = self.control.lock();
            if std::mem::take(&mut c.due[self.slot]) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

impl Clock for SimClock {
    type Ticker = SimTicker;

    fn ticker(&self, timer: Timer, _: Duration) -> SimTicker {
        SimTicker { control: self.control.clone(), slot: slot(timer) }
    }

    fn now(&self) -> Instant {
        self.start + Duration::from_millis(self.control.lock().now_ms)
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send {
        self.control.lock().now_ms += duration.as_millis() as u64;
        std::future::ready(())
    }

    fn backoff(&self, _: Duration, _: Duration) -> impl Iterator<Item = Duration> + Send + 'static {
        std::iter::repeat(Duration::ZERO)
    }

    /// Not spawned: the loop polls it in its own order, so a run stays a function of its seed.
    fn spawn<T: Send + 'static>(&self, task: impl Future<Output = T> + Send + 'static) -> Task<T> {
        Task::new(task)
    }
}

#[cfg(test)]
mod tests {
    use futures::executor::block_on;
    use futures::FutureExt;

    use super::*;

    fn members(me: usize, leases: &Arc<Mutex<Leases>>) -> SimMembers {
        SimMembers::new(me, leases.clone(), Arc::default())
    }

    #[test]
    fn a_heartbeat_plans_as_the_lease_group_does() {
        let leases = Arc::new(Mutex::new(Leases {
            meant: BTreeMap::from([(0, 0), (1, 0), (2, 1)]),
            holder: BTreeMap::from([(0, None), (1, Some(1)), (2, Some(0))]),
        }));
        let (a, b) = (members(0, &leases), members(1, &leases));
        // Meant for a: 0 is free (acquired), 1 is held by b (not yet); a holds 2, meant for b (hand over).
        let plan = block_on(a.changes(&BTreeSet::from([2]))).expect("a plan");
        assert_eq!((plan.acquired, plan.to_release, plan.lost), (vec![0], vec![2], vec![]));
        block_on(a.release(&[2])).expect("released");
        // b holds 1's lease but 1 is meant for a: b hands it over; 2 is free now, and b's.
        let plan = block_on(b.changes(&BTreeSet::from([1]))).expect("a plan");
        assert_eq!((plan.acquired, plan.to_release, plan.lost), (vec![2], vec![1], vec![]));
        // A partition a owns and is meant for, whose lease another took: lost.
        leases.lock().unwrap().holder.insert(0, Some(1));
        let plan = block_on(a.changes(&BTreeSet::from([0]))).expect("a plan");
        assert_eq!(plan.lost, vec![0]);
        // A failing heartbeat changes nothing.
        a.control.set_heartbeat_fails(true);
        assert!(block_on(a.changes(&BTreeSet::new())).is_none());
    }

    #[test]
    fn the_source_delivers_only_what_the_harness_lets_it() {
        let log = MemLog::new();
        for n in 0..5u8 {
            log.append_event(0, vec![n], vec![n], 0);
        }
        let control = Arc::new(Control::default());
        let source = SimSource::new(log, control.clone());
        source.assign(vec![(0, 1)]).expect("assigned");
        assert!(source.recv().now_or_never().is_none(), "nothing delivered before the harness says so");
        control.deliver(Some((0, 2)));
        let first = block_on(source.recv()).expect("a record").expect("no error");
        assert_eq!(first.fetched().offset, 1);
        assert_eq!(source.try_recv().expect("the second").expect("no error").fetched().offset, 2);
        assert!(source.try_recv().is_none(), "two at most");
        control.rewind(0, 2);
        control.deliver(Some((0, 1)));
        assert_eq!(source.try_recv().expect("again").expect("no error").fetched().offset, 1);
        source.stall(0, 2, None);
        assert!(control.assigned().is_empty(), "a stopped partition is not consumed");
    }
}
