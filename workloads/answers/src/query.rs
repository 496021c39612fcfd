//! The answers workload in the query service:
//!
//! - `GET /answers/{key}` → `{"key","value","version"}` from the latest read
//!   model through the engine's [`Reader`] (in process, Redis, PostgreSQL);
//!   404 for a key never created or deleted.
//! - `GET /answers/{key}/history?from=<version>&limit=<n>` → the key's
//!   changes, oldest first, `[{"event","data":{"key","value"},"version","at"}]`,
//!   read from PostgreSQL (the history is not cached); a `Link: <…>;
//!   rel="next"` header when more follow; 404 for a key never created.
//!
//! The key is one percent-encoded path segment ([`AnswerKey::from_path_segment`]);
//! `after=` (read-your-writes) is the engine's, taken off before the route sees the query.

use std::sync::Arc;

use common::engine::http::{self, Body};
use common::engine::pg::PgError;
use common::engine::request::{decode as decode_query_part, truncate_for_message};
use deadpool_postgres::Pool;
use hyper::header::{HeaderValue, LINK};
use hyper::{Response, StatusCode};
use serde::Serialize;

use crate::key::{AnswerKey, BadKey};
use crate::read_model::{self, HistoryEntry, LatestAnswer};

use ::query::engine::{QueryError, QueryWorkload, ReadError, Reader, Route};

/// The routes' prefix: the key follows it.
const PREFIX: &str = "/answers/";
/// The history's suffix after the key.
const HISTORY: &str = "history";
/// Changes per history page unless `limit=` says otherwise.
pub const DEFAULT_LIMIT: u32 = 1_000;
/// Most changes per history page.
pub const MAX_LIMIT: u32 = 10_000;

/// The latest answers read model.
pub struct Answers;

/// Which read a path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    Latest(AnswerKey),
    History(AnswerKey, Page),
}

/// One page of a history: from a version, at most `limit` changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub from: u64,
    pub limit: u32,
}

impl Default for Page {
    fn default() -> Self {
        Page { from: 1, limit: DEFAULT_LIMIT }
    }
}

/// Why a read was refused (400), with a fixed label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadReject {
    #[error("the path must be /answers/<key> or /answers/<key>/history (the key percent-encoded)")]
    BadPath,
    #[error("{0}")]
    BadKey(BadKey),
    #[error("unknown query parameter `{0}`")]
    UnknownParameter(String),
    #[error("query parameter `{0}` given more than once")]
    DuplicateParameter(&'static str),
    #[error("malformed percent-encoding or non-UTF-8 in the query string")]
    BadQueryEncoding,
    #[error("`from` must be a version, an integer from 1 to 9223372036854775807")]
    BadFrom,
    #[error("`limit` must be an integer from 1 to 10000")]
    BadLimit,
}

impl ReadReject {
    pub fn label(&self) -> &'static str {
        match self {
            ReadReject::BadPath => "bad_path",
            ReadReject::BadKey(_) => "bad_key",
            ReadReject::UnknownParameter(_) | ReadReject::DuplicateParameter(_) | ReadReject::BadQueryEncoding => {
                "bad_query"
            }
            ReadReject::BadFrom | ReadReject::BadLimit => "bad_page",
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
/// The first problem: the path, the key, then the query.
pub fn parse_read(path: &str, query: Option<&str>) -> Result<Read, ReadReject> {
    let rest = path.strip_prefix(PREFIX).ok_or(ReadReject::BadPath)?;
    let (segment, history) = match rest.split_once('/') {
        None => (rest, false),
        Some((segment, HISTORY)) => (segment, true),
        Some(_) => return Err(ReadReject::BadPath),
    };
    let key = AnswerKey::from_path_segment(segment).map_err(ReadReject::BadKey)?;
    let (mut from, mut limit) = (None, None);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode_query_part(name).map_err(|_| ReadReject::BadQueryEncoding)?;
        let value = decode_query_part(value).map_err(|_| ReadReject::BadQueryEncoding)?;
        let (slot, field, bad) = match name.as_str() {
            "from" if history => (&mut from, "from", ReadReject::BadFrom),
            "limit" if history => (&mut limit, "limit", ReadReject::BadLimit),
            _ => return Err(ReadReject::UnknownParameter(truncate_for_message(&name))),
        };
        // Digits only: no sign, no spaces, no fraction.
        let number = Some(value.as_str())
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or(bad)?;
        if slot.replace(number).is_some() {
            return Err(ReadReject::DuplicateParameter(field));
        }
    }
    if !history {
        return Ok(Read::Latest(key));
    }
    let from = from.unwrap_or(1);
    // A version is a BIGINT: beyond i64::MAX is no version at all.
    if from < 1 || i64::try_from(from).is_err() {
        return Err(ReadReject::BadFrom);
    }
    let limit = match limit {
        None => DEFAULT_LIMIT,
        Some(l) if (1..=u64::from(MAX_LIMIT)).contains(&l) => u32::try_from(l).expect("at most MAX_LIMIT"),
        Some(_) => return Err(ReadReject::BadLimit),
    };
    Ok(Read::History(key, Page { from, limit }))
}

/// One entry of a history answer.
#[derive(Debug, Serialize)]
struct HistoryItem<'a> {
    event: &'static str,
    data: HistoryData<'a>,
    version: u64,
    at: i64,
}

