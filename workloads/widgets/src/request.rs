//! Strict parsing of the writes, each with an optional `?id=`:
//!
//! | request                                                | body                                   | command       |
//! |--------------------------------------------------------|----------------------------------------|---------------|
//! | `POST /widgets`                                        | `{"serial", "name", "ports"}`          | create        |
//! | `DELETE /widgets/{serial}`                             | none                                   | delete        |
//! | `POST /widgets/{serial}/associations`                  | `{"with", "port"}`                     | associate     |
//! | `DELETE /widgets/{serial}/associations/{other}/{port}` | none                                   | dissociate    |
//!
//! A body is exactly the fields named, each once, each a JSON string, each
//! valid ([`crate::input`]); path segments are percent-decoded strictly (a
//! `%` needs two hex digits, `+` stays a plus) into UTF-8. Anything else is
//! a [`WidgetReject`] (400) whose message is one line and whose label is one
//! of a small fixed set, and nothing is written.
//!
//! Checks run in a fixed order, the first failure answering: the path and
//! its segments, body size, Content-Type (a `DELETE` must have no body),
//! JSON syntax, trailing data, object shape, members in document order
//! (unknown, then duplicate), missing fields, each field's type and value in
//! the table's order, then the query string.

use serde_json::value::RawValue;

use crate::input::{BadInput, Name, Port, Ports, Serial};
use crate::records::{Command, Status};
use common::engine::request::{truncate_for_message, EventId, IdQueryError, JsonBodyError, JsonType};
use hyper::Method;

/// The path every write goes to.
pub const ROUTE: &str = "/widgets";
/// The segment after a serial that names its associations.
pub const ASSOCIATIONS: &str = "associations";
/// Largest accepted body: a longest serial and name with every character
/// written as a six-byte `\u00XX` escape, and room for the punctuation.
pub const MAX_BODY_BYTES: usize = 6 * (crate::input::MAX_SERIAL_BYTES + crate::input::MAX_NAME_BYTES) + 256;

/// A valid write, before the command stamps it with its request and clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteRequest {
    pub command: Command,
    /// The client's id (`?id=`): a command of the serial with an id decided before answers the first outcome again.
    pub id: Option<EventId>,
}

