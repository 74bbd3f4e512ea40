//! The root context: loads the configuration, creates the cache table, sends the
//! key-store lookups and wakes the requests that waited for them.

use crate::request::{self, ApiKeyRequest, Finish};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use std::cell::RefCell;
use std::rc::Rc;
use wasmgate_api_key_auth::record::{read_lookup_response, MAX_RESPONSE_BODY};
use wasmgate_api_key_auth::{
    ApiKeyConfig, Denial, KeyCache, KeyHash, Lookup, PendingLookups, Permit, StoreError, Verdict,
};
use wasmgate_host::{
    Callout, CalloutResponse, Continuation, Counter, Gauge, HeaderSnapshot, Histogram, HostStore,
    TickDemand,
};

pub const FILTER: &str = "wasmgate-api-key";

/// What this filter reports (Envoy shows them under `wasmcustom.`).
pub struct Metrics {
    pub allowed: Counter,
    pub failed_open: Counter,
    pub skipped: Counter,
    denied: [Counter; Denial::ALL.len()],
    pub cache_hit: Counter,
    pub cache_miss: Counter,
    pub cache_stale: Counter,
    pub cache_coalesced: Counter,
    pub lookups: Counter,
    store_errors: [(&'static str, Counter); 4],
    pub lookup_ms: Histogram,
    pub cache_slots: Gauge,
    pub cache_entries: Gauge,
}

impl Metrics {
    fn new() -> Self {
        let name = |suffix: &str| format!("wasmgate.api_key.{suffix}");
        let error_kinds = ["dispatch", "no_response", "status", "invalid_response"];
        let cache =
            |result: &str| Counter::tagged(&name("cache_lookups_total"), &[("result", result)]);
        Self {
            allowed: Counter::new(&name("allowed_total")),
            failed_open: Counter::new(&name("fail_open_total")),
            skipped: Counter::new(&name("skipped_total")),
            denied: Denial::ALL
                .map(|d| Counter::tagged(&name("denied_total"), &[("reason", d.reason())])),
            cache_hit: cache("hit"),
            cache_miss: cache("miss"),
            cache_stale: cache("stale"),
            cache_coalesced: cache("coalesced"),
            lookups: Counter::new(&name("store_lookups_total")),
            store_errors: error_kinds.map(|kind| {
                let errors = Counter::tagged(&name("store_errors_total"), &[("kind", kind)]);
                (kind, errors)
            }),
            lookup_ms: Histogram::new(&name("store_lookup_duration_milliseconds")),
            cache_slots: Gauge::new(&name("cache_slots")),
            cache_entries: Gauge::new(&name("cache_entries")),
        }
    }

    pub fn denied(&self, denial: Denial) {
        if let Some(i) = Denial::ALL.iter().position(|d| *d == denial) {
            self.denied[i].increment();
        }
    }

    fn store_error(&self, error: &StoreError) {
        if let Some((_, counter)) = self.store_errors.iter().find(|(k, _)| *k == error.kind()) {
            counter.increment();
        }
    }
}

/// Everything one configuration of the filter shares in one VM: the root context and
/// every request context of the worker hold it.
pub struct FilterState {
    pub config: ApiKeyConfig,
    pub cache: KeyCache<HostStore>,
    pub pending: RefCell<PendingLookups>,
    pub metrics: Metrics,
    root_context_id: u32,
    tick: TickDemand,
    /// How a request that waited for its key goes on once let through.
    continuation: Continuation,
}

impl FilterState {
    /// Asks for the tick the pending work needs. Works from a request context too:
    /// Envoy applies it to the request's root.
    pub fn adjust_tick(&self) {
        self.tick.want(self.pending.borrow().tick());
    }

    /// Reports slots that went from empty to filled.
    pub fn count_filled_slots(&self) {
        let filled = self.cache.take_filled();
        if filled > 0 {
            self.metrics.cache_entries.add(filled as i64);
        }
    }

    /// The verdict for a settled lookup, or `None` while it is still open.
    pub fn verdict<'a>(&self, lookup: &'a Lookup, now: u64) -> Option<Verdict<'a>> {
        match lookup {
            Lookup::Fresh(answer) | Lookup::Stale(answer) => Some(self.config.judge(answer, now)),
            Lookup::Unavailable => Some(self.config.unavailable()),
            Lookup::Overloaded => Some(Verdict::Deny(Denial::Overloaded)),
            Lookup::Wait | Lookup::Fetch(_) => None,
        }
    }

    /// Queues a lookup for the root's next tick, holding `permit` until it answers
    /// (or giving it back at once when this worker is asking already).
    pub fn queue(&self, hash: KeyHash, permit: Permit) {
        if !self.pending.borrow_mut().queue(hash, permit) {
            self.cache.release(permit);
        }
    }

    fn on_tick(&self, now: u64) {
        self.poll_watched(now);
        self.send_queued(now);
        self.expire_overdue(now);
        self.count_filled_slots();
        self.adjust_tick();
    }

    /// Requests waiting on another worker's lookup: look for its answer.
    fn poll_watched(&self, now: u64) {
        let watched = self.pending.borrow().watched();
        for hash in watched {
            match self.cache.begin(&hash, now) {
                Lookup::Wait => {}
                // The other worker's claim lapsed (or its slot was taken): ask ourselves.
                Lookup::Fetch(permit) => self.queue(hash, permit),
                settled => self.settle(&hash, &settled, now),
            }
        }
    }

