//! The policy end to end, natively: config in, requests through a fake view and an
//! in-memory store, verdicts and headers out, at fixed instants.

use crate::{RateLimitPolicy, RequestView, Verdict};
use std::cell::Cell;
use std::collections::BTreeMap;
use wasmgate_shared_store::MemoryStore;

#[derive(Debug, Clone, Default)]
pub struct FakeRequest {
    headers: BTreeMap<String, String>,
    address: Option<String>,
    route: Option<String>,
    /// How often the policy asked for the address (a host call in Envoy).
    pub address_reads: Cell<u32>,
}

impl FakeRequest {
    pub fn get(path: &str) -> Self {
        Self::default()
            .with_header(":method", "GET")
            .with_header(":path", path)
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.insert(name.to_owned(), value.to_owned());
        self
    }

    pub fn with_address(mut self, address: &str) -> Self {
        self.address = Some(address.to_owned());
        self
    }

    pub fn with_route(mut self, route: &str) -> Self {
        self.route = Some(route.to_owned());
        self
    }
}

impl RequestView for FakeRequest {
    fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).cloned()
    }
    fn source_address(&self) -> Option<String> {
        self.address_reads.set(self.address_reads.get() + 1);
        self.address.clone()
    }
    fn route_name(&self) -> Option<String> {
        self.route.clone()
    }
}

/// A configured filter with its own shared data, as one Envoy instance would have.
struct Gateway {
    policy: RateLimitPolicy,
    store: MemoryStore,
}

impl Gateway {
    /// The configuration as given, with a small table unless it names one (preparing the
    /// default 100,000 slots is slow in unoptimised test builds).
    fn new(json: &str) -> Self {
        let mut config: serde_json::Value = serde_json::from_str(json).unwrap();
        if config.get("table").is_none() {
            config["table"] = serde_json::json!({"slots": 256});
        }
        let policy = RateLimitPolicy::from_json(config.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        let store = MemoryStore::new();
        policy.prepare(&store);
        Self { policy, store }
    }

    fn send(&self, request: &FakeRequest, now_ms: u64) -> Verdict {
        self.policy.decide(request, &self.store, now_ms).verdict
    }
}

fn header<'a>(headers: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
}

fn allowed(verdict: &Verdict) -> &[(&'static str, String)] {
    match verdict {
        Verdict::Allowed(headers) => headers,
        other => panic!("expected Allowed, got {other:?}"),
    }
}

fn is_limited(verdict: &Verdict) -> bool {
    matches!(verdict, Verdict::Limited(_))
}

fn refusal(json: &str) -> String {
    RateLimitPolicy::from_json(json.as_bytes())
        .unwrap_err()
        .to_string()
}

const T0: u64 = 1_713_272_400_000;

const PER_USER: &str = r#"{
    "identity": [{"header": "x-user-id"}],
    "rules": [{"name": "api", "match": {"prefix": "/api/"},
               "limits": [{"name": "hourly", "requests": 50, "per": "1h"}]}]
}"#;

#[test]
fn exactly_the_limit_is_admitted_and_the_rest_told_when_to_come_back() {
    let gw = Gateway::new(PER_USER);
    let alice = FakeRequest::get("/api/orders").with_header("x-user-id", "alice");
    let verdicts: Vec<Verdict> = (0..200).map(|i| gw.send(&alice, T0 + i)).collect();
    assert_eq!(
        verdicts
            .iter()
            .filter(|v| matches!(v, Verdict::Allowed(_)))
            .count(),
        50
    );
    let Verdict::Limited(reply) = &verdicts[50] else {
        panic!("{:?}", verdicts[50]);
    };
    assert_eq!(reply.status, 429);
    // The last token went at T0 + 49 ms; the next comes 72 s after the bucket began to
    // refill (T0), rounded up to whole seconds.
    assert_eq!(header(&reply.headers, "retry-after"), Some("72"));
    assert_eq!(header(&reply.headers, "x-ratelimit-limit"), Some("50"));
    assert_eq!(header(&reply.headers, "x-ratelimit-remaining"), Some("0"));
    assert_eq!(
        header(&reply.headers, "x-ratelimit-reset"),
        Some((T0 / 1000 + 3600).to_string().as_str())
    );
    assert_eq!(
        header(&reply.headers, "content-type"),
        Some("application/problem+json")
    );
    let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(body["status"], 429);
    assert_eq!(body["retry_after"], 72);
    assert_eq!(body["violated-policies"], serde_json::json!(["hourly"]));
}

