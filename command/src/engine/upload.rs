//! Streamed uploads: a workload whose input is a body of any size (a file of
//! billions of lines) reads it as a stream of chunks and appends records as
//! it goes, never holding the body whole.
//!
//! A workload implements [`Upload`]; the engine routes its `POST`s, hands it
//! the body as [`Chunks`] (a bounded channel fed from the connection: a slow
//! appender slows the client down) and an [`Append`] over the workload's
//! topic that keeps at most `max_in_flight` records unacknowledged (a full
//! window waits for the oldest acks: back-pressure all the way to the
//! broker). The workload answers with its status and JSON body
//! ([`Decided`]), or refuses in its own words.
//!
//! The workload never touches the producer: keyed records go to the
//! partition their key maps to under the topic's agreed partition count (the
//! engine names it explicitly, so no record can be misrouted), and records
//! meant for one partition (a per-partition end marker) name it.
//!
//! A live upload never goes quiet for long: once its first record is
//! appended, a body that lets `--upload-idle-timeout` pass without a record
//! appended (a client gone silent, or dripping bytes slower than lines)
//! reads as [`BodyError::Idle`], and the workload ends the upload as it does
//! a broken body. So anything that watches the log may take an upload with
//! no record for several times that bound as one whose writer died.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::engine::kafka::TopicSpec;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use hyper::body::Bytes;
use hyper::Method;

use super::publisher::{Delivered, PublishError};
use super::{Decided, Input, Reject};

/// Records a streamed upload keeps unacknowledged at most, by default.
pub const MAX_IN_FLIGHT: usize = 1024;

/// The chunks of a streamed body arriving in the size limit's place: only a
/// few are ever buffered.
pub const BUFFERED_CHUNKS: usize = 4;

/// Why the body stopped before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// The client went away mid-body, or sent a broken chunk.
    #[error("the request body could not be read")]
    Unreadable,
    /// No record was appended for this long while the body was awaited.
    #[error("no record for {0:?}: the body came too slowly")]
    Idle(Duration),
}

/// When an upload last appended a record: shared by its [`Appender`] (which
/// touches it) and its body (which gives up once it is too old).
#[derive(Debug)]
pub struct Progress {
    started: tokio::time::Instant,
    /// Milliseconds from `started` to the last append.
    last_ms: AtomicU64,
}

impl Default for Progress {
    fn default() -> Self {
        Progress { started: tokio::time::Instant::now(), last_ms: AtomicU64::new(0) }
    }
}

impl Progress {
    /// Records an append now.
    pub fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Time since the last append (or the start).
    pub fn idle(&self) -> Duration {
        self.started.elapsed().saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// A body, chunk by chunk.
pub trait Chunks: Send {
    /// The next chunk; `None` at the end of the body.
    fn next_chunk(&mut self) -> impl Future<Output = Option<Result<Bytes, BodyError>>> + Send;
}

/// Why a record may not be in the log. Never the client's fault.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The topic's partition count is not agreed yet: nothing can be routed.
    #[error("the topic's partition count is not known yet")]
    NoPartitions,
    /// A record named a partition the topic does not have (a workload bug).
    #[error("partition {0} is not one of the topic's")]
    NoSuchPartition(i32),
    /// An earlier record failed: what was appended since is unknown.
    #[error("an earlier record was not acknowledged: {0}")]
    Failed(String),
    /// No workload of that name is registered (a bug in the caller).
    #[error("no workload of that name is registered")]
    NoSuchWorkload,
}

impl AppendError {
    /// True when the record is certainly not in the log.
    pub fn outcome_known(&self) -> bool {
        match self {
            AppendError::Publish(e) => e.outcome_known(),
            AppendError::NoPartitions | AppendError::NoSuchPartition(_) | AppendError::NoSuchWorkload => true,
            AppendError::Failed(_) => false,
        }
    }
}

/// Appends a workload's records to its topic with a bounded window of
/// unacknowledged sends. After an error every later call fails too: what was
/// appended since the first failure is unknown.
pub trait Append: Send {
    /// The topic's partition count, as agreed for the deployment.
    fn partitions(&self) -> i32;

