//! Strict parsing of `POST /increment`: the Content-Type header, the query
//! string (only the optional `id`) and the JSON body.
//!
//! The body is exactly `{"key": "<UUID>", "value": <integer>}`: both fields,
//! nothing else, each once, `key` a hyphenated UUID in any case and `value`
//! an integer from 1 to 2^63−1 written without fraction or exponent.
//! Anything else is refused with an [`IncrementReject`], so a client bug never
//! turns into a silently miscounted sum.
//!
//! Why not `#[derive(Deserialize)]` with `deny_unknown_fields`: it does refuse
//! unknown and duplicate fields, but only with a `serde_json::Error` whose
//! message is the only way to tell the reasons apart, and serde_json hands an
//! integer beyond `u64` to the visitor as an `f64`, so "too large" and "a
//! float" would look alike. Instead the body is read once as JSON (any syntax
//! error is [`JsonBodyError::NotJson`]), its members are collected as raw
//! JSON text, and each rule is checked on that text with a typed reason.
//!
//! Checks run in a fixed order, and the first failure is the answer: body
//! size, Content-Type, JSON syntax, trailing data, object shape, members in
//! document order (unknown, then duplicate), missing `key`, missing `value`,
//! `key`, `value`, then the query string.

use serde_json::value::RawValue;

use super::event::{IncrementEvent, IncrementKey, IncrementValue};
use common::engine::request::{truncate_for_message, EventId, IdQueryError, JsonBodyError, JsonType, JSON_WHITESPACE};

/// Largest accepted body in bytes. The caller stops reading past it and
/// answers [`JsonBodyError::TooLarge`]; a valid body is under 100 bytes.
pub const MAX_BODY_BYTES: usize = 1024;

/// Longest accepted query string, in bytes as received: the engine's.
pub const MAX_QUERY_BYTES: usize = common::engine::request::MAX_QUERY_BYTES;

/// A valid `POST /increment`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncrementRequest {
    pub key: IncrementKey,
    pub value: IncrementValue,
    /// The client's id for deduplication (`?id=`): the same (key, id) is added at most once.
    pub id: Option<EventId>,
}

impl IncrementRequest {
    /// The event to append to the log, stamped with the accepting clock.
    pub fn into_event(self, accepted_at_ms: i64) -> IncrementEvent {
        IncrementEvent { key: self.key, value: self.value, accepted_at_ms, id: self.id.map(EventId::into_string) }
    }
}

/// The two fields of the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Key,
    Value,
}

impl Field {
    pub fn name(self) -> &'static str {
        match self {
            Field::Key => "key",
            Field::Value => "value",
        }
    }
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why `POST /increment` was refused. Always the caller's fault (HTTP 400):
/// nothing was written to the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IncrementReject {
    /// The body's size, its `Content-Type`, or not one JSON object ([`JsonBodyError`]).
    #[error(transparent)]
    Json(#[from] JsonBodyError),
    #[error("missing field `{0}`")]
    MissingField(Field),
    #[error("unknown field `{0}`; only `key` and `value` are allowed")]
    UnknownField(String),
    #[error("field `{0}` given more than once")]
    DuplicateField(Field),
    #[error("`key` must be a string, got {0}")]
    KeyNotString(JsonType),
    #[error("`key` must be a UUID in the form 8-4-4-4-12 hex digits")]
    KeyNotUuid,
    #[error("`value` must be an integer, got {0}")]
    ValueNotInteger(JsonType),
    #[error("`value` must be at least 1")]
    ValueBelowOne,
    #[error("`value` must be at most 9223372036854775807 (2^63-1)")]
    ValueTooLarge,
    /// The query string ([`common::engine::request::parse_id_query`]).
    #[error(transparent)]
    Query(#[from] IdQueryError),
}

impl IncrementReject {
    /// A short, fixed label for metrics (`reason="bad_value"`).
    pub fn label(&self) -> &'static str {
        use IncrementReject::*;
        match self {
            MissingField(_) | UnknownField(_) | DuplicateField(_) => "bad_fields",
            KeyNotString(_) | KeyNotUuid => "bad_key",
            ValueNotInteger(_) | ValueBelowOne | ValueTooLarge => "bad_value",
            Json(e) => e.label(),
            Query(e) => e.label(),
        }
    }
}

