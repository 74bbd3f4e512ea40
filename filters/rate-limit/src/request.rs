use crate::root::{Metrics, FILTER};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::rc::Rc;
use wasmgate_host::HostStore;
use wasmgate_rate_limit_policy::{RateLimitPolicy, RequestView, ResponseHeaders, Verdict};

pub struct RateLimitRequest {
    policy: Rc<RateLimitPolicy>,
    metrics: Rc<Metrics>,
    /// Headers for the upstream's response; empty when nothing was counted or the
    /// request was answered here.
    response_headers: ResponseHeaders,
}

impl RateLimitRequest {
    pub fn new(policy: Rc<RateLimitPolicy>, metrics: Rc<Metrics>) -> Self {
        Self {
            policy,
            metrics,
            response_headers: ResponseHeaders::new(),
        }
    }
}

impl Context for RateLimitRequest {}

impl HttpContext for RateLimitRequest {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let decision = self
            .policy
            .decide(&HostRequest, &HostStore, wasmgate_host::now_millis());
        self.metrics.record(&decision.events);
        match decision.verdict {
            Verdict::Unlimited => Action::Continue,
            Verdict::Allowed(headers) => {
                self.metrics.allowed.increment();
                self.response_headers = headers;
                Action::Continue
            }
            Verdict::ShadowLimited(headers) => {
                self.metrics.shadow_limited.increment();
                self.response_headers = headers;
                Action::Continue
            }
            Verdict::Limited(reply) => {
                self.metrics.limited.increment();
                let headers: Vec<(&str, &str)> = reply
                    .headers
                    .iter()
                    .map(|(n, v)| (*n, v.as_str()))
                    .collect();
                self.send_http_response(reply.status, headers, Some(reply.body.as_bytes()));
                Action::Pause
            }
            Verdict::Uncounted(trouble) => {
                self.metrics.fail_open.increment();
                log::debug!("{FILTER}: request passed uncounted: {trouble:?}");
                Action::Continue
            }
        }
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        for (name, value) in std::mem::take(&mut self.response_headers) {
            self.set_http_response_header(name, Some(&value));
        }
        Action::Continue
    }
}

/// The request as the policy sees it: Envoy's header map and attributes.
struct HostRequest;

impl RequestView for HostRequest {
    fn header(&self, name: &str) -> Option<String> {
        wasmgate_host::request_header(name)
    }

    fn source_address(&self) -> Option<String> {
        wasmgate_host::property_text(&["source", "address"])
    }

    fn route_name(&self) -> Option<String> {
        wasmgate_host::property_text(&["xds", "route_name"])
    }
}
