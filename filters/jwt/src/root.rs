use crate::request::{finish, JwtRequest};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, Status};
use std::cell::{Cell, RefCell};
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::rc::Rc;
use std::time::Duration;
use wasmgate_host::{
    Callout, CalloutResponse, Continuation, Counter, HeaderSnapshot, HostStore, TickDemand,
};
use wasmgate_jwt_auth::authenticator::{CacheUse, Context as CheckContext, RequestInfo};
use wasmgate_jwt_auth::host_verifier::HostVerifier;
use wasmgate_jwt_auth::jwks::MAX_JWKS_BYTES;
use wasmgate_jwt_auth::{
    Attempt, AuthError, Authenticator, FetchReport, FetchResponse, JwtConfig, Keyring, Outcome,
    TokenCache,
};

pub const FILTER: &str = "wasmgate-jwt";

/// How often every VM looks at shared data (new keys, due refreshes) and at its
/// waiting requests (the combined module runs this stage's tick at this pace). Reading the small `.state` record costs microseconds; a short
/// period bounds how long a request waits after its keys arrived in another VM.
pub const TICK: Duration = Duration::from_millis(100);

/// Counters this filter reports (Envoy shows them under `wasmcustom.`).
pub struct Metrics {
    pub allowed: Counter,
    pub no_token_needed: Counter,
    denied: Vec<(&'static str, Counter)>,
    pub waited: Counter,
    /// JWKS fetches by provider, (success, failure): defined at a provider's first.
    jwks_fetches: RefCell<HashMap<String, [Counter; 2]>>,
    pub token_cache_hit: Counter,
    pub token_cache_miss: Counter,
}

impl Metrics {
    fn new() -> Self {
        let counter = |name: &str| Counter::new(&format!("wasmgate.jwt.{name}"));
        let tagged = |name: &str, tags: &[(&str, &str)]| {
            Counter::tagged(&format!("wasmgate.jwt.{name}"), tags)
        };
        Self {
            allowed: counter("allowed_total"),
            no_token_needed: counter("no_token_needed_total"),
            denied: AuthError::REASONS
                .iter()
                .map(|reason| (*reason, tagged("denied_total", &[("reason", reason)])))
                .collect(),
            waited: counter("waited_for_keys_total"),
            jwks_fetches: RefCell::new(HashMap::new()),
            token_cache_hit: tagged("token_cache_lookups_total", &[("result", "hit")]),
            token_cache_miss: tagged("token_cache_lookups_total", &[("result", "miss")]),
        }
    }

    pub fn denied(&self, reason: &str) {
        if let Some((_, counter)) = self.denied.iter().find(|(r, _)| *r == reason) {
            counter.increment();
        }
    }

    pub fn jwks_fetched(&self, provider: &str, success: bool) {
        let mut fetches = self.jwks_fetches.borrow_mut();
        let counters = fetches.entry(provider.to_string()).or_insert_with(|| {
            ["success", "failure"].map(|result| {
                let tags = [("provider", provider), ("result", result)];
                Counter::tagged("wasmgate.jwt.jwks_fetches_total", &tags)
            })
        });
        counters[usize::from(!success)].increment();
    }

