//! Avro records on the topics, in single-object encoding: the engine's part,
//! which knows no workload's records.
//!
//! A workload keeps its schemas in `common/schemas/<record>.v<N>.avsc`, every
//! version ever written, oldest first; the newest is the one written now.
//! Every record starts with `C3 01` and the 8-byte CRC-64-AVRO fingerprint of
//! the schema it was written with, so any Avro library holding the `.avsc`
//! files can check and decode it. [`Codec`] looks the writer's schema up by
//! that fingerprint and reads the body with Avro schema resolution into the
//! current schema, so records of an older version stay readable (a field
//! added since then takes its default).
//!
//! A workload maps its records through typed wire structs whose fields carry
//! the schema's field names; serde maps them to and from Avro by name (enum
//! symbols too), so nothing depends on a field's or a symbol's position (see
//! `crate::analytics::wire` and `crate::increments::wire`).

use std::io::Cursor;

use apache_avro::headers::{HeaderBuilder, RabinFingerprintHeader};
use apache_avro::types::Value;
use apache_avro::{from_avro_datum, from_value, write_avro_datum_ref, Schema};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The single-object marker that starts every record.
pub(crate) const MARKER: [u8; 2] = [0xC3, 0x01];
/// Length of the single-object header: the marker and the 8-byte fingerprint.
pub const HEADER_LEN: usize = 10;

/// One version of a schema with its single-object header.
pub(crate) struct Version {
    pub(crate) schema: Schema,
    pub(crate) header: [u8; HEADER_LEN],
}

impl Version {
    pub(crate) fn new(json: &str) -> Self {
        let schema = Schema::parse_str(json).expect("bundled schema is valid Avro");
        // The specification's Parsing Canonical Form drops `logicalType`, but
        // apache-avro 0.20 keeps `{"type":"long"}` where it should write
        // `"long"`, so its fingerprint of a schema with logical types differs
        // from every other library's. Fingerprint the same schema without
        // them: that is the spec's value (checked in the tests).
        let plain = Schema::parse(&without_logical_types(serde_json::from_str(json).expect("bundled schema is JSON")))
            .expect("bundled schema is valid Avro without logical types");
        let header = RabinFingerprintHeader::from_schema(&plain).build_header();
        let header = header.try_into().expect("a single-object header is 10 bytes");
        Version { schema, header }
    }

    /// The header, then the record serialized straight against the schema.
    pub(crate) fn encode_record<T: Serialize>(&self, record: &T) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&self.header);
        write_avro_datum_ref(&self.schema, record, &mut out).expect("wire struct matches its schema");
        out
    }

    /// Encodes a generic value: for tests that write a version this build does not know.
    #[cfg(test)]
    pub(crate) fn encode(&self, value: Value) -> Vec<u8> {
        let body = apache_avro::to_avro_datum(&self.schema, value).expect("value built to match its schema");
        [self.header.as_slice(), &body].concat()
    }
}

/// Every known version of one record's schema; the last is the current one.
///
/// Writes the current version in single-object encoding and reads any known
/// version, resolved into the current one. Build it once (a `LazyLock`
/// static) from `include_str!`ed schemas.
pub struct Codec {
    pub(crate) versions: Vec<Version>,
}

impl Codec {
    /// `versions`: the schema JSON of every version ever written, oldest first.
    ///
    /// # Panics
    /// On a bundled schema that is not valid Avro, or two versions with the
    /// same fingerprint: both are bugs in the build, found by any test.
    pub fn new(versions: &[&str]) -> Self {
        let versions: Vec<Version> = versions.iter().map(|json| Version::new(json)).collect();
        for (i, v) in versions.iter().enumerate() {
            assert!(
                versions[..i].iter().all(|w| w.header != v.header),
                "two bundled schema versions share a fingerprint"
            );
        }
        Codec { versions }
    }

    pub(crate) fn current(&self) -> &Version {
        self.versions.last().expect("at least one schema version")
    }

    /// The current schema: the one [`Codec::encode`] writes.
    pub fn schema(&self) -> &Schema {
        &self.current().schema
    }

    /// The current version's single-object header: `C3 01` and the
    /// little-endian CRC-64-AVRO fingerprint of its canonical form.
    pub fn header(&self) -> [u8; HEADER_LEN] {
        self.current().header
    }

    /// Writes `record` with the current schema.
    ///
    /// # Panics
    /// If the wire struct does not match the schema: a bug, found by the
    /// workload's round-trip tests.
    pub fn encode<T: Serialize>(&self, record: &T) -> Vec<u8> {
        self.current().encode_record(record)
    }