#[test]
fn headers_count_down_and_reset_in_both_formats() {
    let gw = Gateway::new(PER_USER);
    let bob = FakeRequest::get("/api/x").with_header("x-user-id", "bob");
    for (i, left) in [49, 48, 47].into_iter().enumerate() {
        let v = gw.send(&bob, T0 + 1_000 * i as u64);
        let headers = allowed(&v);
        assert_eq!(header(headers, "x-ratelimit-limit"), Some("50"));
        assert_eq!(
            header(headers, "x-ratelimit-remaining"),
            Some(left.to_string().as_str())
        );
    }
    // At T0+2s: 3 taken, 2 s × 50/h refilled; full again after (3×72 − 2) s = 214 s.
    let delta =
        Gateway::new(&PER_USER.replace(r#""identity""#, r#""reset_format": "delta", "identity""#));
    for i in 0..3u64 {
        let v = delta.send(&bob, T0 + 1_000 * i);
        let expected = [72, 143, 214][i as usize];
        assert_eq!(
            header(allowed(&v), "x-ratelimit-reset"),
            Some(expected.to_string().as_str())
        );
    }
    let v = gw.send(&bob, T0 + 3_000);
    assert_eq!(
        header(allowed(&v), "x-ratelimit-reset"),
        Some((T0 / 1000 + 3 + 285).to_string().as_str()),
        "epoch: now + time to full (4 taken, 3 s refilled: 4×72 − 3 = 285 s)"
    );
}

#[test]
fn refill_admits_again_after_the_interval() {
    let gw = Gateway::new(
        r#"{"identity": [{"header": "x-user-id"}],
            "rules": [{"name": "r", "match": {"prefix": "/"}, "limits": [{"requests": 2, "per": "2s"}]}]}"#,
    );
    let carol = FakeRequest::get("/").with_header("x-user-id", "carol");
    assert!(matches!(gw.send(&carol, T0), Verdict::Allowed(_)));
    assert!(matches!(gw.send(&carol, T0), Verdict::Allowed(_)));
    let Verdict::Limited(reply) = gw.send(&carol, T0 + 1) else {
        panic!()
    };
    assert_eq!(header(&reply.headers, "retry-after"), Some("1"));
    assert!(is_limited(&gw.send(&carol, T0 + 999)));
    assert!(matches!(gw.send(&carol, T0 + 1_000), Verdict::Allowed(_)));
}

#[test]
fn clients_endpoints_and_plans_have_their_own_buckets() {
    let gw = Gateway::new(
        r#"{"identity": [{"header": "x-api-key-id"}, {"address": {"ipv4_prefix": 24}}],
            "rules": [
              {"name": "orders", "match": {"prefix": "/orders"}, "limits": [{"requests": 1, "per": "1h"}],
               "plans": {"gold": [{"requests": 3, "per": "1h"}]}},
              {"name": "per-route", "match": {"prefix": "/"}, "endpoint": "route",
               "limits": [{"requests": 1, "per": "1h"}]}
            ]}"#,
    );
    let key = |id: &str| FakeRequest::get("/orders").with_header("x-api-key-id", id);
    assert!(matches!(gw.send(&key("k1"), T0), Verdict::Allowed(_)));
    assert!(is_limited(&gw.send(&key("k1"), T0)));
    assert!(matches!(gw.send(&key("k2"), T0), Verdict::Allowed(_)));
    // Gold gets its own, larger bucket; an unknown plan gets the default limits.
    let gold = key("k3").with_header("x-plan", "gold");
    for _ in 0..3 {
        let v = gw.send(&gold, T0);
        assert_eq!(header(allowed(&v), "x-ratelimit-limit"), Some("3"));
    }
    assert!(is_limited(&gw.send(&gold, T0)));
    let platinum = key("k4").with_header("x-plan", "platinum");
    assert_eq!(
        header(allowed(&gw.send(&platinum, T0)), "x-ratelimit-limit"),
        Some("1")
    );
    // Without a key, clients are their /24.
    let from =
        |addr: &str, route: &str| FakeRequest::get("/x").with_address(addr).with_route(route);
    assert!(matches!(
        gw.send(&from("10.0.0.1:1", "users"), T0),
        Verdict::Allowed(_)
    ));
    assert!(is_limited(&gw.send(&from("10.0.0.200:2", "users"), T0)));
    assert!(matches!(
        gw.send(&from("10.0.0.1:1", "orders"), T0),
        Verdict::Allowed(_)
    ));
    assert!(matches!(
        gw.send(&from("10.0.1.1:1", "users"), T0),
        Verdict::Allowed(_)
    ));
}

