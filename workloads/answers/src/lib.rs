//! The answers workload: an event-sourced key → answer store whose writes
//! are decided, race-free, by the one owner of the key's partition.
//!
//! ```text
//! POST/PUT/DELETE /answers ──Command──▶ answers.commands ──▶ processor (AnswersState: the rules, in log order)
//!    ▲                                                          │ Reply (at once)        │ Change (at checkpoint)
//!    └──── 201/200/204/409/404 ◀── answers.replies ◀────────────┘                        ▼
//!                      answers.changes ──▶ materializer ──▶ answers_history, answers_latest, Redis
//!                                                     ◀── GET /answers/{key}[/history]
//! ```
//!
//! [`Answers`] is the descriptor ([`Workload`]); the engine of each service
//! runs it through its role, one module each:
//!
//! - [`command`]: the writes (an `Intake` with a replies topic), answered from their decision.
//! - [`processor`]: the decisions per partition (an `Aggregation` with replies).
//! - [`materializer`]: the history and latest read models and the Redis copy (a `SinkWorkload`).
//! - [`query`]: `GET /answers/{key}` and its history (a `QueryWorkload`).
//! - [`grpc`]: the same API over gRPC (`proto/answers.proto`), bridged onto
//!   the command's and the query's in-process HTTP handling.
//!
//! The pure domain touches no tokio, rdkafka, redis or postgres:
//!
//! - [`key`]: the answer key and its path segment.
//! - [`request`]: strict parsing of the writes (path, Content-Type, JSON body, `?id=`).
//! - [`rules`]: the state machine of one key ([`rules::decide`]) and its remembered ids.
//! - [`state`]: per-partition state: the keys, and what to persist, emit and reply.
//! - [`records`]: the command, the change and the reply; [`wire`]: their Avro.
//! - [`read_model`]: the read models' declarations, writes and the history read.
//! - [`config`]: the workload's flags (its topics).

pub mod command;
pub mod config;
pub mod grpc;
pub mod key;
pub mod materializer;
pub mod processor;
pub mod query;
pub mod read_model;
pub mod records;
pub mod request;
pub mod rules;
#[cfg(test)]
mod sim;
pub mod state;
pub mod wire;

use common::engine::horizon::Horizon;
use common::engine::kafka::TopicSpec;
use common::engine::pg::{Migration, PROCESSOR_TABLES, READ_MODEL_TABLES};
use common::engine::workload::{TopicArgs, Topics, Workload};

pub use key::AnswerKey;
pub use records::{AnswerCommand, Change, Reply};
pub use request::{AnswerReject, AnswerValue, Op};
pub use rules::{Event, Outcome};

/// The descriptor: name, config, topics, lease groups and tables.
pub struct Answers;

/// This workload's migrations, numbered from 1 (owner `answers`).
pub mod migrations {
    use super::*;

    /// The processor's state: per-key versions, values and remembered ids.
    pub const PROCESSOR_ANSWERS: Migration = Migration::new(
        "answers",
        1,
        "processor_answers",
        PROCESSOR_TABLES,
        include_str!("../migrations/0001_processor_answers.sql"),
    );
    /// The read models: materializer writes, query reads.
    pub const READ_MODELS: Migration = Migration::new(
        "answers",
        2,
        "read_models",
        READ_MODEL_TABLES,
        include_str!("../migrations/0002_read_models.sql"),
    );

    pub const ALL: &[Migration] = &[PROCESSOR_ANSWERS, READ_MODELS];
}

impl Workload for Answers {
    const NAME: &'static str = "answers";
    const GROUP_SUFFIX: &'static str = ".answers";
    const MIGRATIONS: &'static [Migration] = migrations::ALL;
    type Config = config::AnswersConfig;
    const TOPIC_ARGS: TopicArgs = TopicArgs { events: "answers_commands_topic", aggregates: "answers_changes_topic" };

    fn topics(cfg: &Self::Config) -> Topics {
        Topics {
            events: cfg.answers_commands_topic.clone(),
            aggregates: cfg.answers_changes_topic.clone(),
            replies: Some(cfg.answers_replies_topic.clone()),
        }
    }
}

impl ::command::CommandRole for Answers {
    type Intake = command::Answers;

    fn intake(cfg: &Self::Config, events: TopicSpec, _: &Horizon) -> command::Answers {
        command::Answers::new(events, cfg.answers_replies_topic.clone())
    }

    /// `AnswersWrite` on `--answers-grpc-command-addr`.
    fn listeners(
        cfg: &Self::Config,
        app: &::command::CommandApp,
        limits: &common::engine::http::ListenerLimits,
    ) -> Vec<common::engine::http::Listener> {
        let transport = grpc::Transport::new(&limits.limits, limits.drain);
        vec![grpc::write_listener(cfg.answers_grpc_command_addr, app.clone(), transport)]
    }
}

impl ::processor::ProcessorRole for Answers {
    type Aggregation = processor::Answers;

    /// Ids are remembered as long as the engine holds the other workloads'
    /// ids: the deployment horizon's retention.
    fn aggregation(_: &Self::Config, horizon: &Horizon) -> processor::Answers {
        processor::Answers::new(rules::Policy::new(horizon.retention_ms()))
    }
}

impl ::materializer::MaterializerRole for Answers {
    type Sink = materializer::Answers;

    fn sink(_: &Self::Config) -> materializer::Answers {
        materializer::Answers
    }
}

impl ::query::QueryRole for Answers {
    fn routes(_: &Self::Config, stores: &::query::engine::Stores) -> Vec<::query::engine::Route> {
        stores.register(query::Answers)
    }

    /// `AnswersRead` on `--answers-grpc-query-addr`.
    fn listeners(
        cfg: &Self::Config,
        app: &::query::QueryApp,
        limits: &common::engine::http::ListenerLimits,
    ) -> Vec<common::engine::http::Listener> {
        let transport = grpc::Transport::new(&limits.limits, limits.drain);
        vec![grpc::read_listener(cfg.answers_grpc_query_addr, app.clone(), transport)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_from_one() {
        common::engine::pg::assert_numbered(Answers::NAME, Answers::MIGRATIONS);
    }
}
