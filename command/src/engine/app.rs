//! Building, serving and stopping the write edge: the routing table of the
//! registered workloads, the edge checks, the partition-count agreement of
//! each workload's topic, the gauges and graceful shutdown.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use common::engine::http::{self, Body, OpsRoutes, ServerLimits};
use common::engine::kafka::TopicSpec;
use common::engine::shutdown::{spawn_critical, CancellationToken, TaskTracker};
use common::engine::task::Task;
use hyper::body::Bytes;
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::lane::{self, BodyError, Lane, Route, StreamLane, Topic};
use super::publisher::EventPublisher;
use super::replies::Replies;
use super::tail::Tail;
use super::upload::{Append, AppendError, Appender};
use super::{upload, Delivered, Intake, Upload};
use crate::config::Config;
use crate::metrics as m;

/// A POST cut short may have handed its event to the producer already.
const TOO_LONG: &str = "outcome unknown: request took too long; retry with the same id";

/// Paths the engine serves itself; no workload may take them.
const OPS_PATHS: [&str; 3] = ["/health", "/ready", "/metrics"];

/// The state every request shares; cheap to reach through [`CommandApp`].
pub(crate) struct Shared {
    routes: Vec<Box<dyn Route>>,
    pub clock: fn() -> i64,
    /// How long a decided write waits for its decision.
    pub decision_timeout: Duration,
    pub in_flight: Semaphore,
    max_in_flight: usize,
    ops: OpsRoutes,
    edge: common::engine::edge::Edge,
    /// Cancelled when a producer hits a fatal error: the process restarts.
    pub fatal: CancellationToken,
    /// Stops the background start-up checks when the service stops.
    background: CancellationToken,
    /// The service's background tasks (start-up checks, gauges), drained on the way out.
    tasks: TaskTracker,
    /// The workloads' own listeners (gRPC, say), served by [`run`].
    listeners: std::sync::Mutex<Vec<http::Listener>>,
    /// The workloads' background tasks, started by [`run`].
    workload_tasks: std::sync::Mutex<Vec<Task>>,
    /// How long a streamed upload may wait for its body without appending a record.
    pub upload_idle: Duration,
    /// The broker, for the workloads' [`Tail`]s.
    kafka: common::engine::config::KafkaConfig,
}

impl Shared {
    fn route(&self, path: &str) -> Option<&dyn Route> {
        self.routes.iter().find(|r| r.serves(path)).map(|r| r.as_ref())
    }

    fn in_flight_capacity_used(&self) -> usize {
        // Semaphore permits are handed out per request; the gauge shows how many are taken.
        self.max_in_flight.saturating_sub(self.in_flight.available_permits())
    }
}

/// The write edge being assembled: register each workload, then [`Engine::start`].
pub struct Engine<'c> {
    cfg: &'c Config,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    clock: fn() -> i64,
    routes: Vec<Box<dyn Route>>,
}

impl<'c> Engine<'c> {
    /// An engine with no workload yet, on the broker, limits and edge of `cfg`.
    ///
    /// # Errors
    /// When the request time limit does not leave room for delivery.
    pub fn new(
        cfg: &'c Config,
        metrics: metrics_exporter_prometheus::PrometheusHandle,
        clock: fn() -> i64,
    ) -> anyhow::Result<Self> {
        // A request cut short after its event was handed to the producer could be
        // retried by the client and counted twice: let delivery (and the wait
        // for a decision) give up first, so the client hears "outcome unknown".
        anyhow::ensure!(
            cfg.edge.request_timeout > cfg.delivery_timeout + cfg.decision_timeout,
            "--request-timeout ({:?}) must be longer than --delivery-timeout ({:?}) plus --decision-timeout ({:?})",
            cfg.edge.request_timeout,
            cfg.delivery_timeout,
            cfg.decision_timeout
        );
        Ok(Engine { cfg, metrics, clock, routes: Vec::new() })
    }

