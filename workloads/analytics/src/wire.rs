//! The analytics workload's records on the topics: `analytics.v1.Event` on
//! the events topic (command → processor) and `analytics.v1.HourAggregate` on
//! the aggregates topic (processor → materializer), through the engine's
//! [`Codec`].
//!
//! Each record has one typed wire struct ([`EventRecord`],
//! [`HourAggregateRecord`]) whose fields carry the schema's field names; the
//! domain types convert to and from these structs, and decoding validates on
//! the way in.

use std::sync::LazyLock;

use apache_avro::{from_value, Schema};
use serde::{Deserialize, Serialize};

use crate::analytics::{sketch, ClickEvent, EventId, EventKind, HourCounts, HourStart, UserId};
use crate::engine::avro::Codec;
pub use crate::engine::avro::DecodeError;

/// Every version of `analytics.v1.Event`, oldest first: every
/// `common/schemas/event.v<N>.avsc` (found by `common/build.rs`). Only ever
/// add a version: it may only add fields with a default, or enum symbols (see
/// `docs/schemas.md`).
pub const EVENT_SCHEMA_VERSIONS: &[&str] = crate::engine::avro::versions::EVENT_SCHEMA_VERSIONS;
/// Every version of `analytics.v1.HourAggregate`, oldest first (`hour_aggregate.v<N>.avsc`).
pub const HOUR_AGGREGATE_SCHEMA_VERSIONS: &[&str] = crate::engine::avro::versions::HOUR_AGGREGATE_SCHEMA_VERSIONS;

/// The event schema written by [`encode_event`] and read into by [`decode_event`]: the newest.
pub const EVENT_SCHEMA_JSON: &str = EVENT_SCHEMA_VERSIONS[EVENT_SCHEMA_VERSIONS.len() - 1];
/// The aggregate schema written by [`encode_hour_aggregate`] and read into by [`decode_hour_aggregate`].
pub const HOUR_AGGREGATE_SCHEMA_JSON: &str = HOUR_AGGREGATE_SCHEMA_VERSIONS[HOUR_AGGREGATE_SCHEMA_VERSIONS.len() - 1];

static EVENT: LazyLock<Codec> = LazyLock::new(|| Codec::new(EVENT_SCHEMA_VERSIONS));
static HOUR_AGGREGATE: LazyLock<Codec> = LazyLock::new(|| Codec::new(HOUR_AGGREGATE_SCHEMA_VERSIONS));

/// The current event schema.
pub fn event_schema() -> &'static Schema {
    &EVENT.current().schema
}

/// The current aggregate schema.
pub fn hour_aggregate_schema() -> &'static Schema {
    &HOUR_AGGREGATE.current().schema
}

