//! The events and aggregates topics in memory, with Kafka's transactional
//! semantics as the engine relies on them: a producer per events partition,
//! fenced by the next `open` of that partition; a transaction's records
//! become visible to (read_committed) readers together at its commit, and
//! an aborted one's never.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::stall::Stalls;
use crate::engine::emitter::{EmitError, Log, TxnProducer};
use crate::engine::{planted, Emit, Planted};

/// What the next transaction does wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFault {
    /// It aborts: none of its records land.
    Abort,
    /// It commits, but the producer hears an error (a commit whose reply was lost).
    LostCommit,
    /// It is held up on its way to the broker: the emit stays in flight
    /// (its future pending) until the test releases it ([`MemLog::release_stalled`]).
    Stall,
}

/// A record of the events topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub offset: i64,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    /// The broker's log-append time.
    pub appended_ms: i64,
}

#[derive(Debug, Default)]
struct Topics {
    events: BTreeMap<i32, Vec<LogRecord>>,
    /// Committed records of the aggregates topic, in commit order.
    aggregates: Vec<Emit>,
    /// Every record any producer sent, in send order, whether its
    /// transaction committed, aborted or was fenced: what a broker without
    /// transactions would hold.
    sent: Vec<Emit>,
    /// Every reply published, in publish order (replays and zombies included).
    replies: Vec<Emit>,
    /// The current producer epoch of each events partition's transactional id.
    epochs: BTreeMap<i32, u64>,
    fault: Option<LogFault>,
    /// Stalled transactions, in stall order.
    stalled: Stalls,
    /// Transactions committed, aborted and fenced, for the run's summary.
    committed: u64,
    aborted: u64,
    fenced: u64,
}

/// The log of one workload: its events topic and its aggregates topic. Clones share it.
#[derive(Debug, Clone, Default)]
pub struct MemLog {
    topics: Arc<Mutex<Topics>>,
}

impl MemLog {
    pub fn new() -> Self {
        MemLog::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Topics> {
        self.topics.lock().expect("no panic while the log is held")
    }

    /// Appends an event (the command's write); returns its offset.
    pub fn append_event(&self, partition: i32, key: Vec<u8>, payload: Vec<u8>, appended_ms: i64) -> i64 {
        let mut topics = self.lock();
        let records = topics.events.entry(partition).or_default();
        let offset = records.len() as i64;
        records.push(LogRecord { offset, key, payload, appended_ms });
        offset
    }

    /// Up to `max` events of `partition` from offset `from`.
    pub fn read_events(&self, partition: i32, from: i64, max: usize) -> Vec<LogRecord> {
        let topics = self.lock();
        let records = topics.events.get(&partition).map(Vec::as_slice).unwrap_or_default();
        let from = usize::try_from(from).unwrap_or(0).min(records.len());
        records[from..].iter().take(max).cloned().collect()
    }

    /// The next offset of `partition`'s events.
    pub fn events_end(&self, partition: i32) -> i64 {
        self.lock().events.get(&partition).map_or(0, |r| r.len() as i64)
    }

    /// Every committed aggregates record, in commit order (what a read_committed reader sees).
    pub fn committed_aggregates(&self) -> Vec<Emit> {
        self.lock().aggregates.clone()
    }

    /// Every reply any owner published, in publish order: a replay's or a zombie's again.
    pub fn replies(&self) -> Vec<Emit> {
        self.lock().replies.clone()
    }

    /// Every record any producer sent, aborted and fenced transactions' included, in send order.
    pub fn sent_aggregates(&self) -> Vec<Emit> {
        self.lock().sent.clone()
    }

    /// Makes the next transaction fail this way (`None`: clears a fault not yet hit).
    pub fn inject(&self, fault: Option<LogFault>) {
        self.lock().fault = fault;
    }

    /// Transactions committed and aborted so far.
    pub fn transactions(&self) -> (u64, u64) {
        let topics = self.lock();
        (topics.committed, topics.aborted)
    }

    /// Transactions refused because a newer producer of their partition was opened.
    pub fn fenced(&self) -> u64 {
        self.lock().fenced
    }

    /// Transactions stalled and still awaited by someone, in stall order.
    pub fn stalled(&self) -> usize {
        self.lock().stalled.pending()
    }

    /// Lets the `k`th stalled transaction ([`stalled`](Self::stalled)) go on when next polled.
    pub fn release_stalled(&self, k: usize) {
        self.lock().stalled.release(k);
    }
}

impl Log for MemLog {
    type Producer = MemProducer;

