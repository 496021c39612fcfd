//! Deterministic simulation of the processor engine: the state store and
//! the aggregates log in memory, with faults injected on demand.
//!
//! [`MemStore`] runs the engine's own claim and checkpoint transaction
//! bodies ([`claim_in`](super::state_store::claim_in),
//! [`commit_in`](super::state_store::commit_in)) over an in-memory copy of
//! the tables, committed atomically (or not at all); [`MemLog`] holds the
//! events topic and the aggregates topic, with one transactional producer per
//! events partition fenced by epoch, as Kafka fences a `transactional.id`;
//! [`SimIo`] adds a consumer, a lease group and a clock that the harness
//! controls, so that a real `Processor` runs over memory. Nothing here
//! sleeps, spawns or touches the network: every future is ready when polled
//! unless it waits for the harness (a timer, a record, a stalled
//! transaction), so the harness drives the processors' loops from a seeded
//! random generator and a run is a function of its seed.
//!
//! Public behind the `sim` feature so that workload crates can simulate
//! themselves ([`harness::Simulated`], [`harness::simulate`]): analytics and
//! increments do, each in its crate's `sim` tests (docs/architecture.md,
//! "Deterministic simulation").

mod io;
mod log;
mod stall;
mod store;

pub mod harness;

pub use io::{Control, Leases, SimClock, SimIo, SimMembers, SimSource};
pub use log::{LogFault, LogRecord, MemLog, MemProducer};
pub use store::{MemStore, StoreFault};
