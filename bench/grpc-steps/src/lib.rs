//! A benchmark instrument: what each step of wasmgate's exact-mode rule costs around
//! its `ShouldRateLimit` call in Envoy.
//!
//! Every request is paused for one call, as `bench/grpc-call` does, and resumed on an OK
//! answer (503 otherwise). The configuration adds steps, each one thing the rate-limit
//! filter does on that path, so that `make bench`'s `grpc-steps-*` scenarios (run with
//! `--only`) can be compared with one another:
//!
//! - `read_request`: read every request header at once into the SDK's pairs
//!   (`get_map_bytes`: a String and a Vec per header);
//! - `snapshot`: read them as the filters do (`wasmgate_host::HeaderSnapshot`, one
//!   buffer) and look up the five names the rate-limit rule reads;
//! - `single_gets`: those five names with one `get_map_value` each instead;
//! - `encode`: encode the message per request rather than once;
//! - `read_answer`: copy the answer into the VM and decode it;
//! - `histogram`: record the call's duration in a histogram;
//! - `response_headers`: set three headers on the response.
//!
//! The response phase is exported in every variant (the filter's is), and does nothing
//! without `response_headers`. Built by `make bench` into `build/bench/`, never shipped.
//!
//! Configuration (JSON): `{"cluster": "ratelimit", "domain": "wasmgate",
//! "entries": [["rule", "api"], ["x-tenant-id", "t"]], "steps": ["read_request"]}`.

#[path = "../../grpc-call/src/call.rs"]
mod call;

use call::{configured_call, CallRoot};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, LogLevel, MapType, MetricType};
use std::rc::Rc;
use std::time::Duration;
use wasmgate_ratelimit_protocol::rls::{RateLimitRequest, RateLimitResponse};
use wasmgate_ratelimit_protocol::{Message, RLS_METHOD, RLS_SERVICE};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| {
        Box::new(CallRoot::new("grpc-steps", Call::from_json, |call| {
            Box::new(StepsRequest {
                call,
                sent_at: 0,
                remaining: 0,
            })
        }))
    });
}}

#[derive(Default, Clone, Copy)]
struct Steps {
    read_request: bool,
    snapshot: bool,
    single_gets: bool,
    encode: bool,
    read_answer: bool,
    histogram: bool,
    response_headers: bool,
}

struct Call {
    cluster: String,
    request: RateLimitRequest,
    message: Vec<u8>,
    steps: Steps,
    histogram: u32,
}

impl Call {
    fn from_json(bytes: &[u8]) -> Option<Call> {
        let config: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        let (cluster, request) = configured_call(&config)?;
        let mut steps = Steps::default();
        for step in config["steps"].as_array()? {
            match step.as_str()? {
                "read_request" => steps.read_request = true,
                "snapshot" => steps.snapshot = true,
                "single_gets" => steps.single_gets = true,
                "encode" => steps.encode = true,
                "read_answer" => steps.read_answer = true,
                "histogram" => steps.histogram = true,
                "response_headers" => steps.response_headers = true,
                _ => return None,
            }
        }
        let histogram = if steps.histogram {
            hostcalls::define_metric(MetricType::Histogram, "wasmgate.bench.call_ms").ok()?
        } else {
            0
        };
        Some(Call {
            cluster,
            message: request.encode_to_vec(),
            request,
            steps,
            histogram,
        })
    }
}

/// What the rate-limit rule reads of a request in the bench: its route, then the identity
/// sources in order (the first is absent), then the global tier's identity.
const RULE_READS: [&str; 5] = [
    ":method",
    ":path",
    "x-api-key-id",
    "x-user-id",
    "x-tenant-id",
];

struct StepsRequest {
    call: Rc<Call>,
    sent_at: u64,
    remaining: u64,
}

fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

impl Context for StepsRequest {
    fn on_grpc_call_response(&mut self, _token: u32, status: u32, size: usize) {
        let steps = self.call.steps;
        if steps.read_answer && status == 0 {
            let bytes = hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, size)
                .ok()
                .flatten()
                .unwrap_or_default();
            if let Ok(answer) = RateLimitResponse::decode(bytes.as_slice()) {
                self.remaining = answer
                    .statuses
                    .first()
                    .map_or(0, |s| u64::from(s.limit_remaining));
            }
        }
        if steps.histogram {
            let _ = hostcalls::record_metric(
                self.call.histogram,
                now_ms().saturating_sub(self.sent_at),
            );
        }
        let _ = if status == 0 {
            hostcalls::resume_http_request()
        } else {
            hostcalls::send_http_response(503, Vec::new(), None)
        };
    }
}

impl HttpContext for StepsRequest {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let steps = self.call.steps;
        if steps.read_request {
            std::hint::black_box(hostcalls::get_map_bytes(MapType::HttpRequestHeaders).ok());
        }
        if steps.snapshot {
            let headers = wasmgate_host::HeaderSnapshot::request();
            for name in RULE_READS {
                std::hint::black_box(headers.text(name));
            }
        }
        if steps.single_gets {
            for name in RULE_READS {
                std::hint::black_box(
                    hostcalls::get_map_value(MapType::HttpRequestHeaders, name).ok(),
                );
            }
        }
        if steps.histogram {
            self.sent_at = now_ms();
        }
        let encoded;
        let message = if steps.encode {
            encoded = self.call.request.encode_to_vec();
            &encoded
        } else {
            &self.call.message
        };
        let sent = hostcalls::dispatch_grpc_call(
            &self.call.cluster,
            RLS_SERVICE,
            RLS_METHOD,
            Vec::new(),
            Some(message),
            Duration::from_secs(1),
        );
        match sent {
            Ok(_) => Action::Pause,
            Err(_) => Action::Continue,
        }
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if self.call.steps.response_headers {
            let remaining = self.remaining.to_string();
            for (name, value) in [
                ("x-ratelimit-limit", "4000000000"),
                ("x-ratelimit-remaining", remaining.as_str()),
                ("x-ratelimit-reset", "60"),
            ] {
                let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(value));
            }
        }
        Action::Continue
    }
}
