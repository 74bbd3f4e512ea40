//! The echo upstream: answers with the request it received, so a test can assert
//! exactly what Envoy forwarded. It is a demo and test fixture, not a web server to
//! build on (the server is `wasmgate-fixture-http`: a thread per connection).
//!
//! Response body:
//! `{"service", "instance", "method", "path", "query", "headers": {name: [values]}, "body"}`
//! with header names lower-cased and repeated headers kept in order. `instance` tells
//! apart several instances of one service (`users-a`, `users-b`, `orders-v2`).
//!
//! A request can steer the answer (for tests of retries, timeouts and response rules):
//! `x-echo-status: 503` sets the status, `x-echo-delay-ms: 1500` waits first, each
//! `x-echo-response-header: name=value` adds a response header, and
//! `x-echo-fail-first: N` answers 503 to the first N attempts that carry the same
//! `x-request-id` (Envoy keeps the id across retries, so this is a transient failure
//! that a retry recovers from). The demo gateway removes these headers from client
//! requests: behind it, only the control endpoints steer an instance.
//!
//! Control endpoints (on the echo's own port, never routed by the demo gateway). None
//! of them touches `/healthz`, which keeps answering 200 at once: a broken release
//! whose health endpoint still passes, the failure only passive outlier detection can
//! see.
//! - `GET /__echo/stats`: `{"requests": N, "failing_with": status or null}`; `requests`
//!   counts every answered request except the control endpoints.
//! - `PUT /__echo/fail` with the status as the body (`500`): from now on every request
//!   gets that status. `DELETE /__echo/fail` heals it. `--fail-status` starts the
//!   instance broken.
//! - `PUT /__echo/fail-next` with a count as the body (`1`): the next N requests get
//!   503 (a transient failure a retry recovers from).
//! - `PUT /__echo/delay` with milliseconds as the body (`3000`): every request waits
//!   that long before its answer (at most 60 s); `DELETE /__echo/delay` stops it.

use clap::Args;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use wasmgate_fixture_http::{Reply, Request, Response, Server};

const MAX_ECHOED_BODY: usize = 64 * 1024;
/// The health endpoint the demo gateway checks; a broken instance (`/__echo/fail`)
/// still answers it with 200.
const HEALTH_PATH: &str = "/healthz";
/// The longest a request waits: for `x-echo-delay-ms` and `/__echo/delay`.
const MAX_DELAY_MS: u64 = 60_000;
/// Request ids remembered for `x-echo-fail-first`; the table is emptied when full
/// (a forgotten id only means one more failure than asked for, in a test fixture).
const MAX_TRACKED_REQUEST_IDS: usize = 10_000;

#[derive(Args)]
pub struct EchoArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Name reported in every answer (`service`), to tell upstreams apart.
    #[arg(long, default_value = "echo")]
    name: String,
    /// Instance name reported in every answer (`instance`); defaults to `--name`.
    #[arg(long)]
    instance: Option<String>,
    /// Start broken: answer every request but `/healthz` with this status until
    /// `DELETE /__echo/fail`.
    #[arg(long, value_parser = clap::value_parser!(u16).range(100..600))]
    fail_status: Option<u16>,
}

/// What every connection thread of one echo server shares.
struct EchoState {
    name: String,
    instance: String,
    /// Requests answered, control endpoints excluded.
    served: AtomicU64,
    /// The status every request gets while the instance is broken; 0 when healthy.
    failing_with: AtomicU16,
    /// `x-request-id` → attempts seen, for `x-echo-fail-first`.
    attempts: Mutex<HashMap<String, u32>>,
    /// Requests still to answer 503 (`/__echo/fail-next`).
    fail_next: AtomicU32,
    /// How long every request waits (`/__echo/delay`).
    delay_ms: AtomicU64,
}

pub fn serve(args: EchoArgs) -> Result<(), String> {
    let server = Server::bind(&args.listen)?;
    server.announce();
    let state = EchoState {
        instance: args.instance.unwrap_or_else(|| args.name.clone()),
        name: args.name,
        served: AtomicU64::new(0),
        failing_with: AtomicU16::new(args.fail_status.unwrap_or(0)),
        attempts: Mutex::new(HashMap::new()),
        fail_next: AtomicU32::new(0),
        delay_ms: AtomicU64::new(0),
    };
    server.serve(move |request| answer(request, &state));
    Ok(())
}

