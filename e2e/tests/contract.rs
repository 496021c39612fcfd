//! The API contract, checked: docs/openapi/command.yaml and
//! docs/openapi/query.yaml against the services they describe.
//!
//! - The read token's pattern in both specs accepts exactly what the query's
//!   parser accepts: `contract_token.rs` (unit tier, no service).
//! - `schemathesis run --checks all` of each spec against an isolated stack
//!   (the real broker, Redis and PostgreSQL) finds nothing, in the default
//!   deployment and with every optional edge check on (write and read
//!   tokens, CORS). About a minute and a quarter in all. Schemathesis is
//!   pip-installed, pinned, in `run/venv-schemathesis` (`scripts/stack.sh
//!   schemathesis-deps`, run by `make test`); its settings and hooks are in
//!   `e2e/contract/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::test_util::request;
use e2e::Stack;

/// Generated requests per operation and phase: enough to find a mismatch, about a minute in all.
const MAX_EXAMPLES: &str = "60";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf()
}

/// The pinned schemathesis of `run/venv-schemathesis`, or `SCHEMATHESIS`.
fn schemathesis() -> PathBuf {
    let path = std::env::var_os("SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("run/venv-schemathesis/bin/schemathesis"));
    assert!(path.exists(), "{} is missing: run `scripts/stack.sh schemathesis-deps` (make test does)", path.display());
    path
}

/// One schemathesis run: a spec, its settings in `e2e/contract/`, the service's URL.
struct Run<'a> {
    spec: &'a str,
    config: &'a str,
    url: String,
    /// Extra request headers (the bearer token, a CORS origin).
    headers: &'a [(&'a str, &'a str)],
    max_examples: &'a str,
    /// Checks left out of `--checks all` (the command line overrides the config file's `enabled = false`).
    excluded_checks: &'a [&'a str],
}

/// Starts `schemathesis run --checks all` of one spec; `token` is a real write's read token.
fn run_schemathesis(run: Run<'_>, token: &str) -> std::thread::JoinHandle<Output> {
    let mut cmd = Command::new(schemathesis());
    // In e2e/contract, where the settings name their hooks; the report goes to stdout, and
    // nothing is stored (no example database, no report files).
    cmd.current_dir(root().join("e2e/contract"))
        .env("CONTRACT_TOKEN", token)
        .arg("--config-file")
        .arg(root().join("e2e/contract").join(run.config))
        .arg("--no-color")
        .arg("run")
        .arg(root().join("docs/openapi").join(run.spec))
        .args(["--url", &run.url, "--checks", "all", "--max-examples", run.max_examples])
        // One worker: Python 3.11's parser is not safe to use from several threads, which
        // schemathesis's workers do (an `AST constructor recursion depth mismatch` error).
        .args(["--workers", "1", "--generation-database", "none", "--request-timeout", "15"]);
    if !run.excluded_checks.is_empty() {
        cmd.arg("--exclude-checks").arg(run.excluded_checks.join(","));
    }
    for (name, value) in run.headers {
        cmd.arg("-H").arg(format!("{name}: {value}"));
    }
    std::thread::spawn(move || cmd.output().expect("schemathesis runs"))
}

/// Starts a stack with `env`, makes a real write (the hooks send its token as `after` for
/// half of the valid tokens) and runs schemathesis of both specs against it at once.
async fn check_both_specs(
    env: &[(&str, &str)],
    command_headers: &[(&str, &str)],
    query_headers: &[(&str, &str)],
    max_examples: &str,
) {
    let mut stack = Stack::new();
    for (key, value) in env {
        stack.env(key, value);
    }
    stack.start_all().await;
    let (command, query) = (stack.addr("command"), stack.addr("query"));

    let path = format!("/analytics?timestamp={}&user=contract&click", common::now_ms());
    let posted = request(command, "POST", &path, command_headers).await.expect("the command answers");
    assert_eq!(posted.status, 204, "{posted:?}");
    let token = posted.header("analytics-token").expect("a read token").to_owned();
    let read = format!("/analytics?timestamp={}&after={token}&wait_ms=30000", common::now_ms());
    let reflected = request(query, "GET", &read, query_headers).await.expect("the query answers");
    assert_eq!(reflected.status, 200, "the write is reflected: {reflected:?}");

    let started = std::time::Instant::now();
    let runs = [
        Run {
            spec: "command.yaml",
            config: "command.toml",
            url: format!("http://{command}"),
            headers: command_headers,
            max_examples,
            // POST /widgets/{serial}/associations answers 404 when the body's `with` names no widget,
            // even though the path's serial was just created: the documented rule, which this check
            // (ST302, "created resource not found") takes for a lost resource.
            excluded_checks: &["ensure_resource_availability"],
        },
        Run {
            spec: "query.yaml",
            config: "query.toml",
            url: format!("http://{query}"),
            headers: query_headers,
            max_examples,
            excluded_checks: &[],
        },
    ]
    .map(|run| (run.spec, run_schemathesis(run, &token)));
    let mut failed = Vec::new();
    for (spec, run) in runs {
        let output = run.join().expect("the schemathesis thread");
        let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        println!("== schemathesis, docs/openapi/{spec}\n{report}");
        if !output.status.success() {
            failed.push(format!("docs/openapi/{spec}: schemathesis exited with {}\n{report}", output.status));
        }
    }
    println!("both runs took {:?}", started.elapsed());
    stack.cleanup().await;
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// The default deployment: no tokens, no CORS.
#[tokio::test]
async fn both_services_meet_their_openapi_specs() {
    check_both_specs(&[], &[], &[], MAX_EXAMPLES).await;
}

/// With every optional edge check on: write and read tokens, CORS for one origin (the
/// query's preflight then answers `OPTIONS`, its `Allow` included in the check).
#[tokio::test]
async fn both_services_meet_their_openapi_specs_with_tokens_and_cors() {
    let env = [("API_TOKEN", "wr1te"), ("READ_TOKEN", "r34d"), ("CORS_ORIGINS", "https://dash.example")];
    let query = [("Authorization", "Bearer r34d"), ("Origin", "https://dash.example")];
    check_both_specs(&env, &[("Authorization", "Bearer wr1te")], &query, "20").await;
}
