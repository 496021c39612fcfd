//! The increments workload: exact per-key sums, in every role.
//!
//! ```text
//! POST /increment ──Increment──▶ increments.events ──▶ processor (IncrementState)
//!   ──IncrementSum──▶ increments.sums ──▶ materializer ──▶ Redis + PostgreSQL ◀── GET /increment/{key}
//! ```
//!
//! [`Increments`] is the descriptor ([`Workload`]); the engine of each
//! service runs it through its role, one module each:
//!
//! - [`command`]: `POST /increment` (an `Intake`), answered 200.
//! - [`processor`]: per-partition exact sums (an `Aggregation`).
//! - [`materializer`]: the `increments` table and the Redis copy (a `SinkWorkload`).
//! - [`query`]: `GET /increment/{key}` (a `QueryWorkload`).
//!
//! The pure domain touches no tokio, rdkafka, redis or postgres:
//!
//! - [`request`]: strict parsing of `POST /increment` (Content-Type, JSON body, `?id=`).
//! - [`event`]: the key, the value and the accepted [`IncrementEvent`].
//! - [`state`]: per-partition exact sums ([`IncrementState`]) and the emitted [`IncrementSum`].
//! - [`wire`]: the Avro records of both topics.
//! - [`row`]: the read-model row and the GET answer.
//! - [`read_model`]: the `increments` table's declaration and the row as the engine caches it.
//! - [`config`]: the workload's flags (its topics).

pub mod command;
pub mod config;
pub mod event;
pub mod materializer;
pub mod processor;
pub mod query;
pub mod read_model;
pub mod request;
pub mod row;
#[cfg(test)]
mod sim;
pub mod state;
pub mod wire;

use common::engine::horizon::Horizon;
use common::engine::kafka::TopicSpec;
use common::engine::pg::{Migration, PROCESSOR_TABLES, READ_MODEL_TABLES};
use common::engine::workload::{TopicArgs, Topics, Workload};

pub use event::{IncrementEvent, IncrementKey, IncrementValue};
pub use request::{parse_post, IncrementReject, IncrementRequest, MAX_BODY_BYTES};
pub use row::IncrementRow;
pub use state::{IncrementState, IncrementSum};

/// The descriptor: name, config, topics, lease groups and tables.
pub struct Increments;

/// This workload's migrations, numbered from 1 (owner `increments`).
pub mod migrations {
    use super::*;

    /// The processor's state: per-key sums.
    pub const PROCESSOR_SUMS: Migration = Migration::new(
        "increments",
        1,
        "processor_sums",
        PROCESSOR_TABLES,
        include_str!("../migrations/0001_processor_sums.sql"),
    )
    .replacing(6);
    /// The read model: materializer writes, query reads.
    pub const READ_MODEL: Migration = Migration::new(
        "increments",
        2,
        "read_model",
        READ_MODEL_TABLES,
        include_str!("../migrations/0002_read_model.sql"),
    )
    .replacing(7);

    pub const ALL: &[Migration] = &[PROCESSOR_SUMS, READ_MODEL];
}

impl Workload for Increments {
    const NAME: &'static str = "increments";
    const GROUP_SUFFIX: &'static str = ".increments";
    const MIGRATIONS: &'static [Migration] = migrations::ALL;
    type Config = config::IncrementsConfig;
    const TOPIC_ARGS: TopicArgs = TopicArgs { events: "increments_events_topic", aggregates: "increments_sums_topic" };

    fn topics(cfg: &Self::Config) -> Topics {
        Topics {
            events: cfg.increments_events_topic.clone(),
            aggregates: cfg.increments_sums_topic.clone(),
            replies: None,
        }
    }
}

impl ::command::CommandRole for Increments {
    type Intake = command::Increments;

    fn intake(_: &Self::Config, events: TopicSpec, _: &Horizon) -> command::Increments {
        command::Increments::new(events)
    }
}

impl ::processor::ProcessorRole for Increments {
    type Aggregation = processor::Increments;

    fn aggregation(_: &Self::Config, _: &Horizon) -> processor::Increments {
        processor::Increments
    }
}

impl ::materializer::MaterializerRole for Increments {
    type Sink = materializer::Increments;

    fn sink(_: &Self::Config) -> materializer::Increments {
        materializer::Increments
    }
}

impl ::query::QueryRole for Increments {
    fn routes(_: &Self::Config, stores: &::query::engine::Stores) -> Vec<::query::engine::Route> {
        stores.register(query::Increments)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_from_one() {
        common::engine::pg::assert_numbered(Increments::NAME, Increments::MIGRATIONS);
    }
}