/// The wire pieces that name the counts, generated from the one list
/// ([`crate::with_kinds!`]): the `EventKind` enum (serde writes and reads
/// each symbol by name) and the aggregate record with one field per count.
macro_rules! define_wire {
    ($(($kind:ident, $name:literal, $symbol:literal, $count:ident, $redis:literal),)+) => {
        /// `analytics.v1.EventKind`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        enum EventKindRecord {
            $(#[serde(rename = $symbol)] $kind,)+
        }

        impl From<EventKind> for EventKindRecord {
            fn from(kind: EventKind) -> Self {
                match kind {
                    $(EventKind::$kind => EventKindRecord::$kind,)+
                }
            }
        }

        impl From<EventKindRecord> for EventKind {
            fn from(kind: EventKindRecord) -> Self {
                match kind {
                    $(EventKindRecord::$kind => EventKind::$kind,)+
                }
            }
        }

        /// `analytics.v1.HourAggregate` as the current schema has it: the
        /// wire shape of an [`HourAggregate`]. The sketch borrows from the
        /// aggregate when encoding and from the decoded value when decoding.
        #[derive(Debug, Serialize, Deserialize)]
        // A schema field missing here fails decoding (and the round-trip tests) instead of being dropped.
        #[serde(deny_unknown_fields)]
        struct HourAggregateRecord<'a> {
            hour_start_ms: i64,
            partition: i32,
            unique_users: i64,
            $($count: i64,)+
            input_offset: i64,
            watermark_ms: i64,
            /// Since v2; a v1 record resolves to the default, empty (no sketch).
            #[serde(with = "apache_avro::serde_avro_slice", borrow)]
            sketch: &'a [u8],
            /// Since v2; a v1 record resolves to the default, null.
            day_unique_users: Option<i64>,
        }

        impl<'a> From<&'a HourAggregate> for HourAggregateRecord<'a> {
            fn from(a: &'a HourAggregate) -> Self {
                HourAggregateRecord {
                    hour_start_ms: a.hour.start_ms(),
                    partition: a.partition,
                    unique_users: long(a.counts.unique_users),
                    $($count: long(a.counts.$count),)+
                    input_offset: a.input_offset,
                    watermark_ms: a.watermark_ms,
                    sketch: a.sketch.as_deref().unwrap_or_default(),
                    day_unique_users: a.day_unique_users.map(long),
                }
            }
        }

        /// The counts of a decoded record; a negative one is refused.
        fn record_counts(r: &HourAggregateRecord<'_>) -> Result<HourCounts, DecodeError> {
            let count = |v: i64, name| u64::try_from(v).map_err(|_| DecodeError::Invalid(name));
            Ok(HourCounts {
                unique_users: count(r.unique_users, "unique_users")?,
                $($count: count(r.$count, stringify!($count))?,)+
            })
        }
    };
}

crate::with_kinds!(define_wire);

/// `analytics.v1.Event` as the current schema (`event.v2.avsc`) has it: the
/// wire shape of a [`ClickEvent`]. The strings borrow from the event when
/// encoding and from the decoded value when decoding.
#[derive(Debug, Serialize, Deserialize)]
// A schema field missing here fails decoding (and the round-trip tests) instead of being dropped.
#[serde(deny_unknown_fields)]
struct EventRecord<'a> {
    timestamp_ms: i64,
    user: &'a str,
    kind: EventKindRecord,
    accepted_at_ms: i64,
    /// Since v2; a v1 record resolves to the default, null.
    id: Option<&'a str>,
}

impl<'a> From<&'a ClickEvent> for EventRecord<'a> {
    fn from(e: &'a ClickEvent) -> Self {
        EventRecord {
            timestamp_ms: e.timestamp_ms,
            user: e.user.as_str(),
            kind: e.kind.into(),
            accepted_at_ms: e.accepted_at_ms,
            id: e.id.as_deref(),
        }
    }
}

impl TryFrom<EventRecord<'_>> for ClickEvent {
    type Error = DecodeError;

    /// Checks what the command checked before writing: a record that did not
    /// go through the command (or a corrupted one) is refused, not trusted.
    fn try_from(r: EventRecord<'_>) -> Result<Self, DecodeError> {
        Ok(ClickEvent {
            timestamp_ms: r.timestamp_ms,
            user: UserId::parse(r.user).map_err(|_| DecodeError::Invalid("user"))?,
            kind: r.kind.into(),
            accepted_at_ms: r.accepted_at_ms,
            id: r
                .id
                .map(|id| EventId::parse(id).map(EventId::into_string).map_err(|_| DecodeError::Invalid("id")))
                .transpose()?,
        })
    }
}

/// `analytics.v1.Event` as `event.v1.avsc` has it: only written by tests of
/// reading older records.
#[cfg(any(test, feature = "test-util"))]
#[derive(Serialize)]
struct EventRecordV1<'a> {
    timestamp_ms: i64,
    user: &'a str,
    kind: EventKindRecord,
    accepted_at_ms: i64,
}

#[cfg(any(test, feature = "test-util"))]
impl<'a> From<&'a ClickEvent> for EventRecordV1<'a> {
    fn from(e: &'a ClickEvent) -> Self {
        let EventRecord { timestamp_ms, user, kind, accepted_at_ms, id: _ } = EventRecord::from(e);
        EventRecordV1 { timestamp_ms, user, kind, accepted_at_ms }
    }
}

/// Encodes with the current event schema (v2).
pub fn encode_event(e: &ClickEvent) -> Vec<u8> {
    EVENT.encode(&EventRecord::from(e))
}

