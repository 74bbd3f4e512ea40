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
use wasmgate_jwt_auth::discovery::MAX_DISCOVERY_BYTES;
use wasmgate_jwt_auth::host_verifier::HostVerifier;
use wasmgate_jwt_auth::jwks::MAX_JWKS_BYTES;
use wasmgate_jwt_auth::jwks_cache::Document;
use wasmgate_jwt_auth::{
    Attempt, AuthError, Authenticator, FetchReport, FetchResponse, JwtConfig, Keyring, Outcome,
    TokenCache, WaitList, Wake,
};

pub const FILTER: &str = "wasmgate-jwt";

/// How often every VM looks at shared data (new keys, due refreshes) and at its
/// waiting requests (the combined module runs this stage's tick at this pace).
/// Reading the small `.state` record costs microseconds, and a waiting request is
/// looked at only when its keys changed (`WaitList`); a short period bounds how long
/// a request waits after its keys arrived in another VM.
pub const TICK: Duration = Duration::from_millis(100);

/// Counters this filter reports (Envoy shows them under `wasmcustom.`).
pub struct Metrics {
    pub allowed: Counter,
    pub no_token_needed: Counter,
    denied: Vec<(&'static str, Counter)>,
    pub waited: Counter,
    /// JWKS and discovery fetches by document, provider and result: defined at a
    /// provider's first fetch of that document.
    fetches: RefCell<HashMap<(&'static str, String), Vec<(&'static str, Counter)>>>,
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
            fetches: RefCell::new(HashMap::new()),
            token_cache_hit: tagged("token_cache_lookups_total", &[("result", "hit")]),
            token_cache_miss: tagged("token_cache_lookups_total", &[("result", "miss")]),
        }
    }

    pub fn denied(&self, reason: &str) {
        if let Some((_, counter)) = self.denied.iter().find(|(r, _)| *r == reason) {
            counter.increment();
        }
    }

    /// Counts a fetch of `document` for `provider`: `wasmgate_jwt_jwks_fetches_total`
    /// (results `success`, `failure`) or `wasmgate_jwt_discovery_fetches_total`
    /// (`success`, `failure`, `refused`: fetched but not usable), by provider.
    pub fn fetched(&self, document: Document, provider: &str, result: &'static str) {
        let (metric, results): (&'static str, &[&'static str]) = match document {
            Document::Jwks => ("jwks_fetches_total", &["success", "failure"]),
            Document::Discovery => (
                "discovery_fetches_total",
                &["success", "failure", "refused"],
            ),
        };
        let mut fetches = self.fetches.borrow_mut();
        let counters = fetches
            .entry((metric, provider.to_string()))
            .or_insert_with(|| {
                results
                    .iter()
                    .map(|result| {
                        let tags = [("provider", provider), ("result", *result)];
                        let name = format!("wasmgate.jwt.{metric}");
                        (*result, Counter::tagged(&name, &tags))
                    })
                    .collect()
            });
        if let Some((_, counter)) = counters.iter().find(|(known, _)| *known == result) {
            counter.increment();
        }
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
/// verified-token cache, the host's signature check, the requests waiting for keys.
/// Shared by the root and every request of the VM.
pub struct Shared {
    pub auth: Authenticator,
    keyring: RefCell<Keyring>,
    cache: RefCell<TokenCache>,
    verifier: EnvoyVerifier,
    waiting: RefCell<WaitList>,
}

impl Shared {
    fn new(config: JwtConfig, holder: u64) -> Self {
        let keyring = Keyring::new(&config, holder);
        let cache = TokenCache::new(config.token_cache_entries);
        let waiting = WaitList::new(config.max_waiting_requests);
        Self {
            auth: Authenticator::new(config),
            keyring: RefCell::new(keyring),
            cache: RefCell::new(cache),
            verifier: EnvoyVerifier::new(),
            waiting: RefCell::new(waiting),
        }
    }

    pub fn start(&self, request: &RequestInfo<'_>, now: u64) -> Outcome {
        self.decide(now, |auth, cx| auth.start(request, cx))
    }

    /// Puts request `context_id` to wait (the root finishes it), or refuses it when
    /// `max_waiting_requests` already wait.
    pub fn wait(&self, context_id: u32, attempt: Attempt, now: u64) -> Result<(), AuthError> {
        let view = self.keyring.borrow().view(attempt.provider(), now);
        self.waiting
            .borrow_mut()
            .admit(context_id, attempt, view, now)
    }

