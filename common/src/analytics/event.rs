//! The validated analytics event and every reason an event is refused.

use std::time::Duration;

use super::time::{EpochMillis, HourStart};

/// Longest accepted user id, in bytes of UTF-8. Longer ids are refused with 400.
pub const MAX_USER_ID_BYTES: usize = 256;

/// What happened: the two event kinds of the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Click,
    Impression,
}

impl EventKind {
    /// Parses the wire name used by the HTTP API (`click`, `impression`).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "click" => Some(EventKind::Click),
            "impression" => Some(EventKind::Impression),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            EventKind::Click => "click",
            EventKind::Impression => "impression",
        }
    }
}

/// A user id that passed validation: non-empty, at most [`MAX_USER_ID_BYTES`], no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserId(String);

impl UserId {
    /// Checks a decoded user id.
    ///
    /// # Errors
    /// [`RejectReason::EmptyUser`], [`RejectReason::UserTooLong`] or [`RejectReason::UserHasControlChars`].
    pub fn parse(raw: &str) -> Result<Self, RejectReason> {
        if raw.is_empty() {
            return Err(RejectReason::EmptyUser);
        }
        if raw.len() > MAX_USER_ID_BYTES {
            return Err(RejectReason::UserTooLong(raw.len()));
        }
        if raw.chars().any(char::is_control) {
            return Err(RejectReason::UserHasControlChars);
        }
        Ok(UserId(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The stable 64-bit hash the processor counts users by (XXH3-64, seed 0).
    ///
    /// Stable across versions and platforms: changing it would split every open
    /// hour's user set in two, so it is part of the data format.
    pub fn hash64(&self) -> u64 {
        hash_user(self.0.as_bytes())
    }
}

/// The hash of a user id's UTF-8 bytes; see [`UserId::hash64`].
pub fn hash_user(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// One accepted event, as it travels on the events topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClickEvent {
    /// Event time, chosen by the client.
    pub timestamp_ms: EpochMillis,
    pub user: UserId,
    pub kind: EventKind,
    /// When the command accepted it. Lateness is decided from this, never from
    /// a downstream clock, so a replay decides the same way.
    pub accepted_at_ms: EpochMillis,
}

impl ClickEvent {
    pub fn hour(&self) -> HourStart {
        HourStart::of(self.timestamp_ms)
    }
}

/// How far from the accepting clock an event time may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Horizon {
    /// Oldest accepted event: `accepted_at - past`.
    pub past: Duration,
    /// Newest accepted event: `accepted_at + future`.
    pub future: Duration,
}

impl Default for Horizon {
    fn default() -> Self {
        Horizon { past: Duration::from_secs(7 * 24 * 3600), future: Duration::from_secs(300) }
    }
}

impl Horizon {
    pub fn past_ms(&self) -> i64 {
        duration_ms(self.past)
    }

    pub fn future_ms(&self) -> i64 {
        duration_ms(self.future)
    }

    /// Accepts an event time as seen at `now_ms`, or says why not.
    ///
    /// # Errors
    /// [`RejectReason::TooOld`] or [`RejectReason::FromFuture`].
    pub fn check(&self, timestamp_ms: EpochMillis, now_ms: EpochMillis) -> Result<(), RejectReason> {
        let oldest = now_ms.saturating_sub(self.past_ms());
        let newest = now_ms.saturating_add(self.future_ms());
        if timestamp_ms < oldest {
            Err(RejectReason::TooOld { timestamp_ms, oldest_ms: oldest })
        } else if timestamp_ms > newest {
            Err(RejectReason::FromFuture { timestamp_ms, newest_ms: newest })
        } else {
            Ok(())
        }
    }
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Why a request was refused. Always the caller's fault: nothing was recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    #[error("missing parameter `timestamp` (milliseconds since the epoch)")]
    MissingTimestamp,
    #[error("parameter `timestamp` is empty")]
    EmptyTimestamp,
    #[error("timestamp must be a non-negative integer number of milliseconds, got `{0}`")]
    BadTimestamp(String),
    #[error("timestamp must not be negative")]
    NegativeTimestamp,
    #[error("timestamp is too large")]
    TimestampOverflow,
    #[error("missing parameter `user`")]
    MissingUser,
    #[error("parameter `user` is empty")]
    EmptyUser,
    #[error("user id is {0} bytes long; the limit is 256")]
    UserTooLong(usize),
    #[error("user id contains control characters")]
    UserHasControlChars,
    #[error("missing event kind: add `click` or `impression` (or `event=click|impression`)")]
    MissingKind,
    #[error("more than one event kind given; send one event per request")]
    ConflictingKinds,
    #[error("unknown event kind `{0}`; expected `click` or `impression`")]
    UnknownKind(String),
    #[error("flag `{0}` takes no value")]
    FlagWithValue(String),
    #[error("parameter `{0}` given more than once")]
    DuplicateParameter(String),
    #[error("unknown parameter `{0}`")]
    UnknownParameter(String),
    #[error("malformed percent-encoding in the query string")]
    BadPercentEncoding,
    #[error("query string is not valid UTF-8 after decoding")]
    NotUtf8,
    #[error("query string longer than {0} bytes")]
    QueryTooLong(usize),
    #[error("event time {timestamp_ms} is older than the accepted horizon (oldest accepted now: {oldest_ms})")]
    TooOld { timestamp_ms: i64, oldest_ms: i64 },
    #[error("event time {timestamp_ms} is too far in the future (newest accepted now: {newest_ms})")]
    FromFuture { timestamp_ms: i64, newest_ms: i64 },
}

impl RejectReason {
    /// A short, fixed label for metrics (`reason="too_old"`).
    pub fn label(&self) -> &'static str {
        use RejectReason::*;
        match self {
            MissingTimestamp | EmptyTimestamp | BadTimestamp(_) | NegativeTimestamp | TimestampOverflow => {
                "bad_timestamp"
            }
            MissingUser | EmptyUser | UserTooLong(_) | UserHasControlChars => "bad_user",
            MissingKind | ConflictingKinds | UnknownKind(_) | FlagWithValue(_) => "bad_kind",
            DuplicateParameter(_) | UnknownParameter(_) | BadPercentEncoding | NotUtf8 | QueryTooLong(_) => "bad_query",
            TooOld { .. } => "too_old",
            FromFuture { .. } => "from_future",
        }
    }

    /// True when the request was well-formed but its time lies outside the horizon.
    pub fn is_outside_horizon(&self) -> bool {
        matches!(self, RejectReason::TooOld { .. } | RejectReason::FromFuture { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn horizon_edges_are_inclusive() {
        let h = Horizon::default();
        assert!(h.check(NOW - h.past_ms(), NOW).is_ok());
        assert!(h.check(NOW + h.future_ms(), NOW).is_ok());
        assert!(matches!(h.check(NOW - h.past_ms() - 1, NOW), Err(RejectReason::TooOld { .. })));
        assert!(matches!(h.check(NOW + h.future_ms() + 1, NOW), Err(RejectReason::FromFuture { .. })));
    }

    #[test]
    fn user_ids_are_checked() {
        assert_eq!(UserId::parse(""), Err(RejectReason::EmptyUser));
        assert_eq!(UserId::parse(&"x".repeat(257)), Err(RejectReason::UserTooLong(257)));
        assert!(UserId::parse(&"x".repeat(256)).is_ok());
        assert_eq!(UserId::parse("a\u{0}b"), Err(RejectReason::UserHasControlChars));
        assert!(UserId::parse("名前 with spaces").is_ok());
    }

    #[test]
    fn user_hash_is_stable() {
        // Part of the data format: state in PostgreSQL is keyed by these hashes.
        assert_eq!(hash_user(b"alice"), hash_user(b"alice"));
        assert_ne!(hash_user(b"alice"), hash_user(b"bob"));
        assert_eq!(hash_user(b""), 0x2d06800538d394c2);
    }
}