/// Encodes with the first event schema (v1), as releases before v2 wrote:
/// for tests of reading older records. The `id` is not written.
#[cfg(any(test, feature = "test-util"))]
pub fn encode_event_v1(e: &ClickEvent) -> Vec<u8> {
    EVENT.versions[0].encode_record(&EventRecordV1::from(e))
}

/// # Errors
/// [`DecodeError`] if the bytes are not an `analytics.v1.Event` of a known
/// version, or carry an invalid user or id.
pub fn decode_event(bytes: &[u8]) -> Result<ClickEvent, DecodeError> {
    let value = EVENT.decode(bytes)?;
    ClickEvent::try_from(from_value::<EventRecord>(&value).map_err(|e| DecodeError::Avro(e.to_string()))?)
}

/// One record of the hourly aggregates topic: see `schemas/hour_aggregate.v2.avsc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourAggregate {
    pub hour: HourStart,
    pub partition: i32,
    pub counts: HourCounts,
    pub input_offset: i64,
    pub watermark_ms: i64,
    /// Since v2: the [`crate::analytics::UserSketch`] bytes of the hour's
    /// users in this partition; `None` in a v1 record.
    pub sketch: Option<Vec<u8>>,
    /// Since v2: distinct users of the hour's UTC day in this partition, over
    /// the same records; `None` in a v1 record.
    pub day_unique_users: Option<u64>,
}

impl HourAggregate {
    /// The record key: one key per (hour, partition), so compaction keeps the latest.
    pub fn key(&self) -> String {
        format!("{}:{}", self.hour.start_ms(), self.partition)
    }
}

/// Avro has no unsigned long; a count beyond i64 (never reached) saturates.
fn long(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl TryFrom<HourAggregateRecord<'_>> for HourAggregate {
    type Error = DecodeError;

    /// Refuses an unaligned hour, a negative count or a sketch that is not one.
    fn try_from(r: HourAggregateRecord<'_>) -> Result<Self, DecodeError> {
        let count = |v: i64, name| u64::try_from(v).map_err(|_| DecodeError::Invalid(name));
        let counts = record_counts(&r)?;
        let sketch = match r.sketch {
            [] => None,
            bytes => {
                sketch::check_bytes(bytes).map_err(|_| DecodeError::Invalid("sketch"))?;
                Some(bytes.to_vec())
            }
        };
        Ok(HourAggregate {
            hour: HourStart::from_aligned(r.hour_start_ms).ok_or(DecodeError::Invalid("hour_start_ms"))?,
            partition: r.partition,
            counts,
            input_offset: r.input_offset,
            watermark_ms: r.watermark_ms,
            sketch,
            day_unique_users: r.day_unique_users.map(|v| count(v, "day_unique_users")).transpose()?,
        })
    }
}

/// `analytics.v1.HourAggregate` as `hour_aggregate.v1.avsc` has it: only
/// written by tests of reading older records.
#[cfg(any(test, feature = "test-util"))]
#[derive(Serialize)]
struct HourAggregateRecordV1 {
    hour_start_ms: i64,
    partition: i32,
    unique_users: i64,
    clicks: i64,
    impressions: i64,
    input_offset: i64,
    watermark_ms: i64,
}

/// Encodes with the first aggregate schema (v1), as releases before v2 wrote:
/// for tests of reading older records. The sketch and day count are not written.
#[cfg(any(test, feature = "test-util"))]
pub fn encode_hour_aggregate_v1(a: &HourAggregate) -> Vec<u8> {
    // v1 is frozen history: it has exactly these two counts.
    let v1 = HourAggregateRecordV1 {
        hour_start_ms: a.hour.start_ms(),
        partition: a.partition,
        unique_users: long(a.counts.unique_users),
        clicks: long(a.counts.clicks),
        impressions: long(a.counts.impressions),
        input_offset: a.input_offset,
        watermark_ms: a.watermark_ms,
    };
    HOUR_AGGREGATE.versions[0].encode_record(&v1)
}