    /// Adds a workload: its route and its topic's producers.
    ///
    /// # Errors
    /// When its route or topic is taken, or librdkafka rejects the producer configuration.
    pub fn register<W: Intake>(mut self, workload: W) -> anyhow::Result<Self> {
        let replies = workload.replies_topic().map(|t| Arc::new(Replies::new(t)));
        let topic = self.topic(W::NAME, W::ROUTE, workload.topic(), replies)?;
        let subsets = (0..1usize << W::SUBPATH_METHODS.len())
            .map(|mask| {
                let methods: Vec<Method> = W::SUBPATH_METHODS
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask & 1 << i != 0)
                    .map(|(_, m)| m.clone())
                    .collect();
                join(&methods)
            })
            .collect();
        let allow = (join(W::METHODS), subsets);
        self.routes.push(Box::new(Lane { workload, topic, allow }));
        Ok(self)
    }

    /// Adds a workload whose body is streamed to it ([`Upload`]): its route and its topic's producers.
    ///
    /// # Errors
    /// As [`Engine::register`].
    pub fn register_upload<U: Upload>(mut self, workload: U) -> anyhow::Result<Self> {
        let topic = self.topic(U::NAME, U::ROUTE, workload.topic(), None)?;
        self.routes.push(Box::new(StreamLane { workload, topic, allow: join(U::METHODS) }));
        Ok(self)
    }

    /// A new route's topic and producers, once its route and topic are known to be free.
    fn topic(
        &self,
        name: &'static str,
        route: &'static str,
        spec: TopicSpec,
        replies: Option<Arc<Replies>>,
    ) -> anyhow::Result<Topic> {
        anyhow::ensure!(
            route.starts_with('/') && !OPS_PATHS.contains(&route),
            "workload {name}: route {route} is not a free path"
        );
        if let Some(other) = self.routes.iter().find(|r| r.path() == route || r.topic().spec.name == spec.name) {
            anyhow::bail!("workloads {} and {name} share a route or a topic", other.name());
        }
        let publisher = EventPublisher::new(
            &self.cfg.kafka,
            &spec.name,
            name,
            self.cfg.producer_tuning(replies.is_some()),
            self.cfg.producers.get() as usize,
        )
        .with_context(|| format!("creating the producers of {name}"))?;
        Ok(Topic { spec, publisher, agreed_partitions: Arc::new(AtomicI32::new(0)), replies })
    }

    /// Creates the workloads' topics if configured, and agrees each topic's
    /// partition count for the deployment (in the background while the broker
    /// does not answer: requests get 503 until then).
    ///
    /// # Errors
    /// When no workload is registered, the broker refuses topic creation, or a
    /// partition count differs from the deployment's.
    pub async fn start(self, pool: deadpool_postgres::Pool) -> anyhow::Result<CommandApp> {
        let Engine { cfg, metrics, clock, routes } = self;
        anyhow::ensure!(!routes.is_empty(), "no workload registered");
        let events_partitions = cfg.partitions.events_partitions.get();
        let specs: Vec<_> = routes
            .iter()
            .flat_map(|r| {
                let replies =
                    r.topic().replies.as_ref().map(|p| TopicSpec::replies_named(p.topic(), events_partitions));
                std::iter::once(r.topic().spec.clone()).chain(replies)
            })
            .collect();
        common::engine::kafka::ensure_topics(&cfg.kafka, &specs).await.context("creating topics")?;
        let fatal = CancellationToken::new();
        let background = CancellationToken::new();
        let tasks = TaskTracker::new();
        for replies in routes.iter().filter_map(|r| r.topic().replies.clone()) {
            let follow = replies.follow(cfg.kafka.clone(), background.clone());
            spawn_critical(&tasks, &fatal, "replies", follow);
        }
        for route in &routes {
            let topic = route.topic();
            let (name, agreed) = (topic.spec.name.clone(), topic.agreed_partitions.clone());
            match common::engine::pg::agree_topic_partitions(&pool, "command", &cfg.kafka, &name).await {
                Ok(n) => agreed.store(n, Ordering::Relaxed),
                Err(e) if e.is::<common::engine::pg::SettingMismatch>() => return Err(e),
                Err(e) => {
                    // The broker may be down while we start: serve (with 503s) and check once it answers.
                    tracing::warn!(error = %e, topic = name, "partition count not checked yet; retrying in the background");
                    let recheck = recheck_partitions(pool.clone(), cfg.kafka.clone(), name, agreed, background.clone());
                    // A mismatch found later is fatal: spawn_critical cancels `fatal` on its error.
                    spawn_critical(&tasks, &fatal, "partition-recheck", recheck);
                }
            }
        }
        let inner = Arc::new_cyclic(|weak: &std::sync::Weak<Shared>| {
            let weak = weak.clone();
            let ready: http::ReadyCheck = Arc::new(move || {
                let weak = weak.clone();
                Box::pin(async move {
                    let Some(inner) = weak.upgrade() else { return Err("shutting down".into()) };
                    for route in &inner.routes {
                        route.topic().publisher.check_broker(Duration::from_secs(2)).await?;
                        if route.topic().replies.as_ref().is_some_and(|r| !r.is_following()) {
                            return Err(format!("not following the decisions of {} yet", route.name()));
                        }
                    }
                    Ok(())
                })
            });
            Shared {
                routes,
                clock,
                decision_timeout: cfg.decision_timeout,
                in_flight: Semaphore::new(cfg.max_in_flight.get() as usize),
                max_in_flight: cfg.max_in_flight.get() as usize,
                ops: OpsRoutes { service: "command", metrics, ready },
                edge: common::engine::edge::Edge::new(&cfg.edge, Some(&cfg.auth)),
                fatal,
                background,
                tasks,
                listeners: std::sync::Mutex::new(Vec::new()),
                workload_tasks: std::sync::Mutex::new(Vec::new()),
                upload_idle: cfg.upload_idle_timeout,
                kafka: cfg.kafka.clone(),
            }
        });
        Ok(CommandApp { inner })
    }
}

