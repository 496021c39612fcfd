//! Tracing and the Prometheus recorder, set up once per process.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{fmt, EnvFilter};

use crate::engine::config::{LogFormat, TelemetryConfig};

/// Buckets (seconds) for every `_seconds` histogram: 100 µs to 30 s.
const LATENCY_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Initialises logging (RUST_LOG filter, default `info`) and the metrics
/// recorder. Safe to call more than once (tests): later calls reuse the first.
pub fn init(service: &'static str, cfg: &TelemetryConfig) -> PrometheusHandle {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,tokio_postgres=warn"));
    let _ = match cfg.log_format {
        LogFormat::Human => fmt().with_env_filter(filter).with_target(false).try_init(),
        LogFormat::Json => fmt().json().with_env_filter(filter).with_current_span(false).try_init(),
    };
    let handle = prometheus();
    metrics::gauge!("analytics_build_info", "service" => service, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    handle
}

/// The process's Prometheus recorder (installed on first use).
pub fn prometheus() -> PrometheusHandle {
    PROMETHEUS
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // In tests another recorder may already be installed; the handle still renders ours.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}
