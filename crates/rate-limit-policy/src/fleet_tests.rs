//! The global tier across a fleet, natively: several instances (each its own policy and
//! shared data, as separate Envoy processes have) in front of a fake rate-limit service
//! that keeps fixed-window counters and lease holds the way the contract says.

use crate::tests::FakeRequest;
use crate::{read_answer, FailureMode, RateLimitPolicy, ServiceFailure, Verdict, Waiter};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use wasmgate_ratelimit_protocol::lease::{LeaseGrant, RenewRequest, RenewResponse};
use wasmgate_ratelimit_protocol::rls::{
    Code, DescriptorStatus, RateLimit, RateLimitDescriptor, RateLimitRequest, RateLimitResponse,
    Unit,
};
use wasmgate_ratelimit_protocol::Message;
use wasmgate_shared_store::MemoryStore;

const T0: u64 = 1_713_272_400_000;
const MINUTE: u64 = 60_000;

/// One fixed window per descriptor: hits counted, and hits held by leases.
#[derive(Default)]
struct Counter {
    window_end: u64,
    count: u64,
    holds: HashMap<String, u64>,
}

/// A rate-limit service with one limit for every descriptor, as the contract describes:
/// exact checks count holds, grants end with the window, settling twice counts once.
struct FakeService {
    limit: u64,
    window_ms: u64,
    lease_valid_ms: u64,
    /// No lease is granted this close to a window's end (`--lease-margin`).
    margin_ms: u64,
    counters: RefCell<HashMap<String, Counter>>,
    next_lease: Cell<u64>,
    /// Answer every call with this gRPC status instead (14: UNAVAILABLE).
    down: Cell<Option<u32>>,
    calls: Cell<u64>,
}

fn key_of(descriptor: &RateLimitDescriptor) -> String {
    descriptor
        .entries
        .iter()
        .map(|e| format!("{}={}", e.key, e.value))
        .collect::<Vec<_>>()
        .join(",")
}

impl FakeService {
    fn new(limit: u64) -> Self {
        Self {
            limit,
            window_ms: MINUTE,
            lease_valid_ms: 10_000,
            margin_ms: 0,
            counters: RefCell::default(),
            next_lease: Cell::new(0),
            down: Cell::new(None),
            calls: Cell::new(0),
        }
    }

