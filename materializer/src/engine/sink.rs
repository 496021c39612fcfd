//! Writes a batch of a workload's aggregates to its read model: PostgreSQL
//! (the record, one transaction through [`SinkWorkload::write`]), then hands
//! the rows to the Redis copier (the hot copy), each guarded so replays are no-ops.
//!
//! PostgreSQL is the truth and must keep advancing whatever Redis does: a
//! batch only fails on a PostgreSQL error, and it never waits for Redis. The
//! rows it wrote are held (newest version each, in batch order) and copied
//! by one background task per pipeline, [`ReadModelSink::run_copier`], in
//! rounds of at most [`ROWS_PER_ROUND`] rows (script calls of at most
//! [`common::engine::store::cache::ROWS_PER_SCRIPT`], two in flight at a time) under the version guard, so Redis
//! is never blocked for more than a few milliseconds and catches up without
//! ever moving backwards. When Redis does not answer, the rows stay held;
//! past [`MAX_PENDING`] of them they are dropped and re-read from PostgreSQL
//! instead (a catch-up from the oldest dropped write on), so memory stays bounded.
//!
//! The catch-up: a materializer that dies with rows still pending leaves
//! Redis possibly stale for them, so every pipeline starts by copying to
//! Redis the rows PostgreSQL changed since the oldest *settled mark* of its
//! workload, less [`MARK_MARGIN`]: each running pipeline keeps one in Redis
//! ([`RedisStore::put_settled`](common::engine::store::cache::RedisStore::put_settled),
//! a field per instance), a wall-clock time before which every row it wrote
//! to PostgreSQL is in Redis (the start of its oldest write not yet all in
//! Redis, else now), moved forward after the rows it covers were copied, at
//! most every [`MARK_EVERY`] and once more at a clean stop. So a start
//! after a clean stop copies what changed in the last seconds, and one after
//! a kill what its dead predecessor held, not the table. Never more than one
//! Redis TTL back (an older Redis entry has expired): that is also the window
//! when no mark is there (a first start, a flushed Redis). A start first
//! sets its own mark to where its catch-up begins, so a start killed mid-way
//! is covered by the next; once caught up it removes the marks it read that
//! did not move since (their instances are gone, their rows copied). The
//! catch-up pages through the read model by id ([`store::changed_page`] of
//! the row's table, [`ROWS_PER_PAGE`] rows a statement), between the copies
//! of new batches' rows, which go first.
//!
//! The processor's progress records ([`common::engine::progress`]) ride along:
//! written to PostgreSQL in the batch's transaction, and to Redis only once
//! every row of their batch and of the batches before it is there and no
//! catch-up is running, so a query that sees a progress in Redis reads rows
//! at least that fresh. After each round that wrote anything, a change
//! notification goes out on Redis pub/sub (the query's token waits and live
//! streams listen to it).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use common::engine::membership::Membership;
use common::engine::pg::PgError;
use common::engine::progress::{self, Progress};
use common::engine::shutdown::CancellationToken;
use common::engine::store::cache::{CacheError, VersionedCache};
use common::engine::store::{self, CachedRow, Versioned, WriteTx};
use deadpool_postgres::Pool;

use super::{Keyed, SinkWorkload};
use crate::metrics as m;

/// Most held rows copied in one round: script calls of at most
/// [`common::engine::store::cache::ROWS_PER_SCRIPT`] rows each (so none blocks Redis for long),
/// [`common::engine::store::cache::SCRIPTS_IN_FLIGHT`] in flight at a time. A default batch's rows go in one round.
pub const ROWS_PER_ROUND: usize = 2_000;
/// Most rows one PostgreSQL statement of the catch-up reads.
pub const ROWS_PER_PAGE: i64 = 5_000;
/// Most rows held for Redis. Beyond, they are dropped and re-read from
/// PostgreSQL by a catch-up (about 100 bytes each held).
pub const MAX_PENDING: usize = 100_000;
/// Also re-read when rows are dropped: how much earlier than the oldest dropped
/// batch's start its rows may carry as `updated_at` (none in practice; a margin).
const DROP_MARGIN: Duration = Duration::from_secs(5);
/// Batches whose progress records and freshness samples wait for Redis; beyond,
/// the two oldest merge (marks) or the oldest samples are dropped.
const MAX_WAITING_BATCHES: usize = 256;
/// How often the copier tries again when no batch wakes it.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// How long the copier keeps handing Redis held rows once its pipeline stopped.
const LAST_COPY: Duration = Duration::from_secs(3);
/// A start catches up from this much before the oldest settled mark: the
/// marks are wall-clock times of other instances, possibly on other hosts.
pub const MARK_MARGIN: Duration = Duration::from_secs(5);
/// Most often a pipeline moves its settled mark (one `HSET`).
pub const MARK_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Pg(#[from] PgError),
}

