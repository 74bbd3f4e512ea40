//! The root context: configures the stages, gives the JWT and API-key stages their
//! share of the root's tick and callouts, and lets a paused request go on through the
//! later stages when the stage that paused it lets it through.

use crate::request::{CombinedRequest, Paused, Stages};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use std::rc::Rc;
use wasmgate_api_key::ApiKeyRoot;
use wasmgate_combined_config::{CombinedConfig, Stage};
use wasmgate_headers::HeadersRoot;
use wasmgate_host::{Continuation, TickDemand, TickPeriods};
use wasmgate_jwt::JwtRoot;
use wasmgate_rate_limit::RateLimitRoot;

pub const FILTER: &str = "wasmgate-combined";

pub struct CombinedRoot {
    headers: HeadersRoot,
    jwt: JwtRoot,
    api_key: ApiKeyRoot,
    rate_limit: RateLimitRoot,
    /// The stages the configuration in place runs, in order. A stage an update drops
    /// takes no new request; its root stays, to finish requests it holds.
    running: Vec<Stage>,
    paused: Paused,
    /// The JWT and API-key stages' shares of the root's tick: each ticks when its own
    /// period is due.
    jwt_tick: TickDemand,
    api_key_tick: TickDemand,
    /// The rate-limit stage's share (lease renewals and the requests waiting for them).
    rate_limit_tick: TickDemand,
}

impl CombinedRoot {
    pub fn new(context_id: u32) -> Self {
        let paused = Paused::default();
        let ticks = Rc::new(TickPeriods::default());
        let jwt_tick = ticks.demand();
        let api_key_tick = ticks.demand();
        let rate_limit_tick = ticks.demand();
        Self {
            headers: HeadersRoot::default(),
            jwt: JwtRoot::stage(context_id, continuation(&paused), jwt_tick.clone()),
            api_key: ApiKeyRoot::stage(context_id, continuation(&paused), api_key_tick.clone()),
            rate_limit: RateLimitRoot::stage(
                context_id,
                continuation(&paused),
                rate_limit_tick.clone(),
            ),
            running: Vec::new(),
            paused,
            jwt_tick,
            api_key_tick,
            rate_limit_tick,
        }
    }

    fn runs(&self, stage: Stage) -> bool {
        self.running.contains(&stage)
    }

    /// A new request's stages: one context from each running stage. A running stage
    /// that cannot make its context (it has no configuration) fails the request
    /// rather than letting it skip the stage.
    fn new_stages(&self, context_id: u32) -> Option<Stages> {
        let headers = if self.runs(Stage::Headers) {
            Some(self.headers.new_request()?)
        } else {
            None
        };
        let jwt = if self.runs(Stage::Jwt) {
            Some(self.jwt.new_request(context_id)?)
        } else {
            None
        };
        let api_key = if self.runs(Stage::ApiKey) {
            Some(self.api_key.new_request(context_id)?)
        } else {
            None
        };
        let rate_limit = if self.runs(Stage::RateLimit) {
            Some(self.rate_limit.new_request(context_id)?)
        } else {
            None
        };
        Some(Stages::new(headers, jwt, api_key, rate_limit))
    }
}

/// What the JWT, API-key and rate-limit stages do with a request they let through after
/// it waited: the later stages run (they may answer it, or pause it again), then Envoy
/// resumes it.
fn continuation(paused: &Paused) -> Continuation {
    let paused = Rc::clone(paused);
    let resume = Continuation::resume_in_envoy();
    Continuation::new(move |context_id| {
        let Some(stages) = paused.borrow_mut().remove(&context_id) else {
            return; // gone meanwhile
        };
        let action = stages.borrow_mut().go_on();
        if action == Action::Continue {
            resume.resume(context_id);
        } else {
            paused.borrow_mut().insert(context_id, stages);
        }
    })
}

impl Context for CombinedRoot {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        if self.rate_limit.awaits(token_id) {
            self.rate_limit
                .on_grpc_call_response(token_id, status_code, response_size);
        }
    }

    fn on_http_call_response(
        &mut self,
        token: u32,
        headers: usize,
        body_size: usize,
        trailers: usize,
    ) {
        if self.jwt.awaits(token) {
            self.jwt
                .on_http_call_response(token, headers, body_size, trailers);
        } else if self.api_key.awaits(token) {
            self.api_key
                .on_http_call_response(token, headers, body_size, trailers);
        }
    }
}

impl RootContext for CombinedRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        wasmgate_host::follow_host_log_level();
        // The API-key stage's pepper comes from the VM's environment, as in the
        // separate filter.
        let env = |name: &str| std::env::var(name).ok();
        let Some(config) =
            wasmgate_host::load_config(FILTER, self.get_plugin_configuration(), |bytes| {
                CombinedConfig::from_json(bytes, &env)
            })
        else {
            return false;
        };
        self.running = config.stages();
        if let Some(policy) = config.headers {
            self.headers.install(policy);
        }
        if let Some(jwt) = config.jwt {
            self.jwt.install(jwt);
        }
        if let Some(api_key) = config.api_key {
            self.api_key.install(api_key);
        }
        if let Some(policy) = config.rate_limit {
            self.rate_limit.install(policy);
        }
        true
    }

    fn on_tick(&mut self) {
        let now = wasmgate_host::now_millis();
        if self.jwt_tick.due(now) {
            self.jwt.on_tick();
        }
        if self.api_key_tick.due(now) {
            self.api_key.on_tick();
        }
        if self.rate_limit_tick.due(now) {
            self.rate_limit.on_tick();
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let request = self
            .new_stages(context_id)
            .map(|stages| CombinedRequest::new(context_id, stages, Rc::clone(&self.paused)));
        wasmgate_host::Unconfigured::or_refusal(FILTER, request)
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
