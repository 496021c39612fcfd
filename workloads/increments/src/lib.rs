//! The increments workload: exact per-key sums. Its pure, I/O-free domain.
//!
//! ```text
//! POST /increment ──Increment──▶ increments.events ──▶ processor (IncrementState)
//!   ──IncrementSum──▶ increments.sums ──▶ materializer ──▶ Redis + PostgreSQL ◀── GET /increment/{key}
//! ```
//!
//! Nothing here touches tokio, rdkafka, redis or postgres: the engine runs
//! the pipeline and calls these types and functions.
//!
//! - [`request`]: strict parsing of `POST /increment` (Content-Type, JSON body, `?id=`).
//! - [`event`]: the key, the value and the accepted [`IncrementEvent`].
//! - [`state`]: per-partition exact sums ([`IncrementState`]) and the emitted [`IncrementSum`].
//! - [`wire`]: the Avro records of both topics.
//! - [`row`]: the read-model row and the GET answer.

pub mod config;
pub mod event;
pub mod read_model;
pub mod request;
pub mod row;
pub mod state;
pub mod wire;

pub use event::{IncrementEvent, IncrementKey, IncrementValue};
pub use request::{parse_post, IncrementReject, IncrementRequest, MAX_BODY_BYTES};
pub use row::IncrementRow;
pub use state::{IncrementState, IncrementSum};
