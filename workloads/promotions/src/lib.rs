//! The promotions workload: a CSV file of promotions (`id,price,expiration_date`)
//! becomes one immutable generation, loaded in bulk and made visible in one
//! atomic switch once every row of it is in place; `GET /promotions/{id}`
//! answers from the active generation.
//!
//! ```text
//! POST /promotions/files (streamed CSV) ──begin, rows by id, end per partition──▶ promotions.rows
//!   ──▶ processor (COPY per checkpoint into the generation's table; the last report switches)
//!   ──▶ PostgreSQL promotions_g<n> + bulk_active ◀── GET /promotions/{id}
//!   ──states──▶ promotions.generations ──▶ materializer ──▶ promotion_generations
//!                                            ◀── GET /promotions/generations[/{n}]
//! ```
//!
//! [`Promotions`] is the descriptor ([`Workload`]); the engine of each
//! service runs it through its role, one module each:
//!
//! - [`command`]: `POST /promotions/files`, a streamed `Upload`, answered 202;
//!   and two command tasks: [`watcher`] loads the files dropped in
//!   `--promotions-dir` through it, [`janitor`] fails the uploads whose
//!   writer died.
//! - [`processor`]: per partition, the rows copied into the generation's
//!   storage at each checkpoint, and the switch (an `Aggregation`).
//! - [`materializer`]: the generations' states (a `SinkWorkload`).
//! - [`query`]: `GET /promotions/{id}` and `GET /promotions/generations[/{n}]`.
//!
//! The pure domain touches no tokio, rdkafka, redis or postgres:
//!
//! - [`line`]: one CSV line → a [`Promotion`], or the line's number and why
//!   not; [`line::Lines`] splits a body arriving in chunks of any size into
//!   numbered lines, within a bounded line length.
//! - [`generation`]: a generation's lifecycle (loading → active → replaced;
//!   failed) and its completion check (every partition reported, counts match).
//! - [`records`]: the records of both topics, and a generation's status.
//! - [`load`]: one partition's part of the generations being loaded.
//! - [`wire`]: the Avro records of both topics.
//! - [`watch`]: the watched directory's layout, names and outcomes.
//! - [`stall`]: which uploads lost their writer.
//! - [`read_model`]: the bulk table, the generations' table, and their reads.
//! - [`config`]: the workload's flags (its topics).

pub mod command;
pub mod config;
pub mod generation;
pub mod janitor;
pub mod line;
pub mod load;
pub mod materializer;
pub mod metrics;
pub mod processor;
pub mod query;
pub mod read_model;
pub mod records;
pub mod stall;
pub mod watch;
pub mod watcher;
pub mod wire;

use common::engine::horizon::Horizon;
use common::engine::kafka::TopicSpec;
use common::engine::pg::{Migration, PROCESSOR_TABLES, READ_MODEL_TABLES};
use common::engine::workload::{TopicArgs, Topics, Workload};

pub use generation::{Generation, GenerationState, Progress};
pub use line::{parse_line, Expiration, LineError, LineReason, Lines, Price, Promotion, PromotionId};
pub use records::GenerationStatus;

/// The descriptor: name, config, topics, lease groups and tables.
pub struct Promotions;

/// This workload's migrations, numbered from 1 (owner `promotions`).
pub mod migrations {
    use super::*;

    /// The processor's state: each partition's part of the recent generations, and its pending announcements.
    pub const PROCESSOR_LOADS: Migration = Migration::new(
        "promotions",
        1,
        "processor_loads",
        PROCESSOR_TABLES,
        include_str!("../migrations/0001_processor_loads.sql"),
    );
    /// The read model: materializer writes, query reads.
    pub const READ_MODEL: Migration = Migration::new(
        "promotions",
        2,
        "read_model",
        READ_MODEL_TABLES,
        include_str!("../migrations/0002_read_model.sql"),
    );

    pub const ALL: &[Migration] = &[PROCESSOR_LOADS, READ_MODEL];
}

impl Workload for Promotions {
    const NAME: &'static str = "promotions";
    const GROUP_SUFFIX: &'static str = ".promotions";
    const MIGRATIONS: &'static [Migration] = migrations::ALL;
    type Config = config::PromotionsConfig;
    const TOPIC_ARGS: TopicArgs =
        TopicArgs { events: "promotions_rows_topic", aggregates: "promotions_generations_topic" };

    fn topics(cfg: &Self::Config) -> Topics {
        Topics {
            events: cfg.promotions_rows_topic.clone(),
            aggregates: cfg.promotions_generations_topic.clone(),
            replies: None,
        }
    }
}

impl ::command::CommandRole for Promotions {
    type Intake = ::command::engine::Streamed<command::Files>;

    fn intake(_: &Self::Config, events: TopicSpec, _: &Horizon) -> Self::Intake {
        ::command::engine::Streamed(command::Files::new(events))
    }

    /// The janitor always; the watcher when `--promotions-dir` is set.
    fn tasks(cfg: &Self::Config, app: &::command::CommandApp) -> Vec<common::engine::task::Task> {
        let janitor = janitor::Janitor { stall: cfg.promotions_upload_stall, lookback: cfg.promotions_upload_lookback };
        let mut tasks = vec![janitor::task(janitor, app.clone())];
        if let Some(dir) = &cfg.promotions_dir {
            tasks.push(watcher::task(dir.clone(), cfg.promotions_dir_interval, app.clone()));
        }
        tasks
    }
}

impl ::processor::ProcessorRole for Promotions {
    type Aggregation = processor::Promotions;

    fn aggregation(cfg: &Self::Config, _: &Horizon) -> processor::Promotions {
        processor::Promotions { lease: cfg.read_lease() }
    }
}

impl ::materializer::MaterializerRole for Promotions {
    type Sink = materializer::Generations;

    fn sink(_: &Self::Config) -> materializer::Generations {
        materializer::Generations
    }
}

impl ::query::QueryRole for Promotions {
    fn routes(cfg: &Self::Config, stores: &::query::engine::Stores) -> Vec<::query::engine::Route> {
        stores.register(query::Promotions::new(cfg.promotions_row_cache_mb, stores))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_from_one() {
        common::engine::pg::assert_numbered(Promotions::NAME, Promotions::MIGRATIONS);
    }
}
