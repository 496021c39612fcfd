//! The hourly analytics workload in the query service:
//! - `GET /analytics?timestamp=<ms>` → the UTC hour of the timestamp → its
//!   totals (zeros if no store has them) as CSV, read through the engine's
//!   [`Reader`] (in process, Redis, PostgreSQL);
//! - `GET /analytics/timeseries` and `GET /analytics/aggregate` ([`range_routes`]):
//!   time ranges as JSON, read from PostgreSQL (the record) in one or two
//!   queries; see [`crate::range`] for the rules;
//! - `GET /analytics/live`: the current hour's and today's counts, pushed as
//!   Server-Sent Events.

use std::sync::Arc;

use crate::range::{self, Interval, RangeReject, TimeseriesRequest, UniqueUsers};
use crate::read_model::ranges;
use crate::request::parse_get;
use crate::time::DayStart;
use crate::{HourCounts, HourStart};
use common::engine::http::{self, Body};
use common::engine::pg::PgError;
use deadpool_postgres::Pool;
use hyper::{Response, StatusCode};

use ::query::engine::{QueryError, QueryWorkload, ReadError, Reader, Route};

/// The hourly analytics read model.
pub struct Analytics;

impl QueryWorkload for Analytics {
    const NAME: &'static str = "analytics";
    type Row = HourCounts;

    fn routes(reader: Reader<Self>) -> Vec<Route> {
        let hourly = reader.clone();
        let handler = move |_: &str, query: Option<&str>| {
            let parsed = parse_get(query);
            let reader = hourly.clone();
            Box::pin(async move { get(&reader, parsed).await }) as ::query::engine::Answer
        };
        let live = live_route(&reader);
        vec![Route { path: "/analytics", usage: "GET /analytics?timestamp=<ms>", handler: Arc::new(handler) }, live]
    }
}

async fn get(
    reader: &Reader<Analytics>,
    parsed: Result<i64, crate::RejectReason>,
) -> Result<Response<Body>, QueryError> {
    let ts = parsed.map_err(|reason| QueryError::Rejected { label: reason.label(), message: reason.to_string() })?;
    let totals = reader.read(&HourStart::of(ts)).await?;
    Ok(http::text(StatusCode::OK, totals.row.to_csv()))
}

/// The time-range routes, reading PostgreSQL through `pool`: the totals of a
/// range are never cached (Redis holds single hours only), and PostgreSQL
/// keeps them for ever.
pub fn range_routes(pool: Pool) -> Vec<Route> {
    let timeseries_pool = pool.clone();
    let timeseries = move |_: &str, query: Option<&str>| {
        let parsed = range::parse_timeseries(query);
        let pool = timeseries_pool.clone();
        Box::pin(async move { get_timeseries(&pool, parsed).await }) as ::query::engine::Answer
    };
    let aggregate = move |_: &str, query: Option<&str>| {
        let parsed = range::parse_aggregate(query);
        let pool = pool.clone();
        Box::pin(async move { get_aggregate(&pool, parsed).await }) as ::query::engine::Answer
    };
    vec![
        Route {
            path: "/analytics/timeseries",
            usage: "GET /analytics/timeseries?from=<ms>&to=<ms>&interval=hour|day",
            handler: Arc::new(timeseries),
        },
        Route {
            path: "/analytics/aggregate",
            usage: "GET /analytics/aggregate?from=<ms>&to=<ms>",
            handler: Arc::new(aggregate),
        },
    ]
}

fn rejected(reason: RangeReject) -> QueryError {
    QueryError::Rejected { label: reason.label(), message: reason.to_string() }
}

fn unavailable(e: PgError) -> QueryError {
    QueryError::Unavailable(ReadError::from(e))
}

/// A `200 application/json` answer.
fn json(body: &impl serde::Serialize) -> Response<Body> {
    http::json(StatusCode::OK, serde_json::to_vec(body).expect("answers serialize: plain numbers and strings"))
}

async fn client(pool: &Pool) -> Result<deadpool_postgres::Object, QueryError> {
    pool.get().await.map_err(|e| unavailable(e.into()))
}