    pub fn cache(&self, used: CacheUse) {
        match used {
            CacheUse::Hit => self.token_cache_hit.increment(),
            CacheUse::Miss => self.token_cache_miss.increment(),
            CacheUse::NotUsed => {}
        }
    }
}

/// Envoy's `verify_signature` foreign function: RS256/384/512 and ES256/384
/// signatures checked by Envoy's BoringSSL, natively, at a tenth of what the same
/// check costs inside V8 (`wasmgate_jwt_auth::host_verifier`). Once the host says it
/// has no such function, or withholds it, this VM stops asking and verifies in the VM.
pub struct EnvoyVerifier {
    available: Cell<bool>,
    checked: Counter,
}

impl EnvoyVerifier {
    fn new() -> Self {
        Self {
            available: Cell::new(true),
            checked: Counter::new("wasmgate.jwt.signatures_checked_by_envoy_total"),
        }
    }
}

impl HostVerifier for EnvoyVerifier {
    fn verify_signature(&self, arguments: &[u8]) -> Option<Vec<u8>> {
        if !self.available.get() {
            return None;
        }
        match hostcalls::call_foreign_function("verify_signature", Some(arguments)) {
            Ok(answer) => {
                self.checked.increment();
                // No bytes: a result of false with no error text.
                Some(answer.unwrap_or_default())
            }
            // BoringSSL could not import this key: the VM checks this signature.
            Err(Status::BadArgument) => None,
            // NotFound: a host without the function; InternalFailure: Envoy's
            // capability_restriction_config withholds foreign functions.
            Err(status) => {
                self.available.set(false);
                log::info!(
                    "{FILTER}: the host does not check signatures (verify_signature: {status:?}); checking them in the VM"
                );
                None
            }
        }
    }
}

/// What one configuration needs in one VM: the decision logic, the keys, the
/// verified-token cache, the host's signature check. Shared by the root and every
/// request of the VM.
pub struct Shared {
    pub auth: Authenticator,
    keyring: RefCell<Keyring>,
    cache: RefCell<TokenCache>,
    verifier: EnvoyVerifier,
}

impl Shared {
    fn new(config: JwtConfig, holder: u64) -> Self {
        let keyring = Keyring::new(&config, holder);
        let cache = TokenCache::new(config.token_cache_entries);
        Self {
            auth: Authenticator::new(config),
            keyring: RefCell::new(keyring),
            cache: RefCell::new(cache),
            verifier: EnvoyVerifier::new(),
        }
    }

    pub fn start(&self, request: &RequestInfo<'_>, now: u64) -> Outcome {
        self.decide(now, |auth, cx| auth.start(request, cx))
    }

    fn check(&self, attempt: Attempt, now: u64) -> Outcome {
        self.decide(now, |auth, cx| auth.check(attempt, cx))
    }

    fn decide(
        &self,
        now: u64,
        decision: impl FnOnce(&Authenticator, &mut CheckContext<'_>) -> Outcome,
    ) -> Outcome {
        let (mut keyring, mut cache) = (self.keyring.borrow_mut(), self.cache.borrow_mut());
        let mut cx = CheckContext {
            keyring: &mut keyring,
            store: &HostStore,
            cache: &mut cache,
            host: &self.verifier,
            now,
        };
        decision(&self.auth, &mut cx)
    }
}

/// A request paused until keys arrive or its deadline passes.
pub struct Waiter {
    pub context_id: u32,
    pub shared: Rc<Shared>,
    pub attempt: Attempt,
}

pub type Waiters = Rc<RefCell<Vec<Waiter>>>;

pub struct JwtRoot {
    context_id: u32,
    /// Identifies this VM in the JWKS fetch lease.
    holder: u64,
    shared: Option<Rc<Shared>>,
    metrics: Option<Rc<Metrics>>,
    waiters: Waiters,
    /// Callout token -> the configuration and provider it fetches for.
    callouts: HashMap<u32, (Rc<Shared>, usize)>,
    /// How a request that waited for keys goes on once let through.
    continuation: Continuation,
    tick: TickDemand,
}

impl JwtRoot {
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
        // Random per VM: context ids repeat across VMs, the lease holder must not.
        let holder = RandomState::new().hash_one((context_id, wasmgate_host::now_millis()));
        Self {
            context_id,
            holder,
            shared: None,
            metrics: None,
            waiters: Rc::new(RefCell::new(Vec::new())),
            callouts: HashMap::new(),
            continuation,
            tick,
        }
    }

    /// Puts a validated configuration in place (at start, or on an update).
    pub fn install(&mut self, config: JwtConfig) {
        let shared = Rc::new(Shared::new(config, self.holder));
        // Fixed keys, created up front where missing: every later write is a CAS.
        shared.keyring.borrow().create_shared_keys(&HostStore);
        self.shared = Some(shared);
        if self.metrics.is_none() {
            self.metrics = Some(Rc::new(Metrics::new()));
        }
        // The first tick fetches (callouts are not possible before the VM runs).
        self.tick.want(Some(TICK));
    }

    /// A new request's context, once a configuration is in place.
    pub fn new_request(&self, context_id: u32) -> Option<JwtRequest> {
        Some(JwtRequest::new(
            context_id,
            Rc::clone(self.shared.as_ref()?),
            Rc::clone(self.metrics.as_ref()?),
            Rc::clone(&self.waiters),
        ))
    }

    /// Whether a callout answer with this token is a JWKS fetch of this filter.
    pub fn awaits(&self, token: u32) -> bool {
        self.callouts.contains_key(&token)
    }

