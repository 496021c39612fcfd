//! The increments workload at the write edge: `POST /increment` with the JSON
//! body `{"key": "<uuid>", "value": <int>}` becomes an [`IncrementEvent`] on
//! its events topic, keyed by the counter, answered 200.
//!
//! Its rules are the pure core in `crate::request`; this module
//! only plugs them into the engine's [`Intake`].

use crate::request::parse_post;
use crate::{IncrementEvent, IncrementReject};
use common::engine::kafka::TopicSpec;
use hyper::StatusCode;

use ::command::engine::{BodyUse, Input, Intake, Reject, RejectStatus};

/// Exact per-key sums.
pub struct Increments {
    topic: TopicSpec,
}

impl Increments {
    /// The workload on its events topic.
    pub fn new(topic: TopicSpec) -> Self {
        Increments { topic }
    }
}

impl Reject for IncrementReject {
    fn label(&self) -> &'static str {
        IncrementReject::label(self)
    }

    /// Every refusal of an increment is a malformed request: 400.
    fn status(&self) -> RejectStatus {
        RejectStatus::BadRequest
    }
}

impl Intake for Increments {
    const NAME: &'static str = "increments";
    const ROUTE: &'static str = "/increment";
    /// The reference's clients expect 200.
    const ACCEPTED: StatusCode = StatusCode::OK;
    const BODY: BodyUse<IncrementReject> = BodyUse::JSON;

    type Event = IncrementEvent;
    type Reject = IncrementReject;

    fn topic(&self) -> TopicSpec {
        self.topic.clone()
    }

    fn parse(&self, input: &Input<'_>, now_ms: i64) -> Result<IncrementEvent, IncrementReject> {
        Ok(parse_post(input.content_type, input.query, input.body)?.into_event(now_ms))
    }

    fn key<'e>(&self, event: &'e IncrementEvent) -> std::borrow::Cow<'e, [u8]> {
        event.partition_key().to_vec().into()
    }

    fn encode(&self, event: &IncrementEvent) -> Vec<u8> {
        crate::wire::encode_increment(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intake() -> Increments {
        Increments::new(TopicSpec::events_named("t", 1))
    }

    fn body(b: &[u8]) -> Input<'_> {
        Input::post(None, Some("application/json"), b)
    }

    #[test]
    fn a_valid_body_becomes_an_event_keyed_by_the_canonical_key() {
        let i = intake();
        let event = i.parse(&body(br#"{"key":"0B3C8F2E-7D41-4C55-9A1E-5F6B7C8D9E0F","value":5}"#), 42).expect("valid");
        assert_eq!(&*i.key(&event), b"0b3c8f2e-7d41-4c55-9a1e-5f6b7c8d9e0f");
        assert_eq!((event.value.get(), event.accepted_at_ms), (5, 42));
        assert_eq!(crate::wire::decode_increment(&i.encode(&event)).expect("Avro"), event);
    }

    #[test]
    fn every_refusal_is_400() {
        let i = intake();
        let e = i.parse(&body(br#"{"key":"x","value":5}"#), 0).expect_err("bad key");
        assert_eq!((Reject::status(&e), Reject::label(&e)), (RejectStatus::BadRequest, "bad_key"));
        let BodyUse::Read { too_large } = Increments::BODY else { panic!("increments read the body") };
        assert_eq!(Reject::label(&too_large(1024)), "body_too_large");
    }
}
