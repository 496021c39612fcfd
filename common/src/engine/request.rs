//! Request rules every workload's HTTP edge shares: the client's event id
//! (deduplication is engine policy: the processor counts an id once while
//! its period is open), strict percent-decoding of query-string parts, the
//! query-string size limit, how user input is quoted in messages, and a
//! JSON write's rules (a query of only `id`, the body's size and
//! `Content-Type`, one JSON object) with their one-line reasons and metrics
//! labels, which a JSON workload's reject carries as they are. Pure: no I/O.

/// Longest accepted query string, in bytes as received.
pub const MAX_QUERY_BYTES: usize = 2048;

/// Longest accepted client event id, in bytes (ASCII).
pub const MAX_EVENT_ID_BYTES: usize = 128;

/// A client event id that passed validation: 1 to [`MAX_EVENT_ID_BYTES`]
/// bytes of URL-safe ASCII (`[A-Za-z0-9_-]`), so it needs no escaping in a
/// query string, a log line or a key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventId(String);

/// Why a client event id was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadEventId {
    #[error("the event id is empty")]
    Empty,
    #[error("the event id is {0} bytes long")]
    TooLong(usize),
    #[error("the event id has characters other than A-Z a-z 0-9 _ -")]
    Chars,
}

impl EventId {
    /// Checks a decoded event id. The length is checked in bytes, before the characters.
    ///
    /// # Errors
    /// [`BadEventId`].
    pub fn parse(raw: &str) -> Result<Self, BadEventId> {
        if raw.is_empty() {
            return Err(BadEventId::Empty);
        }
        if raw.len() > MAX_EVENT_ID_BYTES {
            return Err(BadEventId::TooLong(raw.len()));
        }
        if !raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return Err(BadEventId::Chars);
        }
        Ok(EventId(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// Why a query-string part could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadEncoding {
    #[error("malformed percent-encoding")]
    Percent,
    #[error("not UTF-8 once decoded")]
    NotUtf8,
}

/// Decodes one name or value of a query string: `%XX` and `+` (a space),
/// strictly (a `%` not followed by two hex digits is an error), to UTF-8.
///
/// # Errors
/// [`BadEncoding`].
pub fn decode(raw: &str) -> Result<String, BadEncoding> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|b| (*b as char).to_digit(16));
                let lo = bytes.get(i + 2).and_then(|b| (*b as char).to_digit(16));
                match (hi, lo) {
                    (Some(hi), Some(lo)) => out.push((hi * 16 + lo) as u8),
                    _ => return Err(BadEncoding::Percent),
                }
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| BadEncoding::NotUtf8)
}

/// What a JSON value is, for saying what was sent instead of what was expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonType {
    Null,
    Bool,
    /// A number written without fraction or exponent.
    Integer,
    /// A number with a fraction or an exponent (`1.0`, `1e3`), even if its value is whole.
    Float,
    String,
    Array,
    Object,
}

/// The whitespace JSON allows between tokens.
pub const JSON_WHITESPACE: [char; 4] = [' ', '\t', '\n', '\r'];

impl JsonType {
    /// The type of a syntactically valid JSON value, from its first character
    /// (and for a number, whether it has a fraction or exponent).
    pub fn of(raw: &serde_json::value::RawValue) -> JsonType {
        let text = raw.get().trim_start_matches(JSON_WHITESPACE);
        match text.as_bytes().first() {
            Some(b'n') => JsonType::Null,
            Some(b't' | b'f') => JsonType::Bool,
            Some(b'"') => JsonType::String,
            Some(b'[') => JsonType::Array,
            Some(b'{') => JsonType::Object,
            _ if text.contains(['.', 'e', 'E']) => JsonType::Float,
            _ => JsonType::Integer,
        }
    }
}

impl std::fmt::Display for JsonType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JsonType::Null => "null",
            JsonType::Bool => "a boolean",
            JsonType::Integer => "an integer",
            JsonType::Float => "a number with a fraction or exponent",
            JsonType::String => "a string",
            JsonType::Array => "an array",
            JsonType::Object => "an object",
        })
    }
}

/// Why a JSON write was refused before any of its fields was read: its
/// size, its `Content-Type`, or a body that is not one JSON object. The
/// one-line reasons every JSON write answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonBodyError {
    #[error("body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("missing Content-Type; send `application/json`")]
    MissingContentType,
    #[error("Content-Type `{0}` is not `application/json`")]
    WrongContentType(String),
    #[error("body is empty; send a JSON object")]
    Empty,
    #[error("body is not valid JSON")]
    NotJson,
    #[error("data after the JSON object")]
    TrailingData,
    #[error("body must be a JSON object, got {0}")]
    NotAnObject(JsonType),
}

