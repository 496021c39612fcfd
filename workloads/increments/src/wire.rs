//! The increments records on the topics, through the engine's Avro [`Codec`]:
//! `increments.v1.Increment` on `increments.events` (command → processor) and
//! `increments.v1.IncrementSum` on `increments.sums` (processor → materializer).
//!
//! As for analytics, each record has one typed wire struct whose fields carry
//! the schema's field names; decoding validates what the writer checked.
//!
//! The sum is an Avro `decimal` (bytes, precision 39, scale 0): the
//! two's-complement big-endian integer the specification defines, which every
//! Avro library reads as an exact decimal. apache-avro 0.20 writes it from
//! `serialize_bytes` and hands it back to `deserialize_bytes`, so
//! [`DecimalI128`] maps it straight to an `i128` with no `BigInt` in between.

use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

use super::event::{IncrementEvent, IncrementKey, IncrementValue};
use super::state::IncrementSum;
use crate::analytics::EventId;
use crate::engine::avro::{from_record, Codec, DecodeError};

/// Every version of `increments.v1.Increment`, oldest first. Only ever append.
pub const INCREMENT_SCHEMA_VERSIONS: &[&str] = crate::engine::avro::versions::INCREMENT_SCHEMA_VERSIONS;
/// Every version of `increments.v1.IncrementSum`, oldest first. Only ever append.
pub const INCREMENT_SUM_SCHEMA_VERSIONS: &[&str] = crate::engine::avro::versions::INCREMENT_SUM_SCHEMA_VERSIONS;

static INCREMENT: LazyLock<Codec> = LazyLock::new(|| Codec::new(INCREMENT_SCHEMA_VERSIONS));
static INCREMENT_SUM: LazyLock<Codec> = LazyLock::new(|| Codec::new(INCREMENT_SUM_SCHEMA_VERSIONS));

/// The codec of `increments.v1.Increment` (schema, header).
pub fn increment_codec() -> &'static Codec {
    &INCREMENT
}

/// The codec of `increments.v1.IncrementSum` (schema, header).
pub fn increment_sum_codec() -> &'static Codec {
    &INCREMENT_SUM
}

/// `increments.v1.Increment` (`increment.v1.avsc`): the wire shape of an [`IncrementEvent`].
#[derive(Debug, Serialize, Deserialize)]
// A schema field missing here fails decoding (and the round-trip tests) instead of being dropped.
#[serde(deny_unknown_fields)]
struct IncrementRecord<'a> {
    key: &'a str,
    value: i64,
    accepted_at_ms: i64,
    id: Option<&'a str>,
}

/// `increments.v1.IncrementSum` (`increment_sum.v1.avsc`): the wire shape of an [`IncrementSum`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IncrementSumRecord<'a> {
    key: &'a str,
    sum: DecimalI128,
    partition: i32,
    input_offset: i64,
    watermark_ms: i64,
}

/// An integer as the bytes of an Avro `decimal` of scale 0: two's complement,
/// big-endian, as few bytes as hold it (the specification's form). Reading
/// takes any length whose extra leading bytes are sign extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DecimalI128(i128);

impl Serialize for DecimalI128 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let bytes = self.0.to_be_bytes();
        // Drop a leading byte while it only repeats the sign of the next one.
        let redundant =
            bytes.windows(2).take_while(|w| (w[0] == 0x00 && w[1] < 0x80) || (w[0] == 0xFF && w[1] >= 0x80)).count();
        s.serialize_bytes(&bytes[redundant..])
    }
}

impl<'de> Deserialize<'de> for DecimalI128 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct BytesVisitor;
        impl serde::de::Visitor<'_> for BytesVisitor {
            type Value = DecimalI128;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("the bytes of a decimal that fits in 128 bits")
            }

            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<DecimalI128, E> {
                let Some(first) = v.first() else {
                    return Err(E::custom("a decimal of zero bytes"));
                };
                let fill = if first & 0x80 == 0 { 0x00 } else { 0xFF };
                let extra = v.len().saturating_sub(16);
                // Longer than 16 bytes is fine only if the extra bytes (and the
                // top bit of the next) are sign extension.
                if v[..extra].iter().any(|b| *b != fill) || (extra > 0 && (v[extra] ^ fill) & 0x80 != 0) {
                    return Err(E::custom("a decimal beyond 128 bits"));
                }
                let mut buf = [fill; 16];
                buf[16 - (v.len() - extra)..].copy_from_slice(&v[extra..]);
                Ok(DecimalI128(i128::from_be_bytes(buf)))
            }
        }
        d.deserialize_bytes(BytesVisitor)
    }
}