#[test]
fn several_limits_apply_together_and_a_refusal_takes_from_none() {
    let gw = Gateway::new(
        r#"{"identity": [{"header": "x-user-id"}], "ietf_headers": true,
            "rules": [{"name": "r", "match": {"prefix": "/"}, "limits": [
                {"name": "burst", "requests": 2, "per": "2s"},
                {"name": "hourly", "requests": 3, "per": "1h"}]}]}"#,
    );
    let dan = FakeRequest::get("/").with_header("x-user-id", "dan");
    let first = gw.send(&dan, T0);
    let headers = allowed(&first);
    assert_eq!(
        header(headers, "ratelimit-policy"),
        Some(r#""burst";q=2;w=2, "hourly";q=3;w=3600"#)
    );
    assert_eq!(
        header(headers, "ratelimit"),
        Some(r#""burst";r=1;t=1, "hourly";r=2;t=1200"#)
    );
    assert_eq!(header(headers, "x-ratelimit-remaining"), Some("1"));
    assert_eq!(header(headers, "x-ratelimit-limit"), Some("2"));
    assert!(matches!(gw.send(&dan, T0), Verdict::Allowed(_)));
    // The burst limit refuses; the hourly bucket keeps its last token.
    let Verdict::Limited(reply) = gw.send(&dan, T0) else {
        panic!()
    };
    assert_eq!(header(&reply.headers, "retry-after"), Some("1"));
    assert!(
        reply.body.contains(r#""violated-policies":["burst"]"#),
        "{}",
        reply.body
    );
    let third = gw.send(&dan, T0 + 1_000);
    assert_eq!(header(allowed(&third), "x-ratelimit-remaining"), Some("0"));
    // Now the hourly limit refuses, for much longer than the burst limit would.
    let Verdict::Limited(reply) = gw.send(&dan, T0 + 10_000) else {
        panic!()
    };
    assert_eq!(header(&reply.headers, "retry-after"), Some("1190"));
    assert_eq!(header(&reply.headers, "x-ratelimit-limit"), Some("3"));
    assert!(
        reply.body.contains(r#""violated-policies":["hourly"]"#),
        "{}",
        reply.body
    );
}

#[test]
fn shadow_mode_reports_but_never_refuses() {
    for json in [
        r#"{"shadow": true, "identity": [{"header": "x-user-id"}],
            "rules": [{"name": "r", "match": {"prefix": "/"}, "limits": [{"requests": 2, "per": "1h"}]}]}"#,
        r#"{"identity": [{"header": "x-user-id"}],
            "rules": [{"name": "r", "match": {"prefix": "/"}, "shadow": true, "limits": [{"requests": 2, "per": "1h"}]}]}"#,
    ] {
        let gw = Gateway::new(json);
        let eve = FakeRequest::get("/").with_header("x-user-id", "eve");
        assert!(matches!(gw.send(&eve, T0), Verdict::Allowed(_)));
        assert!(matches!(gw.send(&eve, T0), Verdict::Allowed(_)));
        for _ in 0..3 {
            match gw.send(&eve, T0) {
                Verdict::ShadowLimited(headers) => {
                    assert_eq!(header(&headers, "x-ratelimit-remaining"), Some("0"));
                    assert!(header(&headers, "retry-after").is_none());
                }
                other => panic!("{other:?}"),
            }
        }
    }
}

#[test]
fn admitted_headers_off_leaves_admitted_responses_alone_and_still_explains_refusals() {
    // A pre-authentication tier: one bucket per address, in front of a later tier
    // whose headers the client is to see.
    let gw = Gateway::new(
        r#"{"identity": [{"address": {"ipv4_prefix": 32, "ipv6_prefix": 48}}],
            "default": {"limits": [{"name": "per-address", "requests": 1, "per": "1s", "burst": 2}]},
            "admitted_headers": false, "ietf_headers": true}"#,
    );
    let client = FakeRequest::get("/").with_address("192.0.2.7:4000");
    for _ in 0..2 {
        let Verdict::Allowed(headers) = gw.send(&client, T0) else {
            panic!("not allowed")
        };
        assert!(headers.is_empty(), "{headers:?}");
    }
    let Verdict::Limited(reply) = gw.send(&client, T0) else {
        panic!("not limited")
    };
    assert_eq!(header(&reply.headers, "retry-after"), Some("1"));
    assert_eq!(header(&reply.headers, "x-ratelimit-limit"), Some("2"));
    assert!(reply
        .body
        .contains(r#""violated-policies":["per-address"]"#));
    // Another address of the same /48 shares the bucket; one outside it does not.
    let neighbour = FakeRequest::get("/").with_address("[2001:db8:1:ffff::1]:1");
    let same_site = FakeRequest::get("/").with_address("[2001:db8:1:1::2]:1");
    let elsewhere = FakeRequest::get("/").with_address("[2001:db8:2::1]:1");
    assert!(matches!(gw.send(&neighbour, T0), Verdict::Allowed(_)));
    assert!(matches!(gw.send(&same_site, T0), Verdict::Allowed(_)));
    assert!(is_limited(&gw.send(&neighbour, T0)));
    assert!(matches!(gw.send(&elsewhere, T0), Verdict::Allowed(_)));
}

#[test]
fn unmatched_requests_are_not_limited_unless_there_is_a_default() {
    let gw = Gateway::new(PER_USER);
    assert!(matches!(
        gw.send(&FakeRequest::get("/health"), T0),
        Verdict::Unlimited
    ));
    let gw = Gateway::new(
        r#"{"rules": [{"name": "api", "match": {"prefix": "/api/"}, "limits": [{"requests": 5, "per": "1s"}]}],
            "default": {"limits": [{"requests": 1, "per": "1m"}]}}"#,
    );
    let anon = FakeRequest::get("/health").with_address("192.0.2.1:9");
    assert!(matches!(gw.send(&anon, T0), Verdict::Allowed(_)));
    assert!(is_limited(&gw.send(&anon, T0)));
}

#[test]
fn cost_and_status_are_configurable() {
    let gw = Gateway::new(
        r#"{"status": 503, "identity": [{"header": "x-user-id"}],
            "rules": [{"name": "r", "match": {"prefix": "/"}, "cost": 2, "limits": [{"requests": 5, "per": "1h"}]}]}"#,
    );
    let fay = FakeRequest::get("/").with_header("x-user-id", "fay");
    assert_eq!(
        header(allowed(&gw.send(&fay, T0)), "x-ratelimit-remaining"),
        Some("3")
    );
    assert_eq!(
        header(allowed(&gw.send(&fay, T0)), "x-ratelimit-remaining"),
        Some("1")
    );
    let Verdict::Limited(reply) = gw.send(&fay, T0) else {
        panic!()
    };
    assert_eq!(reply.status, 503);
}

