//! The root context: loads the configuration, creates the tables in shared data, and, for
//! rules that lease from a rate-limit service, sends the renewals and wakes the requests
//! that waited for a lease.

use crate::request::{self, Finish, RateLimitRequest};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use wasmgate_host::{Continuation, Counter, Gauge, Histogram, HostStore, TickDemand};
use wasmgate_rate_limit_policy::{
    read_answer, Decision, FailureMode, LeaseAnswer, Pending, RateLimitPolicy, ResponseHeaders,
    ServiceCall, ServiceFailure, TableEvents, Verdict, Waiter, LEASE_METHOD, LEASE_SERVICE,
};

pub const FILTER: &str = "wasmgate-rate-limit";

/// Largest gRPC answer read from a rate-limit service.
pub const MAX_ANSWER: usize = 64 * 1024;

/// What this filter reports (Envoy shows them under `wasmcustom.`).
pub struct Metrics {
    pub allowed: Counter,
    pub limited: Counter,
    pub shadow_limited: Counter,
    /// Requests let through uncounted because the table could not be updated.
    pub fail_open: Counter,
    pub cas_conflicts: Counter,
    /// Requests counted against a rule's shared overflow bucket (no slot was free).
    pub overflow: Counter,
    pub slots_reclaimed: Counter,
    /// Table slots holding a bucket; all VMs add to the same Envoy gauge.
    pub slots_in_use: Gauge,
    /// The global tier: exact-mode calls sent, and how long they took.
    pub global_calls: Counter,
    pub global_call_ms: Histogram,
    /// Requests the global limit refused (or would have, in shadow mode).
    pub global_over_limit: Counter,
    /// Requests the global tier could not decide, by cause and by the failure mode that did.
    global_failures: Vec<(&'static str, Counter)>,
    failure_modes: [(FailureMode, Counter); 3],
    /// Lease renewal calls sent, hits granted, keys refused (over the limit) or failed,
    /// and requests that waited for a lease.
    pub lease_renewals: Counter,
    pub lease_granted: Counter,
    pub lease_over_limit: Counter,
    pub lease_failed: Counter,
    pub lease_waits: Counter,
}

impl Metrics {
    fn new() -> Self {
        let name = |n: &str| format!("wasmgate.rate_limit.{n}");
        Self {
            allowed: Counter::new(&name("allowed_total")),
            limited: Counter::new(&name("limited_total")),
            shadow_limited: Counter::new(&name("shadow_limited_total")),
            fail_open: Counter::new(&name("fail_open_total")),
            cas_conflicts: Counter::new(&name("cas_conflicts_total")),
            overflow: Counter::new(&name("overflow_total")),
            slots_reclaimed: Counter::new(&name("slots_reclaimed_total")),
            slots_in_use: Gauge::new(&name("slots_in_use")),
            global_calls: Counter::new(&name("global_calls_total")),
            global_call_ms: Histogram::new(&name("global_call_duration_milliseconds")),
            global_over_limit: Counter::new(&name("global_over_limit_total")),
            global_failures: ServiceFailure::KINDS
                .iter()
                .map(|kind| {
                    let metric = name("global_failures_total");
                    (*kind, Counter::tagged(&metric, &[("kind", kind)]))
                })
                .collect(),
            failure_modes: [FailureMode::Allow, FailureMode::Deny, FailureMode::Local].map(
                |mode| {
                    let metric = name("global_failure_decisions_total");
                    (mode, Counter::tagged(&metric, &[("result", mode.name())]))
                },
            ),
            lease_renewals: Counter::new(&name("lease_renewals_total")),
            lease_granted: Counter::new(&name("lease_granted_hits_total")),
            lease_over_limit: Counter::new(&name("lease_over_limit_total")),
            lease_failed: Counter::new(&name("lease_failed_total")),
            lease_waits: Counter::new(&name("lease_waits_total")),
        }
    }

    pub fn record(&self, events: &TableEvents) {
        if events.cas_conflicts > 0 {
            self.cas_conflicts.add(u64::from(events.cas_conflicts));
        }
        if events.overflow {
            self.overflow.increment();
        }
        if events.reclaimed_slot {
            self.slots_reclaimed.increment();
        }
        if events.occupied_vacant_slot {
            self.slots_in_use.add(1);
        }
    }