    fn counter<'a>(
        &self,
        counters: &'a mut HashMap<String, Counter>,
        key: String,
        now: u64,
    ) -> &'a mut Counter {
        let counter = counters.entry(key).or_default();
        if now >= counter.window_end {
            *counter = Counter {
                window_end: now + self.window_ms,
                ..Default::default()
            };
        }
        counter
    }

    fn current_limit(&self) -> Option<RateLimit> {
        Some(RateLimit {
            name: "per-tenant".into(),
            requests_per_unit: self.limit as u32,
            unit: Unit::Minute as i32,
        })
    }

    fn reset(counter: &Counter, now: u64) -> Option<prost_types::Duration> {
        let ms = counter.window_end - now;
        Some(prost_types::Duration {
            seconds: (ms / 1000) as i64,
            nanos: ((ms % 1000) * 1_000_000) as i32,
        })
    }

    /// `Err(status)` when down.
    fn should_rate_limit(&self, message: &[u8], now: u64) -> Result<Vec<u8>, u32> {
        self.calls.set(self.calls.get() + 1);
        if let Some(status) = self.down.get() {
            return Err(status);
        }
        let request = RateLimitRequest::decode(message).unwrap();
        let hits = u64::from(request.hits_addend.max(1));
        let mut counters = self.counters.borrow_mut();
        let counter = self.counter(&mut counters, key_of(&request.descriptors[0]), now);
        let held: u64 = counter.holds.values().sum();
        let ok = counter.count + held + hits <= self.limit;
        if ok {
            counter.count += hits;
        }
        let code = if ok { Code::Ok } else { Code::OverLimit };
        Ok(RateLimitResponse {
            overall_code: code as i32,
            statuses: vec![DescriptorStatus {
                code: code as i32,
                current_limit: self.current_limit(),
                limit_remaining: (self.limit - (counter.count + held).min(self.limit)) as u32,
                duration_until_reset: Self::reset(counter, now),
            }],
            ..Default::default()
        }
        .encode_to_vec())
    }

    fn renew(&self, message: &[u8], now: u64) -> Result<Vec<u8>, u32> {
        self.calls.set(self.calls.get() + 1);
        if let Some(status) = self.down.get() {
            return Err(status);
        }
        let request = RenewRequest::decode(message).unwrap();
        let mut counters = self.counters.borrow_mut();
        let mut grants = Vec::new();
        for renewal in request.renewals {
            let key = key_of(renewal.descriptor.as_ref().unwrap());
            let counter = self.counter(&mut counters, key, now);
            if let Some(granted) = counter.holds.remove(&renewal.lease_id) {
                counter.count += renewal.used.min(granted);
            }
            let held: u64 = counter.holds.values().sum();
            let left = self.limit - (counter.count + held).min(self.limit);
            let to_reset = counter.window_end - now;
            // Too close to the reset to be spent safely: nothing is granted, though the
            // window has budget left.
            let closing = to_reset <= self.margin_ms;
            let granted = if closing { 0 } else { renewal.want.min(left) };
            let mut grant = LeaseGrant {
                code: Code::Ok as i32,
                current_limit: self.current_limit(),
                duration_until_reset: Self::reset(counter, now),
                ..Default::default()
            };
            if renewal.want > 0 && granted == 0 {
                grant.code = Code::OverLimit as i32;
            } else if granted > 0 {
                self.next_lease.set(self.next_lease.get() + 1);
                grant.lease_id = format!("lease-{}", self.next_lease.get());
                grant.granted = granted;
                let valid_ms = self.lease_valid_ms.min(to_reset - self.margin_ms);
                grant.valid_for = Some(prost_types::Duration {
                    seconds: (valid_ms / 1000) as i64,
                    nanos: ((valid_ms % 1000) * 1_000_000) as i32,
                });
                counter.holds.insert(grant.lease_id.clone(), granted);
            }
            grant.limit_remaining = left - granted;
            grants.push(grant);
        }
        Ok(RenewResponse { grants }.encode_to_vec())
    }

    /// Hits counted (settled) for `key`, and hits still held.
    fn state(&self, key: &str) -> (u64, u64) {
        let counters = self.counters.borrow();
        counters
            .get(key)
            .map_or((0, 0), |c| (c.count, c.holds.values().sum()))
    }
}

