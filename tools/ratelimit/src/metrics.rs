//! Prometheus metrics, served as text on `GET /metrics` of a port of their own.
//!
//! Domain labels take only configured domains (any other is `unconfigured`), so a client
//! cannot grow the label set.

use crate::counters::StoreFailure;
use crate::decision::Decision;
use crate::lease::RenewalReport;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;
use wasmgate_ratelimit_protocol::rls::Code;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DomainCode {
    domain: String,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DomainLabel {
    domain: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreErrorLabels {
    operation: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

type Histograms = Family<MethodLabel, Histogram, fn() -> Histogram>;

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    decisions: Family<DomainCode, Counter>,
    shadowed: Family<DomainLabel, Counter>,
    store_errors: Family<StoreErrorLabels, Counter>,
    durations: Histograms,
    renewals: Family<DomainCode, Counter>,
    granted_hits: Family<DomainLabel, Counter>,
    settled_hits: Family<DomainLabel, Counter>,
    unknown_leases: Family<DomainLabel, Counter>,
    reloads: Family<ResultLabel, Counter>,
    rules: Gauge,
}

/// Which domain label a request gets.
pub fn domain_label(known: bool, domain: &str) -> String {
    if known {
        domain.to_owned()
    } else {
        "unconfigured".to_owned()
    }
}

fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::OverLimit => "over_limit",
        Code::Unknown => "unknown",
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let decisions = Family::<DomainCode, Counter>::default();
        let shadowed = Family::<DomainLabel, Counter>::default();
        let store_errors = Family::<StoreErrorLabels, Counter>::default();
        // 100 µs to ~1.6 s.
        let durations: Histograms =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.0, 15)));
        let renewals = Family::<DomainCode, Counter>::default();
        let granted_hits = Family::<DomainLabel, Counter>::default();
        let settled_hits = Family::<DomainLabel, Counter>::default();
        let unknown_leases = Family::<DomainLabel, Counter>::default();
        let reloads = Family::<ResultLabel, Counter>::default();
        let rules = Gauge::default();
        registry.register(
            "wasmgate_ratelimit_decisions",
            "ShouldRateLimit answers by domain and code (ok, over_limit; error: no answer, store failed; invalid: request refused)",
            decisions.clone(),
        );
        registry.register(
            "wasmgate_ratelimit_shadow_over_limit",
            "Descriptors over a shadow_mode limit, answered OK",
            shadowed.clone(),
        );
        registry.register(
            "wasmgate_ratelimit_store_errors",
            "Counter store (Redis) failures by operation and kind (timeout, connection, other)",
            store_errors.clone(),
        );
        registry.register(
            "wasmgate_ratelimit_request_duration_seconds",
            "Time to answer a gRPC call, by method",
            durations.clone(),
        );
        registry.register(
            "wasmgate_ratelimit_lease_renewals",
            "Lease renewals by domain and code (ok, over_limit, unknown: store failed)",
            renewals.clone(),
        );
        registry.register(
            "wasmgate_ratelimit_lease_granted_hits",
            "Hits granted as leases",
            granted_hits.clone(),
        );
        registry.register(
            "wasmgate_ratelimit_lease_settled_hits",
            "Hits counted when leases were settled",
            settled_hits.clone(),
        );
        registry.register(
            "wasmgate_ratelimit_lease_unknown",
            "Settlements of a lease that was not held (unknown, already settled, or its window ended): nothing counted",
            unknown_leases.clone(),
        );
        registry.register(
            "wasmgate_ratelimit_config_reloads",
            "Configuration reloads by result (ok; error: the previous limits stay)",
            reloads.clone(),
        );
        registry.register(
            "wasmgate_ratelimit_config_rules",
            "Rules (rate_limit blocks) in force",
            rules.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            decisions,
            shadowed,
            store_errors,
            durations,
            renewals,
            granted_hits,
            settled_hits,
            unknown_leases,
            reloads,
            rules,
        }
    }

    pub fn decided(&self, domain: String, decision: &Decision) {
        let code = Code::try_from(decision.response.overall_code).unwrap_or(Code::Unknown);
        if decision.shadowed > 0 {
            self.shadowed
                .get_or_create(&DomainLabel {
                    domain: domain.clone(),
                })
                .inc_by(decision.shadowed as u64);
        }
        self.decisions
            .get_or_create(&DomainCode {
                domain,
                code: code_label(code),
            })
            .inc();
    }

    pub fn undecided(&self, domain: String, code: &'static str) {
        self.decisions
            .get_or_create(&DomainCode { domain, code })
            .inc();
    }

    pub fn store_failed(&self, operation: &'static str, failure: &StoreFailure) {
        self.store_errors
            .get_or_create(&StoreErrorLabels {
                operation,
                kind: failure.kind,
            })
            .inc();
    }

    pub fn renewed(&self, domain: &str, report: &RenewalReport) {
        let domain = domain_label(report.domain_known, domain);
        let label = DomainLabel {
            domain: domain.clone(),
        };
        if let Some(failure) = &report.store_error {
            self.store_failed("renew", failure);
        }
        if report.granted > 0 && report.code == Some(Code::Ok) {
            self.granted_hits
                .get_or_create(&label)
                .inc_by(report.granted);
        }
        if report.settled > 0 {
            self.settled_hits
                .get_or_create(&label)
                .inc_by(report.settled);
        }
        if report.unknown_lease {
            self.unknown_leases.get_or_create(&label).inc();
        }
        if report.shadowed {
            self.shadowed.get_or_create(&label).inc();
        }
        self.renewals
            .get_or_create(&DomainCode {
                domain,
                code: code_label(report.code.unwrap_or(Code::Unknown)),
            })
            .inc();
    }

    pub fn timed(&self, method: &'static str, took: Duration) {
        self.durations
            .get_or_create(&MethodLabel { method })
            .observe(took.as_secs_f64());
    }

    pub fn reloaded(&self, ok: bool, rules: Option<usize>) {
        let result = if ok { "ok" } else { "error" };
        self.reloads.get_or_create(&ResultLabel { result }).inc();
        if let Some(rules) = rules {
            self.rules.set(i64::try_from(rules).unwrap_or(i64::MAX));
        }
    }

    pub fn render(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }

    /// The `/metrics` endpoint.
    pub fn router(&self) -> Router {
        let metrics = self.clone();
        Router::new().route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.render(),
                    )
                }
            }),
        )
    }
}
