//! One registered workload with its topic: parse, admit, publish, check the
//! partition, judge. [`Route`] erases the workload's types so the engine
//! can keep every workload in one routing table.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use common::engine::http::Body;
use common::engine::kafka::TopicSpec;
use common::engine::progress::ReadToken;
use hyper::Response;

use super::app::Shared;
use super::outcome::{respond, Outcome};
use super::publisher::{Delivered, EventPublisher};
use super::replies::Replies;
use super::upload::{self, Appender, ChannelChunks, Upload, UploadError};
use super::{BodyUse, Decided, Input, Intake};

/// A workload's topic: where its events go, and the partition count agreed for it.
pub(crate) struct Topic {
    pub spec: TopicSpec,
    pub publisher: EventPublisher,
    /// Partitions of the topic as agreed for the deployment; 0 until known.
    pub agreed_partitions: Arc<AtomicI32>,
    /// The decisions of a decided workload ([`Intake::replies_topic`]).
    pub replies: Option<Arc<Replies>>,
}

impl Topic {
    /// The partition `key` should have landed on, when it landed elsewhere.
    fn misrouted(&self, key: &[u8], delivered: &Delivered) -> Option<i32> {
        let agreed = self.agreed_partitions.load(Ordering::Relaxed);
        if agreed == 0 {
            return None;
        }
        let expected = common::engine::kafka::partition_for(key, agreed);
        (delivered.partition != expected).then_some(expected)
    }
}

/// Why the engine has no body to hand to a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyError {
    /// Over the edge's limit (as declared, or as read).
    TooLarge { limit_bytes: u64 },
    /// The client went away mid-body, or sent a broken chunk.
    Unreadable,
}

pub(crate) type Answer<'a> = Pin<Box<dyn Future<Output = Response<Body>> + Send + 'a>>;

/// A workload as the engine's routing table sees it.
pub(crate) trait Route: Send + Sync {
    fn name(&self) -> &'static str;
    fn path(&self) -> &'static str;
    /// Whether it serves `path`: its route, or below it for a workload with subpaths.
    fn serves(&self, path: &str) -> bool;
    /// The methods it accepts on `path` (one it serves), for 405's `Allow` (e.g. `PUT, DELETE`).
    fn allow(&self, path: &str) -> &'static str;
    fn accepts(&self, method: &hyper::Method, path: &str) -> bool;
    /// Whether the body is the input (read within the size limit) or ignored.
    fn reads_body(&self) -> bool;
    /// The body limit this route needs at least ([`Intake::MIN_BODY_LIMIT`]).
    fn min_body_limit(&self) -> u64;
    fn topic(&self) -> &Topic;
    /// Answers one `POST` that passed the edge checks.
    fn post<'a>(&'a self, shared: &'a Shared, request: Request<'a>, body: Result<&'a [u8], BodyError>) -> Answer<'a>;
    /// Whether the body is streamed to the workload ([`Upload`]) rather than read first.
    fn streams(&self) -> bool {
        false
    }
    /// Answers one streamed `POST` that passed the edge checks, reading its body from `body`.
    fn post_stream<'a>(&'a self, shared: &'a Shared, request: Request<'a>, body: ChannelChunks) -> Answer<'a> {
        let _ = (shared, request, body);
        Box::pin(async {
            common::engine::http::error(hyper::StatusCode::INTERNAL_SERVER_ERROR, "not a streamed route")
        })
    }
}

/// What the engine hands a route of one request, besides its body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request<'a> {
    pub method: &'a hyper::Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub content_type: Option<&'a str>,
}

pub(crate) struct Lane<W> {
    pub workload: W,
    pub topic: Topic,
    /// [`Intake::METHODS`] joined for 405's `Allow` header, and every subset
    /// of [`Intake::SUBPATH_METHODS`] joined, by its bit mask (what
    /// [`Intake::subpath_methods`] may answer for a path below the route).
    pub allow: (&'static str, Vec<&'static str>),
}

impl<W: Intake> Lane<W> {
    async fn accept(
        &self,
        shared: &Shared,
        request: Request<'_>,
        body: Result<&[u8], BodyError>,
    ) -> Outcome<W::Reject> {
        let body = match body {
            Ok(bytes) => bytes,
            Err(BodyError::Unreadable) => return Outcome::BodyUnreadable,
            Err(BodyError::TooLarge { limit_bytes }) => match W::BODY {
                BodyUse::Read { too_large } => return Outcome::Rejected(too_large(limit_bytes)),
                // The edge refuses these with 413 before the body would be read.
                BodyUse::Ignored => &[],
            },
        };
        let Request { method, path, query, content_type } = request;
        let input = Input { method, path, request: uuid::Uuid::new_v4(), query, content_type, body };
        let event = match self.workload.parse(&input, (shared.clock)()) {
            Ok(event) => event,
            Err(reason) => return Outcome::Rejected(reason),
        };
        let Ok(_permit) = shared.in_flight.try_acquire() else {
            return Outcome::Overloaded;
        };
        // A decided write waits for its reply, registered before the write can be decided.
        let mut waiting = match &self.topic.replies {
            Some(replies) if !replies.is_following() => return Outcome::NotFollowing,
            Some(replies) => Some(replies.expect(input.request.to_string())),
            None => None,
        };
        let key = self.workload.key(&event);
        let payload = self.workload.encode(&event);
        let delivered = match self.topic.publisher.publish(&key, &payload).await {
            Ok(delivered) => delivered,
            Err(e) => return Outcome::Unavailable(e),
        };
        if let Some(expected) = self.topic.misrouted(&key, &delivered) {
            return Outcome::Misrouted { partition: delivered.partition, expected };
        }
        if let Err(reason) = self.workload.judge(&event, &delivered) {
            return Outcome::Rejected(reason);
        }
        let token =
            ReadToken { topic: self.topic.spec.name.clone(), partition: delivered.partition, offset: delivered.offset };
        let Some(waiting) = waiting.as_mut() else {
            return Outcome::Accepted(Decided { status: W::ACCEPTED, body: None }, token);
        };
        let Some(reply) = waiting.reply(shared.decision_timeout).await else { return Outcome::Undecided };
        match self.workload.decided(&event, &reply) {
            Some(Ok(decided)) => Outcome::Accepted(decided, token),
            Some(Err(reason)) => Outcome::Rejected(reason),
            None => {
                tracing::error!(workload = W::NAME, "a reply this instance cannot read: outcome unknown");
                Outcome::Undecided
            }
        }
    }
}

