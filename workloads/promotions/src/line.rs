//! One line of a promotions file, and the splitting of a streamed body into lines.
//!
//! A line is `id,price,expiration_date`, e.g.
//! `d018ef0b-dbd9-48f1-ac1a-eb4d90e57118,60.683466,2018-08-04 05:32:31 +0200 CEST`:
//!
//! - the id is a UUID in any case, kept lowercase (ids compare case-insensitively);
//! - the price is a non-negative decimal, kept in cents (rounded half away
//!   from zero, as PostgreSQL's `round(numeric, 2)`): an integer, so the
//!   answer's two decimals are exact, never a float's rounding;
//! - the expiration is a calendar date-time followed by its UTC offset and
//!   zone name; the answer is the date-time as written, without either.
//!
//! Pure: no I/O.

use std::fmt;

use serde::{Serialize, Serializer};

/// The longest line accepted, in bytes (a valid line is under 100): a body
/// without newlines cannot make the reader hold more than this.
pub const MAX_LINE_BYTES: usize = 1024;

/// Digits before the decimal point a price may have: its cents fit an `i64` with room to spare.
const MAX_PRICE_INTEGER_DIGITS: usize = 15;

/// A promotion's id: a UUID, shown lowercase and hyphenated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PromotionId(uuid::Uuid);

impl PromotionId {
    /// A UUID in its hyphenated form, in any case.
    ///
    /// # Errors
    /// When `text` is not a hyphenated UUID.
    pub fn parse(text: &str) -> Result<Self, LineReason> {
        // Only the 36-character hyphenated form: `{…}`, `urn:uuid:` and bare hex are not ids of a file.
        if text.len() != 36 {
            return Err(LineReason::BadId(text.to_owned()));
        }
        uuid::Uuid::try_parse(text).map(PromotionId).map_err(|_| LineReason::BadId(text.to_owned()))
    }

    /// The id as a UUID.
    pub fn uuid(&self) -> uuid::Uuid {
        self.0
    }
}

impl fmt::Display for PromotionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `Uuid`'s Display is lowercase and hyphenated.
        fmt::Display::fmt(&self.0, f)
    }
}

impl Serialize for PromotionId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A price in cents: what the answer shows, with two decimals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Price {
    cents: i64,
}

impl Price {
    /// A non-negative decimal (`60.683466`, `7`, `0.5`), rounded to cents half away from zero.
    ///
    /// # Errors
    /// When `text` is not digits with an optional fraction, or too large.
    pub fn parse(text: &str) -> Result<Self, LineReason> {
        let bad = || LineReason::BadPrice(text.to_owned());
        let (whole, fraction) = match text.split_once('.') {
            Some((w, f)) => (w, f),
            None => (text, ""),
        };
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty()
            || whole.len() > MAX_PRICE_INTEGER_DIGITS
            || !digits(whole)
            || !digits(fraction)
            || (text.contains('.') && fraction.is_empty())
        {
            return Err(bad());
        }
        let whole: i64 = whole.parse().map_err(|_| bad())?;
        let digit = |i: usize| fraction.as_bytes().get(i).map_or(0, |b| i64::from(b - b'0'));
        let mut cents = whole * 100 + digit(0) * 10 + digit(1);
        if digit(2) >= 5 {
            cents += 1;
        }
        Ok(Price { cents })
    }

    /// A price of `cents` (tests, storage).
    pub fn from_cents(cents: i64) -> Self {
        Price { cents }
    }

    pub fn cents(&self) -> i64 {
        self.cents
    }
}

/// Two decimals, always: `60.68`, `7.00`.
impl fmt::Display for Price {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.cents / 100, self.cents % 100)
    }
}

/// A JSON number with exactly two decimals (`60.68`): written from the
/// integer cents, so no float ever rounds it.
impl Serialize for Price {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let raw = serde_json::value::RawValue::from_string(self.to_string()).map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }
}

/// An expiration as the file writes it, without its offset and zone: `2018-08-04 05:32:31`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Expiration(String);