    /// Appends a keyed record to the partition its key maps to, and returns
    /// that partition; waits only while the window is full.
    fn append(&mut self, key: &[u8], payload: Vec<u8>) -> impl Future<Output = Result<i32, AppendError>> + Send;

    /// Appends an unkeyed record to `partition`; waits only while the window is full.
    fn append_to(&mut self, partition: i32, payload: Vec<u8>) -> impl Future<Output = Result<(), AppendError>> + Send;

    /// Appends an unkeyed record to `partition` and waits for it, and for every
    /// record before it: where it landed (its offset names it in the log).
    fn deliver_to(
        &mut self,
        partition: i32,
        payload: Vec<u8>,
    ) -> impl Future<Output = Result<Delivered, AppendError>> + Send;

    /// Waits until every record appended so far is acknowledged.
    fn flush(&mut self) -> impl Future<Output = Result<(), AppendError>> + Send;
}

/// Why an upload was not accepted.
#[derive(Debug)]
pub enum UploadError<R> {
    /// The client's fault, in the workload's words.
    Rejected(R),
    /// The body stopped before its end.
    Body(BodyError),
    /// The log did not take a record.
    Append(AppendError),
}

impl<R> From<AppendError> for UploadError<R> {
    fn from(e: AppendError) -> Self {
        UploadError::Append(e)
    }
}

/// One workload at the write edge whose input is a streamed body: a `POST`
/// route whose body becomes many records on the workload's own topic.
pub trait Upload: Send + Sync + 'static {
    /// Names the workload in metrics (label `workload`) and logs.
    const NAME: &'static str;
    /// The path it accepts uploads on, e.g. `/promotions/files`.
    const ROUTE: &'static str;
    /// The methods it accepts on the route; any other answers 405. `POST` by default.
    const METHODS: &'static [Method] = &[Method::POST];
    /// Records kept unacknowledged at most (the memory an upload holds is about this many records).
    const MAX_IN_FLIGHT: usize = MAX_IN_FLIGHT;

    /// Why an upload is refused.
    type Reject: Reject;

    /// The topic the records go to, as created when missing.
    fn topic(&self) -> TopicSpec;

    /// Reads `body` to its end (or to the first reason to refuse it),
    /// appending records to `out`, and answers. `input` has the request's
    /// headers and an empty body. `now_ms` is the command's clock.
    ///
    /// # Errors
    /// [`UploadError`]: the workload decides what it leaves in the log then
    /// (records that void what it appended, say).
    fn receive<C: Chunks, A: Append>(
        &self,
        input: &Input<'_>,
        now_ms: i64,
        body: &mut C,
        out: &mut A,
    ) -> impl Future<Output = Result<Decided, UploadError<Self::Reject>>> + Send;
}

/// Starts sending one record: enqueues it now, acknowledges later.
pub trait Sender: Send + Sync {
    /// Enqueues a record for `partition`; the future resolves with its acknowledgement.
    ///
    /// # Errors
    /// [`PublishError::QueueFull`] when the local queue has no room (the caller waits for acks and retries).
    fn start(
        &self,
        partition: i32,
        key: Option<&[u8]>,
        payload: &[u8],
    ) -> Result<BoxFuture<'static, Result<Delivered, PublishError>>, PublishError>;
}

/// The engine's [`Append`]: a window of at most `max_in_flight` unacknowledged sends.
pub struct Appender<'s, S: Sender> {
    sender: &'s S,
    partitions: i32,
    max_in_flight: usize,
    in_flight: FuturesUnordered<BoxFuture<'static, Result<Delivered, PublishError>>>,
    /// The first failure, returned again by every later call.
    failed: Option<String>,
    /// Touched on every record started.
    progress: Option<Arc<Progress>>,
}

impl<'s, S: Sender> Appender<'s, S> {
    /// An appender over `sender` for a topic of `partitions` partitions (0: not agreed yet).
    pub fn new(sender: &'s S, partitions: i32, max_in_flight: usize) -> Self {
        Appender {
            sender,
            partitions,
            max_in_flight: max_in_flight.max(1),
            in_flight: FuturesUnordered::new(),
            failed: None,
            progress: None,
        }
    }

