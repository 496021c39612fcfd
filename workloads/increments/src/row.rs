//! The read model's row: one key and its exact sum, as the materializer
//! writes it (Redis hash, PostgreSQL `increments(key uuid, value numeric)`)
//! and as `GET /increment/{key}` answers it.

use serde::{Deserialize, Serialize};

use super::event::IncrementKey;

/// One row of the read model, and the body of `GET /increment/{key}`:
/// `{"key": "<uuid>", "value": <sum>}`.
///
/// The sum is written as a JSON number with every digit, even past 2^63
/// (serde_json writes and reads `i128` exactly; no `arbitrary_precision`,
/// which would change every other JSON number in the workspace). PostgreSQL
/// takes it as NUMERIC from its decimal text (`i128`'s `Display`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncrementRow {
    pub key: IncrementKey,
    #[serde(rename = "value")]
    pub sum: i128,
}

impl IncrementRow {
    /// The `GET /increment/{key}` body.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a key and an integer always serialize")
    }

    /// Reads a `GET /increment/{key}` body (tests, benchmarks, clients).
    ///
    /// # Errors
    /// If the body is not exactly such an object with a canonical key.
    pub fn from_json(body: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0b3c8f2e-7d41-4c55-9a1e-5f6b7c8d9e0f";

    #[test]
    fn the_answer_writes_the_sum_as_an_exact_json_number() {
        let key = IncrementKey::parse(&KEY.to_uppercase()).unwrap();
        let row = IncrementRow { key, sum: 1 << 70 };
        let json = String::from_utf8(row.to_json()).unwrap();
        assert_eq!(json, format!(r#"{{"key":"{KEY}","value":1180591620717411303424}}"#));
        assert_eq!(IncrementRow::from_json(json.as_bytes()).unwrap(), row);
        // Any JSON reader sees a number, not a string.
        let generic: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert!(generic["value"].is_number());
        for sum in [1, i128::from(i64::MAX), i128::from(u64::MAX) + 1, i128::MAX] {
            let row = IncrementRow { key, sum };
            assert_eq!(IncrementRow::from_json(&row.to_json()).unwrap(), row);
        }
    }

    #[test]
    fn reading_an_answer_is_strict() {
        assert!(IncrementRow::from_json(format!(r#"{{"key":"{KEY}","value":1.0}}"#).as_bytes()).is_err());
        assert!(IncrementRow::from_json(format!(r#"{{"key":"{KEY}","value":"1"}}"#).as_bytes()).is_err());
        assert!(IncrementRow::from_json(format!(r#"{{"key":"{KEY}","value":1,"x":1}}"#).as_bytes()).is_err());
        let upper = KEY.to_uppercase();
        assert!(IncrementRow::from_json(format!(r#"{{"key":"{upper}","value":1}}"#).as_bytes()).is_err());
    }
}
