//! The one place where the outcome of a `POST` becomes a status code, a
//! one-line reason and a metric, whatever the workload.

use common::engine::http::{self, Body};
use common::engine::shutdown::CancellationToken;
use hyper::{Response, StatusCode};

use common::engine::progress::{ReadToken, TOKEN_HEADER};
use hyper::header::HeaderValue;

use super::publisher::PublishError;
use super::upload::AppendError;
use super::{Decided, Reject};
use crate::metrics as m;

/// The outcome of one `POST` to a workload's route.
#[derive(Debug)]
pub(crate) enum Outcome<R> {
    /// Durably in the log, and it will be counted (or, for a decided write,
    /// decided in its favour): the workload's success status and body, with
    /// the read token naming where the event landed.
    Accepted(Decided, ReadToken),
    /// A decided write whose decision did not come in time: it is in the log
    /// and will be decided, but not known here.
    Undecided,
    /// A decided write not appended: this instance does not follow the
    /// decisions yet (it is starting, or the broker does not answer).
    NotFollowing,
    /// The client's fault, in the workload's words.
    Rejected(R),
    /// The body could not be read (the client went away mid-body, or sent a broken chunk).
    BodyUnreadable,
    /// A streamed upload whose body brought no record for this long (`--upload-idle-timeout`).
    BodyIdle(std::time::Duration),
    Unavailable(PublishError),
    /// A streamed upload accepted by its workload: its status and JSON body.
    Uploaded(Decided),
    /// A streamed upload whose records the log did not all take.
    NotAppended(AppendError),
    Overloaded,
    /// Written to a partition its key does not map to under the agreed count:
    /// downstream will skip it, so it is not counted.
    Misrouted {
        partition: i32,
        expected: i32,
    },
}

