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
use super::{BodyUse, Input, Intake};

/// A workload's topic: where its events go, and the partition count agreed for it.
pub(crate) struct Topic {
    pub spec: TopicSpec,
    pub publisher: EventPublisher,
    /// Partitions of the topic as agreed for the deployment; 0 until known.
    pub agreed_partitions: Arc<AtomicI32>,
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
    /// Whether the body is the input (read within the size limit) or ignored.
    fn reads_body(&self) -> bool;
    fn topic(&self) -> &Topic;
    /// Answers one `POST` that passed the edge checks.
    fn post<'a>(
        &'a self,
        shared: &'a Shared,
        query: Option<&'a str>,
        content_type: Option<&'a str>,
        body: Result<&'a [u8], BodyError>,
    ) -> Answer<'a>;
}

pub(crate) struct Lane<W> {
    pub workload: W,
    pub topic: Topic,
}

impl<W: Intake> Lane<W> {
    async fn accept(
        &self,
        shared: &Shared,
        query: Option<&str>,
        content_type: Option<&str>,
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
        let input = Input { query, content_type, body };
        let event = match self.workload.parse(&input, (shared.clock)()) {
            Ok(event) => event,
            Err(reason) => return Outcome::Rejected(reason),
        };
        let Ok(_permit) = shared.in_flight.try_acquire() else {
            return Outcome::Overloaded;
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
        match self.workload.judge(&event, &delivered) {
            Ok(()) => {
                let token = ReadToken {
                    topic: self.topic.spec.name.clone(),
                    partition: delivered.partition,
                    offset: delivered.offset,
                };
                Outcome::Accepted(W::ACCEPTED, token)
            }
            Err(reason) => Outcome::Rejected(reason),
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

    fn reads_body(&self) -> bool {
        matches!(W::BODY, BodyUse::Read { .. })
    }

    fn topic(&self) -> &Topic {
        &self.topic
    }

    fn post<'a>(
        &'a self,
        shared: &'a Shared,
        query: Option<&'a str>,
        content_type: Option<&'a str>,
        body: Result<&'a [u8], BodyError>,
    ) -> Answer<'a> {
        Box::pin(async move {
            let outcome = self.accept(shared, query, content_type, body).await;
            respond(W::NAME, outcome, &shared.fatal)
        })
    }
}
