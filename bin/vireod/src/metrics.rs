//! Prometheus metrics (`GET /metrics`): HTTP request counts and latencies, VMs by state,
//! operations by status. Counters live in a registry; VM/operation gauges are computed at
//! scrape time from the engine (no second source of truth).

use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::api::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<HttpLabels, Counter>,
    latency: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("vireo");
        let requests = Family::<HttpLabels, Counter>::default();
        let latency = Histogram::new(exponential_buckets(0.0005, 4.0, 10));
        registry.register("http_requests", "HTTP requests served", requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            latency.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
        }
    }
}

/// Middleware counting requests.
pub async fn track(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    s.metrics
        .requests
        .get_or_create(&HttpLabels {
            method,
            status: resp.status().as_u16(),
        })
        .inc();
    s.metrics.latency.observe(start.elapsed().as_secs_f64());
    resp
}

pub fn render(s: &AppState) -> String {
    let mut out = String::new();
    if encode(&mut out, &s.metrics.registry).is_err() {
        return "# encoding metrics failed\n".into();
    }
    // Scrape-time gauges.
    let mut reg = Registry::with_prefix("vireo");
    let vms = Family::<StateLabels, Gauge>::default();
    let ops = Family::<StateLabels, Gauge>::default();
    reg.register("vms", "VMs by state", vms.clone());
    reg.register("operations", "Operations by status", ops.clone());
    let (total, running) = s.engine.vm_counts();
    vms.get_or_create(&StateLabels {
        state: "with_process".into(),
    })
    .set(i64::from(running));
    vms.get_or_create(&StateLabels {
        state: "without_process".into(),
    })
    .set(i64::from(total - running));
    for op in s.engine.operations().list() {
        let st = serde_json::to_value(op.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        ops.get_or_create(&StateLabels { state: st }).inc();
    }
    let mut extra = String::new();
    if encode(&mut extra, &reg).is_ok() {
        // Both encodings end with "# EOF"; keep one at the very end.
        let first = out.trim_end().trim_end_matches("# EOF").to_string();
        out = format!("{first}{extra}");
    }
    out
}
