//! The hourly web-analytics workload: its typed pieces, which the engine
//! ([`crate::engine`]) runs without knowing them.
//!
//! Everything but [`read_model::pg`] is deterministic and free of tokio,
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
//! - [`read_model`]: the hour totals as a cached row, and their PostgreSQL
//!   statements ([`read_model::pg`]), used by the materializer and the query;
//!   beside them the hourly sketches and the day totals of the ranges.

pub mod bucket;
pub mod counts;
pub mod event;
pub mod range;
pub mod read_model;
pub mod request;
pub mod sketch;
pub mod time;
pub mod user_set;
pub mod wire;

pub use bucket::{HourBucket, HourCounts, PartitionWindow};
pub use event::{ClickEvent, EventId, EventKind, Horizon, RejectReason, UserId};
pub use sketch::{SketchDecodeError, UserSketch};
pub use time::{DayStart, EpochMillis, HourStart};