impl SinkError {
    /// Worth retrying the batch: PostgreSQL unavailable.
    pub fn is_retryable(&self) -> bool {
        match self {
            SinkError::Pg(e) => e.is_retryable(),
        }
    }
}

/// Where a batch's reading stopped, stored with its rows: a crash before
/// their commit replays the batch, one after it never does.
#[derive(Clone, Copy)]
pub struct Positions<'a> {
    pub membership: &'a Membership,
    pub topic: &'a str,
    /// The next offset to read per partition.
    pub next: &'a BTreeMap<i32, i64>,
}

/// A row PostgreSQL holds and Redis may not.
struct Held<R> {
    row: Versioned<R>,
    /// The batch that wrote this version.
    batch: u64,
    /// When that batch's write began: its `updated_at` is later.
    written_from: Instant,
}

/// A catch-up in progress: paging through the read model by id.
struct CatchUp<Id> {
    /// Copy what changed since this moment; `None`: the start's, from the
    /// oldest settled mark (one Redis TTL back at most, and without one).
    from: Option<Instant>,
    /// The other instances' settled marks the start read: removed once it is done, unless they moved.
    covered: Vec<(String, i64)>,
    /// The same moment by PostgreSQL's clock, fixed by the first page.
    since: Option<SystemTime>,
    /// The last id done.
    after: Option<Id>,
    /// Changes with every (re)start, so a page read before one is not taken as progress.
    generation: u64,
    began: Instant,
    copied: usize,
}

/// What Redis still has to receive.
struct RedisBacklog<R: CachedRow> {
    /// Rows whose newest version Redis has not acknowledged.
    held: HashMap<R::Id, Held<R>>,
    /// The same rows in batch order: copied oldest first.
    queue: BTreeSet<(u64, R::Id)>,
    /// The number of the last batch written.
    batch: u64,
    catch_up: Option<CatchUp<R::Id>>,
    generations: u64,
    /// Progress records by the batch they came with: to Redis once every row
    /// up to that batch is there and no catch-up runs.
    marks: BTreeMap<u64, Vec<Progress>>,
    /// Watermarks of each batch's aggregates: freshness is measured once its rows are in Redis.
    watermarks: BTreeMap<u64, Vec<i64>>,
    /// Redis failed last time (to log an outage once).
    failing: bool,
    /// When each write to PostgreSQL in flight began, by ticket: its rows'
    /// `updated_at` is later, and the settled mark stays before it.
    writing: BTreeMap<u64, Instant>,
    tickets: u64,
    /// Rows copied by catch-ups so far.
    caught_up: usize,
}

impl<R: CachedRow> RedisBacklog<R> {
    fn new() -> Self {
        let mut backlog = RedisBacklog {
            held: HashMap::new(),
            queue: BTreeSet::new(),
            batch: 0,
            catch_up: None,
            generations: 0,
            marks: BTreeMap::new(),
            watermarks: BTreeMap::new(),
            failing: false,
            writing: BTreeMap::new(),
            tickets: 0,
            caught_up: 0,
        };
        backlog.start_catch_up(None);
        backlog
    }

    /// Starts a catch-up of what changed since `from` (one TTL back if `None`),
    /// or widens the one running to it (then it starts over from the first id).
    fn start_catch_up(&mut self, from: Option<Instant>) {
        let from = match &self.catch_up {
            Some(running) => running.from.zip(from).map(|(a, b)| a.min(b)),
            None => from,
        };
        self.generations += 1;
        self.catch_up = Some(CatchUp {
            from,
            covered: Vec::new(),
            since: None,
            after: None,
            generation: self.generations,
            began: Instant::now(),
            copied: 0,
        });
    }

