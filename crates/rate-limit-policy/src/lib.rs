//! Rate limits for wasmgate's rate-limit filter: which rule applies to a request, who the
//! client is, which limits (plan) it has, whether its token buckets admit it, and, for a
//! rule with a global tier, what the fleet-wide limit says.
//!
//! A [`RateLimitPolicy`] is parsed once from the plugin configuration. For each request,
//! [`RateLimitPolicy::decide`] reads the request through [`RequestView`], counts it in the
//! bounded [`BucketTable`] through the [`SharedStore`] port (proxy-wasm shared data in
//! Envoy, a [`MemoryStore`](wasmgate_shared_store::MemoryStore) in tests), and returns a
//! [`Decision`]: a value the filter turns into host calls with one `match`. A global tier
//! (`global.rs`) either asks a rate-limit service about the request (the decision says
//! which call to send; [`RateLimitPolicy::conclude`] reads its answer) or spends a lease
//! held in shared data (`lease.rs`; the root context keeps leases through
//! [`RateLimitPolicy::lease_tick`] and [`RateLimitPolicy::lease_answer`]). Time is passed
//! in; nothing here sleeps, reads a clock, sends anything or depends on proxy-wasm.

mod answer;
mod bucket;
mod config;
mod desk;
mod digest_memo;
mod global;
mod identity;
mod lease;
mod slots;
mod table;

pub use answer::{Answers, GlobalView, LimitedReply, ResetFormat, ResponseHeaders};
pub use bucket::{Levels, Limit, LimitSet, Shortfall};
pub use desk::{LeaseAnswer, LeaseCall, LeaseTick, Waiter, DISPATCH_TICK, POLL_TICK};
pub use global::{
    read_answer, FailureMode, GlobalMode, GlobalTier, LeaseSettings, ServiceAnswer, ServiceFailure,
};
pub use identity::{identify, IdentitySource, ANONYMOUS};
pub use lease::LeaseTable;
pub use table::{
    BucketTable, Digest, StoreTrouble, TableCensus, TableEvents, TableOutcome, TableVerdict,
    MAX_ATTEMPTS,
};

use desk::{LeaseDesk, Ticket};
use digest_memo::DigestMemo;
use lease::{Spend, SpendOutcome};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;
use wasmgate_config::{ConfigError, HeaderName, RouteRequest, RouteTable};
use wasmgate_ratelimit_protocol::rls::RateLimitDescriptor;
use wasmgate_shared_store::SharedStore;

/// The gRPC service and method of each global mode, for the glue.
pub use wasmgate_ratelimit_protocol::{LEASE_METHOD, LEASE_SERVICE, RLS_METHOD, RLS_SERVICE};

/// What the policy needs to know about a request. The filter implements it over Envoy's
/// header map and attributes; tests use a fake.
pub trait RequestView {
    /// A request header (`:method` and `:path` included), lower-case name.
    fn header(&self, name: &str) -> Option<String>;
    /// The downstream address as Envoy reports it (`source.address`: `ip:port`).
    fn source_address(&self) -> Option<String>;
    /// The name of the Envoy route that matched (`xds.route_name`).
    fn route_name(&self) -> Option<String>;
}

/// What the endpoint part of a bucket key is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    /// The rule itself: every request the rule matches shares the client's buckets.
    #[default]
    Rule,
    /// The Envoy route the request took: one set of buckets per route name.
    Route,
}

/// A rule's limits for one plan (the value of the plan header; `""` for the rule's own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub name: String,
    pub limits: LimitSet,
    /// The overflow bucket of this rule and plan (worked out once).
    pub overflow: Digest,
    /// The per-instance bucket the global tier's `failure_mode: local` falls back to, when
    /// it is a share of these limits (below 1; at 1 the local buckets already are it).
    pub fallback: Option<Fallback>,
}

/// The limits of a global tier's per-instance fallback, and their overflow bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    pub limits: LimitSet,
    pub overflow: Digest,
}

/// Where limits apply and what they are.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Part of every bucket key of this rule: renaming a rule starts its buckets afresh.
    pub name: String,
    pub endpoint: Endpoint,
    /// The endpoint part of the bucket keys when it is the rule (`rule=<name>`).
    pub rule_endpoint: String,
    /// The limits for a request whose plan is absent or not listed.
    pub default: Plan,
    pub plans: Vec<Plan>,
    /// Count and report, never refuse (this rule's or the whole policy's `shadow`).
    pub shadow: bool,
    /// Limits across every Envoy instance, kept by a rate-limit service.
    pub global: Option<GlobalTier>,
}

