//! Strict parsing of the two HTTP query strings.
//!
//! `POST /analytics?timestamp=..&user=..&click` (or `&impression`, or
//! `&event=click|impression`, and optionally `&id=..`) and
//! `GET /analytics?timestamp=..`. Anything
//! unexpected (duplicate or unknown parameters, malformed percent-encoding,
//! fractional or signed numbers) is refused with a [`RejectReason`], so a
//! client bug never turns into a silently miscounted event.

use super::event::{EventId, EventKind, RejectReason, UserId};
use super::time::EpochMillis;
use common::engine::request::BadEncoding;

/// Longest accepted query string, in bytes as received (before decoding): the engine's.
pub use common::engine::request::{truncate_for_message, MAX_QUERY_BYTES};

/// A syntactically valid `POST /analytics` request, not yet checked against the horizon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostRequest {
    pub timestamp_ms: EpochMillis,
    pub user: UserId,
    pub kind: EventKind,
    /// The client's id for deduplication: the same (user, id) is counted at most once.
    pub id: Option<EventId>,
}

/// Parses the query string of `POST /analytics`.
///
/// # Errors
/// The first problem found, as a [`RejectReason`].
pub fn parse_post(query: Option<&str>) -> Result<PostRequest, RejectReason> {
    let mut timestamp = None;
    let mut user = None;
    let mut id = None;
    let mut kind: Option<EventKind> = None;
    let set_kind = |k: EventKind, kind: &mut Option<EventKind>| match kind {
        Some(_) => Err(RejectReason::ConflictingKinds),
        None => {
            *kind = Some(k);
            Ok(())
        }
    };
    let mut seen = Seen::default();
    for param in split_query(query)? {
        let Param { name, value } = param?;
        seen.once(&name)?;
        match name.as_str() {
            "timestamp" => timestamp = Some(value.unwrap_or_default()),
            "user" => user = Some(value.unwrap_or_default()),
            "id" => id = Some(EventId::parse(&value.unwrap_or_default())?),
            "click" | "impression" => {
                if value.as_deref().is_some_and(|v| !v.is_empty()) {
                    return Err(RejectReason::FlagWithValue(name));
                }
                let k = EventKind::from_name(&name).expect("matched a kind name");
                set_kind(k, &mut kind)?;
            }
            "event" => {
                let v = value.unwrap_or_default();
                let k = EventKind::from_name(&v).ok_or_else(|| RejectReason::UnknownKind(truncate_for_message(&v)))?;
                set_kind(k, &mut kind)?;
            }
            _ => return Err(RejectReason::UnknownParameter(truncate_for_message(&name))),
        }
    }
    let timestamp_ms = parse_timestamp(timestamp.as_deref())?;
    let user = UserId::parse(user.as_deref().ok_or(RejectReason::MissingUser)?)?;
    let kind = kind.ok_or(RejectReason::MissingKind)?;
    Ok(PostRequest { timestamp_ms, user, kind, id })
}

/// Parses the query string of `GET /analytics`: its only parameter is `timestamp`.
///
/// # Errors
/// The first problem found, as a [`RejectReason`].
pub fn parse_get(query: Option<&str>) -> Result<EpochMillis, RejectReason> {
    let mut timestamp = None;
    let mut seen = Seen::default();
    for param in split_query(query)? {
        let Param { name, value } = param?;
        seen.once(&name)?;
        match name.as_str() {
            "timestamp" => timestamp = Some(value.unwrap_or_default()),
            _ => return Err(RejectReason::UnknownParameter(truncate_for_message(&name))),
        }
    }
    parse_timestamp(timestamp.as_deref())
}

/// Parses a timestamp: ASCII digits only, no sign, no fraction, fits in `i64`.
fn parse_timestamp(raw: Option<&str>) -> Result<EpochMillis, RejectReason> {
    let raw = raw.ok_or(RejectReason::MissingTimestamp)?;
    if raw.is_empty() {
        return Err(RejectReason::EmptyTimestamp);
    }
    if let Some(rest) = raw.strip_prefix('-') {
        if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) {
            return Err(RejectReason::NegativeTimestamp);
        }
    }
    if !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RejectReason::BadTimestamp(truncate_for_message(raw)));
    }
    raw.parse::<i64>().map_err(|_| RejectReason::TimestampOverflow)
}

/// Names seen so far in a query string: each may appear once.
#[derive(Default)]
pub(super) struct Seen(Vec<String>);

impl Seen {
    pub(super) fn once(&mut self, name: &str) -> Result<(), RejectReason> {
        if self.0.iter().any(|n| n == name) {
            return Err(RejectReason::DuplicateParameter(truncate_for_message(name)));
        }
        self.0.push(name.to_owned());
        Ok(())
    }
}

/// One decoded `name[=value]` pair of a query string.
pub(super) struct Param {
    pub(super) name: String,
    /// `None` for a bare flag (`&click`), `Some("")` for `&click=`.
    pub(super) value: Option<String>,
}

/// The decoded parameters of a query string, refusing one that is too long.
pub(super) fn split_query(
    query: Option<&str>,
) -> Result<impl Iterator<Item = Result<Param, RejectReason>> + '_, RejectReason> {
    let query = query.unwrap_or("");
    if query.len() > MAX_QUERY_BYTES {
        return Err(RejectReason::QueryTooLong(MAX_QUERY_BYTES));
    }
    Ok(query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (name, value) = match pair.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (pair, None),
        };
        Ok(Param { name: decode(name)?, value: value.map(decode).transpose()? })
    }))
}

