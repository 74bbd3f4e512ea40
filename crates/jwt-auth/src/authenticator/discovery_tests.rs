//! Providers that find their JWKS through OpenID Connect discovery: the document
//! first, then the JWKS its `jwks_uri` names, through the shared cache (one fetch per
//! Envoy), with the document checked, cached and kept when it cannot be had.

use super::tests::{allow, claims, deny, down, no_order, ok, one_order, sign, wait, ISS, NOW};
use super::*;
use crate::jwks_cache::{Document, FetchReport, FetchResponse};
use crate::testkit::{self, bearer, Vm};
use crate::token::Alg;
use serde_json::{json, Value};
use wasmgate_shared_store::MemoryStore;

const WELL_KNOWN: &str = "/.well-known/openid-configuration";

fn discovery_config() -> Value {
    json!({
        "providers": {"idp": {
            "issuer": ISS, "audiences": ["orders"],
            "jwks": {"remote": {"cluster": "idp", "discovery": true,
                                "jwks_clusters": {"keys.test": "keys"},
                                "cache_duration": "10m", "max_staleness": "1h",
                                "backoff_initial": "1s", "backoff_max": "8s", "max_wait": "3s"}}
        }},
        "default": {"providers": ["idp"]}
    })
}

fn document(issuer: &str, jwks_uri: &str) -> FetchResponse {
    ok(&json!({"issuer": issuer, "jwks_uri": jwks_uri,
               "authorization_endpoint": format!("{issuer}/authorize")}))
}

/// The order this VM must send now, which must be for `document` at `where_`
/// (cluster, authority, path).
fn order_for(vm: &mut Vm, store: &MemoryStore, now: u64, document: Document, at: [&str; 3]) {
    let order = one_order(vm, store, now);
    assert_eq!(order.document, document, "{order:?}");
    assert_eq!(
        [
            order.cluster.as_str(),
            order.authority.as_str(),
            order.path.as_str()
        ],
        at
    );
}

/// The discovery document is due: this VM must fetch it now.
fn document_due(vm: &mut Vm, store: &MemoryStore, now: u64) {
    order_for(
        vm,
        store,
        now,
        Document::Discovery,
        ["idp", "issuer.test", WELL_KNOWN],
    );
}

fn failed_retrying_in(report: &FetchReport, delay: u64) {
    assert!(
        matches!(report, FetchReport::Failure { retry_in, .. } if *retry_in == delay),
        "{report:?}"
    );
}

fn discover(vm: &mut Vm, store: &MemoryStore, now: u64, response: &FetchResponse) -> FetchReport {
    vm.keyring
        .on_discovery_response(0, store, now, response)
        .unwrap()
}

/// The document, then the JWKS at `ISS/jwks`, both fetched by `vm` at `NOW`.
fn first_load(vm: &mut Vm, store: &MemoryStore) {
    vm.keyring.create_shared_keys(store);
    order_for(
        vm,
        store,
        NOW,
        Document::Discovery,
        ["idp", "issuer.test", WELL_KNOWN],
    );
    discover(vm, store, NOW, &document(ISS, &format!("{ISS}/jwks")));
    order_for(
        vm,
        store,
        NOW,
        Document::Jwks,
        ["idp", "issuer.test", "/jwks"],
    );
    vm.keyring
        .on_response(0, store, NOW, &ok(&testkit::keys().jwks()));
}

#[test]
fn the_document_comes_first_then_the_jwks_it_names_one_vm_fetching_for_all() {
    let store = MemoryStore::new();
    let mut a = Vm::new(discovery_config(), 1);
    let mut b = Vm::new(discovery_config(), 2);
    a.keyring.create_shared_keys(&store);
    b.keyring.create_shared_keys(&store);
    let token = sign(Alg::ES256, &claims());
    let waiting_a = wait(a.start(&store, &bearer("/x", &token), NOW));
    let waiting_b = wait(b.start(&store, &bearer("/x", &token), NOW));

    document_due(&mut a, &store, NOW);
    no_order(&mut b, &store, NOW + 10);
    assert_eq!(
        discover(
            &mut a,
            &store,
            NOW + 50,
            &document(ISS, "https://issuer.test/oauth/jwks?v=1")
        ),
        FetchReport::Discovered {
            jwks_uri: "https://issuer.test/oauth/jwks?v=1".to_owned(),
            changed: true,
            time_to_live: 600_000,
        }
    );
    // Still no keys: the requests keep waiting; one VM fetches the JWKS, from the
    // document's host through the provider's cluster.
    let waiting_b = wait(b.check(&store, waiting_b, NOW + 60));
    order_for(
        &mut a,
        &store,
        NOW + 60,
        Document::Jwks,
        ["idp", "issuer.test", "/oauth/jwks?v=1"],
    );
    no_order(&mut b, &store, NOW + 70);
    a.keyring
        .on_response(0, &store, NOW + 100, &ok(&testkit::keys().jwks()));
    allow(a.check(&store, waiting_a, NOW + 100));
    allow(b.check(&store, waiting_b, NOW + 150));
    // Nothing more until the refresh (both documents: 10 minutes).
    no_order(&mut a, &store, NOW + 599_999);
    no_order(&mut b, &store, NOW + 599_999);
    document_due(&mut b, &store, NOW + 600_050);
    assert_eq!(store.key_count(), 2);
}

