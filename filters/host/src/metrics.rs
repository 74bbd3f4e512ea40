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

/// A monotonically increasing count, shown by Envoy as a counter.
#[derive(Debug, Clone, Copy)]
pub struct Counter(Option<u32>);

impl Counter {
    pub fn new(name: &str) -> Self {
        Self(define(MetricType::Counter, name))
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
