use crate::root::Metrics;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};
use std::rc::Rc;
use wasmgate_header_rules::{EditList, HeaderEdit, HeaderPolicy, RequestView, ResponsePlan};

pub struct HeadersRequest {
    policy: Rc<HeaderPolicy>,
    metrics: Rc<Metrics>,
    response: Option<ResponsePlan>,
}

impl HeadersRequest {
    pub fn new(policy: Rc<HeaderPolicy>, metrics: Rc<Metrics>) -> Self {
        Self {
            policy,
            metrics,
            response: None,
        }
    }
}

impl Context for HeadersRequest {}

impl HttpContext for HeadersRequest {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        self.metrics.requests.increment();
        let spoofed = self
            .policy
            .strip_inbound()
            .iter()
            .filter(|name| wasmgate_host::request_header(name.as_str()).is_some())
            .count();
        if spoofed > 0 {
            self.metrics.spoofed_headers_stripped.add(spoofed as u64);
        }
        let plan = self.policy.plan_request(&HostRequest);
        apply(MapType::HttpRequestHeaders, plan.edits);
        if self.policy.touches_responses() {
            self.response = Some(plan.response);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if let Some(plan) = self.response.take() {
            let current = |name: &str| wasmgate_host::response_header(name);
            apply(
                MapType::HttpResponseHeaders,
                self.policy.plan_response(&plan, &current),
            );
        }
        Action::Continue
    }
}

/// The request as the header rules see it: Envoy's header map and attributes.
struct HostRequest;

impl RequestView for HostRequest {
    fn header(&self, name: &str) -> Option<String> {
        wasmgate_host::request_header(name)
    }

    fn property(&self, path: &[&str]) -> Option<String> {
        wasmgate_host::property_text(path)
    }
}

fn apply(map: MapType, edits: EditList) {
    for edit in edits {
        let result = match &edit {
            HeaderEdit::Remove(name) => hostcalls::remove_map_value(map, name.as_str()),
            HeaderEdit::Set(name, value) => {
                hostcalls::set_map_value(map, name.as_str(), Some(value))
            }
            HeaderEdit::Append(name, value) => hostcalls::add_map_value(map, name.as_str(), value),
        };
        if let Err(status) = result {
            log::warn!("wasmgate-headers: could not apply {edit:?}: {status:?}");
        }
    }
}
