//! The widgets workload in the query service: `GET /widgets/{serial}` →
//! `{"serial","name","ports","associations":[{"with","port"},…]}` from the
//! `widgets` read model through the engine's [`Reader`] (in process, Redis,
//! PostgreSQL); 404 for a serial never created or deleted.
//!
//! The serial is one percent-encoded path segment, decoded strictly as the
//! writes decode it; `after=` (read-your-writes) is the engine's, taken off
//! before the route sees the query.

use std::sync::Arc;

use common::engine::http;
use common::engine::request::truncate_for_message;
use hyper::StatusCode;

use crate::input::{BadInput, Serial};
use crate::read_model::WidgetRow;
use crate::request::decode_segment;

use ::query::engine::{QueryError, QueryWorkload, Reader, Route};

/// The route's prefix: the serial follows it.
const PREFIX: &str = "/widgets/";

/// The widgets read model.
pub struct Widgets;

/// Why a read was refused (400), with a fixed label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadReject {
    #[error("the path must be /widgets/<serial> (the serial percent-encoded as one segment)")]
    BadPath,
    #[error("the serial: malformed percent-encoding or not UTF-8")]
    BadSegment,
    #[error("{0}")]
    BadSerial(BadInput),
    #[error("unknown query parameter; GET /widgets/<serial> takes none (but `after`)")]
    UnknownParameter,
}

impl ReadReject {
    pub fn label(&self) -> &'static str {
        match self {
            ReadReject::BadPath | ReadReject::BadSegment | ReadReject::BadSerial(_) => "bad_path",
            ReadReject::UnknownParameter => "bad_query",
        }
    }
}

impl From<ReadReject> for QueryError {
    fn from(r: ReadReject) -> Self {
        QueryError::Rejected { label: r.label(), message: r.to_string() }
    }
}

/// Parses a read's path and query string (without the engine's `after=`). Pure.
///
/// # Errors
/// The first problem: the path, the serial, then the query.
pub fn parse_read(path: &str, query: Option<&str>) -> Result<Serial, ReadReject> {
    let segment = path.strip_prefix(PREFIX).filter(|s| !s.is_empty() && !s.contains('/')).ok_or(ReadReject::BadPath)?;
    let text = decode_segment(segment).ok_or(ReadReject::BadSegment)?;
    let serial = Serial::parse(&text).map_err(ReadReject::BadSerial)?;
    if query.is_some_and(|q| q.split('&').any(|p| !p.is_empty())) {
        return Err(ReadReject::UnknownParameter);
    }
    Ok(serial)
}

impl QueryWorkload for Widgets {
    const NAME: &'static str = "widgets";
    type Row = WidgetRow;

    fn routes(reader: Reader<Self>) -> Vec<Route> {
        let handler = move |path: &str, query: Option<&str>| {
            let read = parse_read(path, query);
            let reader = reader.clone();
            Box::pin(async move {
                let serial = read?;
                let found = reader.read(&serial).await?;
                // Version 0: no store has the serial; an empty body: deleted.
                if found.version == 0 || !found.row.is_live() {
                    return Err(QueryError::NotFound(format!(
                        "no widget with serial `{}`",
                        truncate_for_message(serial.as_str())
                    )));
                }
                Ok(http::json(StatusCode::OK, found.row.body))
            }) as ::query::engine::Answer
        };
        vec![Route { path: PREFIX, usage: "GET /widgets/<serial>", handler: Arc::new(handler) }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_names_one_serial() {
        assert_eq!(parse_read("/widgets/a%2Fb", None).map(|s| s.into_string()), Ok("a/b".to_owned()));
        assert_eq!(parse_read("/widgets/a+b", Some("")).map(|s| s.into_string()), Ok("a+b".to_owned()));
        for bad in ["/widgets/", "/widgets/a/b", "/other/a"] {
            assert_eq!(parse_read(bad, None), Err(ReadReject::BadPath), "{bad}");
        }
        assert_eq!(parse_read("/widgets/%zz", None), Err(ReadReject::BadSegment));
        assert_eq!(parse_read("/widgets/%7F", None), Err(ReadReject::BadSerial(BadInput::SerialControl)));
        assert_eq!(parse_read("/widgets/a", Some("x=1")), Err(ReadReject::UnknownParameter));
    }
}