    /// The same, touching `progress` on every record it starts.
    pub fn with_progress(mut self, progress: Arc<Progress>) -> Self {
        self.progress = Some(progress);
        self
    }

    /// Records appended and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    fn check(&self) -> Result<(), AppendError> {
        match &self.failed {
            Some(first) => Err(AppendError::Failed(first.clone())),
            None if self.partitions <= 0 => Err(AppendError::NoPartitions),
            None => Ok(()),
        }
    }

    fn fail(&mut self, e: PublishError) -> AppendError {
        self.failed.get_or_insert_with(|| e.to_string());
        AppendError::Publish(e)
    }

    /// Waits for the oldest-finishing send; records its failure.
    async fn settle_one(&mut self) -> Result<Option<Delivered>, AppendError> {
        match self.in_flight.next().await {
            None => Ok(None),
            Some(Ok(delivered)) => Ok(Some(delivered)),
            Some(Err(e)) => Err(self.fail(e)),
        }
    }

    async fn send(&mut self, partition: i32, key: Option<&[u8]>, payload: &[u8]) -> Result<(), AppendError> {
        self.check()?;
        if !(0..self.partitions).contains(&partition) {
            return Err(AppendError::NoSuchPartition(partition));
        }
        while self.in_flight.len() >= self.max_in_flight {
            self.settle_one().await?;
        }
        loop {
            match self.sender.start(partition, key, payload) {
                Ok(ack) => {
                    self.in_flight.push(ack);
                    if let Some(progress) = &self.progress {
                        progress.touch();
                    }
                    return Ok(());
                }
                // The producer's own queue is full: wait for an ack, then try again.
                Err(PublishError::QueueFull) if !self.in_flight.is_empty() => {
                    self.settle_one().await?;
                }
                Err(e) => return Err(self.fail(e)),
            }
        }
    }
}

impl<S: Sender> Append for Appender<'_, S> {
    fn partitions(&self) -> i32 {
        self.partitions
    }

    async fn append(&mut self, key: &[u8], payload: Vec<u8>) -> Result<i32, AppendError> {
        self.check()?;
        let partition = common::engine::kafka::partition_for(key, self.partitions);
        self.send(partition, Some(key), &payload).await?;
        Ok(partition)
    }

    async fn append_to(&mut self, partition: i32, payload: Vec<u8>) -> Result<(), AppendError> {
        self.send(partition, None, &payload).await
    }

    async fn deliver_to(&mut self, partition: i32, payload: Vec<u8>) -> Result<Delivered, AppendError> {
        self.flush().await?;
        self.send(partition, None, &payload).await?;
        match self.settle_one().await? {
            Some(delivered) => Ok(delivered),
            None => unreachable!("the record just sent is in flight"),
        }
    }

    async fn flush(&mut self) -> Result<(), AppendError> {
        self.check()?;
        while self.settle_one().await?.is_some() {}
        Ok(())
    }
}

/// The body of a streamed request, as the engine feeds it: chunks from a
/// bounded channel, given up on ([`BodyError::Idle`]) once `idle` holds an
/// upload that appended nothing for its bound.
pub(crate) struct ChannelChunks {
    pub chunks: tokio::sync::mpsc::Receiver<Result<Bytes, BodyError>>,
    pub idle: Option<(Duration, Arc<Progress>)>,
}

impl ChannelChunks {
    pub fn new(chunks: tokio::sync::mpsc::Receiver<Result<Bytes, BodyError>>) -> Self {
        ChannelChunks { chunks, idle: None }
    }
}

impl Chunks for ChannelChunks {
    async fn next_chunk(&mut self) -> Option<Result<Bytes, BodyError>> {
        let Some((bound, progress)) = &self.idle else { return self.chunks.recv().await };
        loop {
            let left = bound.saturating_sub(progress.idle());
            if left.is_zero() {
                return Some(Err(BodyError::Idle(*bound)));
            }
            // A chunk may come without a record (part of a line): wait again for what is left.
            if let Ok(chunk) = tokio::time::timeout(left, self.chunks.recv()).await {
                return chunk;
            }
        }
    }
}

