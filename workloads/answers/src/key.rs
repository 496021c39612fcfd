//! The answer key: what every write and read of the workload names, the
//! partition key of `answers.commands`, and the primary key of the read models.
//!
//! 1 to [`MAX_KEY_BYTES`] bytes of UTF-8 without control characters (C0,
//! DEL, C1: exactly Unicode's `Cc`, [`char::is_control`]). Keys are compared
//! byte for byte: no case folding or normalisation, so `a` and `A` (or two
//! spellings of `é`) are different keys.
//!
//! In a path a key is one segment, percent-encoded: [`AnswerKey::from_path_segment`]
//! decodes strictly (`%XX` only, `+` is a plus, the result must be UTF-8) and
//! [`AnswerKey::to_path_segment`] encodes everything but RFC 3986's unreserved
//! characters, so a key holding `/`, `?`, `%` or spaces round-trips.

use std::fmt;

/// Longest key, in bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 256;

/// A valid answer key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AnswerKey(String);

/// Why a key was refused: always the client's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadKey {
    #[error("the key is empty")]
    Empty,
    #[error("the key is {0} bytes long; the limit is 256")]
    TooLong(usize),
    #[error("the key contains a control character")]
    Control,
    #[error("the key's percent-encoding in the path is malformed")]
    Percent,
    #[error("the key in the path is not UTF-8 once percent-decoded")]
    NotUtf8,
}

impl AnswerKey {
    /// Checks a key as sent in a JSON body (already unescaped).
    ///
    /// # Errors
    /// [`BadKey::Empty`], [`BadKey::TooLong`] or [`BadKey::Control`].
    pub fn parse(raw: &str) -> Result<Self, BadKey> {
        if raw.is_empty() {
            return Err(BadKey::Empty);
        }
        if raw.len() > MAX_KEY_BYTES {
            return Err(BadKey::TooLong(raw.len()));
        }
        if raw.chars().any(char::is_control) {
            return Err(BadKey::Control);
        }
        Ok(AnswerKey(raw.to_owned()))
    }

    /// Decodes and checks one path segment (`/answers/{segment}`).
    ///
    /// Strict: a `%` must be followed by two hex digits, and `+` stays a
    /// plus (it means a space only in a query string).
    ///
    /// # Errors
    /// [`BadKey::Percent`], [`BadKey::NotUtf8`], or a reason of [`AnswerKey::parse`].
    pub fn from_path_segment(segment: &str) -> Result<Self, BadKey> {
        let bytes = segment.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                let hex = |at: usize| bytes.get(at).and_then(|b| char::from(*b).to_digit(16));
                match (hex(i + 1), hex(i + 2)) {
                    (Some(hi), Some(lo)) => out.push((hi * 16 + lo) as u8),
                    _ => return Err(BadKey::Percent),
                }
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        let text = String::from_utf8(out).map_err(|_| BadKey::NotUtf8)?;
        AnswerKey::parse(&text)
    }

    /// The key as one path segment: every byte but `A-Z a-z 0-9 - . _ ~` as `%XX`.
    pub fn to_path_segment(&self) -> String {
        let mut out = String::with_capacity(self.0.len());
        for b in self.0.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for AnswerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keys_are_one_to_256_bytes_without_control_characters() {
        for good in ["a", "A", "key with spaces", "é", "日本", "/slash?and%", "\u{A0}nbsp", "🙂"] {
            assert_eq!(AnswerKey::parse(good).map(AnswerKey::into_string).as_deref(), Ok(good));
        }
        assert_eq!(AnswerKey::parse(&"x".repeat(256)).map(|k| k.as_str().len()), Ok(256));
        assert_eq!(AnswerKey::parse(""), Err(BadKey::Empty));
        assert_eq!(AnswerKey::parse(&"x".repeat(257)), Err(BadKey::TooLong(257)));
        // 128 two-byte characters are 256 bytes; one more is too long.
        assert!(AnswerKey::parse(&"é".repeat(128)).is_ok());
        assert_eq!(AnswerKey::parse(&"é".repeat(129)), Err(BadKey::TooLong(258)));
        for bad in ["\u{0}", "a\nb", "\t", "\u{1F}", "\u{7F}", "\u{80}", "\u{9F}", "x\u{85}"] {
            assert_eq!(AnswerKey::parse(bad), Err(BadKey::Control), "{bad:?}");
        }
    }

    #[test]
    fn path_segments_decode_strictly() {
        let key = |s: &str| AnswerKey::from_path_segment(s).map(AnswerKey::into_string);
        assert_eq!(key("abc").as_deref(), Ok("abc"));
        assert_eq!(key("a%20b").as_deref(), Ok("a b"));
        assert_eq!(key("a+b").as_deref(), Ok("a+b"));
        assert_eq!(key("%2F%3f").as_deref(), Ok("/?"));
        assert_eq!(key("%C3%A9").as_deref(), Ok("é"));
        assert_eq!(key(""), Err(BadKey::Empty));
        assert_eq!(key("%"), Err(BadKey::Percent));
        assert_eq!(key("%2"), Err(BadKey::Percent));
        assert_eq!(key("%zz"), Err(BadKey::Percent));
        assert_eq!(key("%C3"), Err(BadKey::NotUtf8));
        assert_eq!(key("%00"), Err(BadKey::Control));
        assert_eq!(key("%7F"), Err(BadKey::Control));
    }

    #[test]
    fn a_segment_encodes_all_but_unreserved_characters() {
        let k = AnswerKey::parse("a b/c?d%é~._-").unwrap();
        assert_eq!(k.to_path_segment(), "a%20b%2Fc%3Fd%25%C3%A9~._-");
    }

    proptest! {
        #[test]
        fn every_key_round_trips_through_its_path_segment(s in "[^\\p{Cc}]{1,64}") {
            prop_assume!(s.len() <= MAX_KEY_BYTES);
            let key = AnswerKey::parse(&s).unwrap();
            let segment = key.to_path_segment();
            prop_assert!(segment.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b'?' && b != b'#'));
            prop_assert_eq!(AnswerKey::from_path_segment(&segment), Ok(key));
        }

        #[test]
        fn decoding_any_segment_never_panics(s in "\\PC{0,80}") {
            let _ = AnswerKey::from_path_segment(&s);
        }
    }
}