#[test]
fn a_document_of_another_issuer_or_pointing_elsewhere_is_refused_and_nothing_is_fetched() {
    let store = MemoryStore::new();
    let mut vm = Vm::new(discovery_config(), 1);
    vm.keyring.create_shared_keys(&store);
    let token = sign(Alg::RS256, &claims());
    let mut now = NOW;
    let refusals = [
        document("https://evil.test", "https://issuer.test/jwks"),
        document(&format!("{ISS}/"), "https://issuer.test/jwks"),
        document(ISS, "https://evil.test/jwks"),
    ];
    let mut delays = Vec::new();
    for answer in &refusals {
        document_due(&mut vm, &store, now);
        let report = discover(&mut vm, &store, now, answer);
        let FetchReport::Refused { retry_in, reason } = report else {
            panic!("{report:?}")
        };
        assert!(!reason.is_empty());
        delays.push(retry_in);
        // No JWKS is fetched from a document that was refused, and the document is
        // not asked for again before its retry.
        no_order(&mut vm, &store, now + retry_in - 1);
        now += retry_in;
    }
    assert_eq!(delays, [1_000, 2_000, 4_000]);
    // The next retry is 8 s away, further than a request waits: 503 at once.
    document_due(&mut vm, &store, now);
    discover(&mut vm, &store, now, &refusals[0]);
    assert_eq!(
        deny(vm.start(&store, &bearer("/x", &token), now)),
        AuthError::KeysUnavailable
    );
    // The issuer's own document, at last.
    now += 8_000;
    document_due(&mut vm, &store, now);
    let attempt = wait(vm.start(&store, &bearer("/x", &token), now));
    discover(
        &mut vm,
        &store,
        now,
        &document(ISS, "https://keys.test/jwks"),
    );
    order_for(
        &mut vm,
        &store,
        now,
        Document::Jwks,
        ["keys", "keys.test", "/jwks"],
    );
    vm.keyring
        .on_response(0, &store, now, &ok(&testkit::keys().jwks()));
    allow(vm.check(&store, attempt, now));
}

#[test]
fn discovery_down_at_start_requests_wait_then_pass() {
    let store = MemoryStore::new();
    let mut vm = Vm::new(discovery_config(), 1);
    vm.keyring.create_shared_keys(&store);
    let token = sign(Alg::PS256, &claims());
    let attempt = wait(vm.start(&store, &bearer("/x", &token), NOW));
    document_due(&mut vm, &store, NOW);
    let report = discover(&mut vm, &store, NOW, &down());
    failed_retrying_in(&report, 1_000);
    // The retry is within the request's wait: it keeps waiting.
    let attempt = wait(vm.check(&store, attempt, NOW + 500));
    no_order(&mut vm, &store, NOW + 999);
    document_due(&mut vm, &store, NOW + 1_000);
    discover(
        &mut vm,
        &store,
        NOW + 1_000,
        &document(ISS, &format!("{ISS}/jwks")),
    );
    order_for(
        &mut vm,
        &store,
        NOW + 1_000,
        Document::Jwks,
        ["idp", "issuer.test", "/jwks"],
    );
    vm.keyring
        .on_response(0, &store, NOW + 1_000, &ok(&testkit::keys().jwks()));
    allow(vm.check(&store, attempt, NOW + 1_000));
}

