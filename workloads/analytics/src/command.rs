//! The analytics workload at the write edge:
//! `POST /analytics?timestamp=..&user=..&click` becomes a [`ClickEvent`] on
//! the events topic, keyed by user, answered 204.
//!
//! Its rules are the pure core of this crate (query-string parsing,
//! the horizon); this module only plugs them into the engine's [`Intake`].
//! The horizon is the engine's, agreed with the rest of the deployment at startup.

use crate::event::HourHorizon;
use crate::request::parse_post;
use crate::{ClickEvent, EventId, Horizon, RejectReason};
use common::engine::kafka::TopicSpec;
use hyper::StatusCode;

use ::command::engine::{Delivered, Input, Intake, Reject, RejectStatus};

/// Hourly web analytics: clicks and impressions per user.
pub struct Analytics {
    topic: TopicSpec,
    horizon: Horizon,
}

impl Analytics {
    /// The workload on its events topic, accepting by the deployment's
    /// horizon (the engine agreed it with the processor at startup).
    pub fn new(topic: TopicSpec, horizon: Horizon) -> Self {
        Analytics { topic, horizon }
    }
}

impl Reject for RejectReason {
    fn label(&self) -> &'static str {
        RejectReason::label(self)
    }

    fn status(&self) -> RejectStatus {
        if self.is_outside_horizon() {
            RejectStatus::Unprocessable
        } else {
            RejectStatus::BadRequest
        }
    }
}

impl Intake for Analytics {
    const NAME: &'static str = "analytics";
    const ROUTE: &'static str = "/analytics";
    const ACCEPTED: StatusCode = StatusCode::NO_CONTENT;

    type Event = ClickEvent;
    type Reject = RejectReason;

    fn topic(&self) -> TopicSpec {
        self.topic.clone()
    }

    fn parse(&self, input: &Input<'_>, now_ms: i64) -> Result<ClickEvent, RejectReason> {
        let req = parse_post(input.query)?;
        self.horizon.check(req.timestamp_ms, now_ms)?;
        Ok(ClickEvent {
            timestamp_ms: req.timestamp_ms,
            user: req.user,
            kind: req.kind,
            accepted_at_ms: now_ms,
            id: req.id.map(EventId::into_string),
        })
    }

    fn key<'e>(&self, event: &'e ClickEvent) -> std::borrow::Cow<'e, [u8]> {
        event.user.as_str().as_bytes().into()
    }

    fn encode(&self, event: &ClickEvent) -> Vec<u8> {
        crate::wire::encode_event(event)
    }

    /// The processor decides on the broker's clock whether the hour is still
    /// open; answer by the same rule, so a 2xx is always counted. (The record
    /// stays in the log, and the processor skips it the same way.)
    fn judge(&self, event: &ClickEvent, delivered: &Delivered) -> Result<(), RejectReason> {
        match delivered.appended_ms {
            Some(appended_ms) if !self.horizon.counts_hour_at(event.hour(), appended_ms) => {
                Err(RejectReason::ClosedOnArrival { timestamp_ms: event.timestamp_ms, appended_ms })
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventKind;

    const NOW: i64 = 1_900_000_000_000;

    fn analytics() -> Analytics {
        Analytics::new(TopicSpec::events_named("t", 1), Horizon::default())
    }

    fn query(q: &str) -> Input<'_> {
        Input::post(Some(q), None, b"ignored")
    }

    #[test]
    fn a_valid_query_becomes_an_event_keyed_by_user_stamped_with_the_commands_clock() {
        let a = analytics();
        let event = a.parse(&query(&format!("timestamp={NOW}&user=ann&click&id=x1")), NOW + 5).expect("valid");
        assert_eq!((event.timestamp_ms, event.kind, event.accepted_at_ms), (NOW, EventKind::Click, NOW + 5));
        assert_eq!((&*a.key(&event), event.id.as_deref()), (&b"ann"[..], Some("x1")));
        assert_eq!(crate::wire::decode_event(&a.encode(&event)).expect("Avro"), event);
    }

    #[test]
    fn malformed_is_400_and_outside_the_horizon_is_422() {
        let a = analytics();
        let bad = a.parse(&query("timestamp=x&user=ann&click"), NOW).expect_err("malformed");
        assert_eq!((Reject::status(&bad), Reject::label(&bad)), (RejectStatus::BadRequest, "bad_timestamp"));
        let old = a.parse(&query("timestamp=0&user=ann&click"), NOW).expect_err("too old");
        assert_eq!(Reject::status(&old), RejectStatus::Unprocessable);
    }

    #[test]
    fn an_event_reaching_the_log_after_its_hour_closed_is_refused() {
        let a = analytics();
        let event = a.parse(&query(&format!("timestamp={NOW}&user=ann&click")), NOW).expect("valid");
        let on_time = Delivered { partition: 0, offset: 0, appended_ms: Some(NOW) };
        assert!(a.judge(&event, &on_time).is_ok());
        assert!(
            a.judge(&event, &Delivered { partition: 0, offset: 0, appended_ms: None }).is_ok(),
            "no broker time: counted"
        );
        let late = Delivered { partition: 0, offset: 0, appended_ms: Some(NOW + 30 * 86_400_000) };
        let reason = a.judge(&event, &late).expect_err("closed on arrival");
        assert_eq!(
            (Reject::status(&reason), Reject::label(&reason)),
            (RejectStatus::Unprocessable, "closed_on_arrival")
        );
    }
}
