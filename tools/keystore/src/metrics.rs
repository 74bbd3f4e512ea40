//! The key store's metrics, served at `/metrics` in the OpenMetrics text format
//! (which Prometheus scrapes), and the older JSON counters of `/__keystore/stats`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use serde_json::json;

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How one lookup ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupResult {
    /// 200: the key exists (active, retiring, revoked or expired).
    Found,
    /// 404.
    NotFound,
    /// 400: the path did not end in a hash.
    BadRequest,
    /// 503: the backend could not answer (in time).
    Unavailable,
}

const RESULTS: [LookupResult; 4] = [
    LookupResult::Found,
    LookupResult::NotFound,
    LookupResult::BadRequest,
    LookupResult::Unavailable,
];

impl LookupResult {
    fn name(self) -> &'static str {
        match self {
            Self::Found => "found",
            Self::NotFound => "not_found",
            Self::BadRequest => "bad_request",
            Self::Unavailable => "unavailable",
        }
    }
}

/// What the backend was doing when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendOperation {
    Lookup,
    Ping,
}

type Labels = Vec<(&'static str, &'static str)>;

pub struct Metrics {
    registry: Registry,
    lookups: [Counter; 4],
    pub lookup_seconds: Histogram,
    backend_errors: [Counter; 2],
    pub requests_in_flight: Gauge,
    pub requests_timed_out: Counter,
    pub connections_open: Gauge,
    pub connections_rejected: Counter,
    pub connections_dropped: Counter,
    pub connections_timed_out_header_read: Counter,
    pub connections_timed_out_idle: Counter,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("wasmgate_keystore");
        let lookups_family = Family::<Labels, Counter>::default();
        let lookups = RESULTS.map(|r| {
            lookups_family
                .get_or_create(&vec![("result", r.name())])
                .clone()
        });
        registry.register(
            "lookups",
            "Lookups answered, by result (found, not_found, bad_request, unavailable)",
            lookups_family,
        );
        // 100 µs to 2.5 s: a Redis GET on the same network takes well under a
        // millisecond; the top buckets catch timeouts.
        let lookup_seconds = Histogram::new([
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5,
        ]);
        registry.register_with_unit(
            "lookup_duration",
            "Time to answer a lookup, the backend included",
            Unit::Seconds,
            lookup_seconds.clone(),
        );
        let errors_family = Family::<Labels, Counter>::default();
        let backend_errors = [BackendOperation::Lookup, BackendOperation::Ping].map(|op| {
            let name = match op {
                BackendOperation::Lookup => "lookup",
                BackendOperation::Ping => "ping",
            };
            errors_family
                .get_or_create(&vec![("operation", name)])
                .clone()
        });
        registry.register(
            "backend_errors",
            "Backend (Redis or file) operations that failed or timed out, by operation",
            errors_family,
        );
        let requests_in_flight = Gauge::default();
        registry.register(
            "requests_in_flight",
            "HTTP requests being answered now",
            requests_in_flight.clone(),
        );
        let requests_timed_out = Counter::default();
        registry.register(
            "requests_timed_out",
            "Requests answered 503 because they outlasted --request-timeout",
            requests_timed_out.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Client connections open now (at most --max-connections)",
            connections_open.clone(),
        );
        let connections_rejected = Counter::default();
        registry.register(
            "connections_rejected",
            "Connections past --max-connections, answered 503 and closed",
            connections_rejected.clone(),
        );
        let connections_dropped = Counter::default();
        registry.register(
            "connections_dropped",
            "Connections closed on arrival: past --max-connections while the 503 answers were busy too",
            connections_dropped.clone(),
        );
        let timed_out = Family::<Labels, Counter>::default();
        let connections_timed_out_header_read = timed_out
            .get_or_create(&vec![("timeout", "header_read")])
            .clone();
        let connections_timed_out_idle =
            timed_out.get_or_create(&vec![("timeout", "idle")]).clone();
        registry.register(
            "connections_timed_out",
            "Connections closed by --header-read-timeout or --idle-timeout",
            timed_out,
        );
        Self {
            registry,
            lookups,
            lookup_seconds,
            backend_errors,
            requests_in_flight,
            requests_timed_out,
            connections_open,
            connections_rejected,
            connections_dropped,
            connections_timed_out_header_read,
            connections_timed_out_idle,
        }
    }

    pub fn lookup(&self, result: LookupResult) {
        self.lookups[result as usize].inc();
    }

    pub fn backend_error(&self, operation: BackendOperation) {
        self.backend_errors[operation as usize].inc();
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }

    /// `/__keystore/stats`: the lookup counters as one JSON object.
    pub fn stats_json(&self) -> String {
        let get = |r: LookupResult| self.lookups[r as usize].get();
        json!({
            "lookups": RESULTS.iter().map(|r| get(*r)).sum::<u64>(),
            "found": get(LookupResult::Found),
            "not_found": get(LookupResult::NotFound),
            "bad_request": get(LookupResult::BadRequest),
            "unavailable": get(LookupResult::Unavailable),
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_counts() {
        let metrics = Metrics::new();
        metrics.lookup(LookupResult::Found);
        metrics.lookup(LookupResult::Found);
        metrics.lookup(LookupResult::Unavailable);
        metrics.backend_error(BackendOperation::Ping);
        metrics.lookup_seconds.observe(0.0003);
        let text = metrics.encode();
        for line in [
            "wasmgate_keystore_lookups_total{result=\"found\"} 2",
            "wasmgate_keystore_lookups_total{result=\"not_found\"} 0",
            "wasmgate_keystore_lookups_total{result=\"unavailable\"} 1",
            "wasmgate_keystore_backend_errors_total{operation=\"ping\"} 1",
            "wasmgate_keystore_backend_errors_total{operation=\"lookup\"} 0",
            "wasmgate_keystore_lookup_duration_seconds_bucket{le=\"0.0005\"} 1",
            "wasmgate_keystore_lookup_duration_seconds_count 1",
            "wasmgate_keystore_requests_in_flight 0",
            "wasmgate_keystore_connections_timed_out_total{timeout=\"header_read\"} 0",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        let stats: serde_json::Value = serde_json::from_str(&metrics.stats_json()).unwrap();
        assert_eq!(
            stats,
            json!({"lookups": 3, "found": 2, "not_found": 0, "bad_request": 0, "unavailable": 1})
        );
    }
}
