//! Whole decisions: configuration, extraction, keys (inline and through the shared
//! JWKS cache with an in-memory store), verification, claims, scopes, caching.

use super::*;
use crate::jwks_cache::{FetchOrder, FetchReport, FetchResponse};
use crate::testkit::{self, bearer, get, Keys, Vm};
use crate::token::Alg;
use serde_json::{json, Value};
use wasmgate_shared_store::MemoryStore;

pub(super) const NOW: u64 = 1_700_000_000_000;
pub(super) const NOW_SECS: u64 = NOW / 1000;
pub(super) const ISS: &str = "https://issuer.test";

pub(super) fn claims() -> Value {
    json!({
        "iss": ISS, "aud": "orders", "sub": "alice", "tenant_id": "acme",
        "scope": "orders:read profile", "iat": NOW_SECS, "exp": NOW_SECS + 3600
    })
}

pub(super) fn with(field: &str, value: Value) -> Value {
    let mut c = claims();
    c[field] = value;
    c
}

fn inline_config(jwks: Value) -> Value {
    json!({
        "providers": {"idp": {"issuer": ISS, "audiences": ["orders"], "jwks": {"inline": jwks}}},
        "rules": [
            {"match": {"prefix": "/public"}, "public": true},
            {"match": {"prefix": "/write"}, "providers": ["idp"], "required_scopes": ["orders:write"]},
            {"match": {"prefix": "/optional"}, "providers": ["idp"], "allow_missing": true}
        ],
        "default": {"providers": ["idp"]}
    })
}

fn inline_vm() -> Vm {
    Vm::new(inline_config(testkit::keys().jwks()), 1)
}

pub(super) fn allow(outcome: Outcome) -> Grant {
    match outcome {
        Outcome::Allow(grant) => grant,
        other => panic!("expected Allow, got {other:?}"),
    }
}

pub(super) fn deny(outcome: Outcome) -> AuthError {
    match outcome {
        Outcome::Deny(err) => err,
        other => panic!("expected Deny, got {other:?}"),
    }
}

pub(super) fn wait(outcome: Outcome) -> Attempt {
    match outcome {
        Outcome::Wait(attempt) => attempt,
        other => panic!("expected Wait, got {other:?}"),
    }
}

pub(super) fn sign(alg: Alg, claims: &Value) -> String {
    testkit::keys().sign(alg, Some(Keys::kid_for(alg)), claims)
}

#[test]
fn every_asymmetric_algorithm_passes_and_forwards_the_identity() {
    let store = MemoryStore::new();
    let mut vm = inline_vm();
    for &alg in Alg::ASYMMETRIC {
        let grant = allow(vm.start(&store, &bearer("/orders", &sign(alg, &claims())), NOW));
        let mut headers = grant.headers().to_vec();
        headers.sort();
        assert_eq!(
            headers,
            [
                ("x-scopes".to_owned(), "orders:read profile".to_owned()),
                ("x-tenant-id".to_owned(), "acme".to_owned()),
                ("x-user-id".to_owned(), "alice".to_owned()),
            ],
            "{alg}"
        );
        // The token does not travel upstream unless `forward` is set.
        assert_eq!(grant.remove_headers, ["authorization"], "{alg}");
    }
}

#[test]
fn public_routes_and_allow_missing_need_no_token() {
    let store = MemoryStore::new();
    let mut vm = inline_vm();
    let grant = allow(vm.start(&store, &get("/public/x"), NOW));
    assert!(grant.identity.is_none() && grant.headers().is_empty());
    assert!(allow(vm.start(&store, &get("/optional"), NOW))
        .identity
        .is_none());
    // allow_missing does not excuse an invalid token.
    let expired = sign(Alg::RS256, &with("exp", json!(NOW_SECS - 3600)));
    assert_eq!(
        deny(vm.start(&store, &bearer("/optional", &expired), NOW)),
        AuthError::Expired
    );
    assert_eq!(
        deny(vm.start(&store, &get("/orders"), NOW)),
        AuthError::MissingToken
    );
}

