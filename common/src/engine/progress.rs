//! Read-your-writes: how far each events partition is reflected in the read
//! models, and the opaque token a client presents to wait for it.
//!
//! ```text
//! command ── POST answered with a ReadToken(events topic, partition, offset)
//! processor ─ every checkpoint: the aggregates, then one Progress record per
//!             aggregates partition (next_offset of the events partition), one transaction
//! materializer ─ Progress rows in PostgreSQL (same transaction as the batch's rows),
//!             then in Redis once the rows are there too, then a change notification
//! query ───── GET ..&after=<token>: answers once every aggregates partition's
//!             progress of that events partition is past the token's offset
//! ```
//!
//! Progress is per events partition, not per row, so an event that changed
//! nothing (a duplicate id, a late event skipped) is still "reflected" exactly
//! when the processor has read past it. It goes to *every* aggregates
//! partition because one events partition's aggregates are spread over them
//! by key: a reader that has applied the progress record of one aggregates
//! partition has applied everything before it in that partition, so once all
//! of them are past the offset, so is every aggregate reflecting the event.

use std::sync::LazyLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::engine::avro::{versions, Codec, DecodeError};

/// Every version of `engine.v1.Progress`, oldest first.
pub const PROGRESS_SCHEMA_VERSIONS: &[&str] = versions::PROGRESS_SCHEMA_VERSIONS;

/// The key prefix of progress records on an aggregates topic: readers route
/// them to the engine before a workload's decoding sees them.
pub const PROGRESS_KEY_PREFIX: &str = "progress:";

/// The name of the response header carrying a [`ReadToken`] on every 2xx `POST`.
pub const TOKEN_HEADER: &str = "analytics-token";

static PROGRESS: LazyLock<Codec> = LazyLock::new(|| Codec::new(PROGRESS_SCHEMA_VERSIONS));

/// One progress record: every record of `events_topic`/`partition` below
/// `next_offset` is reflected in the aggregates before this record in
/// `aggregates_partition` (one of `aggregates_partitions`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Progress {
    pub events_topic: String,
    pub partition: i32,
    pub next_offset: i64,
    pub aggregates_partition: i32,
    pub aggregates_partitions: i32,
}

impl Progress {
    /// Its compaction key: one per (events partition, aggregates partition).
    pub fn key(&self) -> String {
        format!("{PROGRESS_KEY_PREFIX}{}:{}", self.partition, self.aggregates_partition)
    }

    /// Its stored form.
    pub fn mark(&self) -> Mark {
        Mark {
            aggregates_partition: self.aggregates_partition,
            aggregates_partitions: self.aggregates_partitions,
            next_offset: self.next_offset,
        }
    }
}

/// Whether a record of an aggregates topic is a progress record (by its key).
pub fn is_progress_key(key: Option<&[u8]>) -> bool {
    key.is_some_and(|k| k.starts_with(PROGRESS_KEY_PREFIX.as_bytes()))
}

pub fn encode_progress(p: &Progress) -> Vec<u8> {
    PROGRESS.encode(p)
}

/// # Errors
/// [`DecodeError`] if the bytes are not an `engine.v1.Progress`, or carry a
/// negative partition or offset.
pub fn decode_progress(bytes: &[u8]) -> Result<Progress, DecodeError> {
    let p: Progress = PROGRESS.decode_into(bytes)?;
    if p.partition < 0 {
        return Err(DecodeError::Invalid("partition"));
    }
    if p.next_offset < 0 {
        return Err(DecodeError::Invalid("next_offset"));
    }
    if !(0..p.aggregates_partitions).contains(&p.aggregates_partition) {
        return Err(DecodeError::Invalid("aggregates_partition"));
    }
    Ok(p)
}

/// The furthest of `records` per (events topic, partition, aggregates partition):
/// a batch holds several checkpoints' records, and one statement may not update a row twice.
pub fn furthest(records: &[Progress]) -> Vec<Progress> {
    let mut furthest: std::collections::BTreeMap<(&str, i32, i32), &Progress> = std::collections::BTreeMap::new();
    for p in records {
        let held = furthest.entry((&p.events_topic, p.partition, p.aggregates_partition)).or_insert(p);
        if p.next_offset > held.next_offset {
            *held = p;
        }
    }
    furthest.into_values().cloned().collect()
}

/// The progress of one events partition as one aggregates partition carried it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub aggregates_partition: i32,
    pub aggregates_partitions: i32,
    pub next_offset: i64,
}

/// Whether the record at `offset` is reflected, given the stored marks of its
/// events partition: every aggregates partition (as many as the marks say
/// there are) must have carried a progress past it.
pub fn reflected(marks: &[Mark], offset: i64) -> bool {
    let Some(n) = marks.iter().map(|m| m.aggregates_partitions).max() else { return false };
    (0..n).all(|ap| marks.iter().any(|m| m.aggregates_partition == ap && m.next_offset > offset))
}

