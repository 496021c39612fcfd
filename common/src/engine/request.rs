//! Request rules every workload's HTTP edge shares: the client's event id
//! (deduplication is engine policy: the processor counts an id once while
//! its period is open), strict percent-decoding of query-string parts, the
//! query-string size limit, and how user input is quoted in messages.
//! Pure: no I/O. Each workload maps the errors into its own reject reasons.

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

/// What a JSON value is, for saying what was sent instead of a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonType {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

/// The whitespace JSON allows between tokens.
pub const JSON_WHITESPACE: [char; 4] = [' ', '\t', '\n', '\r'];

impl JsonType {
    /// The type of a syntactically valid JSON value, from its first character.
    pub fn of(raw: &serde_json::value::RawValue) -> JsonType {
        match raw.get().trim_start_matches(JSON_WHITESPACE).as_bytes().first() {
            Some(b'n') => JsonType::Null,
            Some(b't' | b'f') => JsonType::Bool,
            Some(b'"') => JsonType::String,
            Some(b'[') => JsonType::Array,
            Some(b'{') => JsonType::Object,
            _ => JsonType::Number,
        }
    }
}

impl std::fmt::Display for JsonType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JsonType::Null => "null",
            JsonType::Bool => "a boolean",
            JsonType::Number => "a number",
            JsonType::String => "a string",
            JsonType::Array => "an array",
            JsonType::Object => "an object",
        })
    }
}

/// Whether a `Content-Type` is JSON: `application/json` (any case),
/// optionally with parameters (`name=value`, separated by `;`, whitespace
/// around them ignored); a `charset` parameter must be `utf-8` (quoted or
/// not), as JSON is.
pub fn is_json_media_type(content_type: &str) -> bool {
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
pub struct JsonMembers<'a>(pub Vec<(String, &'a serde_json::value::RawValue)>);

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