impl<W: Intake> Route for Lane<W> {
    fn name(&self) -> &'static str {
        W::NAME
    }

    fn path(&self) -> &'static str {
        W::ROUTE
    }

    fn serves(&self, path: &str) -> bool {
        match path.strip_prefix(W::ROUTE) {
            Some("") => true,
            Some(rest) => !W::SUBPATH_METHODS.is_empty() && rest.starts_with('/'),
            None => false,
        }
    }

    fn allow(&self, path: &str) -> &'static str {
        if path == W::ROUTE {
            return self.allow.0;
        }
        let mask = W::subpath_methods(path)
            .iter()
            .filter_map(|m| W::SUBPATH_METHODS.iter().position(|s| s == m))
            .fold(0, |mask, i| mask | 1 << i);
        self.allow.1[mask]
    }

    fn accepts(&self, method: &hyper::Method, path: &str) -> bool {
        if path == W::ROUTE {
            W::METHODS.contains(method)
        } else {
            W::subpath_methods(path).contains(method)
        }
    }

    fn reads_body(&self) -> bool {
        matches!(W::BODY, BodyUse::Read { .. })
    }

    fn min_body_limit(&self) -> u64 {
        W::MIN_BODY_LIMIT
    }

    fn topic(&self) -> &Topic {
        &self.topic
    }

    fn post<'a>(&'a self, shared: &'a Shared, request: Request<'a>, body: Result<&'a [u8], BodyError>) -> Answer<'a> {
        Box::pin(async move {
            let outcome = self.accept(shared, request, body).await;
            respond(W::NAME, outcome, &shared.fatal)
        })
    }
}

/// A registered [`Upload`] with its topic: the body is streamed to the workload.
pub(crate) struct StreamLane<U> {
    pub workload: U,
    pub topic: Topic,
    /// [`Upload::METHODS`] joined for 405's `Allow` header.
    pub allow: &'static str,
}

impl<U: Upload> StreamLane<U> {
    async fn receive(&self, shared: &Shared, request: Request<'_>, mut body: ChannelChunks) -> Outcome<U::Reject> {
        // One permit per upload, however long it streams.
        let Ok(_permit) = shared.in_flight.try_acquire() else {
            return Outcome::Overloaded;
        };
        let Request { method, path, query, content_type } = request;
        let input = Input { method, path, request: uuid::Uuid::new_v4(), query, content_type, body: &[] };
        let partitions = self.topic.agreed_partitions.load(Ordering::Relaxed);
        // The bound runs from the first record appended (the workload's begin, say) on.
        let progress = Arc::new(upload::Progress::default());
        body.idle = Some((shared.upload_idle, progress.clone()));
        let mut out = Appender::new(&self.topic.publisher, partitions, U::MAX_IN_FLIGHT).with_progress(progress);
        match self.workload.receive(&input, (shared.clock)(), &mut body, &mut out).await {
            Ok(decided) => Outcome::Uploaded(decided),
            Err(UploadError::Rejected(reason)) => Outcome::Rejected(reason),
            Err(UploadError::Body(upload::BodyError::Unreadable)) => Outcome::BodyUnreadable,
            Err(UploadError::Body(upload::BodyError::Idle(bound))) => Outcome::BodyIdle(bound),
            Err(UploadError::Append(e)) => Outcome::NotAppended(e),
        }
    }
}

impl<U: Upload> Route for StreamLane<U> {
    fn name(&self) -> &'static str {
        U::NAME
    }

    fn path(&self) -> &'static str {
        U::ROUTE
    }

    fn serves(&self, path: &str) -> bool {
        path == U::ROUTE
    }

    fn allow(&self, _: &str) -> &'static str {
        self.allow
    }

    fn accepts(&self, method: &hyper::Method, _: &str) -> bool {
        U::METHODS.contains(method)
    }

    /// Streamed, not read: no size limit applies.
    fn reads_body(&self) -> bool {
        false
    }

    fn min_body_limit(&self) -> u64 {
        0
    }

    fn topic(&self) -> &Topic {
        &self.topic
    }

    fn post<'a>(&'a self, _: &'a Shared, _: Request<'a>, _: Result<&'a [u8], BodyError>) -> Answer<'a> {
        Box::pin(async {
            common::engine::http::error(hyper::StatusCode::INTERNAL_SERVER_ERROR, "a streamed route read whole")
        })
    }

    fn streams(&self) -> bool {
        true
    }

    fn post_stream<'a>(&'a self, shared: &'a Shared, request: Request<'a>, body: ChannelChunks) -> Answer<'a> {
        Box::pin(async move {
            let outcome = self.receive(shared, request, body).await;
            respond(U::NAME, outcome, &shared.fatal)
        })
    }
}
