//! One request: count it, and either let it through (its response gets the rate-limit
//! headers), answer it here (over a limit), or pause it for the global tier: until the
//! rate-limit service answers (exact mode: this context sends the call and gets the
//! answer) or until its key has a lease (lease mode: the root wakes it).

use crate::root::{read_grpc_answer, FilterState, Metrics, FILTER};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};
use std::cell::RefCell;
use std::rc::Rc;
use wasmgate_host::{HeaderSnapshot, HostStore};
use wasmgate_rate_limit_policy::{
    read_answer, LeaseWait, LimitedReply, Pending, RequestView, ResponseHeaders, ServiceCall,
    ServiceFailure, Verdict, RLS_METHOD, RLS_SERVICE,
};

/// How a request goes on after a verdict.
pub enum Finish {
    /// Let it through; these headers go on its response.
    Continue(ResponseHeaders),
    /// Answered here (the reply is sent).
    Answered,
    /// Pause until its key has a lease.
    Wait(LeaseWait),
    /// Pause for this exact-mode call.
    Ask(ServiceCall),
}

/// Carries out a verdict on the request that is the effective context: sends the reply
/// of a refused request, counts it.
pub fn finish(metrics: &Metrics, verdict: Verdict) -> Finish {
    match verdict {
        Verdict::Unlimited => Finish::Continue(ResponseHeaders::new()),
        Verdict::Allowed(headers) => {
            metrics.allowed.increment();
            Finish::Continue(headers)
        }
        Verdict::ShadowLimited(headers) => {
            metrics.shadow_limited.increment();
            Finish::Continue(headers)
        }
        Verdict::Limited(reply) => {
            metrics.limited.increment();
            send_reply(&reply);
            Finish::Answered
        }
        // Counted under the failure mode that decided it.
        Verdict::FailedClosed(reply) => {
            send_reply(&reply);
            Finish::Answered
        }
        Verdict::Uncounted(trouble) => {
            metrics.fail_open.increment();
            log::debug!("{FILTER}: request passed uncounted: {trouble:?}");
            Finish::Continue(ResponseHeaders::new())
        }
        Verdict::AwaitLease(wait) => Finish::Wait(wait),
        Verdict::AskService(call) => Finish::Ask(call),
    }
}

/// Sends a `ShouldRateLimit` call from the effective context (its answer comes back to
/// that context): Envoy's token, or `None` (logged) when it cannot be sent.
pub fn send_call(metrics: &Metrics, call: &ServiceCall) -> Option<u32> {
    let sent = hostcalls::dispatch_grpc_call(
        call.cluster(),
        RLS_SERVICE,
        RLS_METHOD,
        Vec::new(),
        Some(&call.message),
        call.timeout(),
    );
    match sent {
        Ok(token) => {
            metrics.global_calls.increment();
            Some(token)
        }
        Err(status) => {
            log::warn!(
                "{FILTER}: cannot call the rate-limit service on cluster {:?}: {status:?}",
                call.cluster()
            );
            None
        }
    }
}

fn send_reply(reply: &LimitedReply) {
    let headers: Vec<(&str, &str)> = reply
        .headers
        .iter()
        .map(|(n, v)| (*n, v.as_str()))
        .collect();
    if let Err(status) =
        hostcalls::send_http_response(reply.status, headers, Some(reply.body.as_bytes()))
    {
        log::warn!(
            "{FILTER}: could not answer a request with {}: {status:?}",
            reply.status
        );
    }
}

pub struct RateLimitRequest {
    context_id: u32,
    state: Rc<FilterState>,
    /// Headers for the upstream's response; empty when nothing was counted or the
    /// request was answered here. Shared with the root while the request waits.
    response_headers: Rc<RefCell<ResponseHeaders>>,
    /// The exact-mode call this request waits for: its token, what to finish it with,
    /// and when it was sent.
    call: Option<(u32, Pending, u64)>,
    /// Paused until the root wakes it with a lease.
    waits_for_lease: bool,
}

impl RateLimitRequest {
    pub fn new(context_id: u32, state: Rc<FilterState>) -> Self {
        Self {
            context_id,
            state,
            response_headers: Rc::default(),
            call: None,
            waits_for_lease: false,
        }
    }

