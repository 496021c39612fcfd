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

workloads![analytics::Analytics, increments::Increments, answers::Answers, promotions::Promotions];

/// Each service's engine config and listed workloads from `args` (the first
/// is the program's name), for tests and tools; panics on a bad argument,
/// like `clap::Parser::parse_from` exits.
pub mod parse {
    use std::ffi::OsString;

    fn or_panic<T>(parsed: Result<T, clap::Error>) -> T {
        parsed.unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn command<I: IntoIterator<Item = T>, T: Into<OsString> + Clone>(
        args: I,
    ) -> (command::Config, Vec<Box<dyn command::Registered>>) {
        or_panic(super::command().try_parse_from(args))
    }

    pub fn processor<I: IntoIterator<Item = T>, T: Into<OsString> + Clone>(
        args: I,
    ) -> (processor::Config, Vec<Box<dyn processor::Registered>>) {
        or_panic(super::processor().try_parse_from(args))
    }

    pub fn materializer<I: IntoIterator<Item = T>, T: Into<OsString> + Clone>(
        args: I,
    ) -> (materializer::Config, Vec<Box<dyn materializer::Registered>>) {
        or_panic(super::materializer().try_parse_from(args))
    }

    pub fn query<I: IntoIterator<Item = T>, T: Into<OsString> + Clone>(
        args: I,
    ) -> (query::Config, Vec<Box<dyn query::Registered>>) {
        or_panic(super::query().try_parse_from(args))
    }
}
