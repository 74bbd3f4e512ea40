//! The wasm floor: the least a proxy-wasm HTTP filter can do on a request.
//!
//! It reads one request header (`x-bench-in`) and adds one (`x-bench-out`, carrying
//! the value read, or `-` when absent). `make bench` runs it as the `wasm-floor`
//! scenario to measure what one V8 crossing per request costs before a filter does
//! any work of its own; every wasmgate filter is compared against it. It is a
//! benchmark instrument, not a filter anyone should deploy: it is built by
//! `make bench` into `build/bench/`, never into `build/wasm/` or an OCI image.
//!
//! It deliberately avoids `wasmgate-host` (logging set-up, panic hook, config
//! parsing) so that the floor is the SDK's own cost and nothing of ours.
//! It is built like the filters, though: `make bench-wasm` removes the exports of the
//! callbacks it does not implement (scripts/unexport.py), as `make wasm` does for them.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| Box::new(FloorRoot));
}}

struct FloorRoot;

impl Context for FloorRoot {}

impl RootContext for FloorRoot {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(FloorRequest))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct FloorRequest;

impl Context for FloorRequest {}

impl HttpContext for FloorRequest {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let seen = self.get_http_request_header("x-bench-in");
        self.add_http_request_header("x-bench-out", seen.as_deref().unwrap_or("-"));
        Action::Continue
    }
}
