//! Tracing and the Prometheus recorder, set up once per process.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::{fmt, EnvFilter};

use crate::engine::config::{LogFormat, TelemetryConfig};

/// Buckets (seconds) for every `_seconds` histogram: 100 µs to 30 s.
const LATENCY_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Buckets (seconds) for the `_input_age_seconds` histograms (the age of the newest input at each stage of the
/// pipeline: docs/operations.md): finer between 1 ms and 1 s, where a freshness target of 100 ms is decided.
pub const INPUT_AGE_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.065, 0.08, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5,
    0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0,
];
/// The suffix of those histograms' names.
pub const INPUT_AGE_SUFFIX: &str = "_input_age_seconds";

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often the recorder's histograms are drained ([`upkeep`]).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Initialises logging (RUST_LOG filter, default `info`) and the metrics
/// recorder, and drains the recorder's histograms until `shutdown`
/// ([`upkeep`]). Safe to call more than once (tests): later calls reuse the
/// first recorder. Call it inside the service's runtime.
pub fn init(service: &'static str, cfg: &TelemetryConfig, shutdown: &CancellationToken) -> PrometheusHandle {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,tokio_postgres=warn"));
    let _ = match cfg.log_format {
        LogFormat::Human => fmt().with_env_filter(filter).with_target(false).try_init(),
        LogFormat::Json => fmt().json().with_env_filter(filter).with_current_span(false).try_init(),
    };
    let handle = prometheus();
    metrics::gauge!("analytics_build_info", "service" => service, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    tokio::spawn(upkeep(handle.clone(), UPKEEP_EVERY, shutdown.clone()));
    handle
}

/// Drains the recorder's histograms every `every` until `shutdown`: the
/// recorder keeps every observed value of a histogram until a render or an
/// upkeep folds it into the buckets, so a service nobody scrapes would grow
/// by 8 bytes and more per observation (an upload's every record, say).
pub async fn upkeep(handle: PrometheusHandle, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => handle.run_upkeep(),
        }
    }
}

/// The recorder's buckets: the input ages' own, every other `_seconds` histogram [`LATENCY_BUCKETS`]
/// (the exporter tries a metric's matchers in order, every `Full` before any `Prefix` before any `Suffix`,
/// suffixes by their text: `_input_age_seconds` sorts before `_seconds`).
fn builder() -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix(INPUT_AGE_SUFFIX.into()), INPUT_AGE_BUCKETS)
        .expect("bucket list is not empty")
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .expect("bucket list is not empty")
}

/// The process's Prometheus recorder (installed on first use).
pub fn prometheus() -> PrometheusHandle {
    PROMETHEUS
        .get_or_init(|| {
            let recorder = builder().build_recorder();
            let handle = recorder.handle();
            // In tests another recorder may already be installed; the handle still renders ours.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn upkeep_runs_until_shutdown_then_ends() {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            for _ in 0..1000 {
                metrics::histogram!("upkeep_test_seconds").record(0.001);
            }
        });
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(upkeep(handle.clone(), Duration::from_millis(10), shutdown.clone()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(handle.render().contains("upkeep_test_seconds_count 1000"), "{}", handle.render());
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("ends at shutdown").expect("no panic");
    }

    #[test]
    fn input_ages_get_their_finer_buckets_and_other_durations_the_latency_ones() {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::histogram!("x_processor_input_age_seconds").record(0.03);
            metrics::histogram!("x_checkpoint_duration_seconds").record(0.03);
        });
        let text = handle.render();
        assert!(text.contains("x_processor_input_age_seconds_bucket{le=\"0.065\"} 1"), "{text}");
        assert!(!text.contains("x_checkpoint_duration_seconds_bucket{le=\"0.065\"}"), "{text}");
        assert!(text.contains("x_checkpoint_duration_seconds_bucket{le=\"0.05\"} 1"), "{text}");
    }
}