/// Retries the partition-count agreement of `topic` until the broker answers.
/// Ends on success or `stop`; a mismatch is an error, which stops the process
/// (run under `spawn_critical`) rather than route keys differently from the
/// processor.
async fn recheck_partitions(
    pool: deadpool_postgres::Pool,
    kafka: common::engine::config::KafkaConfig,
    topic: String,
    agreed: Arc<AtomicI32>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let policy = common::engine::retry::backoff(Duration::from_secs(1), Duration::from_secs(10));
    let attempt = || common::engine::pg::agree_topic_partitions(&pool, "command", &kafka, &topic);
    let retryable = |e: &anyhow::Error| !e.is::<common::engine::pg::SettingMismatch>();
    match common::engine::retry::until_cancelled(&stop, policy, "checking the partition count", attempt, retryable)
        .await
    {
        None => Ok(()),
        Some(Ok(n)) => {
            agreed.store(n, Ordering::Relaxed);
            tracing::info!(topic, partitions = n, "partition count agreed");
            Ok(())
        }
        Some(Err(e)) => Err(e.context("refusing to accept events")),
    }
}

/// The running write edge; cheap to clone into each connection.
#[derive(Clone)]
pub struct CommandApp {
    inner: Arc<Shared>,
}

impl CommandApp {
    /// Routes one request: a registered workload's `POST`, or the operational routes.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = Instant::now();
        let (route, resp) = match self.inner.route(req.uri().path()) {
            Some(route) if route.accepts(req.method(), req.uri().path()) => (route.path(), self.post(route, req).await),
            Some(route) => (route.path(), http::method_not_allowed(route.allow(req.uri().path()))),
            None => match self.inner.ops.handle(req.method(), req.uri().path()).await {
                Some(r) => ("ops", r),
                None => ("other", http::error(StatusCode::NOT_FOUND, self.not_found())),
            },
        };
        http::record_request("command", route, resp.status(), started);
        resp
    }

    fn not_found(&self) -> String {
        let routes: Vec<String> = self
            .inner
            .routes
            .iter()
            .map(|r| {
                let below = format!("{}/…", r.path());
                match r.serves(&below) {
                    true => format!("{} {}; {} {below}", r.allow(r.path()), r.path(), r.allow(&below)),
                    false => format!("{} {}", r.allow(r.path()), r.path()),
                }
            })
            .collect();
        format!("not found; the write routes are {}", routes.join("; "))
    }

    /// Adds a workload's own listener (its gRPC API, say), served by [`run`].
    pub fn serve_also(&self, listener: http::Listener) {
        self.inner.listeners.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(listener);
    }

    /// Adds a workload's background task, started by [`run`] once the
    /// service serves and cancelled (then awaited, within the shutdown
    /// drain) when it stops; its error stops the service.
    pub fn run_also(&self, task: Task) {
        self.inner.workload_tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(task);
    }

    /// Lets an in-process request from a source the operator configured (a
    /// watched directory: whoever may write there may load) through the
    /// write token: sets `Authorization: Bearer <--api-token>` when one is
    /// set, so the request passes every other edge check as a client's
    /// would. A bridge of a remote API (gRPC) forwards its caller's
    /// credentials instead and never calls this.
    pub fn authorize_in_process(&self, headers: &mut hyper::HeaderMap) {
        if let Some(mut value) = self.inner.edge.write_authorization() {
            value.set_sensitive(true);
            headers.insert(hyper::header::AUTHORIZATION, value);
        }
    }

    /// How long a streamed upload may wait for its body without appending a
    /// record (`--upload-idle-timeout`): a live upload never leaves its
    /// topic quiet for longer.
    pub fn upload_idle_timeout(&self) -> Duration {
        self.inner.upload_idle
    }

    /// The topic of the workload named `workload` ([`Intake::NAME`] or [`Upload::NAME`]).
    fn route_named(&self, workload: &str) -> Result<&dyn Route, AppendError> {
        self.inner.routes.iter().find(|r| r.name() == workload).map(|r| r.as_ref()).ok_or(AppendError::NoSuchWorkload)
    }

    /// Appends an unkeyed record to `partition` of the topic of `workload`
    /// and waits for its acknowledgement: for a workload's background task
    /// (closing what a dead instance left open, say).
    ///
    /// # Errors
    /// As [`Append::deliver_to`]; [`AppendError::NoSuchWorkload`] for a name not registered.
    pub async fn append_to(&self, workload: &str, partition: i32, payload: Vec<u8>) -> Result<Delivered, AppendError> {
        let topic = self.route_named(workload)?.topic();
        let partitions = topic.agreed_partitions.load(Ordering::Relaxed);
        Appender::new(&topic.publisher, partitions, 1).deliver_to(partition, payload).await
    }

    /// The partition count agreed for the topic of `workload` (0 while not known yet).
    pub fn partitions_of(&self, workload: &str) -> i32 {
        self.route_named(workload).map_or(0, |r| r.topic().agreed_partitions.load(Ordering::Relaxed))
    }

    /// Follows every partition of the topic of `workload` from its first
    /// record appended at or after `since_ms` (log-append time).
    ///
    /// # Errors
    /// A workload not registered, the consumer not created, or the broker
    /// not answering for its partitions and offsets (retry later).
    pub async fn tail(&self, workload: &str, since_ms: i64) -> anyhow::Result<Tail> {
        let topic = self.route_named(workload).map_err(anyhow::Error::from)?.topic().spec.name.clone();
        Tail::start(&self.inner.kafka, topic, since_ms).await
    }

    async fn post<B>(&self, route: &dyn Route, req: Request<B>) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let edge = &self.inner.edge;
        if route.streams() {
            return self.post_stream(route, req).await;
        }
        // A workload whose body is its input refuses an oversized one in its own words, after the token check.
        let refusal = if route.reads_body() { edge.access_refusal(&req, true) } else { edge.refusal(&req, true) };
        if let Some(refused) = refusal {
            return refused;
        }
        let answer = async {
            let limit_bytes = edge.max_body_bytes().max(route.min_body_limit());
            let declared_too_large = common::engine::edge::Edge::declares_body_over(&req, limit_bytes);
            let (parts, body) = req.into_parts();
            let content_type = parts.headers.get(CONTENT_TYPE).map(|v| v.to_str().unwrap_or(""));
            let body = match (route.reads_body(), declared_too_large) {
                (false, _) => Ok(Bytes::new()),
                (true, true) => Err(BodyError::TooLarge { limit_bytes }),
                (true, false) => read_body(body, limit_bytes).await,
            };
            let request =
                lane::Request { method: &parts.method, path: parts.uri.path(), query: parts.uri.query(), content_type };
            route.post(&self.inner, request, body.as_deref().map_err(|e| *e)).await
        };
        edge.within_time_limit(answer, TOO_LONG).await
    }
}

