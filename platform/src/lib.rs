//! The platform: THE list of workloads, and the four services built from it.
//!
//! ```text
//! command ──events──▶ processor ──aggregates──▶ materializer ──▶ Redis + PostgreSQL ◀── query
//! ```
//!
//! The engine crates (`common`, `command`, `processor`, `materializer`,
//! `query`) name no workload; each workload is one crate under `workloads/`
//! implementing the descriptor (`common::engine::workload::Workload`) and the
//! four roles (`command::CommandRole`, `processor::ProcessorRole`,
//! `materializer::MaterializerRole`, `query::QueryRole`). The one
//! [`workloads!`] line below lists them: it makes each service's list
//! ([`command()`], [`processor()`], [`materializer()`], [`query()`]), so a
//! workload missing a role is a compile error, and adding a workload is its
//! folder plus one entry here.
//!
//! The binaries (`src/bin/`) are thin: parse the engine's config with every
//! listed workload's section, init telemetry, run the service's library.

/// Makes each service's list of workloads from one list of descriptors, in order.
#[macro_export]
macro_rules! workloads {
    ($($workload:path),+ $(,)?) => {
        /// The command's workloads: each must implement `command::CommandRole`.
        pub fn command() -> ::command::Workloads {
            ::command::Workloads::new()$(.add::<$workload>())+
        }

        /// The processor's workloads: each must implement `processor::ProcessorRole`.
        pub fn processor() -> ::processor::Workloads {
            ::processor::Workloads::new()$(.add::<$workload>())+
        }

        /// The materializer's workloads: each must implement `materializer::MaterializerRole`.
        pub fn materializer() -> ::materializer::Workloads {
            ::materializer::Workloads::new()$(.add::<$workload>())+
        }

        /// The query's workloads: each must implement `query::QueryRole`.
        pub fn query() -> ::query::Workloads {
            ::query::Workloads::new()$(.add::<$workload>())+
        }
    };
}

workloads![analytics::Analytics, increments::Increments];