    /// Reads a record written with any known version, resolved into the
    /// current schema. The value is a record of the current schema's fields,
    /// in its order, for [`from_record`] into the current wire struct (which
    /// may borrow its strings from it).
    ///
    /// # Errors
    /// [`DecodeError`] for a missing header, an unknown fingerprint, a body
    /// that is not a whole record of that schema, or trailing bytes.
    pub fn decode(&self, bytes: &[u8]) -> Result<Value, DecodeError> {
        let (header, body) = bytes.split_at_checked(HEADER_LEN).ok_or(DecodeError::WrongHeader)?;
        if header[..2] != MARKER {
            return Err(DecodeError::WrongHeader);
        }
        let writer =
            self.versions.iter().find(|v| v.header == header).ok_or_else(|| {
                DecodeError::UnknownSchema(u64::from_le_bytes(header[2..].try_into().expect("8 bytes")))
            })?;
        let current = self.current();
        // Resolution only for an older version: the current one reads as written.
        let reader = (!std::ptr::eq(writer, current)).then_some(&current.schema);
        let mut input = NoEofAsNull(Cursor::new(body));
        match from_avro_datum(&writer.schema, &mut input, reader).map_err(|e| DecodeError::Avro(e.to_string()))? {
            Value::Record(_) if input.0.position() as usize != body.len() => Err(DecodeError::TrailingBytes),
            record @ Value::Record(_) => Ok(record),
            _ => Err(DecodeError::Avro("not a record".into())),
        }
    }

    /// [`Codec::decode`] then [`from_record`], for wire structs that own their data.
    ///
    /// # Errors
    /// As [`Codec::decode`], or [`DecodeError::Avro`] if the record does not fit `T`.
    pub fn decode_into<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, DecodeError> {
        from_record(&self.decode(bytes)?)
    }
}

/// Maps a record from [`Codec::decode`] into its wire struct by field name;
/// `T` may borrow strings from `value`.
///
/// # Errors
/// [`DecodeError::Avro`] if the record does not fit `T`.
pub fn from_record<'a, T: Deserialize<'a>>(value: &'a Value) -> Result<T, DecodeError> {
    from_value::<T>(value).map_err(|e| DecodeError::Avro(e.to_string()))
}

/// Input that ends with an error rather than `UnexpectedEof`: apache-avro 0.20
/// reads a string, boolean or union cut off by the end of the input as null,
/// so a truncated record would otherwise decode (a cut-off `id` as `None`).
pub(crate) struct NoEofAsNull<R>(pub(crate) R);

impl<R: std::io::Read> std::io::Read for NoEofAsNull<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.0.read(buf)? {
            0 if !buf.is_empty() => Err(std::io::Error::other("the record ends early")),
            n => Ok(n),
        }
    }
}

/// The schema JSON with every `logicalType` attribute removed.
pub(crate) fn without_logical_types(v: serde_json::Value) -> serde_json::Value {
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

/// Why a record could not be read. Never retryable: the bytes will not change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not single-object encoded (no C3 01 marker and 8-byte fingerprint)")]
    WrongHeader,
    /// Single-object encoded, but with a schema this build does not know: a
    /// newer version (deploy a reader that has it) or another record type.
    /// The fingerprint as a number; on the wire it is little-endian.
    #[error("unknown schema: fingerprint {0:#018x} (header C3 01 {hex}) is no known version of this record", hex = fingerprint_hex(*.0))]
    UnknownSchema(u64),
    #[error("avro: {0}")]
    Avro(String),
    #[error("trailing bytes after the record")]
    TrailingBytes,
    #[error("invalid value in field `{0}`")]
    Invalid(&'static str),
}

/// The fingerprint's 8 bytes as they appear in the header (`5E D3 …`).
pub(crate) fn fingerprint_hex(fingerprint: u64) -> String {
    fingerprint.to_le_bytes().iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(" ")
}

/// CRC-64-AVRO, written from the specification, independent of apache-avro:
/// the tests of every workload's records check their headers with it.
#[cfg(test)]
pub(crate) fn crc64_avro(bytes: &[u8]) -> u64 {
    const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
    let table: Vec<u64> =
        (0..256u64).map(|i| (0..8).fold(i, |fp, _| (fp >> 1) ^ (EMPTY & 0u64.wrapping_sub(fp & 1)))).collect();
    bytes.iter().fold(EMPTY, |fp, b| (fp >> 8) ^ table[((fp ^ u64::from(*b)) & 0xff) as usize])
}
