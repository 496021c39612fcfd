//! The dashboard in a real browser: the four binaries on an isolated stack,
//! 30 days of events posted and settled, then e2e/browser/dashboard.mjs
//! drives Debian's chromium (headless, through playwright-core) against the
//! query's `GET /`: it posts a click and sees the page change without a
//! reload, checks the charts against the API, the layout at 360 px and that
//! nothing is requested from another host, and keeps screenshots under
//! target/browser/.
//!
//! `scripts/browser.sh install` runs first (idempotent: chromium from apt and
//! playwright-core from npm only when missing), so `make test` needs nothing
//! installed beforehand.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use analytics::time::{DAY_MS, HOUR_MS};
use common::test_util::{http, wait_until};
use e2e::{post_all, Event, Kind, Stack};
use rand::{Rng, SeedableRng};

/// The repository root (this crate is `e2e/`).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf()
}

/// Events over the 30 days the page shows, up to a minute ago: more by day
/// than by night, more users and traffic as the days go by, so the charts
/// have a shape. Deterministic.
fn thirty_days(now_ms: i64) -> Vec<Event> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(30);
    let first_hour = (now_ms.div_euclid(DAY_MS) - 29) * DAY_MS;
    let last = now_ms - 60_000;
    let mut events = Vec::new();
    for hour in (first_hour..last).step_by(HOUR_MS as usize) {
        let day = (hour - first_hour) / DAY_MS;
        let hour_of_day = (hour % DAY_MS) / HOUR_MS;
        // Peaks at 14:00 UTC, quiet at night.
        let daytime = 1.0 + (std::f64::consts::TAU * (hour_of_day as f64 - 8.0) / 24.0).sin();
        let n = (daytime * (1.5 + day as f64 / 10.0)).round() as usize + rng.random_range(0..2);
        let users = 20 + 4 * day as usize;
        for _ in 0..n {
            let timestamp_ms = (hour + rng.random_range(0..HOUR_MS)).min(last);
            let kind = if rng.random_bool(0.3) { Kind::Click } else { Kind::Impression };
            events.push(Event { timestamp_ms, user: format!("user-{}", rng.random_range(0..users)), kind });
        }
    }
    events
}

/// Waits until the daily timeseries over the seeded days holds every event.
async fn wait_settled(query: std::net::SocketAddr, events: &[Event], now_ms: i64) {
    let from = (now_ms.div_euclid(DAY_MS) - 29) * DAY_MS;
    let to = from + 30 * DAY_MS;
    let clicks = events.iter().filter(|e| e.kind == Kind::Click).count() as u64;
    let impressions = events.len() as u64 - clicks;
    let path = format!("/analytics/timeseries?from={from}&to={to}&interval=day");
    wait_until("the seeded events in the daily timeseries", Duration::from_secs(120), || async {
        let (status, body) = http(query, "GET", &path).await.ok()?;
        let answer: serde_json::Value = serde_json::from_str(&body).ok().filter(|_| status == 200)?;
        let sum =
            |key: &str| answer["buckets"].as_array().map(|b| b.iter().filter_map(|b| b[key].as_u64()).sum::<u64>());
        (sum("clicks")? == clicks && sum("impressions")? == impressions).then_some(())
    })
    .await;
}

/// Runs `program args` in the repository root with `env`, printing its
/// output; the error says how it failed, with that output.
async fn run(program: &str, args: &[&str], env: &[(&str, String)], limit: Duration) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).current_dir(repo_root()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let what = format!("{program} {}", args.join(" "));
    let child = cmd.spawn().map_err(|e| format!("starting {what}: {e}"))?;
    let output = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .map_err(|_| format!("{what} took longer than {limit:?}"))?
        .map_err(|e| format!("running {what}: {e}"))?;
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    println!("$ {what}\n{stdout}{stderr}");
    match output.status.success() {
        true => Ok(()),
        false => Err(format!("{what} failed ({}):\n{stdout}\n{stderr}", output.status)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_new_click_live_in_a_real_browser() {
    // Installing may take minutes on a fresh machine (apt and npm); later runs find it done.
    run("scripts/browser.sh", &["install"], &[], Duration::from_secs(900)).await.unwrap_or_else(|e| panic!("{e}"));

    let mut stack = Stack::new();
    // The page shows 30 days; the default horizon accepts 7.
    stack.env("HORIZON_PAST", "31d");
    stack.start_all().await;
    let (command, query) = (stack.addr("command"), stack.addr("query"));

    let now_ms = common::now_ms();
    let events = thirty_days(now_ms);
    post_all(command, &events, 16).await;
    wait_settled(query, &events, now_ms).await;

    let env = [("COMMAND_URL", format!("http://{command}")), ("QUERY_URL", format!("http://{query}"))];
    let outcome = run("node", &["e2e/browser/dashboard.mjs"], &env, Duration::from_secs(180)).await;
    // Clean up first, pass or fail; the failure screenshot is target/browser/dashboard-failure.png.
    stack.cleanup().await;
    outcome.unwrap_or_else(|e| panic!("{e}"));
}
