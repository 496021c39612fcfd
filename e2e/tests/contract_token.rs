// tier: unit
//! The read token's pattern in both specs (docs/openapi/command.yaml's
//! `Analytics-Token`, docs/openapi/query.yaml's `after`) accepts exactly what
//! the query's parser accepts. The pattern is generated (see
//! scripts/openapi-token-pattern.py); this keeps it honest. Needs no service:
//! the specs' text and the parser only (`contract.rs` runs schemathesis
//! against the services).

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::engine::progress::ReadToken;
use rand::{Rng, SeedableRng};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf()
}

/// The `pattern` of the component `name` (the first one after `    <name>:`) in a spec.
/// Read from the text: a YAML library reading the whole spec would stop at the sums'
/// example beyond 2^64.
fn pattern_of(spec: &str, name: &str) -> String {
    let path = root().join("docs/openapi").join(spec);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let from = text.find(&format!("\n    {name}:\n")).unwrap_or_else(|| panic!("{name} in {spec}"));
    let line = text[from..].lines().find_map(|l| l.trim().strip_prefix("pattern: ")).expect("a pattern");
    line.trim_matches('\'').to_owned()
}

/// The token pattern of both specs: the query's `after`, the command's `Analytics-Token`.
fn token_patterns() -> [String; 2] {
    [pattern_of("query.yaml", "After"), pattern_of("command.yaml", "AnalyticsToken")]
}

/// Bytes shaped like a token, mostly valid, often not: every field's rule is broken now and then.
fn token_like(rng: &mut rand::rngs::StdRng) -> String {
    let mut bytes = vec![if rng.random_bool(0.9) { 1 } else { rng.random() }];
    let mut integer = |bytes: &mut Vec<u8>, len: usize| {
        let high: u8 = if rng.random_bool(0.8) { rng.random_range(0..0x80) } else { rng.random() };
        bytes.push(high);
        bytes.extend((1..len).map(|_| rng.random::<u8>()));
    };
    integer(&mut bytes, 4);
    integer(&mut bytes, 8);
    const TOPIC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-";
    let len = if rng.random_bool(0.1) { rng.random_range(240..260) } else { rng.random_range(0..40) };
    for _ in 0..len {
        let byte = if rng.random_bool(0.98) { TOPIC[rng.random_range(0..TOPIC.len())] } else { rng.random() };
        bytes.push(byte);
    }
    if rng.random_bool(0.05) {
        bytes.truncate(rng.random_range(0..bytes.len()));
    }
    let mut text = URL_SAFE_NO_PAD.encode(&bytes);
    if rng.random_bool(0.1) && !text.is_empty() {
        let at = rng.random_range(0..text.len());
        let other = ["A", "a", "Q", "_", "-", "=", "+", "/", "%", "AA"][rng.random_range(0..10)];
        text.replace_range(at..at + 1, other);
    }
    text
}

#[test]
fn the_token_pattern_of_both_specs_accepts_exactly_what_the_query_parses() {
    let [after, header] = token_patterns();
    assert_eq!(after, header, "the command's Analytics-Token and the query's `after` are one pattern");
    let pattern = regex::Regex::new(&after).expect("the pattern compiles");
    for token in [
        ReadToken { topic: "analytics.events".into(), partition: 2, offset: 19_345 },
        ReadToken { topic: "a".into(), partition: 0, offset: 0 },
        ReadToken { topic: "x".repeat(249), partition: i32::MAX, offset: i64::MAX },
    ] {
        assert!(pattern.is_match(&token.encode()), "{token:?} is issued by the command");
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(18);
    let (mut valid, mut invalid) = (0, 0);
    for _ in 0..20_000 {
        let text = token_like(&mut rng);
        let parsed = ReadToken::parse(&text).is_ok();
        assert_eq!(pattern.is_match(&text), parsed, "`{text}`: the parser says {parsed}");
        if parsed {
            valid += 1;
        } else {
            invalid += 1;
        }
    }
    assert!(valid > 4_000 && invalid > 4_000, "both sides tried: {valid} valid, {invalid} invalid");
}
