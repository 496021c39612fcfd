//! The HTTP edge of the command service: routing, and the one place where
//! outcomes become status codes.

use std::sync::Arc;
use std::time::Instant;

use common::analytics::request::parse_post;
use common::analytics::{ClickEvent, EventId, RejectReason};
use common::engine::http::{self, Body, OpsRoutes};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::Semaphore;

use crate::metrics as m;
use crate::publisher::{EventPublisher, PublishError};

/// Everything a request needs; cheap to clone into each connection.
#[derive(Clone)]
pub struct CommandApp {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub publisher: EventPublisher,
    pub horizon: common::analytics::Horizon,
    pub clock: fn() -> i64,
    pub in_flight: Semaphore,
    pub max_in_flight: usize,
    pub ops: OpsRoutes,
    pub edge: common::engine::edge::Edge,
    /// Cancelled when the producer hits a fatal error: the process restarts.
    pub fatal: common::engine::shutdown::CancellationToken,
    /// Stops the background start-up checks when the service stops.
    pub background: common::engine::shutdown::CancellationToken,
    /// The service's background tasks (start-up checks, gauges), drained on the way out.
    pub tasks: common::engine::shutdown::TaskTracker,
    /// Partitions of the events topic as agreed for the deployment; 0 until known.
    pub partitions: Arc<std::sync::atomic::AtomicI32>,
}

/// A POST cut short may have handed its event to the producer already.
const TOO_LONG: &str = "outcome unknown: request took too long; retry with the same id";

/// The outcome of one `POST /analytics`.
#[derive(Debug)]
enum Outcome {
    Accepted,
    Rejected(RejectReason),
    Unavailable(PublishError),
    Overloaded,
    /// Written to a partition its key does not map to under the agreed count:
    /// the processor will skip it, so it is not counted.
    Misrouted {
        partition: i32,
        expected: i32,
    },
}

impl CommandApp {
    /// Whether a delivered event will be counted: the processor's rules, applied here.
    fn judge(&self, event: &ClickEvent, delivery: crate::publisher::Delivered) -> Outcome {
        let agreed = self.inner.partitions.load(std::sync::atomic::Ordering::Relaxed);
        if agreed > 0 {
            let expected = common::engine::kafka::partition_for(event.user.as_str().as_bytes(), agreed);
            if delivery.partition != expected {
                return Outcome::Misrouted { partition: delivery.partition, expected };
            }
        }
        // The processor decides on the broker's clock whether the hour is
        // still open; answer by the same rule, so a 2xx is always counted.
        // (The record stays in the log, and the processor skips it the same way.)
        match delivery.appended_ms {
            Some(appended_ms) if !self.inner.horizon.counted_at(event.hour(), appended_ms) => {
                Outcome::Rejected(RejectReason::ClosedOnArrival { timestamp_ms: event.timestamp_ms, appended_ms })
            }
            _ => Outcome::Accepted,
        }
    }

    /// Routes one request. Generic over the body: the API reads only the method, path and query.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Body> {
        let started = Instant::now();
        let (route, resp) = match req.uri().path() {
            "/analytics" if req.method() == Method::POST => match self.inner.edge.refusal(&req, true) {
                None => ("/analytics", self.inner.edge.within_time_limit(self.post(req.uri().query()), TOO_LONG).await),
                Some(refused) => ("/analytics", refused),
            },
            "/analytics" => ("/analytics", http::method_not_allowed("POST")),
            path => match self.inner.ops.handle(req.method(), path).await {
                Some(r) => ("ops", r),
                None => ("other", http::error(StatusCode::NOT_FOUND, "not found; POST /analytics records an event")),
            },
        };
        http::record_request("command", route, resp.status(), started);
        resp
    }

    async fn post(&self, query: Option<&str>) -> Response<Body> {
        let outcome = self.accept(query).await;
        match outcome {
            Outcome::Accepted => {
                metrics::counter!(m::EVENTS_ACCEPTED).increment(1);
                http::no_content()
            }
            Outcome::Rejected(reason) => {
                metrics::counter!(m::EVENTS_REJECTED, "reason" => reason.label()).increment(1);
                let status = if reason.is_outside_horizon() {
                    StatusCode::UNPROCESSABLE_ENTITY
                } else {
                    StatusCode::BAD_REQUEST
                };
                http::error(status, reason)
            }
            Outcome::Unavailable(e) => {
                metrics::counter!(m::EVENTS_UNAVAILABLE, "reason" => e.label()).increment(1);
                tracing::warn!(error = %e, "event not accepted");
                if e.is_fatal() {
                    self.inner.fatal.cancel();
                }
                if e.outcome_known() {
                    http::unavailable(format!("event not recorded: {e}; retry later"), 1)
                } else {
                    // It may be in the log already: a blind retry could count it twice.
                    http::unavailable(format!("outcome unknown: {e}; retry with the same id"), 1)
                }
            }
            Outcome::Misrouted { partition, expected } => {
                metrics::counter!(m::EVENTS_UNAVAILABLE, "reason" => "partition_count_changed").increment(1);
                tracing::error!(
                    partition,
                    expected,
                    "the events topic's partition count changed under the deployment; stopping"
                );
                self.inner.fatal.cancel();
                http::unavailable(
                    "event not recorded: the events topic's partitions changed; it will not be counted; retry later",
                    1,
                )
            }
            Outcome::Overloaded => {
                metrics::counter!(m::EVENTS_UNAVAILABLE, "reason" => "overloaded").increment(1);
                http::unavailable("event not recorded: too many requests in flight; retry later", 1)
            }
        }
    }

    async fn accept(&self, query: Option<&str>) -> Outcome {
        let req = match parse_post(query) {
            Ok(r) => r,
            Err(reason) => return Outcome::Rejected(reason),
        };
        let now = (self.inner.clock)();
        if let Err(reason) = self.inner.horizon.check(req.timestamp_ms, now) {
            return Outcome::Rejected(reason);
        }
        let Ok(_permit) = self.inner.in_flight.try_acquire() else {
            return Outcome::Overloaded;
        };
        let event = ClickEvent {
            timestamp_ms: req.timestamp_ms,
            user: req.user,
            kind: req.kind,
            accepted_at_ms: now,
            id: req.id.map(EventId::into_string),
        };
        match self.inner.publisher.publish(&event).await {
            // The processor decides on the broker's clock whether the hour is
            // still open; answer by the same rule, so a 2xx is always counted.
            // (The record stays in the log, and the processor skips it the same way.)
            Ok(delivery) => self.judge(&event, delivery),
            Err(e) => Outcome::Unavailable(e),
        }
    }
}
