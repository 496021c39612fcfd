//! The widgets workload at the write edge: `POST /widgets`, `DELETE
//! /widgets/{serial}`, `POST /widgets/{serial}/associations` and `DELETE
//! /widgets/{serial}/associations/{other}/{port}` become a
//! [`WidgetCommand`] on `widgets.commands`, keyed by the shard; the engine
//! then waits for the processor's decision on `widgets.replies` and answers
//! it ([`Intake::decided`]): 201 or 204, or 404 / 409 with the reason.
//!
//! The rules are the pure core in `crate::request` and `crate::graph`; this
//! module only plugs them into the engine's [`Intake`].

use common::engine::kafka::TopicSpec;
use hyper::{Method, StatusCode};
use serde::Serialize;

use crate::log::{Outcome, WidgetCommand, SHARD_KEY};
use crate::read_model::WidgetBody;
use crate::records::{Command, Status};
use crate::request::{self, WidgetReject};
use crate::wire::{decode_reply, encode_command};

use ::command::engine::{reply_for, BodyUse, Decided, Input, Intake, Reject, RejectStatus};

/// The widgets' writes.
pub struct Widgets {
    topic: TopicSpec,
    replies: String,
}

impl Widgets {
    /// The workload on its commands topic, waiting for decisions on `replies`.
    pub fn new(topic: TopicSpec, replies: String) -> Self {
        Widgets { topic, replies }
    }
}

impl Reject for WidgetReject {
    fn label(&self) -> &'static str {
        WidgetReject::label(self)
    }

    /// A malformed request is 400; the processor's refusals are 404 and 409.
    fn status(&self) -> RejectStatus {
        match self {
            WidgetReject::Refused(Status::NotFound, _) => RejectStatus::NotFound,
            WidgetReject::Refused(Status::Conflict, _) => RejectStatus::Conflict,
            _ => RejectStatus::BadRequest,
        }
    }
}

/// The body of an association's 201.
#[derive(Debug, Serialize)]
pub struct AssociationBody<'a> {
    pub serial: &'a str,
    pub with: &'a str,
    pub port: String,
}

impl Intake for Widgets {
    const NAME: &'static str = "widgets";
    const ROUTE: &'static str = request::ROUTE;
    /// `POST /widgets`; `DELETE /widgets/{serial}`, `POST …/associations`, `DELETE …/associations/{other}/{port}`.
    const METHODS: &'static [Method] = &[Method::POST];
    const SUBPATH_METHODS: &'static [Method] = &[Method::POST, Method::DELETE];
    /// Not used: every write of this workload is answered from its decision.
    const ACCEPTED: StatusCode = StatusCode::OK;
    const BODY: BodyUse<WidgetReject> = BodyUse::JSON;
    /// A longest serial and name with every character escaped to six bytes.
    const MIN_BODY_LIMIT: u64 = request::MAX_BODY_BYTES as u64;

    type Event = WidgetCommand;
    type Reject = WidgetReject;

