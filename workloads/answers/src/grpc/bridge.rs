//! The pure half of the gRPC bridge: each call as the HTTP request that means
//! the same, and each HTTP answer as the call's reply or [`Status`].
//!
//! No I/O here: [`super`] hands the built request to the service's in-process
//! `handle` and the answer back to [`reply`].

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, LINK, RETRY_AFTER};
use hyper::{Method, Request, StatusCode};
use serde::{Deserialize, Serialize};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

use super::proto::{
    Answer, CreateRequest, DeleteRequest, DeleteResponse, Event, GetRequest, HistoryEntry, HistoryRequest,
    HistoryResponse, UpdateRequest,
};

/// The HTTP route of the answers, and of one key (`/answers/{key}`).
pub const ROUTE: &str = "/answers";

/// The read token of a write: the HTTP header (the engine's name), and the gRPC metadata key it
/// becomes.
pub const ANALYTICS_TOKEN: &str = common::engine::progress::TOKEN_HEADER;

/// An in-process HTTP request, as `CommandApp::handle` / `QueryApp::handle` take it.
pub type HttpRequest = Request<Full<Bytes>>;

/// The part of an HTTP answer the bridge reads.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

// ---------------------------------------------------------------------------
// Calls → HTTP requests
// ---------------------------------------------------------------------------

/// `Create` → `POST /answers?id=…` with `{"key","value"}`.
///
/// # Errors
/// Never for a well-formed message; [`Status`] keeps the signature of the others.
pub fn create(msg: &CreateRequest, metadata: &MetadataMap) -> Result<HttpRequest, Status> {
    #[derive(Serialize)]
    struct Body<'a> {
        key: &'a str,
        value: &'a str,
    }
    let body = json(&Body { key: &msg.key, value: &msg.value })?;
    build(Method::POST, ROUTE.to_owned(), &[("id", msg.id.as_deref())], Some(body), metadata)
}

/// `Update` → `PUT /answers/{key}?id=…` with `{"value"}`.
///
/// # Errors
/// INVALID_ARGUMENT for an empty key (it cannot name a path).
pub fn update(msg: &UpdateRequest, metadata: &MetadataMap) -> Result<HttpRequest, Status> {
    #[derive(Serialize)]
    struct Body<'a> {
        value: &'a str,
    }
    let body = json(&Body { value: &msg.value })?;
    build(Method::PUT, key_path(&msg.key, "")?, &[("id", msg.id.as_deref())], Some(body), metadata)
}

/// `Delete` → `DELETE /answers/{key}?id=…`, no body.
///
/// # Errors
/// INVALID_ARGUMENT for an empty key.
pub fn delete(msg: &DeleteRequest, metadata: &MetadataMap) -> Result<HttpRequest, Status> {
    build(Method::DELETE, key_path(&msg.key, "")?, &[("id", msg.id.as_deref())], None, metadata)
}

/// `Get` → `GET /answers/{key}?after=…&wait_ms=…`.
///
/// # Errors
/// INVALID_ARGUMENT for an empty key.
pub fn get(msg: &GetRequest, metadata: &MetadataMap) -> Result<HttpRequest, Status> {
    let wait_ms = msg.wait_ms.map(|n| n.to_string());
    let query = [("after", msg.after.as_deref()), ("wait_ms", wait_ms.as_deref())];
    build(Method::GET, key_path(&msg.key, "")?, &query, None, metadata)
}

/// `History` → `GET /answers/{key}/history?from=…&limit=…&after=…&wait_ms=…`.
///
/// # Errors
/// INVALID_ARGUMENT for an empty key.
pub fn history(msg: &HistoryRequest, metadata: &MetadataMap) -> Result<HttpRequest, Status> {
    let (from, limit) = (msg.from.map(|n| n.to_string()), msg.limit.map(|n| n.to_string()));
    let wait_ms = msg.wait_ms.map(|n| n.to_string());
    let query = [
        ("from", from.as_deref()),
        ("limit", limit.as_deref()),
        ("after", msg.after.as_deref()),
        ("wait_ms", wait_ms.as_deref()),
    ];
    build(Method::GET, key_path(&msg.key, "/history")?, &query, None, metadata)
}

