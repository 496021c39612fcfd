//! The accepted increment as it travels on `increments.events`, and its parts.

use std::fmt;

use uuid::Uuid;

use super::request::IncrementReject;

/// Length of a key in its canonical form: lowercase hyphenated, `8-4-4-4-12` hex digits.
pub const KEY_LEN: usize = 36;

/// The counter a value is added to: a UUID, held as its 16 bytes.
///
/// Accepted only in the 36-character hyphenated form, in any case
/// (`0B3C8F2E-7D41-4C55-9A1E-5F6B7C8D9E0F`); written everywhere (partition
/// key, Avro, Redis, PostgreSQL, JSON) in the canonical lowercase form. The
/// other forms the `uuid` crate reads (32 bare hex digits, `{…}`,
/// `urn:uuid:…`) are refused so that one counter has one spelling at the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IncrementKey(Uuid);

impl IncrementKey {
    /// Parses a key as a client sends it: hyphenated, any case.
    ///
    /// # Errors
    /// [`IncrementReject::KeyNotUuid`] for anything else.
    pub fn parse(raw: &str) -> Result<Self, IncrementReject> {
        // With exactly 36 bytes, `Uuid::try_parse` accepts only the hyphenated form.
        if raw.len() != KEY_LEN {
            return Err(IncrementReject::KeyNotUuid);
        }
        Uuid::try_parse(raw).map(IncrementKey).map_err(|_| IncrementReject::KeyNotUuid)
    }

    /// Parses a key that must already be canonical (lowercase): for records
    /// read back from the log or the read model, which only hold canonical keys.
    pub fn parse_canonical(raw: &str) -> Option<Self> {
        IncrementKey::parse(raw).ok().filter(|k| k.canonical() == raw.as_bytes())
    }

    pub fn from_uuid(uuid: Uuid) -> Self {
        IncrementKey(uuid)
    }

    pub fn uuid(&self) -> Uuid {
        self.0
    }

    /// The canonical form's ASCII bytes: the partition key on the topics and
    /// the key in Redis and PostgreSQL.
    pub fn canonical(&self) -> [u8; KEY_LEN] {
        let mut buf = [0u8; KEY_LEN];
        self.0.hyphenated().encode_lower(&mut buf);
        buf
    }
}

/// The canonical form.
impl fmt::Display for IncrementKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

/// Serialized as its canonical string; deserialized from a canonical string
/// only (what this service writes), so a hand-edited key cannot split a counter.
impl serde::Serialize for IncrementKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let buf = self.canonical();
        s.serialize_str(std::str::from_utf8(&buf).expect("a hyphenated UUID is ASCII"))
    }
}

impl<'de> serde::Deserialize<'de> for IncrementKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        IncrementKey::parse_canonical(&raw)
            .ok_or_else(|| serde::de::Error::custom("key is not a canonical (lowercase hyphenated) UUID"))
    }
}

/// Largest accepted increment: `i64::MAX`, so it fits an Avro `long`.
pub const MAX_VALUE: i64 = i64::MAX;

/// An amount to add: 1 ≤ value ≤ [`MAX_VALUE`] (2^63−1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IncrementValue(i64);

impl IncrementValue {
    /// `None` below 1.
    pub fn new(value: i64) -> Option<Self> {
        (value >= 1).then_some(IncrementValue(value))
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

/// One accepted increment, as it travels on the events topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncrementEvent {
    pub key: IncrementKey,
    pub value: IncrementValue,
    /// When the command accepted it; the deduplication window is measured on
    /// this, never on a downstream clock, so a replay decides the same way.
    pub accepted_at_ms: i64,
    /// The client's id for deduplication, checked by
    /// [`EventId::parse`](common::engine::request::EventId::parse); `None` when it sent none.
    pub id: Option<String>,
}

impl IncrementEvent {
    /// The record key on `increments.events`: the canonical key, so every
    /// increment of a counter lands in the same partition, in order.
    pub fn partition_key(&self) -> [u8; KEY_LEN] {
        self.key.canonical()
    }

