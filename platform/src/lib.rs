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

workloads![analytics::Analytics, increments::Increments, answers::Answers, promotions::Promotions, widgets::Widgets,];

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

/// Test isolation: the flags of every listed workload that each test
/// deployment must have its own value of, read from the four services'
/// command lines, so a new workload's topics and listeners are isolated per
/// test without a change in any harness.
pub mod isolation {
    use std::collections::BTreeMap;
    use std::sync::LazyLock;

    /// The environment variables of topics the harnesses name explicitly
    /// (from `common::test_util::TestKafka`): left out of [`flags`].
    pub const NAMED_TOPICS: [&str; 4] =
        ["EVENTS_TOPIC", "AGGREGATES_TOPIC", "INCREMENTS_EVENTS_TOPIC", "INCREMENTS_SUMS_TOPIC"];

    /// A workload flag a test deployment (or instance) must have its own value of.
    #[derive(Debug)]
    pub struct WorkloadFlag {
        /// The clap id, e.g. `answers_commands_topic`.
        pub id: String,
        /// The long flag without dashes, e.g. `answers-commands-topic`.
        pub long: String,
        pub env: String,
        pub kind: FlagKind,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum FlagKind {
        /// A topic: named after the deployment ([`topic`]), deleted with it.
        Topic,
        /// A workload's own listener (its gRPC API, say): a free port per instance.
        Listener,
    }

    fn services() -> [clap::Command; 4] {
        [
            super::command().command::<command::Config>(),
            super::processor().command::<processor::Config>(),
            super::materializer().command::<materializer::Config>(),
            super::query().command::<query::Config>(),
        ]
    }

    fn flag(arg: &clap::Arg) -> Option<WorkloadFlag> {
        let (id, env, long) = (arg.get_id().as_str(), arg.get_env()?.to_string_lossy(), arg.get_long()?);
        let kind = match id {
            _ if NAMED_TOPICS.contains(&env.as_ref()) => return None,
            _ if id.ends_with("_topic") => FlagKind::Topic,
            _ if id.ends_with("_addr") => FlagKind::Listener,
            _ => return None,
        };
        Some(WorkloadFlag { id: id.to_owned(), long: long.to_owned(), env: env.into_owned(), kind })
    }

    static FLAGS: LazyLock<Vec<WorkloadFlag>> = LazyLock::new(|| {
        let mut flags = BTreeMap::new();
        for arg in services().iter().flat_map(|c| c.get_arguments()).filter_map(flag) {
            flags.entry(arg.id.clone()).or_insert(arg);
        }
        flags.into_values().collect()
    });

    /// Every listed workload's topic and listener flags (with an environment
    /// variable) of the four services, each once.
    pub fn flags() -> &'static [WorkloadFlag] {
        &FLAGS
    }

    /// A deployment's name of a workload topic flag: `test-<flag>-<suffix>`.
    pub fn topic(flag_id: &str, suffix: &str) -> String {
        format!("test-{}-{suffix}", flag_id.replace('_', "-"))
    }

    /// A deployment's names of every workload topic (to delete them).
    pub fn topics(suffix: &str) -> Vec<String> {
        flags().iter().filter(|f| f.kind == FlagKind::Topic).map(|f| topic(&f.id, suffix)).collect()
    }

    /// The command's arguments that isolate an in-process command: each
    /// workload topic named after `suffix`, each workload listener on a port
    /// of its own (`127.0.0.1:0`).
    pub fn command_args(suffix: &str) -> Vec<String> {
        let command = super::command().command::<command::Config>();
        let mut args = Vec::new();
        for flag in command.get_arguments().filter_map(flag) {
            let value = match flag.kind {
                FlagKind::Topic => topic(&flag.id, suffix),
                FlagKind::Listener => "127.0.0.1:0".to_owned(),
            };
            args.extend([format!("--{}", flag.long), value]);
        }
        args
    }
}