#[derive(Debug, Serialize)]
struct HistoryData<'a> {
    key: &'a str,
    value: &'a str,
}

/// The JSON of a history page: every value exactly (control characters as escapes).
pub fn history_json(key: &AnswerKey, entries: &[HistoryEntry]) -> String {
    let items: Vec<HistoryItem<'_>> = entries
        .iter()
        .map(|e| HistoryItem {
            event: e.event.name(),
            data: HistoryData { key: key.as_str(), value: &e.value },
            version: e.version,
            at: e.at_ms,
        })
        .collect();
    serde_json::to_string(&items).expect("strings and numbers always serialize")
}

/// The `Link` header to the page after one that ended at version `last`.
pub fn next_link(key: &AnswerKey, last: u64, limit: u32) -> String {
    format!("</answers/{}/history?from={}&limit={limit}>; rel=\"next\"", key.to_path_segment(), last + 1)
}

impl QueryWorkload for Answers {
    const NAME: &'static str = "answers";
    type Row = LatestAnswer;

    fn routes(reader: Reader<Self>) -> Vec<Route> {
        let handler = move |path: &str, query: Option<&str>| {
            let read = parse_read(path, query);
            let reader = reader.clone();
            Box::pin(async move {
                match read? {
                    Read::Latest(key) => latest(&reader, key).await,
                    Read::History(key, page) => history(reader.pool(), key, page).await,
                }
            }) as ::query::engine::Answer
        };
        vec![Route {
            path: PREFIX,
            usage: "GET /answers/<key> or GET /answers/<key>/history?from=<version>&limit=<n>",
            handler: Arc::new(handler),
        }]
    }
}

fn not_found(key: &AnswerKey) -> QueryError {
    QueryError::NotFound(format!("no answer for the key `{}`", truncate_for_message(key.as_str())))
}

async fn latest(reader: &Reader<Answers>, key: AnswerKey) -> Result<Response<Body>, QueryError> {
    let found = reader.read(&key).await?;
    // Version 0: no store has the key; an empty body: deleted.
    if found.version == 0 || !found.row.is_live() {
        return Err(not_found(&key));
    }
    Ok(http::json(StatusCode::OK, found.row.body))
}