    async fn open(&self, partition: i32) -> Result<MemProducer, EmitError> {
        let mut topics = self.lock();
        let epoch = topics.epochs.entry(partition).or_default();
        // The bug: a producer whose id is not the partition's fences no one.
        if !planted(Planted::NoEmitFence) {
            *epoch += 1;
        }
        Ok(MemProducer { log: self.clone(), partition, epoch: *epoch })
    }

    fn reply(&self, replies: Vec<Emit>) {
        self.lock().replies.extend(replies);
    }
}

/// One events partition's transactional producer.
#[derive(Debug)]
pub struct MemProducer {
    log: MemLog,
    partition: i32,
    epoch: u64,
}

fn failed(partition: i32) -> EmitError {
    EmitError::Kafka { partition, source: KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut) }
}

impl TxnProducer for MemProducer {
    async fn transaction(
        &self,
        records: Vec<Emit>,
        placed: Vec<(i32, Emit)>,
        commit: impl Future<Output = bool> + Send,
    ) -> Result<bool, EmitError> {
        let stall = {
            let mut topics = self.log.lock();
            (topics.fault == Some(LogFault::Stall)).then(|| {
                topics.fault = None;
                topics.stalled.hold()
            })
        };
        if let Some(stalled) = stall {
            stalled.await;
        }
        {
            let mut topics = self.log.lock();
            topics.sent.extend(records.iter().cloned());
            topics.sent.extend(placed.iter().map(|(_, r)| r.clone()));
        }
        // Sent, not committed: a crash here (the future dropped) leaves nothing readable.
        if !commit.await {
            self.log.lock().aborted += 1;
            return Ok(false);
        }
        let mut topics = self.log.lock();
        if topics.epochs.get(&self.partition) != Some(&self.epoch) {
            topics.fenced += 1;
            return Err(EmitError::Fenced(self.partition));
        }
        match topics.fault.take() {
            Some(LogFault::Abort) => {
                topics.aborted += 1;
                Err(failed(self.partition))
            }
            fault => {
                topics.aggregates.extend(records);
                topics.aggregates.extend(placed.into_iter().map(|(_, r)| r));
                topics.committed += 1;
                match fault {
                    Some(LogFault::LostCommit) => Err(failed(self.partition)),
                    _ => Ok(true),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::ready;

    use futures::executor::block_on;

    use super::*;

    fn record(key: &str) -> Emit {
        Emit { key: key.to_owned(), payload: key.as_bytes().to_vec(), keep_payload: false }
    }

    #[test]
    fn opening_a_partitions_producer_fences_the_previous_one() {
        let log = MemLog::new();
        let old = block_on(log.open(0)).expect("opened");
        let new = block_on(log.open(0)).expect("opened again");
        assert!(matches!(
            block_on(old.transaction(vec![record("a")], Vec::new(), ready(true))),
            Err(EmitError::Fenced(0))
        ));
        block_on(new.transaction(vec![record("b")], Vec::new(), ready(true))).expect("the new owner commits");
        let other = block_on(log.open(1)).expect("another partition's producer");
        block_on(other.transaction(vec![record("c")], Vec::new(), ready(true))).expect("not fenced by partition 0's");
        let keys: Vec<String> = log.committed_aggregates().into_iter().map(|r| r.key).collect();
        assert_eq!(keys, ["b", "c"]);
    }

    #[test]
    fn an_aborted_transaction_lands_nothing_and_a_lost_commit_lands_everything() {
        let log = MemLog::new();
        let producer = block_on(log.open(0)).expect("opened");
        log.inject(Some(LogFault::Abort));
        assert!(block_on(producer.transaction(vec![record("a")], Vec::new(), ready(true))).is_err());
        log.inject(Some(LogFault::LostCommit));
        assert!(block_on(producer.transaction(vec![record("b")], vec![(0, record("p"))], ready(true))).is_err());
        let keys: Vec<String> = log.committed_aggregates().into_iter().map(|r| r.key).collect();
        assert_eq!(keys, ["b", "p"]);
        assert_eq!(log.transactions(), (1, 1));
    }
}