    /// Holds a written batch's rows, progress records and watermarks. Returns
    /// how many rows were dropped (to be re-read by a catch-up) because more
    /// than `max_held` would be held.
    fn add(
        &mut self,
        rows: Vec<Keyed<R>>,
        progress: &[Progress],
        watermarks: Vec<i64>,
        written_from: Instant,
        max_held: usize,
    ) -> usize {
        self.batch += 1;
        let batch = self.batch;
        for (id, row) in rows {
            self.hold(id, Held { row, batch, written_from });
        }
        if !progress.is_empty() {
            self.marks.insert(batch, progress.to_vec());
            while self.marks.len() > MAX_WAITING_BATCHES {
                // Merge the oldest into the next: those marks wait a little longer.
                let (_, oldest) = self.marks.pop_first().expect("more than one batch");
                self.marks.first_entry().expect("more than one batch").get_mut().extend(oldest);
            }
        }
        if !watermarks.is_empty() {
            self.watermarks.insert(batch, watermarks);
        }
        while self.watermarks.len() > MAX_WAITING_BATCHES {
            self.watermarks.pop_first();
        }
        if self.held.len() <= max_held {
            return 0;
        }
        let dropped = self.held.len();
        let oldest = self.held.values().map(|h| h.written_from).min().expect("rows held");
        self.held.clear();
        self.queue.clear();
        self.watermarks.clear();
        self.start_catch_up(Some(oldest.checked_sub(DROP_MARGIN).unwrap_or(oldest)));
        dropped
    }

    /// Holds a row unless an equal or newer version is held already.
    fn hold(&mut self, id: R::Id, new: Held<R>) {
        if let Some(cur) = self.held.get(&id) {
            if cur.row.version >= new.row.version {
                return;
            }
            self.queue.remove(&(cur.batch, id.clone()));
        }
        self.queue.insert((new.batch, id.clone()));
        self.held.insert(id, new);
    }

    /// Takes up to `n` rows, oldest batch first.
    fn take(&mut self, n: usize) -> Vec<(R::Id, Held<R>)> {
        let mut taken = Vec::with_capacity(n.min(self.queue.len()));
        while taken.len() < n {
            let Some((_, id)) = self.queue.pop_first() else { break };
            let held = self.held.remove(&id).expect("queued rows are held");
            taken.push((id, held));
        }
        taken
    }

    /// Every batch before this one has all its rows in Redis.
    fn first_unfinished_batch(&self) -> u64 {
        self.queue.first().map_or(self.batch + 1, |(b, _)| *b)
    }

    /// The progress records Redis may now receive: of the batches whose rows,
    /// and all rows before them, are in Redis, unless a catch-up runs.
    fn due_marks(&mut self) -> Vec<Progress> {
        if self.catch_up.is_some() {
            return Vec::new();
        }
        let rest = self.marks.split_off(&self.first_unfinished_batch());
        let due: Vec<Progress> = std::mem::replace(&mut self.marks, rest).into_values().flatten().collect();
        progress::furthest(&due)
    }

    /// The moment before which every row this pipeline wrote to PostgreSQL is
    /// in Redis: the start of its oldest write in flight or held, else `now`;
    /// none while a catch-up runs (the mark stays where it was).
    fn settled(&self, now: Instant) -> Option<Instant> {
        if self.catch_up.is_some() {
            return None;
        }
        let held = self.queue.first().map(|(_, id)| self.held[id].written_from);
        Some(self.writing.values().copied().chain(held).fold(now, Instant::min))
    }

    /// The watermarks of the batches now wholly in Redis.
    fn due_watermarks(&mut self) -> Vec<i64> {
        let rest = self.watermarks.split_off(&self.first_unfinished_batch());
        std::mem::replace(&mut self.watermarks, rest).into_values().flatten().collect()
    }
}

/// How one step of the copier went.
enum Step {
    /// Something was copied; there may be more.
    Copied,
    /// Nothing left to copy.
    Idle,
    /// Redis (or, for a catch-up page, PostgreSQL) failed: try again later.
    Failed,
}

/// A write to PostgreSQL in flight: counted in the settled mark until dropped.
struct Writing<'a, R: CachedRow> {
    backlog: &'a Mutex<RedisBacklog<R>>,
    ticket: u64,
}

impl<'a, R: CachedRow> Writing<'a, R> {
    fn begin(backlog: &'a Mutex<RedisBacklog<R>>, started: Instant) -> Self {
        let mut b = backlog.lock().expect("backlog lock");
        b.tickets += 1;
        let ticket = b.tickets;
        b.writing.insert(ticket, started);
        Writing { backlog, ticket }
    }
}

impl<R: CachedRow> Drop for Writing<'_, R> {
    fn drop(&mut self) {
        self.backlog.lock().expect("backlog lock").writing.remove(&self.ticket);
    }
}

