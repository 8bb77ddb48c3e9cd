//! Logging (tracing) and metrics (Prometheus text at `/metrics`).

use std::sync::OnceLock;

use crm_indexer::startup::LogOutput;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::config::LogFormat;

/// Installs the global subscriber, logging to stdout. `CRM_LOG` is an
/// `EnvFilter` directive. Safe to call more than once (later calls do
/// nothing). The same set-up as `crm-indexer`'s
/// ([`crm_indexer::startup::init_tracing`]).
pub fn init_tracing(filter: &str, format: LogFormat) {
    crm_indexer::startup::init_tracing(filter, format, LogOutput::Stdout);
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ])
                .map(PrometheusBuilder::build_recorder)
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Fails only when another recorder is installed; then we still render ours.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}