#[test]
fn the_last_good_jwks_uri_serves_while_discovery_is_down() {
    let store = MemoryStore::new();
    let mut vm = Vm::new(discovery_config(), 1);
    first_load(&mut vm, &store);
    let refresh = NOW + 600_000;
    // Both are due: the document fails, the JWKS is refreshed from where the last
    // good document said, and the document is retried on its own backoff.
    document_due(&mut vm, &store, refresh);
    let report = discover(&mut vm, &store, refresh, &down());
    failed_retrying_in(&report, 1_000);
    order_for(
        &mut vm,
        &store,
        refresh,
        Document::Jwks,
        ["idp", "issuer.test", "/jwks"],
    );
    assert!(matches!(
        vm.keyring
            .on_response(0, &store, refresh, &ok(&testkit::keys().jwks())),
        Some(FetchReport::Success { .. })
    ));
    no_order(&mut vm, &store, refresh + 999);
    document_due(&mut vm, &store, refresh + 1_000);
    // A refused document keeps the last good jwks_uri too.
    discover(
        &mut vm,
        &store,
        refresh + 1_000,
        &document("https://evil.test", "https://evil.test/k"),
    );
    // New tokens (not from the token cache) still verify with the keys.
    vm.cache = TokenCache::new(0);
    allow(vm.start(
        &store,
        &bearer("/x", &sign(Alg::EdDSA, &claims())),
        refresh + 1_500,
    ));
    // And the next JWKS refresh still comes from the last good location.
    let next = refresh + 600_000;
    document_due(&mut vm, &store, next);
    discover(&mut vm, &store, next, &down());
    order_for(
        &mut vm,
        &store,
        next,
        Document::Jwks,
        ["idp", "issuer.test", "/jwks"],
    );
}

#[test]
fn a_new_jwks_uri_is_fetched_at_once_through_the_cluster_of_its_host() {
    let store = MemoryStore::new();
    let mut vm = Vm::new(discovery_config(), 1);
    vm.keyring.create_shared_keys(&store);
    document_due(&mut vm, &store, NOW);
    // The document's own max-age schedules it (within the same bounds as the keys').
    let mut answer = document(ISS, &format!("{ISS}/jwks"));
    answer.cache_control = Some("max-age=60".into());
    assert!(matches!(
        discover(&mut vm, &store, NOW, &answer),
        FetchReport::Discovered {
            time_to_live: 60_000,
            changed: true,
            ..
        }
    ));
    order_for(
        &mut vm,
        &store,
        NOW,
        Document::Jwks,
        ["idp", "issuer.test", "/jwks"],
    );
    vm.keyring
        .on_response(0, &store, NOW, &ok(&testkit::keys().jwks()));
    // The same jwks_uri again: nothing else to fetch (the keys are fresh).
    document_due(&mut vm, &store, NOW + 60_000);
    assert!(matches!(
        discover(&mut vm, &store, NOW + 60_000, &answer),
        FetchReport::Discovered { changed: false, .. }
    ));
    no_order(&mut vm, &store, NOW + 60_000);
    // The IdP moved its keys to another host: fetched at once, through that host's
    // cluster, with the port in the authority.
    let moved = document(ISS, "https://Keys.test:8443/v2/jwks");
    document_due(&mut vm, &store, NOW + 120_000);
    assert!(matches!(
        discover(&mut vm, &store, NOW + 120_000, &moved),
        FetchReport::Discovered { changed: true, .. }
    ));
    order_for(
        &mut vm,
        &store,
        NOW + 120_000,
        Document::Jwks,
        ["keys", "keys.test:8443", "/v2/jwks"],
    );
}

#[test]
fn unknown_kid_refetches_go_where_the_document_said() {
    let keys = testkit::keys();
    let store = MemoryStore::new();
    let mut vm = Vm::new(discovery_config(), 1);
    vm.keyring.create_shared_keys(&store);
    document_due(&mut vm, &store, NOW);
    discover(
        &mut vm,
        &store,
        NOW,
        &document(ISS, "https://keys.test/jwks"),
    );
    order_for(
        &mut vm,
        &store,
        NOW,
        Document::Jwks,
        ["keys", "keys.test", "/jwks"],
    );
    vm.keyring
        .on_response(0, &store, NOW, &ok(&json!({"keys": [keys.rsa_jwk("rsa")]})));
    let rotated = keys.sign(Alg::ES256, Some("p256"), &claims());
    let attempt = wait(vm.start(&store, &bearer("/x", &rotated), NOW + 1_000));
    let order = one_order(&mut vm, &store, NOW + 1_000);
    assert!(
        order.forced && order.document == Document::Jwks,
        "{order:?}"
    );
    assert_eq!(order.cluster, "keys");
    vm.keyring
        .on_response(0, &store, NOW + 1_000, &ok(&keys.jwks()));
    allow(vm.check(&store, attempt, NOW + 1_000));
}