/// Answers a streamed upload: the edge's access checks (no size limit, no
/// time limit: a file of any size streams at the client's pace), then the
/// body fed through a bounded channel to the workload while it appends.
impl CommandApp {
    async fn post_stream<B>(&self, route: &dyn Route, req: Request<B>) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if let Some(refused) = self.inner.edge.access_refusal(&req, true) {
            return refused;
        }
        let (parts, body) = req.into_parts();
        let content_type = parts.headers.get(CONTENT_TYPE).map(|v| v.to_str().unwrap_or(""));
        let request =
            lane::Request { method: &parts.method, path: parts.uri.path(), query: parts.uri.query(), content_type };
        let (tx, rx) = tokio::sync::mpsc::channel(upload::BUFFERED_CHUNKS);
        // Both in this task: the pump stops once the workload stops reading (the channel closes).
        let (answer, ()) = tokio::join!(
            route.post_stream(&self.inner, request, upload::ChannelChunks::new(rx)),
            upload::pump(body, tx)
        );
        answer
    }
}

/// Joins methods for 405's `Allow` header; once per workload at start-up, so
/// the joined text lives as long as the service.
fn join(methods: &[Method]) -> &'static str {
    Box::leak(methods.iter().map(Method::as_str).collect::<Vec<_>>().join(", ").into_boxed_str())
}