/// One Envoy instance: its configuration (one policy: a single worker) and shared data.
struct Instance {
    policy: RateLimitPolicy,
    store: MemoryStore,
    /// Requests waiting for a lease: context id → the verdict once woken.
    woken: RefCell<HashMap<u32, Verdict>>,
    next_context: Cell<u32>,
    tokens: Cell<u32>,
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Outcome {
    Admitted,
    Refused,
    FailedClosed,
    Waiting,
}

impl Instance {
    fn new(json: &str) -> Self {
        let policy = RateLimitPolicy::from_json(json.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let store = MemoryStore::new();
        policy.prepare(&store);
        Self {
            policy,
            store,
            woken: RefCell::default(),
            next_context: Cell::new(100),
            tokens: Cell::new(0),
        }
    }

    fn outcome(verdict: &Verdict) -> Outcome {
        match verdict {
            Verdict::Allowed(_) | Verdict::ShadowLimited(_) | Verdict::Uncounted(_) => {
                Outcome::Admitted
            }
            Verdict::Limited(_) => Outcome::Refused,
            Verdict::FailedClosed(_) => Outcome::FailedClosed,
            Verdict::AwaitLease(_) => Outcome::Waiting,
            Verdict::Unlimited | Verdict::AskService(_) => panic!("{verdict:?}"),
        }
    }

    /// One request, exact mode answered at once by `service`.
    fn exact(&self, request: &FakeRequest, service: &FakeService, now: u64) -> Verdict {
        let decision = self.policy.decide(request, &self.store, now);
        self.answered(decision.verdict, service, now)
    }

    /// A verdict, with an exact-mode call answered at once by `service`.
    fn answered(&self, verdict: Verdict, service: &FakeService, now: u64) -> Verdict {
        let Verdict::AskService(call) = verdict else {
            return verdict;
        };
        let answer = match service.should_rate_limit(&call.message, now) {
            Ok(bytes) => read_answer(0, &bytes, now, now, call.timeout()),
            Err(status) => read_answer(status, &[], now, now, call.timeout()),
        };
        self.policy
            .conclude(&call.pending, answer, &self.store, now)
            .verdict
    }

    /// One request in lease mode: its verdict, or `Waiting` (its context id is returned).
    fn lease(&self, request: &FakeRequest, now: u64) -> (Verdict, u32) {
        let context = self.next_context.get();
        self.next_context.set(context + 1);
        let decision = self.policy.decide(request, &self.store, now);
        match decision.verdict {
            Verdict::AwaitLease(wait) => {
                self.policy.wait_for_lease(context, wait);
                (Verdict::Unlimited, context)
            }
            other => (other, context),
        }
    }

    fn wake(&self, ready: Vec<Waiter>, service: &FakeService, now: u64) {
        for waiter in ready {
            let context = waiter.context_id;
            match self.policy.resume(waiter, &self.store, now).verdict {
                Verdict::AwaitLease(wait) => self.policy.wait_for_lease(context, wait),
                verdict => {
                    let verdict = self.answered(verdict, service, now);
                    self.woken.borrow_mut().insert(context, verdict);
                }
            }
        }
    }

    /// The root's tick: send what is due to `service` and apply the answers.
    fn tick(&self, service: &FakeService, now: u64) {
        let tick = self.policy.lease_tick(&self.store, now);
        self.wake(tick.ready, service, now);
        for call in tick.calls {
            let token = self.tokens.get() + 1;
            self.tokens.set(token);
            self.policy
                .lease_dispatched(call.id, Some(token), &self.store, now);
            let (status, bytes) = match service.renew(&call.message, now) {
                Ok(bytes) => (0, bytes),
                Err(status) => (status, Vec::new()),
            };
            let answer = self
                .policy
                .lease_answer(token, status, &bytes, &self.store, now);
            self.wake(answer.ready, service, now);
        }
    }

    fn woken(&self, context: u32) -> Option<Verdict> {
        self.woken.borrow_mut().remove(&context)
    }
}

fn tenant(name: &str) -> FakeRequest {
    FakeRequest::get("/api/orders").with_header("x-tenant-id", name)
}

fn config(global: &str) -> String {
    format!(
        r#"{{"table": {{"slots": 64, "lease_slots": 64}},
            "identity": [{{"header": "x-user-id"}}],
            "rules": [{{"name": "tenants", "match": {{"prefix": "/api/"}},
                        "limits": [{{"name": "local", "requests": 1000, "per": "1m"}}],
                        "global": {global}}}]}}"#
    )
}

const EXACT: &str =
    r#"{"mode": "exact", "cluster": "ratelimit", "identity": [{"header": "x-tenant-id"}]}"#;

const TENANT_KEY: &str = "rule=tenants,x-tenant-id=acme";

