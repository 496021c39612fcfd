//! Strict parsing of the writes: `POST /answers` with `{"key", "value"}`,
//! `PUT /answers/{key}` with `{"value"}` and `DELETE /answers/{key}` (no
//! body), each with an optional `?id=`.
//!
//! A body is exactly the fields named, each once, each a JSON string; `key`
//! a valid [`AnswerKey`], `value` any string of at most [`MAX_VALUE_BYTES`]
//! bytes of UTF-8 once unescaped (U+0000 and every other character
//! included). Anything else is refused with an [`AnswerReject`] whose message
//! is one line and whose label is one of a small fixed set, and nothing is
//! written.
//!
//! As in the increments workload (its `request` module says why), the body
//! is read once as JSON, its members collected as raw JSON text in document
//! order, and each rule checked on that text with a typed reason rather than
//! through `#[serde(deny_unknown_fields)]`, whose reasons are only told apart
//! by their message text.
//!
//! Checks run in a fixed order, and the first failure is the answer: the
//! path, body size, Content-Type (not for `DELETE`, which must have no body),
//! JSON syntax, trailing data, object shape, members in document order
//! (unknown, then duplicate), missing fields, `key`, `value`, then the query
//! string.

use serde_json::value::RawValue;

use crate::key::{AnswerKey, BadKey, MAX_KEY_BYTES};
use common::engine::request::{truncate_for_message, EventId, IdQueryError, JsonBodyError, JsonType};

/// Longest value, in bytes of UTF-8 once unescaped.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// Largest accepted body: a longest key and value with every character
/// written as a six-byte `\u00XX` escape, and room for the punctuation. The
/// command's edge must allow at least this much (`--max-body-bytes`).
pub const MAX_BODY_BYTES: usize = 6 * (MAX_VALUE_BYTES + MAX_KEY_BYTES) + 256;

/// Longest accepted query string, in bytes as received: the engine's.
pub const MAX_QUERY_BYTES: usize = common::engine::request::MAX_QUERY_BYTES;

/// The path every write goes to; `PUT` and `DELETE` add `/{key}`.
pub const ROUTE: &str = "/answers";

/// A value: any string of at most [`MAX_VALUE_BYTES`] bytes of UTF-8.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AnswerValue(String);

impl AnswerValue {
    /// `None` when longer than [`MAX_VALUE_BYTES`].
    pub fn new(value: String) -> Option<Self> {
        (value.len() <= MAX_VALUE_BYTES).then_some(AnswerValue(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// What a write asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Create,
    Update,
    Delete,
}

/// A valid write, before the command stamps it with its request and clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteRequest {
    pub op: Op,
    pub key: AnswerKey,
    /// `Some` for a create or update, `None` for a delete.
    pub value: Option<AnswerValue>,
    /// The client's id (`?id=`): a write of the key with an id decided before answers the first outcome again.
    pub id: Option<EventId>,
}

/// The fields of a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Key,
    Value,
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Field::Key => "key",
            Field::Value => "value",
        })
    }
}