    /// A request that went away: it waits no more.
    pub fn forget(&self, context_id: u32) {
        // Never borrowed across a host call, so this cannot fail; if it did, the entry
        // would go at its deadline (its context is gone by then).
        if let Ok(mut waiting) = self.waiting.try_borrow_mut() {
            waiting.remove(context_id);
        }
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

pub struct JwtRoot {
    context_id: u32,
    /// Identifies this VM in the JWKS fetch lease.
    holder: u64,
    shared: Option<Rc<Shared>>,
    /// Configurations an update replaced while requests waited for their keys: they
    /// are woken as the current one's, until none is left.
    retired: Vec<Rc<Shared>>,
    metrics: Option<Rc<Metrics>>,
    /// Callout token -> the configuration, provider and document it fetches.
    callouts: HashMap<u32, (Rc<Shared>, usize, Document)>,
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
            retired: Vec::new(),
            metrics: None,
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
        if let Some(old) = self.shared.replace(shared) {
            if !old.waiting.borrow().is_empty() {
                self.retired.push(old);
            }
        }
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
        ))
    }

    /// Whether a callout answer with this token is a JWKS fetch of this filter.
    pub fn awaits(&self, token: u32) -> bool {
        self.callouts.contains_key(&token)
    }

    /// Starts the fetches (JWKS, discovery documents) this VM won the lease for.
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
            let what = match order.document {
                Document::Jwks => "JWKS",
                Document::Discovery => "discovery document",
            };
            match callout.dispatch() {
                Ok(token) => {
                    log::debug!(
                        "{FILTER}: fetching the {what} of provider {provider}{}",
                        if order.forced { " (unknown kid)" } else { "" }
                    );
                    self.callouts
                        .insert(token, (Rc::clone(&shared), order.provider, order.document));
                }
                Err(status) => {
                    log::warn!(
                        "{FILTER}: cannot fetch the {what} of provider {provider} through cluster {}: {status:?}",
                        order.cluster
                    );
                    let answer = FetchResponse::default();
                    self.report(&shared, order.provider, order.document, now, &answer);
                }
            }
        }
    }

    fn report(
        &self,
        shared: &Shared,
        provider: usize,
        document: Document,
        now: u64,
        response: &FetchResponse,
    ) {
        let report = {
            let mut keyring = shared.keyring.borrow_mut();
            match document {
                Document::Jwks => keyring.on_response(provider, &HostStore, now, response),
                Document::Discovery => {
                    keyring.on_discovery_response(provider, &HostStore, now, response)
                }
            }
        };
        let name = &shared.auth.config().providers[provider].name;
        let Some(metrics) = &self.metrics else { return };
        match report {
            Some(FetchReport::Success { keys, time_to_live }) => {
                metrics.fetched(document, name, "success");
                log::info!(
                    "{FILTER}: provider {name}: loaded {keys} keys, next refresh in {}s",
                    time_to_live / 1000
                );
            }
            Some(FetchReport::Failure { reason, retry_in }) if document == Document::Jwks => {
                metrics.fetched(document, name, "failure");
                log::warn!(
                    "{FILTER}: provider {name}: JWKS fetch failed: {reason}; retry in {}ms (last good keys, if any, stay in use)",
                    retry_in
                );
            }
            Some(FetchReport::Discovered {
                jwks_uri,
                changed,
                time_to_live,
            }) => {
                metrics.fetched(document, name, "success");
                log::info!(
                    "{FILTER}: provider {name}: discovery document read, jwks_uri {jwks_uri}{}, next refresh in {}s",
                    if changed { " (new)" } else { "" },
                    time_to_live / 1000
                );
            }
            Some(FetchReport::Failure { reason, retry_in }) => {
                metrics.fetched(document, name, "failure");
                log::warn!(
                    "{FILTER}: provider {name}: discovery document fetch failed: {reason}; retry in {retry_in}ms (the last good jwks_uri, if any, stays in use)"
                );
            }
            Some(FetchReport::Refused { reason, retry_in }) => {
                metrics.fetched(document, name, "refused");
                log::warn!(
                    "{FILTER}: provider {name}: discovery document refused: {reason}; retry in {retry_in}ms (the last good jwks_uri, if any, stays in use)"
                );
            }
            None => {}
        }
    }

    /// Finishes the waiting requests whose wait ran out or whose keys changed (the
    /// shared state was read just before, by `fetch_due_keys` or here).
    fn wake_waiters(&mut self, now: u64) {
        let Some(metrics) = self.metrics.clone() else {
            return;
        };
        // A replaced configuration takes no part in fetching; it reads what the
        // current one (or another VM) publishes.
        for old in &self.retired {
            old.keyring.borrow_mut().sync(&HostStore);
        }
        let mut woke = false;
        for shared in self.shared.iter().chain(&self.retired) {
            woke |= wake(shared, &metrics, &self.continuation, now);
        }
        self.retired.retain(|old| !old.waiting.borrow().is_empty());
        if woke {
            // Host calls that follow (callouts) must belong to the root again, or they
            // would die with the request they were made in.
            let _ = hostcalls::set_effective_context(self.context_id);
        }
    }
}

/// Finishes what is due among `shared`'s waiting requests; whether any was.
fn wake(shared: &Shared, metrics: &Metrics, continuation: &Continuation, now: u64) -> bool {
    let due = {
        let keyring = shared.keyring.borrow();
        shared
            .waiting
            .borrow_mut()
            .due(now, |provider| keyring.view(provider, now))
    };
    let woke = !due.is_empty();
    for (context_id, wake) in due {
        let outcome = match wake {
            Wake::Expired => Outcome::Deny(shared.auth.give_up()),
            Wake::Recheck(attempt) => shared.check(attempt, now),
        };
        let outcome = match outcome {
            // Still no keys for it: back in the list (there is room: it just left).
            Outcome::Wait(attempt) => match shared.wait(context_id, attempt, now) {
                Ok(()) => continue,
                Err(error) => Outcome::Deny(error),
            },
            outcome => outcome,
        };
        // The request may be gone (client closed): then there is nothing to do.
        if hostcalls::set_effective_context(context_id).is_ok()
            && finish(outcome, shared, metrics, &mut HeaderSnapshot::request()) == Action::Continue
        {
            continuation.resume(context_id);
        }
    }
    woke
}

impl Context for JwtRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some((shared, provider, document)) = self.callouts.remove(&token_id) else {
            return;
        };
        let limit = match document {
            Document::Jwks => MAX_JWKS_BYTES,
            Document::Discovery => MAX_DISCOVERY_BYTES,
        };
        let answer = CalloutResponse::read(body_size, limit);
        let response = FetchResponse {
            status: answer.status,
            cache_control: answer.header("cache-control").map(str::to_owned),
            truncated: answer.truncated,
            body: answer.body,
        };
        let now = wasmgate_host::now_millis();
        self.report(&shared, provider, document, now, &response);
        // A discovery document leads straight to its JWKS, without waiting a tick.
        self.fetch_due_keys(now);
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
