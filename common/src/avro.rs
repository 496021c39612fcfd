//! Avro records on the topics, in single-object encoding.
//!
//! The schemas live in `common/schemas/*.avsc`; every record starts with
//! `C3 01` and the schema's 8-byte CRC-64-AVRO fingerprint, so any Avro
//! library holding the `.avsc` can check and decode it. Used by the command
//! (events out), the processor (events in, aggregates out) and the
//! materializer (aggregates in).

use std::io::Cursor;
use std::sync::LazyLock;

use apache_avro::headers::{HeaderBuilder, RabinFingerprintHeader};
use apache_avro::types::Value;
use apache_avro::{from_avro_datum, to_avro_datum, Schema};

use crate::analytics::{ClickEvent, EventKind, HourCounts, HourStart, UserId};

pub const EVENT_SCHEMA_JSON: &str = include_str!("../schemas/event.avsc");
pub const HOUR_AGGREGATE_SCHEMA_JSON: &str = include_str!("../schemas/hour_aggregate.avsc");

/// A schema with its single-object header.
struct Codec {
    schema: Schema,
    header: Vec<u8>,
}

impl Codec {
    fn new(json: &str) -> Self {
        let schema = Schema::parse_str(json).expect("bundled schema is valid Avro");
        // The specification's Parsing Canonical Form drops `logicalType`, but
        // apache-avro 0.20 keeps `{"type":"long"}` where it should write
        // `"long"`, so its fingerprint of a schema with logical types differs
        // from every other library's. Fingerprint the same schema without
        // them: that is the spec's value (checked in the tests).
        let plain = Schema::parse(&without_logical_types(serde_json::from_str(json).expect("bundled schema is JSON")))
            .expect("bundled schema is valid Avro without logical types");
        let header = RabinFingerprintHeader::from_schema(&plain).build_header();
        Codec { schema, header }
    }

    fn encode(&self, value: Value) -> Vec<u8> {
        let body = to_avro_datum(&self.schema, value).expect("value built to match its schema");
        let mut out = Vec::with_capacity(self.header.len() + body.len());
        out.extend_from_slice(&self.header);
        out.extend_from_slice(&body);
        out
    }

    fn decode(&self, bytes: &[u8]) -> Result<Vec<(String, Value)>, DecodeError> {
        let body = bytes.strip_prefix(self.header.as_slice()).ok_or(DecodeError::WrongHeader)?;
        let mut cursor = Cursor::new(body);
        match from_avro_datum(&self.schema, &mut cursor, None).map_err(|e| DecodeError::Avro(e.to_string()))? {
            Value::Record(fields) if cursor.position() as usize == body.len() => Ok(fields),
            Value::Record(_) => Err(DecodeError::TrailingBytes),
            _ => Err(DecodeError::Avro("not a record".into())),
        }
    }
}

/// The schema JSON with every `logicalType` attribute removed.
fn without_logical_types(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        J::Object(map) => match (map.get("type"), map.get("logicalType")) {
            // `{"type": "long", "logicalType": ...}` is just `"long"`.
            (Some(J::String(t)), Some(_)) if map.len() <= 3 && !map.contains_key("name") => J::String(t.clone()),
            _ => J::Object(
                map.into_iter()
                    .filter(|(k, _)| k != "logicalType")
                    .map(|(k, v)| (k, without_logical_types(v)))
                    .collect(),
            ),
        },
        J::Array(items) => J::Array(items.into_iter().map(without_logical_types).collect()),
        other => other,
    }
}

static EVENT: LazyLock<Codec> = LazyLock::new(|| Codec::new(EVENT_SCHEMA_JSON));
static HOUR_AGGREGATE: LazyLock<Codec> = LazyLock::new(|| Codec::new(HOUR_AGGREGATE_SCHEMA_JSON));

/// Why a record could not be read. Never retryable: the bytes will not change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not single-object encoded with the expected schema fingerprint")]
    WrongHeader,
    #[error("avro: {0}")]
    Avro(String),
    #[error("trailing bytes after the record")]
    TrailingBytes,
    #[error("field `{0}` missing or of the wrong type")]
    Field(&'static str),
    #[error("invalid value in field `{0}`")]
    Invalid(&'static str),
}

pub fn event_schema() -> &'static Schema {
    &EVENT.schema
}