#[test]
fn exact_admits_exactly_the_limit_across_instances() {
    let service = FakeService::new(25);
    let fleet: Vec<Instance> = (0..3).map(|_| Instance::new(&config(EXACT))).collect();
    let mut admitted = 0;
    for i in 0..90u64 {
        let verdict = fleet[(i % 3) as usize].exact(&tenant("acme"), &service, T0 + i);
        match Instance::outcome(&verdict) {
            Outcome::Admitted => admitted += 1,
            Outcome::Refused => {
                let Verdict::Limited(reply) = verdict else {
                    unreachable!()
                };
                let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
                assert_eq!(body["violated-policies"], serde_json::json!(["per-tenant"]));
                assert_eq!(header(&reply.headers, "x-ratelimit-limit"), Some("25"));
                assert_eq!(header(&reply.headers, "x-ratelimit-remaining"), Some("0"));
                // The window ends 60 s after its first hit (T0).
                assert_eq!(header(&reply.headers, "retry-after"), Some("60"));
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(admitted, 25);
    assert_eq!(service.state(TENANT_KEY), (25, 0));
    // Another tenant has its own count; the descriptor names the rule and the tenant.
    let other = fleet[0].exact(&tenant("globex"), &service, T0 + 100);
    assert_eq!(Instance::outcome(&other), Outcome::Admitted);
    assert_eq!(service.state("rule=tenants,x-tenant-id=globex"), (1, 0));
}

#[test]
fn exact_headers_show_the_fleet_and_the_tightest_limit() {
    let service = FakeService::new(25);
    let gw = Instance::new(&config(EXACT).replace("\"requests\": 1000", "\"requests\": 3"));
    let first = gw.exact(&tenant("acme"), &service, T0);
    let Verdict::Allowed(headers) = first else {
        panic!("{first:?}")
    };
    // Local has 2 left, the fleet 24: the local bucket is the tighter.
    assert_eq!(header(&headers, "x-ratelimit-limit"), Some("3"));
    assert_eq!(header(&headers, "x-ratelimit-remaining"), Some("2"));
    let ietf = Instance::new(&config(EXACT).replace(
        "\"identity\": [{\"header\": \"x-user-id\"}]",
        "\"identity\": [{\"header\": \"x-user-id\"}], \"ietf_headers\": true",
    ));
    let Verdict::Allowed(headers) = ietf.exact(&tenant("acme"), &service, T0 + 1) else {
        panic!()
    };
    assert_eq!(header(&headers, "x-ratelimit-limit"), Some("25"));
    assert_eq!(header(&headers, "x-ratelimit-remaining"), Some("23"));
    assert_eq!(
        header(&headers, "ratelimit-policy"),
        Some(r#""local";q=1000;w=60, "per-tenant";q=25;w=60"#)
    );
    assert_eq!(
        header(&headers, "ratelimit"),
        Some(r#""local";r=999;t=1, "per-tenant";r=23;t=0"#)
    );
}

#[test]
fn the_local_bucket_sheds_before_a_call() {
    let service = FakeService::new(100);
    let gw = Instance::new(&config(EXACT).replace("\"requests\": 1000", "\"requests\": 2"));
    let outcomes: Vec<Outcome> = (0..5)
        .map(|i| Instance::outcome(&gw.exact(&tenant("acme"), &service, T0 + i)))
        .collect();
    assert_eq!(outcomes[..2], [Outcome::Admitted; 2]);
    assert_eq!(outcomes[2..], [Outcome::Refused; 3]);
    assert_eq!(service.calls.get(), 2, "refused locally: no call");
}

#[test]
fn exact_failure_modes_do_what_they_say() {
    for (mode, expected) in [
        ("allow", [Outcome::Admitted; 4]),
        ("deny", [Outcome::FailedClosed; 4]),
        // A quarter of 8 per minute per instance: 2, then refused.
        (
            "local",
            [
                Outcome::Admitted,
                Outcome::Admitted,
                Outcome::Refused,
                Outcome::Refused,
            ],
        ),
    ] {
        let share = if mode == "local" {
            r#", "fallback_share": 0.25"#
        } else {
            ""
        };
        let tier = format!(
            r#"{{"mode": "exact", "cluster": "ratelimit", "failure_mode": "{mode}"{share}}}"#
        );
        let gw = Instance::new(&config(&tier).replace("\"requests\": 1000", "\"requests\": 8"));
        let service = FakeService::new(100);
        service.down.set(Some(14));
        let outcomes: Vec<Outcome> = (0..4)
            .map(|i| Instance::outcome(&gw.exact(&tenant("acme"), &service, T0 + i)))
            .collect();
        assert_eq!(outcomes, expected, "{mode}");
        // The service is back: counting resumes at once.
        service.down.set(None);
        let back = gw.exact(&tenant("acme"), &service, T0 + 10);
        assert_eq!(Instance::outcome(&back), Outcome::Admitted, "{mode}");
        // No identity header: the anonymous requests count under the rule's own node.
        assert_eq!(service.state("rule=tenants"), (1, 0), "{mode}");
    }
    // The failure is reported with the mode that decided.
    let gw = Instance::new(&config(EXACT));
    let decision = gw.policy.decide(&tenant("acme"), &gw.store, T0);
    let Verdict::AskService(call) = decision.verdict else {
        panic!()
    };
    let decided = gw.policy.conclude(
        &call.pending,
        read_answer(4, &[], T0, T0, call.timeout()),
        &gw.store,
        T0,
    );
    assert_eq!(
        decided.global.failure,
        Some((ServiceFailure::Timeout, FailureMode::Local))
    );
    assert_eq!(call.cluster(), "ratelimit");
    assert_eq!(call.timeout(), std::time::Duration::from_millis(20));
}

const LEASE: &str = r#"{"mode": "lease", "cluster": "ratelimit", "timeout": "50ms",
                        "identity": [{"header": "x-tenant-id"}], "lease": {"size": 10, "period": "1s"}}"#;

/// Sends `count` requests spread over the fleet, one tick of every instance between
/// rounds, and returns how many were admitted.
fn lease_burst(fleet: &[Instance], service: &FakeService, count: u64, start: u64) -> (u64, u64) {
    let mut waiting: Vec<(usize, u32)> = Vec::new();
    let (mut admitted, mut refused) = (0, 0);
    let mut count_verdict = |verdict: &Verdict| match Instance::outcome(verdict) {
        Outcome::Admitted => admitted += 1,
        Outcome::Refused => refused += 1,
        other => panic!("{other:?}"),
    };
    for i in 0..count {
        let now = start + i;
        let which = (i % fleet.len() as u64) as usize;
        let (verdict, context) = fleet[which].lease(&tenant("acme"), now);
        if matches!(verdict, Verdict::Unlimited) {
            waiting.push((which, context));
        } else {
            count_verdict(&verdict);
        }
        for instance in fleet {
            instance.tick(service, now);
        }
        waiting.retain(|(which, context)| match fleet[*which].woken(*context) {
            Some(verdict) => {
                count_verdict(&verdict);
                false
            }
            None => true,
        });
    }
    assert!(waiting.is_empty(), "{waiting:?} still waiting");
    (admitted, refused)
}

#[test]
fn leases_never_admit_more_than_the_limit_and_hold_back_at_most_the_bound() {
    // A rule with local limits, and one whose lease tier is its only tier.
    for json in [config(LEASE), global_only(LEASE)] {
        let service = FakeService::new(95);
        let fleet: Vec<Instance> = (0..3).map(|_| Instance::new(&json)).collect();
        let (admitted, refused) = lease_burst(&fleet, &service, 300, T0);
        assert_eq!(admitted + refused, 300);
        assert!(admitted <= 95, "{admitted}");
        // The documented bound: 3 instances × 2 × size.
        assert!(admitted >= 95 - 3 * 2 * 10, "{admitted}");
        // Far fewer calls than requests.
        assert!(service.calls.get() < 60, "{} calls", service.calls.get());
        // A period after the burst, idle leases go back: the counter holds exactly what
        // was admitted, nothing stays held.
        for instance in &fleet {
            instance.tick(&service, T0 + 300 + 1_000);
            instance.tick(&service, T0 + 300 + 2_100);
        }
        assert_eq!(service.state(TENANT_KEY), (admitted, 0));
    }
}

#[test]
fn a_lease_is_spent_locally_without_a_call() {
    let service = FakeService::new(1000);
    let gw = Instance::new(&config(LEASE));
    let (verdict, context) = gw.lease(&tenant("acme"), T0);
    assert!(
        matches!(verdict, Verdict::Unlimited),
        "the first request waits"
    );
    gw.tick(&service, T0 + 1);
    assert!(matches!(gw.woken(context), Some(Verdict::Allowed(_))));
    let calls = service.calls.get();
    for i in 0..7 {
        let (verdict, _) = gw.lease(&tenant("acme"), T0 + 2 + i);
        let Verdict::Allowed(headers) = verdict else {
            panic!("{verdict:?}")
        };
        assert_eq!(header(&headers, "x-ratelimit-limit"), Some("1000"));
    }
    assert_eq!(service.calls.get(), calls, "7 more requests, no call");
    // The 8th leaves 2 of 10: the next lease is asked for in the background.
    let (verdict, _) = gw.lease(&tenant("acme"), T0 + 10);
    assert!(matches!(verdict, Verdict::Allowed(_)));
    gw.tick(&service, T0 + 11);
    assert_eq!(service.calls.get(), calls + 1);
    assert_eq!(service.state(TENANT_KEY), (0, 20));
}

#[test]
fn lease_outage_spends_what_is_held_then_the_failure_mode_decides_and_nothing_counts_twice() {
    let service = FakeService::new(1000);
    let tier = LEASE.replace("\"timeout\"", "\"failure_mode\": \"deny\", \"timeout\"");
    let gw = Instance::new(&config(&tier));
    let (_, context) = gw.lease(&tenant("acme"), T0);
    gw.tick(&service, T0 + 1);
    assert!(matches!(gw.woken(context), Some(Verdict::Allowed(_))));
    service.down.set(Some(14));
    // The held lease is spent while the service is down (8 hits: the renewal the 8th
    // claims fails).
    let mut outcomes = Vec::new();
    for i in 0..12 {
        let (verdict, context) = gw.lease(&tenant("acme"), T0 + 2 + i);
        gw.tick(&service, T0 + 2 + i);
        let verdict = gw.woken(context).unwrap_or(verdict);
        outcomes.push(Instance::outcome(&verdict));
    }
    assert_eq!(outcomes[..9], [Outcome::Admitted; 9]);
    assert!(
        outcomes[9..].iter().all(|o| *o == Outcome::FailedClosed),
        "{outcomes:?}"
    );
    // Back after a period: the spent lease is settled once, counting resumes.
    service.down.set(None);
    let later = T0 + 2_000;
    let (_, context) = gw.lease(&tenant("acme"), later);
    gw.tick(&service, later + 1);
    assert!(matches!(gw.woken(context), Some(Verdict::Allowed(_))));
    let (count, held) = service.state(TENANT_KEY);
    assert_eq!((count, held), (10, 10));
    // A settlement repeated (an answer lost on the way back) counts nothing twice.
    gw.tick(&service, later + 5_000);
    gw.tick(&service, later + 10_000);
    let (count, held) = service.state(TENANT_KEY);
    assert_eq!(
        count + held,
        11,
        "10 + the one request since: ({count}, {held})"
    );
}

#[test]
fn a_request_waits_no_longer_than_the_timeout() {
    let gw = Instance::new(&config(LEASE));
    let (_, context) = gw.lease(&tenant("acme"), T0);
    // The renewal is sent but never answers: at the deadline the failure mode decides.
    let tick = gw.policy.lease_tick(&gw.store, T0 + 1);
    assert_eq!(tick.calls.len(), 1);
    gw.policy
        .lease_dispatched(tick.calls[0].id, Some(7), &gw.store, T0 + 1);
    let early = gw.policy.lease_tick(&gw.store, T0 + 49);
    assert!(early.ready.is_empty());
    let late = gw.policy.lease_tick(&gw.store, T0 + 50);
    assert_eq!(late.ready.len(), 1);
    gw.wake(late.ready, &FakeService::new(1000), T0 + 50);
    // failure_mode local with no share: the local bucket (which admitted it) decides.
    assert!(matches!(gw.woken(context), Some(Verdict::Allowed(_))));
    assert!(!gw.policy.is_waiting(context));
}

fn header<'a>(headers: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn a_replaced_configuration_decides_its_waiters_at_once() {
    let deny = LEASE.replace("\"timeout\"", "\"failure_mode\": \"deny\", \"timeout\"");
    let gw = Instance::new(&config(&deny));
    let (_, context) = gw.lease(&tenant("acme"), T0);
    assert!(gw.policy.is_waiting(context));
    let released = gw.policy.release_waiters(&gw.store, T0 + 1);
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].0, context);
    assert!(matches!(released[0].1.verdict, Verdict::FailedClosed(_)));
    assert!(!gw.policy.is_waiting(context));
}

/// Requests every `step_ms` for `duration_ms` over the fleet, the service answering at
/// once and every instance ticking between requests; admissions per window (windows of
/// `window_ms` from T0), refusals, and the requests asked about one by one.
fn lease_traffic(
    fleet: &[Instance],
    service: &FakeService,
    step_ms: u64,
    duration_ms: u64,
) -> (Vec<u64>, u64, u64) {
    let mut admitted = vec![0; (duration_ms / service.window_ms + 1) as usize];
    let (mut refused, mut asked) = (0, 0);
    let mut waiting: Vec<(usize, u32, u64)> = Vec::new();
    let mut count = |verdict: &Verdict, at: u64| match Instance::outcome(verdict) {
        Outcome::Admitted => admitted[((at - T0) / service.window_ms) as usize] += 1,
        Outcome::Refused => refused += 1,
        other => panic!("{other:?}"),
    };
    for i in 0..duration_ms / step_ms {
        let now = T0 + i * step_ms;
        let which = (i % fleet.len() as u64) as usize;
        let (verdict, context) = fleet[which].lease(&tenant("acme"), now);
        match verdict {
            Verdict::Unlimited => waiting.push((which, context, now)),
            Verdict::AskService(_) => {
                asked += 1;
                count(&fleet[which].answered(verdict, service, now), now);
            }
            verdict => count(&verdict, now),
        }
        for instance in fleet {
            instance.tick(service, now);
        }
        waiting.retain(|(which, context, at)| match fleet[*which].woken(*context) {
            Some(verdict) => {
                count(&verdict, *at);
                false
            }
            None => true,
        });
    }
    assert!(waiting.is_empty(), "{waiting:?} still waiting");
    (admitted, refused, asked)
}

#[test]
fn a_closing_window_is_asked_about_request_by_request_not_refused() {
    // Windows of a second; the service leases nothing in a window's last 100 ms.
    let mut service = FakeService::new(1_000);
    service.window_ms = 1_000;
    service.margin_ms = 100;
    let gw = Instance::new(&config(LEASE));
    // A request every 5 ms for 3 s: 200 a window, far below the limit.
    let (admitted, refused, asked) = lease_traffic(std::slice::from_ref(&gw), &service, 5, 3_000);
    assert_eq!(refused, 0);
    assert_eq!(admitted[..3], [200, 200, 200]);
    // Asked one by one only near each window's end (20 requests in the last 100 ms).
    assert!((1..=3 * 20).contains(&asked), "{asked} asked");
    assert!(
        service.calls.get() < 600 / 2,
        "{} calls",
        service.calls.get()
    );
}

#[test]
fn a_closing_window_still_admits_no_more_than_the_limit() {
    let mut service = FakeService::new(100);
    service.window_ms = 1_000;
    service.margin_ms = 100;
    let fleet: Vec<Instance> = (0..3).map(|_| Instance::new(&config(LEASE))).collect();
    // 500 requests a window for a limit of 100: the closing ones are counted exactly.
    let (admitted, refused, _) = lease_traffic(&fleet, &service, 2, 3_000);
    for (window, count) in admitted[..3].iter().enumerate() {
        assert!(*count <= 100, "window {window}: {count} admitted");
        assert!(
            *count >= 100 - 3 * 2 * 10,
            "window {window}: {count} admitted"
        );
    }
    assert_eq!(refused + admitted.iter().sum::<u64>(), 1_500);
}

/// A rule with a global tier and no local limits: what Envoy's own ratelimit filter does.
fn global_only(global: &str) -> String {
    format!(
        r#"{{"table": {{"slots": 64, "lease_slots": 64}},
            "identity": [{{"header": "x-user-id"}}, {{"address": {{}}}}],
            "rules": [{{"name": "tenants", "match": {{"prefix": "/api/"}}, "global": {global}}}]}}"#
    )
}

