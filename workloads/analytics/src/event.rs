//! The validated analytics event and every reason an event is refused.

pub use super::counts::EventKind;
use super::time::{EpochMillis, HourStart};
pub use common::engine::horizon::{Horizon, OutsideHorizon};
use common::engine::request::BadEventId;

/// Longest accepted user id, in bytes of UTF-8. Longer ids are refused with 400.
pub const MAX_USER_ID_BYTES: usize = 256;

/// The client's event id and its limit are the engine's ([`common::engine::request`]).
pub use common::engine::request::{EventId, MAX_EVENT_ID_BYTES};

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

/// The 64-bit key an event id is deduplicated by: the user and the id
/// together (ids are the client's, unique per user), XXH3-64 of the user's
/// bytes, a 0xFF separator (never in UTF-8, so no two pairs collide by
/// concatenation) and the id's bytes. Part of the data format, like [`hash_user`].
pub fn event_id_hash(user: &UserId, id: &str) -> u64 {
    let mut bytes = Vec::with_capacity(user.as_str().len() + 1 + id.len());
    bytes.extend_from_slice(user.as_str().as_bytes());
    bytes.push(0xFF);
    bytes.extend_from_slice(id.as_bytes());
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

/// The hash of a user id's UTF-8 bytes; see [`UserId::hash64`].
pub fn hash_user(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

impl From<BadEventId> for RejectReason {
    fn from(bad: BadEventId) -> Self {
        match bad {
            BadEventId::Empty => RejectReason::EmptyEventId,
            BadEventId::TooLong(n) => RejectReason::EventIdTooLong(n),
            BadEventId::Chars => RejectReason::BadEventId,
        }
    }
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
    /// The client's event id for deduplication (schema v2; `None` in v1
    /// records and when the client sent none). Checked by [`EventId::parse`].
    pub id: Option<String>,
}

impl ClickEvent {
    pub fn hour(&self) -> HourStart {
        HourStart::of(self.timestamp_ms)
    }
}

/// The analytics rules over the engine's [`Horizon`], in the workload's
/// own terms: hours and [`RejectReason`]s.
pub trait HourHorizon {
    /// True if an event of `hour` appended to the log at broker time
    /// `appended_ms` is counted (see [`Horizon::counted_at`]).
    fn counts_hour_at(&self, hour: HourStart, appended_ms: EpochMillis) -> bool;
}

impl HourHorizon for Horizon {
    fn counts_hour_at(&self, hour: HourStart, appended_ms: EpochMillis) -> bool {
        self.counted_at(hour.end_ms(), appended_ms)
    }
}

impl From<OutsideHorizon> for RejectReason {
    fn from(outside: OutsideHorizon) -> Self {
        match outside {
            OutsideHorizon::TooOld { timestamp_ms, oldest_ms } => RejectReason::TooOld { timestamp_ms, oldest_ms },
            OutsideHorizon::FromFuture { timestamp_ms, newest_ms } => {
                RejectReason::FromFuture { timestamp_ms, newest_ms }
            }
        }
    }
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
    #[error("event id is empty")]
    EmptyEventId,
    #[error("event id is {0} bytes long; the limit is 128")]
    EventIdTooLong(usize),
    #[error("event id may contain only A-Z, a-z, 0-9, `_` and `-`")]
    BadEventId,
    #[error("missing event kind: add {} (or `event=<kind>`)", EventKind::names_for_message())]
    MissingKind,
    #[error("more than one event kind given; send one event per request")]
    ConflictingKinds,
    #[error("unknown event kind `{0}`; expected {kinds}", kinds = EventKind::names_for_message())]
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
    #[error(
        "event time {timestamp_ms} reached the log at broker time {appended_ms}, after its hour closed; it is not counted"
    )]
    ClosedOnArrival { timestamp_ms: i64, appended_ms: i64 },
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
            EmptyEventId | EventIdTooLong(_) | BadEventId => "bad_id",
            MissingKind | ConflictingKinds | UnknownKind(_) | FlagWithValue(_) => "bad_kind",
            DuplicateParameter(_) | UnknownParameter(_) | BadPercentEncoding | NotUtf8 | QueryTooLong(_) => "bad_query",
            TooOld { .. } => "too_old",
            FromFuture { .. } => "from_future",
            ClosedOnArrival { .. } => "closed_on_arrival",
        }
    }

    /// True when the request was well-formed but its time lies outside the horizon.
    pub fn is_outside_horizon(&self) -> bool {
        matches!(
            self,
            RejectReason::TooOld { .. } | RejectReason::FromFuture { .. } | RejectReason::ClosedOnArrival { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_checked() {
        assert_eq!(UserId::parse(""), Err(RejectReason::EmptyUser));
        assert_eq!(UserId::parse(&"x".repeat(257)), Err(RejectReason::UserTooLong(257)));
        assert!(UserId::parse(&"x".repeat(256)).is_ok());
        assert_eq!(UserId::parse("a\u{0}b"), Err(RejectReason::UserHasControlChars));
        assert!(UserId::parse("名前 with spaces").is_ok());
    }

    #[test]
    fn event_id_refusals_are_bad_ids() {
        let reason = |raw: &str| EventId::parse(raw).map_err(RejectReason::from);
        assert_eq!(reason(""), Err(RejectReason::EmptyEventId));
        assert_eq!(reason(&"x".repeat(129)), Err(RejectReason::EventIdTooLong(129)));
        assert_eq!(reason("a.b"), Err(RejectReason::BadEventId));
        assert_eq!(RejectReason::BadEventId.label(), "bad_id");
        assert!(!RejectReason::EventIdTooLong(200).is_outside_horizon());
    }

    #[test]
    fn user_hash_is_stable() {
        // Part of the data format: state in PostgreSQL is keyed by these hashes.
        assert_eq!(hash_user(b"alice"), hash_user(b"alice"));
        assert_ne!(hash_user(b"alice"), hash_user(b"bob"));
        assert_eq!(hash_user(b""), 0x2d06800538d394c2);
    }
}
