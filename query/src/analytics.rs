//! The hourly analytics workload in the query service:
//! `GET /analytics?timestamp=<ms>` → the UTC hour of the timestamp → its
//! totals (zeros if no store has them) as CSV.

use std::sync::Arc;

use common::analytics::read_model::{pg, HourTotals};
use common::analytics::request::parse_get;
use common::analytics::{HourCounts, HourStart};
use common::engine::http::{self, Body};
use common::engine::pg::PgError;
use deadpool_postgres::Client;
use hyper::{Response, StatusCode};

use crate::engine::{QueryError, QueryWorkload, Reader, Route};

/// The hourly analytics read model.
pub struct Analytics;

impl QueryWorkload for Analytics {
    const NAME: &'static str = "analytics";
    type Row = HourCounts;

    async fn read(&self, client: &Client, hour: &HourStart) -> Result<Option<HourTotals>, PgError> {
        pg::read_hour(client, *hour).await
    }

    fn routes(reader: Reader<Self>) -> Vec<Route> {
        let handler = move |_: &str, query: Option<&str>| {
            let parsed = parse_get(query);
            let reader = reader.clone();
            Box::pin(async move { get(&reader, parsed).await }) as crate::engine::Answer
        };
        vec![Route { path: "/analytics", usage: "GET /analytics?timestamp=<ms>", handler: Arc::new(handler) }]
    }
}

async fn get(
    reader: &Reader<Analytics>,
    parsed: Result<i64, common::analytics::RejectReason>,
) -> Result<Response<Body>, QueryError> {
    let ts = parsed.map_err(|reason| QueryError::Rejected { label: reason.label(), message: reason.to_string() })?;
    let totals = reader.read(&HourStart::of(ts)).await?;
    Ok(http::text(StatusCode::OK, totals.row.to_csv()))
}