/// Feeds `body`'s data frames into `to` until the body ends, it breaks, or
/// the receiver is gone (the workload stopped reading: the rest is not read).
pub(crate) async fn pump<B>(body: B, to: tokio::sync::mpsc::Sender<Result<Bytes, BodyError>>)
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::BodyExt;
    let mut body = std::pin::pin!(body);
    loop {
        let chunk = match body.frame().await {
            None => return,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if data.is_empty() => continue,
                Ok(data) => Ok(data),
                // Trailers: not part of the input.
                Err(_) => continue,
            },
            Some(Err(e)) => {
                tracing::debug!(error = %e.into(), "upload body unreadable");
                Err(BodyError::Unreadable)
            }
        };
        let broken = chunk.is_err();
        if to.send(chunk).await.is_err() || broken {
            return;
        }
    }
}

/// Answers for an upload whose workload accepted it.
pub(crate) fn accepted(decided: Decided) -> hyper::Response<common::engine::http::Body> {
    let mut r = match decided.body {
        Some(json) => common::engine::http::json(decided.status, json),
        None => common::engine::http::no_content(),
    };
    *r.status_mut() = decided.status;
    r
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use futures::FutureExt;
    use tokio::sync::oneshot;

    use super::*;

    /// A record as sent: partition, key, payload.
    type Sent = (i32, Option<Vec<u8>>, Vec<u8>);

    /// A sender whose acks the test releases by hand, and that remembers what it was given.
    #[derive(Default)]
    struct Manual {
        acks: Mutex<Vec<oneshot::Sender<Result<Delivered, PublishError>>>>,
        sent: Mutex<Vec<Sent>>,
        queue_full: Mutex<u32>,
    }

    impl Manual {
        fn release_all(&self) {
            for (i, ack) in self.acks.lock().unwrap().drain(..).enumerate() {
                let _ = ack.send(Ok(Delivered { partition: 0, offset: i as i64, appended_ms: None }));
            }
        }
    }

    impl Sender for Manual {
        fn start(
            &self,
            partition: i32,
            key: Option<&[u8]>,
            payload: &[u8],
        ) -> Result<BoxFuture<'static, Result<Delivered, PublishError>>, PublishError> {
            let mut full = self.queue_full.lock().unwrap();
            if *full > 0 {
                *full -= 1;
                return Err(PublishError::QueueFull);
            }
            self.sent.lock().unwrap().push((partition, key.map(<[u8]>::to_vec), payload.to_vec()));
            let (tx, rx) = oneshot::channel();
            self.acks.lock().unwrap().push(tx);
            Ok(async move { rx.await.unwrap_or(Err(PublishError::Timeout)) }.boxed())
        }
    }

    #[tokio::test]
    async fn an_append_waits_only_when_the_window_is_full() {
        let sender = Arc::new(Manual::default());
        let mut out = Appender::new(&*sender, 4, 3);
        for i in 0..3u8 {
            out.append(&[i], vec![i]).await.expect("room in the window");
        }
        assert_eq!(out.in_flight(), 3);
        let mut fourth = Box::pin(out.append(b"k", vec![9]));
        assert!(futures::poll!(fourth.as_mut()).is_pending(), "a full window waits");
        sender.release_all();
        let partition = fourth.await.expect("an ack made room");
        assert_eq!(partition, common::engine::kafka::partition_for(b"k", 4), "the key's partition, named");
        let sent = sender.sent.lock().unwrap().clone();
        assert_eq!(sent.len(), 4);
        assert_eq!(sent[3], (partition, Some(b"k".to_vec()), vec![9]));
    }

    #[tokio::test]
    async fn a_delivered_record_waits_for_every_record_before_it() {
        let sender = Arc::new(Manual::default());
        let mut out = Appender::new(&*sender, 2, 8);
        out.append_to(1, b"a".to_vec()).await.unwrap();
        let mut delivered = Box::pin(out.deliver_to(0, b"b".to_vec()));
        assert!(futures::poll!(delivered.as_mut()).is_pending());
        sender.release_all();
        assert!(futures::poll!(delivered.as_mut()).is_pending(), "b is sent only once a is acknowledged");
        sender.release_all();
        let d = delivered.await.expect("delivered");
        assert_eq!(d.offset, 0);
        let sent = sender.sent.lock().unwrap().clone();
        assert_eq!(sent, vec![(1, None, b"a".to_vec()), (0, None, b"b".to_vec())]);
    }

    #[tokio::test]
    async fn a_full_producer_queue_waits_for_an_ack_and_a_failure_sticks() {
        let sender = Arc::new(Manual::default());
        let mut out = Appender::new(&*sender, 1, 8);
        out.append_to(0, b"a".to_vec()).await.unwrap();
        *sender.queue_full.lock().unwrap() = 1;
        let mut second = Box::pin(out.append_to(0, b"b".to_vec()));
        assert!(futures::poll!(second.as_mut()).is_pending(), "waits for room");
        sender.release_all();
        second.await.expect("sent after the ack");

        // An ack that fails: every later call fails too.
        let failing = sender.acks.lock().unwrap().pop().unwrap();
        let _ = failing.send(Err(PublishError::Timeout));
        assert!(out.flush().await.is_err());
        assert!(out.append_to(0, b"c".to_vec()).await.is_err());
        assert!(matches!(Appender::new(&*sender, 0, 8).append(b"k", vec![]).await, Err(AppendError::NoPartitions)));
        assert!(matches!(
            Appender::new(&*sender, 2, 8).append_to(2, vec![]).await,
            Err(AppendError::NoSuchPartition(2))
        ));
    }

    #[tokio::test]
    async fn a_body_that_brings_no_record_within_the_bound_is_given_up() {
        let (tx, rx) = tokio::sync::mpsc::channel(BUFFERED_CHUNKS);
        let progress = Arc::new(Progress::default());
        let bound = Duration::from_millis(60);
        let mut body = ChannelChunks { chunks: rx, idle: Some((bound, progress.clone())) };
        tx.send(Ok(Bytes::from_static(b"a"))).await.unwrap();
        assert!(body.next_chunk().await.unwrap().is_ok(), "a chunk in time");
        // Chunks keep coming, but no record is appended: the bound still runs out.
        let drip = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                if tx.send(Ok(Bytes::from_static(b"b"))).await.is_err() {
                    return;
                }
            }
        });
        let started = std::time::Instant::now();
        let mut last = None;
        while let Some(chunk) = body.next_chunk().await {
            if chunk.is_err() {
                last = Some(chunk);
                break;
            }
        }
        assert_eq!(last, Some(Err(BodyError::Idle(bound))));
        // The drip never ends: only the bound ended the body (generous for a loaded machine).
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        progress.touch();
        assert!(progress.idle() < bound, "an append restarts the bound");
        drip.abort();
    }

    #[tokio::test]
    async fn the_pump_stops_when_the_reader_stops_and_forwards_a_broken_body() {
        let chunks: Vec<Result<hyper::body::Frame<Bytes>, std::io::Error>> =
            (0..100).map(|i| Ok(hyper::body::Frame::data(Bytes::from(vec![i as u8; 10])))).collect();
        let body = http_body_util::StreamBody::new(futures::stream::iter(chunks));
        let (tx, rx) = tokio::sync::mpsc::channel(BUFFERED_CHUNKS);
        let mut reader = ChannelChunks::new(rx);
        let read_two = async move {
            let first = reader.next_chunk().await;
            let second = reader.next_chunk().await;
            drop(reader);
            (first, second)
        };
        let ((first, second), ()) = tokio::join!(read_two, pump(body, tx));
        assert_eq!(first.unwrap().unwrap().len(), 10);
        assert!(second.unwrap().is_ok(), "the pump stopped once the reader went away");

        let broken: Vec<Result<hyper::body::Frame<Bytes>, std::io::Error>> =
            vec![Ok(hyper::body::Frame::data(Bytes::from_static(b"ab"))), Err(std::io::Error::other("reset"))];
        let body = http_body_util::StreamBody::new(futures::stream::iter(broken));
        let (tx, rx) = tokio::sync::mpsc::channel(BUFFERED_CHUNKS);
        pump(body, tx).await;
        let mut reader = ChannelChunks::new(rx);
        assert!(reader.next_chunk().await.unwrap().is_ok());
        assert_eq!(reader.next_chunk().await.unwrap(), Err(BodyError::Unreadable));
        assert!(reader.next_chunk().await.is_none());
    }
}