#[test]
fn each_rejection_has_its_reason() {
    let keys = testkit::keys();
    let store = MemoryStore::new();
    let mut vm = inline_vm();
    let good = claims();
    // Change one character in the middle of the signature (never a no-op).
    let tampered = {
        let mut bytes = sign(Alg::ES256, &good).into_bytes();
        let at = bytes.len() - 20;
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        String::from_utf8(bytes).unwrap()
    };
    let other_sub = sign(Alg::ES256, &with("sub", json!("mallory")));
    let spliced = format!(
        "{}.{}",
        other_sub.rsplit_once('.').unwrap().0,
        sign(Alg::ES256, &good).rsplit_once('.').unwrap().1
    );
    let cases: Vec<(String, AuthError)> = vec![
        (
            keys.sign_raw(Alg::RS256, &json!({"alg": "none"}), &good)
                .split('.')
                .take(2)
                .collect::<Vec<_>>()
                .join(".")
                + ".",
            AuthError::Malformed("empty part"),
        ),
        (
            keys.sign_raw(Alg::RS256, &json!({"alg": "none", "kid": "rsa"}), &good),
            AuthError::AlgorithmNotAllowed,
        ),
        (
            keys.sign(Alg::HS256, Some("rsa"), &good),
            AuthError::AlgorithmNotAllowed,
        ),
        (
            keys.sign_raw(
                Alg::RS256,
                &json!({"alg": "RS256", "kid": "rsa", "crit": ["exp"]}),
                &good,
            ),
            AuthError::UnsupportedCritical,
        ),
        (
            keys.sign(Alg::RS256, Some("nope"), &good),
            AuthError::UnknownKey,
        ),
        (
            keys.sign(Alg::ES256, Some("rsa"), &good),
            AuthError::KeyMismatch,
        ),
        (
            keys.sign(Alg::ES384, Some("p256"), &good),
            AuthError::KeyMismatch,
        ),
        (tampered, AuthError::BadSignature),
        (spliced, AuthError::BadSignature),
        (
            sign(Alg::RS256, &with("exp", json!(NOW_SECS - 61))),
            AuthError::Expired,
        ),
        (
            sign(Alg::RS256, &with("nbf", json!(NOW_SECS + 3600))),
            AuthError::NotYetValid,
        ),
        (
            sign(Alg::RS256, &with("iat", json!(NOW_SECS + 3600))),
            AuthError::IssuedInFuture,
        ),
        (
            sign(Alg::RS256, &with("iss", json!("https://evil.test"))),
            AuthError::WrongIssuer,
        ),
        (
            sign(Alg::RS256, &with("aud", json!(["billing"]))),
            AuthError::WrongAudience,
        ),
        (
            "not a token".to_owned(),
            AuthError::Malformed("not three dot-separated parts"),
        ),
        (
            "a.b.c".to_owned(),
            AuthError::Malformed("invalid base64url"),
        ),
        ("x".repeat(9000), AuthError::TooLarge),
    ];
    for (token, expected) in cases {
        let got = deny(vm.start(&store, &bearer("/orders", &token), NOW));
        assert_eq!(got, expected, "token {:.60}", token);
    }
}

#[test]
fn tokens_without_kid_try_every_fitting_key() {
    let store = MemoryStore::new();
    let mut vm = inline_vm();
    let token = testkit::keys().sign(Alg::EdDSA, None, &claims());
    allow(vm.start(&store, &bearer("/orders", &token), NOW));
}

#[test]
fn a_token_without_kid_is_tried_against_three_fitting_keys_at_most() {
    let keys = testkit::keys();
    let store = MemoryStore::new();
    let kidless = keys.sign(Alg::RS256, None, &claims());
    // The same RSA key under four kids: what counts is how many keys fit the alg.
    let rsa = |kid: &str| keys.rsa_jwk(kid);
    let three = json!({"keys": [rsa("r1"), rsa("r2"), rsa("r3"), keys.p256_jwk("p256")]});
    allow(Vm::new(inline_config(three), 1).start(&store, &bearer("/orders", &kidless), NOW));
    let four = json!({"keys": [rsa("r1"), rsa("r2"), rsa("r3"), rsa("r4")]});
    let mut vm = Vm::new(inline_config(four), 1);
    let forged = format!("{}.AAAA", kidless.rsplit_once('.').unwrap().0);
    for token in [&kidless, &forged] {
        assert_eq!(
            deny(vm.start(&store, &bearer("/orders", token), NOW)),
            AuthError::KidRequired
        );
    }
    // Naming the key is always fine; a key held to another alg does not fit.
    allow(vm.start(
        &store,
        &bearer("/orders", &keys.sign(Alg::RS256, Some("r4"), &claims())),
        NOW,
    ));
    let mut pss_only = rsa("r4");
    pss_only["alg"] = json!("PS256");
    let four = json!({"keys": [rsa("r1"), rsa("r2"), rsa("r3"), pss_only]});
    allow(Vm::new(inline_config(four), 1).start(&store, &bearer("/orders", &kidless), NOW));
}

