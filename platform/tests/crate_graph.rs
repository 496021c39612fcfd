//! The engine/workload seam is a fact of the crate graph: no engine crate
//! depends on a workload crate (a package under `workloads/`), as a normal,
//! build or dev dependency, directly or through another workspace crate (such
//! as this one). Reads `cargo metadata`; needs no service.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The engine: the crates that must never name a workload.
const ENGINE: &[&str] = &["common", "command", "processor", "materializer", "query"];

struct Package {
    /// Its workspace dependencies: (package name, kind: "normal", "build" or "dev").
    deps: Vec<(String, String)>,
    is_workload: bool,
}

fn workspace() -> BTreeMap<String, Package> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline", "--manifest-path"])
        .arg(&manifest)
        .output()
        .expect("cargo runs");
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cargo metadata is JSON");
    let root = Path::new(meta["workspace_root"].as_str().expect("workspace_root"));
    let workloads = root.join("workloads");
    let packages = meta["packages"].as_array().expect("packages");
    let names: BTreeSet<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    packages
        .iter()
        .map(|p| {
            let name = p["name"].as_str().expect("name").to_owned();
            let manifest = Path::new(p["manifest_path"].as_str().expect("manifest_path"));
            let deps = p["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                .filter_map(|d| {
                    let dep = d["name"].as_str()?;
                    let kind = d["kind"].as_str().unwrap_or("normal");
                    names.contains(dep).then(|| (dep.to_owned(), kind.to_owned()))
                })
                .collect();
            (name, Package { deps, is_workload: manifest.starts_with(&workloads) })
        })
        .collect()
}

/// Whether `name` is a workload or pulls one in when built (normal and build dependencies).
fn reaches_a_workload(ws: &BTreeMap<String, Package>, name: &str, seen: &mut BTreeSet<String>) -> bool {
    if !seen.insert(name.to_owned()) {
        return false;
    }
    let Some(p) = ws.get(name) else { return false };
    p.is_workload || p.deps.iter().any(|(d, kind)| kind != "dev" && reaches_a_workload(ws, d, seen))
}

/// Every edge from an engine crate to a crate that is or reaches a workload.
fn violations(ws: &BTreeMap<String, Package>) -> Vec<String> {
    ENGINE
        .iter()
        .flat_map(|engine| {
            let p = ws.get(*engine).unwrap_or_else(|| panic!("engine crate {engine} is in the workspace"));
            p.deps.iter().filter(|(d, _)| reaches_a_workload(ws, d, &mut BTreeSet::new())).map(move |(d, kind)| {
                format!("{engine} depends on {d} ({kind}), which is or pulls in a workload crate")
            })
        })
        .collect()
}

#[test]
fn no_engine_crate_depends_on_a_workload() {
    let ws = workspace();
    let workloads: Vec<&String> = ws.iter().filter(|(_, p)| p.is_workload).map(|(n, _)| n).collect();
    assert!(workloads.len() >= 2, "the workload crates are found under workloads/: {workloads:?}");
    let bad = violations(&ws);
    assert!(bad.is_empty(), "the engine must not name a workload:\n{}", bad.join("\n"));
}

#[test]
fn a_dev_dependency_on_a_workload_or_the_platform_counts() {
    let mut ws = workspace();
    ws.get_mut("query").expect("query").deps.push(("platform".into(), "dev".into()));
    ws.get_mut("common").expect("common").deps.push(("increments".into(), "build".into()));
    let bad = violations(&ws);
    assert!(bad.iter().any(|v| v.starts_with("query depends on platform (dev)")), "{bad:?}");
    assert!(bad.iter().any(|v| v.starts_with("common depends on increments (build)")), "{bad:?}");
}
