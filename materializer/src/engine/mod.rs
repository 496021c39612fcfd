//! The materializer's engine: consume a workload's aggregates from the
//! partitions this instance holds, write each batch to the workload's
//! PostgreSQL read model in one transaction, copy the resulting rows to Redis
//! under the version guard, then store the positions.
//!
//! It knows a workload only through [`SinkWorkload`], which a workload's
//! crate returns from its [`crate::MaterializerRole`].
//!
//! - [`pipeline`]: the consume / batch / retry / positions loop.
//! - [`sink`]: the PostgreSQL transaction, then the Redis copier: held rows in bounded
//!   calls, the paged catch-up, the progress marks.

pub mod pipeline;
pub mod sink;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use common::engine::avro::DecodeError;
use common::engine::config::{KafkaConfig, LeaseConfig};
use common::engine::kafka::TopicSpec;
use common::engine::membership::Membership;
use common::engine::pg::PgError;
use common::engine::shutdown::CancellationToken;
use common::engine::store::cache::{RedisStore, VersionedCache};
use common::engine::store::{CachedRow, Versioned, WriteTx};
use deadpool_postgres::Pool;
use tracing::Instrument;

use self::pipeline::Pipeline;
use self::sink::ReadModelSink;

/// A read-model row with its id, as the workload's writes return it.
pub type Keyed<R> = (<R as CachedRow>::Id, Versioned<R>);

/// What a workload gives the materializer: how to decode its aggregates and
/// which rows of its declared tables they write. The engine takes the rows
/// the batch changed from its statements (`RETURNING`, [`WriteTx`]), reads
/// back only the touched rows left unchanged, copies them to Redis and pages
/// through the table for the catch-up
/// ([`common::engine::store::changed_page`]), all from the row's table declaration.
pub trait SinkWorkload: Send + Sync + 'static {
    /// Names the workload in logs and in the `workload` metric label.
    const NAME: &'static str;
    /// One record of the workload's aggregates topic.
    type Aggregate: Send + Sync + 'static;
    /// The read-model row the writes produce, copied to Redis.
    type Row: CachedRow;

    /// Decodes one record.
    ///
    /// # Errors
    /// [`DecodeError`] when the record cannot be read: the engine stops its
    /// partition at it (skipping could lose newer values) and raises the alarm.
    fn decode(&self, bytes: &[u8]) -> Result<Self::Aggregate, DecodeError>;

    /// When the newest input behind `aggregate` was accepted (ms since the
    /// epoch): the freshness metric measures from it.
    fn watermark_ms(&self, aggregate: &Self::Aggregate) -> i64;

    /// Writes a batch within `tx` (the engine commits it), through the
    /// engine's declared tables ([`common::engine::store::VersionedTable`],
    /// passed `tx` itself so that the rows of [`Self::Row`]'s table they
    /// change are kept), and returns the id of every row of [`Self::Row`] the
    /// batch touched, changed or not (the engine reads the unchanged ones
    /// back for Redis, so a replay after a crash still refreshes it). Must be
    /// safe to repeat with the same batch: after any failure the batch is replayed.
    fn write(
        &self,
        tx: &WriteTx<'_>,
        batch: &[Self::Aggregate],
    ) -> impl Future<Output = Result<Vec<<Self::Row as CachedRow>::Id>, PgError>> + Send;
}

/// Where a workload's aggregates come from: its topic and its lease group
/// (also the group.id of its Kafka consumer). From the workload's config.
#[derive(Debug, Clone)]
pub struct Source {
    pub topic: TopicSpec,
    pub group_id: String,
}

/// What every pipeline of the process shares.
#[derive(Clone)]
pub struct Engine {
    pub pool: Pool,
    pub redis: RedisStore,
    pub redis_ttl: Duration,
    pub kafka: KafkaConfig,
    pub lease: LeaseConfig,
    /// Most aggregates written in one transaction.
    pub max_batch: usize,
    /// Longest wait to fill a batch once the first aggregate arrived.
    pub batch_wait: Duration,
}

type Running = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// One workload, ready to run: a line of the materializer's list of workloads.
pub struct Registration {
    pub name: &'static str,
    pub source: Source,
    start: Box<dyn FnOnce(Engine, Source, CancellationToken) -> Running + Send>,
}

impl Registration {
    pub fn new<W: SinkWorkload>(workload: W, source: Source) -> Self {
        Registration {
            name: W::NAME,
            source,
            start: Box::new(move |engine, source, token| Box::pin(run_pipeline(workload, engine, source, token))),
        }
    }

    /// Joins the workload's lease group and runs its pipeline until `token` is cancelled.
    ///
    /// # Errors
    /// Startup failures (leases, the consumer) and Kafka assignment failures.
    pub fn run(self, engine: Engine, token: CancellationToken) -> impl Future<Output = anyhow::Result<()>> + Send {
        (self.start)(engine, self.source, token)
    }
}

async fn run_pipeline<W: SinkWorkload>(
    workload: W,
    engine: Engine,
    source: Source,
    token: CancellationToken,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let topic = &source.topic.name;
    let membership =
        Membership::join(engine.pool.clone(), &engine.kafka, &engine.lease, &source.group_id, topic).await?;
    let sink = Arc::new(ReadModelSink::new(
        workload,
        engine.pool.clone(),
        VersionedCache::new(engine.redis.clone()),
        engine.redis_ttl,
    ));
    let pipeline = Pipeline::new(&engine, &source, sink.clone(), membership).context("creating the consumer")?;
    // The Redis copier outlives the pipeline's last batch: it stops after it.
    let stop_copier = CancellationToken::new();
    let copier = tokio::spawn({
        let stop = stop_copier.clone();
        async move { sink.run_copier(stop).await }.instrument(tracing::info_span!("redis-copier", workload = W::NAME))
    });
    tracing::info!(workload = W::NAME, topic, group = source.group_id, "pipeline started");
    let result = pipeline.run(token).await;
    stop_copier.cancel();
    if let Err(e) = copier.await {
        tracing::error!(workload = W::NAME, error = %e, "the redis copier panicked");
    }
    result
}
