use crate::root::{Metrics, FILTER};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};
use std::rc::Rc;
use wasmgate_host::{HeaderSnapshot, HostStore};
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

    /// The request phase, on the request's headers (read once, shared with the other
    /// stages in the combined module). `Pause` when the request was answered here (over
    /// its limit).
    pub fn on_request_headers(&mut self, headers: &HeaderSnapshot) -> Action {
        let decision = self.policy.decide(
            &HostRequest(headers),
            &HostStore,
            wasmgate_host::now_millis(),
        );
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
                if let Err(status) = hostcalls::send_http_response(
                    reply.status,
                    headers,
                    Some(reply.body.as_bytes()),
                ) {
                    log::warn!("{FILTER}: could not answer a limited request: {status:?}");
                }
                Action::Pause
            }
            Verdict::Uncounted(trouble) => {
                self.metrics.fail_open.increment();
                log::debug!("{FILTER}: request passed uncounted: {trouble:?}");
                Action::Continue
            }
        }
    }

    /// The response phase: the rate-limit headers of a counted request.
    pub fn on_response_headers(&mut self) -> Action {
        for (name, value) in std::mem::take(&mut self.response_headers) {
            let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(&value));
        }
        Action::Continue
    }
}

impl Context for RateLimitRequest {}

impl HttpContext for RateLimitRequest {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        self.on_request_headers(&HeaderSnapshot::request())
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        self.on_response_headers()
    }
}

/// The request as the policy sees it: its headers, and Envoy's attributes.
struct HostRequest<'a>(&'a HeaderSnapshot);

impl RequestView for HostRequest<'_> {
    fn header(&self, name: &str) -> Option<String> {
        self.0.text(name)
    }

    fn source_address(&self) -> Option<String> {
        wasmgate_host::property_text(&["source", "address"])
    }

    fn route_name(&self) -> Option<String> {
        wasmgate_host::property_text(&["xds", "route_name"])
    }
}