async fn history(pool: &Pool, key: AnswerKey, page: Page) -> Result<Response<Body>, QueryError> {
    let unavailable = |e: PgError| QueryError::Unavailable(ReadError::from(e));
    let client = pool.get().await.map_err(|e| unavailable(e.into()))?;
    // One more than the page: whether a next page exists, without counting.
    let mut entries = read_model::read_history(&client, &key, page.from, page.limit + 1).await.map_err(unavailable)?;
    if entries.is_empty() && !read_model::history_exists(&client, &key).await.map_err(unavailable)? {
        return Err(QueryError::NotFound(format!(
            "the key `{}` was never created",
            truncate_for_message(key.as_str())
        )));
    }
    let more = entries.len() > page.limit as usize;
    entries.truncate(page.limit as usize);
    let mut response = http::json(StatusCode::OK, history_json(&key, &entries));
    if let (true, Some(last)) = (more, entries.last()) {
        let link = HeaderValue::from_str(&next_link(&key, last.version, page.limit))
            .expect("a percent-encoded key and numbers are a valid header value");
        response.headers_mut().insert(LINK, link);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Event;

    fn key(k: &str) -> AnswerKey {
        AnswerKey::parse(k).unwrap()
    }

    #[test]
    fn paths_name_a_key_and_maybe_its_history() {
        assert_eq!(parse_read("/answers/a%2Fb", None), Ok(Read::Latest(key("a/b"))));
        assert_eq!(parse_read("/answers/k/history", None), Ok(Read::History(key("k"), Page::default())));
        assert_eq!(
            parse_read("/answers/k/history", Some("from=5&limit=10000")),
            Ok(Read::History(key("k"), Page { from: 5, limit: 10_000 }))
        );
        assert_eq!(parse_read("/answers/history", None), Ok(Read::Latest(key("history"))));
        for bad in ["/answers/k/other", "/answers/k/history/x", "/answers/k/", "/other/k"] {
            assert_eq!(parse_read(bad, None), Err(ReadReject::BadPath), "{bad}");
        }
        assert_eq!(parse_read("/answers/%zz", None), Err(ReadReject::BadKey(BadKey::Percent)));
        assert_eq!(parse_read("/answers/%0A", None), Err(ReadReject::BadKey(BadKey::Control)));
    }

    #[test]
    fn paging_parameters_are_strict() {
        let page = |q: &str| parse_read("/answers/k/history", Some(q));
        assert_eq!(page("from=0"), Err(ReadReject::BadFrom));
        assert_eq!(page("from=-1"), Err(ReadReject::BadFrom));
        assert_eq!(page("from=1.5"), Err(ReadReject::BadFrom));
        assert_eq!(page("from=9223372036854775808"), Err(ReadReject::BadFrom), "past a BIGINT");
        assert_eq!(page("from="), Err(ReadReject::BadFrom));
        assert_eq!(page("limit=0"), Err(ReadReject::BadLimit));
        assert_eq!(page("limit=10001"), Err(ReadReject::BadLimit));
        assert_eq!(page("limit=99999999999999999999999"), Err(ReadReject::BadLimit));
        assert_eq!(page("from=1&from=2"), Err(ReadReject::DuplicateParameter("from")));
        assert_eq!(page("x=1"), Err(ReadReject::UnknownParameter("x".into())));
        assert_eq!(parse_read("/answers/k", Some("from=1")), Err(ReadReject::UnknownParameter("from".into())));
        assert_eq!(page("from=%zz"), Err(ReadReject::BadQueryEncoding));
    }

    #[test]
    fn a_history_is_json_with_every_value_exact() {
        let k = key("k\"é");
        let entries = [
            HistoryEntry { version: 1, event: Event::Create, value: "a\u{0}b".into(), at_ms: 10 },
            HistoryEntry { version: 2, event: Event::Delete, value: "a\u{0}b".into(), at_ms: 11 },
        ];
        let json = history_json(&k, &entries);
        assert_eq!(
            json,
            r#"[{"event":"create","data":{"key":"k\"é","value":"a\u0000b"},"version":1,"at":10},{"event":"delete","data":{"key":"k\"é","value":"a\u0000b"},"version":2,"at":11}]"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed[0]["data"]["value"], "a\u{0}b");
        assert_eq!(history_json(&k, &[]), "[]");
    }

    #[test]
    fn the_next_link_carries_the_encoded_key_and_the_next_version() {
        assert_eq!(
            next_link(&key("a b/c"), 1000, 1000),
            r#"</answers/a%20b%2Fc/history?from=1001&limit=1000>; rel="next""#
        );
        assert!(HeaderValue::from_str(&next_link(&key("日本\u{A0}"), 1, 1)).is_ok());
    }
}