impl Expiration {
    /// `YYYY-MM-DD HH:MM:SS ±HHMM ZONE`, a real calendar date-time.
    ///
    /// # Errors
    /// When any of the four parts is missing or malformed.
    pub fn parse(text: &str) -> Result<Self, LineReason> {
        let bad = || LineReason::BadDate(text.to_owned());
        let mut parts = text.split(' ');
        let (Some(date), Some(time), Some(offset), Some(zone), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let written = format!("{date} {time}");
        // chrono accepts unpadded fields; the file's are fixed-width.
        if written.len() != 19 || chrono::NaiveDateTime::parse_from_str(&written, "%Y-%m-%d %H:%M:%S").is_err() {
            return Err(bad());
        }
        let offset_ok = offset.len() == 5
            && matches!(offset.as_bytes()[0], b'+' | b'-')
            && offset[1..].bytes().all(|b| b.is_ascii_digit())
            && offset[1..3] <= *"23"
            && offset[3..5] <= *"59";
        // Zone names are abbreviations (`CEST`, `UTC`) or, where none exists, the offset (`+03`).
        let zone_ok =
            (1..=8).contains(&zone.len()) && zone.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-');
        if !offset_ok || !zone_ok {
            return Err(bad());
        }
        Ok(Expiration(written))
    }

    /// The date-time as written (`2018-08-04 05:32:31`), as stored and answered.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// An expiration already checked (read back from storage): only its
    /// shape is checked again, digits and separators where they belong (a
    /// calendar parse per answer was a visible part of a lookup's CPU).
    ///
    /// # Errors
    /// When `written` is not shaped `YYYY-MM-DD HH:MM:SS`.
    pub fn from_stored(written: &str) -> Result<Self, LineReason> {
        const SHAPE: &[u8; 19] = b"dddd-dd-dd dd:dd:dd";
        let shaped = written.len() == 19
            && written.bytes().zip(SHAPE).all(|(b, s)| if *s == b'd' { b.is_ascii_digit() } else { b == *s });
        match shaped {
            true => Ok(Expiration(written.to_owned())),
            false => Err(LineReason::BadDate(written.to_owned())),
        }
    }

    /// An expiration as a record of the log carries it: shaped as stored
    /// ([`Self::from_stored`]) and a real calendar date-time, as the upload
    /// checked it.
    ///
    /// # Errors
    /// When `written` is not a date-time `YYYY-MM-DD HH:MM:SS`.
    pub fn from_record(written: &str) -> Result<Self, LineReason> {
        let expiration = Self::from_stored(written)?;
        match chrono::NaiveDateTime::parse_from_str(written, "%Y-%m-%d %H:%M:%S") {
            Ok(_) => Ok(expiration),
            Err(_) => Err(LineReason::BadDate(written.to_owned())),
        }
    }
}

/// One promotion, and the body of `GET /promotions/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Promotion {
    pub id: PromotionId,
    pub price: Price,
    pub expiration_date: Expiration,
}

impl Promotion {
    /// The `GET /promotions/{id}` body: `{"id":"…","price":60.68,"expiration_date":"2018-08-04 05:32:31"}`.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("ids, cents and checked text always serialize")
    }
}

/// Why a line is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineReason {
    #[error("expected 3 fields (id,price,expiration_date), found {0}")]
    FieldCount(usize),
    #[error("bad UUID `{0}`")]
    BadId(String),
    #[error("bad price `{0}`: expected a non-negative decimal such as 60.683466")]
    BadPrice(String),
    #[error("bad date `{0}`: expected YYYY-MM-DD HH:MM:SS ±HHMM ZONE")]
    BadDate(String),
    #[error("the line is longer than {MAX_LINE_BYTES} bytes")]
    TooLong,
    #[error("the line is not UTF-8")]
    NotUtf8,
    #[error("id {id} already appeared on line {first}")]
    DuplicateId { id: PromotionId, first: u64 },
}

impl LineReason {
    /// A short, fixed label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            LineReason::FieldCount(_) => "field_count",
            LineReason::BadId(_) => "bad_id",
            LineReason::BadPrice(_) => "bad_price",
            LineReason::BadDate(_) => "bad_date",
            LineReason::TooLong => "line_too_long",
            LineReason::NotUtf8 => "not_utf8",
            LineReason::DuplicateId { .. } => "duplicate_id",
        }
    }
}