/// Why a write was refused. The request's own faults are 400 and write
/// nothing; [`AnswerReject::Exists`] (409) and [`AnswerReject::NotFound`]
/// (404) are the processor's decisions: the command was in the log, and
/// changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerReject {
    #[error("`POST {ROUTE}` takes the key in the body, not in the path")]
    KeyInPath,
    #[error("`PUT` and `DELETE` need the key in the path: {ROUTE}/<key>")]
    MissingPathKey,
    #[error("the path must be {ROUTE} or {ROUTE}/<key> (the key percent-encoded as one segment)")]
    BadPath,
    /// The body's size, its `Content-Type`, or not one JSON object ([`JsonBodyError`]).
    #[error(transparent)]
    Json(#[from] JsonBodyError),
    #[error("`DELETE` takes no body")]
    BodyNotAllowed,
    #[error("missing field `{0}`")]
    MissingField(Field),
    #[error("unknown field `{0}`; the body takes {1}")]
    UnknownField(String, &'static str),
    #[error("field `{0}` given more than once")]
    DuplicateField(Field),
    #[error("`key` must be a string, got {0}")]
    KeyNotString(JsonType),
    #[error("`key`: {0}")]
    BadKey(BadKey),
    #[error("`value` must be a string, got {0}")]
    ValueNotString(JsonType),
    #[error("`value` is {0} bytes of UTF-8; the limit is 65536")]
    ValueTooLong(usize),
    /// The query string ([`common::engine::request::parse_id_query`]).
    #[error(transparent)]
    Query(#[from] IdQueryError),
    #[error("the key `{0}` exists")]
    Exists(String),
    #[error("no answer for the key `{0}` (never created, or deleted)")]
    NotFound(String),
}

impl AnswerReject {
    /// A short, fixed label for metrics (`reason="bad_value"`).
    pub fn label(&self) -> &'static str {
        use AnswerReject::*;
        match self {
            KeyInPath | MissingPathKey | BadPath => "bad_path",
            BodyNotAllowed => "bad_json",
            MissingField(_) | UnknownField(..) | DuplicateField(_) => "bad_fields",
            KeyNotString(_) | BadKey(_) => "bad_key",
            ValueNotString(_) | ValueTooLong(_) => "bad_value",
            Json(e) => e.label(),
            Query(e) => e.label(),
            Exists(_) => "exists",
            NotFound(_) => "not_found",
        }
    }

    /// True for the processor's refusals (409, 404), false for the request's own faults (400).
    pub fn is_decided(&self) -> bool {
        matches!(self, AnswerReject::Exists(_) | AnswerReject::NotFound(_))
    }
}

/// The key segment of a write's path: `None` for [`ROUTE`] itself,
/// `Some(segment)` (still percent-encoded) for `ROUTE/<segment>`.
///
/// # Errors
/// [`AnswerReject::BadPath`] for any other path (more segments, an empty one).
pub fn path_segment(path: &str) -> Result<Option<&str>, AnswerReject> {
    match path.strip_prefix(ROUTE) {
        Some("") => Ok(None),
        Some(rest) => match rest.strip_prefix('/') {
            Some(segment) if !segment.is_empty() && !segment.contains('/') => Ok(Some(segment)),
            _ => Err(AnswerReject::BadPath),
        },
        None => Err(AnswerReject::BadPath),
    }
}

/// `POST /answers`: the path, the Content-Type header value, the raw query string and the body.
///
/// # Errors
/// The first problem found, in the order of the module documentation.
pub fn parse_create(
    path: &str,
    content_type: Option<&str>,
    query: Option<&str>,
    body: &[u8],
) -> Result<WriteRequest, AnswerReject> {
    if path_segment(path)?.is_some() {
        return Err(AnswerReject::KeyInPath);
    }
    check_content_type_and_size(content_type, body)?;
    let (key, value) = parse_body(body, BodyShape::KeyAndValue)?;
    let key = key.expect("a create body has a key");
    let id = parse_query(query)?;
    Ok(WriteRequest { op: Op::Create, key, value: Some(value), id })
}

/// `PUT /answers/{key}`.
///
/// # Errors
/// The first problem found, in the order of the module documentation.
pub fn parse_update(
    path: &str,
    content_type: Option<&str>,
    query: Option<&str>,
    body: &[u8],
) -> Result<WriteRequest, AnswerReject> {
    let key = path_key(path)?;
    check_content_type_and_size(content_type, body)?;
    let (_, value) = parse_body(body, BodyShape::ValueOnly)?;
    let id = parse_query(query)?;
    Ok(WriteRequest { op: Op::Update, key, value: Some(value), id })
}

/// `DELETE /answers/{key}`: no body (and so no Content-Type check).
///
/// # Errors
/// The first problem found, in the order of the module documentation.
pub fn parse_delete(path: &str, query: Option<&str>, body: &[u8]) -> Result<WriteRequest, AnswerReject> {
    let key = path_key(path)?;
    if !body.is_empty() {
        return Err(AnswerReject::BodyNotAllowed);
    }
    let id = parse_query(query)?;
    Ok(WriteRequest { op: Op::Delete, key, value: None, id })
}

fn path_key(path: &str) -> Result<AnswerKey, AnswerReject> {
    let segment = path_segment(path)?.ok_or(AnswerReject::MissingPathKey)?;
    AnswerKey::from_path_segment(segment).map_err(AnswerReject::BadKey)
}

fn check_content_type_and_size(content_type: Option<&str>, body: &[u8]) -> Result<(), AnswerReject> {
    common::engine::request::check_json_head(content_type, body.len(), MAX_BODY_BYTES).map_err(AnswerReject::Json)
}

/// Which fields a body holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyShape {
    /// `POST`: `{"key", "value"}`.
    KeyAndValue,
    /// `PUT`: `{"value"}` (the key is in the path).
    ValueOnly,
}

