//! The HTTP edge of the query service: the routing table, the status codes.
//!
//! Each workload registers its routes; here every one of them gets the same
//! edge checks (body size, rate limit, read token), CORS, the
//! read-your-writes wait (`after`, `wait_ms`), the time limit, request
//! metrics and error-to-status mapping.

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::engine::edge::Cors;
use common::engine::http::{self, Body, OpsRoutes};
use hyper::header::ORIGIN;
use hyper::{Method, Request, Response, StatusCode};

use super::reader::{fresh_as, Fresh};
use super::wait::{split_query, After, ProgressWait, Reflected};
use super::{Changes, QueryError, Route, Stores};
use crate::metrics as m;

#[derive(Clone)]
pub struct QueryApp {
    routes: Arc<[Route]>,
    /// The answer to an unknown path, listing the routes.
    not_found: Arc<str>,
    ops: OpsRoutes,
    edge: common::engine::edge::Edge,
    cors: Cors,
    progress: ProgressWait,
    changes: Changes,
    /// The workloads' own listeners (gRPC, say), served by `query::run`.
    listeners: Arc<std::sync::Mutex<Vec<http::Listener>>>,
}

impl QueryApp {
    /// The routes, served behind `edge`, reading `stores` (for `after=` waits and live streams).
    pub fn new(routes: Vec<Route>, ops: OpsRoutes, edge: common::engine::edge::Edge, stores: &Stores) -> Self {
        let usage: Vec<&str> = routes.iter().map(|r| r.usage).collect();
        let not_found = format!("not found; {} answers", usage.join(", "));
        QueryApp {
            routes: routes.into(),
            not_found: not_found.into(),
            ops,
            edge,
            cors: Cors::default(),
            progress: stores.progress(),
            changes: stores.changes().clone(),
            listeners: Arc::default(),
        }
    }

    /// Adds a workload's own listener (its gRPC API, say), served by `query::run`.
    pub fn serve_also(&self, listener: http::Listener) {
        self.listeners.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(listener);
    }

    /// The listeners added, taken once by `query::run`.
    pub fn take_listeners(&self) -> Vec<http::Listener> {
        std::mem::take(&mut *self.listeners.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// The same app, answering browsers of the origins `cors` allows.
    pub fn with_cors(mut self, cors: Cors) -> Self {
        self.cors = cors;
        self
    }

    /// Generic over the body: the API reads only the method, path, headers and query.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Body> {
        let started = Instant::now();
        let path = req.uri().path();
        let (route, resp) = match self.routes.iter().find(|r| r.matches(path)) {
            Some(route) => {
                let mut resp = match req.method() {
                    &Method::GET | &Method::HEAD => match self.edge.refusal(&req, false) {
                        None => self.answer(route, path, req.uri().query()).await,
                        Some(refused) => refused,
                    },
                    &Method::OPTIONS if self.cors.enabled() => match self.edge.rate_refusal(&req) {
                        None => self.cors.preflight(&req),
                        Some(refused) => refused,
                    },
                    _ => http::method_not_allowed("GET"),
                };
                self.cors.decorate(req.headers().get(ORIGIN), &mut resp);
                (route.path, resp)
            }
            None => match self.ops.handle(req.method(), req.uri().path()).await {
                Some(r) => ("ops", r),
                None => ("other", http::error(StatusCode::NOT_FOUND, &*self.not_found)),
            },
        };
        http::record_request("query", route, resp.status(), started);
        resp
    }

    /// A route's answer: after the write named by `after=` is reflected, if
    /// any, then within the time limit.
    async fn answer(&self, route: &Route, path: &str, query: Option<&str>) -> Response<Body> {
        let (after, query) = match split_query(query) {
            Ok(split) => split,
            Err(e) => return respond(Err(QueryError::Rejected { label: e.label(), message: e.to_string() })),
        };
        let call = |query: Option<String>| {
            let answer = (route.handler)(path, query.as_deref());
            self.edge.within_time_limit(async { respond(answer.await) }, "request took too long; retry later")
        };
        let Some(After { token, wait }) = after else { return call(query).await };
        // Held until the answer is computed: the wait and the reads after it.
        let Some(_place) = self.progress.admit() else {
            return respond(Err(QueryError::Busy {
                label: "too_many_waits",
                message: "too many requests waiting for their writes; retry later".into(),
            }));
        };
        let waiting = Instant::now();
        // The wait is outside the request time limit: the client chose it (at most 30 s).
        let reflected = self.progress.wait(&token, wait).await;
        let outcome = if reflected.is_some() { "reflected" } else { "timeout" };
        metrics::histogram!(m::TOKEN_WAIT_DURATION, "outcome" => outcome).record(waiting.elapsed().as_secs_f64());
        let Some(seen) = reflected else {
            return http::unavailable(
                format!("the write is not reflected yet after {} ms; retry later", wait.as_millis()),
                1,
            );
        };
        // Copies held in process from before this moment may predate the write;
        // seen in PostgreSQL only, Redis' copies may too.
        let fresh = Fresh { since: Instant::now(), from_postgres: seen == Reflected::InPostgres };
        fresh_as(fresh, call(query)).await
    }

    /// Ends the live streams (their connections can then close) and the change
    /// listener, and waits at most `limit` for them.
    pub async fn shut_down(&self, limit: Duration) {
        self.changes.shut_down(limit).await;
    }

    /// Ends the live streams at once (the first step of a shutdown).
    pub fn end_streams(&self) {
        self.changes.stopping().cancel();
    }
}

/// Maps a route's error to its response: the one place that does.
fn respond(answer: Result<Response<Body>, QueryError>) -> Response<Body> {
    match answer {
        Ok(resp) => resp,
        Err(QueryError::Rejected { label, message }) => {
            metrics::counter!(m::REJECTED, "reason" => label).increment(1);
            http::error(StatusCode::BAD_REQUEST, message)
        }
        Err(QueryError::NotFound(message)) => http::error(StatusCode::NOT_FOUND, message),
        Err(QueryError::Busy { label, message }) => {
            metrics::counter!(m::REJECTED, "reason" => label).increment(1);
            http::unavailable(message, 1)
        }
        Err(QueryError::Unavailable(e)) => {
            // The detail (PostgreSQL's own text) stays in the log, not in the answer.
            tracing::warn!(error = %e, "query failed");
            http::unavailable("read models unavailable; retry later", 5)
        }
    }
}