    /// Everything a decision did, but its verdict (counted where it is carried out).
    pub fn record_decision(&self, decision: &Decision) {
        self.record(&decision.events);
        if decision.global.over_limit {
            self.global_over_limit.increment();
        }
        if let Some((failure, mode)) = decision.global.failure {
            if let Some((_, counter)) = self
                .global_failures
                .iter()
                .find(|(kind, _)| *kind == failure.kind())
            {
                counter.increment();
            }
            if let Some((_, counter)) = self.failure_modes.iter().find(|(m, _)| *m == mode) {
                counter.increment();
            }
        }
    }

    fn record_lease_answer(&self, answer: &LeaseAnswer) {
        if answer.granted > 0 {
            self.lease_granted.add(answer.granted);
        }
        if answer.over_limit > 0 {
            self.lease_over_limit.add(u64::from(answer.over_limit));
        }
        if answer.failed > 0 {
            self.lease_failed.add(u64::from(answer.failed));
        }
    }
}

/// Everything one configuration of the filter shares in one VM: the root context and
/// every request context of the worker hold it.
pub struct FilterState {
    pub policy: RateLimitPolicy,
    pub metrics: Rc<Metrics>,
    root_context_id: u32,
    tick: TickDemand,
    /// How a request that waited for a lease goes on once let through.
    continuation: Continuation,
    /// The response headers of requests waiting for a lease, filled when they are let
    /// through.
    waiting: RefCell<HashMap<u32, Rc<RefCell<ResponseHeaders>>>>,
    /// Requests that waited for a lease and are now asked about one by one (their key's
    /// window closes before a lease could be spent): the root's call token -> the
    /// request, what to decide it with, and when the call was sent.
    asked: RefCell<HashMap<u32, (u32, Pending, u64)>>,
}

impl FilterState {
    /// Asks for the tick the leases need. Works from a request context too: Envoy
    /// applies it to the request's root.
    pub fn adjust_tick(&self) {
        self.tick.want(self.policy.lease_tick_period());
    }

    /// A request pauses until its key has a lease.
    pub fn park(&self, context_id: u32, headers: Rc<RefCell<ResponseHeaders>>) {
        self.waiting.borrow_mut().insert(context_id, headers);
        self.metrics.lease_waits.increment();
        self.adjust_tick();
    }

    /// A request that waited went away.
    pub fn forget(&self, context_id: u32) {
        self.policy.forget_waiter(context_id);
        if let Ok(mut waiting) = self.waiting.try_borrow_mut() {
            waiting.remove(&context_id);
        }
        if let Ok(mut asked) = self.asked.try_borrow_mut() {
            asked.retain(|_, (waiter, _, _)| *waiter != context_id);
        }
    }

    /// Whether a request that waited for a lease is still undecided (waiting, or asked
    /// about by the root).
    pub fn is_undecided(&self, context_id: u32) -> bool {
        self.policy.is_waiting(context_id)
            || self
                .asked
                .borrow()
                .values()
                .any(|(waiter, _, _)| *waiter == context_id)
    }

    /// Whether a gRPC answer with this token is the root's: a lease renewal, or a call
    /// about a request that waited.
    pub fn awaits(&self, token: u32) -> bool {
        self.policy.awaits_lease_answer(token) || self.asked.borrow().contains_key(&token)
    }

    fn on_tick(&self, now: u64) {
        let tick = self.policy.lease_tick(&HostStore, now);
        for waiter in tick.ready {
            self.wake(waiter, now);
        }
        for call in tick.calls {
            let token = hostcalls::dispatch_grpc_call(
                &call.cluster,
                LEASE_SERVICE,
                LEASE_METHOD,
                Vec::new(),
                Some(&call.message),
                call.timeout,
            );
            let token = match token {
                Ok(token) => {
                    self.metrics.lease_renewals.increment();
                    Some(token)
                }
                Err(status) => {
                    log::warn!(
                        "{FILTER}: cannot send a lease renewal to cluster {:?}: {status:?}",
                        call.cluster
                    );
                    None
                }
            };
            let answer = self
                .policy
                .lease_dispatched(call.id, token, &HostStore, now);
            self.settle(answer, now);
        }
        self.adjust_tick();
    }

