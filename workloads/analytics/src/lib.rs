//! The hourly web-analytics workload, in every role.
//!
//! [`Analytics`] is the descriptor ([`Workload`]); the engine of each service
//! runs it through its role, one module each:
//!
//! - [`command`]: `POST /analytics` (an `Intake`): malformed → 400, outside
//!   the horizon or closed on arrival → 422, else 204.
//! - [`processor`]: exact counts per (hour, partition) and unique users per
//!   (day, partition) (an `Aggregation`).
//! - [`materializer`]: the hour totals, sketches and day totals (a `SinkWorkload`).
//! - [`query`]: `GET /analytics`, its ranges and live stream (a
//!   `QueryWorkload`), and [`dashboard`], the page at `/`.
//!
//! Its pure domain: everything but [`read_model::pg`] and the role modules is deterministic and free of tokio,
//! rdkafka, redis and postgres, so the same rules run in the command
//! (validation), the processor (bucketing and aggregation) and the query
//! (hour selection), and property tests can exercise them directly.
//!
//! - [`counts`]: the event kinds and their counts: the one definition every
//!   shape of a count (API name, Avro symbol and field, column, Redis field) comes from.
//! - [`time`]: event time and the UTC hour it falls into.
//! - [`event`]: the validated event and the reasons an event is rejected.
//! - [`request`]: strict parsing of the HTTP query strings of both APIs.
//! - [`user_set`]: the compact exact set of hashed user ids.
//! - [`bucket`]: per-(hour, partition) state and the absolute aggregates it yields.
//! - [`sketch`]: the mergeable HyperLogLog of user hashes that answers
//!   unique users over ranges no exact set covers.
//! - [`range`]: the time ranges of the read API (timeseries and aggregate):
//!   parsing, buckets, and when unique users are exact.
//! - [`read_model`]: the read-model tables' declarations (the engine
//!   generates their statements), the hour totals as a cached row, the
//!   batch write ([`read_model::pg`]) and the range reads ([`read_model::ranges`]).

pub mod bucket;
pub mod command;
pub mod config;
pub mod counts;
pub mod dashboard;
pub mod event;
pub mod materializer;
pub mod processor;
pub mod query;
pub mod range;
pub mod read_model;
pub mod request;
#[cfg(test)]
mod sim;
pub mod sketch;
pub mod time;
pub mod user_set;
pub mod wire;

use common::engine::kafka::TopicSpec;
use common::engine::pg::{Migration, PgError, PROCESSOR_TABLES, READ_MODEL_TABLES};
use common::engine::workload::{Service, TopicArgs, Topics, Workload};

pub use bucket::{HourBucket, HourCounts, PartitionWindow};
pub use event::{ClickEvent, EventId, EventKind, Horizon, RejectReason, UserId};
pub use sketch::{SketchDecodeError, UserSketch};
pub use time::{DayStart, EpochMillis, HourStart};

/// The descriptor: name, config, topics, lease groups and tables.
pub struct Analytics;

/// This workload's migrations, numbered from 1 (owner `analytics`).
pub mod migrations {
    use super::*;

    /// The hour totals: materializer writes, query reads.
    pub const READ_MODELS: Migration = Migration::new(
        "analytics",
        1,
        "read_models",
        READ_MODEL_TABLES,
        include_str!("../migrations/0001_read_models.sql"),
    )
    .replacing(1);
    /// The processor's state: counts and user sets of open hours.
    pub const PROCESSOR_HOURS: Migration = Migration::new(
        "analytics",
        2,
        "processor_hours",
        PROCESSOR_TABLES,
        include_str!("../migrations/0002_processor_hours.sql"),
    )
    .replacing(2);
    /// The range read models (hourly sketches, day totals): materializer writes, query reads.
    pub const RANGES: Migration =
        Migration::new("analytics", 3, "ranges", READ_MODEL_TABLES, include_str!("../migrations/0003_ranges.sql"))
            .replacing(8);
    /// The processor's day user sets.
    pub const PROCESSOR_DAYS: Migration = Migration::new(
        "analytics",
        4,
        "processor_days",
        PROCESSOR_TABLES,
        include_str!("../migrations/0004_processor_days.sql"),
    )
    .replacing(9);

    pub const ALL: &[Migration] = &[READ_MODELS, PROCESSOR_HOURS, RANGES, PROCESSOR_DAYS];
}

impl Workload for Analytics {
    const NAME: &'static str = "analytics";
    /// The first workload: its lease groups keep the plain `--group-id`.
    const GROUP_SUFFIX: &'static str = "";
    const MIGRATIONS: &'static [Migration] = migrations::ALL;
    type Config = config::AnalyticsConfig;
    const TOPIC_ARGS: TopicArgs = TopicArgs { events: "events_topic", aggregates: "aggregates_topic" };

    fn topics(cfg: &Self::Config) -> Topics {
        Topics { events: cfg.events_topic.clone(), aggregates: cfg.aggregates_topic.clone(), replies: None }
    }

    /// One column per count of the typed list ([`counts`]), added where missing.
    async fn after_migrate(pool: &deadpool_postgres::Pool, service: Service) -> Result<(), PgError> {
        let tables = match service {
            Service::Command => return Ok(()),
            Service::Processor => read_model::pg::PROCESSOR_COUNT_TABLES,
            Service::Materializer | Service::Query => read_model::pg::READ_MODEL_COUNT_TABLES,
        };
        read_model::pg::ensure_count_columns(pool, tables).await
    }
}

impl ::command::CommandRole for Analytics {
    type Intake = command::Analytics;

    fn intake(_: &Self::Config, events: TopicSpec, horizon: &Horizon) -> command::Analytics {
        command::Analytics::new(events, *horizon)
    }
}

impl ::processor::ProcessorRole for Analytics {
    type Aggregation = processor::Analytics;

    fn aggregation(_: &Self::Config, horizon: &Horizon) -> processor::Analytics {
        processor::Analytics { retention_ms: horizon.retention_ms() }
    }
}

impl ::materializer::MaterializerRole for Analytics {
    type Sink = materializer::Analytics;

    fn sink(_: &Self::Config) -> materializer::Analytics {
        materializer::Analytics
    }
}

impl ::query::QueryRole for Analytics {
    /// The dashboard at `/`, the hour totals and live stream, then the ranges.
    fn routes(_: &Self::Config, stores: &::query::engine::Stores) -> Vec<::query::engine::Route> {
        [vec![dashboard::route()], stores.register(query::Analytics), query::range_routes(stores.pool.clone())].concat()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_from_one() {
        common::engine::pg::assert_numbered(Analytics::NAME, Analytics::MIGRATIONS);
    }
}