    /// `DELETE` on `/widgets/{serial}` and `…/associations/{other}/{port}`,
    /// `POST` on `…/associations`; both elsewhere below the route (whose
    /// parse then answers 400 with the paths there are).
    fn subpath_methods(path: &str) -> &'static [Method] {
        request::methods_below(path).unwrap_or(Self::SUBPATH_METHODS)
    }

    fn topic(&self) -> TopicSpec {
        self.topic.clone()
    }

    fn parse(&self, input: &Input<'_>, now_ms: i64) -> Result<WidgetCommand, WidgetReject> {
        let write = request::parse(input.method, input.path, input.content_type, input.query, input.body)?;
        Ok(WidgetCommand {
            request: input.request,
            id: write.id.map(common::engine::request::EventId::into_string),
            command: write.command,
            accepted_at_ms: now_ms,
        })
    }

    /// The shard's key: every command of the graph in one partition, decided by one writer.
    fn key<'e>(&self, _: &'e WidgetCommand) -> std::borrow::Cow<'e, [u8]> {
        SHARD_KEY.into()
    }

    fn encode(&self, event: &WidgetCommand) -> Vec<u8> {
        encode_command(event)
    }

    fn replies_topic(&self) -> Option<String> {
        Some(self.replies.clone())
    }

    /// 201 with the widget or the association, 204, or the refusal in the
    /// processor's words. A repeated id answers its first decision (with
    /// the body this attempt sent: a retry sends the same).
    fn decided(&self, event: &WidgetCommand, reply: &[u8]) -> Option<Result<Decided, WidgetReject>> {
        let reply = reply_for(event.request, decode_reply(reply), |r| r.request)?;
        let created = |body: String| Ok(Decided { status: StatusCode::CREATED, body: Some(body) });
        let no_content = || Ok(Decided { status: StatusCode::NO_CONTENT, body: None });
        Some(match (reply.outcome, &event.command) {
            (Outcome::Created, Command::Create { serial, name, ports }) => created(
                WidgetBody {
                    serial: serial.as_str(),
                    name: name.as_str(),
                    ports: ports.to_string(),
                    associations: vec![],
                }
                .to_json(),
            ),
            (Outcome::Associated, Command::Associate { serial, with, port }) => created(
                serde_json::to_string(&AssociationBody {
                    serial: serial.as_str(),
                    with: with.as_str(),
                    port: port.to_string(),
                })
                .expect("strings always serialize"),
            ),
            (Outcome::Deleted, Command::Delete { .. }) | (Outcome::Dissociated, Command::Dissociate { .. }) => {
                no_content()
            }
            (Outcome::Refused(status, reason), _) => Err(WidgetReject::Refused(status, reason)),
            (outcome, command) => {
                tracing::error!(request = %event.request, ?outcome, ?command, "a decision that does not fit its command");
                return None;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::Reply;
    use crate::wire::{decode_command, encode_reply};
    use uuid::Uuid;

    fn intake() -> Widgets {
        Widgets::new(TopicSpec::events_named("widgets.commands", 1), "widgets.replies".into())
    }

    fn input<'a>(method: &'a Method, path: &'a str, body: &'a [u8]) -> Input<'a> {
        Input {
            method,
            path,
            request: Uuid::from_u128(42),
            query: Some("id=r1"),
            content_type: Some("application/json"),
            body,
        }
    }

    fn reply(outcome: Outcome) -> Vec<u8> {
        encode_reply(&Reply { request: Uuid::from_u128(42), outcome })
    }

    #[test]
    fn every_write_is_keyed_by_the_shard_and_answered_from_its_decision() {
        let i = intake();
        let post =
            i.parse(&input(&Method::POST, "/widgets", br#"{"serial":"a\"1","name":"n","ports":"PR"}"#), 7).unwrap();
        assert_eq!((&*i.key(&post), post.id.as_deref()), (SHARD_KEY, Some("r1")));
        assert_eq!(decode_command(&i.encode(&post)), Ok(post.clone()));
        let created = i.decided(&post, &reply(Outcome::Created)).unwrap().unwrap();
        assert_eq!(created.status, StatusCode::CREATED);
        assert_eq!(created.body.as_deref(), Some(r#"{"serial":"a\"1","name":"n","ports":"PR","associations":[]}"#));
        let refused =
            i.decided(&post, &reply(Outcome::Refused(Status::Conflict, "taken".into()))).unwrap().unwrap_err();
        assert_eq!((Reject::status(&refused), refused.to_string()), (RejectStatus::Conflict, "taken".into()));
        let assoc =
            i.parse(&input(&Method::POST, "/widgets/a/associations", br#"{"with":"b","port":"P"}"#), 0).unwrap();
        assert_eq!(
            i.decided(&assoc, &reply(Outcome::Associated)).unwrap().unwrap().body.as_deref(),
            Some(r#"{"serial":"a","with":"b","port":"P"}"#)
        );
        let gone = i.parse(&input(&Method::DELETE, "/widgets/a/associations/b/P", b""), 0).unwrap();
        assert_eq!(i.decided(&gone, &reply(Outcome::Dissociated)).unwrap().unwrap().status, StatusCode::NO_CONTENT);
        let missing = i.decided(&gone, &reply(Outcome::Refused(Status::NotFound, "no".into()))).unwrap().unwrap_err();
        assert_eq!(Reject::status(&missing), RejectStatus::NotFound);
        assert!(i.decided(&gone, &reply(Outcome::Created)).is_none(), "a decision that does not fit");
        assert!(i.decided(&gone, b"garbage").is_none());
    }
}