impl BodyShape {
    fn fields(self) -> &'static str {
        match self {
            BodyShape::KeyAndValue => "`key` and `value`",
            BodyShape::ValueOnly => "only `value`",
        }
    }
}

/// The body's key (for [`BodyShape::KeyAndValue`]) and value.
fn parse_body(body: &[u8], shape: BodyShape) -> Result<(Option<AnswerKey>, AnswerValue), AnswerReject> {
    use AnswerReject::*;
    let members = common::engine::request::json_object_members(body).map_err(Json)?;
    let (mut key, mut value) = (None, None);
    for (name, raw) in members {
        let (field, slot) = match (name.as_str(), shape) {
            ("key", BodyShape::KeyAndValue) => (Field::Key, &mut key),
            ("value", _) => (Field::Value, &mut value),
            _ => return Err(UnknownField(truncate_for_message(&name), shape.fields())),
        };
        if slot.replace(raw).is_some() {
            return Err(DuplicateField(field));
        }
    }
    let key = match shape {
        BodyShape::KeyAndValue => Some(key.ok_or(MissingField(Field::Key))?),
        BodyShape::ValueOnly => None,
    };
    let value = value.ok_or(MissingField(Field::Value))?;
    let key = key.map(parse_key).transpose()?;
    Ok((key, parse_value(value)?))
}

/// A JSON string's text; a lone surrogate escape (`"\ud800"`) is not UTF-8: not JSON we accept.
fn string_of(raw: &RawValue) -> Result<String, AnswerReject> {
    serde_json::from_str(raw.get()).map_err(|_| AnswerReject::Json(JsonBodyError::NotJson))
}

fn parse_key(raw: &RawValue) -> Result<AnswerKey, AnswerReject> {
    match JsonType::of(raw) {
        JsonType::String => AnswerKey::parse(&string_of(raw)?).map_err(AnswerReject::BadKey),
        other => Err(AnswerReject::KeyNotString(other)),
    }
}

fn parse_value(raw: &RawValue) -> Result<AnswerValue, AnswerReject> {
    match JsonType::of(raw) {
        JsonType::String => {
            let text = string_of(raw)?;
            let len = text.len();
            AnswerValue::new(text).ok_or(AnswerReject::ValueTooLong(len))
        }
        other => Err(AnswerReject::ValueNotString(other)),
    }
}

