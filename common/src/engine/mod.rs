//! The engine: everything a workload's pipeline needs that knows nothing of
//! any workload (no clicks, users or hours here).
//!
//! - [`config`], [`telemetry`], [`shutdown`], [`http`], [`edge`]: written once, used by every service.
//! - [`kafka`], [`membership`]: log I/O, partition ownership and fencing.
//! - [`pg`]: the PostgreSQL pool, migrations and deployment settings.
//! - [`avro`]: single-object Avro encoding with schema resolution.
//! - [`progress`]: read-your-writes tokens and the progress of each events partition.
//! - [`store`]: the read-model stores: the versioned Redis cache of any [`store::CachedRow`].
//! - [`retry`]: back-off with cancellation.
//! - [`task`]: a workload's background tasks in a service, started and stopped by the engine.
//! - [`workload`]: the workload descriptor every service's roles build on,
//!   and the list of workloads a service runs.
//! - [`request`]: the client's event id and strict query-string decoding, for every workload's edge.
//! - [`horizon`]: the accepted window of event times, a policy workloads configure.

pub mod avro;
pub mod config;
pub mod edge;
pub mod horizon;
pub mod http;
pub mod kafka;
pub mod membership;
pub mod pg;
pub mod progress;
pub mod request;
pub mod retry;
pub mod shutdown;
pub mod store;
pub mod task;
pub mod telemetry;
pub mod workload;