    fn send_queued(&self, now: u64) {
        let queued = self.pending.borrow_mut().take_queued();
        for (hash, permit) in queued {
            let path = self.config.store.lookup_path(&hash);
            let callout = Callout {
                cluster: &self.config.store.cluster,
                method: "GET",
                path: &path,
                authority: &self.config.store.authority,
                headers: vec![("accept", "application/json")],
                timeout: self.config.store.timeout,
            };
            match callout.dispatch() {
                Ok(token) => {
                    self.pending.borrow_mut().sent(hash, token, now);
                    self.metrics.lookups.increment();
                }
                Err(status) => {
                    log::warn!(
                        "{FILTER}: cannot send the lookup to cluster {:?}: {status:?}",
                        self.config.store.cluster
                    );
                    self.pending.borrow_mut().abandon(&hash);
                    self.cache.release(permit);
                    self.metrics.store_error(&StoreError::Dispatch);
                    let outcome = self.cache.fail(&hash, now);
                    self.settle(&hash, &outcome, now);
                }
            }
        }
    }

    fn expire_overdue(&self, now: u64) {
        let overdue = self.pending.borrow_mut().take_overdue(now);
        for (context_id, hash) in overdue {
            let outcome = self.cache.usable(&hash, now);
            if let Some(verdict) = self.verdict(&outcome, now) {
                self.note_stale(&outcome, 1);
                self.wake(context_id, &verdict);
            }
        }
    }

    fn on_lookup_answer(&self, token: u32, body_size: usize, now: u64) {
        let response = CalloutResponse::read(body_size, MAX_RESPONSE_BODY);
        let Some(answered) = self.pending.borrow_mut().answered(token) else {
            return;
        };
        self.cache.release(answered.permit);
        self.metrics
            .lookup_ms
            .record(now.saturating_sub(answered.sent_at));
        let hash = answered.hash;
        let outcome =
            match read_lookup_response(response.status, &response.body, response.truncated) {
                Ok(answer) => self.cache.complete(&hash, &answer, now),
                Err(error) => {
                    log::warn!("{FILTER}: key store lookup failed: {error:?} ({hash:?})");
                    self.metrics.store_error(&error);
                    self.cache.fail(&hash, now)
                }
            };
        self.settle(&hash, &outcome, now);
        self.count_filled_slots();
        self.adjust_tick();
    }

    /// Wakes every request of this worker waiting on `hash` with the outcome.
    fn settle(&self, hash: &KeyHash, outcome: &Lookup, now: u64) {
        let Some(verdict) = self.verdict(outcome, now) else {
            return;
        };
        let waiters = self.pending.borrow_mut().take_waiters(hash);
        self.note_stale(outcome, waiters.len());
        for context_id in waiters {
            self.wake(context_id, &verdict);
        }
    }

    fn note_stale(&self, outcome: &Lookup, requests: usize) {
        if matches!(outcome, Lookup::Stale(_)) {
            self.metrics.cache_stale.add(requests as u64);
        }
    }

    /// Finishes a paused request from the root, then makes the root the effective
    /// context again, so that later host calls (a callout above all) stay the root's.
    fn wake(&self, context_id: u32, verdict: &Verdict<'_>) {
        // A request that is gone cannot be made effective; nothing to do then.
        if hostcalls::set_effective_context(context_id).is_ok() {
            match request::finish(self, verdict, &mut HeaderSnapshot::request()) {
                Finish::Continue => self.continuation.resume(context_id),
                Finish::Respond(reply) => request::send_reply(&reply),
            }
        }
        let _ = hostcalls::set_effective_context(self.root_context_id);
    }
}

pub struct ApiKeyRoot {
    context_id: u32,
    state: Option<Rc<FilterState>>,
    continuation: Continuation,
    tick: TickDemand,
}

impl ApiKeyRoot {
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
            continuation,
            tick,
        }
    }

    /// A new request's context, once a configuration is in place.
    pub fn new_request(&self, context_id: u32) -> Option<ApiKeyRequest> {
        let state = Rc::clone(self.state.as_ref()?);
        Some(ApiKeyRequest::new(context_id, state))
    }

    /// Whether a callout answer with this token is a lookup of this filter.
    pub fn awaits(&self, token: u32) -> bool {
        self.state
            .as_ref()
            .is_some_and(|state| state.pending.borrow().expects(token))
    }

    /// Puts a validated configuration in place (at start, or on an update).
    pub fn install(&mut self, config: ApiKeyConfig) {
        let cache = KeyCache::new(HostStore, config.cache_namespace.clone(), config.cache);
        let created = cache.create_table();
        let metrics = Metrics::new();
        metrics.cache_slots.set(u64::from(config.cache.slots));
        log::debug!(
            "{FILTER}: cache table {} has {} slots ({created} created by this VM)",
            config.cache_namespace,
            config.cache.slots
        );
        self.state = Some(Rc::new(FilterState {
            config,
            cache,
            pending: RefCell::new(PendingLookups::new()),
            metrics,
            root_context_id: self.context_id,
            tick: self.tick.clone(),
            continuation: self.continuation.clone(),
        }));
    }
}

impl Context for ApiKeyRoot {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        if let Some(state) = &self.state {
            state.on_lookup_answer(token, body_size, wasmgate_host::now_millis());
        }
    }
}

impl RootContext for ApiKeyRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        wasmgate_host::follow_host_log_level();
        // The pepper comes from the VM's environment (Envoy's
        // `vm_config.environment_variables`), never from the plugin configuration.
        let env = |name: &str| std::env::var(name).ok();
        let Some(config) =
            wasmgate_host::load_config(FILTER, self.get_plugin_configuration(), |bytes| {
                ApiKeyConfig::from_json(bytes, &env)
            })
        else {
            return false;
        };
        self.install(config);
        true
    }

    fn on_tick(&mut self) {
        if let Some(state) = &self.state {
            state.on_tick(wasmgate_host::now_millis());
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        wasmgate_host::Unconfigured::or_refusal(FILTER, self.new_request(context_id))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
