//! Metrics, named one way across the filters (docs/operations.md#metrics).
//!
//! A metric is `wasmgate.<filter>.<metric>`: counters end in `_total`, histograms in
//! their unit (`_milliseconds`: Envoy's histograms take whole numbers), gauges have no
//! suffix. Envoy shows it as `wasmcustom.wasmgate.<filter>.<metric>` in `/stats` and as
//! `wasmgate_<filter>_<metric>` in `/stats/prometheus`.
//!
//! Dimensions (a refusal's reason, a JWKS provider, a result) are tags, never part of
//! the metric's name. proxy-wasm has no tags, so a tag travels inside the name the way
//! Istio's own stats carry theirs, `<tag>=.=<value>;.;` before the metric's last
//! segment: `wasmgate.jwt.reason=.=expired;.;denied_total`. Envoy turns each back into
//! a tag with a `stats_tags` regex `(<tag>=\.=(.*?);\.;)` in its bootstrap (shipped in
//! envoy-config/gateway.yaml), the very regex Istio writes for each name in a proxy's
//! `extraStatTags`; Prometheus then reads `wasmgate_jwt_denied_total{reason="expired"}`.

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

/// A metric that failed to register is a no-op: metrics must never take a request down.
fn define(kind: MetricType, name: &str) -> Option<u32> {
    match hostcalls::define_metric(kind, name) {
        Ok(id) => Some(id),
        Err(status) => {
            log::warn!("cannot define metric {name}: {status:?}");
            None
        }
    }
}

/// `name` with `tags` written in before its last segment, `<tag>=.=<value>;.;` each.
///
/// A value keeps ASCII letters, digits and `-_.:/@`; anything else becomes `_`, so a
/// value from a configuration (a provider's name) can never end its tag early or start
/// another.
fn tagged_name(name: &str, tags: &[(&str, &str)]) -> String {
    let (prefix, metric) = match name.rfind('.') {
        Some(dot) => name.split_at(dot + 1),
        None => ("", name),
    };
    let mut out = String::with_capacity(name.len() + 24 * tags.len());
    out.push_str(prefix);
    for (tag, value) in tags {
        out.push_str(tag);
        out.push_str("=.=");
        out.extend(value.chars().map(|c| {
            if c.is_ascii_alphanumeric() || "-_.:/@".contains(c) {
                c
            } else {
                '_'
            }
        }));
        out.push_str(";.;");
    }
    out.push_str(metric);
    out
}

/// A monotonically increasing count, shown by Envoy as a counter.
#[derive(Debug, Clone, Copy)]
pub struct Counter(Option<u32>);

impl Counter {
    pub fn new(name: &str) -> Self {
        Self(define(MetricType::Counter, name))
    }

    /// The counter `name` for one combination of tag values, e.g.
    /// `Counter::tagged("wasmgate.jwt.denied_total", &[("reason", "expired")])`.
    pub fn tagged(name: &str, tags: &[(&str, &str)]) -> Self {
        Self::new(&tagged_name(name, tags))
    }

    pub fn increment(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        if let Some(id) = self.0 {
            let _ = hostcalls::increment_metric(id, n as i64);
        }
    }
}

/// A value that goes up and down.
#[derive(Debug, Clone, Copy)]
pub struct Gauge(Option<u32>);

impl Gauge {
    pub fn new(name: &str) -> Self {
        Self(define(MetricType::Gauge, name))
    }

    pub fn set(&self, value: u64) {
        if let Some(id) = self.0 {
            let _ = hostcalls::record_metric(id, value);
        }
    }

    /// Adds `delta` (negative to subtract). Every VM that defines the same name shares
    /// one Envoy gauge, so additions from all workers accumulate.
    pub fn add(&self, delta: i64) {
        if let Some(id) = self.0 {
            let _ = hostcalls::increment_metric(id, delta);
        }
    }
}

/// A distribution (latencies), shown by Envoy as a histogram.
#[derive(Debug, Clone, Copy)]
pub struct Histogram(Option<u32>);

impl Histogram {
    pub fn new(name: &str) -> Self {
        Self(define(MetricType::Histogram, name))
    }

    pub fn record(&self, value: u64) {
        if let Some(id) = self.0 {
            let _ = hostcalls::record_metric(id, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_go_before_the_last_segment_in_istios_form() {
        assert_eq!(
            tagged_name("wasmgate.jwt.denied_total", &[("reason", "expired")]),
            "wasmgate.jwt.reason=.=expired;.;denied_total"
        );
        assert_eq!(
            tagged_name(
                "wasmgate.jwt.jwks_fetches_total",
                &[("provider", "idp"), ("result", "failure")]
            ),
            "wasmgate.jwt.provider=.=idp;.;result=.=failure;.;jwks_fetches_total"
        );
        assert_eq!(tagged_name("wasmgate.x.y_total", &[]), "wasmgate.x.y_total");
        assert_eq!(tagged_name("bare", &[("kind", "a")]), "kind=.=a;.;bare");
    }

    #[test]
    fn a_value_cannot_break_out_of_its_tag() {
        assert_eq!(
            tagged_name(
                "wasmgate.jwt.jwks_fetches_total",
                &[("provider", "a;.;result=.=x y\u{e9}")]
            ),
            "wasmgate.jwt.provider=.=a_._result_._x_y_;.;jwks_fetches_total"
        );
        assert_eq!(
            tagged_name("w.m", &[("provider", "login.example.com:443/@x-y_z")]),
            "w.provider=.=login.example.com:443/@x-y_z;.;m"
        );
    }
}