#[test]
fn required_typ_refuses_other_token_types_before_the_signature_check() {
    let keys = testkit::keys();
    let store = MemoryStore::new();
    let mut config = inline_config(keys.jwks());
    config["providers"]["idp"]["required_typ"] = json!(["at+jwt"]);
    let mut vm = Vm::new(config, 1);
    let typed = |typ: Option<&str>| {
        let mut header = json!({"alg": "ES256", "kid": "p256"});
        if let Some(typ) = typ {
            header["typ"] = json!(typ);
        }
        keys.sign_raw(Alg::ES256, &header, &claims())
    };
    for accepted in ["at+jwt", "AT+JWT", "application/at+jwt"] {
        allow(vm.start(&store, &bearer("/orders", &typed(Some(accepted))), NOW));
    }
    // An ID token of the same issuer and key (typ JWT), or no typ at all.
    for refused in [typed(Some("JWT")), typed(None), typed(Some("at+jwt/x"))] {
        assert_eq!(
            deny(vm.start(&store, &bearer("/orders", &refused), NOW)),
            AuthError::WrongType
        );
    }
    // A forgery with the wrong typ costs no signature check: refused for its typ.
    let forged = format!("{}.AAAA", typed(Some("JWT")).rsplit_once('.').unwrap().0);
    assert_eq!(
        deny(vm.start(&store, &bearer("/orders", &forged), NOW)),
        AuthError::WrongType
    );
    // Without required_typ, any typ passes.
    allow(inline_vm().start(&store, &bearer("/orders", &typed(Some("JWT"))), NOW));
}

#[test]
fn a_member_named_twice_in_the_header_or_the_claims_is_refused() {
    let keys = testkit::keys();
    let store = MemoryStore::new();
    let mut vm = inline_vm();
    let claims = claims().to_string();
    // Signed properly: the signature covers the bytes, the parse still refuses them.
    let header = r#"{"alg":"ES256","kid":"p256","kid":"rsa"}"#;
    assert_eq!(
        deny(vm.start(
            &store,
            &bearer("/orders", &keys.sign_text(Alg::ES256, header, &claims)),
            NOW
        )),
        AuthError::Malformed("header names a member twice")
    );
    let twice = format!(r#"{},"sub":"admin"}}"#, claims.trim_end_matches('}'));
    let token = keys.sign_text(Alg::ES256, r#"{"alg":"ES256","kid":"p256"}"#, &twice);
    assert_eq!(
        deny(vm.start(&store, &bearer("/orders", &token), NOW)),
        AuthError::Malformed("payload names a member twice")
    );
}

#[test]
fn a_grant_lists_every_identity_header_and_the_token_header() {
    let store = MemoryStore::new();
    let mut vm = inline_vm();
    let output = vm.auth.config().output_headers.clone();
    let grant = allow(vm.start(
        &store,
        &bearer("/orders", &sign(Alg::ES256, &claims())),
        NOW,
    ));
    assert_eq!(
        grant.header_edits(&output).collect::<Vec<_>>(),
        [
            HeaderEdit::Set("x-scopes", "orders:read profile"),
            HeaderEdit::Set("x-tenant-id", "acme"),
            HeaderEdit::Set("x-user-id", "alice"),
            HeaderEdit::Remove("authorization"),
        ]
    );
    // A public route: every identity header goes, whatever the client sent.
    let public = allow(vm.start(&store, &get("/public/x"), NOW));
    assert_eq!(
        public.header_edits(&output).collect::<Vec<_>>(),
        [
            HeaderEdit::Remove("x-scopes"),
            HeaderEdit::Remove("x-tenant-id"),
            HeaderEdit::Remove("x-user-id"),
        ]
    );
}

#[test]
fn hmac_only_with_opt_in_and_never_with_a_public_key() {
    let keys = testkit::keys();
    let store = MemoryStore::new();
    let mut config = inline_config(json!({"keys": [keys.hmac_jwk("hmac"), keys.rsa_jwk("rsa")]}));
    config["providers"]["idp"]["algorithms"] = json!(["HS256", "RS256"]);
    let mut vm = Vm::new(config, 1);
    allow(vm.start(
        &store,
        &bearer("/orders", &keys.sign(Alg::HS256, Some("hmac"), &claims())),
        NOW,
    ));
    // The classic confusion: HS256 "signed" with the RSA key's public modulus,
    // pointing at the RSA key. No HMAC runs with an RSA key.
    let rsa_n = {
        let jwk = keys.rsa_jwk("rsa");
        base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            jwk["n"].as_str().unwrap(),
        )
        .unwrap()
    };
    let input = format!(
        "{}.{}",
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            br#"{"alg":"HS256","kid":"rsa"}"#
        ),
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            claims().to_string()
        )
    );
    let sig = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &rsa_n),
        input.as_bytes(),
    );
    let forged = format!(
        "{input}.{}",
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            sig.as_ref()
        )
    );
    assert_eq!(
        deny(vm.start(&store, &bearer("/orders", &forged), NOW)),
        AuthError::KeyMismatch
    );
}

