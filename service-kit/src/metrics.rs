//! Prometheus metrics: one recorder per process, rendered by each
//! service's `GET /metrics`. Names follow `energy_<service>_<name>_<unit>`
//! and counters end in `_total`; labels have a bounded set of values (a
//! route, a status, a table, a partition), never a device id.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Content type of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Latency buckets in seconds, from 0.5 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the process's recorder the first time and returns its handle
/// (services started in-process by tests share one).
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS)
                .expect("the bucket list is not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed in this process")
        })
        .clone()
}

/// The request metrics of one HTTP service, named once, at compile time.
pub struct RequestMetrics {
    pub requests: &'static str,
    pub duration: &'static str,
}

pub const GATEWAY_REQUESTS: RequestMetrics = RequestMetrics {
    requests: "energy_gateway_requests_total",
    duration: "energy_gateway_request_duration_seconds",
};

pub const QUERY_REQUESTS: RequestMetrics = RequestMetrics {
    requests: "energy_query_requests_total",
    duration: "energy_query_request_duration_seconds",
};

/// Counts one HTTP request and records its duration, by route template
/// (`/v1/meters/{meterId}`, never the id itself) and status.
pub fn record_request(
    names: &RequestMetrics,
    route: &str,
    status: u16,
    elapsed: std::time::Duration,
) {
    let route = route.to_owned();
    metrics::counter!(names.requests, "route" => route.clone(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!(names.duration, "route" => route).record(elapsed.as_secs_f64());
}

/// The route label of a request that matched no route: one value for all of
/// them, so that scanning for paths cannot grow the label set.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Kind of a metric, for its `# TYPE` and `# HELP` lines.
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Gives each of a service's metrics its help text, so that scrapes
/// explain themselves (and list the metric before it first changes).
pub fn describe(metrics: &[(Kind, &'static str, &'static str)]) {
    for (kind, name, help) in metrics {
        match kind {
            Kind::Counter => metrics::describe_counter!(*name, *help),
            Kind::Gauge => metrics::describe_gauge!(*name, *help),
            Kind::Histogram => {
                metrics::describe_histogram!(*name, metrics::Unit::Seconds, *help)
            }
        }
    }
}

/// Help text of a service's request metrics.
pub fn describe_requests(names: &RequestMetrics) {
    describe(&[
        (
            Kind::Counter,
            names.requests,
            "HTTP requests by route template and status",
        ),
        (
            Kind::Histogram,
            names.duration,
            "HTTP request latency by route template",
        ),
    ]);
}