/// The query string of a write: nothing, or `id=<id>` with the engine's id
/// rules ([`EventId::parse`]) and strict percent-decoding, as for increments.
///
/// # Errors
/// [`AnswerReject::Query`].
pub fn parse_query(query: Option<&str>) -> Result<Option<EventId>, AnswerReject> {
    common::engine::request::parse_id_query(query).map_err(AnswerReject::Query)
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::engine::request::BadEventId;
    use AnswerReject::*;

    const JSON: Option<&str> = Some("application/json");

    fn create(body: &str) -> Result<WriteRequest, AnswerReject> {
        parse_create(ROUTE, JSON, None, body.as_bytes())
    }

    fn update(body: &str) -> Result<WriteRequest, AnswerReject> {
        parse_update("/answers/k", JSON, None, body.as_bytes())
    }

    fn kv(key: &str, value: &str) -> (String, String) {
        (key.to_owned(), value.to_owned())
    }

    fn got(r: WriteRequest) -> (String, String) {
        (r.key.into_string(), r.value.map(AnswerValue::into_string).unwrap_or_default())
    }

    #[test]
    fn a_create_is_exactly_a_key_and_a_string_value() {
        let cases = [
            (r#"{"key": "k", "value": "v"}"#, kv("k", "v")),
            (r#"{"value": "v", "key": "k"}"#, kv("k", "v")),
            (" \n{ \"key\" : \"k\" , \"value\" : \"\" } \r\n", kv("k", "")),
            (r#"{"key": "\u00e9", "value": "a\u0000b"}"#, kv("é", "a\u{0}b")),
            (r#"{"key": "a/b c", "value": "\n\t\"\\\u001f"}"#, kv("a/b c", "\n\t\"\\\u{1f}")),
            (r#"{"key": "k", "value": "\ud83d\ude00"}"#, kv("k", "😀")),
        ];
        for (body, want) in cases {
            assert_eq!(create(body).map(got), Ok(want), "{body}");
        }
        let r = parse_create(ROUTE, JSON, Some("id=retry-1"), br#"{"key":"k","value":"v"}"#).unwrap();
        assert_eq!((r.op, r.id.map(EventId::into_string).as_deref()), (Op::Create, Some("retry-1")));
    }

    #[test]
    fn an_update_takes_only_a_value_and_the_key_from_the_path() {
        let r = parse_update("/answers/a%2Fb", JSON, None, br#"{"value":"v2"}"#).unwrap();
        assert_eq!((r.op, got(r)), (Op::Update, kv("a/b", "v2")));
        assert_eq!(update(r#"{"key":"k","value":"v"}"#), Err(UnknownField("key".into(), "only `value`")));
        assert_eq!(update(r#"{}"#), Err(MissingField(Field::Value)));
        assert_eq!(update(r#"{"value":1}"#), Err(ValueNotString(JsonType::Integer)));
        assert_eq!(parse_update(ROUTE, JSON, None, b"{}"), Err(MissingPathKey));
        assert_eq!(parse_update("/answers/%C3", JSON, None, b"{}"), Err(BadKey(crate::key::BadKey::NotUtf8)));
    }

    #[test]
    fn a_delete_has_the_key_in_the_path_and_no_body() {
        let r = parse_delete("/answers/k%20x", Some("id=a"), b"").unwrap();
        assert_eq!((r.op, r.key.as_str(), r.value), (Op::Delete, "k x", None));
        assert_eq!(parse_delete("/answers/k", None, b"{}"), Err(BodyNotAllowed));
        assert_eq!(parse_delete(ROUTE, None, b""), Err(MissingPathKey));
        assert_eq!(parse_delete("/answers/%00", None, b""), Err(BadKey(crate::key::BadKey::Control)));
    }

    #[test]
    fn paths_are_the_route_or_one_segment_below_it() {
        assert_eq!(path_segment("/answers"), Ok(None));
        assert_eq!(path_segment("/answers/k"), Ok(Some("k")));
        for bad in ["/answers/", "/answers/a/b", "/answers//", "/answersx", "/other", "/answers/k/"] {
            assert_eq!(path_segment(bad), Err(BadPath), "{bad}");
        }
        assert_eq!(parse_create("/answers/k", JSON, None, br#"{"key":"k","value":"v"}"#), Err(KeyInPath));
    }

    /// At least 25 bad bodies, each refused with its reason on one line (the issue's acceptance list).
    #[test]
    fn bad_bodies_are_refused_with_their_reason() {
        let long_key = "k".repeat(257);
        let long_value = "v".repeat(MAX_VALUE_BYTES + 1);
        let cases: Vec<(String, AnswerReject)> = vec![
            ("".into(), Json(JsonBodyError::Empty)),
            ("  \n ".into(), Json(JsonBodyError::Empty)),
            ("{".into(), Json(JsonBodyError::NotJson)),
            ("nul".into(), Json(JsonBodyError::NotJson)),
            (r#"{"key": "k", "value": "v",}"#.into(), Json(JsonBodyError::NotJson)),
            (r#"{'key': 'k'}"#.into(), Json(JsonBodyError::NotJson)),
            (r#"{"key": "k", "value": "v"} x"#.into(), Json(JsonBodyError::TrailingData)),
            (r#"{"key": "k", "value": "v"}{}"#.into(), Json(JsonBodyError::TrailingData)),
            ("[]".into(), Json(JsonBodyError::NotAnObject(JsonType::Array))),
            ("\"kv\"".into(), Json(JsonBodyError::NotAnObject(JsonType::String))),
            ("12".into(), Json(JsonBodyError::NotAnObject(JsonType::Integer))),
            ("null".into(), Json(JsonBodyError::NotAnObject(JsonType::Null))),
            (r#"{}"#.into(), MissingField(Field::Key)),
            (r#"{"key": "k"}"#.into(), MissingField(Field::Value)),
            (r#"{"value": "v"}"#.into(), MissingField(Field::Key)),
            (r#"{"key": "k", "value": "v", "x": 1}"#.into(), UnknownField("x".into(), "`key` and `value`")),
            (r#"{"Key": "k", "value": "v"}"#.into(), UnknownField("Key".into(), "`key` and `value`")),
            (r#"{"key": "k", "key": "k", "value": "v"}"#.into(), DuplicateField(Field::Key)),
            (r#"{"key": "k", "value": "v", "value": "w"}"#.into(), DuplicateField(Field::Value)),
            (r#"{"key": 1, "value": "v"}"#.into(), KeyNotString(JsonType::Integer)),
            (r#"{"key": null, "value": "v"}"#.into(), KeyNotString(JsonType::Null)),
            (r#"{"key": ["k"], "value": "v"}"#.into(), KeyNotString(JsonType::Array)),
            (r#"{"key": "", "value": "v"}"#.into(), BadKey(crate::key::BadKey::Empty)),
            (r#"{"key": "a\u0000", "value": "v"}"#.into(), BadKey(crate::key::BadKey::Control)),
            (r#"{"key": "a\n", "value": "v"}"#.into(), BadKey(crate::key::BadKey::Control)),
            (r#"{"key": "\u0085", "value": "v"}"#.into(), BadKey(crate::key::BadKey::Control)),
            (format!(r#"{{"key": "{long_key}", "value": "v"}}"#), BadKey(crate::key::BadKey::TooLong(257))),
            (r#"{"key": "k", "value": 5}"#.into(), ValueNotString(JsonType::Integer)),
            (r#"{"key": "k", "value": true}"#.into(), ValueNotString(JsonType::Bool)),
            (r#"{"key": "k", "value": null}"#.into(), ValueNotString(JsonType::Null)),
            (r#"{"key": "k", "value": {"a": 1}}"#.into(), ValueNotString(JsonType::Object)),
            (r#"{"key": "k", "value": "\ud800"}"#.into(), Json(JsonBodyError::NotJson)),
            (format!(r#"{{"key": "k", "value": "{long_value}"}}"#), ValueTooLong(MAX_VALUE_BYTES + 1)),
            // The first problem in the documented order wins.
            (r#"{"extra": 1, "key": 1}"#.into(), UnknownField("extra".into(), "`key` and `value`")),
            (r#"{"key": 1, "value": 1}"#.into(), KeyNotString(JsonType::Integer)),
        ];
        assert!(cases.len() >= 25);
        for (body, want) in &cases {
            assert_eq!(create(body).as_ref().err(), Some(want), "body {body}");
            assert!(!want.to_string().contains('\n'), "one line: {want}");
        }
        let big = vec![b' '; MAX_BODY_BYTES + 1];
        assert_eq!(parse_create(ROUTE, None, None, &big), Err(Json(JsonBodyError::TooLarge(MAX_BODY_BYTES))));
        // The longest value, every character escaped, still fits the body limit.
        let escaped =
            format!(r#"{{"key":"{}","value":"{}"}}"#, "\\u00e9".repeat(128), "\\u0000".repeat(MAX_VALUE_BYTES));
        assert!(escaped.len() <= MAX_BODY_BYTES);
        assert_eq!(create(&escaped).map(|r| r.value.unwrap().as_str().len()), Ok(MAX_VALUE_BYTES));
    }

    #[test]
    fn the_longest_value_counts_bytes_not_characters() {
        let at_limit = "é".repeat(MAX_VALUE_BYTES / 2);
        assert!(create(&format!(r#"{{"key":"k","value":"{at_limit}"}}"#)).is_ok());
        let over = format!("{at_limit}x");
        assert_eq!(create(&format!(r#"{{"key":"k","value":"{over}"}}"#)), Err(ValueTooLong(MAX_VALUE_BYTES + 1)));
    }

    #[test]
    fn the_query_carries_only_an_optional_id() {
        assert_eq!(parse_query(None), Ok(None));
        assert_eq!(parse_query(Some("id=a-B_9")).unwrap().map(EventId::into_string).as_deref(), Some("a-B_9"));
        // The engine's rules and reasons (common::engine::request's tests), carried as they are.
        let bad = parse_query(Some("id=a.b")).unwrap_err();
        assert_eq!(bad, Query(IdQueryError::BadId(BadEventId::Chars)));
        assert_eq!((bad.label(), bad.to_string()), ("bad_id", IdQueryError::BadId(BadEventId::Chars).to_string()));
        let body = br#"{"key":"k","value":"v"}"#;
        let unknown = parse_create(ROUTE, JSON, Some("x=1"), body);
        assert_eq!(unknown, Err(Query(IdQueryError::UnknownParameter("x".into()))));
        assert_eq!(unknown.unwrap_err().label(), "bad_query");
    }

    #[test]
    fn labels_are_a_small_fixed_set() {
        let all = [
            KeyInPath,
            MissingPathKey,
            BadPath,
            Json(JsonBodyError::TooLarge(1)),
            BodyNotAllowed,
            Json(JsonBodyError::MissingContentType),
            Json(JsonBodyError::WrongContentType("x".into())),
            Json(JsonBodyError::Empty),
            Json(JsonBodyError::NotJson),
            Json(JsonBodyError::TrailingData),
            Json(JsonBodyError::NotAnObject(JsonType::Null)),
            MissingField(Field::Key),
            UnknownField("x".into(), ""),
            DuplicateField(Field::Value),
            KeyNotString(JsonType::Bool),
            BadKey(crate::key::BadKey::Empty),
            ValueNotString(JsonType::Integer),
            ValueTooLong(1),
            Query(IdQueryError::DuplicateId),
            Query(IdQueryError::BadId(BadEventId::Empty)),
            Exists("k".into()),
            NotFound("k".into()),
        ];
        let mut labels: Vec<&str> = all.iter().map(AnswerReject::label).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), 11);
        assert!(labels.iter().all(|l| l.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
        assert_eq!(all.iter().filter(|r| r.is_decided()).count(), 2);
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(b in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = parse_create(ROUTE, JSON, None, &b);
            let _ = parse_update("/answers/k", JSON, None, &b);
        }

        #[test]
        fn any_value_round_trips_through_a_json_body(value in "\\PC{0,64}|[\\x00-\\x1f\\x7f-\\u{9f}]{0,16}") {
            let body = serde_json::json!({"key": "k", "value": value}).to_string();
            let r = create(&body).unwrap();
            proptest::prop_assert_eq!(r.value.unwrap().into_string(), value);
        }
    }
}
