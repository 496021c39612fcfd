//! Benchmark tools; see src/bin and benches, driven by scripts/bench.sh.

use analytics::time::HOUR_MS;
use analytics::{ClickEvent, EpochMillis, EventKind, HourStart, UserId};
use rand::Rng;

/// Users of the load: the same pool of 1M as `bench/wrk/post.lua`, skewed by [`skewed_user`].
pub const USER_POOL: u64 = 1_000_000;

/// A skewed user id out of `pool`: low ids are drawn far more often (x^3).
pub fn skewed_user(rng: &mut impl Rng, pool: u64) -> u64 {
    let x: f64 = rng.random();
    ((x * x * x) * pool as f64) as u64
}

/// The user id of pool member `n`, spelled as `bench/wrk/post.lua` spells it.
pub fn user_id(n: u64) -> UserId {
    UserId::parse(&format!("u{n}")).expect("a short printable id is valid")
}

fn kind(rng: &mut impl Rng) -> EventKind {
    if rng.random_bool(0.3) {
        EventKind::Click
    } else {
        EventKind::Impression
    }
}

/// An event as the command would have accepted it at `now_ms`: 80 % in the
/// current hour (up to now), 20 % spread over the `late_hours` hours before
/// it; a skewed user of [`USER_POOL`]; 30 % clicks.
pub fn backlog_event(rng: &mut impl Rng, now_ms: EpochMillis, late_hours: u32) -> ClickEvent {
    let hour = HourStart::of(now_ms).start_ms();
    let timestamp_ms = if late_hours == 0 || rng.random_bool(0.8) {
        rng.random_range(hour..=now_ms)
    } else {
        hour - i64::from(rng.random_range(1..=late_hours)) * HOUR_MS + rng.random_range(0..HOUR_MS)
    };
    ClickEvent {
        timestamp_ms,
        user: user_id(skewed_user(rng, USER_POOL)),
        kind: kind(rng),
        accepted_at_ms: now_ms,
        id: None,
    }
}

/// A `POST /analytics` path of the `bench/wrk/post.lua` workload: 95 % the
/// current hour, 5 % the past week; a skewed user of [`USER_POOL`]; 30 % clicks.
pub fn post_path(rng: &mut impl Rng, now_ms: EpochMillis) -> String {
    const WEEK_MS: i64 = 7 * 24 * HOUR_MS;
    let hour = HourStart::of(now_ms).start_ms();
    let ts = if rng.random_bool(0.95) {
        rng.random_range(hour..=now_ms)
    } else {
        now_ms - rng.random_range(HOUR_MS..WEEK_MS - HOUR_MS)
    };
    let user = skewed_user(rng, USER_POOL);
    format!("/analytics?timestamp={ts}&user=u{user}&{}", kind(rng).name())
}

/// The sample at quantile `q` (0..=1) of ascending `sorted` samples (nearest rank); NaN when empty.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Ascending latencies in milliseconds, from seconds.
pub fn sorted_ms(mut secs: Vec<f64>) -> Vec<f64> {
    secs.iter_mut().for_each(|s| *s *= 1000.0);
    secs.sort_by(f64::total_cmp);
    secs
}

/// A JSON number (NaN, which JSON lacks, becomes null).
pub fn json_num(v: f64) -> serde_json::Value {
    serde_json::Number::from_f64((v * 1000.0).round() / 1000.0)
        .map_or(serde_json::Value::Null, serde_json::Value::Number)
}

/// `VmHWM` (peak resident set) and `VmRSS` of a process, in KiB (0 where unknown: a process gone).
pub fn memory_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    const NOW: i64 = 1_800_000_000_000 + 1_234_567;

    #[test]
    fn backlog_events_stay_in_the_current_and_late_hours() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let hour = HourStart::of(NOW).start_ms();
        let events: Vec<_> = (0..10_000).map(|_| backlog_event(&mut rng, NOW, 3)).collect();
        assert!(events.iter().all(|e| e.timestamp_ms <= NOW && e.timestamp_ms >= hour - 3 * HOUR_MS));
        assert!(events.iter().all(|e| e.accepted_at_ms == NOW));
        let late = events.iter().filter(|e| e.timestamp_ms < hour).count();
        assert!((1_000..3_000).contains(&late), "about 20 % late, got {late}");
        // Every event must decode as the command would have encoded it.
        let bytes = analytics::wire::encode_event(&events[0]);
        assert_eq!(analytics::wire::decode_event(&bytes).expect("valid record"), events[0]);
    }

    #[test]
    fn post_paths_are_valid_requests_within_the_horizon() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let horizon = common::engine::horizon::Horizon::default();
        for _ in 0..1_000 {
            let path = post_path(&mut rng, NOW);
            let query = path.strip_prefix("/analytics?").expect("the POST path");
            let req = analytics::request::parse_post(Some(query)).expect("a valid POST");
            assert!(horizon.check(req.timestamp_ms, NOW).is_ok(), "{path}");
        }
    }

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&s, 0.5), 51.0);
        assert_eq!(quantile(&s, 0.99), 99.0);
        assert_eq!(quantile(&s, 1.0), 100.0);
        assert!(quantile(&[], 0.5).is_nan());
    }
}

/// What a freshness or staleness probe runs against, and for how long.
#[derive(Debug, clap::Args)]
pub struct Probe {
    /// Seconds of probing.
    #[arg(default_value = "20")]
    pub secs: u64,
    /// The command service.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub command: std::net::SocketAddr,
    /// The query service.
    #[arg(long, default_value = "127.0.0.1:8082")]
    pub query: std::net::SocketAddr,
}

/// Fails at once when `wrk` is not installed (`scripts/bench.sh` installs
/// it), rather than after a load of several minutes.
///
/// # Errors
/// When `wrk` cannot be run.
pub fn require_wrk() -> anyhow::Result<()> {
    match std::process::Command::new("wrk").arg("--version").output() {
        Ok(_) => Ok(()),
        Err(e) => Err(anyhow::anyhow!("wrk cannot be run ({e}): install it (apt-get install wrk) or run make bench")),
    }
}