/// A client's proof of a write: where its event landed. Opaque to clients:
/// base64url (no padding) of a version byte, the partition and the offset
/// (big-endian), then the events topic's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadToken {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// The only token layout so far.
const TOKEN_V1: u8 = 1;
/// Longest token accepted, in characters (a topic name is at most 249 bytes).
const MAX_TOKEN_CHARS: usize = 400;

/// Why a presented token was refused: always the client's fault (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a token issued by this service")]
    Malformed,
    #[error("a token of a newer version ({0}) than this service reads")]
    UnknownVersion(u8),
}

impl ReadToken {
    /// The header value.
    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(13 + self.topic.len());
        bytes.push(TOKEN_V1);
        bytes.extend_from_slice(&self.partition.to_be_bytes());
        bytes.extend_from_slice(&self.offset.to_be_bytes());
        bytes.extend_from_slice(self.topic.as_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Reads a token produced by [`ReadToken::encode`].
    ///
    /// # Errors
    /// [`TokenError`] for anything else.
    pub fn parse(raw: &str) -> Result<Self, TokenError> {
        if raw.len() > MAX_TOKEN_CHARS {
            return Err(TokenError::Malformed);
        }
        let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| TokenError::Malformed)?;
        let (&version, rest) = bytes.split_first().ok_or(TokenError::Malformed)?;
        if version != TOKEN_V1 {
            return Err(TokenError::UnknownVersion(version));
        }
        let (partition, rest) = rest.split_first_chunk::<4>().ok_or(TokenError::Malformed)?;
        let (offset, topic) = rest.split_first_chunk::<8>().ok_or(TokenError::Malformed)?;
        let (partition, offset) = (i32::from_be_bytes(*partition), i64::from_be_bytes(*offset));
        let topic = std::str::from_utf8(topic).map_err(|_| TokenError::Malformed)?;
        // Kafka's rule for topic names: what the command can have written.
        let valid_topic = !topic.is_empty()
            && topic.len() <= 249
            && topic.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if partition < 0 || offset < 0 || !valid_topic {
            return Err(TokenError::Malformed);
        }
        Ok(ReadToken { topic: topic.to_owned(), partition, offset })
    }
}

/// The PostgreSQL side: `read_progress` (migration `READ_PROGRESS`).
pub mod pg {
    use deadpool_postgres::{Client, Transaction};

    use super::{Mark, Progress};
    use crate::engine::pg::PgError;

    /// Stores progress records, each only moving its row forward; safe to replay.
    ///
    /// # Errors
    /// [`PgError`] when PostgreSQL cannot answer; the transaction must then be dropped.
    pub async fn write(tx: &Transaction<'_>, records: &[Progress]) -> Result<(), PgError> {
        let records = super::furthest(records);
        if records.is_empty() {
            return Ok(());
        }
        let col = |f: fn(&Progress) -> i32| records.iter().map(f).collect::<Vec<i32>>();
        let topics: Vec<&str> = records.iter().map(|p| p.events_topic.as_str()).collect();
        let offsets: Vec<i64> = records.iter().map(|p| p.next_offset).collect();
        tx.execute(
            "INSERT INTO read_progress (events_topic, partition, aggregates_partition, aggregates_partitions, next_offset)
             SELECT * FROM unnest($1::text[], $2::int[], $3::int[], $4::int[], $5::bigint[])
             ON CONFLICT (events_topic, partition, aggregates_partition) DO UPDATE SET
                 next_offset = EXCLUDED.next_offset, aggregates_partitions = EXCLUDED.aggregates_partitions,
                 updated_at = now()
             WHERE read_progress.next_offset < EXCLUDED.next_offset",
            &[
                &topics,
                &col(|p| p.partition),
                &col(|p| p.aggregates_partition),
                &col(|p| p.aggregates_partitions),
                &offsets,
            ],
        )
        .await?;
        Ok(())
    }

