use crate::request::RateLimitRequest;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use std::rc::Rc;
use wasmgate_host::{Counter, Gauge, HostStore};
use wasmgate_rate_limit_policy::{RateLimitPolicy, TableEvents};

pub const FILTER: &str = "wasmgate-rate-limit";

/// What this filter reports (Envoy shows them under `wasmcustom.`).
pub struct Metrics {
    pub allowed: Counter,
    pub limited: Counter,
    pub shadow_limited: Counter,
    /// Requests let through uncounted because the table could not be updated.
    pub fail_open: Counter,
    pub cas_conflicts: Counter,
    /// Requests counted against a rule's shared overflow bucket (no slot was free).
    pub overflow: Counter,
    pub slots_reclaimed: Counter,
    /// Table slots holding a bucket; all VMs add to the same Envoy gauge.
    pub slots_in_use: Gauge,
}

impl Metrics {
    fn new() -> Self {
        let name = |n: &str| format!("wasmgate.rate_limit.{n}");
        Self {
            allowed: Counter::new(&name("allowed_total")),
            limited: Counter::new(&name("limited_total")),
            shadow_limited: Counter::new(&name("shadow_limited_total")),
            fail_open: Counter::new(&name("fail_open_total")),
            cas_conflicts: Counter::new(&name("cas_conflicts_total")),
            overflow: Counter::new(&name("overflow_total")),
            slots_reclaimed: Counter::new(&name("slots_reclaimed_total")),
            slots_in_use: Gauge::new(&name("slots_in_use")),
        }
    }

    pub fn record(&self, events: &TableEvents) {
        if events.cas_conflicts > 0 {
            self.cas_conflicts.add(u64::from(events.cas_conflicts));
        }
        if events.overflow {
            self.overflow.increment();
        }
        if events.reclaimed_slot {
            self.slots_reclaimed.increment();
        }
        if events.occupied_vacant_slot {
            self.slots_in_use.add(1);
        }
    }
}

#[derive(Default)]
pub struct RateLimitRoot {
    policy: Option<Rc<RateLimitPolicy>>,
    metrics: Option<Rc<Metrics>>,
}

impl RateLimitRoot {
    /// Puts a validated configuration in place (at start, or on an update).
    pub fn install(&mut self, policy: RateLimitPolicy) {
        let metrics = Rc::clone(self.metrics.get_or_insert_with(|| Rc::new(Metrics::new())));
        // Every slot exists before this VM counts a request: from then on each write is
        // a compare-and-swap (a write that creates a key ignores it).
        let census = policy.prepare(&HostStore);
        metrics.slots_in_use.set(census.occupied);
        log::info!(
            "{FILTER}: bucket table of {} slots ready ({} created here, {} in use)",
            policy.table().slots(),
            census.created,
            census.occupied
        );
        self.policy = Some(Rc::new(policy));
    }

    /// A new request's context, once a configuration is in place.
    pub fn new_request(&self) -> Option<RateLimitRequest> {
        let policy = Rc::clone(self.policy.as_ref()?);
        let metrics = Rc::clone(self.metrics.as_ref()?);
        Some(RateLimitRequest::new(policy, metrics))
    }
}

impl Context for RateLimitRoot {}

impl RootContext for RateLimitRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        wasmgate_host::follow_host_log_level();
        let Some(policy) = wasmgate_host::load_config(
            FILTER,
            self.get_plugin_configuration(),
            RateLimitPolicy::from_json,
        ) else {
            return false;
        };
        self.install(policy);
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        wasmgate_host::Unconfigured::or_refusal(FILTER, self.new_request())
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
