use crate::root::Metrics;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};
use std::rc::Rc;
use wasmgate_header_rules::{EditList, HeaderEdit, HeaderPolicy, RequestView, ResponsePlan};
use wasmgate_host::HeaderSnapshot;

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

    /// The request phase, on the request's headers (read once, shared with the other
    /// stages in the combined module). Always lets the request continue.
    pub fn on_request_headers(&mut self, headers: &mut HeaderSnapshot) -> Action {
        self.metrics.requests.increment();
        let plan = self.policy.plan_request(&HostRequest(headers));
        if plan.stripped > 0 {
            self.metrics
                .spoofed_headers_stripped
                .add(plan.stripped as u64);
        }
        for edit in plan.edits {
            let result = match &edit {
                HeaderEdit::Remove(name) => headers.remove(name.as_str()),
                HeaderEdit::Set(name, value) => headers.set(name.as_str(), value),
                HeaderEdit::Append(name, value) => headers.add(name.as_str(), value),
            };
            if let Err(status) = result {
                log::warn!("wasmgate-headers: could not apply {edit:?}: {status:?}");
            }
        }
        if self.policy.touches_responses() {
            self.response = Some(plan.response);
        }
        Action::Continue
    }

    /// The response phase: the rule's response operations, planned when the request
    /// came in.
    pub fn on_response_headers(&mut self) -> Action {
        if let Some(plan) = self.response.take() {
            let current = |name: &str| wasmgate_host::response_header(name);
            apply_to_response(self.policy.plan_response(&plan, &current));
        }
        Action::Continue
    }
}

impl Context for HeadersRequest {}

impl HttpContext for HeadersRequest {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        self.on_request_headers(&mut HeaderSnapshot::request())
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        self.on_response_headers()
    }
}

/// The request as the header rules see it: its headers, and Envoy's attributes.
struct HostRequest<'a>(&'a HeaderSnapshot);

impl RequestView for HostRequest<'_> {
    fn header(&self, name: &str) -> Option<String> {
        self.0.text(name)
    }

    fn has_header(&self, name: &str) -> bool {
        self.0.contains(name)
    }

    fn property(&self, path: &[&str]) -> Option<String> {
        wasmgate_host::property_text(path)
    }
}

/// Response edits go straight to Envoy: a response phase reads few headers (only for
/// `rename` and `if_absent`), so a snapshot would cost more than it saves.
fn apply_to_response(edits: EditList) {
    let map = MapType::HttpResponseHeaders;
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
