//! The answers workload at the write edge: `POST /answers`, `PUT
//! /answers/{key}` and `DELETE /answers/{key}` become an [`AnswerCommand`]
//! on `answers.commands`, keyed by the answer key; the engine then waits for
//! the processor's decision on `answers.replies` and answers it
//! ([`Intake::decided`]): 201, 200 or 204 with the answer, or 409 / 404.
//!
//! The rules are the pure core in `crate::request` and `crate::rules`; this
//! module only plugs them into the engine's [`Intake`].

use common::engine::kafka::TopicSpec;
use hyper::{Method, StatusCode};
use serde::Serialize;

use crate::records::AnswerCommand;
use crate::request::{self, AnswerReject, AnswerValue};
use crate::rules::Outcome;
use crate::wire::{decode_reply, encode_command};

use ::command::engine::{reply_for, BodyUse, Decided, Input, Intake, Reject, RejectStatus};

/// The answers store's writes.
pub struct Answers {
    topic: TopicSpec,
    replies: String,
}

impl Answers {
    /// The workload on its commands topic, waiting for decisions on `replies`.
    pub fn new(topic: TopicSpec, replies: String) -> Self {
        Answers { topic, replies }
    }
}

impl Reject for AnswerReject {
    fn label(&self) -> &'static str {
        AnswerReject::label(self)
    }

    /// A malformed request is 400; the processor's refusals are 409 and 404.
    fn status(&self) -> RejectStatus {
        match self {
            AnswerReject::Exists(_) => RejectStatus::Conflict,
            AnswerReject::NotFound(_) => RejectStatus::NotFound,
            _ => RejectStatus::BadRequest,
        }
    }
}

/// The body of a 201 or 200: the answer as written, with its version.
#[derive(Debug, Serialize)]
pub struct AnswerBody<'a> {
    pub key: &'a str,
    pub value: &'a str,
    pub version: u64,
}

impl AnswerBody<'_> {
    /// Its JSON: every character of the value exactly, control characters
    /// (U+0000 included) as escapes.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("strings and a number always serialize")
    }
}

impl Intake for Answers {
    const NAME: &'static str = "answers";
    const ROUTE: &'static str = request::ROUTE;
    /// `POST /answers`; `PUT` and `DELETE /answers/{key}`.
    const METHODS: &'static [Method] = &[Method::POST];
    const SUBPATH_METHODS: &'static [Method] = &[Method::PUT, Method::DELETE];
    /// Not used: every write of this workload is answered from its decision.
    const ACCEPTED: StatusCode = StatusCode::OK;
    const BODY: BodyUse<AnswerReject> = BodyUse::JSON;
    /// A 64 KiB value of control characters, each escaped to six bytes.
    const MIN_BODY_LIMIT: u64 = crate::request::MAX_BODY_BYTES as u64;

    type Event = AnswerCommand;
    type Reject = AnswerReject;

    fn topic(&self) -> TopicSpec {
        self.topic.clone()
    }

    fn parse(&self, input: &Input<'_>, now_ms: i64) -> Result<AnswerCommand, AnswerReject> {
        let write = match *input.method {
            Method::POST => request::parse_create(input.path, input.content_type, input.query, input.body),
            Method::PUT => request::parse_update(input.path, input.content_type, input.query, input.body),
            // The engine lets through only POST on the route, PUT and DELETE below it.
            _ => request::parse_delete(input.path, input.query, input.body),
        }?;
        Ok(AnswerCommand::new(write, input.request, now_ms))
    }