/// A malformed line: its number (from 1) and why, in one line of text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct LineError {
    pub line: u64,
    pub reason: LineReason,
}

/// Shown in a reason at most this many characters of a field (a reason stays one short line).
const MAX_SHOWN: usize = 64;

fn shown(field: &str) -> String {
    let clean: String = field.chars().map(|c| if c.is_control() { '?' } else { c }).collect();
    match clean.char_indices().nth(MAX_SHOWN) {
        Some((cut, _)) => format!("{}…", &clean[..cut]),
        None => clean,
    }
}

/// Parses line number `line` (from 1; without its newline; a trailing `\r` is ignored).
///
/// # Errors
/// The line's number and the first problem found, fields in order.
pub fn parse_line(line: u64, text: &str) -> Result<Promotion, LineError> {
    let text = text.strip_suffix('\r').unwrap_or(text);
    let fail = |reason| LineError { line, reason };
    let fields: Vec<&str> = text.split(',').collect();
    let [id, price, expiration] = fields[..] else {
        return Err(fail(LineReason::FieldCount(fields.len())));
    };
    let id = PromotionId::parse(id).map_err(|_| fail(LineReason::BadId(shown(id))))?;
    let price = Price::parse(price).map_err(|_| fail(LineReason::BadPrice(shown(price))))?;
    let expiration_date = Expiration::parse(expiration).map_err(|_| fail(LineReason::BadDate(shown(expiration))))?;
    Ok(Promotion { id, price, expiration_date })
}

/// Splits a body arriving in chunks of any size into numbered lines, holding
/// at most one partial line ([`MAX_LINE_BYTES`]) between chunks.
///
/// A final line without a newline counts; an empty last line (the file ends
/// with its newline) does not; an empty line elsewhere is malformed.
#[derive(Debug, Default)]
pub struct Lines {
    partial: Vec<u8>,
    /// The number of the line being read (the last one completed, until the next starts).
    number: u64,
    /// Set once a line failed: everything after is ignored.
    failed: bool,
}

impl Lines {
    pub fn new() -> Self {
        Self::default()
    }

    /// Lines completed so far.
    pub fn count(&self) -> u64 {
        self.number
    }

    /// Feeds one chunk; calls `each` with every line it completes, in order.
    ///
    /// # Errors
    /// The first line that is too long, not UTF-8, or refused by `each`.
    pub fn push<F>(&mut self, mut chunk: &[u8], mut each: F) -> Result<(), LineError>
    where
        F: FnMut(u64, &str) -> Result<(), LineError>,
    {
        if self.failed {
            return Ok(());
        }
        while let Some(end) = chunk.iter().position(|&b| b == b'\n') {
            let (line, rest) = (&chunk[..end], &chunk[end + 1..]);
            chunk = rest;
            self.number += 1;
            let result = if self.partial.is_empty() {
                self.check(line.len()).and_then(|()| deliver(self.number, line, &mut each))
            } else {
                let mut joined = std::mem::take(&mut self.partial);
                self.check(joined.len() + line.len()).and_then(|()| {
                    joined.extend_from_slice(line);
                    deliver(self.number, &joined, &mut each)
                })
            };
            result.inspect_err(|_| self.failed = true)?;
        }
        if self.partial.len() + chunk.len() > MAX_LINE_BYTES {
            self.failed = true;
            return Err(LineError { line: self.number + 1, reason: LineReason::TooLong });
        }
        self.partial.extend_from_slice(chunk);
        Ok(())
    }

    /// Ends the body: delivers a last line without a newline, if there is one.
    ///
    /// # Errors
    /// As [`Lines::push`].
    pub fn finish<F>(&mut self, mut each: F) -> Result<(), LineError>
    where
        F: FnMut(u64, &str) -> Result<(), LineError>,
    {
        if self.failed || self.partial.is_empty() {
            return Ok(());
        }
        self.number += 1;
        let last = std::mem::take(&mut self.partial);
        deliver(self.number, &last, &mut each).inspect_err(|_| self.failed = true)
    }

    fn check(&self, len: usize) -> Result<(), LineError> {
        match len > MAX_LINE_BYTES {
            true => Err(LineError { line: self.number, reason: LineReason::TooLong }),
            false => Ok(()),
        }
    }
}