pub struct ReadModelSink<W: SinkWorkload> {
    workload: W,
    /// This pipeline's field among its workload's settled marks.
    instance: String,
    /// The settled mark last written (ms since the epoch) and when.
    marked: Mutex<Option<(i64, Instant)>>,
    pool: Pool,
    cache: VersionedCache<W::Row>,
    redis_ttl: Duration,
    max_held: usize,
    backlog: Mutex<RedisBacklog<W::Row>>,
    /// Rung by every batch written: the copier has work.
    wake: tokio::sync::Notify,
    /// One copier at a time (the background task, or a test driving it).
    copying: tokio::sync::Mutex<()>,
}

impl<W: SinkWorkload> ReadModelSink<W> {
    /// A sink whose first job for Redis is the start's catch-up, from the
    /// oldest settled mark of its workload (one TTL back at most, and without one).
    pub fn new(workload: W, pool: Pool, cache: VersionedCache<W::Row>, redis_ttl: Duration) -> Self {
        Self::with_max_held(workload, pool, cache, redis_ttl, MAX_PENDING)
    }

    /// [`Self::new`], holding at most `max_held` rows for Redis (tests).
    pub fn with_max_held(
        workload: W,
        pool: Pool,
        cache: VersionedCache<W::Row>,
        redis_ttl: Duration,
        max_held: usize,
    ) -> Self {
        metrics::gauge!(m::REDIS_CATCHING_UP, "workload" => W::NAME).set(1.0);
        ReadModelSink {
            workload,
            instance: common::random_suffix(),
            marked: Mutex::new(None),
            pool,
            cache,
            redis_ttl,
            max_held,
            backlog: Mutex::new(RedisBacklog::new()),
            wake: tokio::sync::Notify::new(),
            copying: tokio::sync::Mutex::new(()),
        }
    }

    pub fn workload(&self) -> &W {
        &self.workload
    }