    /// Starts the JWKS fetches this VM won the lease for.
    fn fetch_due_keys(&mut self, now: u64) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let orders = shared.keyring.borrow_mut().poll(&HostStore, now);
        for order in orders {
            let provider = &shared.auth.config().providers[order.provider].name;
            let callout = Callout {
                cluster: &order.cluster,
                method: "GET",
                path: &order.path,
                authority: &order.authority,
                headers: vec![("accept", "application/json")],
                timeout: Duration::from_millis(order.timeout),
            };
            match callout.dispatch() {
                Ok(token) => {
                    log::debug!(
                        "{FILTER}: fetching JWKS of provider {provider}{}",
                        if order.forced { " (unknown kid)" } else { "" }
                    );
                    self.callouts
                        .insert(token, (Rc::clone(&shared), order.provider));
                }
                Err(status) => {
                    log::warn!(
                        "{FILTER}: cannot fetch JWKS of provider {provider} through cluster {}: {status:?}",
                        order.cluster
                    );
                    self.report(&shared, order.provider, now, &FetchResponse::default());
                }
            }
        }
    }

    fn report(&self, shared: &Shared, provider: usize, now: u64, response: &FetchResponse) {
        let report = shared
            .keyring
            .borrow_mut()
            .on_response(provider, &HostStore, now, response);
        let name = &shared.auth.config().providers[provider].name;
        let Some(metrics) = &self.metrics else { return };
        match report {
            Some(FetchReport::Success { keys, time_to_live }) => {
                metrics.jwks_fetched(name, true);
                log::info!(
                    "{FILTER}: provider {name}: loaded {keys} keys, next refresh in {}s",
                    time_to_live / 1000
                );
            }
            Some(FetchReport::Failure { reason, retry_in }) => {
                metrics.jwks_fetched(name, false);
                log::warn!(
                    "{FILTER}: provider {name}: JWKS fetch failed: {reason}; retry in {}ms (last good keys, if any, stay in use)",
                    retry_in
                );
            }
            None => {}
        }
    }

    /// Finishes every waiting request whose keys arrived or whose wait ran out.
    fn wake_waiters(&mut self, now: u64) {
        let Some(metrics) = self.metrics.clone() else {
            return;
        };
        let waiting = std::mem::take(&mut *self.waiters.borrow_mut());
        if waiting.is_empty() {
            return;
        }
        let mut still_waiting = Vec::new();
        for waiter in waiting {
            let outcome = if now >= waiter.attempt.deadline() {
                Outcome::Deny(waiter.shared.auth.give_up())
            } else {
                waiter.shared.check(waiter.attempt, now)
            };
            if let Outcome::Wait(attempt) = outcome {
                still_waiting.push(Waiter { attempt, ..waiter });
                continue;
            }
            // The request may be gone (client closed): then there is nothing to do.
            if hostcalls::set_effective_context(waiter.context_id).is_ok()
                && finish(
                    outcome,
                    &waiter.shared,
                    &metrics,
                    &mut HeaderSnapshot::request(),
                ) == Action::Continue
            {
                self.continuation.resume(waiter.context_id);
            }
        }
        self.waiters.borrow_mut().extend(still_waiting);
        // Host calls that follow (callouts) must belong to the root again, or they
        // would die with the request they were made in.
        let _ = hostcalls::set_effective_context(self.context_id);
    }
}

impl Context for JwtRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some((shared, provider)) = self.callouts.remove(&token_id) else {
            return;
        };
        let answer = CalloutResponse::read(body_size, MAX_JWKS_BYTES);
        let response = FetchResponse {
            status: answer.status,
            cache_control: answer.header("cache-control").map(str::to_owned),
            truncated: answer.truncated,
            body: answer.body,
        };
        let now = wasmgate_host::now_millis();
        self.report(&shared, provider, now, &response);
        self.wake_waiters(now);
    }
}

impl RootContext for JwtRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        wasmgate_host::follow_host_log_level();
        let Some(config) =
            wasmgate_host::load_config(FILTER, self.get_plugin_configuration(), |bytes| {
                JwtConfig::from_json(bytes)
            })
        else {
            return false;
        };
        self.install(config);
        true
    }

    fn on_tick(&mut self) {
        let now = wasmgate_host::now_millis();
        self.fetch_due_keys(now);
        self.wake_waiters(now);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        wasmgate_host::Unconfigured::or_refusal(FILTER, self.new_request(context_id))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