fn deliver<F>(number: u64, bytes: &[u8], each: &mut F) -> Result<(), LineError>
where
    F: FnMut(u64, &str) -> Result<(), LineError>,
{
    let text = std::str::from_utf8(bytes).map_err(|_| LineError { line: number, reason: LineReason::NotUtf8 })?;
    each(number, text)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const LINE: &str = "d018ef0b-dbd9-48f1-ac1a-eb4d90e57118,60.683466,2018-08-04 05:32:31 +0200 CEST";

    #[test]
    fn the_reference_line_answers_two_decimals_and_the_date_time_as_written() {
        let p = parse_line(1, LINE).expect("the reference line");
        assert_eq!(
            String::from_utf8(p.to_json()).unwrap(),
            r#"{"id":"d018ef0b-dbd9-48f1-ac1a-eb4d90e57118","price":60.68,"expiration_date":"2018-08-04 05:32:31"}"#
        );
        let generic: serde_json::Value = serde_json::from_slice(&p.to_json()).unwrap();
        assert!(generic["price"].is_number());
    }

    #[test]
    fn a_stored_expiration_is_checked_by_shape_and_a_records_also_by_calendar() {
        assert_eq!(Expiration::from_stored("2018-08-04 05:32:31").unwrap().as_str(), "2018-08-04 05:32:31");
        assert!(Expiration::from_stored("2018-08-04T05:32:31").is_err());
        assert!(Expiration::from_stored("2018-8-04 05:32:31").is_err());
        assert!(Expiration::from_record("2018-08-04 05:32:31").is_ok());
        assert!(Expiration::from_stored("2018-02-30 05:32:31").is_ok(), "read back: its shape only");
        assert!(Expiration::from_record("2018-02-30 05:32:31").is_err(), "from the log: a real date");
        assert!(Expiration::from_record("2018-8-04 05:32:31").is_err());
    }

    #[test]
    fn ids_are_kept_lowercase_whatever_their_case() {
        let upper = LINE.replacen("d018ef0b-dbd9-48f1-ac1a-eb4d90e57118", "D018EF0B-DBD9-48F1-AC1A-EB4D90E57118", 1);
        assert_eq!(parse_line(1, &upper).unwrap().id.to_string(), "d018ef0b-dbd9-48f1-ac1a-eb4d90e57118");
    }

    #[test]
    fn prices_round_to_cents_half_away_from_zero_exactly() {
        let cents = |s: &str| Price::parse(s).map(|p| p.cents());
        assert_eq!(cents("60.683466"), Ok(6068));
        assert_eq!(cents("60.685"), Ok(6069));
        assert_eq!(cents("60.6849999"), Ok(6068));
        assert_eq!(cents("0.995"), Ok(100));
        assert_eq!(cents("7"), Ok(700));
        assert_eq!(cents("0.5"), Ok(50));
        assert_eq!(Price::from_cents(700).to_string(), "7.00");
        assert_eq!(Price::from_cents(5).to_string(), "0.05");
        for bad in ["", "-1", "1.", ".5", "1e3", "1,5", " 1", "NaN", "1234567890123456"] {
            assert!(Price::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_malformed_line_names_its_number_and_its_first_problem() {
        let reason = |line: &str| parse_line(7, line).unwrap_err().to_string();
        assert_eq!(reason("a,b"), "line 7: expected 3 fields (id,price,expiration_date), found 2");
        assert_eq!(reason(&format!("{LINE},x")), "line 7: expected 3 fields (id,price,expiration_date), found 4");
        assert!(reason(&LINE.replacen("d018ef0b", "zz18ef0b", 1)).starts_with("line 7: bad UUID `zz18ef0b-"));
        assert!(reason(&LINE.replacen("60.683466", "60,68", 1)).contains("found 4"));
        assert!(reason(&LINE.replacen("60.683466", "sixty", 1)).starts_with("line 7: bad price `sixty`"));
        assert!(reason(&LINE.replacen("2018-08-04", "2018-02-30", 1)).starts_with("line 7: bad date"));
        assert!(reason(&LINE.replacen(" CEST", "", 1)).starts_with("line 7: bad date"));
        assert!(reason(&LINE.replacen("+0200", "0200", 1)).starts_with("line 7: bad date"));
        assert!(reason(&LINE.replacen("05:32:31", "5:32:31", 1)).starts_with("line 7: bad date"));
        assert!(reason("").contains("found 1"));
        assert!(!reason(&format!("{},1,x", "\u{7}".repeat(500))).contains('\u{7}'), "one clean line");
        assert!(reason(&format!("{},1,x", "a".repeat(500))).len() < 200, "a reason stays short");
    }

    #[test]
    fn a_zone_may_be_an_offset_and_a_line_may_end_in_cr() {
        assert!(parse_line(1, &LINE.replacen("+0200 CEST", "-0300 -03", 1)).is_ok());
        assert!(parse_line(1, &format!("{LINE}\r")).is_ok());
    }

    fn collect(chunks: &[&[u8]]) -> Result<Vec<(u64, String)>, LineError> {
        let mut lines = Lines::new();
        let mut out = Vec::new();
        let mut each = |n: u64, l: &str| {
            out.push((n, l.to_owned()));
            Ok(())
        };
        for c in chunks {
            lines.push(c, &mut each)?;
        }
        lines.finish(&mut each)?;
        Ok(out)
    }

    #[test]
    fn a_final_newline_ends_the_last_line_and_a_missing_one_does_not_lose_it() {
        let with = collect(&[b"a\nb\n"]).unwrap();
        let without = collect(&[b"a\nb"]).unwrap();
        assert_eq!(with, vec![(1, "a".into()), (2, "b".into())]);
        assert_eq!(with, without);
        assert_eq!(collect(&[b"a\n\nb"]).unwrap()[1], (2, String::new()), "an empty line is a line");
        assert!(collect(&[b""]).unwrap().is_empty());
    }

    #[test]
    fn a_line_without_end_is_refused_once_it_passes_the_limit() {
        let long = vec![b'x'; MAX_LINE_BYTES / 2 + 1];
        let err = collect(&[b"ok\n", &long, &long]).unwrap_err();
        assert_eq!(err, LineError { line: 2, reason: LineReason::TooLong });
        let err = collect(&[b"ok\n\xff\xfe\n"]).unwrap_err();
        assert_eq!(err, LineError { line: 2, reason: LineReason::NotUtf8 });
    }

    proptest! {
        /// However the body is cut into chunks, the same lines come out, numbered the same.
        #[test]
        fn any_chunking_gives_the_same_lines(
            lines in proptest::collection::vec("[a-z0-9,. ]{0,40}", 0..20),
            cuts in proptest::collection::vec(0usize..1000, 0..10),
            trailing in any::<bool>(),
        ) {
            let mut body = lines.join("\n");
            if trailing && !body.is_empty() {
                body.push('\n');
            }
            let bytes = body.as_bytes();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut from = 0;
            for c in cuts {
                chunks.push(&bytes[from..c]);
                from = c;
            }
            chunks.push(&bytes[from..]);
            prop_assert_eq!(collect(&chunks).unwrap(), collect(&[bytes]).unwrap());
        }

        /// Any price written with up to 6 decimals comes back as its cents, rounded half up, exactly.
        #[test]
        fn cents_are_the_decimal_rounded(whole in 0i64..1_000_000_000, micros in 0i64..1_000_000) {
            let price = Price::parse(&format!("{whole}.{micros:06}")).unwrap();
            let expected = (whole * 1_000_000 + micros + 5_000) / 10_000;
            prop_assert_eq!(price.cents(), expected);
            prop_assert_eq!(Price::parse(&price.to_string()).unwrap(), price);
        }

        /// A valid line survives any case of its id and answers it lowercase.
        #[test]
        fn any_uuid_in_any_case_parses_to_its_lowercase(bytes in any::<[u8; 16]>(), upper in any::<bool>()) {
            let id = uuid::Uuid::from_bytes(bytes).to_string();
            let written = if upper { id.to_uppercase() } else { id.clone() };
            let p = parse_line(1, &format!("{written},1.5,2020-01-01 00:00:00 +0000 UTC")).unwrap();
            prop_assert_eq!(p.id.to_string(), id);
        }
    }
}