    fn on_grpc_answer(&self, token: u32, grpc_status: u32, size: usize, now: u64) {
        let asked = self.asked.borrow_mut().remove(&token);
        if let Some((context_id, pending, sent_at)) = asked {
            self.metrics
                .global_call_ms
                .record(now.saturating_sub(sent_at));
            let message = read_grpc_answer(grpc_status, size);
            let answer = read_answer(grpc_status, &message, sent_at, now, pending.timeout());
            let decision = self.policy.conclude(&pending, answer, &HostStore, now);
            self.finish_waiter(context_id, decision, now);
            return;
        }
        let message = read_grpc_answer(grpc_status, size);
        if grpc_status != 0 {
            log::debug!("{FILTER}: lease renewal failed: gRPC status {grpc_status}");
        }
        let answer = self
            .policy
            .lease_answer(token, grpc_status, &message, &HostStore, now);
        self.settle(answer, now);
        self.adjust_tick();
    }

    fn settle(&self, answer: LeaseAnswer, now: u64) {
        self.metrics.record_lease_answer(&answer);
        for waiter in answer.ready {
            self.wake(waiter, now);
        }
    }

    /// Decides a request that waited for its lease, from the root.
    fn wake(&self, waiter: Waiter, now: u64) {
        let context_id = waiter.context_id;
        let decision = self.policy.resume(waiter, &HostStore, now);
        self.finish_waiter(context_id, decision, now);
    }

    /// This configuration is being replaced: its waiting requests are decided now
    /// (nothing would wake them later).
    fn retire(&self, now: u64) {
        for (context_id, decision) in self.policy.release_waiters(&HostStore, now) {
            self.finish_waiter(context_id, decision, now);
        }
        // Their answers would come to the configuration that replaces this one.
        let asked: Vec<_> = self.asked.borrow_mut().drain().collect();
        for (_, (context_id, pending, _)) in asked {
            let decision =
                self.policy
                    .conclude(&pending, Err(ServiceFailure::NoLease), &HostStore, now);
            self.finish_waiter(context_id, decision, now);
        }
    }

    /// Carries out the decision about a request that waited, then makes the root the
    /// effective context again (later host calls, a renewal above all, stay the root's).
    fn finish_waiter(&self, context_id: u32, decision: Decision, now: u64) {
        self.metrics.record_decision(&decision);
        let verdict = match decision.verdict {
            Verdict::AwaitLease(wait) => {
                self.policy.wait_for_lease(context_id, wait);
                return;
            }
            Verdict::AskService(call) => return self.ask_for_waiter(context_id, call, now),
            verdict => verdict,
        };
        let headers = self.waiting.borrow_mut().remove(&context_id);
        // A request that is gone cannot be made effective; nothing to do then.
        if hostcalls::set_effective_context(context_id).is_ok() {
            match request::finish(&self.metrics, verdict) {
                Finish::Continue(response_headers) => {
                    if let Some(cell) = headers {
                        *cell.borrow_mut() = response_headers;
                    }
                    self.continuation.resume(context_id);
                }
                Finish::Answered | Finish::Wait(_) | Finish::Ask(_) => {}
            }
        }
        let _ = hostcalls::set_effective_context(self.root_context_id);
    }
}

impl FilterState {
    /// Asks the service about a request that waited (the root sends the call, so its
    /// answer comes back here); a call that cannot be sent is decided by the failure mode.
    fn ask_for_waiter(&self, context_id: u32, call: ServiceCall, now: u64) {
        match request::send_call(&self.metrics, &call) {
            Some(token) => {
                self.asked
                    .borrow_mut()
                    .insert(token, (context_id, call.pending, now));
            }
            None => {
                let failure = Err(ServiceFailure::Dispatch);
                let decision = self
                    .policy
                    .conclude(&call.pending, failure, &HostStore, now);
                // The verdict of a failure is never another call or wait.
                self.finish_waiter(context_id, decision, now);
            }
        }
    }
}

/// The message of a gRPC answer being delivered (empty when it failed or is too large).
pub fn read_grpc_answer(grpc_status: u32, size: usize) -> Vec<u8> {
    if grpc_status != 0 || size == 0 || size > MAX_ANSWER {
        return Vec::new();
    }
    hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, size)
        .ok()
        .flatten()
        .unwrap_or_default()
}

