//! A producer whose delivery reports arrive as futures, served by a thread
//! of its own that sleeps while nothing happens.
//!
//! rdkafka's `FutureProducer` does the same with a `ThreadedProducer`, whose
//! thread polls in windows of 100 ms; rdkafka hands librdkafka the time left
//! in a window truncated to whole milliseconds, so the last fraction of a
//! millisecond of every window is spent polling with a timeout of 0 in a loop.
//! Measured with `perf` on an idle stack: those loops were 87 % of the idle
//! processor's CPU (22 producers, about a fifth of a core) and most of the
//! command's. Here the window is [`POLL_WINDOW`]: 100 ms and a tenth of a
//! millisecond, so librdkafka is asked to wait 100 ms, and its wake-up comes
//! late enough (the kernel's timer slack, 50 µs) that the window is over: no
//! loop. A delivery report still wakes the thread at once. The window is also
//! how long a dropped producer may live on: an abandoned `init_transactions`
//! left alive for a second (a first version's window) finished later and
//! fenced the producer that replaced it.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, ToBytes};
use rdkafka::producer::future_producer::{Delivery, OwnedDeliveryResult};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, FutureRecord, Producer, ProducerContext};

/// How long the delivery thread waits for an event before it looks at the stop flag.
pub const POLL_WINDOW: Duration = Duration::from_micros(100_100);

/// Longest wait of [`LogProducer::commit_transaction`] for the delivery reports to be counted out.
const SETTLE: Duration = Duration::from_millis(50);

/// Resolves each message's future with its delivery report.
pub struct Deliveries;

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<oneshot::Sender<OwnedDeliveryResult>>;

    fn delivery(&self, result: &DeliveryResult<'_>, tx: Self::DeliveryOpaque) {
        let owned = match result {
            Ok(m) => Ok(Delivery { partition: m.partition(), offset: m.offset(), timestamp: m.timestamp() }),
            Err((e, m)) => Err((e.clone(), m.detach())),
        };
        // The sender's future was dropped: nobody waits for this report.
        let _ = tx.send(owned);
    }
}

/// The report of one message: its partition and offset, or why it failed.
/// `Err(Canceled)` when the producer went away with the message unreported.
pub type DeliveryFuture = oneshot::Receiver<OwnedDeliveryResult>;

/// A producer with a delivery thread, cheap to clone (the clones share it).
/// The [`rdkafka::producer::Producer`] calls (transactions, flush, queue
/// length) go to the [`BaseProducer`] through `Deref`.
#[derive(Clone)]
pub struct LogProducer {
    shared: Arc<Shared>,
}

struct Shared {
    base: Arc<BaseProducer<Deliveries>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Shared {
    /// The thread ends within a window (100 ms) and drops the producer there
    /// (which purges what is still queued, as rdkafka's own producers do): a
    /// drop never blocks its caller for a window.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

impl LogProducer {
    /// A producer of `config`, with its delivery thread started.
    ///
    /// # Errors
    /// When librdkafka refuses the configuration.
    pub fn create(config: &ClientConfig) -> Result<Self, KafkaError> {
        let base: Arc<BaseProducer<Deliveries>> = Arc::new(config.create_with_context(Deliveries)?);
        let stop = Arc::new(AtomicBool::new(false));
        let (producer, stopped) = (base.clone(), stop.clone());
        std::thread::Builder::new()
            .name("kafka-deliveries".into())
            .spawn(move || {
                while !stopped.load(Ordering::Acquire) {
                    producer.poll(POLL_WINDOW);
                }
            })
            .map_err(|e| KafkaError::ClientCreation(format!("starting the delivery thread: {e}")))?;
        Ok(LogProducer { shared: Arc::new(Shared { base, stop }) })
    }

    /// Queues `record`; the future resolves with its delivery report.
    ///
    /// # Errors
    /// When librdkafka does not take the record (its queue is full, say), at once.
    pub fn send_result<K, P>(&self, record: FutureRecord<'_, K, P>) -> Result<DeliveryFuture, KafkaError>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let (tx, rx) = oneshot::channel();
        let FutureRecord { topic, partition, payload, key, timestamp, headers } = record;
        let base = BaseRecord { topic, partition, payload, key, timestamp, headers, delivery_opaque: Box::new(tx) };
        self.shared.base.send(base).map(|()| rx).map_err(|(e, _)| e)
    }

    /// Commits the open transaction, once librdkafka has counted out every
    /// delivered message (blocking: call it off the runtime's threads).
    ///
    /// rdkafka's `commit_transaction` flushes first, and a flush that finds a
    /// message still counted polls the event queue for up to 100 ms. A report
    /// resolves its future inside the delivery callback, before librdkafka
    /// counts the message out, so a commit that closely follows the futures
    /// sometimes found one still counted, and the delivery thread, not the
    /// flush, took the event that ended it: the flush then slept its 100 ms
    /// (measured at rest: 26 of about 540 emits took 100–250 ms, the rest
    /// under 10 ms; docs/benchmarks-notes.md, "A commit that slept"). The
    /// count reaches zero microseconds after the futures (the delivery thread
    /// is serving it), so a short wait for it here keeps the flush from polling.
    ///
    /// # Errors
    /// As rdkafka's `commit_transaction`.
    pub fn commit_transaction(&self, timeout: Duration) -> Result<(), KafkaError> {
        let settle_until = Instant::now() + SETTLE;
        while self.shared.base.in_flight_count() > 0 && Instant::now() < settle_until {
            std::thread::sleep(Duration::from_micros(50));
        }
        self.shared.base.commit_transaction(timeout)
    }
}

impl Deref for LogProducer {
    type Target = BaseProducer<Deliveries>;

    fn deref(&self) -> &Self::Target {
        &self.shared.base
    }
}
