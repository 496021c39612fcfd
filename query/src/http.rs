//! The HTTP edge of the query service: routing and status codes.

use std::time::Instant;

use common::analytics::request::parse_get;
use common::analytics::HourStart;
use common::engine::http::{self, Body, OpsRoutes};
use hyper::{Method, Request, Response, StatusCode};

use crate::metrics as m;
use crate::reader::HourReader;

#[derive(Clone)]
pub struct QueryApp {
    pub(crate) reader: HourReader,
    pub(crate) ops: OpsRoutes,
    pub(crate) edge: common::engine::edge::Edge,
}

impl QueryApp {
    /// Generic over the body: the API reads only the method, path and query.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Body> {
        let started = Instant::now();
        let (route, resp) = match req.uri().path() {
            "/analytics" if req.method() == Method::GET || req.method() == Method::HEAD => {
                match self.edge.refusal(&req, false) {
                    None => (
                        "/analytics",
                        self.edge
                            .within_time_limit(self.get(req.uri().query()), "request took too long; retry later")
                            .await,
                    ),
                    Some(refused) => ("/analytics", refused),
                }
            }
            "/analytics" => ("/analytics", http::method_not_allowed("GET")),
            path => match self.ops.handle(req.method(), path).await {
                Some(r) => ("ops", r),
                None => {
                    ("other", http::error(StatusCode::NOT_FOUND, "not found; GET /analytics?timestamp=<ms> answers"))
                }
            },
        };
        http::record_request("query", route, resp.status(), started);
        resp
    }

    async fn get(&self, query: Option<&str>) -> Response<Body> {
        let ts = match parse_get(query) {
            Ok(ts) => ts,
            Err(reason) => {
                metrics::counter!(m::REJECTED, "reason" => reason.label()).increment(1);
                return http::error(StatusCode::BAD_REQUEST, reason);
            }
        };
        match self.reader.read(HourStart::of(ts)).await {
            Ok(counts) => http::text(StatusCode::OK, counts.to_csv()),
            Err(e) => {
                // The detail (PostgreSQL's own text) stays in the log, not in the answer.
                tracing::warn!(error = %e, "query failed");
                http::unavailable("read models unavailable; retry later", 5)
            }
        }
    }
}
