//! The workload descriptor: what every service knows of a workload before
//! its role (intake, aggregation, sink, query) comes in.
//!
//! A workload is one crate (`workloads/<name>/`) implementing [`Workload`]
//! and the four role traits built on it (`command::CommandRole`,
//! `processor::ProcessorRole`, `materializer::MaterializerRole`,
//! `query::QueryRole`). The `platform` crate lists the workloads once; each
//! service's [`WorkloadList`] is made from that list, so a workload missing a
//! role does not compile. The engine crates never name a workload.
//!
//! Configuration: each workload's section ([`Workload::Config`], clap
//! `Args`) is added to the service's own command line
//! ([`WorkloadList::parse`]), so its flags and environment variables show in
//! `--help` and every service parses the same section.

use std::future::Future;
use std::pin::Pin;

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};
use deadpool_postgres::Pool;

use crate::engine::config::PgConfig;
use crate::engine::pg::{Migration, PgError};

/// The services of the pipeline: who applies which migrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Command,
    Processor,
    Materializer,
    Query,
}

/// The ids of the arguments of a workload's config section that name its two
/// topics (a clap derive's id is the field's name): a service whose role
/// does not use a topic leaves its flag out of `--help` (it still accepts it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicArgs {
    pub events: &'static str,
    pub aggregates: &'static str,
}

/// A workload's topics, by name: the command writes events, the processor
/// reads them and writes aggregates, the materializer reads those. Their
/// partition counts are the deployment's ([`crate::engine::config::PartitionsConfig`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub events: String,
    pub aggregates: String,
    /// For a workload whose writes are decided by the partition's owner (a
    /// create that may conflict, say): the topic the processor publishes each
    /// decision on at once, keyed by the request id, and the command waits on
    /// ([`crate::engine::kafka::TopicSpec::replies_named`]). `None` for a
    /// workload whose writes are answered once they are in the log.
    pub replies: Option<String>,
}

/// What the engine knows of a workload whatever the service: its name, its
/// config section, its topics, its lease groups, its tables and the
/// deployment settings it depends on.
pub trait Workload: Send + Sync + 'static {
    /// Names the workload in metrics (label `workload`), logs and migrations.
    const NAME: &'static str;
    /// Appended to a service's lease group (`--group-id`) for this
    /// workload's partitions; empty for the first workload, so its group
    /// keeps the plain name.
    const GROUP_SUFFIX: &'static str;
    /// Its own tables' migrations, owned by [`Self::NAME`] and numbered from 1.
    const MIGRATIONS: &'static [Migration];
    /// Its config section: flags and environment variables, shown in each
    /// service's `--help`.
    type Config: clap::Args + Clone + std::fmt::Debug + Send + Sync + 'static;
    /// Which arguments of [`Self::Config`] name its topics.
    const TOPIC_ARGS: TopicArgs;

    /// Its topics, as configured.
    fn topics(cfg: &Self::Config) -> Topics;

    /// Settings every service of the deployment that runs it (the command and
    /// the processor) must hold the same value of, such as a horizon: stored
    /// by the first to start, refused on a mismatch. None by default.
    fn settings(cfg: &Self::Config) -> Vec<(String, String)> {
        let _ = cfg;
        Vec::new()
    }

    /// Runs after the migrations of `service` (e.g. columns derived from a
    /// typed list). Nothing by default.
    fn after_migrate(pool: &Pool, service: Service) -> impl Future<Output = Result<(), PgError>> + Send {
        let _ = (pool, service);
        async { Ok(()) }
    }
}

/// A workload with its parsed config section: what a service's engine holds
/// for each listed workload.
pub struct Configured<W: Workload> {
    pub config: W::Config,
}

/// The future of [`Workload::after_migrate`], boxed for the lists.
pub type Preparing<'a> = Pin<Box<dyn Future<Output = Result<(), PgError>> + Send + 'a>>;

type AfterMigrate = for<'a> fn(&'a Pool, Service) -> Preparing<'a>;

/// Makes a service's view of a workload from the matches of its command line.
type Bind<B> = Box<dyn Fn(&ArgMatches) -> Result<Box<B>, clap::Error> + Send + Sync>;

fn after_migrate<W: Workload>(pool: &Pool, service: Service) -> Preparing<'_> {
    Box::pin(W::after_migrate(pool, service))
}

/// What every service asks of a configured workload, whatever its role:
/// implemented for every [`Configured`] workload, and the supertrait of each
/// service's own (object-safe) view of one.
pub trait Listed: Send + Sync {
    fn name(&self) -> &'static str;
    fn group_suffix(&self) -> &'static str;
    fn migrations(&self) -> &'static [Migration];
    fn topics(&self) -> Topics;
    fn settings(&self) -> Vec<(String, String)>;
    fn after_migrate<'a>(&'a self, pool: &'a Pool, service: Service) -> Preparing<'a>;
}

impl<W: Workload> Listed for Configured<W> {
    fn name(&self) -> &'static str {
        W::NAME
    }

    fn group_suffix(&self) -> &'static str {
        W::GROUP_SUFFIX
    }

    fn migrations(&self) -> &'static [Migration] {
        W::MIGRATIONS
    }

    fn topics(&self) -> Topics {
        W::topics(&self.config)
    }

    fn settings(&self) -> Vec<(String, String)> {
        W::settings(&self.config)
    }

    fn after_migrate<'a>(&'a self, pool: &'a Pool, service: Service) -> Preparing<'a> {
        Box::pin(W::after_migrate(pool, service))
    }
}