/// serde_json escapes every string exactly (U+0000 as `\u0000`, quotes, backslashes), so the
/// service reads back the very value the client sent.
fn json(body: &impl Serialize) -> Result<Bytes, Status> {
    serde_json::to_vec(body).map(Bytes::from).map_err(|e| Status::internal(format!("encoding the request: {e}")))
}

/// `/answers/{key}{suffix}` with the key percent-encoded as one path segment.
fn key_path(key: &str, suffix: &str) -> Result<String, Status> {
    // An empty key would turn `/answers/{key}` into another route (`/answers/`): refuse it here,
    // in the words of a key check, rather than answer for a route the client did not call.
    if key.is_empty() {
        return Err(Status::invalid_argument("key: must be 1 to 256 bytes of UTF-8, not empty"));
    }
    Ok(format!("{ROUTE}/{}{suffix}", percent_encode(key)))
}

/// The request: `path` (already encoded), the present `query` pairs (values encoded here), the
/// JSON `body`, and the caller's `authorization` metadata as the header.
fn build(
    method: Method,
    mut path: String,
    query: &[(&str, Option<&str>)],
    body: Option<Bytes>,
    metadata: &MetadataMap,
) -> Result<HttpRequest, Status> {
    let mut separator = '?';
    for (name, value) in query {
        if let Some(value) = value {
            path.push(separator);
            path.push_str(name);
            path.push('=');
            path.push_str(&percent_encode(value));
            separator = '&';
        }
    }
    let mut req = Request::builder().method(method).uri(&path);
    if body.is_some() {
        req = req.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    if let Some(auth) = metadata.as_ref().get(AUTHORIZATION) {
        req = req.header(AUTHORIZATION, auth.clone());
    }
    req.body(Full::new(body.unwrap_or_default()))
        .map_err(|e| Status::internal(format!("building the request for {path}: {e}")))
}

/// Percent-encodes everything but the unreserved characters of RFC 3986 (`A-Z a-z 0-9 - . _ ~`),
/// so any string is one path segment or one query value (`/`, `?`, `&`, `+`, `%` included).
pub fn percent_encode(raw: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(raw.len());
    for &b in raw.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// HTTP answers → replies
// ---------------------------------------------------------------------------

/// The gRPC code of an HTTP status: the one place that maps them.
pub fn code_of(status: StatusCode) -> Code {
    match status.as_u16() {
        200..=299 => Code::Ok,
        400 | 413 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        404 => Code::NotFound,
        409 => Code::AlreadyExists,
        429 => Code::ResourceExhausted,
        503 => Code::Unavailable,
        _ => Code::Internal,
    }
}

/// The [`Status`] of a refused call: the code of its HTTP status, the answer's one-line reason as
/// the message, and `retry-after` as metadata when the service said when to retry.
pub fn status_of(answer: &HttpAnswer) -> Status {
    let text = String::from_utf8_lossy(&answer.body);
    let line = text.lines().next().map(str::trim).unwrap_or_default();
    let message = match line {
        "" => answer.status.canonical_reason().unwrap_or("no reason given").to_owned(),
        line => line.to_owned(),
    };
    let mut metadata = MetadataMap::new();
    copy_header(&answer.headers, &RETRY_AFTER, &mut metadata, "retry-after");
    Status::with_metadata(code_of(answer.status), message, metadata)
}

/// A successful call's reply: `message`, with the write's read token as `analytics-token`.
pub fn reply<T>(answer: &HttpAnswer, message: T) -> tonic::Response<T> {
    let mut reply = tonic::Response::new(message);
    copy_header(&answer.headers, &HeaderName::from_static(ANALYTICS_TOKEN), reply.metadata_mut(), ANALYTICS_TOKEN);
    reply
}

fn copy_header(headers: &HeaderMap, name: &HeaderName, metadata: &mut MetadataMap, key: &'static str) {
    if let Some(value) = headers.get(name).and_then(|v| MetadataValue::try_from(v.as_bytes()).ok()) {
        metadata.insert(key, value);
    }
}

/// The service answered something this bridge cannot read: a bug on one side, logged once here.
fn unreadable(what: &'static str, detail: impl std::fmt::Display) -> Status {
    tracing::error!(error = %detail, what, "unreadable answer from the answers HTTP handling");
    Status::internal(format!("unreadable {what} from the service"))
}

/// `{"key","value","version"}` (201 of POST, 200 of PUT and GET) as an [`Answer`].
///
/// # Errors
/// INTERNAL when the body is not that JSON.
pub fn answer(answer: &HttpAnswer) -> Result<Answer, Status> {
    // A create or update whose id was first used for a delete of the key answers that first
    // outcome, a 204 with no answer to read: the id names another write.
    if answer.status == StatusCode::NO_CONTENT {
        return Err(Status::failed_precondition("this id was first used for a delete of the key; use a new id"));
    }
    #[derive(Deserialize)]
    struct Body {
        key: String,
        value: String,
        version: u64,
    }
    let Body { key, value, version } = serde_json::from_slice(&answer.body).map_err(|e| unreadable("answer", e))?;
    Ok(Answer { key, value, version })
}

/// The 204 of DELETE: nothing to read.
pub fn deleted(_: &HttpAnswer) -> Result<DeleteResponse, Status> {
    Ok(DeleteResponse {})
}

/// `[{"event","data":{"key","value"},"version","at"}]` and the `Link: rel="next"` header as a
/// [`HistoryResponse`].
///
/// # Errors
/// INTERNAL when the body is not that JSON.
pub fn history_page(answer: &HttpAnswer) -> Result<HistoryResponse, Status> {
    #[derive(Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum EventName {
        Create,
        Update,
        Delete,
    }
    #[derive(Deserialize)]
    struct Data {
        key: String,
        value: String,
    }
    #[derive(Deserialize)]
    struct Entry {
        event: EventName,
        data: Data,
        version: u64,
        at: i64,
    }
    let entries: Vec<Entry> = serde_json::from_slice(&answer.body).map_err(|e| unreadable("history", e))?;
    let entries = entries
        .into_iter()
        .map(|Entry { event, data, version, at }| HistoryEntry {
            event: match event {
                EventName::Create => Event::Create,
                EventName::Update => Event::Update,
                EventName::Delete => Event::Delete,
            }
            .into(),
            key: data.key,
            value: data.value,
            version,
            at_ms: at,
        })
        .collect();
    Ok(HistoryResponse { entries, next_from: next_from(&answer.headers) })
}

/// The `from` of the `Link: <…?from=N&limit=M>; rel="next"` header, if any.
fn next_from(headers: &HeaderMap) -> Option<u64> {
    headers
        .get_all(LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find(|link| link.split(';').skip(1).any(|param| param.trim() == "rel=\"next\"" || param.trim() == "rel=next"))
        .and_then(|link| {
            let target = link.trim().strip_prefix('<')?.split('>').next()?;
            let (_, query) = target.split_once('?')?;
            query.split('&').find_map(|pair| pair.strip_prefix("from=")?.parse().ok())
        })
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    fn metadata(auth: Option<&str>) -> MetadataMap {
        let mut m = MetadataMap::new();
        if let Some(auth) = auth {
            m.insert("authorization", auth.parse().expect("ascii"));
        }
        m
    }

    async fn body_of(req: HttpRequest) -> (hyper::http::request::Parts, Bytes) {
        let (parts, body) = req.into_parts();
        (parts, body.collect().await.expect("infallible").to_bytes())
    }

    fn http(status: u16, headers: &[(&'static str, &str)], body: &str) -> HttpAnswer {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(*name, value.parse().expect("header"));
        }
        HttpAnswer { status: StatusCode::from_u16(status).expect("status"), headers: map, body: body.to_owned().into() }
    }

    #[tokio::test]
    async fn create_posts_the_exact_json_of_any_value_with_the_token_and_the_id() {
        let value = "nul \0 quote \" backslash \\ newline \n emoji 🦀 \u{7f}\u{85}";
        let msg = CreateRequest { key: "k/1?x".into(), value: value.into(), id: Some("retry 1&2+3".into()) };
        let (parts, body) = body_of(create(&msg, &metadata(Some("Bearer s3cret"))).expect("built")).await;
        assert_eq!(parts.method, Method::POST);
        assert_eq!(parts.uri, "/answers?id=retry%201%262%2B3");
        assert_eq!(parts.headers[CONTENT_TYPE], "application/json");
        assert_eq!(parts.headers[AUTHORIZATION], "Bearer s3cret");
        let sent: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(sent, serde_json::json!({"key": "k/1?x", "value": value}));
        assert!(std::str::from_utf8(&body).expect("utf-8").contains(r"\u0000"), "U+0000 escaped, not dropped");
    }

    #[tokio::test]
    async fn update_and_delete_name_the_key_as_one_encoded_path_segment() {
        let key = "a/b c%d?é";
        let msg = UpdateRequest { key: key.into(), value: "v".into(), id: None };
        let (parts, body) = body_of(update(&msg, &metadata(None)).expect("built")).await;
        assert_eq!((parts.method, parts.uri.to_string()), (Method::PUT, "/answers/a%2Fb%20c%25d%3F%C3%A9".to_owned()));
        assert_eq!(&body[..], br#"{"value":"v"}"#);
        assert!(!parts.headers.contains_key(AUTHORIZATION));

        let msg = DeleteRequest { key: key.into(), id: Some("x".into()) };
        let (parts, body) = body_of(delete(&msg, &metadata(None)).expect("built")).await;
        assert_eq!(
            (parts.method, parts.uri.to_string()),
            (Method::DELETE, "/answers/a%2Fb%20c%25d%3F%C3%A9?id=x".into())
        );
        assert!(body.is_empty() && !parts.headers.contains_key(CONTENT_TYPE));
    }

    #[tokio::test]
    async fn reads_carry_after_and_the_history_page() {
        let msg = GetRequest { key: "k".into(), after: Some("1:2:3".into()), wait_ms: Some(250) };
        let (parts, _) = body_of(get(&msg, &metadata(Some("Bearer r"))).expect("built")).await;
        assert_eq!(
            (parts.method, parts.uri.to_string()),
            (Method::GET, "/answers/k?after=1%3A2%3A3&wait_ms=250".into())
        );
        assert_eq!(parts.headers[AUTHORIZATION], "Bearer r");

        let msg = HistoryRequest { key: "k".into(), from: Some(7), limit: Some(2), after: None, wait_ms: None };
        let (parts, _) = body_of(history(&msg, &metadata(None)).expect("built")).await;
        assert_eq!(parts.uri, "/answers/k/history?from=7&limit=2");
        let bare = HistoryRequest { key: "k".into(), ..Default::default() };
        assert_eq!(history(&bare, &metadata(None)).expect("built").uri(), "/answers/k/history");
    }

    #[test]
    fn an_empty_key_is_refused_before_it_names_another_route() {
        let empty = GetRequest::default();
        assert_eq!(get(&empty, &metadata(None)).expect_err("empty").code(), Code::InvalidArgument);
        let empty = DeleteRequest::default();
        assert_eq!(delete(&empty, &metadata(None)).expect_err("empty").code(), Code::InvalidArgument);
    }

    #[test]
    fn percent_encoding_keeps_only_unreserved_characters() {
        assert_eq!(percent_encode("AZaz09-._~"), "AZaz09-._~");
        assert_eq!(percent_encode("/?#[]@!$&'()*+,;=% "), "%2F%3F%23%5B%5D%40%21%24%26%27%28%29%2A%2B%2C%3B%3D%25%20");
        assert_eq!(percent_encode("\0\u{1f}ü"), "%00%1F%C3%BC");
        // Round trip through the engine's own decoder.
        let raw = "any + thing / % é \u{7f}";
        assert_eq!(common::engine::request::decode(&percent_encode(raw)).expect("decodes"), raw);
    }

    #[test]
    fn http_statuses_map_to_grpc_codes() {
        let cases = [
            (200, Code::Ok),
            (201, Code::Ok),
            (204, Code::Ok),
            (400, Code::InvalidArgument),
            (413, Code::InvalidArgument),
            (401, Code::Unauthenticated),
            (404, Code::NotFound),
            (409, Code::AlreadyExists),
            (429, Code::ResourceExhausted),
            (503, Code::Unavailable),
            (403, Code::Internal),
            (405, Code::Internal),
            (500, Code::Internal),
            (504, Code::Internal),
        ];
        for (status, code) in cases {
            assert_eq!(code_of(StatusCode::from_u16(status).expect("status")), code, "{status}");
        }
    }

    #[test]
    fn a_refusal_carries_its_one_line_reason_and_retry_after() {
        let status = status_of(&http(409, &[], "key exists\n"));
        assert_eq!((status.code(), status.message()), (Code::AlreadyExists, "key exists"));
        let status = status_of(&http(503, &[("retry-after", "5")], "outcome unknown; retry with the same id\n"));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "outcome unknown; retry with the same id");
        assert_eq!(status.metadata().get("retry-after").expect("copied"), "5");
        let status = status_of(&http(429, &[], ""));
        assert_eq!((status.code(), status.message()), (Code::ResourceExhausted, "Too Many Requests"));
    }

    #[test]
    fn a_write_reply_carries_the_read_token() {
        let ok = http(201, &[("analytics-token", "0:12:34")], r#"{"key":"k","value":"v\u0000","version":3}"#);
        let reply = reply(&ok, answer(&ok).expect("answer"));
        assert_eq!(reply.metadata().get(ANALYTICS_TOKEN).expect("token"), "0:12:34");
        assert_eq!(reply.into_inner(), Answer { key: "k".into(), value: "v\0".into(), version: 3 });
        assert_eq!(deleted(&http(204, &[], "")).expect("empty"), DeleteResponse {});
        let reused = answer(&http(204, &[], "")).expect_err("a create's id first used for a delete");
        assert_eq!(reused.code(), Code::FailedPrecondition);
    }

    #[test]
    fn a_history_page_reads_its_entries_and_the_next_link() {
        let body = r#"[{"event":"create","data":{"key":"k","value":"a"},"version":1,"at":10},
                       {"event":"update","data":{"key":"k","value":"b"},"version":2,"at":20},
                       {"event":"delete","data":{"key":"k","value":"b"},"version":3,"at":30}]"#;
        let page = history_page(&http(200, &[("link", r#"</answers/k/history?from=4&limit=3>; rel="next""#)], body))
            .expect("page");
        let events: Vec<Event> = page.entries.iter().map(HistoryEntry::event).collect();
        assert_eq!(events, [Event::Create, Event::Update, Event::Delete]);
        assert_eq!(
            page.entries[2],
            HistoryEntry { event: Event::Delete.into(), key: "k".into(), value: "b".into(), version: 3, at_ms: 30 }
        );
        assert_eq!(page.next_from, Some(4));
        assert_eq!(history_page(&http(200, &[], "[]")).expect("empty").next_from, None);
    }

    #[test]
    fn an_unreadable_success_is_internal() {
        assert_eq!(answer(&http(200, &[], "{}")).expect_err("missing").code(), Code::Internal);
        let unknown = r#"[{"event":"rename","data":{"key":"k","value":"v"},"version":1,"at":1}]"#;
        assert_eq!(history_page(&http(200, &[], unknown)).expect_err("unknown").code(), Code::Internal);
    }
}