#[test]
fn scopes_are_checked_per_route_even_from_the_cache() {
    let store = MemoryStore::new();
    let mut vm = inline_vm();
    let reader = sign(Alg::ES256, &claims());
    assert_eq!(
        allow(vm.start(&store, &bearer("/orders", &reader), NOW)).cache,
        CacheUse::Miss
    );
    assert_eq!(
        deny(vm.start(&store, &bearer("/write", &reader), NOW)),
        AuthError::InsufficientScope("orders:write".into())
    );
    let writer = sign(
        Alg::ES256,
        &with("scp", json!(["orders:write"]))
            .as_object()
            .map(|c| {
                let mut c = c.clone();
                c.remove("scope");
                Value::Object(c)
            })
            .unwrap(),
    );
    allow(vm.start(&store, &bearer("/write", &writer), NOW));
}

#[test]
fn the_cache_answers_until_expiry_and_then_the_token_is_checked_again() {
    let store = MemoryStore::new();
    let mut vm = inline_vm();
    let token = sign(Alg::RS256, &with("exp", json!(NOW_SECS + 120)));
    assert_eq!(
        allow(vm.start(&store, &bearer("/orders", &token), NOW)).cache,
        CacheUse::Miss
    );
    assert_eq!(
        allow(vm.start(&store, &bearer("/orders", &token), NOW + 1000)).cache,
        CacheUse::Hit
    );
    // exp + skew (60 s) has passed: not from the cache, and refused.
    let later = NOW + 181_000;
    assert_eq!(
        deny(vm.start(&store, &bearer("/orders", &token), later)),
        AuthError::Expired
    );
}

#[test]
fn cache_off_still_verifies() {
    let store = MemoryStore::new();
    let mut config = inline_config(testkit::keys().jwks());
    config["token_cache_entries"] = json!(0);
    let mut vm = Vm::new(config, 1);
    let token = sign(Alg::RS256, &claims());
    for _ in 0..2 {
        assert_eq!(
            allow(vm.start(&store, &bearer("/orders", &token), NOW)).cache,
            CacheUse::NotUsed
        );
    }
}

#[test]
fn forward_keeps_the_token_and_custom_claims_map_to_headers() {
    let store = MemoryStore::new();
    let mut config = inline_config(testkit::keys().jwks());
    config["providers"]["idp"]["forward"] = json!(true);
    config["providers"]["idp"]["claim_to_headers"] =
        json!({"x-org": ["org.id", "tenant_id"], "x-groups": "groups", "x-missing": "nope"});
    let mut vm = Vm::new(config, 1);
    let token = sign(Alg::RS256, &with("groups", json!(["admins", "ops"])));
    let grant = allow(vm.start(&store, &bearer("/orders", &token), NOW));
    assert!(grant.remove_headers.is_empty());
    let mut headers = grant.headers().to_vec();
    headers.sort();
    assert_eq!(
        headers,
        [
            ("x-groups".to_owned(), "admins ops".to_owned()),
            ("x-org".to_owned(), "acme".to_owned())
        ]
    );
    assert_eq!(
        vm.auth.config().output_headers,
        ["x-groups", "x-missing", "x-org"]
    );
}

#[test]
fn providers_sharing_a_header_are_told_apart_by_issuer() {
    let keys = testkit::keys();
    let store = MemoryStore::new();
    let mut vm = Vm::new(
        json!({
            "providers": {
                "a": {"issuer": "https://a", "audiences": ["orders"], "jwks": {"inline": {"keys": [keys.rsa_jwk("rsa")]}}},
                "b": {"issuer": "https://b", "audiences": ["orders"], "jwks": {"inline": {"keys": [keys.p256_jwk("p256")]}},
                      "claim_to_headers": {"x-b-user": "sub"}}
            },
            "default": {"providers": ["a", "b"]}
        }),
        1,
    );
    let from_b = sign(Alg::ES256, &with("iss", json!("https://b")));
    let grant = allow(vm.start(&store, &bearer("/", &from_b), NOW));
    assert_eq!(
        grant.headers(),
        [("x-b-user".to_owned(), "alice".to_owned())]
    );
    let from_a = sign(Alg::RS256, &with("iss", json!("https://a")));
    assert_eq!(
        allow(vm.start(&store, &bearer("/", &from_a), NOW))
            .identity
            .unwrap()
            .provider,
        0
    );
    let from_nobody = sign(Alg::RS256, &with("iss", json!("https://c")));
    assert_eq!(
        deny(vm.start(&store, &bearer("/", &from_nobody), NOW)),
        AuthError::WrongIssuer
    );
}