    /// Applies a batch to PostgreSQL, with the consumer `positions` after it
    /// when given (one transaction: one commit per batch), and hands its rows
    /// to the Redis copier (never waiting for Redis). Safe to call again with
    /// the same batch after any failure.
    ///
    /// # Errors
    /// [`SinkError::Pg`]: retry the whole batch (PostgreSQL keeps what it has,
    /// guarded by offsets).
    pub async fn write(
        &self,
        batch: &[W::Aggregate],
        progress: &[Progress],
        positions: Option<Positions<'_>>,
    ) -> Result<(), SinkError> {
        let started = Instant::now();
        let writing = Writing::begin(&self.backlog, started);
        let rows = async {
            let mut client = self.pool.get().await.map_err(PgError::from)?;
            let tx = WriteTx::new(client.transaction().await?, W::Row::table().name());
            // The rows, the progress records and the positions are independent statements, issued
            // at once: the connection pipelines them, one round trip's wait instead of three.
            let rows = async {
                if batch.is_empty() {
                    Ok(Vec::new())
                } else {
                    self.workload.write(&tx, batch).await
                }
            };
            let positions = async {
                match positions {
                    Some(Positions { membership, topic, next }) => membership.store_offsets(&*tx, topic, next).await,
                    None => Ok(()),
                }
            };
            let (ids, (), ()) = tokio::try_join!(rows, progress::pg::write(&tx, progress), positions)?;
            // What Redis needs: the rows the statements changed, as they returned them; only the
            // touched rows they left unchanged (a replay) are read back.
            let (tx, written) = tx.into_parts();
            let rows = store::written_rows::<W::Row>(&tx, &ids, written).await?;
            tx.commit().await?;
            Ok::<_, PgError>(rows)
        }
        .await
        .inspect_err(|_| metrics::counter!(m::SINK_ERRORS, "sink" => "postgres", "workload" => W::NAME).increment(1))?;
        metrics::histogram!(m::SINK_DURATION, "sink" => "postgres", "workload" => W::NAME)
            .record(started.elapsed().as_secs_f64());

        let watermarks: Vec<i64> = batch.iter().map(|a| self.workload.watermark_ms(a)).collect();
        m::record_input_age(W::NAME, "postgres", &watermarks);
        let (dropped, held) = {
            let mut backlog = self.backlog.lock().expect("backlog lock");
            let dropped = backlog.add(rows, progress, watermarks, started, self.max_held);
            (dropped, backlog.held.len())
        };
        drop(writing); // after its rows are held: the settled mark never passes them

        metrics::gauge!(m::REDIS_PENDING, "workload" => W::NAME).set(held as f64);
        if dropped > 0 {
            metrics::counter!(m::REDIS_DROPPED, "workload" => W::NAME).increment(dropped as u64);
            tracing::warn!(
                workload = W::NAME,
                dropped,
                max = self.max_held,
                "too many rows held for redis; dropped, redis will catch up from PostgreSQL"
            );
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Copies to Redis, a bounded call at a time, until everything held is
    /// there, any catch-up is done and the progress marks are written, or
    /// Redis fails (what it refused stays held). Never fails.
    pub async fn catch_up(&self) {
        self.copy(&CancellationToken::new()).await;
        self.mark_settled(true).await;
    }

    /// Rows the catch-ups of this sink copied to Redis so far.
    pub fn caught_up_rows(&self) -> usize {
        self.backlog.lock().expect("backlog lock").caught_up
    }

    /// Moves this pipeline's settled mark forward to what is in Redis now
    /// (at most every [`MARK_EVERY`] unless `now`). Best effort: a mark left
    /// behind only makes the next start's catch-up longer.
    async fn mark_settled(&self, now: bool) {
        let Some(settled) = self.backlog.lock().expect("backlog lock").settled(Instant::now()) else { return };
        let at_ms = common::now_ms() - i64::try_from(settled.elapsed().as_millis()).unwrap_or(i64::MAX);
        let due = match *self.marked.lock().expect("mark lock") {
            Some((last, _)) if last >= at_ms => false,
            Some((_, when)) => now || when.elapsed() >= MARK_EVERY,
            None => true,
        };
        if !due {
            return;
        }
        match self.cache.store().put_settled(W::NAME, &self.instance, at_ms).await {
            Ok(()) => *self.marked.lock().expect("mark lock") = Some((at_ms, Instant::now())),
            Err(e) => self.failed(&e),
        }
    }

    /// The copier of this sink's pipeline: copies whenever a batch was
    /// written (and every second while something is left) until `stop`; then
    /// hands Redis what is held for a few more seconds. Anything left then
    /// is copied by the next start's catch-up.
    pub async fn run_copier(&self, stop: CancellationToken) {
        loop {
            // At once at start: the catch-up needs no batch to begin.
            self.copy(&stop).await;
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(RETRY_EVERY) => {}
            }
        }
        let _ = tokio::time::timeout(LAST_COPY, async {
            self.copy(&stop).await;
            self.mark_settled(true).await;
        })
        .await;
    }

    /// Rounds of [`Self::step`] until idle or failed; catch-up pages only until `stop`.
    async fn copy(&self, stop: &CancellationToken) {
        let _one = self.copying.lock().await;
        let mut wrote = false;
        loop {
            let step = self.step(!stop.is_cancelled(), &mut wrote).await;
            let (marks, watermarks) = {
                let mut backlog = self.backlog.lock().expect("backlog lock");
                (backlog.due_marks(), backlog.due_watermarks())
            };
            let now = common::now_ms();
            m::record_input_age(W::NAME, "redis", &watermarks);
            let freshness = metrics::histogram!(m::FRESHNESS, "workload" => W::NAME);
            for w in watermarks {
                freshness.record((now - w).max(0) as f64 / 1000.0);
            }
            // Progress only after every row up to its batch: then Redis is at least as fresh as it says.
            let marked = if marks.is_empty() { Ok(()) } else { self.cache.store().put_progress(&marks).await };
            match &marked {
                Ok(()) => wrote |= !marks.is_empty(),
                Err(e) => {
                    self.failed(e);
                    let mut backlog = self.backlog.lock().expect("backlog lock");
                    let first = backlog.first_unfinished_batch().saturating_sub(1);
                    backlog.marks.entry(first).or_default().extend(marks);
                }
            }
            if !matches!(step, Step::Copied) || marked.is_err() {
                break;
            }
        }
        if wrote {
            // Best effort: listeners also poll, so a lost notification only delays them.
            if let Err(e) = self.cache.store().publish_change(W::NAME).await {
                tracing::debug!(workload = W::NAME, error = %e, "change notification not sent");
            }
        }
        let held = self.backlog.lock().expect("backlog lock").held.len();
        metrics::gauge!(m::REDIS_PENDING, "workload" => W::NAME).set(held as f64);
        self.mark_settled(false).await;
    }

    /// One bounded step: a call's worth of held rows (oldest batch first), else a catch-up page.
    async fn step(&self, pages: bool, wrote: &mut bool) -> Step {
        let (taken, catching_up) = {
            let mut backlog = self.backlog.lock().expect("backlog lock");
            (backlog.take(ROWS_PER_ROUND), backlog.catch_up.is_some())
        };
        if taken.is_empty() {
            return if catching_up && pages { self.catch_up_page(wrote).await } else { Step::Idle };
        }
        let rows: Vec<Keyed<W::Row>> = taken.iter().map(|(id, h)| (id.clone(), h.row.clone())).collect();
        let started = Instant::now();
        match self.cache.put_if_newer(&rows).await {
            Ok(written) => {
                metrics::histogram!(m::SINK_DURATION, "sink" => "redis", "workload" => W::NAME)
                    .record(started.elapsed().as_secs_f64());
                metrics::counter!(m::REDIS_WRITES, "workload" => W::NAME).increment(written as u64);
                *wrote = true;
                self.succeeded();
                Step::Copied
            }
            Err(e) => {
                self.failed(&e);
                let mut backlog = self.backlog.lock().expect("backlog lock");
                for (id, held) in taken {
                    backlog.hold(id, held);
                }
                Step::Failed
            }
        }
    }

    /// One page of the catch-up: up to [`ROWS_PER_PAGE`] rows from PostgreSQL,
    /// those changed copied to Redis [`ROWS_PER_ROUND`] at a time.
    async fn catch_up_page(&self, wrote: &mut bool) -> Step {
        let Some((from, since, after, generation)) = self
            .backlog
            .lock()
            .expect("backlog lock")
            .catch_up
            .as_ref()
            .map(|c| (c.from, c.since, c.after.clone(), c.generation))
        else {
            return Step::Idle;
        };
        let window = match (since, from) {
            (Some(_), _) => Duration::ZERO, // fixed already
            (None, Some(from)) => from.elapsed().min(self.redis_ttl),
            (None, None) => match self.start_window(generation).await {
                Ok(window) => window,
                Err(e) => {
                    self.failed(&e);
                    return Step::Failed;
                }
            },
        };
        let page = async {
            let client = self.pool.get().await.map_err(PgError::from)?;
            let since = match since {
                Some(since) => since,
                None => {
                    let row = client
                        .query_one("SELECT now() - make_interval(secs => $1) AS since", &[&window.as_secs_f64()])
                        .await?;
                    row.get::<_, SystemTime>("since")
                }
            };
            let page = store::changed_page::<W::Row>(&client, since, after.as_ref(), ROWS_PER_PAGE).await?;
            Ok::<_, PgError>((since, page))
        }
        .await;
        let (since, page) = match page {
            Ok(page) => page,
            Err(e) => {
                // Not Redis' fault: the held rows keep flowing; the catch-up tries again next round.
                tracing::warn!(workload = W::NAME, error = %e, "could not read a page of changed rows; redis catch-up postponed");
                return Step::Failed;
            }
        };
        for chunk in page.changed.chunks(ROWS_PER_ROUND) {
            match self.cache.put_if_newer(chunk).await {
                Ok(_) => *wrote = true,
                Err(e) => {
                    // The page is read again next time; the version guard makes that harmless.
                    self.failed(&e);
                    return Step::Failed;
                }
            }
        }
        self.succeeded();
        metrics::counter!(m::REDIS_CAUGHT_UP, "workload" => W::NAME).increment(page.changed.len() as u64);
        let covered = {
            let mut backlog = self.backlog.lock().expect("backlog lock");
            backlog.caught_up += page.changed.len();
            let Some(c) = backlog.catch_up.as_mut().filter(|c| c.generation == generation) else {
                return Step::Copied; // restarted meanwhile: this page was not its progress
            };
            c.since = Some(since);
            c.copied += page.changed.len();
            c.after = page.last;
            let mut covered = Vec::new();
            if page.scanned < ROWS_PER_PAGE as usize || c.after.is_none() {
                tracing::info!(
                    workload = W::NAME,
                    rows = c.copied,
                    seconds = c.began.elapsed().as_secs_f64(),
                    "redis caught up with PostgreSQL"
                );
                covered = std::mem::take(&mut c.covered);
                backlog.catch_up = None;
            }
            metrics::gauge!(m::REDIS_CATCHING_UP, "workload" => W::NAME)
                .set(f64::from(u8::from(backlog.catch_up.is_some())));
            covered
        };
        // Their rows are in Redis now; a mark its instance moved since stays.
        if let Err(e) = self.cache.store().forget_settled(W::NAME, &covered).await {
            tracing::debug!(workload = W::NAME, error = %e, "settled marks not removed; the next start reads them again");
        }
        Step::Copied
    }

    /// How far back the start's catch-up (of `generation`) goes: to the
    /// oldest settled mark of the workload less [`MARK_MARGIN`], one TTL at
    /// most (also without a mark). Sets this pipeline's own mark there first,
    /// so a start killed before it is done leaves the next one as far back.
    async fn start_window(&self, generation: u64) -> Result<Duration, CacheError> {
        let store = self.cache.store();
        let marks = store.settled_marks(W::NAME).await?;
        let now_ms = common::now_ms();
        let ttl_ms = i64::try_from(self.redis_ttl.as_millis()).unwrap_or(i64::MAX);
        let margin_ms = MARK_MARGIN.as_millis() as i64;
        let oldest = marks.iter().map(|(_, at)| *at).filter(|at| now_ms - at < ttl_ms).min();
        let window_ms = oldest.map_or(ttl_ms, |at| (now_ms - at + margin_ms).clamp(0, ttl_ms));
        store.put_settled(W::NAME, &self.instance, now_ms - window_ms).await?;
        *self.marked.lock().expect("mark lock") = Some((now_ms - window_ms, Instant::now()));
        tracing::info!(
            workload = W::NAME,
            marks = marks.len(),
            window_secs = window_ms as f64 / 1000.0,
            "redis catch-up from the oldest settled mark"
        );
        let mut backlog = self.backlog.lock().expect("backlog lock");
        if let Some(c) = backlog.catch_up.as_mut().filter(|c| c.generation == generation) {
            c.covered = marks.into_iter().filter(|(instance, _)| *instance != self.instance).collect();
        }
        Ok(Duration::from_millis(window_ms as u64))
    }

    fn succeeded(&self) {
        let mut backlog = self.backlog.lock().expect("backlog lock");
        if backlog.failing {
            tracing::info!(workload = W::NAME, "redis answers again; catching up");
        }
        backlog.failing = false;
    }

    fn failed(&self, e: &CacheError) {
        if !matches!(e, CacheError::BackingOff) {
            metrics::counter!(m::SINK_ERRORS, "sink" => "redis", "workload" => W::NAME).increment(1);
        }
        let mut backlog = self.backlog.lock().expect("backlog lock");
        if !backlog.failing {
            tracing::warn!(workload = W::NAME, error = %e, "redis unavailable; PostgreSQL goes on, Redis catches up when it answers");
        }
        backlog.failing = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Row;

    static TABLE: std::sync::LazyLock<store::VersionedTable> = std::sync::LazyLock::new(|| {
        use store::{Column, ColumnType, Version};
        store::VersionedTable::new("rows", vec![Column::new("id", ColumnType::BigInt)], vec![], Version::Counter("v"))
    });

    impl CachedRow for Row {
        type Id = u32;
        const KIND: &'static str = "row";

        fn table() -> &'static store::VersionedTable {
            &TABLE
        }

        fn key(id: &u32) -> store::Row {
            store::Row::new().with("id", store::Value::BigInt(i64::from(*id)))
        }

        fn id(key: &store::Row) -> Result<u32, PgError> {
            u32::try_from(key.big_int("id")?).map_err(|_| PgError::Corrupt("id".into()))
        }

        fn to_row(&self) -> store::Row {
            store::Row::new()
        }

        fn from_row(_: &store::Row) -> Result<Self, PgError> {
            Ok(Row)
        }
    }

    fn rows(ids: &[(u32, i64)]) -> Vec<Keyed<Row>> {
        ids.iter().map(|(id, version)| (*id, Versioned { row: Row, version: *version })).collect()
    }

    fn mark(next_offset: i64) -> Progress {
        Progress {
            events_topic: "e".into(),
            partition: 0,
            next_offset,
            aggregates_partition: 0,
            aggregates_partitions: 1,
        }
    }

    /// A backlog whose start-up catch-up is done.
    fn caught_up() -> RedisBacklog<Row> {
        let mut b = RedisBacklog::new();
        b.catch_up = None;
        b
    }

    #[test]
    fn marks_wait_for_every_row_of_their_batch_and_the_batches_before() {
        let mut b = caught_up();
        let now = Instant::now();
        b.add(rows(&[(1, 1), (2, 1)]), &[mark(10)], vec![], now, 100);
        b.add(rows(&[(3, 1)]), &[mark(20)], vec![], now, 100);
        assert!(b.due_marks().is_empty(), "nothing copied yet");
        let first = b.take(1);
        assert_eq!(first.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![1], "oldest batch first");
        assert!(b.due_marks().is_empty(), "row 2 of the first batch is still held");
        b.take(1);
        assert_eq!(b.due_marks(), vec![mark(10)]);
        b.take(1);
        assert_eq!(b.due_marks(), vec![mark(20)]);
    }

    #[test]
    fn a_newer_version_moves_a_row_to_its_batch_and_an_older_one_is_ignored() {
        let mut b = caught_up();
        let now = Instant::now();
        b.add(rows(&[(1, 5)]), &[mark(10)], vec![], now, 100);
        b.add(rows(&[(1, 4), (2, 1)]), &[], vec![], now, 100);
        assert_eq!(b.held[&1].row.version, 5);
        b.add(rows(&[(1, 6)]), &[mark(30)], vec![], now, 100);
        // Row 1 now belongs to batch 3: batch 1's marks are due once batch 2's row 2 is copied.
        let taken: Vec<u32> = b.take(1).into_iter().map(|(id, _)| id).collect();
        assert_eq!(taken, vec![2]);
        assert_eq!(b.due_marks(), vec![mark(10)]);
        assert_eq!(b.take(5).into_iter().map(|(_, h)| h.row.version).collect::<Vec<_>>(), vec![6]);
        assert_eq!(b.due_marks(), vec![mark(30)]);
    }

    #[test]
    fn the_settled_mark_stays_before_every_write_in_flight_or_held() {
        let backlog = Mutex::new(RedisBacklog::<Row>::new());
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(backlog.lock().unwrap().settled(at(1)), None, "not while the start's catch-up runs");
        backlog.lock().unwrap().catch_up = None;
        assert_eq!(backlog.lock().unwrap().settled(at(1)), Some(at(1)), "nothing held: now");
        let writing = Writing::begin(&backlog, at(2));
        assert_eq!(backlog.lock().unwrap().settled(at(3)), Some(at(2)), "a write in flight");
        backlog.lock().unwrap().add(rows(&[(1, 1)]), &[], vec![], at(2), 100);
        drop(writing);
        let later = Writing::begin(&backlog, at(4));
        assert_eq!(backlog.lock().unwrap().settled(at(5)), Some(at(2)), "its rows held");
        backlog.lock().unwrap().take(1);
        assert_eq!(backlog.lock().unwrap().settled(at(5)), Some(at(4)), "copied; the next write in flight");
        drop(later);
        assert_eq!(backlog.lock().unwrap().settled(at(5)), Some(at(5)));
    }

    #[test]
    fn no_marks_while_a_catch_up_runs() {
        let mut b: RedisBacklog<Row> = RedisBacklog::new();
        b.add(Vec::new(), &[mark(10)], vec![], Instant::now(), 100);
        assert!(b.due_marks().is_empty(), "the start-up catch-up is not done");
        b.catch_up = None;
        assert_eq!(b.due_marks(), vec![mark(10)]);
    }

    #[test]
    fn too_many_rows_held_are_dropped_for_a_catch_up_from_the_oldest_write() {
        let mut b = caught_up();
        let early = Instant::now();
        assert_eq!(b.add(rows(&[(1, 1), (2, 1)]), &[mark(10)], vec![1, 2], early, 3), 0);
        let dropped = b.add(rows(&[(3, 1), (4, 1)]), &[mark(20)], vec![3], early + Duration::from_secs(9), 3);
        assert_eq!(dropped, 4);
        assert!(b.held.is_empty() && b.queue.is_empty());
        let c = b.catch_up.as_ref().expect("a catch-up from PostgreSQL");
        assert_eq!(c.from, early.checked_sub(DROP_MARGIN));
        assert!(b.due_marks().is_empty(), "the marks wait for the catch-up");
        b.catch_up = None;
        assert_eq!(b.due_marks(), vec![mark(20)]);
        // A second overflow during a catch-up keeps the oldest start, and restarts it.
        b.start_catch_up(Some(early));
        b.catch_up.as_mut().unwrap().after = Some(7);
        b.start_catch_up(Some(early + Duration::from_secs(1)));
        let c = b.catch_up.as_ref().unwrap();
        assert_eq!((c.from, c.after), (Some(early), None));
        // One TTL back stays one TTL back.
        b.start_catch_up(None);
        b.start_catch_up(Some(early));
        assert_eq!(b.catch_up.as_ref().unwrap().from, None);
    }

    #[test]
    fn waiting_marks_stay_bounded() {
        let mut b: RedisBacklog<Row> = RedisBacklog::new();
        for i in 0..1000 {
            b.add(Vec::new(), &[mark(i)], vec![0; 10], Instant::now(), 100);
        }
        assert!(b.marks.len() <= MAX_WAITING_BATCHES && b.watermarks.len() <= MAX_WAITING_BATCHES);
        b.catch_up = None;
        assert_eq!(b.due_marks(), vec![mark(999)]);
    }
}