impl Rule {
    fn plan(&self, index: Option<usize>) -> &Plan {
        index
            .and_then(|i| self.plans.get(i))
            .unwrap_or(&self.default)
    }
}

/// The rate-limit filter's validated configuration, and (for leases) this VM's share of
/// keeping them.
#[derive(Debug)]
pub struct RateLimitPolicy {
    table: BucketTable,
    /// Present when a rule leases: the lease slots in shared data.
    leases: Option<LeaseTable>,
    identity: Vec<IdentitySource>,
    plan_header: HeaderName,
    rules: RouteTable<Rc<Rule>>,
    answers: Answers,
    /// Bucket digests of recent clients: SHA-256 runs once per client, not per request.
    digests: DigestMemo,
    /// Lease keys of recent clients, likewise.
    lease_digests: DigestMemo,
    desk: RefCell<LeaseDesk>,
}

/// What the filter does with a request.
#[derive(Debug)]
pub enum Verdict {
    /// No rule applies: pass, add nothing.
    Unlimited,
    /// Counted and admitted: pass, and add these headers to the response.
    Allowed(ResponseHeaders),
    /// Over a limit in shadow mode: pass (nothing taken), add these headers.
    ShadowLimited(ResponseHeaders),
    /// Over a limit: answer with this instead of forwarding.
    Limited(LimitedReply),
    /// The bucket table could not be updated: pass uncounted (fail open).
    Uncounted(StoreTrouble),
    /// The global tier could not decide and its failure mode denies: answer with this.
    FailedClosed(LimitedReply),
    /// Exact mode (or lease mode while its key's window closes, see `lease.rs`): send this
    /// call and pause; its answer goes to [`RateLimitPolicy::conclude`].
    AskService(ServiceCall),
    /// Lease mode: pause until the key has a lease ([`RateLimitPolicy::wait_for_lease`]).
    AwaitLease(LeaseWait),
}

/// What the global tier did with a request, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GlobalEvents {
    /// The global limit refused the request (or would have, in shadow mode).
    pub over_limit: bool,
    /// The tier could not decide; its failure mode decided instead.
    pub failure: Option<(ServiceFailure, FailureMode)>,
    /// A lease renewal was claimed and queued on this worker.
    pub renewal_queued: bool,
}

/// A [`Verdict`] and what the tables did to reach it (for metrics).
#[derive(Debug)]
pub struct Decision {
    pub verdict: Verdict,
    pub events: TableEvents,
    pub global: GlobalEvents,
}

impl Decision {
    fn new(verdict: Verdict, events: TableEvents) -> Self {
        Self {
            verdict,
            events,
            global: GlobalEvents::default(),
        }
    }
}

/// What a request paused for the global tier keeps, to be decided when the answer (or
/// the lease) comes.
#[derive(Debug, Clone)]
pub struct Pending {
    rule: Rc<Rule>,
    plan: Option<usize>,
    /// The local buckets after this request (`None`: the bucket table was unavailable).
    local: Option<Levels>,
    /// The endpoint part of the bucket key when it is the route (`route=<name>`);
    /// `None`: the rule's.
    route_endpoint: Option<String>,
    identity: String,
}

/// An exact-mode call to send (`ShouldRateLimit`).
#[derive(Debug)]
pub struct ServiceCall {
    pub message: Vec<u8>,
    pub pending: Pending,
}

impl ServiceCall {
    pub fn cluster(&self) -> &str {
        self.pending.tier().map_or("", |t| t.cluster.as_str())
    }

    pub fn timeout(&self) -> Duration {
        self.pending
            .tier()
            .map_or(global::DEFAULT_TIMEOUT, |t| t.timeout)
    }
}

/// A request waiting for its key's lease.
#[derive(Debug)]
pub struct LeaseWait {
    pending: Pending,
    slot: u32,
    digest: Digest,
    cost: u64,
    /// When the request stops waiting (ms since the Unix epoch): then `failure_mode`.
    deadline: u64,
    descriptor: RateLimitDescriptor,
}

