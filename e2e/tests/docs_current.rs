// tier: unit
//! docs/configuration.md is generated from the binaries' `--help`; this test
//! fails when a flag, environment variable or default changed without the
//! document being regenerated.

use std::path::Path;
use std::process::Command;

use e2e::bin_dir;

#[test]
fn configuration_doc_matches_the_binaries_help() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf();
    let bins = bin_dir();
    for service in ["command", "processor", "materializer", "query"] {
        let bin = bins.join(service);
        assert!(bin.exists(), "{} is missing: build the binaries first (cargo build --bins)", bin.display());
    }
    let out = Command::new("bash")
        .arg(root.join("scripts/gen-operations-doc.sh"))
        .arg("--stdout")
        .env("ANALYTICS_BIN_DIR", &bins)
        .current_dir(&root)
        .output()
        .expect("running bash");
    assert!(out.status.success(), "scripts/gen-operations-doc.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    let generated = String::from_utf8(out.stdout).expect("the generated document is UTF-8");
    let committed = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap_or_default();
    if generated != committed {
        let first_difference = generated
            .lines()
            .zip(committed.lines())
            .position(|(g, c)| g != c)
            .unwrap_or_else(|| generated.lines().count().min(committed.lines().count()));
        panic!(
            "docs/configuration.md is stale: run scripts/gen-operations-doc.sh (first difference at line {})",
            first_difference + 1
        );
    }
}

/// An increment's id is held for a bounded window (the processor forgets it
/// once the hour of the first attempt closes): the docs must say so, with the
/// default `--horizon-past`, not promise that any number of retries adds once.
#[test]
fn the_increment_id_window_is_stated_as_the_processor_holds_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf();
    let days = common::engine::horizon::Horizon::default().past.as_secs() / 86_400;
    let window = format!("within `--horizon-past` ({days} days");
    for (doc, from, to) in [
        ("docs/api.md", "## POST /increment", "## GET /increment"),
        ("docs/openapi/command.yaml", "  /increment:", "  /health:"),
    ] {
        let text = std::fs::read_to_string(root.join(doc)).expect("the document");
        let start = text.find(from).unwrap_or_else(|| panic!("{from} in {doc}"));
        let end = start + text[start..].find(to).unwrap_or_else(|| panic!("{to} in {doc}"));
        let flat = text[start..end].split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(!flat.contains("however often"), "{doc} promises more than the id window");
        assert!(flat.contains(&window), "{doc} states the increment id window: `{window}`");
    }
}