/// Parses a whole `POST /increment`: the Content-Type header value (`None`
/// when absent or not visible ASCII), the raw query string and the body.
///
/// # Errors
/// The first problem found, in the order of the module documentation.
pub fn parse_post(
    content_type: Option<&str>,
    query: Option<&str>,
    body: &[u8],
) -> Result<IncrementRequest, IncrementReject> {
    common::engine::request::check_json_head(content_type, body.len(), MAX_BODY_BYTES)
        .map_err(IncrementReject::Json)?;
    let (key, value) = parse_body(body)?;
    let id = parse_query(query)?;
    Ok(IncrementRequest { key, value, id })
}

/// Parses the JSON body into its key and value.
///
/// # Errors
/// The first problem found, in the order of the module documentation.
pub fn parse_body(body: &[u8]) -> Result<(IncrementKey, IncrementValue), IncrementReject> {
    use IncrementReject::*;
    if body.len() > MAX_BODY_BYTES {
        return Err(Json(JsonBodyError::TooLarge(MAX_BODY_BYTES)));
    }
    let members = common::engine::request::json_object_members(body).map_err(Json)?;
    let (mut key, mut value) = (None, None);
    for (name, raw) in members {
        let (field, slot) = match name.as_str() {
            "key" => (Field::Key, &mut key),
            "value" => (Field::Value, &mut value),
            _ => return Err(UnknownField(truncate_for_message(&name))),
        };
        if slot.replace(raw).is_some() {
            return Err(DuplicateField(field));
        }
    }
    let key = key.ok_or(MissingField(Field::Key))?;
    let value = value.ok_or(MissingField(Field::Value))?;
    Ok((parse_key(key)?, parse_value(value)?))
}

fn parse_key(raw: &RawValue) -> Result<IncrementKey, IncrementReject> {
    match JsonType::of(raw) {
        JsonType::String => {
            let text: String =
                serde_json::from_str(raw.get()).map_err(|_| IncrementReject::Json(JsonBodyError::NotJson))?;
            IncrementKey::parse(&text)
        }
        other => Err(IncrementReject::KeyNotString(other)),
    }
}

/// From the number's exact text, so a huge integer is "too large", not a float.
fn parse_value(raw: &RawValue) -> Result<IncrementValue, IncrementReject> {
    match JsonType::of(raw) {
        JsonType::Integer => {
            let text = raw.get().trim_matches(JSON_WHITESPACE);
            match text.parse::<i64>() {
                Ok(v) => IncrementValue::new(v).ok_or(IncrementReject::ValueBelowOne),
                // A valid JSON integer that does not fit: too far one way or the other.
                Err(_) if text.starts_with('-') => Err(IncrementReject::ValueBelowOne),
                Err(_) => Err(IncrementReject::ValueTooLarge),
            }
        }
        other => Err(IncrementReject::ValueNotInteger(other)),
    }
}

