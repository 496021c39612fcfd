//! The promotions workload: a CSV file of promotions (`id,price,expiration_date`)
//! becomes one immutable generation, loaded in bulk and made visible in one
//! atomic switch once every row of it is in place; `GET /promotions/{id}`
//! answers from the active generation.
//!
//! ```text
//! POST /promotions/files (streamed CSV) ──rows, end per partition──▶ promotions.rows
//!   ──▶ processor (COPY per checkpoint into the generation's storage; switch when complete)
//!   ──▶ PostgreSQL ◀── GET /promotions/{id}
//! ```
//!
//! The pure domain touches no tokio, rdkafka, redis or postgres:
//!
//! - [`line`]: one CSV line → a [`Promotion`], or the line's number and why
//!   not; [`line::Lines`] splits a body arriving in chunks of any size into
//!   numbered lines, within a bounded line length.
//! - [`generation`]: a generation's lifecycle (loading → active → replaced;
//!   failed) and its completion check (every partition reported, counts match).

pub mod generation;
pub mod line;

pub use generation::{Generation, GenerationState, Progress};
pub use line::{parse_line, Expiration, LineError, LineReason, Lines, Price, Promotion, PromotionId};