#[test]
fn tokens_in_params_and_cookies() {
    let store = MemoryStore::new();
    let mut config = inline_config(testkit::keys().jwks());
    config["providers"]["idp"]["from_params"] = json!(["access_token"]);
    config["providers"]["idp"]["from_cookies"] = json!(["session"]);
    let mut vm = Vm::new(config, 1);
    let token = sign(Alg::RS256, &claims());
    let grant = allow(vm.start(&store, &get(&format!("/orders?access_token={token}")), NOW));
    assert!(grant.remove_headers.is_empty());
    let mut request = get("/orders");
    request
        .headers
        .insert("cookie".into(), format!("a=b; session={token}"));
    allow(vm.start(&store, &request, NOW));
    // Only the configured places: the default Bearer header is not one of them now.
    assert_eq!(
        deny(vm.start(&store, &bearer("/orders", &token), NOW)),
        AuthError::MissingToken
    );
}

#[test]
fn cors_preflight_bypass() {
    let store = MemoryStore::new();
    let mut config = inline_config(testkit::keys().jwks());
    config["bypass_cors_preflight"] = json!(true);
    let mut vm = Vm::new(config, 1);
    let mut preflight = get("/orders");
    preflight.method = "OPTIONS";
    preflight
        .headers
        .insert("origin".into(), "https://app".into());
    preflight
        .headers
        .insert("access-control-request-method".into(), "POST".into());
    allow(vm.start(&store, &preflight, NOW));
    preflight.headers.remove("origin");
    assert_eq!(
        deny(vm.start(&store, &preflight, NOW)),
        AuthError::MissingToken
    );
}

// --- remote JWKS through the shared cache -----------------------------------------

fn remote_config() -> Value {
    json!({
        "providers": {"idp": {
            "issuer": ISS, "audiences": ["orders"],
            "jwks": {"remote": {"cluster": "idp", "path": "/jwks.json", "cache_duration": "10m",
                                "max_staleness": "1h", "backoff_initial": "1s", "backoff_max": "8s",
                                "max_wait": "3s", "unknown_kid_refetch_interval": "30s"}}
        }},
        "default": {"providers": ["idp"]}
    })
}

pub(super) fn ok(jwks: &Value) -> FetchResponse {
    FetchResponse {
        status: Some(200),
        body: jwks.to_string().into_bytes(),
        truncated: false,
        cache_control: None,
    }
}

pub(super) fn down() -> FetchResponse {
    FetchResponse::default()
}

pub(super) fn one_order(vm: &mut Vm, store: &MemoryStore, now: u64) -> FetchOrder {
    let orders = vm.keyring.poll(store, now);
    assert_eq!(orders.len(), 1, "{orders:?}");
    orders.into_iter().next().unwrap()
}

pub(super) fn no_order(vm: &mut Vm, store: &MemoryStore, now: u64) {
    let orders = vm.keyring.poll(store, now);
    assert!(orders.is_empty(), "{orders:?}");
}

fn first_load(store: &MemoryStore, vms: &mut [&mut Vm], jwks: &Value) {
    for vm in vms.iter() {
        vm.keyring.create_shared_keys(store);
    }
    let order = one_order(vms[0], store, NOW);
    assert_eq!(
        (
            order.cluster.as_str(),
            order.path.as_str(),
            order.authority.as_str()
        ),
        ("idp", "/jwks.json", "idp")
    );
    assert_eq!(order.timeout, 5_000);
    for vm in vms.iter_mut().skip(1) {
        no_order(vm, store, NOW);
    }
    assert!(matches!(
        vms[0].keyring.on_response(0, store, NOW, &ok(jwks)),
        Some(FetchReport::Success {
            time_to_live: 600_000,
            ..
        })
    ));
}