impl JsonBodyError {
    /// The metrics label of the refusal (`reason="bad_json"`).
    pub fn label(&self) -> &'static str {
        match self {
            JsonBodyError::TooLarge(_) => "body_too_large",
            JsonBodyError::MissingContentType | JsonBodyError::WrongContentType(_) => "bad_content_type",
            JsonBodyError::Empty | JsonBodyError::NotJson | JsonBodyError::TrailingData => "bad_json",
            JsonBodyError::NotAnObject(_) => "bad_fields",
        }
    }
}

/// A JSON write's head: a body of at most `max` bytes (checked first), then
/// a JSON `Content-Type`: `application/json`, any case, optionally with
/// well-formed parameters; a `charset`, if given, `utf-8`.
///
/// # Errors
/// [`JsonBodyError::TooLarge`], [`JsonBodyError::MissingContentType`] or [`JsonBodyError::WrongContentType`].
pub fn check_json_head(content_type: Option<&str>, body_len: usize, max: usize) -> Result<(), JsonBodyError> {
    if body_len > max {
        return Err(JsonBodyError::TooLarge(max));
    }
    let raw = content_type.ok_or(JsonBodyError::MissingContentType)?;
    if is_json_media_type(raw) {
        Ok(())
    } else {
        Err(JsonBodyError::WrongContentType(truncate_for_message(raw)))
    }
}

/// A body that must be one JSON object: its members in document order,
/// duplicates kept, values as raw JSON, for the workload
/// to check names, duplicates and types in its own words.
///
/// # Errors
/// [`JsonBodyError::Empty`] (nothing but whitespace), [`JsonBodyError::NotJson`],
/// [`JsonBodyError::TrailingData`] or [`JsonBodyError::NotAnObject`], in that order.
pub fn json_object_members(body: &[u8]) -> Result<Vec<(String, &serde_json::value::RawValue)>, JsonBodyError> {
    use serde::Deserialize;
    if body.iter().all(|b| JSON_WHITESPACE.contains(&char::from(*b))) {
        return Err(JsonBodyError::Empty);
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let whole = <&serde_json::value::RawValue>::deserialize(&mut de).map_err(|_| JsonBodyError::NotJson)?;
    de.end().map_err(|_| JsonBodyError::TrailingData)?;
    match JsonType::of(whole) {
        JsonType::Object => {}
        other => return Err(JsonBodyError::NotAnObject(other)),
    }
    // Valid JSON already, so this only fails on what serde_json checks late
    // (a lone surrogate in a member name): still not JSON we accept.
    let JsonMembers(members) = serde_json::from_str(whole.get()).map_err(|_| JsonBodyError::NotJson)?;
    Ok(members)
}

/// Whether a `Content-Type` is JSON: `application/json` (any case),
/// optionally with parameters (`name=value`, separated by `;`, whitespace
/// around them ignored); a `charset` parameter must be `utf-8` (quoted or
/// not), as JSON is.
fn is_json_media_type(content_type: &str) -> bool {
    let mut parts = content_type.split(';');
    let media = parts.next().unwrap_or("");
    let param_ok = |p: &str| {
        p.trim().split_once('=').is_some_and(|(name, value)| {
            let (name, value) = (name.trim(), value.trim());
            let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && b != b'"');
            let quoted = value.len() >= 2 && value.starts_with('"') && value.ends_with('"');
            let bare = value.trim_matches('"');
            token(name)
                && (token(value) || quoted)
                && (!name.eq_ignore_ascii_case("charset") || bare.eq_ignore_ascii_case("utf-8"))
        })
    };
    media.trim().eq_ignore_ascii_case("application/json") && parts.all(param_ok)
}

/// User input quoted in a message: control characters replaced, at most 40 characters.
pub fn truncate_for_message(s: &str) -> String {
    const MAX: usize = 40;
    let clean: String = s.chars().map(|c| if c.is_control() { '?' } else { c }).collect();
    if clean.chars().count() <= MAX {
        clean
    } else {
        clean.chars().take(MAX).chain("…".chars()).collect()
    }
}

