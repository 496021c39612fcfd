//! The generic write edge: everything the command does that is not about one
//! workload.
//!
//! A workload implements [`Intake`]: its route, how one request becomes its
//! typed event (or a [`Reject`] with a one-line reason), the event's partition
//! key and encoded record, an optional judgement of the delivery, and its
//! success status. The engine owns the rest, the same for every workload:
//!
//! - routing (a table built from the registered workloads) and the edge
//!   checks (bearer token, rate limit, body size), in [`app`];
//! - reading the body within the edge's size limit, for workloads whose input
//!   it is ([`BodyUse`]);
//! - the in-flight limit (overload answers 503 with `Retry-After`);
//! - one publisher per workload topic ([`publisher`]), and the check that each
//!   record landed on the partition its key maps to under the partition count
//!   agreed for that topic (in `lane`);
//! - the mapping of every outcome to a status, in one place (`outcome`),
//!   with the `Analytics-Token` header on every success: the read token of
//!   the event's topic, partition and offset, which any `GET` of the query
//!   accepts as `after=` to read its own write;
//! - metrics (label `workload`), the gauges task and graceful shutdown;
//! - for a workload's background tasks ([`crate::CommandRole::tasks`]):
//!   appending to its topic and following it ([`tail`]).
//!
//! A workload's crate implements [`Intake`] and returns it from its
//! [`crate::CommandRole`]; `crate::build` registers every listed workload.

pub mod app;
mod lane;
mod outcome;
pub mod publisher;
mod replies;
pub mod tail;
pub mod upload;

use common::engine::request::JsonBodyError;
use hyper::{Method, StatusCode};

pub use app::{run, CommandApp, Engine};
pub use publisher::Delivered;
pub use tail::{Tail, Tailed};
pub use upload::{Append, AppendError, Chunks, Upload, UploadError};

/// What a workload serves at the write edge: an [`Intake`] (one request, one
/// event) or, wrapped in [`Streamed`], an [`Upload`] (a streamed body, many
/// records). [`crate::CommandRole::Intake`] is either.
pub trait Served: Send + Sync + 'static {
    /// Adds it to `engine`.
    ///
    /// # Errors
    /// As [`Engine::register`].
    fn register_on(self, engine: Engine<'_>) -> anyhow::Result<Engine<'_>>;
}

impl<T: Intake> Served for T {
    fn register_on(self, engine: Engine<'_>) -> anyhow::Result<Engine<'_>> {
        engine.register(self)
    }
}

/// An [`Upload`] as a workload's [`crate::CommandRole::Intake`].
pub struct Streamed<U>(pub U);

impl<U: Upload> Served for Streamed<U> {
    fn register_on(self, engine: Engine<'_>) -> anyhow::Result<Engine<'_>> {
        engine.register_upload(self.0)
    }
}

/// One workload at the write edge: a `POST` route whose requests become typed
/// events on the workload's own topic.
///
/// Implementations are pure apart from what they are handed: no I/O in
/// [`Intake::parse`] or [`Intake::judge`], so a workload is tested without a
/// broker.
pub trait Intake: Send + Sync + 'static {
    /// Names the workload in metrics (label `workload`) and logs, e.g. `analytics`.
    const NAME: &'static str;
    /// The path it accepts writes on, e.g. `/analytics`.
    const ROUTE: &'static str;
    /// The methods it accepts on the route itself; any other answers 405. `POST` by default.
    const METHODS: &'static [Method] = &[Method::POST];
    /// The methods it accepts on paths below the route (`ROUTE/…`, e.g.
    /// `PUT /answers/{key}`), read from [`Input::path`]; any other answers
    /// 405 there. None by default: the paths below are not the workload's.
    const SUBPATH_METHODS: &'static [Method] = &[];

    /// The methods one path below the route takes, for a workload whose
    /// paths below it differ (`DELETE /widgets/{serial}` but `POST
    /// /widgets/{serial}/associations`, say): a subset of
    /// [`Intake::SUBPATH_METHODS`], in its order; any other method there
    /// answers 405 with an `Allow` header naming these. All of them by default.
    fn subpath_methods(path: &str) -> &'static [Method] {
        let _ = path;
        Self::SUBPATH_METHODS
    }
    /// The status once the event is durably in the log (204 for analytics, 200 for increments).
    const ACCEPTED: StatusCode;
    /// Whether its input is in the body. By default it is not: the body is never read.
    const BODY: BodyUse<Self::Reject> = BodyUse::Ignored;
    /// The body size its largest valid request needs (a 64 KiB value, JSON-escaped, say): the
    /// route's limit is the larger of this and the edge's `--max-body-bytes`, so a deployment's
    /// small default never refuses valid input. 0 by default.
    const MIN_BODY_LIMIT: u64 = 0;

    /// The validated event, as it goes to the log.
    type Event: Send + Sync;
    /// Why a request is refused: the client's fault (400, 422), or a decision
    /// against it (404, 409); see [`RejectStatus`].
    type Reject: Reject;

    /// The topic the events go to, as created when missing. Its partition
    /// count is agreed for the deployment under the setting `partitions.<name>`.
    fn topic(&self) -> common::engine::kafka::TopicSpec;

    /// Turns one request into its event. `now_ms` is the command's clock.
    ///
    /// # Errors
    /// The first problem found; nothing is written.
    fn parse(&self, input: &Input<'_>, now_ms: i64) -> Result<Self::Event, Self::Reject>;

    /// The partition key: the default partitioner (murmur2) maps it to a partition.
    fn key<'e>(&self, event: &'e Self::Event) -> std::borrow::Cow<'e, [u8]>;

