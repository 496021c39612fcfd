//! Live views over Server-Sent Events: a workload renders a JSON snapshot of
//! what it shows; the engine pushes it to every open stream whenever the
//! workload's read model changes, with a heartbeat comment in between.
//!
//! One feed task per live route and process (started with its first stream)
//! re-renders the snapshot on each change notification ([`Changes`]), and
//! once a second so that a new hour or day shows without any event, and only
//! while someone listens; it hands the result to the streams through a
//! [`watch`] channel. A thousand streams therefore cost one rendering per
//! change, not a thousand, and a slow stream skips to the newest snapshot
//! instead of queueing old ones.
//!
//! Open streams are capped per process (`--max-live-streams`, shared by every
//! live route): beyond it a new stream is refused with 503 and `Retry-After`.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use common::engine::http::{self, Body};
use futures::future::BoxFuture;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::changes::Changes;
use super::{Answer, QueryError};
use crate::metrics as m;

/// A comment line every this often keeps proxies and clients from timing out.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// How often the snapshot is re-rendered without a notification (a new hour).
const REFRESH: Duration = Duration::from_secs(1);
/// Told to clients: reconnect after this long if the stream breaks.
const RETRY_MS: u32 = 1000;

type Render = Arc<dyn Fn() -> BoxFuture<'static, Result<String, QueryError>> + Send + Sync>;

/// The live feed of one route; cheap to clone into its handler.
#[derive(Clone)]
pub struct LiveFeed {
    inner: Arc<Feed>,
}

struct Feed {
    workload: &'static str,
    render: Render,
    changes: Changes,
    latest: watch::Sender<Option<Arc<str>>>,
    started: OnceLock<()>,
    slots: Arc<Semaphore>,
}

impl LiveFeed {
    /// A feed of `workload`'s changes rendered by `render` (a JSON object, one
    /// line); each stream takes one of `slots` while open.
    pub fn new<F, Fut>(workload: &'static str, changes: Changes, slots: Arc<Semaphore>, render: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, QueryError>> + Send + 'static,
    {
        let render: Render = Arc::new(move || Box::pin(render()));
        let feed = Feed { workload, render, changes, latest: watch::channel(None).0, started: OnceLock::new(), slots };
        LiveFeed { inner: Arc::new(feed) }
    }

    /// The answer to one `GET`: a stream starting with the current snapshot.
    /// Fails (503) when every stream place is taken, or the first snapshot cannot be read.
    pub fn answer(&self) -> Answer {
        let feed = self.inner.clone();
        Box::pin(async move {
            let Ok(slot) = feed.slots.clone().try_acquire_owned() else {
                return Err(QueryError::Busy {
                    label: "too_many_streams",
                    message: "too many live streams open; retry later".into(),
                });
            };
            feed.start();
            // Subscribed before the first rendering: nothing that changes after it is missed.
            let updates = feed.latest.subscribe();
            let first: Arc<str> = (feed.render)().await?.into();
            let stop = feed.changes.stopping().clone();
            Ok(stream(feed.workload, first, updates, stop, slot))
        })
    }
}

impl Feed {
    fn start(self: &Arc<Self>) {
        self.started.get_or_init(|| {
            let feed = self.clone();
            self.changes.spawn(async move { feed.run().await });
        });
    }

    async fn run(&self) {
        let mut changes = self.changes.subscribe(Some(self.workload));
        let mut refresh = tokio::time::interval(REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stop = self.changes.stopping().clone();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = changes.changed() => {}
                _ = refresh.tick() => {}
            }
            if self.latest.receiver_count() == 0 {
                continue;
            }
            changes.borrow_and_update();
            // In-process copies read before this change may not show it: read past them.
            match super::reader::fresh_since(std::time::Instant::now(), (self.render)()).await {
                Ok(json) => {
                    self.latest.send_if_modified(|held| {
                        let changed = held.as_deref() != Some(json.as_str());
                        if changed {
                            *held = Some(json.into());
                        }
                        changed
                    });
                }
                Err(e) => tracing::debug!(workload = self.workload, error = %e, "live snapshot not rendered"),
            }
        }
    }
}

/// One `data:` event.
fn event(json: &str) -> Bytes {
    Bytes::from(format!("data: {json}\n\n"))
}

/// One stream's state: what it sent last, and its heartbeat.
struct Stream {
    updates: watch::Receiver<Option<Arc<str>>>,
    last: Arc<str>,
    heartbeat: tokio::time::Interval,
    stop: common::engine::shutdown::CancellationToken,
    open: OpenStream,
}

/// Counts a stream in the open-streams gauge, and holds its place, while it lives.
struct OpenStream(
    &'static str,
    #[allow(dead_code, reason = "held, not read: dropping it frees the place")] OwnedSemaphorePermit,
);

impl OpenStream {
    fn new(workload: &'static str, slot: OwnedSemaphorePermit) -> Self {
        metrics::gauge!(m::LIVE_STREAMS, "workload" => workload).increment(1.0);
        OpenStream(workload, slot)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        metrics::gauge!(m::LIVE_STREAMS, "workload" => self.0).decrement(1.0);
    }
}

fn stream(
    workload: &'static str,
    first: Arc<str>,
    updates: watch::Receiver<Option<Arc<str>>>,
    stop: common::engine::shutdown::CancellationToken,
    slot: OwnedSemaphorePermit,
) -> Response<Body> {
    use futures::StreamExt;
    let start = Bytes::from(format!("retry: {RETRY_MS}\n{}", std::str::from_utf8(&event(&first)).expect("utf-8")));
    let heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    let state = Stream { updates, last: first, heartbeat, stop, open: OpenStream::new(workload, slot) };
    let rest = futures::stream::unfold(state, |mut s| async move {
        loop {
            tokio::select! {
                _ = s.stop.cancelled() => return None,
                changed = s.updates.changed() => {
                    changed.ok()?;
                    let latest = s.updates.borrow_and_update().clone();
                    if let Some(latest) = latest.filter(|l| *l != s.last) {
                        s.last = latest;
                        s.heartbeat.reset();
                        metrics::counter!(m::LIVE_EVENTS, "workload" => s.open.0).increment(1);
                        return Some((event(&s.last), s));
                    }
                }
                _ = s.heartbeat.tick() => return Some((Bytes::from_static(b": heartbeat\n\n"), s)),
            }
        }
    });
    let body = futures::stream::once(async move { start }).chain(rest);
    let mut r = Response::new(http::streaming(body));
    *r.status_mut() = StatusCode::OK;
    let headers = r.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies such as nginx would otherwise buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}