/// Why a write was refused. The request's own faults are 400 and write
/// nothing; [`WidgetReject::Refused`] (404, 409) is the processor's
/// decision: the command was in the log, and changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WidgetReject {
    #[error("the path must be {ROUTE}, {ROUTE}/<serial>, {ROUTE}/<serial>/associations or {ROUTE}/<serial>/associations/<other>/<port> (serials percent-encoded as one segment)")]
    BadPath,
    #[error("`{0}` is not allowed on this path")]
    WrongMethod(&'static str),
    #[error("{0}: malformed percent-encoding or not UTF-8")]
    BadSegment(&'static str),
    /// The body's size, its `Content-Type`, or not one JSON object ([`JsonBodyError`]).
    #[error(transparent)]
    Json(#[from] JsonBodyError),
    #[error("`DELETE` takes no body")]
    BodyNotAllowed,
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    #[error("unknown field `{0}`; the body takes {1}")]
    UnknownField(String, &'static str),
    #[error("field `{0}` given more than once")]
    DuplicateField(&'static str),
    #[error("`{0}` must be a string, got {1}")]
    NotString(&'static str, JsonType),
    #[error("{0}")]
    BadInput(BadInput),
    #[error("`with`: {0}")]
    BadWith(BadInput),
    /// The query string ([`common::engine::request::parse_id_query`]).
    #[error(transparent)]
    Query(#[from] IdQueryError),
    /// The processor's refusal, in its words ([`crate::Reject`]).
    #[error("{1}")]
    Refused(Status, String),
}

impl WidgetReject {
    /// A short, fixed label for metrics (`reason="bad_ports"`).
    pub fn label(&self) -> &'static str {
        use WidgetReject::*;
        match self {
            BadPath | WrongMethod(_) | BadSegment(_) => "bad_path",
            BodyNotAllowed => "bad_json",
            MissingField(_) | UnknownField(..) | DuplicateField(_) | NotString(..) => "bad_fields",
            BadInput(_) | BadWith(_) => "bad_input",
            Json(e) => e.label(),
            Query(e) => e.label(),
            Refused(Status::NotFound, _) => "not_found",
            Refused(Status::Conflict, _) => "conflict",
        }
    }
}

/// Which write a path and method name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Create,
    Delete(Serial),
    Associate(Serial),
    Dissociate(Serial, Serial, Port),
}

/// Decodes one path segment strictly: `%XX` only (two hex digits), `+` stays a plus, UTF-8.
///
/// # Errors
/// `None` for a malformed escape or bytes that are not UTF-8.
pub fn decode_segment(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |at: usize| bytes.get(at).and_then(|b| char::from(*b).to_digit(16));
            let (hi, lo) = (hex(i + 1)?, hex(i + 2)?);
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A serial as one path segment: every byte but `A-Z a-z 0-9 - . _ ~` as `%XX`.
pub fn encode_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The serial of a path segment (`what` names it in the reason).
///
/// # Errors
/// [`WidgetReject::BadSegment`] or the serial's [`BadInput`].
pub fn serial_segment(segment: &str, what: &'static str) -> Result<Serial, WidgetReject> {
    let text = decode_segment(segment).ok_or(WidgetReject::BadSegment(what))?;
    Serial::parse(&text).map_err(|e| if what == "other" { WidgetReject::BadWith(e) } else { WidgetReject::BadInput(e) })
}

/// The one method a path below [`ROUTE`] takes, by its shape: `DELETE` for
/// `/{serial}` and `/{serial}/associations/{other}/{port}`, `POST` for
/// `/{serial}/associations`; `None` for any other path.
pub fn methods_below(path: &str) -> Option<&'static [Method]> {
    const POST: &[Method] = &[Method::POST];
    const DELETE: &[Method] = &[Method::DELETE];
    let segments: Vec<&str> = path.strip_prefix(ROUTE)?.strip_prefix('/')?.split('/').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return None;
    }
    match segments.as_slice() {
        [_] | [_, ASSOCIATIONS, _, _] => Some(DELETE),
        [_, ASSOCIATIONS] => Some(POST),
        _ => None,
    }
}

fn target(method: &Method, path: &str) -> Result<Target, WidgetReject> {
    let rest = path.strip_prefix(ROUTE).ok_or(WidgetReject::BadPath)?;
    let segments: Vec<&str> = match rest {
        "" => Vec::new(),
        _ => rest.strip_prefix('/').ok_or(WidgetReject::BadPath)?.split('/').collect(),
    };
    if segments.iter().any(|s| s.is_empty()) {
        return Err(WidgetReject::BadPath);
    }
    let wrong = || WidgetReject::WrongMethod(if *method == Method::POST { "POST" } else { "DELETE" });
    match (segments.as_slice(), method == Method::POST) {
        ([], true) => Ok(Target::Create),
        ([serial], false) => Ok(Target::Delete(serial_segment(serial, "serial")?)),
        ([serial, ASSOCIATIONS], true) => Ok(Target::Associate(serial_segment(serial, "serial")?)),
        ([serial, ASSOCIATIONS, other, port], false) => {
            let serial = serial_segment(serial, "serial")?;
            let other = serial_segment(other, "other")?;
            let port = decode_segment(port).ok_or(WidgetReject::BadSegment("port"))?;
            Ok(Target::Dissociate(serial, other, Port::parse(&port).map_err(WidgetReject::BadInput)?))
        }
        ([] | [_] | [_, ASSOCIATIONS] | [_, ASSOCIATIONS, _, _], _) => Err(wrong()),
        _ => Err(WidgetReject::BadPath),
    }
}

/// One write: the method (`POST` or `DELETE`), the path, the Content-Type header value, the raw query string and the body.
///
/// # Errors
/// The first problem found, in the order of the module documentation.
pub fn parse(
    method: &Method,
    path: &str,
    content_type: Option<&str>,
    query: Option<&str>,
    body: &[u8],
) -> Result<WriteRequest, WidgetReject> {
    let command = match target(method, path)? {
        Target::Create => {
            check_body(content_type, body)?;
            let [serial, name, ports] = fields(body, ["serial", "name", "ports"], "`serial`, `name` and `ports`")?;
            Command::Create {
                serial: Serial::parse(&string(serial, "serial")?).map_err(WidgetReject::BadInput)?,
                name: Name::parse(&string(name, "name")?).map_err(WidgetReject::BadInput)?,
                ports: Ports::parse(&string(ports, "ports")?).map_err(WidgetReject::BadInput)?,
            }
        }
        Target::Associate(serial) => {
            check_body(content_type, body)?;
            let [with, port] = fields(body, ["with", "port"], "`with` and `port`")?;
            Command::Associate {
                serial,
                with: Serial::parse(&string(with, "with")?).map_err(WidgetReject::BadWith)?,
                port: Port::parse(&string(port, "port")?).map_err(WidgetReject::BadInput)?,
            }
        }
        Target::Delete(serial) => {
            no_body(body)?;
            Command::Delete { serial }
        }
        Target::Dissociate(serial, other, port) => {
            no_body(body)?;
            Command::Dissociate { serial, other, port }
        }
    };
    Ok(WriteRequest { command, id: parse_query(query)? })
}

fn no_body(body: &[u8]) -> Result<(), WidgetReject> {
    if body.is_empty() {
        Ok(())
    } else {
        Err(WidgetReject::BodyNotAllowed)
    }
}

fn check_body(content_type: Option<&str>, body: &[u8]) -> Result<(), WidgetReject> {
    common::engine::request::check_json_head(content_type, body.len(), MAX_BODY_BYTES).map_err(WidgetReject::Json)
}

/// The raw values of exactly the fields `names`, in that order.
fn fields<'b, const N: usize>(
    body: &'b [u8],
    names: [&'static str; N],
    takes: &'static str,
) -> Result<[&'b RawValue; N], WidgetReject> {
    use WidgetReject::*;
    let members = common::engine::request::json_object_members(body).map_err(Json)?;
    let mut slots: [Option<&RawValue>; N] = [None; N];
    for (name, raw) in members {
        let i =
            names.iter().position(|n| *n == name).ok_or_else(|| UnknownField(truncate_for_message(&name), takes))?;
        if slots[i].replace(raw).is_some() {
            return Err(DuplicateField(names[i]));
        }
    }
    if let Some(i) = slots.iter().position(Option::is_none) {
        return Err(MissingField(names[i]));
    }
    Ok(slots.map(|slot| slot.expect("every field is present")))
}

/// A field's text; a lone surrogate escape (`"\ud800"`) is not UTF-8: not JSON we accept.
fn string(raw: &RawValue, field: &'static str) -> Result<String, WidgetReject> {
    match JsonType::of(raw) {
        JsonType::String => serde_json::from_str(raw.get()).map_err(|_| WidgetReject::Json(JsonBodyError::NotJson)),
        other => Err(WidgetReject::NotString(field, other)),
    }
}

/// The query string of a write: nothing, or `id=<id>` with the engine's id rules.
///
/// # Errors
/// [`WidgetReject::Query`].
pub fn parse_query(query: Option<&str>) -> Result<Option<EventId>, WidgetReject> {
    common::engine::request::parse_id_query(query).map_err(WidgetReject::Query)
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::engine::request::BadEventId;
    use WidgetReject::*;

    const JSON: Option<&str> = Some("application/json");

    fn post(path: &str, body: &str) -> Result<Command, WidgetReject> {
        parse(&Method::POST, path, JSON, None, body.as_bytes()).map(|w| w.command)
    }

    fn delete(path: &str) -> Result<Command, WidgetReject> {
        parse(&Method::DELETE, path, None, None, b"").map(|w| w.command)
    }

    fn s(serial: &str) -> Serial {
        Serial::parse(serial).unwrap()
    }

    #[test]
    fn each_path_and_method_is_one_command() {
        assert_eq!(
            post("/widgets", r#"{"ports": "PRR", "serial": "a/b", "name": ""}"#),
            Ok(Command::Create {
                serial: s("a/b"),
                name: Name::parse("").unwrap(),
                ports: Ports::parse("PRR").unwrap()
            })
        );
        assert_eq!(delete("/widgets/a%2Fb"), Ok(Command::Delete { serial: s("a/b") }));
        assert_eq!(
            post("/widgets/a+b/associations", r#"{"with": "c d", "port": "Q"}"#),
            Ok(Command::Associate { serial: s("a+b"), with: s("c d"), port: Port::Q })
        );
        assert_eq!(
            delete("/widgets/x/associations/%C3%A9/R"),
            Ok(Command::Dissociate { serial: s("x"), other: s("é"), port: Port::R })
        );
    }

    #[test]
    fn bad_paths_and_segments_are_refused() {
        for bad in ["/widgetsx", "/widgets/", "/widgets//associations", "/widgets/a/other", "/widgets/a/associations/b"]
        {
            assert_eq!(post(bad, "{}").err().map(|e| e.label()), Some("bad_path"), "{bad}");
        }
        assert_eq!(delete("/widgets"), Err(WrongMethod("DELETE")));
        assert_eq!(post("/widgets/a", "{}"), Err(WrongMethod("POST")));
        assert_eq!(delete("/widgets/%zz"), Err(BadSegment("serial")));
        assert_eq!(delete("/widgets/%FF"), Err(BadSegment("serial")));
        assert_eq!(delete("/widgets/%0A"), Err(BadInput(crate::BadInput::SerialControl)));
        assert_eq!(delete("/widgets/a/associations/b/X"), Err(BadInput(crate::BadInput::BadPort)));
        assert_eq!(
            delete(&format!("/widgets/{}", "a".repeat(129))),
            Err(BadInput(crate::BadInput::SerialTooLong(129)))
        );
    }

    #[test]
    fn each_path_below_the_route_takes_one_method() {
        assert_eq!(methods_below("/widgets/a"), Some(&[Method::DELETE][..]));
        assert_eq!(methods_below("/widgets/a/associations"), Some(&[Method::POST][..]));
        assert_eq!(methods_below("/widgets/a/associations/b/P"), Some(&[Method::DELETE][..]));
        for other in ["/widgets", "/widgets/", "/widgets/a/x", "/widgets//associations", "/widgets/a/associations/b"] {
            assert_eq!(methods_below(other), None, "{other}");
        }
    }

    #[test]
    fn bodies_are_strict() {
        let create = |body: &str| post("/widgets", body);
        assert_eq!(create(r#"{"serial": "a", "name": "n"}"#), Err(MissingField("ports")));
        assert_eq!(create(r#"{"serial": "a", "name": "n", "ports": "P", "x": 1}"#).unwrap_err().label(), "bad_fields");
        assert_eq!(
            create(r#"{"serial": "a", "serial": "b", "name": "n", "ports": "P"}"#),
            Err(DuplicateField("serial"))
        );
        assert_eq!(create(r#"{"serial": 1, "name": "n", "ports": "P"}"#), Err(NotString("serial", JsonType::Integer)));
        assert_eq!(create(r#"{"serial": "a", "name": "n", "ports": "PX"}"#), Err(BadInput(crate::BadInput::BadPorts)));
        assert_eq!(
            create(r#"{"serial": "a", "name": "n", "ports": "PRRQ"}"#),
            Err(BadInput(crate::BadInput::TooManyPorts(4)))
        );
        assert_eq!(create(r#"{"serial": "", "name": "n", "ports": "P"}"#), Err(BadInput(crate::BadInput::EmptySerial)));
        assert_eq!(create("[]"), Err(Json(JsonBodyError::NotAnObject(JsonType::Array))));
        assert_eq!(create("{} x"), Err(Json(JsonBodyError::TrailingData)));
        assert_eq!(create(" "), Err(Json(JsonBodyError::Empty)));
        assert_eq!(create("{"), Err(Json(JsonBodyError::NotJson)));
        assert_eq!(post("/widgets/a/associations", r#"{"with": "b"}"#), Err(MissingField("port")));
        assert_eq!(
            post("/widgets/a/associations", r#"{"with": "b", "port": "PP"}"#),
            Err(BadInput(crate::BadInput::BadPort))
        );
        assert_eq!(
            post("/widgets/a/associations", r#"{"with": "", "port": "P"}"#),
            Err(BadWith(crate::BadInput::EmptySerial))
        );
        assert_eq!(parse(&Method::DELETE, "/widgets/a", None, None, b"{}"), Err(BodyNotAllowed));
        assert_eq!(parse(&Method::POST, "/widgets", None, None, b"{}"), Err(Json(JsonBodyError::MissingContentType)));
        assert_eq!(
            parse(&Method::POST, "/widgets", Some("text/plain"), None, b"{}").unwrap_err().label(),
            "bad_content_type"
        );
        let ok = parse(
            &Method::POST,
            "/widgets",
            Some("application/json; charset=UTF-8"),
            Some("id=r-1"),
            br#"{"serial":"a","name":"n","ports":"P"}"#,
        );
        assert_eq!(ok.unwrap().id.map(EventId::into_string).as_deref(), Some("r-1"));
        assert_eq!(parse(&Method::DELETE, "/widgets/a", None, Some("x=1"), b"").unwrap_err().label(), "bad_query");
        assert_eq!(
            parse(&Method::DELETE, "/widgets/a", None, Some("id=a.b"), b""),
            Err(Query(IdQueryError::BadId(BadEventId::Chars)))
        );
    }

    #[test]
    fn reasons_are_one_line() {
        let long = parse(&Method::POST, "/widgets", JSON, None, format!("{{\"{}\": 1}}", "\\n".repeat(100)).as_bytes());
        assert!(!long.unwrap_err().to_string().contains('\n'));
        assert!(!BadPath.to_string().contains('\n'));
    }

    #[test]
    fn segments_round_trip() {
        for text in ["a", "a/b c+é%", "SN-1_2.3~"] {
            assert_eq!(decode_segment(&encode_segment(text)).as_deref(), Some(text));
        }
    }
}