fn key_str(buf: &[u8; super::event::KEY_LEN]) -> &str {
    std::str::from_utf8(buf).expect("a canonical key is ASCII")
}

/// Encodes with the current `increments.v1.Increment` schema.
pub fn encode_increment(e: &IncrementEvent) -> Vec<u8> {
    let key = e.key.canonical();
    INCREMENT.encode(&IncrementRecord {
        key: key_str(&key),
        value: e.value.get(),
        accepted_at_ms: e.accepted_at_ms,
        id: e.id.as_deref(),
    })
}

/// # Errors
/// [`DecodeError`] if the bytes are not an `increments.v1.Increment` of a
/// known version, or carry a key that is not a canonical UUID, a value below
/// 1 or an invalid id: what the command refuses is refused here too.
pub fn decode_increment(bytes: &[u8]) -> Result<IncrementEvent, DecodeError> {
    let value = INCREMENT.decode(bytes)?;
    let r: IncrementRecord<'_> = from_record(&value)?;
    Ok(IncrementEvent {
        key: IncrementKey::parse_canonical(r.key).ok_or(DecodeError::Invalid("key"))?,
        value: IncrementValue::new(r.value).ok_or(DecodeError::Invalid("value"))?,
        accepted_at_ms: r.accepted_at_ms,
        id: r
            .id
            .map(|id| EventId::parse(id).map(EventId::into_string).map_err(|_| DecodeError::Invalid("id")))
            .transpose()?,
    })
}

/// Encodes with the current `increments.v1.IncrementSum` schema.
pub fn encode_increment_sum(s: &IncrementSum) -> Vec<u8> {
    let key = s.key.canonical();
    INCREMENT_SUM.encode(&IncrementSumRecord {
        key: key_str(&key),
        sum: DecimalI128(s.sum),
        partition: s.partition,
        input_offset: s.input_offset,
        watermark_ms: s.watermark_ms,
    })
}

