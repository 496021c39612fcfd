//! The HTTP edge of the query service: the routing table, the status codes.
//!
//! Each workload registers its routes; here every one of them gets the same
//! edge checks (body size, rate limit), time limit, request metrics and
//! error-to-status mapping.

use std::sync::Arc;
use std::time::Instant;

use common::engine::http::{self, Body, OpsRoutes};
use hyper::{Method, Request, Response, StatusCode};

use super::{QueryError, Route};
use crate::metrics as m;

#[derive(Clone)]
pub struct QueryApp {
    routes: Arc<[Route]>,
    /// The answer to an unknown path, listing the routes.
    not_found: Arc<str>,
    ops: OpsRoutes,
    edge: common::engine::edge::Edge,
}

impl QueryApp {
    pub fn new(routes: Vec<Route>, ops: OpsRoutes, edge: common::engine::edge::Edge) -> Self {
        let usage: Vec<&str> = routes.iter().map(|r| r.usage).collect();
        let not_found = format!("not found; {} answers", usage.join(", "));
        QueryApp { routes: routes.into(), not_found: not_found.into(), ops, edge }
    }

    /// Generic over the body: the API reads only the method, path and query.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Body> {
        let started = Instant::now();
        let path = req.uri().path();
        let (route, resp) = match self.routes.iter().find(|r| r.matches(path)) {
            Some(route) if req.method() == Method::GET || req.method() == Method::HEAD => {
                let resp = match self.edge.refusal(&req, false) {
                    None => {
                        let answer = (route.handler)(req.uri().path(), req.uri().query());
                        self.edge
                            .within_time_limit(async { respond(answer.await) }, "request took too long; retry later")
                            .await
                    }
                    Some(refused) => refused,
                };
                (route.path, resp)
            }
            Some(route) => (route.path, http::method_not_allowed("GET")),
            None => match self.ops.handle(req.method(), req.uri().path()).await {
                Some(r) => ("ops", r),
                None => ("other", http::error(StatusCode::NOT_FOUND, &*self.not_found)),
            },
        };
        http::record_request("query", route, resp.status(), started);
        resp
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
        Err(QueryError::Unavailable(e)) => {
            // The detail (PostgreSQL's own text) stays in the log, not in the answer.
            tracing::warn!(error = %e, "query failed");
            http::unavailable("read models unavailable; retry later", 5)
        }
    }
}