    /// The marks of one events partition.
    ///
    /// # Errors
    /// [`PgError`] when PostgreSQL cannot answer.
    pub async fn marks(client: &Client, topic: &str, partition: i32) -> Result<Vec<Mark>, PgError> {
        let rows = client
            .query(
                "SELECT aggregates_partition, aggregates_partitions, next_offset FROM read_progress
                 WHERE events_topic = $1 AND partition = $2",
                &[&topic, &partition],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Mark {
                aggregates_partition: r.get("aggregates_partition"),
                aggregates_partitions: r.get("aggregates_partitions"),
                next_offset: r.get("next_offset"),
            })
            .collect())
    }

    /// The marks of several events partitions (topic, partition), in one query;
    /// a partition without marks is absent from the map.
    ///
    /// # Errors
    /// [`PgError`] when PostgreSQL cannot answer.
    pub async fn marks_many(
        client: &Client,
        partitions: &[(String, i32)],
    ) -> Result<std::collections::HashMap<(String, i32), Vec<Mark>>, PgError> {
        let topics: Vec<&str> = partitions.iter().map(|(t, _)| t.as_str()).collect();
        let numbers: Vec<i32> = partitions.iter().map(|(_, p)| *p).collect();
        let stmt = client
            .prepare_cached(
                "SELECT r.events_topic, r.partition, r.aggregates_partition, r.aggregates_partitions, r.next_offset
                 FROM read_progress r JOIN unnest($1::text[], $2::int[]) AS w(events_topic, partition)
                 USING (events_topic, partition)",
            )
            .await?;
        let rows = client.query(&stmt, &[&topics, &numbers]).await?;
        let mut marks: std::collections::HashMap<(String, i32), Vec<Mark>> = std::collections::HashMap::new();
        for r in &rows {
            let mark = Mark {
                aggregates_partition: r.get("aggregates_partition"),
                aggregates_partitions: r.get("aggregates_partitions"),
                next_offset: r.get("next_offset"),
            };
            marks.entry((r.get("events_topic"), r.get("partition"))).or_default().push(mark);
        }
        Ok(marks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn token(topic: &str, partition: i32, offset: i64) -> ReadToken {
        ReadToken { topic: topic.into(), partition, offset }
    }

    #[test]
    fn a_token_round_trips_and_is_url_safe() {
        let t = token("analytics.events", 3, 1_234_567_890_123);
        let raw = t.encode();
        assert!(raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{raw}");
        assert_eq!(ReadToken::parse(&raw), Ok(t));
    }

    #[test]
    fn garbage_is_refused() {
        for bad in ["", "x", "!!!!", "AQ", "AAAAAAAAAAAAAAAAAAAA", &"A".repeat(500)] {
            assert!(ReadToken::parse(bad).is_err(), "{bad:?} accepted");
        }
        // A valid layout with a negative offset, an empty or an invalid topic.
        let raw = |v: u8, p: i32, o: i64, topic: &[u8]| {
            let mut b = vec![v];
            b.extend_from_slice(&p.to_be_bytes());
            b.extend_from_slice(&o.to_be_bytes());
            b.extend_from_slice(topic);
            URL_SAFE_NO_PAD.encode(b)
        };
        assert_eq!(ReadToken::parse(&raw(1, 0, -1, b"t")), Err(TokenError::Malformed));
        assert_eq!(ReadToken::parse(&raw(1, -1, 0, b"t")), Err(TokenError::Malformed));
        assert_eq!(ReadToken::parse(&raw(1, 0, 0, b"")), Err(TokenError::Malformed));
        assert_eq!(ReadToken::parse(&raw(1, 0, 0, b"a b")), Err(TokenError::Malformed));
        assert_eq!(ReadToken::parse(&raw(1, 0, 0, &[0xff])), Err(TokenError::Malformed));
        assert_eq!(ReadToken::parse(&raw(2, 0, 0, b"t")), Err(TokenError::UnknownVersion(2)));
        assert_eq!(ReadToken::parse(&raw(1, 0, 0, b"t")), Ok(token("t", 0, 0)));
    }

    proptest! {
        #[test]
        fn any_token_round_trips(topic in "[a-zA-Z0-9._-]{1,60}", p in 0i32..i32::MAX, o in 0i64..i64::MAX) {
            let t = token(&topic, p, o);
            prop_assert_eq!(ReadToken::parse(&t.encode()), Ok(t));
        }
    }

    fn mark(ap: i32, n: i32, next_offset: i64) -> Mark {
        Mark { aggregates_partition: ap, aggregates_partitions: n, next_offset }
    }

    #[test]
    fn an_offset_is_reflected_once_every_aggregates_partition_is_past_it() {
        assert!(!reflected(&[], 0), "no progress yet");
        let marks = [mark(0, 3, 11), mark(1, 3, 11), mark(2, 3, 10)];
        assert!(reflected(&marks, 9));
        assert!(!reflected(&marks, 10), "partition 2 has not read past offset 10");
        assert!(!reflected(&marks[..2], 0), "partition 2 carried nothing yet");
        assert!(reflected(&[mark(0, 1, 1)], 0));
        assert!(!reflected(&[mark(0, 1, 1)], 1), "next_offset is exclusive");
    }

    #[test]
    fn progress_records_round_trip_and_are_told_apart_by_key() {
        let p = Progress {
            events_topic: "e".into(),
            partition: 2,
            next_offset: 42,
            aggregates_partition: 1,
            aggregates_partitions: 4,
        };
        assert_eq!(decode_progress(&encode_progress(&p)), Ok(p.clone()));
        assert_eq!(p.key(), "progress:2:1");
        assert!(is_progress_key(Some(p.key().as_bytes())));
        assert!(!is_progress_key(Some(b"1700000000000:2")));
        assert!(!is_progress_key(None));
        let later = Progress { next_offset: 50, ..p.clone() };
        let other = Progress { aggregates_partition: 0, ..p.clone() };
        assert_eq!(furthest(&[p.clone(), later.clone(), other.clone(), p.clone()]), vec![other, later]);
        let bad = Progress { aggregates_partition: 4, ..p };
        assert_eq!(decode_progress(&encode_progress(&bad)), Err(DecodeError::Invalid("aggregates_partition")));
    }
}