/// # Errors
/// [`DecodeError`] if the bytes are not an `increments.v1.IncrementSum` of a
/// known version, or carry a key that is not a canonical UUID or a sum below
/// 1 or beyond 128 bits.
pub fn decode_increment_sum(bytes: &[u8]) -> Result<IncrementSum, DecodeError> {
    let value = INCREMENT_SUM.decode(bytes)?;
    let r: IncrementSumRecord<'_> = from_record(&value)?;
    if r.sum.0 < 1 {
        return Err(DecodeError::Invalid("sum"));
    }
    Ok(IncrementSum {
        key: IncrementKey::parse_canonical(r.key).ok_or(DecodeError::Invalid("key"))?,
        sum: r.sum.0,
        partition: r.partition,
        input_offset: r.input_offset,
        watermark_ms: r.watermark_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::avro::{crc64_avro, HEADER_LEN};
    use crate::increments::event::MAX_VALUE;
    use apache_avro::types::Value;
    use proptest::prelude::*;

    const KEY: &str = "0b3c8f2e-7d41-4c55-9a1e-5f6b7c8d9e0f";

    fn event(value: i64, id: Option<&str>) -> IncrementEvent {
        IncrementEvent {
            key: IncrementKey::parse(KEY).unwrap(),
            value: IncrementValue::new(value).unwrap(),
            accepted_at_ms: 1_795_511_234_567,
            id: id.map(Into::into),
        }
    }

    fn sum(sum: i128) -> IncrementSum {
        IncrementSum {
            key: IncrementKey::parse(KEY).unwrap(),
            sum,
            partition: 3,
            input_offset: 12_345,
            watermark_ms: 1_900_000_000_000,
        }
    }

    #[test]
    fn headers_carry_the_specifications_fingerprint() {
        // Parsing Canonical Form, written by hand from the .avsc files: the
        // logical types (timestamp-millis, decimal) and their attributes drop out.
        let increment = r#"{"name":"increments.v1.Increment","type":"record","fields":[{"name":"key","type":"string"},{"name":"value","type":"long"},{"name":"accepted_at_ms","type":"long"},{"name":"id","type":["null","string"]}]}"#;
        let sum_v1 = r#"{"name":"increments.v1.IncrementSum","type":"record","fields":[{"name":"key","type":"string"},{"name":"sum","type":"bytes"},{"name":"partition","type":"int"},{"name":"input_offset","type":"long"},{"name":"watermark_ms","type":"long"}]}"#;
        for (canonical, codec) in [(increment, increment_codec()), (sum_v1, increment_sum_codec())] {
            let mut want = vec![0xC3, 0x01];
            want.extend_from_slice(&crc64_avro(canonical.as_bytes()).to_le_bytes());
            assert_eq!(codec.header().as_slice(), want, "{canonical}");
        }
        let bytes = encode_increment(&event(1, None));
        assert_eq!(bytes[..HEADER_LEN], increment_codec().header());
        let bytes = encode_increment_sum(&sum(1));
        assert_eq!(bytes[..HEADER_LEN], increment_sum_codec().header());
    }

    #[test]
    fn increments_round_trip() {
        for e in [event(1, None), event(MAX_VALUE, Some("0b3c8f2e-7d41_X"))] {
            assert_eq!(decode_increment(&encode_increment(&e)), Ok(e.clone()));
        }
        // The key is written in canonical form, whatever case it came in.
        let upper = IncrementEvent { key: IncrementKey::parse(&KEY.to_uppercase()).unwrap(), ..event(1, None) };
        let bytes = encode_increment(&upper);
        assert!(bytes.windows(KEY.len()).any(|w| w == KEY.as_bytes()));
    }

    #[test]
    fn sums_beyond_a_long_round_trip_exactly() {
        for s in [
            1,
            127,
            128,
            255,
            256,
            i128::from(i64::MAX),
            i128::from(i64::MAX) + 1,
            1 << 70,
            (1 << 103) + 12_345,
            i128::MAX,
        ] {
            assert_eq!(decode_increment_sum(&encode_increment_sum(&sum(s))), Ok(sum(s)), "{s}");
        }
        // The decimal is the specification's minimal two's complement: 2^63 is 9 bytes.
        let bytes = encode_increment_sum(&sum(1 << 63));
        let body = &bytes[HEADER_LEN..];
        // key (length 36 as zigzag 0x48, 36 bytes), then the sum's length (9 → 0x12) and bytes.
        assert_eq!(body[..1], [0x48]);
        assert_eq!(body[37..47], [0x12, 0x00, 0x80, 0, 0, 0, 0, 0, 0, 0]);
    }

    /// Writes a record through the generic value path (as another library would).
    fn encode_value(codec: &Codec, fields: Vec<(&str, Value)>) -> Vec<u8> {
        let record = Value::Record(fields.into_iter().map(|(n, v)| (n.to_owned(), v)).collect());
        let body = apache_avro::to_avro_datum(codec.schema(), record).unwrap();
        [codec.header().as_slice(), &body].concat()
    }

    #[test]
    fn decoding_validates_what_the_command_checked() {
        let increment = |key: &str, value: i64, id: Option<&str>| {
            let id = match id {
                None => Value::Union(0, Box::new(Value::Null)),
                Some(id) => Value::Union(1, Box::new(Value::String(id.into()))),
            };
            encode_value(
                increment_codec(),
                vec![
                    ("key", Value::String(key.into())),
                    ("value", Value::Long(value)),
                    ("accepted_at_ms", Value::TimestampMillis(0)),
                    ("id", id),
                ],
            )
        };
        assert!(decode_increment(&increment(KEY, 1, None)).is_ok());
        assert_eq!(decode_increment(&increment(&KEY.to_uppercase(), 1, None)), Err(DecodeError::Invalid("key")));
        assert_eq!(decode_increment(&increment("not a uuid", 1, None)), Err(DecodeError::Invalid("key")));
        assert_eq!(decode_increment(&increment(KEY, 0, None)), Err(DecodeError::Invalid("value")));
        assert_eq!(decode_increment(&increment(KEY, -5, None)), Err(DecodeError::Invalid("value")));
        assert_eq!(decode_increment(&increment(KEY, 1, Some("a b"))), Err(DecodeError::Invalid("id")));

        let sum_record = |key: &str, bytes: Vec<u8>| {
            encode_value(
                increment_sum_codec(),
                vec![
                    ("key", Value::String(key.into())),
                    ("sum", Value::Decimal(apache_avro::Decimal::from(bytes))),
                    ("partition", Value::Int(0)),
                    ("input_offset", Value::Long(0)),
                    ("watermark_ms", Value::TimestampMillis(0)),
                ],
            )
        };
        assert_eq!(decode_increment_sum(&sum_record(KEY, vec![0x05])).map(|s| s.sum), Ok(5));
        // Sign-extended beyond 16 bytes by another writer: still the same number.
        let mut padded = vec![0x00; 20];
        padded[19] = 0x07;
        assert_eq!(decode_increment_sum(&sum_record(KEY, padded)).map(|s| s.sum), Ok(7));
        assert_eq!(decode_increment_sum(&sum_record("x", vec![0x05])), Err(DecodeError::Invalid("key")));
        assert_eq!(decode_increment_sum(&sum_record(KEY, vec![0x00])), Err(DecodeError::Invalid("sum")));
        assert_eq!(decode_increment_sum(&sum_record(KEY, vec![0xFF])), Err(DecodeError::Invalid("sum")));
        let mut beyond = vec![0x00; 17];
        beyond[0] = 0x01;
        assert!(matches!(decode_increment_sum(&sum_record(KEY, beyond)), Err(DecodeError::Avro(_))));
        // 2^127 as 17 bytes: the top bit of the 16 kept bytes would turn it negative.
        let mut just_beyond = vec![0x00; 17];
        just_beyond[1] = 0x80;
        assert!(matches!(decode_increment_sum(&sum_record(KEY, just_beyond)), Err(DecodeError::Avro(_))));
    }

    #[test]
    fn truncated_and_foreign_bytes_are_refused() {
        for whole in [encode_increment(&event(1, None)), encode_increment(&event(MAX_VALUE, Some("abc")))] {
            for len in 0..whole.len() {
                assert!(decode_increment(&whole[..len]).is_err(), "{len} of {} bytes", whole.len());
            }
            let mut longer = whole.clone();
            longer.push(0);
            assert_eq!(decode_increment(&longer), Err(DecodeError::TrailingBytes));
        }
        let whole = encode_increment_sum(&sum(1 << 70));
        for len in 0..whole.len() {
            assert!(decode_increment_sum(&whole[..len]).is_err(), "{len} of {} bytes", whole.len());
        }
        assert_eq!(decode_increment(b"garbage and more"), Err(DecodeError::WrongHeader));
        assert_eq!(decode_increment(&[]), Err(DecodeError::WrongHeader));
        // Each topic's records are refused by the other's decoder, and analytics' too.
        assert!(matches!(decode_increment(&encode_increment_sum(&sum(1))), Err(DecodeError::UnknownSchema(_))));
        assert!(matches!(decode_increment_sum(&encode_increment(&event(1, None))), Err(DecodeError::UnknownSchema(_))));
        let mut garbage_body = increment_codec().header().to_vec();
        garbage_body.extend_from_slice(&[0xFF; 12]);
        assert!(decode_increment(&garbage_body).is_err());
    }

    proptest! {
        #[test]
        fn any_increment_round_trips(bytes in any::<u128>(), value in 1i64..=MAX_VALUE, at in any::<i64>(), id in proptest::option::of("[A-Za-z0-9_-]{1,128}")) {
            let e = IncrementEvent { key: IncrementKey::from_uuid(uuid::Uuid::from_u128(bytes)), value: IncrementValue::new(value).unwrap(), accepted_at_ms: at, id };
            prop_assert_eq!(decode_increment(&encode_increment(&e)), Ok(e));
        }

        #[test]
        fn any_sum_round_trips(bytes in any::<u128>(), s in 1i128..=i128::MAX, partition in 0i32..1024, offset in 0i64..i64::MAX) {
            let s = IncrementSum { key: IncrementKey::from_uuid(uuid::Uuid::from_u128(bytes)), sum: s, partition, input_offset: offset, watermark_ms: offset };
            prop_assert_eq!(decode_increment_sum(&encode_increment_sum(&s)), Ok(s));
        }

        #[test]
        fn the_decimal_is_minimal_twos_complement(n in any::<i128>()) {
            let mut out = Vec::new();
            let value = apache_avro::to_value(DecimalI128(n)).unwrap();
            if let Value::Bytes(b) = value { out = b; }
            let big = apache_avro::Decimal::from(out.clone());
            prop_assert_eq!(Vec::<u8>::try_from(&big).unwrap(), out.clone());
            // Minimal: dropping the first byte would change the number.
            prop_assert!(out.len() == 1 || !((out[0] == 0 && out[1] < 0x80) || (out[0] == 0xFF && out[1] >= 0x80)));
            let mut buf = [if out[0] >= 0x80 { 0xFF } else { 0 }; 16];
            buf[16 - out.len()..].copy_from_slice(&out);
            prop_assert_eq!(i128::from_be_bytes(buf), n);
        }
    }
}