pub struct RateLimitRoot {
    context_id: u32,
    state: Option<Rc<FilterState>>,
    metrics: Option<Rc<Metrics>>,
    continuation: Continuation,
    tick: TickDemand,
}

impl RateLimitRoot {
    /// The filter on its own: it resumes requests in Envoy and owns its root's tick.
    pub fn new(context_id: u32) -> Self {
        Self::stage(
            context_id,
            Continuation::resume_in_envoy(),
            TickDemand::alone(),
        )
    }

    /// The filter as a stage of the combined module, whose root is `context_id`.
    pub fn stage(context_id: u32, continuation: Continuation, tick: TickDemand) -> Self {
        Self {
            context_id,
            state: None,
            metrics: None,
            continuation,
            tick,
        }
    }

    /// Puts a validated configuration in place (at start, or on an update).
    pub fn install(&mut self, policy: RateLimitPolicy) {
        let metrics = Rc::clone(self.metrics.get_or_insert_with(|| Rc::new(Metrics::new())));
        // The slots' creation guards (and overflow buckets) exist before this VM counts a
        // request; slots are created when first needed, under their guard (a write that
        // creates a key ignores compare-and-swap).
        let census = policy.prepare(&HostStore);
        metrics.slots_in_use.set(census.occupied);
        log::info!(
            "{FILTER}: bucket table of {} slots ready ({} exist, {} in use; {} keys created here)",
            policy.table().slots(),
            census.existing,
            census.occupied,
            census.created
        );
        for (rule, tier) in policy.global_rules() {
            log::info!(
                "{FILTER}: rule {rule:?} is also limited across the fleet ({:?}, cluster {:?}, domain {:?})",
                tier.mode,
                tier.cluster,
                tier.domain
            );
        }
        if let Some(table) = policy.lease_table() {
            log::info!("{FILTER}: lease table of {} slots ready", table.slots());
            let holder = wasmgate_host::property_text(&["node", "id"])
                .filter(|id| !id.is_empty())
                .unwrap_or_else(|| "envoy".to_owned());
            policy.set_lease_holder(holder);
        }
        let state = Rc::new(FilterState {
            policy,
            metrics,
            root_context_id: self.context_id,
            tick: self.tick.clone(),
            continuation: self.continuation.clone(),
            waiting: RefCell::default(),
            asked: RefCell::default(),
        });
        state.adjust_tick();
        if let Some(previous) = self.state.replace(state) {
            previous.retire(wasmgate_host::now_millis());
        }
    }

    /// A new request's context, once a configuration is in place.
    pub fn new_request(&self, context_id: u32) -> Option<RateLimitRequest> {
        let state = Rc::clone(self.state.as_ref()?);
        Some(RateLimitRequest::new(context_id, state))
    }

    /// Whether a gRPC answer with this token is this filter's root's (a lease renewal, or a
    /// call about a request that waited).
    pub fn awaits(&self, token: u32) -> bool {
        self.state.as_ref().is_some_and(|state| state.awaits(token))
    }

    /// The root's tick (or this stage's share of it).
    pub fn on_tick(&self) {
        if let Some(state) = &self.state {
            state.on_tick(wasmgate_host::now_millis());
        }
    }

    /// A lease renewal, or a call about a request that waited, answered.
    pub fn on_grpc_call_response(&self, token: u32, status_code: u32, response_size: usize) {
        if let Some(state) = &self.state {
            state.on_grpc_answer(
                token,
                status_code,
                response_size,
                wasmgate_host::now_millis(),
            );
        }
    }
}

impl Context for RateLimitRoot {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        RateLimitRoot::on_grpc_call_response(self, token_id, status_code, response_size);
    }
}

impl RootContext for RateLimitRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        wasmgate_host::follow_host_log_level();
        let Some(policy) = wasmgate_host::load_config(
            FILTER,
            self.get_plugin_configuration(),
            RateLimitPolicy::from_json,
        ) else {
            return false;
        };
        self.install(policy);
        true
    }

    fn on_tick(&mut self) {
        RateLimitRoot::on_tick(self);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        wasmgate_host::Unconfigured::or_refusal(FILTER, self.new_request(context_id))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