/// Why the query string of a write that takes only `?id=` was refused, in
/// the one-line reason every JSON write answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdQueryError {
    /// Longer than [`MAX_QUERY_BYTES`].
    #[error("query string longer than {0} bytes")]
    TooLong(usize),
    /// A part that is not valid percent-encoding or UTF-8.
    #[error("malformed percent-encoding or non-UTF-8 in the query string")]
    BadEncoding,
    /// A parameter other than `id` (its name, quoted for a message).
    #[error("unknown query parameter `{0}`; only `id` is allowed")]
    UnknownParameter(String),
    /// `id` given twice.
    #[error("query parameter `id` given more than once")]
    DuplicateId,
    #[error("{}", id_reason(*.0))]
    BadId(BadEventId),
}

fn id_reason(bad: BadEventId) -> String {
    match bad {
        BadEventId::Empty => "`id` is empty".into(),
        BadEventId::TooLong(n) => format!("`id` is {n} bytes long; the limit is {MAX_EVENT_ID_BYTES}"),
        BadEventId::Chars => "`id` may contain only A-Z, a-z, 0-9, `_` and `-`".into(),
    }
}

impl IdQueryError {
    /// The metrics label of the refusal (`reason="bad_id"`): the id itself, or the rest of the query string.
    pub fn label(&self) -> &'static str {
        match self {
            IdQueryError::BadId(_) => "bad_id",
            _ => "bad_query",
        }
    }
}

/// The query string of a write that takes nothing but an optional client
/// event id: nothing, or `id=<id>` under the id rules ([`EventId::parse`]),
/// strictly percent-decoded ([`decode`]). Each workload's reject carries the error as it is.
///
/// # Errors
/// The first problem found, in [`IdQueryError`].
pub fn parse_id_query(query: Option<&str>) -> Result<Option<EventId>, IdQueryError> {
    let query = query.unwrap_or("");
    if query.len() > MAX_QUERY_BYTES {
        return Err(IdQueryError::TooLong(MAX_QUERY_BYTES));
    }
    let mut id = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode(name).map_err(|_| IdQueryError::BadEncoding)?;
        if name != "id" {
            return Err(IdQueryError::UnknownParameter(truncate_for_message(&name)));
        }
        if id.is_some() {
            return Err(IdQueryError::DuplicateId);
        }
        let value = decode(value).map_err(|_| IdQueryError::BadEncoding)?;
        id = Some(EventId::parse(&value).map_err(IdQueryError::BadId)?);
    }
    Ok(id)
}

/// The members of one JSON object in document order, duplicates kept and
/// values as raw JSON text: what a strict body parser reads before it
/// checks names, duplicates and types in its own words (serde's derive
/// would keep the last of two equal names, or refuse in its words).
#[derive(Debug)]
struct JsonMembers<'a>(Vec<(String, &'a serde_json::value::RawValue)>);