pub fn hour_aggregate_schema() -> &'static Schema {
    &HOUR_AGGREGATE.schema
}

pub fn encode_event(e: &ClickEvent) -> Vec<u8> {
    let kind = match e.kind {
        EventKind::Click => Value::Enum(0, "CLICK".into()),
        EventKind::Impression => Value::Enum(1, "IMPRESSION".into()),
    };
    EVENT.encode(Value::Record(vec![
        ("timestamp_ms".into(), Value::TimestampMillis(e.timestamp_ms)),
        ("user".into(), Value::String(e.user.as_str().to_owned())),
        ("kind".into(), kind),
        ("accepted_at_ms".into(), Value::TimestampMillis(e.accepted_at_ms)),
    ]))
}

/// # Errors
/// [`DecodeError`] if the bytes are not an `analytics.v1.Event`.
pub fn decode_event(bytes: &[u8]) -> Result<ClickEvent, DecodeError> {
    let mut f = Fields(EVENT.decode(bytes)?);
    let user = match f.take("user")? {
        Value::String(s) => UserId::parse(&s).map_err(|_| DecodeError::Invalid("user"))?,
        _ => return Err(DecodeError::Field("user")),
    };
    let kind = match f.take("kind")? {
        Value::Enum(0, _) => EventKind::Click,
        Value::Enum(1, _) => EventKind::Impression,
        _ => return Err(DecodeError::Field("kind")),
    };
    Ok(ClickEvent { timestamp_ms: f.long("timestamp_ms")?, user, kind, accepted_at_ms: f.long("accepted_at_ms")? })
}

/// One record of the hourly aggregates topic: see `schemas/hour_aggregate.avsc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HourAggregate {
    pub hour: HourStart,
    pub partition: i32,
    pub counts: HourCounts,
    pub input_offset: i64,
    pub watermark_ms: i64,
}

impl HourAggregate {
    /// The record key: one key per (hour, partition), so compaction keeps the latest.
    pub fn key(&self) -> String {
        format!("{}:{}", self.hour.start_ms(), self.partition)
    }
}

pub fn encode_hour_aggregate(a: &HourAggregate) -> Vec<u8> {
    let long = |v: u64| Value::Long(i64::try_from(v).unwrap_or(i64::MAX));
    HOUR_AGGREGATE.encode(Value::Record(vec![
        ("hour_start_ms".into(), Value::TimestampMillis(a.hour.start_ms())),
        ("partition".into(), Value::Int(a.partition)),
        ("unique_users".into(), long(a.counts.unique_users)),
        ("clicks".into(), long(a.counts.clicks)),
        ("impressions".into(), long(a.counts.impressions)),
        ("input_offset".into(), Value::Long(a.input_offset)),
        ("watermark_ms".into(), Value::TimestampMillis(a.watermark_ms)),
    ]))
}

/// # Errors
/// [`DecodeError`] if the bytes are not an `analytics.v1.HourAggregate`.
pub fn decode_hour_aggregate(bytes: &[u8]) -> Result<HourAggregate, DecodeError> {
    let mut f = Fields(HOUR_AGGREGATE.decode(bytes)?);
    let hour = HourStart::from_aligned(f.long("hour_start_ms")?).ok_or(DecodeError::Invalid("hour_start_ms"))?;
    let partition = match f.take("partition")? {
        Value::Int(p) => p,
        _ => return Err(DecodeError::Field("partition")),
    };
    let count = |f: &mut Fields, name| u64::try_from(f.long(name)?).map_err(|_| DecodeError::Invalid(name));
    let counts = HourCounts {
        unique_users: count(&mut f, "unique_users")?,
        clicks: count(&mut f, "clicks")?,
        impressions: count(&mut f, "impressions")?,
    };
    Ok(HourAggregate {
        hour,
        partition,
        counts,
        input_offset: f.long("input_offset")?,
        watermark_ms: f.long("watermark_ms")?,
    })
}