#[test]
fn istio_doubles_parse_like_integers() {
    let gw = Gateway::new(
        r#"{"status": 429.0, "table": {"slots": 65.0, "probe": 4.0},
            "identity": [{"address": {"ipv4_prefix": 24.0, "ipv6_prefix": 48.0}}],
            "rules": [{"name": "r", "match": {"prefix": "/"}, "cost": 1.0,
                       "limits": [{"requests": 2.0, "per": "1m", "burst": 2.0}]}]}"#,
    );
    assert_eq!(gw.policy.table().slots(), 65);
    // Two creation guards (64 slots each) and the overflow bucket.
    assert_eq!(gw.store.key_count(), 3);
}

#[test]
fn the_default_table_holds_100000_buckets() {
    let policy =
        RateLimitPolicy::from_json(br#"{"default": {"limits": [{"requests": 1, "per": "1s"}]}}"#)
            .unwrap();
    assert_eq!(policy.table().slots(), 100_000);
}

#[test]
fn the_table_grows_with_its_clients_and_is_bounded() {
    let gw = Gateway::new(
        r#"{"table": {"name": "edge", "slots": 32, "probe": 4}, "identity": [{"header": "x-user-id"}],
            "rules": [{"name": "r", "match": {"prefix": "/"}, "limits": [{"requests": 5, "per": "1h"}],
                       "plans": {"gold": [{"requests": 50, "per": "1h"}]}}]}"#,
    );
    // One creation guard (for up to 64 slots) and one overflow bucket per plan (default
    // and gold); no slot yet.
    assert_eq!(gw.store.key_count(), 3);
    gw.send(&FakeRequest::get("/").with_header("x-user-id", "first"), T0);
    assert_eq!(gw.store.key_count(), 4);
    assert!(gw
        .store
        .keys()
        .iter()
        .all(|k| k.starts_with("wasmgate.rate_limit.edge.")));
    for n in 0..500 {
        gw.send(
            &FakeRequest::get("/").with_header("x-user-id", &format!("u{n}")),
            T0,
        );
    }
    assert_eq!(gw.store.key_count(), 32 + 3);
    assert_eq!(gw.policy.prepare(&gw.store).occupied, 32);
}