impl<'de> serde::Deserialize<'de> for JsonMembers<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> serde::de::Visitor<'de> for MembersVisitor {
            type Value = JsonMembers<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<JsonMembers<'de>, A::Error> {
                let mut members = Vec::with_capacity(2);
                while let Some(name) = map.next_key::<String>()? {
                    members.push((name, map.next_value::<&'de serde_json::value::RawValue>()?));
                }
                Ok(JsonMembers(members))
            }
        }
        d.deserialize_map(MembersVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_media_types_with_parameters_and_only_a_utf_8_charset() {
        for good in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=UTF-8",
            "application/json ; charset=\"utf-8\"",
            "application/json; version=2",
            "application/json; a=b; charset=utf-8",
        ] {
            assert!(is_json_media_type(good), "{good}");
        }
        for bad in [
            "",
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/json; charset=latin1",
            "application/json;",
            "application/json; x",
            "application/jsonx",
            "application/json-patch+json",
        ] {
            assert!(!is_json_media_type(bad), "{bad}");
        }
    }

    #[test]
    fn event_ids_are_checked() {
        assert_eq!(EventId::parse(""), Err(BadEventId::Empty));
        assert_eq!(EventId::parse(&"x".repeat(129)), Err(BadEventId::TooLong(129)));
        assert_eq!(EventId::parse(&"x".repeat(128)).map(EventId::into_string), Ok("x".repeat(128)));
        assert_eq!(EventId::parse("a").unwrap().as_str(), "a");
        assert!(EventId::parse("Az09_-").is_ok());
        assert!(EventId::parse("0b3c8f2e-7d41-4c55-9a1e-5f6b7c8d9e0f").is_ok());
        for bad in ["a b", "a.b", "a/b", "a+b", "a=b", "a%20", "é", "a\u{0}", "a\n"] {
            assert_eq!(EventId::parse(bad), Err(BadEventId::Chars), "{bad:?}");
        }
        // The length is checked in bytes, before the characters.
        assert_eq!(EventId::parse(&"é".repeat(65)), Err(BadEventId::TooLong(130)));
    }

    #[test]
    fn a_json_write_is_checked_head_first_then_as_one_object() {
        use JsonBodyError::*;
        let json = Some("application/json");
        assert_eq!(check_json_head(json, 10, 10), Ok(()));
        // The size before the Content-Type: a client that sends too much is told so first.
        assert_eq!(check_json_head(None, 11, 10), Err(TooLarge(10)));
        assert_eq!(check_json_head(None, 1, 10), Err(MissingContentType));
        assert_eq!(check_json_head(Some("text/plain"), 1, 10), Err(WrongContentType("text/plain".into())));
        let members = json_object_members(br#" {"b": 1, "a": [2], "b": "x"} "#).unwrap();
        let members: Vec<(&str, &str)> = members.iter().map(|(n, v)| (n.as_str(), v.get())).collect();
        assert_eq!(members, [("b", "1"), ("a", "[2]"), ("b", "\"x\"")]);
        for (body, error, label) in [
            ("", Empty, "bad_json"),
            (" \n\t", Empty, "bad_json"),
            ("{", NotJson, "bad_json"),
            (r#"{"a": 1,}"#, NotJson, "bad_json"),
            (r#"{"\ud800": 1}"#, NotJson, "bad_json"),
            ("{} x", TrailingData, "bad_json"),
            ("[]", NotAnObject(JsonType::Array), "bad_fields"),
            ("1", NotAnObject(JsonType::Integer), "bad_fields"),
            ("1e3", NotAnObject(JsonType::Float), "bad_fields"),
            ("null", NotAnObject(JsonType::Null), "bad_fields"),
        ] {
            assert_eq!(json_object_members(body.as_bytes()).err(), Some(error.clone()), "{body}");
            assert_eq!(error.label(), label, "{body}");
            assert!(!error.to_string().contains('\n'));
        }
        assert_eq!(TooLarge(1).label(), "body_too_large");
        assert_eq!(MissingContentType.label(), "bad_content_type");
        assert_eq!(
            NotAnObject(JsonType::Float).to_string(),
            "body must be a JSON object, got a number with a fraction or exponent"
        );
    }

    #[test]
    fn the_id_query_carries_only_an_optional_id() {
        use IdQueryError::*;
        assert_eq!(parse_id_query(None), Ok(None));
        assert_eq!(parse_id_query(Some("")), Ok(None));
        assert_eq!(parse_id_query(Some("id=a-B_9")).unwrap().map(EventId::into_string).as_deref(), Some("a-B_9"));
        assert_eq!(parse_id_query(Some("id=%61")).unwrap().map(EventId::into_string).as_deref(), Some("a"));
        let long = format!("id={}", "a".repeat(MAX_QUERY_BYTES));
        let cases = [
            ("id=", BadId(BadEventId::Empty), "`id` is empty"),
            ("id", BadId(BadEventId::Empty), "`id` is empty"),
            ("id=a.b", BadId(BadEventId::Chars), "`id` may contain only A-Z, a-z, 0-9, `_` and `-`"),
            (
                &format!("id={}", "x".repeat(129)),
                BadId(BadEventId::TooLong(129)),
                "`id` is 129 bytes long; the limit is 128",
            ),
            ("id=a&id=b", DuplicateId, "query parameter `id` given more than once"),
            ("key=a", UnknownParameter("key".into()), "unknown query parameter `key`; only `id` is allowed"),
            ("id=%zz", BadEncoding, "malformed percent-encoding or non-UTF-8 in the query string"),
            ("id=%ff", BadEncoding, "malformed percent-encoding or non-UTF-8 in the query string"),
            (&long, TooLong(MAX_QUERY_BYTES), "query string longer than 2048 bytes"),
        ];
        for (query, error, reason) in cases {
            assert_eq!(parse_id_query(Some(query)).as_ref(), Err(&error), "{query}");
            assert_eq!(error.to_string(), reason);
            let label = if matches!(error, BadId(_)) { "bad_id" } else { "bad_query" };
            assert_eq!(error.label(), label, "{query}");
        }
    }

    #[test]
    fn decoding_is_strict() {
        assert_eq!(decode("a%20b+c").as_deref(), Ok("a b c"));
        assert_eq!(decode("%zz"), Err(BadEncoding::Percent));
        assert_eq!(decode("%2"), Err(BadEncoding::Percent));
        assert_eq!(decode("%ff"), Err(BadEncoding::NotUtf8));
    }
}
