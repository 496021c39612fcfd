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
//! (docs/architecture.md, "Widgets"). The roles come later; this crate is,
//! for now, the pure core only (no tokio, rdkafka, redis or postgres):
//!
//! - [`input`]: the checked values ([`Serial`], [`Name`], [`Ports`], [`Port`]) and why one is refused (`400`).
//! - [`records`]: the [`Command`], its outcome ([`Change`] or [`Reject`] with its [`Status`]) and the [`Widget`] a read shows.
//! - [`graph`]: the compact in-memory [`Graph`] with [`Graph::decide`] and [`Graph::apply`].
//! - [`check`]: the invariants on a [`check::Snapshot`] and the replay of a `2xx` history.

pub mod check;
pub mod graph;
pub mod input;
pub mod records;

pub use graph::Graph;
pub use input::{BadInput, Name, Port, Ports, Serial};
pub use records::{Association, Change, Command, Reject, Status, Widget};