#[test]
fn invalid_configurations_name_the_field() {
    let cases = [
        ("", "empty"),
        (r#"{}"#, "limit nothing"),
        (
            r#"{"rules": [{"name": "a", "match": {"prefix": "/"}, "limits": []}]}"#,
            "rules[0].limits: 1 to 8 limits",
        ),
        (
            r#"{"rules": [{"name": "a", "match": {"prefix": "/"}, "limits": [{"requests": 0, "per": "1s"}]}]}"#,
            "rules[0].limits[0].requests: 0: from 1",
        ),
        (
            r#"{"rules": [{"name": "a", "match": {"prefix": "/"}, "limits": [{"requests": 5, "per": "5"}]}]}"#,
            "rules[0].limits[0].per",
        ),
        (
            r#"{"rules": [{"name": "a", "match": {"prefix": "/"}, "limits": [{"requests": 5, "per": "0s"}]}]}"#,
            "rules[0].limits[0].per: a whole number of milliseconds",
        ),
        (
            r#"{"rules": [{"name": "a", "match": {"prefix": "/"}, "limits": [{"requests": 5.5, "per": "1s"}]}]}"#,
            "rules[0].limits[0].requests",
        ),
        (
            r#"{"rules": [{"name": "a", "match": {"prefix": "/"}, "limits": [{"requests": 5, "per": "1s", "burst": 2}], "cost": 3}]}"#,
            "rules[0].limits[0].burst: a request costs 3",
        ),
        (
            r#"{"rules": [{"name": "a", "match": {"prefix": "/"}, "limits": [{"requests": 5, "per": "1s"}, {"requests": 5, "per": "1s"}]}]}"#,
            "rules[0].limits[1].name",
        ),
        (
            r#"{"rules": [{"name": "a", "limits": [{"requests": 5, "per": "1s"}]}]}"#,
            "rules[0].match: every rule needs",
        ),
        (
            r#"{"rules": [{"match": {"prefix": "/"}, "limits": [{"requests": 5, "per": "1s"}]}]}"#,
            "rules[0].name: every rule needs a name",
        ),
        (
            r#"{"rules": [{"name": "a b", "match": {"prefix": "/"}, "limits": [{"requests": 5, "per": "1s"}]}]}"#,
            "rules[0].name",
        ),
        (
            r#"{"rules": [{"name": "a", "match": {"prefix": "/"}, "limits": [{"requests": 5, "per": "1s"}]},
                       {"name": "a", "match": {"prefix": "/b"}, "limits": [{"requests": 5, "per": "1s"}]}]}"#,
            "rules[1].name",
        ),
        (
            r#"{"default": {"match": {"prefix": "/"}, "limits": [{"requests": 5, "per": "1s"}]}}"#,
            "default.match",
        ),
        (
            r#"{"default": {"limits": [{"requests": 5, "per": "1s"}]}, "status": 200}"#,
            "status: 200",
        ),
        (
            r#"{"default": {"limits": [{"requests": 5, "per": "1s"}]}, "table": {"slots": 0}}"#,
            "table.slots",
        ),
        (
            r#"{"default": {"limits": [{"requests": 5, "per": "1s"}]}, "table": {"slots": 4, "probe": 8}}"#,
            "table.probe",
        ),
        (
            r#"{"default": {"limits": [{"requests": 5, "per": "1s"}]}, "table": {"name": "Edge"}}"#,
            "table.name",
        ),
        (
            r#"{"default": {"limits": [{"requests": 5, "per": "1s"}]}, "identity": []}"#,
            "identity",
        ),
        (
            r#"{"default": {"limits": [{"requests": 5, "per": "1s"}]}, "identity": [{"cookie": "a"}]}"#,
            "unknown variant `cookie`",
        ),
        (
            r#"{"default": {"limits": [{"requests": 5, "per": "1s"}]}, "identity": [{"address": {"ipv4_prefix": 33}}]}"#,
            "identity[0].address.ipv4_prefix",
        ),
        (
            r#"{"default": {"limits": [{"requests": 5, "per": "1s"}]}, "identity": [{"header": ":path"}]}"#,
            "identity[0].header",
        ),
        (
            r#"{"default": {"limits": [{"requests": 5, "per": "1s"}]}, "identity": [{"headers": ["x-a"]}]}"#,
            "identity[0].headers",
        ),
        (
            r#"{"default": {"limits": [{"requests": 5, "per": "1s"}]}, "reset_format": "iso"}"#,
            "reset_format",
        ),
        (
            r#"{"default": {"limits": [{"requests": 5, "per": "1s"}], "plans": {"g old": [{"requests": 5, "per": "1s"}]}}}"#,
            "default.plans.g old",
        ),
        (
            r#"{"default": {"limits": [{"requests": 5, "per": "1s"}]}, "shaddow": true}"#,
            "unknown field `shaddow`",
        ),
        (
            r#"{"default": {"limits": [{"requests": 1000000000, "per": "366d"}]}}"#,
            "default.limits[0].burst: 1000000000 tokens",
        ),
        (
            r#"{"default": {"limits": [{"requests": 5, "per": "1s"}], "global": {"mode": "exact"}}}"#,
            "default.global.cluster: name the Envoy cluster",
        ),
        (
            r#"{"default": {"limits": [{"requests": 5, "per": "1s"}], "global": {"mode": "sync", "cluster": "rls"}}}"#,
            "default.global.mode: unknown variant `sync`",
        ),
        (
            r#"{"default": {"limits": [{"requests": 5, "per": "1s"}], "global": {"mode": "exact", "cluster": "rls", "timeout": "0ms"}}}"#,
            "default.global.timeout: from 1ms to 10s",
        ),
        (
            r#"{"default": {"limits": [{"requests": 5, "per": "1s"}], "global": {"mode": "exact", "cluster": "rls", "failure_mode": "open"}}}"#,
            "default.global.failure_mode: unknown variant `open`",
        ),
        (
            r#"{"default": {"limits": [{"requests": 5, "per": "1s"}], "global": {"mode": "exact", "cluster": "rls", "failure_mode": "deny", "fallback_share": 0.5}}}"#,
            "default.global.fallback_share: only with \"failure_mode\": \"local\"",
        ),
        (
            r#"{"default": {"limits": [{"requests": 5, "per": "1s"}], "global": {"mode": "exact", "cluster": "rls", "fallback_share": 1.5}}}"#,
            "default.global.fallback_share: 1.5",
        ),
        (
            r#"{"default": {"limits": [{"requests": 4, "per": "1s"}], "cost": 2, "global": {"mode": "exact", "cluster": "rls", "fallback_share": 0.25}}}"#,
            "default.global.fallback_share: 0.25 of limit \"4-per-1s\" holds 1 but a request costs 2",
        ),
        (
            r#"{"default": {"limits": [{"requests": 5, "per": "1s"}], "global": {"mode": "exact", "cluster": "rls", "lease": {"size": 5}}}}"#,
            "default.global.lease: only with \"mode\": \"lease\"",
        ),
        (
            r#"{"default": {"limits": [{"requests": 5, "per": "1s"}], "global": {"mode": "lease", "cluster": "rls", "lease": {"size": 0}}}}"#,
            "default.global.lease.size: 0: from 1",
        ),
        (
            r#"{"default": {"limits": [{"requests": 5, "per": "1s"}], "global": {"mode": "lease", "cluster": "rls", "lease": {"period": "10ms"}}}}"#,
            "default.global.lease.period: a whole number of milliseconds, from 100ms to 60s",
        ),
        (
            r#"{"default": {"limits": [{"requests": 5, "per": "1s"}], "global": {"mode": "lease", "cluster": "rls", "lease": {"every": "1s"}}}}"#,
            "default.global.lease.every: unknown field `every`",
        ),
        (
            r#"{"default": {"limits": [{"requests": 5, "per": "1s"}], "global": {"mode": "exact", "cluster": "b\u0002xy"}}}"#,
            "default.global.cluster",
        ),
        (
            r#"{"default": {"limits": [{"requests": 5, "per": "1s"}], "global": {"mode": "exact", "cluster": "rls", "identity": []}}}"#,
            "default.global.identity: list 1 to 8 sources",
        ),
        (
            r#"{"default": {"limits": [{"requests": 5, "per": "1s"}], "global": {"mode": "exact", "cluster": "rls", "identity": [{"header": ":path"}]}}}"#,
            "default.global.identity[0].header",
        ),
        (
            r#"{"default": {"limits": [{"requests": 5, "per": "1s"}]}, "table": {"lease_slots": 4, "probe": 8, "slots": 16}}"#,
            "table.lease_slots: 4: between",
        ),
        (
            r#"{"default": {"limits": []}}"#,
            "default.limits: 1 to 8 limits, all applied together (a rule may leave them out only with a \"global\" tier)",
        ),
        (
            r#"{"default": {"cost": 2}}"#,
            "default.limits: 1 to 8 limits",
        ),
        (
            r#"{"default": {"global": {"mode": "exact", "cluster": "rls"}, "plans": {"gold": [{"requests": 5, "per": "1s"}]}}}"#,
            "default.plans: plans vary a rule's local limits, and this rule has none",
        ),
        (
            r#"{"default": {"global": {"mode": "exact", "cluster": "rls", "failure_mode": "local"}}}"#,
            "default.global.failure_mode: \"local\" falls back to the rule's local limits, and this rule has none",
        ),
        (
            r#"{"default": {"global": {"mode": "lease", "cluster": "rls", "fallback_share": 0.5}}}"#,
            "default.global.fallback_share: only with \"failure_mode\": \"local\" (this tier's is \"allow\")",
        ),
    ];
    for (json, expected) in cases {
        let err = refusal(json);
        assert!(
            err.contains(expected),
            "{json}\n  → {err}\n  expected {expected:?}"
        );
    }
}

