//! The widgets workload (issue #22): a constrained entity graph. Widgets
//! have a unique serial, a name and 1–3 port slots of types P, R, Q; two
//! widgets are associated through a free slot of the same type on each.
//!
//! ```text
//! POST/DELETE /widgets… ──Command──▶ widgets.commands (one partition per shard) ──▶ processor: Graph (single writer)
//!    ▲                                                                                 │ Change or Reject, in log order
//!    └──── 201/204/404/409 ◀── widgets.replies ◀──────────────────────────────────────┤
//!                              widgets.changes ──▶ materializer ──▶ read model ◀── GET /widgets/{serial}
//! ```
//!
//! Every command of a shard goes to one partition, whose owner decides it in
//! memory with both widgets of an association in hand: race-free by
//! construction, and linearizable, as decisions follow log order
//! (docs/architecture.md, "Widgets"). One shard for now.
//!
//! [`Widgets`] is the descriptor ([`Workload`]); the engine of each service
//! runs it through its role, one module each:
//!
//! - [`command`]: the writes (an `Intake` with a replies topic), answered from their decision.
//! - [`processor`]: the decisions of the shard (an `Aggregation` with replies), its graph checkpointed incrementally.
//! - [`materializer`]: the `widgets` read model (slots included) and the Redis copy (a `SinkWorkload`).
//! - [`query`]: `GET /widgets/{serial}` (a `QueryWorkload`).
//!
//! The pure core touches no tokio, rdkafka, redis or postgres:
//!
//! - [`input`]: the checked values ([`Serial`], [`Name`], [`Ports`], [`Port`]) and why one is refused (`400`).
//! - [`records`]: the [`Command`], its outcome ([`Change`] or [`Reject`] with its [`Status`]) and the [`Widget`] a read shows.
//! - [`graph`]: the compact in-memory [`Graph`] with [`Graph::decide`] and [`Graph::apply`].
//! - [`check`]: the invariants on a [`check::Snapshot`] and the replay of a `2xx` history.
//! - [`request`]: strict parsing of the writes (paths, JSON bodies, `?id=`).
//! - [`state`]: the shard's state: the graph, the ids, what to persist, emit and reply.
//! - [`log`]: the command, the change and the reply on the topics; [`wire`]: their Avro.
//! - [`read_model`]: the read models' declarations and writes.
//! - [`config`]: the workload's flags (its topics).

pub mod check;
pub mod command;
pub mod config;
pub mod graph;
pub mod input;
pub mod log;
pub mod materializer;
pub mod processor;
pub mod query;
pub mod read_model;
pub mod records;
pub mod request;
#[cfg(test)]
mod sim;
pub mod state;
pub mod wire;

use common::engine::horizon::Horizon;
use common::engine::kafka::TopicSpec;
use common::engine::pg::{Migration, PROCESSOR_TABLES, READ_MODEL_TABLES};
use common::engine::workload::{TopicArgs, Topics, Workload};

pub use graph::{Graph, GraphBuilder, StoredCells};
pub use input::{BadInput, Name, Port, Ports, Serial};
pub use records::{Association, Change, Command, Reject, Status, StoredWidget, Widget};

/// The descriptor: name, config, topics, lease groups and tables.
pub struct Widgets;

/// This workload's migrations, numbered from 1 (owner `widgets`).
pub mod migrations {
    use super::*;

    /// The processor's state: the graph's widgets and the remembered ids.
    pub const PROCESSOR_WIDGETS: Migration = Migration::new(
        "widgets",
        1,
        "processor_widgets",
        PROCESSOR_TABLES,
        include_str!("../migrations/0001_processor_widgets.sql"),
    );
    /// The read models: materializer writes, query reads.
    pub const READ_MODELS: Migration = Migration::new(
        "widgets",
        2,
        "read_models",
        READ_MODEL_TABLES,
        include_str!("../migrations/0002_read_models.sql"),
    );
    /// A widget's slots in its `widgets` row (`widget_slots` dropped).
    pub const SLOTS_IN_WIDGETS: Migration = Migration::new(
        "widgets",
        3,
        "slots_in_widgets",
        READ_MODEL_TABLES,
        include_str!("../migrations/0003_slots_in_widgets.sql"),
    );

    /// Room on `processor_widgets`' pages for updates that stay on their page.
    pub const PROCESSOR_WIDGETS_FILLFACTOR: Migration = Migration::new(
        "widgets",
        4,
        "processor_widgets_fillfactor",
        PROCESSOR_TABLES,
        include_str!("../migrations/0004_processor_widgets_fillfactor.sql"),
    );
    /// The same on the read model's `widgets`.
    pub const WIDGETS_FILLFACTOR: Migration = Migration::new(
        "widgets",
        5,
        "widgets_fillfactor",
        READ_MODEL_TABLES,
        include_str!("../migrations/0005_widgets_fillfactor.sql"),
    );

    pub const ALL: &[Migration] =
        &[PROCESSOR_WIDGETS, READ_MODELS, SLOTS_IN_WIDGETS, PROCESSOR_WIDGETS_FILLFACTOR, WIDGETS_FILLFACTOR];
}

impl Workload for Widgets {
    const NAME: &'static str = "widgets";
    const GROUP_SUFFIX: &'static str = ".widgets";
    const MIGRATIONS: &'static [Migration] = migrations::ALL;
    type Config = config::WidgetsConfig;
    const TOPIC_ARGS: TopicArgs = TopicArgs { events: "widgets_commands_topic", aggregates: "widgets_changes_topic" };

    fn topics(cfg: &Self::Config) -> Topics {
        Topics {
            events: cfg.widgets_commands_topic.clone(),
            aggregates: cfg.widgets_changes_topic.clone(),
            replies: Some(cfg.widgets_replies_topic.clone()),
        }
    }
}

impl ::command::CommandRole for Widgets {
    type Intake = command::Widgets;

    fn intake(cfg: &Self::Config, events: TopicSpec, _: &Horizon) -> command::Widgets {
        command::Widgets::new(events, cfg.widgets_replies_topic.clone())
    }
}

impl ::processor::ProcessorRole for Widgets {
    type Aggregation = processor::Widgets;

    /// Ids are remembered as long as the engine holds the other workloads'
    /// ids: the deployment horizon's retention.
    fn aggregation(_: &Self::Config, horizon: &Horizon) -> processor::Widgets {
        processor::Widgets::new(state::IdPolicy::new(horizon.retention_ms()))
    }
}

impl ::materializer::MaterializerRole for Widgets {
    type Sink = materializer::Widgets;

    fn sink(_: &Self::Config) -> materializer::Widgets {
        materializer::Widgets
    }
}

impl ::query::QueryRole for Widgets {
    fn routes(_: &Self::Config, stores: &::query::engine::Stores) -> Vec<::query::engine::Route> {
        stores.register(query::Widgets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_from_one() {
        common::engine::pg::assert_numbered(Widgets::NAME, Widgets::MIGRATIONS);
    }
}