    /// The record's payload.
    fn encode(&self, event: &Self::Event) -> Vec<u8>;

    /// Whether a delivered event will be counted downstream; by default it is.
    ///
    /// # Errors
    /// The reject the client gets instead of success (the record stays in the
    /// log; downstream skips it by the same rule).
    fn judge(&self, event: &Self::Event, delivered: &Delivered) -> Result<(), Self::Reject> {
        let _ = (event, delivered);
        Ok(())
    }

    /// For a workload whose writes are decided downstream, by the owner of
    /// the event's partition (a create that may conflict, say): the topic
    /// the decisions come back on, each keyed by the [`Input::request`] of
    /// the write it decides. The engine then answers a write only once its
    /// decision arrived ([`Intake::decided`]), or 503 after
    /// `--decision-timeout` (outcome unknown: retry with the same id).
    /// `None` by default: a write is answered once it is in the log.
    fn replies_topic(&self) -> Option<String> {
        None
    }

    /// The answer to a decided write, from its reply's payload: `Some(Ok)`
    /// for a success, `Some(Err)` for the refusal the decision was (a
    /// conflict, a missing key: nothing changed), in the workload's words;
    /// `None` when the reply cannot be read (a newer record version, say),
    /// which the engine answers as it does a decision that did not come:
    /// 503, outcome unknown, retry with the same id.
    fn decided(&self, event: &Self::Event, reply: &[u8]) -> Option<Result<Decided, Self::Reject>> {
        let _ = (event, reply);
        Some(Ok(Decided { status: Self::ACCEPTED, body: None }))
    }
}

/// For [`Intake::decided`]: the reply as the workload decoded it, if it is
/// `request`'s. Otherwise (a reply this build cannot read, or another
/// request's, which the engine's keying rules out) it is logged and `None`:
/// the outcome is unknown to the command, as on a timeout.
pub fn reply_for<R, E: std::fmt::Debug>(
    request: uuid::Uuid,
    decoded: Result<R, E>,
    request_of: impl Fn(&R) -> uuid::Uuid,
) -> Option<R> {
    match decoded {
        Ok(reply) if request_of(&reply) == request => Some(reply),
        other => {
            tracing::error!(%request, reply = ?other.map(|r| request_of(&r)), "unreadable decision");
            None
        }
    }
}

/// A decided write's success: its status, and its JSON body if it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    pub status: StatusCode,
    pub body: Option<String>,
}

/// A workload's reason for refusing a request.
pub trait Reject: std::fmt::Display + Send {
    /// A short, fixed label for metrics (`reason="bad_json"`), never user input.
    fn label(&self) -> &'static str;
    /// Which client error it is.
    fn status(&self) -> RejectStatus;
}

/// The ways a client's request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectStatus {
    /// 400: malformed.
    BadRequest,
    /// 404: decided against: what it changes does not exist.
    NotFound,
    /// 409: decided against: it conflicts with the current state.
    Conflict,
    /// 422: well-formed, but it would not be counted (e.g. outside the horizon).
    Unprocessable,
}

impl RejectStatus {
    pub fn code(self) -> StatusCode {
        match self {
            RejectStatus::BadRequest => StatusCode::BAD_REQUEST,
            RejectStatus::NotFound => StatusCode::NOT_FOUND,
            RejectStatus::Conflict => StatusCode::CONFLICT,
            RejectStatus::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }
}

/// Whether a workload's input is in the request body.
pub enum BodyUse<R> {
    /// The input is in the query string: the engine never reads the body, and
    /// a request declaring one over the edge's limit gets 413 before any other check.
    Ignored,
    /// The input is the body: after the token and rate-limit checks the engine
    /// reads it, up to the edge's limit (`--max-body-bytes`); a larger one is
    /// refused with `too_large(limit_bytes)`, in the workload's words.
    Read { too_large: fn(u64) -> R },
}

impl<R: From<JsonBodyError>> BodyUse<R> {
    /// A JSON body (the engine's rules, `common::engine::request`): read, and
    /// one over the limit refused as [`JsonBodyError::TooLarge`] in the workload's reject.
    pub const JSON: Self = BodyUse::Read { too_large: json_too_large::<R> };
}

fn json_too_large<R: From<JsonBodyError>>(limit_bytes: u64) -> R {
    R::from(JsonBodyError::TooLarge(usize::try_from(limit_bytes).unwrap_or(usize::MAX)))
}

/// What a workload sees of one request.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// One of the workload's [`Intake::METHODS`] on the route itself, or of
    /// its [`Intake::SUBPATH_METHODS`] below it.
    pub method: &'a Method,
    /// The request's path, not decoded: the route, or below it (see [`Intake::SUBPATH_METHODS`]).
    pub path: &'a str,
    /// This attempt's id, minted by the engine (a retry is another attempt):
    /// what a decided workload's reply names ([`Intake::replies_topic`]).
    pub request: uuid::Uuid,
    /// The raw query string, if any (not decoded).
    pub query: Option<&'a str>,
    /// The `Content-Type` header; `Some("")` when it is not visible ASCII.
    pub content_type: Option<&'a str>,
    /// The body, complete and within the size limit; empty for [`BodyUse::Ignored`].
    pub body: &'a [u8],
}

impl<'a> Input<'a> {
    /// A `POST` of `query`, `content_type` and `body` to the route itself (tests, tools).
    pub fn post(query: Option<&'a str>, content_type: Option<&'a str>, body: &'a [u8]) -> Self {
        Input { method: &Method::POST, path: "", request: uuid::Uuid::nil(), query, content_type, body }
    }
}