fn answer(request: &Request, state: &EchoState) -> Reply {
    if request.path().starts_with("/__echo/") {
        return control(request, state).into();
    }
    state.served.fetch_add(1, Ordering::SeqCst);

    let mut headers: Map<String, Value> = Map::new();
    let mut status = 200;
    let mut delay_ms = 0;
    let mut fail_first = 0;
    let mut request_id = "";
    let mut extra_headers = Vec::new();
    for (name, value) in &request.headers {
        match name.as_str() {
            "x-echo-status" => {
                status = value
                    .trim()
                    .parse()
                    .ok()
                    .filter(|s| (200..600).contains(s))
                    .unwrap_or(200)
            }
            "x-echo-delay-ms" => {
                delay_ms = value.trim().parse::<u64>().unwrap_or(0).min(MAX_DELAY_MS)
            }
            "x-echo-fail-first" => fail_first = value.trim().parse::<u32>().unwrap_or(0),
            "x-request-id" => request_id = value,
            "x-echo-response-header" => {
                if let Some((n, v)) = value.split_once('=') {
                    extra_headers.push((n.trim().to_owned(), v.trim().to_owned()));
                }
            }
            _ => {}
        }
        if let Value::Array(values) = headers
            .entry(name.clone())
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            values.push(Value::String(value.clone()));
        }
    }
    if fail_first > 0 && state.attempt(request_id) <= fail_first {
        status = 503;
    }
    if request.path() != HEALTH_PATH {
        let failing_with = state.failing_with.load(Ordering::SeqCst);
        if failing_with != 0 {
            status = failing_with;
        }
        if state.take_fail_next() {
            status = 503;
        }
        delay_ms = delay_ms.max(state.delay_ms.load(Ordering::SeqCst));
    }

    let body = &request.body[..request.body.len().min(MAX_ECHOED_BODY)];
    let echoed = json!({
        "service": state.name,
        "instance": state.instance,
        "method": request.method,
        "path": request.path(),
        "query": request.query(),
        "headers": headers,
        "body": String::from_utf8_lossy(body),
    });

    if delay_ms > 0 {
        std::thread::sleep(Duration::from_millis(delay_ms));
    }
    let mut response = Response::json(status, echoed.to_string());
    response.headers.extend(extra_headers);
    response.into()
}

impl EchoState {
    /// True (and one fewer to go) while `/__echo/fail-next` has failures left.
    fn take_fail_next(&self) -> bool {
        self.fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Counts one more attempt of the request `id` and returns the count (1 = first).
    fn attempt(&self, id: &str) -> u32 {
        // A poisoned lock only means another request thread panicked mid-update; the
        // counts are still usable.
        let mut attempts = self
            .attempts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if attempts.len() >= MAX_TRACKED_REQUEST_IDS && !attempts.contains_key(id) {
            attempts.clear();
        }
        let count = attempts.entry(id.to_owned()).or_insert(0);
        *count = count.saturating_add(1);
        *count
    }
}

fn control(request: &Request, state: &EchoState) -> Response {
    let (status, body) = match (request.method.as_str(), request.path()) {
        ("GET", "/__echo/stats") => (200, stats(state)),
        ("PUT", "/__echo/fail") => {
            let text = String::from_utf8_lossy(&request.body);
            match text.trim().parse::<u16>() {
                Ok(code) if (100..600).contains(&code) => {
                    state.failing_with.store(code, Ordering::SeqCst);
                    (200, stats(state))
                }
                _ => (
                    400,
                    json!({"error": "the body must be an HTTP status, e.g. 500"}),
                ),
            }
        }
        ("DELETE", "/__echo/fail") => {
            state.failing_with.store(0, Ordering::SeqCst);
            (200, stats(state))
        }
        ("PUT", "/__echo/fail-next") => match body_number(request) {
            Some(count) => {
                let count = u32::try_from(count).unwrap_or(u32::MAX);
                state.fail_next.store(count, Ordering::SeqCst);
                (200, stats(state))
            }
            None => (400, json!({"error": "the body must be a count, e.g. 1"})),
        },
        ("PUT", "/__echo/delay") => match body_number(request) {
            Some(ms) => {
                state.delay_ms.store(ms.min(MAX_DELAY_MS), Ordering::SeqCst);
                (200, stats(state))
            }
            None => (
                400,
                json!({"error": "the body must be milliseconds, e.g. 3000"}),
            ),
        },
        ("DELETE", "/__echo/delay") => {
            state.delay_ms.store(0, Ordering::SeqCst);
            (200, stats(state))
        }
        _ => (
            404,
            json!({"error": "control endpoints: GET /__echo/stats, PUT|DELETE /__echo/fail, \
                             PUT /__echo/fail-next, PUT|DELETE /__echo/delay"}),
        ),
    };
    Response::json(status, body.to_string())
}

/// The request body as a non-negative integer (`500`, `3000`), if it is one.
fn body_number(request: &Request) -> Option<u64> {
    String::from_utf8_lossy(&request.body).trim().parse().ok()
}

fn stats(state: &EchoState) -> Value {
    let failing_with = state.failing_with.load(Ordering::SeqCst);
    json!({
        "requests": state.served.load(Ordering::SeqCst),
        "failing_with": (failing_with != 0).then_some(failing_with),
    })
}