    /// The 64-bit key the id is deduplicated by, if it has one; see [`id_hash`].
    pub fn id_hash(&self) -> Option<u64> {
        self.id.as_deref().map(|id| id_hash(&self.key, id))
    }
}

/// The 64-bit key an increment id is deduplicated by: the counter and the id
/// together (ids are the client's, unique per key), built as the analytics
/// workload's `event_id_hash` builds it for a
/// user: XXH3-64 of the canonical key, a 0xFF separator (never in ASCII, so
/// no two pairs collide by concatenation) and the id's bytes. Part of the
/// data format: held ids are checkpointed by this hash.
pub fn id_hash(key: &IncrementKey, id: &str) -> u64 {
    let mut bytes = Vec::with_capacity(KEY_LEN + 1 + id.len());
    bytes.extend_from_slice(&key.canonical());
    bytes.push(0xFF);
    bytes.extend_from_slice(id.as_bytes());
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOWER: &str = "0b3c8f2e-7d41-4c55-9a1e-5f6b7c8d9e0f";

    #[test]
    fn keys_are_hyphenated_uuids_in_any_case_written_lowercase() {
        let upper = IncrementKey::parse(&LOWER.to_uppercase()).unwrap();
        let mixed = IncrementKey::parse("0B3c8F2e-7d41-4C55-9a1E-5f6b7c8d9e0F").unwrap();
        assert_eq!(upper, IncrementKey::parse(LOWER).unwrap());
        assert_eq!(upper, mixed);
        assert_eq!(upper.to_string(), LOWER);
        assert_eq!(&upper.canonical(), LOWER.as_bytes());
        for bad in [
            "",
            "0b3c8f2e7d414c559a1e5f6b7c8d9e0f",
            "{0b3c8f2e-7d41-4c55-9a1e-5f6b7c8d9e0f}",
            "urn:uuid:0b3c8f2e-7d41-4c55-9a1e-5f6b7c8d9e0f",
            "0b3c8f2e-7d41-4c55-9a1e-5f6b7c8d9e0g",
            "0b3c8f2e-7d41-4c55-9a1e-5f6b7c8d9e0",
            "0b3c8f2e-7d41-4c55-9a1e-5f6b7c8d9e0ff",
            "0b3c8f2e_7d41-4c55-9a1e-5f6b7c8d9e0f",
            " b3c8f2e-7d41-4c55-9a1e-5f6b7c8d9e0f",
            "0b3c8f2e-7d41-4c55-9a1e-5f6b7c8d9é",
        ] {
            assert_eq!(IncrementKey::parse(bad), Err(IncrementReject::KeyNotUuid), "{bad:?}");
        }
        assert!(IncrementKey::parse_canonical(LOWER).is_some());
        assert!(IncrementKey::parse_canonical(&LOWER.to_uppercase()).is_none());
    }

    #[test]
    fn values_start_at_one() {
        assert_eq!(IncrementValue::new(0), None);
        assert_eq!(IncrementValue::new(-1), None);
        assert_eq!(IncrementValue::new(1).map(IncrementValue::get), Some(1));
        assert_eq!(IncrementValue::new(MAX_VALUE).map(IncrementValue::get), Some(i64::MAX));
    }

    #[test]
    fn id_hash_is_per_key_and_stable() {
        let a = IncrementKey::parse(LOWER).unwrap();
        let b = IncrementKey::parse("00000000-0000-0000-0000-000000000000").unwrap();
        assert_eq!(id_hash(&a, "x"), id_hash(&a, "x"));
        assert_ne!(id_hash(&a, "x"), id_hash(&b, "x"));
        assert_ne!(id_hash(&a, "x"), id_hash(&a, "y"));
        // Part of the data format: checkpointed ids are these hashes.
        let mut bytes = LOWER.as_bytes().to_vec();
        bytes.extend_from_slice(b"\xFFx");
        assert_eq!(id_hash(&a, "x"), xxhash_rust::xxh3::xxh3_64(&bytes));
    }

    #[test]
    fn keys_serialize_as_canonical_strings_and_refuse_other_spellings() {
        let k = IncrementKey::parse(LOWER).unwrap();
        assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{LOWER}\""));
        assert_eq!(serde_json::from_str::<IncrementKey>(&format!("\"{LOWER}\"")).unwrap(), k);
        assert!(serde_json::from_str::<IncrementKey>(&format!("\"{}\"", LOWER.to_uppercase())).is_err());
    }
}