struct Entry<B: ?Sized> {
    name: &'static str,
    migrations: &'static [Migration],
    after_migrate: AfterMigrate,
    augment: fn(clap::Command) -> clap::Command,
    topic_args: TopicArgs,
    bind: Bind<B>,
}

/// The workloads one service runs, in the order of the platform's list, each
/// as the service's view `B` of a [`Configured`] workload (e.g.
/// `dyn command::Registered`), for the service `service`. Built by the service's own `add::<W: Role>()`,
/// which calls [`WorkloadList::with`].
pub struct WorkloadList<B: ?Sized> {
    service: Service,
    entries: Vec<Entry<B>>,
}

impl<B: ?Sized + 'static> WorkloadList<B> {
    /// No workload yet, for `service`.
    pub fn new(service: Service) -> Self {
        WorkloadList { service, entries: Vec::new() }
    }

    /// Adds `W`; `view` makes the service's view of it once its config is parsed.
    ///
    /// # Panics
    /// When `W`'s name is listed already (a bug in the list).
    pub fn with<W: Workload>(mut self, view: fn(Configured<W>) -> Box<B>) -> Self {
        assert!(self.entries.iter().all(|e| e.name != W::NAME), "workload {} listed twice", W::NAME);
        self.entries.push(Entry {
            name: W::NAME,
            migrations: W::MIGRATIONS,
            after_migrate: after_migrate::<W>,
            augment: <W::Config as clap::Args>::augment_args,
            topic_args: W::TOPIC_ARGS,
            bind: Box::new(move |matches| {
                let config = <W::Config as FromArgMatches>::from_arg_matches(matches)?;
                Ok(view(Configured { config }))
            }),
        });
        self
    }

    /// The listed workloads' names, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.entries.iter().map(|e| e.name).collect()
    }

    /// The migrations this service applies: the engine's, then each workload's.
    pub fn migrations(&self) -> Vec<Migration> {
        crate::engine::pg::migrations_for(self.service, self.entries.iter().map(|e| e.migrations))
    }

    /// The service's command line (`C`, its engine config) with every listed
    /// workload's section added: what `--help` shows. A topic flag of a topic
    /// the service does not use is hidden (the command reads no aggregates
    /// topic, the materializer no events topic, the query neither).
    pub fn command<C: CommandFactory>(&self) -> clap::Command {
        let service = C::command();
        // A section's doc comment would replace the service's own description.
        let (about, long_about) = (service.get_about().cloned(), service.get_long_about().cloned());
        let reset = || clap::builder::Resettable::<clap::builder::StyledStr>::Reset;
        let (events, aggregates) = match self.service {
            Service::Command => (true, false),
            Service::Processor => (true, true),
            Service::Materializer => (false, true),
            Service::Query => (false, false),
        };
        let cmd = self.entries.iter().fold(service, |cmd, e| {
            let cmd = (e.augment)(cmd);
            let cmd = if events { cmd } else { cmd.mut_arg(e.topic_args.events, |a| a.hide(true)) };
            if aggregates {
                cmd
            } else {
                cmd.mut_arg(e.topic_args.aggregates, |a| a.hide(true))
            }
        });
        let cmd = match about {
            Some(about) => cmd.about(about),
            None => cmd.about(reset()),
        };
        match long_about {
            Some(long_about) => cmd.long_about(long_about),
            None => cmd.long_about(reset()),
        }
    }

    /// Parses the process's arguments and environment into the engine's
    /// config and each workload's view; on an error or `--help`, prints and
    /// exits, like [`Parser::parse`].
    pub fn parse<C: Parser>(&self) -> (C, Vec<Box<B>>) {
        self.try_parse_from(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// As [`Self::parse`], from `args` (the first is the program's name).
    ///
    /// # Errors
    /// A clap error: an unknown flag, a bad value, or `--help`.
    pub fn try_parse_from<C: Parser, I, T>(&self, args: I) -> Result<(C, Vec<Box<B>>), clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = self.command::<C>().try_get_matches_from(args)?;
        let engine = C::from_arg_matches(&matches)?;
        let workloads = self.entries.iter().map(|e| (e.bind)(&matches)).collect::<Result<_, _>>()?;
        Ok((engine, workloads))
    }

    /// Connects to PostgreSQL and applies the migrations of `service`, then
    /// each workload's [`Workload::after_migrate`]: the startup step of
    /// every service that uses PostgreSQL.
    ///
    /// # Errors
    /// A bad configuration, or PostgreSQL unreachable or refusing a migration.
    pub async fn connect_migrated(&self, cfg: &PgConfig) -> anyhow::Result<Pool> {
        use anyhow::Context;
        let pool = crate::engine::pg::connect_migrated(cfg, &self.migrations()).await?;
        for e in &self.entries {
            (e.after_migrate)(&pool, self.service)
                .await
                .with_context(|| format!("preparing the tables of {}", e.name))?;
        }
        Ok(pool)
    }
}

/// Agrees every workload's [`Workload::settings`] for the deployment (the
/// command and the processor call it at startup).
///
/// # Errors
/// A `SettingMismatch`, or PostgreSQL not answering.
pub async fn agree_settings<L: Listed + ?Sized>(
    pool: &Pool,
    service: &str,
    workloads: &[Box<L>],
) -> anyhow::Result<()> {
    for w in workloads {
        crate::engine::pg::agree_settings(pool, service, &w.settings()).await?;
    }
    Ok(())
}