async fn get_timeseries(
    pool: &Pool,
    parsed: Result<TimeseriesRequest, RangeReject>,
) -> Result<Response<Body>, QueryError> {
    let req = parsed.map_err(rejected)?;
    let (from, to) = req.range.covering(req.interval);
    let client = client(pool).await?;
    let stored = match req.interval {
        Interval::Hour => ranges::read_hours(&client, from, to).await,
        Interval::Day => ranges::read_days(&client, from, to).await,
    }
    .map_err(unavailable)?;
    Ok(json(&range::timeseries(req, &stored)))
}

async fn get_aggregate(pool: &Pool, parsed: Result<range::Range, RangeReject>) -> Result<Response<Body>, QueryError> {
    let range = parsed.map_err(rejected)?;
    let (from, to) = (range.from_ms(), range.to_ms());
    let mut client = client(pool).await?;
    let sums = ranges::read_sums(&client, from, to).await.map_err(unavailable)?;
    let (unique_users, exact) = match range.unique_users() {
        // One hour: the sum over one hour is that hour's exact total.
        UniqueUsers::Hour(_) => (sums.counts.unique_users, true),
        UniqueUsers::Day(day) => (ranges::read_day_users(&client, day).await.map_err(unavailable)?, true),
        UniqueUsers::Estimated => {
            let sketch = ranges::merge_sketches(&mut client, from, to).await.map_err(unavailable)?;
            (range::bounded_estimate(sketch.estimate(), sums.busiest_hour_users, sums.counts.unique_users), false)
        }
    };
    let counts = HourCounts { unique_users, ..sums.counts };
    Ok(json(&range::Aggregate::new(range, counts, exact)))
}

/// `GET /analytics/live`: Server-Sent Events, each `data:` a [`LiveView`] in
/// JSON, pushed by the engine whenever the hourly read model changes.
fn live_route(reader: &Reader<Analytics>) -> Route {
    let feed = reader.live(|reader| async move { render_live(&reader, common::now_ms()).await });
    Route {
        path: "/analytics/live",
        usage: "GET /analytics/live (Server-Sent Events)",
        handler: Arc::new(move |_, _| feed.answer()),
    }
}

/// What a live stream shows: the current UTC hour's counts and today's.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LiveView {
    pub hour: Counts,
    pub today: DayCounts,
}

/// The counts of one UTC hour; `start` in ms since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub start: i64,
    /// Written as fields of its own (`unique_users`, then one per count).
    #[serde(flatten)]
    pub counts: HourCounts,
}

/// The counts of one UTC day so far: event counts summed over its hours,
/// unique users exact (the day's distinct users).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DayCounts {
    pub start: i64,
    /// Written as fields of its own (`unique_users`, then one per count).
    #[serde(flatten)]
    pub counts: HourCounts,
    pub unique_users_exact: bool,
}

async fn render_live(reader: &Reader<Analytics>, now_ms: i64) -> Result<String, QueryError> {
    let hour = HourStart::of(now_ms);
    let counts = reader.read(&hour).await?.row;
    let view = LiveView { hour: Counts { start: hour.start_ms(), counts }, today: today(reader, now_ms).await? };
    Ok(serde_json::to_string(&view).expect("a LiveView serializes"))
}

/// Today's counts (the UTC day of `now_ms`, up to now): clicks and
/// impressions summed over the day's hours, unique users exact from the
/// day's row (the processor keeps a user set per day and partition).
///
/// # Errors
/// [`ReadError`](::query::engine::ReadError) when an hour or the day cannot be read.
pub async fn today(reader: &Reader<Analytics>, now_ms: i64) -> Result<DayCounts, ::query::engine::ReadError> {
    let day = DayStart::of(now_ms);
    let hours: Vec<HourStart> = (day.start_ms()..=now_ms).step_by(3_600_000).map(HourStart::of).collect();
    let rows = futures::future::try_join_all(hours.iter().map(|h| reader.read(h))).await?;
    let client = reader.pool().get().await.map_err(PgError::from)?;
    let unique_users = ranges::read_day_users(&client, day).await?;
    let summed = rows.iter().fold(HourCounts::default(), |acc, r| acc.merge(r.row));
    Ok(DayCounts { start: day.start_ms(), counts: HourCounts { unique_users, ..summed }, unique_users_exact: true })
}