    fn key<'e>(&self, event: &'e AnswerCommand) -> std::borrow::Cow<'e, [u8]> {
        event.partition_key().into()
    }

    fn encode(&self, event: &AnswerCommand) -> Vec<u8> {
        encode_command(event)
    }

    fn replies_topic(&self) -> Option<String> {
        Some(self.replies.clone())
    }

    /// 201 / 200 with `{"key","value","version"}`, 204, or the refusal. A
    /// repeated id answers its first decision: its outcome and version, with
    /// the value this attempt sent (a retry sends the same body).
    fn decided(&self, event: &AnswerCommand, reply: &[u8]) -> Option<Result<Decided, AnswerReject>> {
        let reply = reply_for(event.request, decode_reply(reply), |r| r.request)?;
        let body = || {
            let value = event.value.as_ref().map(AnswerValue::as_str).unwrap_or_default();
            Some(AnswerBody { key: event.key.as_str(), value, version: reply.version }.to_json())
        };
        Some(match reply.outcome {
            Outcome::Created => Ok(Decided { status: StatusCode::CREATED, body: body() }),
            Outcome::Updated => Ok(Decided { status: StatusCode::OK, body: body() }),
            Outcome::Deleted => Ok(Decided { status: StatusCode::NO_CONTENT, body: None }),
            Outcome::Exists => {
                Err(AnswerReject::Exists(common::engine::request::truncate_for_message(event.key.as_str())))
            }
            Outcome::NotFound => {
                Err(AnswerReject::NotFound(common::engine::request::truncate_for_message(event.key.as_str())))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Reply;
    use crate::wire::{decode_command, encode_reply};
    use uuid::Uuid;

    fn intake() -> Answers {
        Answers::new(TopicSpec::events_named("answers.commands", 1), "answers.replies".into())
    }

    fn input<'a>(method: &'a Method, path: &'a str, body: &'a [u8]) -> Input<'a> {
        Input {
            method,
            path,
            request: Uuid::from_u128(42),
            query: Some("id=r1"),
            content_type: Some("application/json; charset=utf-8"),
            body,
        }
    }

    fn reply(outcome: Outcome, version: u64) -> Vec<u8> {
        encode_reply(&Reply { request: Uuid::from_u128(42), outcome, version })
    }

    #[test]
    fn each_method_becomes_a_command_keyed_by_the_answer_key() {
        let i = intake();
        let post = i.parse(&input(&Method::POST, "/answers", br#"{"key":"k/1","value":"v"}"#), 7).unwrap();
        assert_eq!((&*i.key(&post), post.request, post.accepted_at_ms), (&b"k/1"[..], Uuid::from_u128(42), 7));
        assert_eq!(decode_command(&i.encode(&post)), Ok(post));
        let put = i.parse(&input(&Method::PUT, "/answers/k%2F1", br#"{"value":"w"}"#), 0).unwrap();
        assert_eq!((put.key.as_str(), put.id.as_deref()), ("k/1", Some("r1")));
        let delete = i.parse(&input(&Method::DELETE, "/answers/k%2F1", b""), 0).unwrap();
        assert_eq!((delete.op, delete.value), (crate::request::Op::Delete, None));
        assert_eq!(i.replies_topic().as_deref(), Some("answers.replies"));
    }

    #[test]
    fn refusals_map_to_their_statuses() {
        let i = intake();
        let bad = i.parse(&input(&Method::POST, "/answers", b"{}"), 0).unwrap_err();
        assert_eq!((Reject::status(&bad), Reject::label(&bad)), (RejectStatus::BadRequest, "bad_fields"));
        let BodyUse::Read { too_large } = Answers::BODY else { panic!("answers read the body") };
        assert_eq!(Reject::label(&too_large(1024)), "body_too_large");
        assert_eq!(Reject::status(&AnswerReject::Exists("k".into())), RejectStatus::Conflict);
        assert_eq!(Reject::status(&AnswerReject::NotFound("k".into())), RejectStatus::NotFound);
    }

    #[test]
    fn decisions_answer_with_the_answer_and_its_version() {
        let i = intake();
        let post = i.parse(&input(&Method::POST, "/answers", br#"{"key":"k","value":"a\u0000\"b"}"#), 0).unwrap();
        let created = i.decided(&post, &reply(Outcome::Created, 3)).expect("readable").unwrap();
        assert_eq!(created.status, StatusCode::CREATED);
        assert_eq!(created.body.as_deref(), Some(r#"{"key":"k","value":"a\u0000\"b","version":3}"#));
        assert_eq!(i.decided(&post, &reply(Outcome::Updated, 4)).expect("readable").unwrap().status, StatusCode::OK);
        assert_eq!(
            i.decided(&post, &reply(Outcome::Deleted, 5)).expect("readable").unwrap(),
            Decided { status: StatusCode::NO_CONTENT, body: None }
        );
        let exists = i.decided(&post, &reply(Outcome::Exists, 0)).expect("readable").unwrap_err();
        assert_eq!(
            (Reject::status(&exists), exists.to_string()),
            (RejectStatus::Conflict, "the key `k` exists".into())
        );
        let missing = i.decided(&post, &reply(Outcome::NotFound, 0)).expect("readable").unwrap_err();
        assert_eq!(Reject::status(&missing), RejectStatus::NotFound);
        assert!(i.decided(&post, b"garbage").is_none(), "unreadable: the outcome is unknown");
        let other = encode_reply(&Reply { request: Uuid::from_u128(1), outcome: Outcome::Created, version: 1 });
        assert!(i.decided(&post, &other).is_none(), "another request's reply decides nothing here");
    }
}
