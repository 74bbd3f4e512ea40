//! One request through the stages: in order on the way in, the other way on the way
//! out; a stage that pauses the request (it answered, or it waits for keys or the key
//! store) stops the others until it lets the request through.

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use wasmgate_api_key::ApiKeyRequest;
use wasmgate_combined_config::Stage;
use wasmgate_headers::HeadersRequest;
use wasmgate_host::HeaderSnapshot;
use wasmgate_jwt::JwtRequest;
use wasmgate_rate_limit::RateLimitRequest;

/// Requests paused by a stage, by context id: where the root finds the stages that
/// are still to run when the stage lets the request through.
pub type Paused = Rc<RefCell<HashMap<u32, Rc<RefCell<Stages>>>>>;

/// A request's context in each configured stage.
pub struct Stages {
    pub headers: Option<HeadersRequest>,
    pub jwt: Option<JwtRequest>,
    pub api_key: Option<ApiKeyRequest>,
    pub rate_limit: Option<RateLimitRequest>,
    /// Where the request phase goes on (an index into [`Stage::ORDER`]) after the
    /// stage that paused it.
    next: usize,
}

impl Stages {
    pub fn new(
        headers: Option<HeadersRequest>,
        jwt: Option<JwtRequest>,
        api_key: Option<ApiKeyRequest>,
        rate_limit: Option<RateLimitRequest>,
    ) -> Self {
        Self {
            headers,
            jwt,
            api_key,
            rate_limit,
            next: 0,
        }
    }

    /// The request phase of every stage from `Stage::ORDER[from]` on, on one snapshot
    /// of the request headers. Stops at the first stage that pauses the request.
    fn run_request(&mut self, from: usize, headers: &mut HeaderSnapshot) -> Action {
        for (index, stage) in Stage::ORDER.iter().enumerate().skip(from) {
            let action = match stage {
                Stage::Headers => self.headers.as_mut().map(|s| s.on_request_headers(headers)),
                Stage::Jwt => self.jwt.as_mut().map(|s| s.on_request_headers(headers)),
                Stage::ApiKey => self.api_key.as_mut().map(|s| s.on_request_headers(headers)),
                Stage::RateLimit => self
                    .rate_limit
                    .as_mut()
                    .map(|s| s.on_request_headers(headers)),
            };
            if action == Some(Action::Pause) {
                self.next = index + 1;
                return Action::Pause;
            }
        }
        self.next = Stage::ORDER.len();
        Action::Continue
    }

    /// Where a paused request goes on, once the stage that paused it let it through
    /// (the request is the effective context). `Continue`: every stage let it through.
    pub fn go_on(&mut self) -> Action {
        let from = self.next;
        self.run_request(from, &mut HeaderSnapshot::request())
    }

    /// The response phase, in the reverse order, as separate filters see a response.
    fn run_response(&mut self) {
        if let Some(stage) = self.rate_limit.as_mut() {
            stage.on_response_headers();
        }
        if let Some(stage) = self.headers.as_mut() {
            stage.on_response_headers();
        }
    }
}

pub struct CombinedRequest {
    context_id: u32,
    stages: Rc<RefCell<Stages>>,
    paused: Paused,
}

impl CombinedRequest {
    pub fn new(context_id: u32, stages: Stages, paused: Paused) -> Self {
        Self {
            context_id,
            stages: Rc::new(RefCell::new(stages)),
            paused,
        }
    }

    /// Body and trailers wait while a stage holds the request (an API-key lookup, a
    /// JWKS fetch): Envoy stops them anyway, but a request must never reach the
    /// upstream before every stage has let it through.
    fn hold_while_paused(&self) -> Action {
        if self.paused.borrow().contains_key(&self.context_id) {
            Action::Pause
        } else {
            Action::Continue
        }
    }
}

impl Context for CombinedRequest {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        self.on_rate_limit_answer(token_id, status_code, response_size);
    }
}

/// A request that went away while paused: no stage is to wake it. Its stages go with
/// it (the JWT stage's waiter in its own `Drop`). In `Drop` (the SDK drops a context in
/// `proxy_on_delete`) rather than `on_done`: the module does not export `proxy_on_done`,
/// which saves Envoy a VM crossing a request.
impl Drop for CombinedRequest {
    fn drop(&mut self) {
        if let Ok(mut paused) = self.paused.try_borrow_mut() {
            paused.remove(&self.context_id);
        }
    }
}

impl CombinedRequest {
    /// The rate-limit stage's exact-mode answer (the stage sent the call from this
    /// context): once the stage lets the request through, the later stages run, then
    /// Envoy resumes it.
    fn on_rate_limit_answer(&mut self, token: u32, status: u32, size: usize) {
        let action = match self.stages.borrow_mut().rate_limit.as_mut() {
            Some(stage) => stage.on_grpc_call_response(token, status, size),
            None => return,
        };
        if action != Action::Continue {
            return;
        }
        let Some(stages) = self.paused.borrow_mut().remove(&self.context_id) else {
            return;
        };
        let action = stages.borrow_mut().go_on();
        if action == Action::Continue {
            if let Err(status) = proxy_wasm::hostcalls::resume_http_request() {
                log::debug!("cannot resume request {}: {status:?}", self.context_id);
            }
        } else {
            self.paused.borrow_mut().insert(self.context_id, stages);
        }
    }
}

impl HttpContext for CombinedRequest {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let action = self
            .stages
            .borrow_mut()
            .run_request(0, &mut HeaderSnapshot::request());
        if action == Action::Pause {
            self.paused
                .borrow_mut()
                .insert(self.context_id, Rc::clone(&self.stages));
        }
        action
    }

    fn on_http_request_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        self.hold_while_paused()
    }

    fn on_http_request_trailers(&mut self, _trailers: usize) -> Action {
        self.hold_while_paused()
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        self.stages.borrow_mut().run_response();
        Action::Continue
    }
}
