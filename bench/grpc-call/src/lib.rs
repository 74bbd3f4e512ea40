//! A benchmark instrument: the floor of a global rate limit checked from a proxy-wasm
//! filter in Envoy.
//!
//! Every request is paused while one `ShouldRateLimit` call goes to the rate-limit
//! service (`dispatch_grpc_call`), and resumed when the call succeeds (503 when it
//! fails); the message is encoded once at configuration and the answer is never read. What a real filter adds
//! to this (choosing the rule, describing the client, reading the answer, writing the
//! `X-RateLimit-*` headers) is not here, so `make bench`'s `wasm-grpc-call` scenario
//! shows what Envoy's proxy-wasm gRPC path alone costs a request, side by side with
//! Envoy's own ratelimit filter making the same call. Built by `make bench` into
//! `build/bench/`, never shipped.
//!
//! Configuration (JSON): `{"cluster": "ratelimit", "domain": "wasmgate",
//! "entries": [["rule", "api"], ["x-tenant-id", "t"]], "timeout_ms": 1000}`.

mod call;

use call::{configured_call, CallRoot};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};
use std::rc::Rc;
use std::time::Duration;
use wasmgate_ratelimit_protocol::{Message, RLS_METHOD, RLS_SERVICE};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| {
        Box::new(CallRoot::new("wasm-grpc-call", Call::from_json, |call| {
            Box::new(CallRequest { call })
        }))
    });
}}

/// What every request sends, worked out once.
struct Call {
    cluster: String,
    message: Vec<u8>,
    timeout: Duration,
}

impl Call {
    fn from_json(bytes: &[u8]) -> Option<Call> {
        let config: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        let (cluster, request) = configured_call(&config)?;
        Some(Call {
            cluster,
            message: request.encode_to_vec(),
            timeout: Duration::from_millis(config["timeout_ms"].as_u64().unwrap_or(1000)),
        })
    }
}

struct CallRequest {
    call: Rc<Call>,
}

impl Context for CallRequest {
    /// Any answer resumes the request; a failed call (gRPC status other than OK) is
    /// answered 503, so that the bench's probe sees whether calls succeed.
    fn on_grpc_call_response(&mut self, _token: u32, status: u32, _size: usize) {
        let _ = if status == 0 {
            hostcalls::resume_http_request()
        } else {
            hostcalls::send_http_response(503, Vec::new(), None)
        };
    }
}

impl HttpContext for CallRequest {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let sent = hostcalls::dispatch_grpc_call(
            &self.call.cluster,
            RLS_SERVICE,
            RLS_METHOD,
            Vec::new(),
            Some(&self.call.message),
            self.call.timeout,
        );
        match sent {
            Ok(_) => Action::Pause,
            Err(_) => Action::Continue,
        }
    }
}