#[test]
fn requests_before_the_first_load_wait_then_pass_and_one_vm_fetches_for_all() {
    let store = MemoryStore::new();
    let jwks = testkit::keys().jwks();
    let mut a = Vm::new(remote_config(), 11);
    let mut b = Vm::new(remote_config(), 22);
    a.keyring.create_shared_keys(&store);
    b.keyring.create_shared_keys(&store);
    let token = sign(Alg::PS256, &claims());

    let waiting_a = wait(a.start(&store, &bearer("/x", &token), NOW));
    let waiting_b = wait(b.start(&store, &bearer("/x", &token), NOW));
    assert_eq!(waiting_a.deadline(), NOW + 3_000);

    one_order(&mut a, &store, NOW);
    no_order(&mut b, &store, NOW + 10); // lease held by A
    no_order(&mut a, &store, NOW + 20); // A's own fetch in flight
    let waiting_b = wait(b.check(&store, waiting_b, NOW + 30));

    a.keyring.on_response(0, &store, NOW + 100, &ok(&jwks));
    allow(a.check(&store, waiting_a, NOW + 100));
    // B reads A's keys from shared data, without fetching.
    allow(b.check(&store, waiting_b, NOW + 150));
    no_order(&mut b, &store, NOW + 200);
    assert!(
        store
            .keys()
            .iter()
            .all(|k| k.starts_with("wasmgate.jwt.idp.")),
        "{:?}",
        store.keys()
    );
    assert_eq!(store.key_count(), 2);
}

#[test]
fn keys_refresh_after_cache_duration_or_max_age_within_bounds() {
    let store = MemoryStore::new();
    let jwks = testkit::keys().jwks();
    let mut vm = Vm::new(remote_config(), 1);
    first_load(&store, &mut [&mut vm], &jwks);
    no_order(&mut vm, &store, NOW + 599_999);
    one_order(&mut vm, &store, NOW + 600_000);
    let mut answer = ok(&jwks);
    answer.cache_control = Some("public, max-age=5".into()); // under the 30 s floor
    assert!(matches!(
        vm.keyring.on_response(0, &store, NOW + 600_000, &answer),
        Some(FetchReport::Success {
            time_to_live: 30_000,
            ..
        })
    ));
    no_order(&mut vm, &store, NOW + 629_999);
    one_order(&mut vm, &store, NOW + 630_000);
    answer.cache_control = Some("max-age=3600".into());
    assert!(matches!(
        vm.keyring.on_response(0, &store, NOW + 630_000, &answer),
        Some(FetchReport::Success {
            time_to_live: 3_600_000,
            ..
        })
    ));
    answer.cache_control = Some("max-age=999999999".into()); // over the 1 h ceiling
    one_order(&mut vm, &store, NOW + 630_000 + 3_600_000);
    assert!(matches!(
        vm.keyring.on_response(0, &store, NOW + 4_230_000, &answer),
        Some(FetchReport::Success {
            time_to_live: 3_600_000,
            ..
        })
    ));
}

#[test]
fn failed_refreshes_back_off_and_keep_the_last_good_keys_until_max_staleness() {
    let store = MemoryStore::new();
    let jwks = testkit::keys().jwks();
    let mut vm = Vm::new(remote_config(), 1);
    first_load(&store, &mut [&mut vm], &jwks);
    let token = sign(Alg::ES384, &with("exp", json!(NOW_SECS + 7 * 3600)));
    let mut now = NOW + 600_000; // due
    let mut delays = Vec::new();
    for _ in 0..5 {
        one_order(&mut vm, &store, now);
        let Some(FetchReport::Failure { retry_in, .. }) =
            vm.keyring.on_response(0, &store, now, &down())
        else {
            panic!("expected a failure")
        };
        delays.push(retry_in);
        no_order(&mut vm, &store, now + retry_in - 1);
        now += retry_in;
        // The last good keys still verify (with the token cache off, so they are used).
        vm.cache = TokenCache::new(0);
        allow(vm.start(&store, &bearer("/x", &token), now));
    }
    assert_eq!(delays, [1_000, 2_000, 4_000, 8_000, 8_000]);
    // Past refresh time + max_staleness (1 h), the old keys are not used any more:
    // the request waits for the fetch that is due.
    let stale = NOW + 600_000 + 3_600_000;
    wait(vm.start(&store, &bearer("/x", &token), stale));
    // Another success resets the backoff.
    one_order(&mut vm, &store, stale);
    vm.keyring.on_response(0, &store, stale, &ok(&jwks));
    allow(vm.start(&store, &bearer("/x", &token), stale + 1));
}