    /// The request phase, on the request's headers (read once, shared with the other
    /// stages in the combined module). `Pause` when the request was answered here (over
    /// its limit) or waits for the global tier.
    pub fn on_request_headers(&mut self, headers: &HeaderSnapshot) -> Action {
        let now = wasmgate_host::now_millis();
        let decision = self
            .state
            .policy
            .decide(&HostRequest(headers), &HostStore, now);
        self.state.metrics.record_decision(&decision);
        if decision.global.renewal_queued {
            self.state.adjust_tick();
        }
        self.carry_out(decision.verdict, now)
    }

    fn carry_out(&mut self, verdict: Verdict, now: u64) -> Action {
        match finish(&self.state.metrics, verdict) {
            Finish::Continue(headers) => {
                *self.response_headers.borrow_mut() = headers;
                Action::Continue
            }
            Finish::Answered => Action::Pause,
            Finish::Wait(wait) => {
                self.state.policy.wait_for_lease(self.context_id, wait);
                self.state
                    .park(self.context_id, Rc::clone(&self.response_headers));
                self.waits_for_lease = true;
                Action::Pause
            }
            Finish::Ask(call) => self.ask(call, now),
        }
    }

    /// Sends the exact-mode call and pauses; a call that cannot be sent is a failure
    /// the tier's failure mode decides at once.
    fn ask(&mut self, call: ServiceCall, now: u64) -> Action {
        match send_call(&self.state.metrics, &call) {
            Some(token) => {
                self.call = Some((token, call.pending, now));
                Action::Pause
            }
            None => {
                let decision = self.state.policy.conclude(
                    &call.pending,
                    Err(ServiceFailure::Dispatch),
                    &HostStore,
                    now,
                );
                self.state.metrics.record_decision(&decision);
                // The verdict of a failure is never another call or wait.
                self.carry_out(decision.verdict, now)
            }
        }
    }

    /// The exact-mode answer (this context sent the call). `Continue`: let the request
    /// through (the caller resumes it); `Pause`: it was answered here, or the token is
    /// not this request's call.
    pub fn on_grpc_call_response(&mut self, token: u32, status: u32, size: usize) -> Action {
        let Some((expected, pending, sent_at)) = self.call.take() else {
            return Action::Pause;
        };
        if expected != token {
            self.call = Some((expected, pending, sent_at));
            return Action::Pause;
        }
        let now = wasmgate_host::now_millis();
        self.state
            .metrics
            .global_call_ms
            .record(now.saturating_sub(sent_at));
        let message = read_grpc_answer(status, size);
        let answer = read_answer(status, &message, sent_at, now, pending.timeout());
        if let Err(failure) = &answer {
            log::debug!("{FILTER}: rate-limit service call failed: {failure:?}");
        }
        let decision = self
            .state
            .policy
            .conclude(&pending, answer, &HostStore, now);
        self.state.metrics.record_decision(&decision);
        self.carry_out(decision.verdict, now)
    }

    /// Holds body and trailers while the request waits for the global tier.
    pub fn hold_while_undecided(&self) -> Action {
        let waiting = self.waits_for_lease && self.state.is_undecided(self.context_id);
        if waiting || self.call.is_some() {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    /// The response phase: the rate-limit headers of a counted request.
    pub fn on_response_headers(&mut self) -> Action {
        for (name, value) in std::mem::take(&mut *self.response_headers.borrow_mut()) {
            let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(&value));
        }
        Action::Continue
    }
}

impl Context for RateLimitRequest {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        if RateLimitRequest::on_grpc_call_response(self, token_id, status_code, response_size)
            == Action::Continue
        {
            if let Err(status) = hostcalls::resume_http_request() {
                log::debug!("{FILTER}: cannot resume a request: {status:?}");
            }
        }
    }
}

impl HttpContext for RateLimitRequest {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        self.on_request_headers(&HeaderSnapshot::request())
    }

    // Envoy's proxy-wasm host turns a paused request into "stop everything", so body
    // and trailers do not reach the filter while it waits; a host that only stopped
    // the headers would, and continuing here would pass the request upstream uncounted.
    fn on_http_request_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        self.hold_while_undecided()
    }

    fn on_http_request_trailers(&mut self, _trailers: usize) -> Action {
        self.hold_while_undecided()
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        self.on_response_headers()
    }
}

impl Drop for RateLimitRequest {
    fn drop(&mut self) {
        // The client may leave while waiting: nobody must try to wake this context.
        if self.waits_for_lease {
            self.state.forget(self.context_id);
        }
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