#[test]
fn a_rule_with_only_a_global_tier_counts_at_the_service_and_touches_no_bucket() {
    let service = FakeService::new(25);
    let fleet: Vec<Instance> = (0..3).map(|_| Instance::new(&global_only(EXACT))).collect();
    for instance in &fleet {
        assert_eq!(instance.store.key_count(), 0, "no bucket table is created");
    }
    let mut admitted = 0;
    for i in 0..60u64 {
        let verdict = fleet[(i % 3) as usize].exact(&tenant("acme"), &service, T0 + i);
        match (Instance::outcome(&verdict), verdict) {
            (Outcome::Admitted, Verdict::Allowed(headers)) => {
                admitted += 1;
                // The headers show the fleet's limit, the only one the rule has.
                assert_eq!(header(&headers, "x-ratelimit-limit"), Some("25"));
                assert_eq!(
                    header(&headers, "x-ratelimit-remaining"),
                    Some((25 - admitted).to_string().as_str())
                );
            }
            (Outcome::Refused, Verdict::Limited(reply)) => {
                assert_eq!(header(&reply.headers, "x-ratelimit-remaining"), Some("0"));
                assert_eq!(header(&reply.headers, "retry-after"), Some("60"));
            }
            (_, other) => panic!("{other:?}"),
        }
    }
    assert_eq!(admitted, 25);
    assert_eq!(
        service.calls.get(),
        60,
        "every request asked, none shed locally"
    );
    assert_eq!(service.state(TENANT_KEY), (25, 0));
    for instance in &fleet {
        assert_eq!(instance.store.key_count(), 0, "still no bucket");
    }
    // The rule's identity (the address, after x-user-id) keys no bucket and not the
    // global tier, which has its own: it is never read.
    let request = tenant("acme").with_address("192.0.2.1:1000");
    fleet[0].exact(&request, &service, T0 + 100);
    assert_eq!(request.address_reads.get(), 0);
}

#[test]
fn a_global_only_rule_fails_open_unless_told_to_deny() {
    for (tier, expected) in [
        (EXACT.to_owned(), Outcome::Admitted),
        (
            EXACT.replace("\"exact\",", "\"exact\", \"failure_mode\": \"deny\","),
            Outcome::FailedClosed,
        ),
    ] {
        let gw = Instance::new(&global_only(&tier));
        let service = FakeService::new(100);
        service.down.set(Some(14));
        let decision = gw.policy.decide(&tenant("acme"), &gw.store, T0);
        let Verdict::AskService(call) = decision.verdict else {
            panic!("{tier}")
        };
        let answer = read_answer(14, &[], T0, T0, call.timeout());
        let decided = gw.policy.conclude(&call.pending, answer, &gw.store, T0);
        assert_eq!(Instance::outcome(&decided.verdict), expected, "{tier}");
        let mode = decided.global.failure.map(|(_, mode)| mode);
        let wanted = match expected {
            Outcome::Admitted => FailureMode::Allow,
            _ => FailureMode::Deny,
        };
        assert_eq!(mode, Some(wanted), "{tier}");
        assert_eq!(gw.store.key_count(), 0, "{tier}: nothing counted locally");
    }
}