#[test]
fn the_documented_example_is_a_valid_configuration() {
    let page = include_str!("../../../docs/filters/rate-limit.md");
    // The page's main example (the pre-authentication tier's comes before it).
    let example = page
        .split("<!-- example: rate-limit -->\n```json")
        .skip(1)
        .find(|rest| rest.contains("\"table\": {\"name\": \"edge\""))
        .and_then(|rest| rest.split("```").next())
        .expect("docs/filters/rate-limit.md has a marked JSON example");
    let gw = Gateway::new(example);
    let post = |plan: &str| {
        FakeRequest::default()
            .with_header(":method", "POST")
            .with_header(":path", "/api/v1/orders")
            .with_header("x-api-key-id", "k1")
            .with_header("x-plan", plan)
    };
    let v = gw.send(&post("gold"), T0);
    assert_eq!(header(allowed(&v), "x-ratelimit-limit"), Some("50"));
    assert_eq!(
        header(allowed(&v), "ratelimit-policy"),
        Some(r#""burst";q=50;w=1, "hourly";q=20000;w=3600"#)
    );
    let v = gw.send(&post("free"), T0);
    assert_eq!(header(allowed(&v), "x-ratelimit-limit"), Some("10"));
    // The default rule is in shadow mode: over its limit, still admitted.
    let health = FakeRequest::get("/health").with_address("192.0.2.7:1000");
    let verdicts: Vec<Verdict> = (0..101).map(|_| gw.send(&health, T0)).collect();
    assert!(matches!(verdicts[100], Verdict::ShadowLimited(_)));
}
