//! Change notifications: one Redis pub/sub subscription per process, fanned
//! out in process to whoever waits for a read model to change (token waits,
//! live streams).
//!
//! The materializer publishes the workload's name on `<prefix>:changes` after
//! every batch that reached Redis ([`RedisStore::publish_change`]). Here a
//! single task, started on first use, listens and bumps a counter per
//! workload (and one for any workload) in a [`watch`] channel: waking a
//! thousand waiters is one send. Pub/sub delivers at most once, so listeners
//! also re-check on a slow timer; after a reconnect every counter is bumped,
//! since messages may have been missed meanwhile.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::engine::shutdown::{CancellationToken, TaskTracker};
use common::engine::store::cache::RedisStore;
use futures::StreamExt;
use tokio::sync::watch;

/// Wait before subscribing again after Redis dropped the subscription.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(1);

/// The process's view of read-model changes. Cheap to clone.
#[derive(Clone)]
pub struct Changes {
    inner: Arc<Inner>,
}

struct Inner {
    redis: RedisStore,
    any: watch::Sender<u64>,
    by_workload: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// The same counts as atomics, for readers that only compare them ([`Epoch`]).
    epochs: Mutex<HashMap<String, Arc<AtomicU64>>>,
    /// Subscribed: every change published from now on reaches [`Inner::bump`].
    subscribed: Arc<AtomicBool>,
    listening: OnceLock<()>,
    /// Ends the listener and every live stream: the service is stopping.
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Inner {
    fn bump(&self, workload: Option<&str>) {
        {
            let epochs = self.epochs.lock().expect("changes lock");
            match workload {
                Some(name) => {
                    if let Some(epoch) = epochs.get(name) {
                        epoch.fetch_add(1, Ordering::AcqRel);
                    }
                }
                None => epochs.values().for_each(|epoch| {
                    epoch.fetch_add(1, Ordering::AcqRel);
                }),
            }
        }
        self.any.send_modify(|n| *n = n.wrapping_add(1));
        let by_workload = self.by_workload.lock().expect("changes lock");
        match workload {
            Some(name) => {
                if let Some(tx) = by_workload.get(name) {
                    tx.send_modify(|n| *n = n.wrapping_add(1));
                }
            }
            None => by_workload.values().for_each(|tx| tx.send_modify(|n| *n = n.wrapping_add(1))),
        }
    }
}

impl Changes {
    pub fn new(redis: RedisStore) -> Self {
        Changes {
            inner: Arc::new(Inner {
                redis,
                any: watch::channel(0).0,
                by_workload: Mutex::default(),
                epochs: Mutex::default(),
                subscribed: Arc::new(AtomicBool::new(false)),
                listening: OnceLock::new(),
                stop: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        }
    }

    /// A receiver that sees a change whenever `workload`'s read model (or,
    /// with `None`, any read model) changed. Starts the listener on first use.
    pub fn subscribe(&self, workload: Option<&str>) -> watch::Receiver<u64> {
        self.listen();
        match workload {
            None => self.inner.any.subscribe(),
            Some(name) => {
                let mut by_workload = self.inner.by_workload.lock().expect("changes lock");
                by_workload.entry(name.to_owned()).or_insert_with(|| watch::channel(0).0).subscribe()
            }
        }
    }

    /// The change count of `workload`'s read model, for copies kept until it
    /// changes. Starts the listener on first use.
    pub fn epoch(&self, workload: &str) -> Epoch {
        self.listen();
        let count = self.inner.epochs.lock().expect("changes lock").entry(workload.to_owned()).or_default().clone();
        Epoch { count, subscribed: self.inner.subscribed.clone() }
    }

    fn listen(&self) {
        self.inner.listening.get_or_init(|| {
            let inner = self.inner.clone();
            self.inner.tasks.spawn(async move {
                listen(&inner).await;
                inner.lost();
            });
        });
    }

    /// Cancelled when the service stops: long-lived answers end on it.
    pub fn stopping(&self) -> &CancellationToken {
        &self.inner.stop
    }

    /// Spawns a task that ends with the service (tracked, so shutdown waits for it).
    pub fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.inner.tasks.spawn(task);
    }

    /// Stops the listener and the live streams, and waits (at most `limit`) for them.
    pub async fn shut_down(&self, limit: Duration) {
        self.inner.stop.cancel();
        self.inner.tasks.close();
        if tokio::time::timeout(limit, self.inner.tasks.wait()).await.is_err() {
            tracing::warn!("change listener still running after the drain period");
        }
    }
}

/// Where one workload's read model is in its sequence of changes, as far as
/// this process heard: two equal readings mean no change was published in
/// between (a copy read after the first is still current). Cheap to clone;
/// reading is two atomic loads.
#[derive(Clone)]
pub struct Epoch {
    count: Arc<AtomicU64>,
    subscribed: Arc<AtomicBool>,
}

impl Epoch {
    /// The count now, or `None` while not subscribed (changes may go unheard).
    pub fn now(&self) -> Option<u64> {
        // The flag first: it drops before the counts move on a loss, and rises
        // after they moved on a (re)subscription, so a reading of `Some` is
        // never paired with a count from an unheard stretch.
        let subscribed = self.subscribed.load(Ordering::Acquire);
        let count = self.count.load(Ordering::Acquire);
        subscribed.then_some(count)
    }

    /// An epoch that is never subscribed (copies then live by their time only).
    pub fn unheard() -> Self {
        Epoch { count: Arc::default(), subscribed: Arc::default() }
    }
}

impl Inner {
    /// Subscribed: anything may have changed while we were not, so every count moves first.
    fn heard(&self) {
        self.bump(None);
        self.subscribed.store(true, Ordering::Release);
    }

    /// Not subscribed any more: what changes from now on goes unheard.
    fn lost(&self) {
        self.subscribed.store(false, Ordering::Release);
        self.bump(None);
    }
}

/// Subscribes, fans messages out, and subscribes again after a loss, until stopped.
async fn listen(inner: &Inner) {
    let mut failing = false;
    loop {
        match inner.redis.subscribe_changes().await {
            Ok(pubsub) => {
                if failing {
                    tracing::info!("change notifications subscribed again");
                }
                failing = false;
                // Anything may have changed while we were not subscribed.
                inner.heard();
                let mut messages = pubsub.into_on_message();
                loop {
                    tokio::select! {
                        _ = inner.stop.cancelled() => return,
                        msg = messages.next() => match msg {
                            Some(msg) => inner.bump(msg.get_payload::<String>().ok().as_deref()),
                            None => break,
                        },
                    }
                }
                inner.lost();
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "change notifications unavailable; waits fall back to polling");
                }
                failing = true;
            }
        }
        tokio::select! {
            _ = inner.stop.cancelled() => return,
            _ = tokio::time::sleep(RESUBSCRIBE_AFTER) => {}
        }
    }
}