struct Fields(Vec<(String, Value)>);

impl Fields {
    fn take(&mut self, name: &'static str) -> Result<Value, DecodeError> {
        let i = self.0.iter().position(|(n, _)| n == name).ok_or(DecodeError::Field(name))?;
        Ok(std::mem::replace(&mut self.0[i].1, Value::Null))
    }

    fn long(&mut self, name: &'static str) -> Result<i64, DecodeError> {
        match self.take(name)? {
            Value::Long(v) | Value::TimestampMillis(v) => Ok(v),
            _ => Err(DecodeError::Field(name)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::GenericSingleObjectReader;
    use proptest::prelude::*;

    fn event(ts: i64, user: &str, click: bool, acc: i64) -> ClickEvent {
        ClickEvent {
            timestamp_ms: ts,
            user: UserId::parse(user).unwrap(),
            kind: if click { EventKind::Click } else { EventKind::Impression },
            accepted_at_ms: acc,
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
        };
        assert_eq!(decode_event(&encode_hour_aggregate(&agg)), Err(DecodeError::WrongHeader));
        assert_eq!(decode_event(b"garbage"), Err(DecodeError::WrongHeader));
        let mut truncated = encode_event(&event(1, "alice", true, 2));
        truncated.pop();
        assert!(decode_event(&truncated).is_err());
    }

    /// CRC-64-AVRO, written from the specification, independent of apache-avro.
    fn crc64_avro(bytes: &[u8]) -> u64 {
        const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
        let table: Vec<u64> =
            (0..256u64).map(|i| (0..8).fold(i, |fp, _| (fp >> 1) ^ (EMPTY & 0u64.wrapping_sub(fp & 1)))).collect();
        bytes.iter().fold(EMPTY, |fp, b| (fp >> 8) ^ table[((fp ^ u64::from(*b)) & 0xff) as usize])
    }

    #[test]
    fn headers_carry_the_specifications_fingerprint_of_the_canonical_form() {
        // Parsing Canonical Form, written by hand from the .avsc files.
        let event = r#"{"name":"analytics.v1.Event","type":"record","fields":[{"name":"timestamp_ms","type":"long"},{"name":"user","type":"string"},{"name":"kind","type":{"name":"analytics.v1.EventKind","type":"enum","symbols":["CLICK","IMPRESSION"]}},{"name":"accepted_at_ms","type":"long"}]}"#;
        let aggregate = r#"{"name":"analytics.v1.HourAggregate","type":"record","fields":[{"name":"hour_start_ms","type":"long"},{"name":"partition","type":"int"},{"name":"unique_users","type":"long"},{"name":"clicks","type":"long"},{"name":"impressions","type":"long"},{"name":"input_offset","type":"long"},{"name":"watermark_ms","type":"long"}]}"#;
        for (canonical, header) in [(event, &EVENT.header), (aggregate, &HOUR_AGGREGATE.header)] {
            let mut want = vec![0xC3, 0x01];
            want.extend_from_slice(&crc64_avro(canonical.as_bytes()).to_le_bytes());
            assert_eq!(header, &want, "{canonical}");
        }
    }

    proptest! {
        #[test]
        fn events_round_trip(ts in 0i64..i64::MAX, user in "[^\\p{Cc}]{1,64}", click in any::<bool>(), acc in 0i64..i64::MAX) {
            let e = event(ts, &user, click, acc);
            prop_assert_eq!(decode_event(&encode_event(&e)).unwrap(), e);
        }

        #[test]
        fn aggregates_round_trip(h in 0i64..1_000_000, p in 0i32..1024, u in 0u64..1<<40, c in 0u64..1<<40, i in 0u64..1<<40, off in 0i64..i64::MAX, wm in 0i64..i64::MAX) {
            let a = HourAggregate { hour: HourStart::of(h * 3_600_000), partition: p, counts: HourCounts { unique_users: u, clicks: c, impressions: i }, input_offset: off, watermark_ms: wm };
            prop_assert_eq!(decode_hour_aggregate(&encode_hour_aggregate(&a)).unwrap(), a);
        }
    }
}