/// Strict `application/x-www-form-urlencoded` decoding: `+` is a space, `%XY`
/// needs two hex digits, and the result must be UTF-8 (the engine's rule,
/// [`common::engine::request::decode`], in this workload's words).
pub fn decode(raw: &str) -> Result<String, RejectReason> {
    common::engine::request::decode(raw).map_err(|e| match e {
        BadEncoding::Percent => RejectReason::BadPercentEncoding,
        BadEncoding::NotUtf8 => RejectReason::NotUtf8,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(q: &str) -> Result<PostRequest, RejectReason> {
        parse_post(Some(q))
    }

    #[test]
    fn accepts_all_documented_forms() {
        let a = post("timestamp=1000&user=alice&click").unwrap();
        assert_eq!((a.timestamp_ms, a.user.as_str(), a.kind), (1000, "alice", EventKind::Click));
        assert_eq!(post("user=bob&impression&timestamp=5").unwrap().kind, EventKind::Impression);
        assert_eq!(post("timestamp=5&user=bob&event=click").unwrap().kind, EventKind::Click);
        assert_eq!(post("timestamp=5&user=bob&event=impression").unwrap().kind, EventKind::Impression);
        assert_eq!(post("timestamp=5&user=bob&click=").unwrap().kind, EventKind::Click);
        assert_eq!(post("timestamp=5&user=a%20b+c&click").unwrap().user.as_str(), "a b c");
        assert_eq!(post("timestamp=5&user=%E5%90%8D&click").unwrap().user.as_str(), "名");
        assert_eq!(post("timestamp=5&user=bob&click").unwrap().id, None);
        let with_id = post("timestamp=5&user=bob&click&id=0b3c8f2e-7d41_X").unwrap();
        assert_eq!(with_id.id.map(EventId::into_string).as_deref(), Some("0b3c8f2e-7d41_X"));
    }

    #[test]
    fn refuses_bad_requests_with_a_reason() {
        use RejectReason::*;
        let cases: &[(&str, RejectReason)] = &[
            ("user=a&click", MissingTimestamp),
            ("timestamp=&user=a&click", EmptyTimestamp),
            ("timestamp=abc&user=a&click", BadTimestamp("abc".into())),
            ("timestamp=1.5&user=a&click", BadTimestamp("1.5".into())),
            ("timestamp=-5&user=a&click", NegativeTimestamp),
            ("timestamp=%2B5&user=a&click", BadTimestamp("+5".into())),
            ("timestamp=+5&user=a&click", BadTimestamp(" 5".into())),
            ("timestamp=0x10&user=a&click", BadTimestamp("0x10".into())),
            ("timestamp=1e3&user=a&click", BadTimestamp("1e3".into())),
            ("timestamp=99999999999999999999&user=a&click", TimestampOverflow),
            ("timestamp=1&click", MissingUser),
            ("timestamp=1&user=&click", EmptyUser),
            ("timestamp=1&user=a", MissingKind),
            ("timestamp=1&user=a&click&impression", ConflictingKinds),
            ("timestamp=1&user=a&click&event=click", ConflictingKinds),
            ("timestamp=1&user=a&event=view", UnknownKind("view".into())),
            ("timestamp=1&user=a&event=%0Aview", UnknownKind("?view".into())),
            ("timestamp=1&user=a&click=yes", FlagWithValue("click".into())),
            ("timestamp=1&timestamp=2&user=a&click", DuplicateParameter("timestamp".into())),
            ("timestamp=1&user=a&click&click", DuplicateParameter("click".into())),
            ("timestamp=1&user=a&click&foo=1", UnknownParameter("foo".into())),
            ("timestamp=1&user=a%2&click", BadPercentEncoding),
            ("timestamp=1&user=a%zz&click", BadPercentEncoding),
            ("timestamp=1&user=%ff&click", NotUtf8),
            ("timestamp=1&user=a%00&click", UserHasControlChars),
            ("timestamp=1&user=a&click&id=", EmptyEventId),
            ("timestamp=1&user=a&click&id", EmptyEventId),
            ("timestamp=1&user=a&click&id=a.b", BadEventId),
            ("timestamp=1&user=a&click&id=a%20b", BadEventId),
            ("timestamp=1&user=a&click&id=x&id=y", DuplicateParameter("id".into())),
        ];
        for (q, want) in cases {
            assert_eq!(post(q).as_ref().err(), Some(want), "query {q}");
        }
        assert_eq!(parse_post(None), Err(MissingTimestamp));
        let id = "i".repeat(129);
        assert_eq!(post(&format!("timestamp=1&user=a&click&id={id}")), Err(EventIdTooLong(129)));
        let long = format!("timestamp=1&user={}&click", "a".repeat(MAX_QUERY_BYTES));
        assert_eq!(post(&long), Err(QueryTooLong(MAX_QUERY_BYTES)));
    }

    #[test]
    fn get_takes_only_a_timestamp() {
        assert_eq!(parse_get(Some("timestamp=3600000")), Ok(3_600_000));
        assert_eq!(parse_get(None), Err(RejectReason::MissingTimestamp));
        assert_eq!(parse_get(Some("timestamp=x")), Err(RejectReason::BadTimestamp("x".into())));
        assert_eq!(parse_get(Some("timestamp=1&user=a")), Err(RejectReason::UnknownParameter("user".into())));
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(q in "\\PC{0,300}") {
            let _ = parse_post(Some(&q));
            let _ = parse_get(Some(&q));
        }

        #[test]
        fn any_valid_user_round_trips_through_percent_encoding(user in "[^\\p{Cc}]{1,64}", ts in 0i64..i64::MAX) {
            let enc: String = user.bytes().map(|b| format!("%{b:02X}")).collect();
            let req = post(&format!("timestamp={ts}&user={enc}&impression")).unwrap();
            proptest::prop_assert_eq!(req.user.as_str(), user.as_str());
            proptest::prop_assert_eq!(req.timestamp_ms, ts);
        }
    }
}