#[test]
fn jwks_down_at_start_requests_wait_while_a_retry_is_near_and_get_503_when_not() {
    let store = MemoryStore::new();
    let mut vm = Vm::new(remote_config(), 1);
    vm.keyring.create_shared_keys(&store);
    let token = sign(Alg::RS256, &claims());
    let mut now = NOW;
    // The first failures retry within max_wait (3 s): requests wait.
    for expected_retry in [1_000, 2_000] {
        one_order(&mut vm, &store, now);
        vm.keyring.on_response(0, &store, now, &down());
        let attempt = wait(vm.start(&store, &bearer("/x", &token), now));
        assert_eq!(attempt.deadline(), now + 3_000);
        now += expected_retry;
    }
    // The wait ran out: 503, the gateway's problem.
    wait(vm.start(&store, &bearer("/x", &token), now));
    assert_eq!(vm.auth.give_up(), AuthError::KeysUnavailable);
    // Retries 4 s and then 8 s away: no point waiting, answer 503 at once.
    one_order(&mut vm, &store, now);
    vm.keyring.on_response(0, &store, now, &down());
    assert_eq!(
        deny(vm.start(&store, &bearer("/x", &token), now)),
        AuthError::KeysUnavailable
    );
    // The JWKS comes back at the next retry.
    now += 4_000;
    one_order(&mut vm, &store, now);
    vm.keyring
        .on_response(0, &store, now, &ok(&testkit::keys().jwks()));
    allow(vm.start(&store, &bearer("/x", &token), now));
}

#[test]
fn an_unknown_kid_refetches_once_then_is_rate_limited() {
    let keys = testkit::keys();
    let store = MemoryStore::new();
    let mut a = Vm::new(remote_config(), 1);
    let mut b = Vm::new(remote_config(), 2);
    let only_rsa = json!({"keys": [keys.rsa_jwk("rsa")]});
    first_load(&store, &mut [&mut a, &mut b], &only_rsa);

    // The IdP rotated: a token signed with a key published under a new kid.
    let rotated = keys.sign(Alg::ES256, Some("p256"), &claims());
    let attempt = wait(a.start(&store, &bearer("/x", &rotated), NOW + 1_000));
    let order = one_order(&mut a, &store, NOW + 1_000);
    assert!(order.forced);
    no_order(&mut b, &store, NOW + 1_000);
    a.keyring
        .on_response(0, &store, NOW + 1_100, &ok(&keys.jwks()));
    allow(a.check(&store, attempt, NOW + 1_100));
    // B picks up the new kid from shared data, without a wait or a fetch.
    allow(b.start(&store, &bearer("/x", &rotated), NOW + 1_200));

    // A kid nobody publishes: within 30 s of the last refetch, refused at once.
    let bogus = keys.sign(Alg::ES256, Some("bogus"), &claims());
    assert_eq!(
        deny(b.start(&store, &bearer("/x", &bogus), NOW + 2_000)),
        AuthError::UnknownKey
    );
    assert_eq!(
        deny(a.start(&store, &bearer("/x", &bogus), NOW + 2_000)),
        AuthError::UnknownKey
    );
    no_order(&mut a, &store, NOW + 2_000);
    // After the interval one refetch is allowed; the kid is still unknown: 401.
    let later = NOW + 1_000 + 30_000;
    let attempt = wait(b.start(&store, &bearer("/x", &bogus), later));
    one_order(&mut b, &store, later);
    b.keyring
        .on_response(0, &store, later + 10, &ok(&keys.jwks()));
    assert_eq!(
        deny(b.check(&store, attempt, later + 10)),
        AuthError::UnknownKey
    );
}

#[test]
fn a_lost_lease_is_taken_over_after_it_expires() {
    let store = MemoryStore::new();
    let mut a = Vm::new(remote_config(), 1);
    let mut b = Vm::new(remote_config(), 2);
    a.keyring.create_shared_keys(&store);
    one_order(&mut a, &store, NOW); // A never answers (its VM went away)
    no_order(&mut b, &store, NOW + 5_999);
    one_order(&mut b, &store, NOW + 6_000); // timeout 5 s + 1 s margin
}

#[test]
fn cas_conflicts_mean_someone_else_won() {
    let store = MemoryStore::new();
    let mut a = Vm::new(remote_config(), 1);
    a.keyring.create_shared_keys(&store);
    store.fail_next_sets(1);
    no_order(&mut a, &store, NOW);
    one_order(&mut a, &store, NOW + 1);
}