impl Pending {
    /// How long the global tier's call may take.
    pub fn timeout(&self) -> Duration {
        self.tier().map_or(global::DEFAULT_TIMEOUT, |t| t.timeout)
    }

    fn tier(&self) -> Option<&GlobalTier> {
        self.rule.global.as_ref()
    }

    fn limits(&self) -> &LimitSet {
        &self.rule.plan(self.plan).limits
    }

    fn endpoint(&self) -> &str {
        self.route_endpoint
            .as_deref()
            .unwrap_or(&self.rule.rule_endpoint)
    }
}

impl RateLimitPolicy {
    /// Parses and validates the plugin configuration (JSON).
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        config::parse(bytes)
    }

    /// The JSON Schema of the configuration [`Self::from_json`] reads (feature `schema`):
    /// the shape only, its nested types' schemas go into `generator`'s definitions.
    #[cfg(feature = "schema")]
    pub fn config_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        <config::PolicySpec as schemars::JsonSchema>::json_schema(generator)
    }

    pub fn table(&self) -> &BucketTable {
        &self.table
    }

    pub fn lease_table(&self) -> Option<&LeaseTable> {
        self.leases.as_ref()
    }

    /// Every overflow bucket this configuration may use (one per rule and plan, and one
    /// per fallback), for [`BucketTable::prepare`].
    pub fn overflow_digests(&self) -> Vec<Digest> {
        self.all_rules()
            .flat_map(|rule| std::iter::once(&rule.default).chain(&rule.plans))
            .filter(|plan| !plan.limits.limits().is_empty())
            .flat_map(|plan| {
                std::iter::once(plan.overflow).chain(plan.fallback.as_ref().map(|f| f.overflow))
            })
            .collect()
    }

    /// Creates the tables' slots where missing; see [`BucketTable::prepare`]. The census
    /// is the bucket table's; the lease table's slots are created too. A configuration
    /// whose rules all have a global tier only uses no bucket, and creates none.
    pub fn prepare(&self, store: &dyn SharedStore) -> TableCensus {
        if let Some(leases) = &self.leases {
            leases.prepare(store);
        }
        let overflow = self.overflow_digests();
        if overflow.is_empty() {
            return TableCensus::default();
        }
        self.table.prepare(store, &overflow)
    }

    /// Names this instance in lease renewals (logs and metrics of the service only).
    pub fn set_lease_holder(&self, holder: String) {
        self.desk.borrow_mut().set_holder(holder);
    }

    /// The rules with a global tier, for the glue to report what it talks to.
    pub fn global_rules(&self) -> impl Iterator<Item = (&str, &GlobalTier)> {
        self.all_rules()
            .filter_map(|rule| Some((rule.name.as_str(), rule.global.as_ref()?)))
    }

    fn all_rules(&self) -> impl Iterator<Item = &Rc<Rule>> {
        self.rules
            .rules()
            .map(|(_, rule)| rule)
            .chain(self.rules.fallback())
    }

    /// Decides one request at `now_ms` (milliseconds since the Unix epoch).
    pub fn decide(&self, view: &dyn RequestView, store: &dyn SharedStore, now_ms: u64) -> Decision {
        let method = view.header(":method").unwrap_or_default();
        let path = view.header(":path").unwrap_or_default();
        let authority = (self.rules.names_hosts())
            .then(|| view.header(":authority"))
            .flatten();
        let route = RouteRequest::new(&method, &path).with_authority(authority.as_deref());
        let Some(rule) = self.rules.select(&route) else {
            return Decision::new(Verdict::Unlimited, TableEvents::default());
        };
        // Most rules have no plans: then the plan header is not even read.
        let plan_index = if rule.plans.is_empty() {
            None
        } else {
            view.header(self.plan_header.as_str())
                .and_then(|wanted| rule.plans.iter().position(|p| p.name == wanted))
        };
        let plan = rule.plan(plan_index);
        let limits = &plan.limits;
        let route_endpoint = match rule.endpoint {
            Endpoint::Rule => None,
            Endpoint::Route => view
                .route_name()
                .filter(|name| !name.is_empty())
                .map(|name| format!("route={name}")),
        };
        let endpoint = route_endpoint.as_deref().unwrap_or(&rule.rule_endpoint);
        // The rule's identity keys its buckets, and the global tier's when it has none of
        // its own; a rule with neither use never reads it (an address is a host call).
        let global_only = limits.limits().is_empty();
        let identity = match &rule.global {
            Some(tier) if global_only && tier.identity.is_some() => String::new(),
            _ => identify(&self.identity, view),
        };
        // A rule with a global tier only (no local limits) touches no bucket.
        let (local, events) = if global_only {
            (None, TableEvents::default())
        } else {
            match self.take_local(rule, plan, endpoint, &identity, store, now_ms) {
                Ok(taken) => taken,
                Err(decision) => return *decision,
            }
        };
        let Some(tier) = &rule.global else {
            let headers = self.answers.admitted(limits, local.as_ref(), None, now_ms);
            return Decision::new(Verdict::Allowed(headers), events);
        };
        let pending = Pending {
            rule: Rc::clone(rule),
            plan: plan_index,
            local,
            route_endpoint,
            identity,
        };
        let global_identity = tier.identity.as_deref().unwrap_or(&self.identity);
        match &tier.mode {
            GlobalMode::Exact => {
                let descriptor = self.descriptor(&pending, global_identity, view);
                let message = global::should_rate_limit(&tier.domain, &descriptor, limits.cost());
                Decision::new(
                    Verdict::AskService(ServiceCall { message, pending }),
                    events,
                )
            }
            GlobalMode::Lease(settings) => {
                let client = match &tier.identity {
                    Some(sources) => identify(sources, view),
                    None => pending.identity.clone(),
                };
                let endpoint = pending.endpoint();
                let lease_digest = self.lease_digests.get_or_insert(
                    [&rule.name, &plan.name, endpoint, &client],
                    || {
                        bucket_digest(&[
                            b"lease",
                            tier.domain.as_bytes(),
                            rule.name.as_bytes(),
                            plan.name.as_bytes(),
                            endpoint.as_bytes(),
                            client.as_bytes(),
                        ])
                    },
                );
                let wait = LeaseWait {
                    slot: 0,
                    digest: lease_digest,
                    cost: limits.cost(),
                    deadline: now_ms.saturating_add(millis(tier.timeout)),
                    descriptor: RateLimitDescriptor::default(),
                    pending,
                };
                let mut decision =
                    self.spend_lease(wait, settings, Some((global_identity, view)), store, now_ms);
                decision.events = events;
                decision
            }
        }
    }

    /// Takes the request's cost from its local buckets: the levels after it (`None`: the
    /// table was unavailable and the global tier still counts it) and what the table did,
    /// or the decision when the buckets settle it (refused, or uncounted without a tier).
    fn take_local(
        &self,
        rule: &Rule,
        plan: &Plan,
        endpoint: &str,
        identity: &str,
        store: &dyn SharedStore,
        now_ms: u64,
    ) -> Result<(Option<Levels>, TableEvents), Box<Decision>> {
        let limits = &plan.limits;
        let digest =
            self.digests
                .get_or_insert([&rule.name, &plan.name, endpoint, identity], || {
                    bucket_digest(&[
                        b"bucket",
                        rule.name.as_bytes(),
                        plan.name.as_bytes(),
                        endpoint.as_bytes(),
                        identity.as_bytes(),
                        &limits_fingerprint(limits),
                    ])
                });
        let outcome = self
            .table
            .take(store, &digest, &plan.overflow, limits, now_ms);
        let events = outcome.events;
        let local = match outcome.verdict {
            TableVerdict::Taken(levels) => Some(levels),
            TableVerdict::Short(levels, _) if rule.shadow => {
                let headers = self.answers.admitted(limits, Some(&levels), None, now_ms);
                return Err(Box::new(Decision::new(
                    Verdict::ShadowLimited(headers),
                    events,
                )));
            }
            TableVerdict::Short(levels, shortfall) => {
                let reply = self
                    .answers
                    .limited(limits, &levels, shortfall, None, now_ms);
                return Err(Box::new(Decision::new(Verdict::Limited(reply), events)));
            }
            // Without a global tier the request passes uncounted; with one, the global
            // tier still counts it.
            TableVerdict::Unavailable(trouble) if rule.global.is_none() => {
                return Err(Box::new(Decision::new(Verdict::Uncounted(trouble), events)))
            }
            TableVerdict::Unavailable(_) => None,
        };
        Ok((local, events))
    }

    fn descriptor(
        &self,
        pending: &Pending,
        identity: &[IdentitySource],
        view: &dyn RequestView,
    ) -> RateLimitDescriptor {
        let rule = &pending.rule;
        let route = pending
            .route_endpoint
            .as_deref()
            .and_then(|endpoint| endpoint.strip_prefix("route="));
        global::descriptor(
            &rule.name,
            &rule.plan(pending.plan).name,
            route,
            identity,
            view,
        )
    }

    /// Spends from the lease of `wait`'s key. `request`: the request itself (with the
    /// tier's identity sources), to describe the key when this worker must tell the
    /// service about it; `None` when resuming a waiter (its descriptor is kept).
    fn spend_lease(
        &self,
        mut wait: LeaseWait,
        settings: &LeaseSettings,
        request: Option<(&[IdentitySource], &dyn RequestView)>,
        store: &dyn SharedStore,
        now_ms: u64,
    ) -> Decision {
        let Some(table) = &self.leases else {
            return self.fail(&wait.pending, ServiceFailure::NoSlot, store, now_ms);
        };
        let Some(tier) = wait.pending.tier() else {
            return self.fail(&wait.pending, ServiceFailure::NoSlot, store, now_ms);
        };
        let terms = lease::Terms {
            cost: wait.cost,
            size: settings.size,
            period_ms: millis(settings.period),
            timeout_ms: millis(tier.timeout),
        };
        let outcome = table.spend(store, &wait.digest, terms, now_ms);
        let (slot, spend) = match outcome {
            SpendOutcome::At { slot, spend } => (slot, spend),
            SpendOutcome::NoSlot => {
                return self.fail(&wait.pending, ServiceFailure::NoSlot, store, now_ms)
            }
            SpendOutcome::Unavailable(_) => {
                return self.fail(&wait.pending, ServiceFailure::NoLease, store, now_ms)
            }
        };
        wait.slot = slot;
        let mut desk = self.desk.borrow_mut();
        let renew = matches!(
            spend,
            Spend::Spent { renew: true, .. } | Spend::Wait { renew: true }
        );
        // A request that waits keeps its key's description: it may claim the renewal
        // when it looks again.
        let describe = renew || matches!(spend, Spend::Wait { .. });
        if describe || !desk.knows(slot, &wait.digest, now_ms) {
            if let Some((identity, view)) = request {
                wait.descriptor = self.descriptor(&wait.pending, identity, view);
            }
            let ticket = Ticket {
                rule: Rc::clone(&wait.pending.rule),
                slot,
                digest: wait.digest,
                descriptor: wait.descriptor.clone(),
                cost: wait.cost,
            };
            if renew {
                desk.queue(ticket, now_ms);
            } else {
                desk.note(&ticket, now_ms);
            }
        }
        drop(desk);
        let pending = &wait.pending;
        let limits = pending.limits();
        let local = pending.local.as_ref();
        let mut decision = match spend {
            Spend::Spent { view, .. } => {
                let headers = self.answers.admitted(limits, local, view.as_ref(), now_ms);
                Decision::new(Verdict::Allowed(headers), TableEvents::default())
            }
            Spend::OverLimit(view) => self.over_limit(pending, view.as_ref(), now_ms),
            Spend::Failed => self.fail(pending, ServiceFailure::Unknown, store, now_ms),
            Spend::Wait { .. } if now_ms >= wait.deadline => {
                self.fail(pending, ServiceFailure::NoLease, store, now_ms)
            }
            Spend::Wait { .. } => Decision::new(Verdict::AwaitLease(wait), TableEvents::default()),
            // The window closes before a lease could be spent: this request is asked
            // about on its own, counted in the window it belongs to.
            Spend::Ask => {
                let descriptor = match request {
                    Some((identity, view)) => self.descriptor(pending, identity, view),
                    None => wait.descriptor.clone(),
                };
                let call = ServiceCall {
                    message: global::should_rate_limit(&tier.domain, &descriptor, wait.cost),
                    pending: pending.clone(),
                };
                Decision::new(Verdict::AskService(call), TableEvents::default())
            }
        };
        decision.global.renewal_queued = renew;
        decision
    }

    /// The answer to a request the global tier refused (or would have, in shadow mode).
    fn over_limit(&self, pending: &Pending, view: Option<&GlobalView>, now_ms: u64) -> Decision {
        let limits = pending.limits();
        let local = pending.local.as_ref();
        let verdict = if pending.rule.shadow {
            Verdict::ShadowLimited(self.answers.admitted(limits, local, view, now_ms))
        } else {
            Verdict::Limited(self.answers.limited_globally(limits, local, view, now_ms))
        };
        let mut decision = Decision::new(verdict, TableEvents::default());
        decision.global.over_limit = true;
        decision
    }

    /// The global tier could not decide: its failure mode does.
    fn fail(
        &self,
        pending: &Pending,
        failure: ServiceFailure,
        store: &dyn SharedStore,
        now_ms: u64,
    ) -> Decision {
        let mode = pending
            .tier()
            .map_or(FailureMode::Allow, |tier| tier.failure_mode);
        let limits = pending.limits();
        let local = pending.local.as_ref();
        let plan = pending.rule.plan(pending.plan);
        let mut events = TableEvents::default();
        let verdict = match (mode, &plan.fallback) {
            (FailureMode::Deny, _) => Verdict::FailedClosed(self.answers.service_unavailable()),
            (FailureMode::Allow, _) | (FailureMode::Local, None) => {
                Verdict::Allowed(self.answers.admitted(limits, local, None, now_ms))
            }
            (FailureMode::Local, Some(fallback)) => {
                let digest = bucket_digest(&[
                    b"fallback",
                    pending.rule.name.as_bytes(),
                    plan.name.as_bytes(),
                    pending.endpoint().as_bytes(),
                    pending.identity.as_bytes(),
                    &limits_fingerprint(&fallback.limits),
                ]);
                let outcome =
                    self.table
                        .take(store, &digest, &fallback.overflow, &fallback.limits, now_ms);
                events = outcome.events;
                match outcome.verdict {
                    TableVerdict::Taken(levels) => Verdict::Allowed(self.answers.admitted(
                        &fallback.limits,
                        Some(&levels),
                        None,
                        now_ms,
                    )),
                    TableVerdict::Short(levels, _) if pending.rule.shadow => {
                        Verdict::ShadowLimited(self.answers.admitted(
                            &fallback.limits,
                            Some(&levels),
                            None,
                            now_ms,
                        ))
                    }
                    TableVerdict::Short(levels, shortfall) => Verdict::Limited(
                        self.answers
                            .limited(&fallback.limits, &levels, shortfall, None, now_ms),
                    ),
                    TableVerdict::Unavailable(trouble) => Verdict::Uncounted(trouble),
                }
            }
        };
        let mut decision = Decision::new(verdict, events);
        decision.global.failure = Some((failure, mode));
        decision
    }

    /// Decides a request that waited for the exact-mode call: `answer` is what
    /// [`read_answer`] made of the service's reply (or why there was none).
    pub fn conclude(
        &self,
        pending: &Pending,
        answer: Result<ServiceAnswer, ServiceFailure>,
        store: &dyn SharedStore,
        now_ms: u64,
    ) -> Decision {
        match answer {
            Ok(ServiceAnswer::Ok(view)) => {
                let headers = self.answers.admitted(
                    pending.limits(),
                    pending.local.as_ref(),
                    view.as_ref(),
                    now_ms,
                );
                Decision::new(Verdict::Allowed(headers), TableEvents::default())
            }
            Ok(ServiceAnswer::OverLimit(view)) => self.over_limit(pending, view.as_ref(), now_ms),
            Err(failure) => self.fail(pending, failure, store, now_ms),
        }
    }

    /// Pauses request `context_id` until its key has a lease (or its deadline passes).
    pub fn wait_for_lease(&self, context_id: u32, wait: LeaseWait) {
        self.desk.borrow_mut().wait(Waiter { context_id, wait });
    }

    /// The request went away while waiting.
    pub fn forget_waiter(&self, context_id: u32) {
        if let Ok(mut desk) = self.desk.try_borrow_mut() {
            desk.forget(context_id);
        }
    }

    pub fn is_waiting(&self, context_id: u32) -> bool {
        self.desk.borrow().is_waiting(context_id)
    }

    /// Decides a request that waited for its lease (woken by the root).
    pub fn resume(&self, waiter: Waiter, store: &dyn SharedStore, now_ms: u64) -> Decision {
        let wait = waiter.wait;
        let settings = match wait.pending.tier().map(|t| &t.mode) {
            Some(GlobalMode::Lease(settings)) => *settings,
            _ => return self.fail(&wait.pending, ServiceFailure::NoLease, store, now_ms),
        };
        self.spend_lease(wait, &settings, None, store, now_ms)
    }

    /// Every request still waiting for a lease, decided now: with a lease if its key
    /// has one, else by the failure mode. For a configuration being replaced: nothing
    /// would wake its waiters any more.
    pub fn release_waiters(&self, store: &dyn SharedStore, now_ms: u64) -> Vec<(u32, Decision)> {
        let waiters = self.desk.borrow_mut().take_waiters();
        waiters
            .into_iter()
            .map(|waiter| {
                let context_id = waiter.context_id;
                let mut decision = self.resume(waiter, store, now_ms);
                // Nothing would wake it, nor take the answer to a call.
                match &decision.verdict {
                    Verdict::AwaitLease(LeaseWait { pending, .. })
                    | Verdict::AskService(ServiceCall { pending, .. }) => {
                        decision = self.fail(pending, ServiceFailure::NoLease, store, now_ms);
                    }
                    _ => {}
                }
                (context_id, decision)
            })
            .collect()
    }

    /// The root's tick: renewals to send, and waiting requests to look again.
    pub fn lease_tick(&self, store: &dyn SharedStore, now_ms: u64) -> LeaseTick {
        match &self.leases {
            Some(table) => self.desk.borrow_mut().tick(table, store, now_ms),
            None => LeaseTick::default(),
        }
    }

    /// The tick period the leases need now (`None`: no tick).
    pub fn lease_tick_period(&self) -> Option<Duration> {
        self.leases
            .as_ref()
            .and_then(|_| self.desk.borrow().tick_period())
    }

    /// The glue dispatched renewal `call_id` (Envoy's token), or could not (`None`).
    pub fn lease_dispatched(
        &self,
        call_id: u64,
        token: Option<u32>,
        store: &dyn SharedStore,
        now_ms: u64,
    ) -> LeaseAnswer {
        match &self.leases {
            Some(table) => self
                .desk
                .borrow_mut()
                .dispatched(call_id, token, table, store, now_ms),
            None => LeaseAnswer::default(),
        }
    }

    /// Whether a gRPC answer with this token is one of this VM's renewals.
    pub fn awaits_lease_answer(&self, token: u32) -> bool {
        self.desk.borrow().expects(token)
    }

    /// A renewal answered (`grpc_status` 0 and the message) or failed.
    pub fn lease_answer(
        &self,
        token: u32,
        grpc_status: u32,
        message: &[u8],
        store: &dyn SharedStore,
        now_ms: u64,
    ) -> LeaseAnswer {
        match &self.leases {
            Some(table) => {
                self.desk
                    .borrow_mut()
                    .answered(token, grpc_status, message, table, store, now_ms)
            }
            None => LeaseAnswer::default(),
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The overflow bucket of a rule (by name) and plan with these limits.
pub(crate) fn overflow_digest(rule: &str, plan: &str, limits: &LimitSet) -> Digest {
    bucket_digest(&[
        b"overflow",
        rule.as_bytes(),
        plan.as_bytes(),
        &limits_fingerprint(limits),
    ])
}

/// The limits' shape: a bucket stored under other limits is not reused when they change.
fn limits_fingerprint(limits: &LimitSet) -> Vec<u8> {
    limits
        .limits()
        .iter()
        .flat_map(|l| [l.requests, l.period_ms, l.burst])
        .flat_map(u64::to_le_bytes)
        .collect()
}

/// SHA-256 over length-prefixed parts (so no two part lists hash the same input), cut to
/// 16 bytes: collisions stay out of reach even for a client choosing its own identity.
fn bucket_digest(parts: &[&[u8]]) -> Digest {
    let mut hasher = Sha256::new();
    hasher.update(b"wasmgate.rate_limit/1");
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    let full = hasher.finalize();
    let mut digest = [0u8; 16];
    digest.copy_from_slice(&full[..16]);
    digest
}

#[cfg(test)]
mod fleet_tests;
#[cfg(test)]
mod tests;