pub fn encode_hour_aggregate(a: &HourAggregate) -> Vec<u8> {
    HOUR_AGGREGATE.encode(&HourAggregateRecord::from(a))
}

/// # Errors
/// [`DecodeError`] if the bytes are not an `analytics.v1.HourAggregate`, or
/// carry an unaligned hour, a negative count or a corrupt sketch.
pub fn decode_hour_aggregate(bytes: &[u8]) -> Result<HourAggregate, DecodeError> {
    let value = HOUR_AGGREGATE.decode(bytes)?;
    HourAggregate::try_from(from_value::<HourAggregateRecord>(&value).map_err(|e| DecodeError::Avro(e.to_string()))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::avro::{crc64_avro, fingerprint_hex, without_logical_types, Version, HEADER_LEN};
    use apache_avro::types::Value;
    use apache_avro::GenericSingleObjectReader;
    use proptest::prelude::*;

    fn sketch_of(hashes: &[u64]) -> Vec<u8> {
        hashes.iter().copied().collect::<crate::analytics::UserSketch>().to_bytes()
    }

    fn aggregate(h: i64, p: i32, counts: HourCounts, off: i64, wm: i64) -> HourAggregate {
        HourAggregate {
            hour: HourStart::of(h * 3_600_000),
            partition: p,
            counts,
            input_offset: off,
            watermark_ms: wm,
            sketch: None,
            day_unique_users: None,
        }
    }

    #[test]
    fn a_v1_aggregate_decodes_under_the_v2_reader_with_no_sketch_and_no_day() {
        let counts = HourCounts { unique_users: 4812, clicks: 2503, impressions: 5840 };
        let a = HourAggregate {
            sketch: Some(sketch_of(&[1, 2, 3])),
            day_unique_users: Some(9000),
            ..aggregate(498_753, 2, counts, 19_345, 1_795_514_399_871)
        };
        let bytes = encode_hour_aggregate_v1(&a);
        assert_eq!(bytes[..HEADER_LEN], HOUR_AGGREGATE.versions[0].header);
        // The exact bytes of the example in docs/schemas.md.
        let body: Vec<u8> = vec![
            0x80, 0xBA, 0xC4, 0xCC, 0xC1, 0x68, 0x04, 0x98, 0x4B, 0x8E, 0x27, 0xA0, 0x5B, 0xA2, 0xAE, 0x02, 0xFE, 0xF1,
            0xFB, 0xCF, 0xC1, 0x68,
        ];
        assert_eq!(bytes[HEADER_LEN..], body);
        assert_eq!(decode_hour_aggregate(&bytes), Ok(HourAggregate { sketch: None, day_unique_users: None, ..a }));
    }

    #[test]
    fn v2_aggregates_carry_the_sketch_and_the_day() {
        let counts = HourCounts { unique_users: 3, clicks: 1, impressions: 2 };
        let a = HourAggregate {
            sketch: Some(sketch_of(&[1, 2, 3])),
            day_unique_users: Some(5),
            ..aggregate(7, 1, counts, 10, 11)
        };
        let bytes = encode_hour_aggregate(&a);
        assert_eq!(bytes[..HEADER_LEN], HOUR_AGGREGATE.versions[1].header);
        assert_eq!(decode_hour_aggregate(&bytes), Ok(a.clone()));
        // The sketch as Avro bytes (length, then its bytes), then union branch 1 (long) 5.
        let sketch = sketch_of(&[1, 2, 3]);
        let mut tail = vec![(sketch.len() as u8) << 1];
        tail.extend_from_slice(&sketch);
        tail.extend_from_slice(&[0x02, 0x0A]);
        assert!(bytes.ends_with(&tail));
        // Without them: empty bytes and the null branch, read back as none.
        let none = HourAggregate { sketch: None, day_unique_users: None, ..a };
        let bytes = encode_hour_aggregate(&none);
        assert!(bytes.ends_with(&[0x00, 0x00]));
        assert_eq!(decode_hour_aggregate(&bytes), Ok(none));
    }

    #[test]
    fn a_corrupt_sketch_or_negative_day_count_is_refused() {
        let mut a = aggregate(7, 1, HourCounts::default(), 10, 11);
        a.sketch = Some(vec![9, 9, 9]);
        assert_eq!(decode_hour_aggregate(&encode_hour_aggregate(&a)), Err(DecodeError::Invalid("sketch")));
        let plain = aggregate(7, 1, HourCounts::default(), 10, 11);
        let record = HourAggregateRecord { day_unique_users: Some(-1), ..HourAggregateRecord::from(&plain) };
        assert_eq!(
            decode_hour_aggregate(&HOUR_AGGREGATE.encode(&record)),
            Err(DecodeError::Invalid("day_unique_users"))
        );
    }

    fn event(ts: i64, user: &str, click: bool, acc: i64) -> ClickEvent {
        ClickEvent {
            timestamp_ms: ts,
            user: UserId::parse(user).unwrap(),
            kind: if click { EventKind::Click } else { EventKind::Impression },
            accepted_at_ms: acc,
            id: None,
        }
    }

    /// The v1 fields of an event as a generic record, through the same wire struct.
    fn event_v1_fields(e: &ClickEvent) -> Vec<(String, Value)> {
        match apache_avro::to_value(EventRecordV1::from(e)).unwrap() {
            Value::Record(fields) => fields,
            other => panic!("not a record: {other:?}"),
        }
    }

    #[test]
    fn records_are_single_object_encoded() {
        let bytes = encode_event(&event(1, "alice", true, 2));
        assert_eq!(&bytes[..2], &[0xC3, 0x01]);
        // A library that fingerprints by the specification reads it; apache-avro
        // does so for a schema without logical types (see `Codec::new`).
        let plain = Schema::parse(&without_logical_types(serde_json::from_str(EVENT_SCHEMA_JSON).unwrap())).unwrap();
        let reader = GenericSingleObjectReader::new(plain).unwrap();
        let value = reader.read_value(&mut bytes.as_slice()).unwrap();
        assert!(matches!(value, Value::Record(ref f) if f[1].1 == Value::String("alice".into())));
    }

    #[test]
    fn a_record_of_the_other_schema_is_refused() {
        let agg = HourAggregate {
            hour: HourStart::of(0),
            partition: 0,
            counts: HourCounts::default(),
            input_offset: 1,
            watermark_ms: 0,
            sketch: Some(sketch_of(&[7, 8])),
            day_unique_users: Some(2),
        };
        let aggregate_fingerprint = u64::from_le_bytes(HOUR_AGGREGATE.current().header[2..].try_into().unwrap());
        assert_eq!(decode_event(&encode_hour_aggregate(&agg)), Err(DecodeError::UnknownSchema(aggregate_fingerprint)));
        assert_eq!(
            decode_hour_aggregate(&encode_event(&event(1, "a", true, 2))).map(|_| ()).unwrap_err().to_string(),
            format!(
                "unknown schema: fingerprint {:#018x} (header C3 01 {}) is no known version of this record",
                u64::from_le_bytes(EVENT.current().header[2..].try_into().unwrap()),
                fingerprint_hex(u64::from_le_bytes(EVENT.current().header[2..].try_into().unwrap()))
            )
        );
        assert_eq!(decode_event(b"garbage"), Err(DecodeError::WrongHeader));
        assert_eq!(decode_event(b"garbage and more"), Err(DecodeError::WrongHeader));
        assert_eq!(decode_event(&[0xC3, 0x01, 0x5E]), Err(DecodeError::WrongHeader));
        assert_eq!(decode_event(&[]), Err(DecodeError::WrongHeader));
        // Every truncation is refused, even one that cuts a trailing union or
        // string (which apache-avro alone would read as null).
        for id in [None, Some("abc".to_owned())] {
            let whole = encode_event(&ClickEvent { id, ..event(1, "alice", true, 2) });
            for len in 0..whole.len() {
                assert!(decode_event(&whole[..len]).is_err(), "{len} of {} bytes", whole.len());
            }
        }
        let whole = encode_hour_aggregate(&agg);
        for len in 0..whole.len() {
            assert!(decode_hour_aggregate(&whole[..len]).is_err(), "{len} of {} bytes", whole.len());
        }
        let mut longer = encode_event(&event(1, "alice", true, 2));
        longer.push(0);
        assert_eq!(decode_event(&longer), Err(DecodeError::TrailingBytes));
    }

    #[test]
    fn headers_carry_the_specifications_fingerprint_of_the_canonical_form() {
        // Parsing Canonical Form, written by hand from the .avsc files.
        let event_v1 = r#"{"name":"analytics.v1.Event","type":"record","fields":[{"name":"timestamp_ms","type":"long"},{"name":"user","type":"string"},{"name":"kind","type":{"name":"analytics.v1.EventKind","type":"enum","symbols":["CLICK","IMPRESSION"]}},{"name":"accepted_at_ms","type":"long"}]}"#;
        let event_v2 = r#"{"name":"analytics.v1.Event","type":"record","fields":[{"name":"timestamp_ms","type":"long"},{"name":"user","type":"string"},{"name":"kind","type":{"name":"analytics.v1.EventKind","type":"enum","symbols":["CLICK","IMPRESSION"]}},{"name":"accepted_at_ms","type":"long"},{"name":"id","type":["null","string"]}]}"#;
        let aggregate = r#"{"name":"analytics.v1.HourAggregate","type":"record","fields":[{"name":"hour_start_ms","type":"long"},{"name":"partition","type":"int"},{"name":"unique_users","type":"long"},{"name":"clicks","type":"long"},{"name":"impressions","type":"long"},{"name":"input_offset","type":"long"},{"name":"watermark_ms","type":"long"}]}"#;
        let aggregate_v2 = r#"{"name":"analytics.v1.HourAggregate","type":"record","fields":[{"name":"hour_start_ms","type":"long"},{"name":"partition","type":"int"},{"name":"unique_users","type":"long"},{"name":"clicks","type":"long"},{"name":"impressions","type":"long"},{"name":"input_offset","type":"long"},{"name":"watermark_ms","type":"long"},{"name":"sketch","type":"bytes"},{"name":"day_unique_users","type":["null","long"]}]}"#;
        let versions = [
            (event_v1, &EVENT.versions[0]),
            (event_v2, &EVENT.versions[1]),
            (aggregate, &HOUR_AGGREGATE.versions[0]),
            (aggregate_v2, &HOUR_AGGREGATE.versions[1]),
        ];
        assert_eq!(EVENT.versions.len() + HOUR_AGGREGATE.versions.len(), versions.len(), "every version is checked");
        for (canonical, version) in versions {
            let mut want = vec![0xC3, 0x01];
            want.extend_from_slice(&crc64_avro(canonical.as_bytes()).to_le_bytes());
            assert_eq!(version.header.as_slice(), want, "{canonical}");
        }
    }

    #[test]
    fn the_newest_schemas_carry_exactly_the_defined_counts() {
        // A count added to `counts::with_kinds!` without its schema versions (or
        // the other way round) fails here, not in production.
        let event: serde_json::Value = serde_json::from_str(EVENT_SCHEMA_JSON).unwrap();
        let kind = event["fields"].as_array().unwrap().iter().find(|f| f["name"] == "kind").expect("a kind field");
        let symbols: Vec<&str> =
            kind["type"]["symbols"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
        assert_eq!(symbols, EventKind::ALL.iter().map(|k| k.symbol()).collect::<Vec<_>>(), "event kind symbols");
        let aggregate: serde_json::Value = serde_json::from_str(HOUR_AGGREGATE_SCHEMA_JSON).unwrap();
        let not_counts = ["hour_start_ms", "partition", "input_offset", "watermark_ms", "sketch", "day_unique_users"];
        let counts: Vec<&str> = aggregate["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .filter(|name| !not_counts.contains(name))
            .collect();
        let defined: Vec<&str> = crate::analytics::counts::COUNT_FIELDS.iter().map(|f| f.column).collect();
        assert_eq!(counts, defined, "aggregate count fields");
    }

    #[test]
    fn published_headers_never_change() {
        // The headers in docs/schemas.md: records with them are on topics for
        // good, so editing a released .avsc (instead of adding a version) fails here.
        let hex = |h: &[u8; HEADER_LEN]| h.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(" ");
        assert_eq!(hex(&EVENT.versions[0].header), "C3 01 5E D3 E2 C4 31 C6 26 6C");
        assert_eq!(hex(&EVENT.versions[1].header), "C3 01 35 E0 51 AF EB 36 06 82");
        assert_eq!(hex(&HOUR_AGGREGATE.versions[0].header), "C3 01 C6 E7 0C 9A 3B 43 4D 51");
        assert_eq!(hex(&HOUR_AGGREGATE.versions[1].header), "C3 01 B4 1A A0 80 FF 07 2C C2");
        assert_eq!(EVENT_SCHEMA_JSON, *EVENT_SCHEMA_VERSIONS.last().unwrap());
        assert_eq!(HOUR_AGGREGATE_SCHEMA_JSON, *HOUR_AGGREGATE_SCHEMA_VERSIONS.last().unwrap());
    }

    #[test]
    fn a_v1_record_decodes_under_the_v2_reader_with_no_id() {
        let e = event(1_795_511_234_567, "alice", true, 1_795_511_234_612);
        let bytes = encode_event_v1(&e);
        assert_eq!(bytes[..HEADER_LEN], EVENT.versions[0].header);
        // The exact bytes of the example in docs/schemas.md.
        let body: Vec<u8> = vec![
            0x8E, 0xC0, 0xF9, 0xCC, 0xC1, 0x68, 0x0A, b'a', b'l', b'i', b'c', b'e', 0x00, 0xE8, 0xC0, 0xF9, 0xCC, 0xC1,
            0x68,
        ];
        assert_eq!(bytes[HEADER_LEN..], body);
        assert_eq!(decode_event(&bytes), Ok(e.clone()));
        // An id given to the v1 encoder is not written (v1 has no such field).
        let with_id = ClickEvent { id: Some("abc".into()), ..e.clone() };
        assert_eq!(decode_event(&encode_event_v1(&with_id)), Ok(e));
    }

    #[test]
    fn v2_records_carry_the_id() {
        let e = ClickEvent { id: Some("0b3c8f2e-7d41_X".into()), ..event(1, "bob", false, 2) };
        let bytes = encode_event(&e);
        assert_eq!(bytes[..HEADER_LEN], EVENT.versions[1].header);
        assert_eq!(decode_event(&bytes), Ok(e.clone()));
        // The id comes after the v1 fields: union branch 1 (string), length 15, the bytes.
        let mut tail = vec![0x02, 0x1E];
        tail.extend_from_slice(b"0b3c8f2e-7d41_X");
        assert!(bytes.ends_with(&tail));
        let none = ClickEvent { id: None, ..e };
        let bytes = encode_event(&none);
        assert_eq!(bytes.last(), Some(&0x00), "null branch");
        assert_eq!(decode_event(&bytes), Ok(none));
    }

    #[test]
    fn an_invalid_id_is_refused_like_an_invalid_user() {
        let e = ClickEvent { id: Some("not ok".into()), ..event(1, "bob", false, 2) };
        assert_eq!(decode_event(&encode_event(&e)), Err(DecodeError::Invalid("id")));
    }

    #[test]
    fn a_record_of_an_unknown_version_is_refused_with_its_fingerprint() {
        // A future v3 (v2 plus one more defaulted field) that this build does not know.
        let mut v3: serde_json::Value = serde_json::from_str(EVENT_SCHEMA_VERSIONS[1]).unwrap();
        v3["fields"].as_array_mut().unwrap().push(serde_json::json!({"name": "extra", "type": "long", "default": 0}));
        let v3 = Version::new(&v3.to_string());
        let mut fields = event_v1_fields(&event(1, "carol", true, 2));
        fields.push(("id".into(), Value::Union(0, Box::new(Value::Null))));
        fields.push(("extra".into(), Value::Long(7)));
        let bytes = v3.encode(Value::Record(fields));
        let fingerprint = u64::from_le_bytes(v3.header[2..].try_into().unwrap());
        assert_eq!(decode_event(&bytes), Err(DecodeError::UnknownSchema(fingerprint)));
        // Any unknown fingerprint, with an otherwise valid body.
        let mut forged = encode_event(&event(1, "carol", true, 2));
        forged[2..HEADER_LEN].copy_from_slice(&0x0123_4567_89AB_CDEFu64.to_le_bytes());
        let err = decode_event(&forged).unwrap_err();
        assert_eq!(err, DecodeError::UnknownSchema(0x0123_4567_89AB_CDEF));
        assert!(err.to_string().contains("C3 01 EF CD AB 89 67 45 23 01"), "{err}");
    }

    /// Decode and encode speed per record: `cargo test --release -p common --lib
    /// codec_speed -- --ignored --nocapture`.
    #[test]
    #[ignore = "timing, not a check"]
    fn codec_speed() {
        const N: u32 = 1_000_000;
        let event = ClickEvent {
            id: Some("0b3c8f2e-7d41_X".into()),
            ..event(1_795_511_234_567, "alice", true, 1_795_511_234_612)
        };
        let records = [encode_event(&event), encode_event_v1(&event)];
        let agg = encode_hour_aggregate(&HourAggregate {
            sketch: Some(sketch_of(&(0..10u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).collect::<Vec<_>>())),
            day_unique_users: Some(10),
            ..aggregate(
                498_753,
                3,
                HourCounts { unique_users: 10, clicks: 20, impressions: 30 },
                12_345,
                1_795_511_234_612,
            )
        });
        for (name, bytes) in [("event v2", &records[0]), ("event v1", &records[1])] {
            let start = std::time::Instant::now();
            for _ in 0..N {
                std::hint::black_box(decode_event(std::hint::black_box(bytes)).unwrap());
            }
            println!("decode {name}: {:.0} ns/record", start.elapsed().as_nanos() as f64 / f64::from(N));
        }
        let start = std::time::Instant::now();
        for _ in 0..N {
            std::hint::black_box(decode_hour_aggregate(std::hint::black_box(&agg)).unwrap());
        }
        println!("decode aggregate: {:.0} ns/record", start.elapsed().as_nanos() as f64 / f64::from(N));
        let start = std::time::Instant::now();
        for _ in 0..N {
            std::hint::black_box(encode_event(std::hint::black_box(&event)));
        }
        println!("encode event v2: {:.0} ns/record", start.elapsed().as_nanos() as f64 / f64::from(N));
    }

    proptest! {
        #[test]
        fn events_round_trip(ts in 0i64..i64::MAX, user in "[^\\p{Cc}]{1,64}", click in any::<bool>(), acc in 0i64..i64::MAX, id in proptest::option::of("[A-Za-z0-9_-]{1,128}")) {
            let e = ClickEvent { id, ..event(ts, &user, click, acc) };
            prop_assert_eq!(decode_event(&encode_event(&e)).unwrap(), e.clone());
            // The same event written by a v1 writer reads back without its id.
            prop_assert_eq!(decode_event(&encode_event_v1(&e)).unwrap(), ClickEvent { id: None, ..e });
        }

        #[test]
        fn aggregates_round_trip(h in 0i64..1_000_000, p in 0i32..1024, u in 0u64..1<<40, c in 0u64..1<<40, i in 0u64..1<<40, off in 0i64..i64::MAX, wm in 0i64..i64::MAX, users in proptest::option::of(proptest::collection::vec(any::<u64>(), 0..50)), day in proptest::option::of(0u64..1<<40)) {
            let a = HourAggregate { sketch: users.map(|u| sketch_of(&u)), day_unique_users: day, ..aggregate(h, p, HourCounts { unique_users: u, clicks: c, impressions: i }, off, wm) };
            prop_assert_eq!(decode_hour_aggregate(&encode_hour_aggregate(&a)).unwrap(), a.clone());
            // The same aggregate written by a v1 writer reads back without them.
            prop_assert_eq!(decode_hour_aggregate(&encode_hour_aggregate_v1(&a)).unwrap(), HourAggregate { sketch: None, day_unique_users: None, ..a });
        }
    }
}