#[test]
fn broken_answers_count_as_failures() {
    let store = MemoryStore::new();
    let mut vm = Vm::new(remote_config(), 1);
    vm.keyring.create_shared_keys(&store);
    let mut now = NOW;
    let answers = [
        FetchResponse {
            status: Some(500),
            ..ok(&json!({}))
        },
        FetchResponse {
            status: Some(200),
            body: b"<html>".to_vec(),
            ..Default::default()
        },
        FetchResponse {
            truncated: true,
            ..ok(&testkit::keys().jwks())
        },
        ok(&json!({"keys": [{"kty": "RSA", "n": "!!", "e": "AQAB"}]})),
    ];
    for answer in answers {
        one_order(&mut vm, &store, now);
        let report = vm.keyring.on_response(0, &store, now, &answer);
        let Some(FetchReport::Failure { retry_in, reason }) = report else {
            panic!("{report:?}")
        };
        assert!(!reason.is_empty());
        now += retry_in;
    }
}

#[test]
fn a_removed_key_is_trusted_for_max_cache_duration_plus_max_staleness_at_most() {
    // The defaults (1 h and 1 h), an IdP that asks for a day of caching, removes the
    // key right after the fetch, and then fails every fetch (an attacker may be able
    // to make it fail): the key is trusted for two hours, not a moment more, by the
    // token cache neither.
    let keys = testkit::keys();
    let store = MemoryStore::new();
    let mut vm = Vm::new(
        json!({
            "providers": {"idp": {"issuer": ISS, "audiences": ["orders"],
                                  "jwks": {"remote": {"cluster": "idp", "path": "/jwks.json"}}}},
            "default": {"providers": ["idp"]}
        }),
        1,
    );
    vm.keyring.create_shared_keys(&store);
    one_order(&mut vm, &store, NOW);
    let mut answer = ok(&keys.jwks());
    answer.cache_control = Some("max-age=86400".into());
    assert!(matches!(
        vm.keyring.on_response(0, &store, NOW, &answer),
        Some(FetchReport::Success {
            time_to_live: 3_600_000,
            ..
        })
    ));
    let token = sign(Alg::ES256, &with("exp", json!(NOW_SECS + 24 * 3600)));
    allow(vm.start(&store, &bearer("/x", &token), NOW));
    let refresh = NOW + 3_600_000;
    one_order(&mut vm, &store, refresh);
    vm.keyring.on_response(0, &store, refresh, &down());
    let bound = refresh + 3_600_000;
    assert_eq!(
        allow(vm.start(&store, &bearer("/x", &token), bound - 600_000)).cache,
        CacheUse::Miss
    );
    assert_eq!(
        allow(vm.start(&store, &bearer("/x", &token), bound - 1)).cache,
        CacheUse::Hit
    );
    wait(vm.start(&store, &bearer("/x", &token), bound));
}

#[test]
fn cached_tokens_are_dropped_when_their_key_leaves_the_jwks() {
    let keys = testkit::keys();
    let store = MemoryStore::new();
    let mut vm = Vm::new(remote_config(), 1);
    first_load(&store, &mut [&mut vm], &keys.jwks());
    let token = sign(Alg::EdDSA, &claims());
    assert_eq!(
        allow(vm.start(&store, &bearer("/x", &token), NOW)).cache,
        CacheUse::Miss
    );
    assert_eq!(
        allow(vm.start(&store, &bearer("/x", &token), NOW + 1)).cache,
        CacheUse::Hit
    );
    // The refresh publishes a JWKS without the Ed25519 key.
    one_order(&mut vm, &store, NOW + 600_000);
    vm.keyring.on_response(
        0,
        &store,
        NOW + 600_000,
        &ok(&json!({"keys": [keys.rsa_jwk("rsa")]})),
    );
    // Not answered from the cache: the kid is unknown now, so the request waits for
    // a refetch (the first one is allowed).
    wait(vm.start(&store, &bearer("/x", &token), NOW + 600_001));
}

#[test]
fn garbage_and_mutated_tokens_are_refused_without_panicking() {
    // A fixed xorshift sequence: reproducible, no extra crate.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let store = MemoryStore::new();
    let mut vm = inline_vm();
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ";
    let valid = sign(Alg::ES256, &claims());
    for round in 0..3000 {
        let token: String = if round % 2 == 0 {
            let len = (next() % 400) as usize + 1;
            (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize] as char)
                .collect()
        } else {
            let mut bytes = valid.clone().into_bytes();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() % bytes.len() as u64) as usize;
                bytes[at] = alphabet[(next() % alphabet.len() as u64) as usize];
            }
            String::from_utf8(bytes).unwrap()
        };
        if token == valid {
            continue;
        }
        match vm.start(&store, &bearer("/orders", &token), NOW) {
            Outcome::Deny(_) => {}
            // Nothing but the exact signed text may pass, and nothing may wait
            // (inline keys) or panic.
            other => panic!("{token:?} gave {other:?}"),
        }
    }
}
