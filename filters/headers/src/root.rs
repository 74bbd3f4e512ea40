use crate::request::HeadersRequest;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use std::rc::Rc;
use wasmgate_header_rules::HeaderPolicy;
use wasmgate_host::Counter;

pub const FILTER: &str = "wasmgate-headers";

/// Counters this filter reports (Envoy shows them under `wasmcustom.`).
pub struct Metrics {
    pub requests: Counter,
    pub spoofed_headers_stripped: Counter,
}

#[derive(Default)]
pub struct HeadersRoot {
    policy: Option<Rc<HeaderPolicy>>,
    metrics: Option<Rc<Metrics>>,
}

impl HeadersRoot {
    /// Puts a validated configuration in place (at start, or on an update).
    pub fn install(&mut self, policy: HeaderPolicy) {
        self.policy = Some(Rc::new(policy));
        if self.metrics.is_none() {
            self.metrics = Some(Rc::new(Metrics {
                requests: Counter::new("wasmgate.headers.requests_total"),
                spoofed_headers_stripped: Counter::new(
                    "wasmgate.headers.spoofed_headers_stripped_total",
                ),
            }));
        }
    }

    /// A new request's context, once a configuration is in place.
    pub fn new_request(&self) -> Option<HeadersRequest> {
        let policy = Rc::clone(self.policy.as_ref()?);
        let metrics = Rc::clone(self.metrics.as_ref()?);
        Some(HeadersRequest::new(policy, metrics))
    }
}

impl Context for HeadersRoot {}

impl RootContext for HeadersRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        wasmgate_host::follow_host_log_level();
        let Some(policy) = wasmgate_host::load_config(
            FILTER,
            self.get_plugin_configuration(),
            HeaderPolicy::from_json,
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
