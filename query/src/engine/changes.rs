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
    listening: OnceLock<()>,
    /// Ends the listener and every live stream: the service is stopping.
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Inner {
    fn bump(&self, workload: Option<&str>) {
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
                listening: OnceLock::new(),
                stop: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        }
    }

    /// A receiver that sees a change whenever `workload`'s read model (or,
    /// with `None`, any read model) changed. Starts the listener on first use.
    pub fn subscribe(&self, workload: Option<&str>) -> watch::Receiver<u64> {
        self.inner.listening.get_or_init(|| {
            let inner = self.inner.clone();
            self.inner.tasks.spawn(async move {
                listen(&inner).await;
            });
        });
        match workload {
            None => self.inner.any.subscribe(),
            Some(name) => {
                let mut by_workload = self.inner.by_workload.lock().expect("changes lock");
                by_workload.entry(name.to_owned()).or_insert_with(|| watch::channel(0).0).subscribe()
            }
        }
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
                inner.bump(None);
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