/// The answer to `outcome`, recorded in the metrics of `workload`. A fatal
/// producer error or a changed partition count cancels `fatal`: the process restarts.
pub(crate) fn respond<R: Reject>(
    workload: &'static str,
    outcome: Outcome<R>,
    fatal: &CancellationToken,
) -> Response<Body> {
    match outcome {
        Outcome::Accepted(Decided { status, body }, token) => {
            metrics::counter!(m::EVENTS_ACCEPTED, "workload" => workload).increment(1);
            let mut r = match body {
                Some(json) => http::json(status, json),
                None => http::no_content(),
            };
            *r.status_mut() = status;
            // base64url and a version byte: always a valid header value.
            let token = HeaderValue::from_str(&token.encode()).expect("a read token is visible ASCII");
            r.headers_mut().insert(TOKEN_HEADER, token);
            r
        }
        Outcome::Rejected(reason) => {
            metrics::counter!(m::EVENTS_REJECTED, "reason" => reason.label(), "workload" => workload).increment(1);
            http::error(reason.status().code(), reason)
        }
        Outcome::BodyUnreadable => {
            metrics::counter!(m::EVENTS_REJECTED, "reason" => "body_unreadable", "workload" => workload).increment(1);
            http::error(StatusCode::BAD_REQUEST, "the request body could not be read")
        }
        Outcome::BodyIdle(bound) => {
            metrics::counter!(m::EVENTS_REJECTED, "reason" => "body_idle", "workload" => workload).increment(1);
            http::error(
                StatusCode::REQUEST_TIMEOUT,
                format!("the upload appended nothing for {bound:?}: send the body faster; upload the file again"),
            )
        }
        Outcome::Unavailable(e) => {
            metrics::counter!(m::EVENTS_UNAVAILABLE, "reason" => e.label(), "workload" => workload).increment(1);
            tracing::warn!(error = %e, workload, "event not accepted");
            if e.is_fatal() {
                fatal.cancel();
            }
            if e.outcome_known() {
                http::unavailable(format!("event not recorded: {e}; retry later"), 1)
            } else {
                // It may be in the log already: a blind retry could count it twice.
                http::unavailable(format!("outcome unknown: {e}; retry with the same id"), 1)
            }
        }
        Outcome::Misrouted { partition, expected } => {
            metrics::counter!(m::EVENTS_UNAVAILABLE, "reason" => "partition_count_changed", "workload" => workload)
                .increment(1);
            tracing::error!(
                workload,
                partition,
                expected,
                "the events topic's partition count changed under the deployment; stopping"
            );
            fatal.cancel();
            http::unavailable(
                "event not recorded: the events topic's partitions changed; it will not be counted; retry later",
                1,
            )
        }
        Outcome::Undecided => {
            metrics::counter!(m::EVENTS_UNAVAILABLE, "reason" => "undecided", "workload" => workload).increment(1);
            http::unavailable(
                "outcome unknown: the write is in the log but was not decided in time; retry with the same id",
                1,
            )
        }
        Outcome::NotFollowing => {
            metrics::counter!(m::EVENTS_UNAVAILABLE, "reason" => "not_following", "workload" => workload).increment(1);
            http::unavailable("not recorded: this instance does not follow the decisions yet; retry later", 1)
        }
        Outcome::Uploaded(decided) => {
            metrics::counter!(m::EVENTS_ACCEPTED, "workload" => workload).increment(1);
            super::upload::accepted(decided)
        }
        Outcome::NotAppended(e) => {
            metrics::counter!(m::EVENTS_UNAVAILABLE, "reason" => "upload_not_appended", "workload" => workload)
                .increment(1);
            tracing::warn!(error = %e, workload, "upload not accepted");
            if let AppendError::Publish(p) = &e {
                if p.is_fatal() {
                    fatal.cancel();
                }
            }
            http::unavailable(format!("upload not accepted: {e}; upload the file again"), 1)
        }
        Outcome::Overloaded => {
            metrics::counter!(m::EVENTS_UNAVAILABLE, "reason" => "overloaded", "workload" => workload).increment(1);
            http::unavailable("event not recorded: too many requests in flight; retry later", 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::RejectStatus;
    use hyper::header::RETRY_AFTER;

    #[derive(Debug)]
    struct Late;

    impl std::fmt::Display for Late {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("too late")
        }
    }

    impl Reject for Late {
        fn label(&self) -> &'static str {
            "late"
        }
        fn status(&self) -> RejectStatus {
            RejectStatus::Unprocessable
        }
    }

    async fn answer(outcome: Outcome<Late>, fatal: &CancellationToken) -> (StatusCode, Option<String>, String) {
        use http_body_util::BodyExt;
        let r = respond("test", outcome, fatal);
        let retry = r.headers().get(RETRY_AFTER).map(|v| v.to_str().expect("ascii").to_owned());
        let status = r.status();
        let body = r.into_body().collect().await.expect("a full body").to_bytes();
        (status, retry, String::from_utf8(body.to_vec()).expect("utf-8"))
    }

    #[tokio::test]
    async fn each_outcome_has_its_status_and_a_one_line_reason() {
        let fatal = CancellationToken::new();
        let token = || ReadToken { topic: "t".into(), partition: 1, offset: 7 };
        assert_eq!(
            answer(Outcome::Accepted(Decided { status: StatusCode::OK, body: None }, token()), &fatal).await,
            (StatusCode::OK, None, String::new())
        );
        let no_content = Decided { status: StatusCode::NO_CONTENT, body: None };
        assert_eq!(answer(Outcome::Accepted(no_content, token()), &fatal).await.0, StatusCode::NO_CONTENT);
        let created = Decided { status: StatusCode::CREATED, body: Some(r#"{"version":1}"#.into()) };
        assert_eq!(
            answer(Outcome::Accepted(created, token()), &fatal).await,
            (StatusCode::CREATED, None, r#"{"version":1}"#.into())
        );
        let (status, retry, body) = answer(Outcome::Undecided, &fatal).await;
        assert_eq!((status, retry.as_deref()), (StatusCode::SERVICE_UNAVAILABLE, Some("1")));
        assert!(body.starts_with("outcome unknown:") && body.contains("same id"), "{body}");
        assert_eq!(
            answer(Outcome::Rejected(Late), &fatal).await,
            (StatusCode::UNPROCESSABLE_ENTITY, None, "too late\n".into())
        );
        assert_eq!(answer(Outcome::BodyUnreadable, &fatal).await.0, StatusCode::BAD_REQUEST);
        let (status, _, body) = answer(Outcome::BodyIdle(std::time::Duration::from_secs(30)), &fatal).await;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
        assert!(body.contains("30s"), "{body}");
        let (status, retry, body) = answer(Outcome::Overloaded, &fatal).await;
        assert_eq!((status, retry.as_deref()), (StatusCode::SERVICE_UNAVAILABLE, Some("1")));
        assert!(body.contains("in flight"), "{body}");
        let (status, retry, body) = answer(Outcome::Unavailable(PublishError::Timeout), &fatal).await;
        assert_eq!((status, retry.as_deref()), (StatusCode::SERVICE_UNAVAILABLE, Some("1")));
        assert!(body.starts_with("outcome unknown:") && body.contains("same id"), "{body}");
        let (_, _, body) = answer(Outcome::Unavailable(PublishError::QueueFull), &fatal).await;
        assert!(body.starts_with("event not recorded:") && body.contains("queue is full"), "{body}");
        assert!(!fatal.is_cancelled(), "none of these stop the process");
    }

    #[test]
    fn an_accepted_event_carries_its_read_token() {
        let token = ReadToken { topic: "analytics.events".into(), partition: 2, offset: 41 };
        let r = respond::<Late>(
            "test",
            Outcome::Accepted(Decided { status: StatusCode::NO_CONTENT, body: None }, token.clone()),
            &CancellationToken::new(),
        );
        let header = r.headers().get(TOKEN_HEADER).expect("a token header").to_str().expect("ascii");
        assert_eq!(ReadToken::parse(header), Ok(token));
    }

    #[tokio::test]
    async fn a_misrouted_record_stops_the_process() {
        let fatal = CancellationToken::new();
        let (status, _, _) = answer(Outcome::Misrouted { partition: 1, expected: 0 }, &fatal).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(fatal.is_cancelled());
    }
}
