//! The request context of a filter that has no configuration in place.
//!
//! The SDK traps the VM when a root context returns no request context, which would
//! take every later request of that worker down with it. Envoy refuses a plugin whose
//! first configuration `on_configure` refuses, and keeps the previous configuration
//! when an update is refused, so a request should never meet a filter without one;
//! should it happen anyway, this answers that one request `503` (closed: an auth or
//! rate-limit filter without its rules must not let requests through) and the VM goes
//! on serving.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

const BODY: &[u8] =
    br#"{"error":"filter_not_configured","message":"the filter has no configuration in place"}"#;

/// Answers every request `503` and logs why.
pub struct Unconfigured {
    filter: &'static str,
}

impl Unconfigured {
    /// `context`, or in its absence an `Unconfigured` context for `filter`: what a
    /// root's `create_http_context` returns.
    pub fn or_refusal<C: HttpContext + 'static>(
        filter: &'static str,
        context: Option<C>,
    ) -> Option<Box<dyn HttpContext>> {
        Some(match context {
            Some(context) => Box::new(context),
            None => Box::new(Unconfigured { filter }),
        })
    }
}

impl Context for Unconfigured {}

impl HttpContext for Unconfigured {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        log::error!(
            "{}: a request arrived with no configuration in place: answered 503",
            self.filter
        );
        let headers = vec![("content-type", "application/json")];
        if let Err(status) = hostcalls::send_http_response(503, headers, Some(BODY)) {
            log::warn!("{}: could not answer a request: {status:?}", self.filter);
        }
        Action::Pause
    }
}