/// Parses the query string of `POST /increment`: nothing, or `id=<id>` with
/// the engine's id rules ([`EventId::parse`]) and strict percent-decoding.
///
/// # Errors
/// [`IncrementReject::Query`].
pub fn parse_query(query: Option<&str>) -> Result<Option<EventId>, IncrementReject> {
    common::engine::request::parse_id_query(query).map_err(IncrementReject::Query)
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::engine::request::BadEventId;
    use IncrementReject::*;

    const KEY: &str = "0b3c8f2e-7d41-4c55-9a1e-5f6b7c8d9e0f";
    const JSON: Option<&str> = Some("application/json");

    fn body(b: &str) -> Result<(IncrementKey, IncrementValue), IncrementReject> {
        parse_body(b.as_bytes())
    }

    fn ok(key: &str, value: i64) -> (IncrementKey, IncrementValue) {
        (IncrementKey::parse(key).unwrap(), IncrementValue::new(value).unwrap())
    }

    #[test]
    fn accepts_exactly_a_key_and_a_value() {
        let upper = KEY.to_uppercase();
        let cases: &[(String, (IncrementKey, IncrementValue))] = &[
            (format!(r#"{{"key": "{KEY}", "value": 1}}"#), ok(KEY, 1)),
            (format!(r#"{{"value": 1, "key": "{KEY}"}}"#), ok(KEY, 1)),
            (format!(r#"{{"key":"{upper}","value":9223372036854775807}}"#), ok(KEY, i64::MAX)),
            (format!(" \n\t{{ \"key\" : \"{upper}\" , \"value\" : 42 }} \r\n"), ok(KEY, 42)),
            // JSON escapes mean the same text.
            (format!(r#"{{"k\u0065y": "{KEY}", "value": 7}}"#), ok(KEY, 7)),
            (r#"{"key": "0B3C8F2E-7D41-4C55-9A1E-5F6B7C8D9E0\u0046", "value": 7}"#.into(), ok(KEY, 7)),
        ];
        for (b, want) in cases {
            assert_eq!(body(b).as_ref(), Ok(want), "{b}");
        }
        let (key, value) = body(&format!(r#"{{"key": "{upper}", "value": 5}}"#)).unwrap();
        assert_eq!(key.to_string(), KEY, "stored in canonical lowercase");
        assert_eq!(value.get(), 5);
    }

    #[test]
    fn refuses_bad_bodies_with_a_reason() {
        let k = KEY;
        let cases: Vec<(String, IncrementReject)> = vec![
            ("".into(), Json(JsonBodyError::Empty)),
            ("  \n ".into(), Json(JsonBodyError::Empty)),
            ("not json".into(), Json(JsonBodyError::NotJson)),
            (r#"{"key": "#.into(), Json(JsonBodyError::NotJson)),
            (format!(r#"{{"key": "{k}", "value": 1,}}"#), Json(JsonBodyError::NotJson)),
            (format!(r#"{{'key': '{k}', 'value': 1}}"#), Json(JsonBodyError::NotJson)),
            (format!(r#"{{"key": "{k}", "value": 01}}"#), Json(JsonBodyError::NotJson)),
            (format!(r#"{{"key": "{k}", "value": +1}}"#), Json(JsonBodyError::NotJson)),
            (format!(r#"{{"key": "{k}", "value": NaN}}"#), Json(JsonBodyError::NotJson)),
            (format!("\u{feff}{{\"key\": \"{k}\", \"value\": 1}}"), Json(JsonBodyError::NotJson)),
            (format!(r#"{{"key": "{k}", "value": 1}} x"#), Json(JsonBodyError::TrailingData)),
            (format!(r#"{{"key": "{k}", "value": 1}}{{}}"#), Json(JsonBodyError::TrailingData)),
            (format!(r#"{{"key": "{k}", "value": 1}}}}"#), Json(JsonBodyError::TrailingData)),
            ("[]".into(), Json(JsonBodyError::NotAnObject(JsonType::Array))),
            ("1".into(), Json(JsonBodyError::NotAnObject(JsonType::Integer))),
            ("\"x\"".into(), Json(JsonBodyError::NotAnObject(JsonType::String))),
            ("null".into(), Json(JsonBodyError::NotAnObject(JsonType::Null))),
            ("{}".into(), MissingField(Field::Key)),
            (format!(r#"{{"key": "{k}"}}"#), MissingField(Field::Value)),
            (r#"{"value": 1}"#.into(), MissingField(Field::Key)),
            (format!(r#"{{"key": "{k}", "value": 1, "extra": 1}}"#), UnknownField("extra".into())),
            (format!(r#"{{"key": "{k}", "value": 1, "Key": "{k}"}}"#), UnknownField("Key".into())),
            (format!(r#"{{"key": "{k}", "value": 1, "id": "x"}}"#), UnknownField("id".into())),
            (format!(r#"{{"key": "{k}", "key": "{k}", "value": 1}}"#), DuplicateField(Field::Key)),
            (format!(r#"{{"key": "{k}", "value": 1, "value": 1}}"#), DuplicateField(Field::Value)),
            (format!(r#"{{"key": "{k}", "value": 1, "value": 2}}"#), DuplicateField(Field::Value)),
            (r#"{"key": 1, "value": 1}"#.into(), KeyNotString(JsonType::Integer)),
            (r#"{"key": null, "value": 1}"#.into(), KeyNotString(JsonType::Null)),
            (r#"{"key": ["a"], "value": 1}"#.into(), KeyNotString(JsonType::Array)),
            (r#"{"key": "", "value": 1}"#.into(), KeyNotUuid),
            (r#"{"key": "not-a-uuid", "value": 1}"#.into(), KeyNotUuid),
            (r#"{"key": "0b3c8f2e7d414c559a1e5f6b7c8d9e0f", "value": 1}"#.into(), KeyNotUuid),
            (r#"{"key": "{0b3c8f2e-7d41-4c55-9a1e-5f6b7c8d9e0f}", "value": 1}"#.into(), KeyNotUuid),
            (r#"{"key": "0b3c8f2e-7d41-4c55-9a1e-5f6b7c8d9e0z", "value": 1}"#.into(), KeyNotUuid),
            (r#"{"key": " 0b3c8f2e-7d41-4c55-9a1e-5f6b7c8d9e0f", "value": 1}"#.into(), KeyNotUuid),
            (format!(r#"{{"key": "{k}", "value": 0}}"#), ValueBelowOne),
            (format!(r#"{{"key": "{k}", "value": -0}}"#), ValueBelowOne),
            (format!(r#"{{"key": "{k}", "value": -1}}"#), ValueBelowOne),
            (format!(r#"{{"key": "{k}", "value": -99999999999999999999999}}"#), ValueBelowOne),
            (format!(r#"{{"key": "{k}", "value": 9223372036854775808}}"#), ValueTooLarge),
            (format!(r#"{{"key": "{k}", "value": 18446744073709551616}}"#), ValueTooLarge),
            (format!(r#"{{"key": "{k}", "value": 1{}}}"#, "0".repeat(100)), ValueTooLarge),
            (format!(r#"{{"key": "{k}", "value": 1.0}}"#), ValueNotInteger(JsonType::Float)),
            (format!(r#"{{"key": "{k}", "value": 1.5}}"#), ValueNotInteger(JsonType::Float)),
            (format!(r#"{{"key": "{k}", "value": 1e3}}"#), ValueNotInteger(JsonType::Float)),
            (format!(r#"{{"key": "{k}", "value": 1E3}}"#), ValueNotInteger(JsonType::Float)),
            (format!(r#"{{"key": "{k}", "value": "1"}}"#), ValueNotInteger(JsonType::String)),
            (format!(r#"{{"key": "{k}", "value": null}}"#), ValueNotInteger(JsonType::Null)),
            (format!(r#"{{"key": "{k}", "value": true}}"#), ValueNotInteger(JsonType::Bool)),
            (format!(r#"{{"key": "{k}", "value": [1]}}"#), ValueNotInteger(JsonType::Array)),
            (format!(r#"{{"key": "{k}", "value": {{"n": 1}}}}"#), ValueNotInteger(JsonType::Object)),
            // The first problem in the documented order wins.
            (r#"{"extra": 1, "key": 1, "value": -1}"#.into(), UnknownField("extra".into())),
            (r#"{"key": 1, "value": -1}"#.into(), KeyNotString(JsonType::Integer)),
            (format!(r#"{{"{}": 1}}"#, "n".repeat(100)), UnknownField(format!("{}…", "n".repeat(40)))),
        ];
        assert!(cases.len() >= 30);
        for (b, want) in &cases {
            assert_eq!(body(b).as_ref().err(), Some(want), "body {b}");
            assert!(!want.to_string().contains('\n'), "one line: {want}");
        }
        let big = format!(r#"{{"key": "{k}", "value": 1{}}}"#, " ".repeat(MAX_BODY_BYTES));
        assert_eq!(body(&big), Err(Json(JsonBodyError::TooLarge(MAX_BODY_BYTES))));
    }

    #[test]
    fn the_query_carries_only_an_optional_id() {
        assert_eq!(parse_query(None), Ok(None));
        assert_eq!(parse_query(Some("id=a-B_9")).unwrap().map(EventId::into_string).as_deref(), Some("a-B_9"));
        // The engine's rules and reasons (common::engine::request's tests), carried as they are.
        let bad = parse_query(Some("id=")).unwrap_err();
        assert_eq!(bad, Query(IdQueryError::BadId(BadEventId::Empty)));
        assert_eq!((bad.label(), bad.to_string().as_str()), ("bad_id", "`id` is empty"));
    }

    #[test]
    fn a_whole_request_is_checked_in_order() {
        let good = format!(r#"{{"key": "{}", "value": 3}}"#, KEY.to_uppercase());
        let req = parse_post(JSON, Some("id=abc"), good.as_bytes()).unwrap();
        assert_eq!((req.key.to_string().as_str(), req.value.get()), (KEY, 3));
        let event = req.into_event(1_000);
        assert_eq!((event.accepted_at_ms, event.id.as_deref()), (1_000, Some("abc")));
        assert_eq!(&event.partition_key(), KEY.as_bytes());
        assert_eq!(
            parse_post(Some("text/plain"), None, b"{}"),
            Err(Json(JsonBodyError::WrongContentType("text/plain".into())))
        );
        assert_eq!(parse_post(JSON, Some("x=1"), b"{}"), Err(MissingField(Field::Key)));
        assert_eq!(
            parse_post(JSON, Some("x=1"), good.as_bytes()),
            Err(Query(IdQueryError::UnknownParameter("x".into())))
        );
        let huge = vec![b' '; MAX_BODY_BYTES + 1];
        assert_eq!(parse_post(None, None, &huge), Err(Json(JsonBodyError::TooLarge(MAX_BODY_BYTES))));
    }

    #[test]
    fn labels_are_a_small_fixed_set() {
        let all = [
            Json(JsonBodyError::TooLarge(1)),
            Json(JsonBodyError::MissingContentType),
            Json(JsonBodyError::WrongContentType("x".into())),
            Json(JsonBodyError::Empty),
            Json(JsonBodyError::NotJson),
            Json(JsonBodyError::TrailingData),
            Json(JsonBodyError::NotAnObject(JsonType::Null)),
            MissingField(Field::Key),
            UnknownField("x".into()),
            DuplicateField(Field::Value),
            KeyNotString(JsonType::Bool),
            KeyNotUuid,
            ValueNotInteger(JsonType::Float),
            ValueBelowOne,
            ValueTooLarge,
            Query(IdQueryError::DuplicateId),
            Query(IdQueryError::BadId(BadEventId::Empty)),
        ];
        let mut labels: Vec<&str> = all.iter().map(IncrementReject::label).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), 8);
        assert!(labels.iter().all(|l| l.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
    }

    /// Why the parser is hand-made (see the module documentation): serde
    /// derive does refuse duplicates and extras, but says so only in text, and
    /// an integer past `u64` reaches it as a float.
    #[test]
    fn serde_derive_alone_would_not_tell_the_reasons_apart() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Derived {
            key: String,
            value: i64,
        }
        let dup = serde_json::from_str::<Derived>(r#"{"key": "a", "key": "b", "value": 1}"#).unwrap_err();
        let extra = serde_json::from_str::<Derived>(r#"{"key": "a", "value": 1, "x": 1}"#).unwrap_err();
        let float = serde_json::from_str::<Derived>(r#"{"key": "a", "value": 1.0}"#).unwrap_err();
        let huge = serde_json::from_str::<Derived>(r#"{"key": "a", "value": 18446744073709551616}"#).unwrap_err();
        for e in [&dup, &extra, &float, &huge] {
            assert_eq!(e.classify(), serde_json::error::Category::Data, "{e}");
        }
        assert!(huge.to_string().contains("floating point"), "{huge}");
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(b in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = parse_body(&b);
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(b in "\\PC{0,200}") {
            let _ = parse_body(b.as_bytes());
            let _ = parse_query(Some(&b));
            let _ = parse_post(Some(&b), None, b"{}");
        }

        #[test]
        fn every_valid_body_parses_to_its_canonical_key(bytes in proptest::array::uniform16(proptest::num::u8::ANY), upper in proptest::bool::ANY, value in 1i64..=i64::MAX) {
            let uuid = uuid::Uuid::from_bytes(bytes).hyphenated().to_string();
            let sent = if upper { uuid.to_uppercase() } else { uuid.clone() };
            let (key, v) = body(&format!(r#"{{"key":"{sent}","value":{value}}}"#)).unwrap();
            proptest::prop_assert_eq!(key.to_string(), uuid);
            proptest::prop_assert_eq!(v.get(), value);
        }
    }
}