/// Reads a whole body of at most `limit_bytes`.
async fn read_body<B>(body: B, limit_bytes: u64) -> Result<Bytes, BodyError>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::BodyExt;
    let limit = usize::try_from(limit_bytes).unwrap_or(usize::MAX);
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge { limit_bytes }),
        Err(e) => {
            tracing::debug!(error = %e, "request body unreadable");
            Err(BodyError::Unreadable)
        }
    }
}

/// Serves until `token` is cancelled, then drains requests and flushes every producer.
///
/// # Errors
/// When a producer hit a fatal error (the process should restart) or could not flush.
pub async fn run(
    app: CommandApp,
    listener: TcpListener,
    limits: ServerLimits,
    token: CancellationToken,
    drain: Duration,
) -> anyhow::Result<()> {
    let fatal = app.inner.fatal.clone();
    let stop = token.child_token();
    spawn_critical(&app.inner.tasks, &stop, "gauges", gauges(app.clone(), stop.clone()));
    let listeners = std::mem::take(&mut *app.inner.listeners.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    let served = http::spawn_listeners(listeners, &stop).await?;
    let workload_tasks =
        std::mem::take(&mut *app.inner.workload_tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    // A failed task cancels `fatal`: the gauges task then stops the service, which exits non-zero.
    let running = common::engine::task::spawn_tasks(workload_tasks, &stop, &fatal);
    let handler_app = app.clone();
    let handler = move |req| {
        let app = handler_app.clone();
        async move { app.handle(req).await }
    };
    tracing::info!(addr = %listener.local_addr()?, "command service listening");
    http::serve(listener, handler, limits, stop.clone(), drain).await;
    stop.cancel();
    for task in served {
        let _ = tokio::time::timeout(drain, task).await;
    }
    // Before the producers flush: a task may be appending (a file it streams in).
    let late = common::engine::task::join_bounded(running, drain).await;
    if late > 0 {
        tracing::warn!(tasks = late, "workload tasks still running after the drain period; leaving them");
    }
    app.inner.background.cancel();
    common::engine::shutdown::drain(app.inner.tasks.clone(), drain).await?;
    for route in &app.inner.routes {
        let publisher = &route.topic().publisher;
        publisher.flush(drain).with_context(|| format!("flushing the producer of {}", publisher.topic()))?;
    }
    if fatal.is_cancelled() {
        anyhow::bail!("a producer hit a fatal error, or a background task failed");
    }
    tracing::info!("command service stopped");
    Ok(())
}

/// Updates the gauges every second until `stop`; a fatal producer error stops the service.
async fn gauges(app: CommandApp, stop: CancellationToken) -> anyhow::Result<()> {
    let fatal = app.inner.fatal.clone();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = fatal.cancelled() => { stop.cancel(); break; }
            _ = tick.tick() => {
                for route in &app.inner.routes {
                    let queued = route.topic().publisher.queue_len();
                    metrics::gauge!(m::PRODUCER_QUEUE, "workload" => route.name()).set(f64::from(queued));
                }
                metrics::gauge!(m::IN_FLIGHT).set(app.inner.in_flight_capacity_used() as f64);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use clap::Parser;
    use common::engine::kafka::TopicSpec;

    use super::*;
    use crate::engine::{Input, Reject, RejectStatus};

    /// Never happens: the test workloads accept every request.
    #[derive(Debug, thiserror::Error)]
    #[error("never")]
    struct Never;

    impl Reject for Never {
        fn label(&self) -> &'static str {
            "never"
        }
        fn status(&self) -> RejectStatus {
            RejectStatus::BadRequest
        }
    }

    /// Implements an accept-anything [`Intake`] on `$name`, on `$route`, with the topic in its field.
    macro_rules! intake {
        ($name:ident, $route:literal) => {
            struct $name {
                topic: &'static str,
            }
            impl Intake for $name {
                const NAME: &'static str = stringify!($name);
                const ROUTE: &'static str = $route;
                const ACCEPTED: StatusCode = StatusCode::OK;
                type Event = ();
                type Reject = Never;
                fn topic(&self) -> TopicSpec {
                    TopicSpec { name: self.topic.into(), partitions: 1, configs: vec![] }
                }
                fn parse(&self, _: &Input<'_>, _: i64) -> Result<(), Never> {
                    Ok(())
                }
                fn key<'e>(&self, _: &'e ()) -> Cow<'e, [u8]> {
                    b"".as_slice().into()
                }
                fn encode(&self, _: &()) -> Vec<u8> {
                    Vec::new()
                }
            }
        };
    }
    intake!(Sums, "/sum");
    intake!(Other, "/other");
    intake!(Health, "/health");

    /// Registering creates producers, which connect lazily: no broker needed.
    #[test]
    fn a_route_or_topic_can_be_registered_once_and_never_over_the_operational_routes() {
        let cfg = Config::parse_from(["command", "--create-topics", "false"]);
        let engine = || Engine::new(&cfg, common::engine::telemetry::prometheus(), || 0).expect("engine");
        let twice = engine().register(Sums { topic: "a" }).expect("once").register(Sums { topic: "b" });
        assert!(twice.is_err(), "the same route twice");
        let shared_topic = engine().register(Sums { topic: "a" }).expect("once").register(Other { topic: "a" });
        assert!(shared_topic.is_err(), "the same topic twice");
        assert!(engine().register(Health { topic: "health" }).is_err(), "an operational route");
    }
}
