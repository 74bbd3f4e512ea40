//! JWT: tokens (parsed, verified and checked against a fixed JWKS), claims (tokens the
//! target signs itself, so mutated claims still verify), token extraction, JWKS
//! documents, and the host's signature check.
//!
//! The fixed JWKS (`fixtures/jwks.json`) holds the public halves of keys `seeds.py`
//! generated to mint the `jwt_token` seeds, and an HMAC secret (public by nature in a
//! fixture). Nothing private is stored: regenerating the seeds makes new keys.

use crate::Input;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use std::sync::OnceLock;
use wasmgate_config::check_header_value;
use wasmgate_jwt_auth::authenticator::{Context, RequestInfo};
use wasmgate_jwt_auth::extract::{RequestHeaders, TokenLocation};
use wasmgate_jwt_auth::host_verifier::{self, HostKey, HostVerifier, NoHostVerifier};
use wasmgate_jwt_auth::jwks::PublicKey;
use wasmgate_jwt_auth::token::{self, Alg};
use wasmgate_jwt_auth::{verifier, Authenticator, JwtConfig, KeySet, Keyring, Outcome, TokenCache};
use wasmgate_shared_store::MemoryStore;

pub const FIXTURE_JWKS: &str = include_str!("../fixtures/jwks.json");
pub const ISSUER: &str = "https://issuer.fuzz.wasmgate.test";
pub const AUDIENCE: &str = "orders";
/// 2026-01-01T00:00:00Z: tokens are checked at this instant; the seeds are minted
/// around it.
pub const NOW_MS: u64 = 1_767_225_600_000;

/// The configuration every JWT target checks tokens with: every algorithm, every kind
/// of token location, claims forwarded as headers, scopes, two providers that share
/// `Authorization: Bearer` (told apart by `iss`), and the token cache on.
pub fn config_json() -> Value {
    let jwks: Value = serde_json::from_str(FIXTURE_JWKS).expect("fixtures/jwks.json");
    let every_alg: Vec<&str> = Alg::ALL.iter().map(|alg| alg.name()).collect();
    json!({
        "providers": {
            "idp": {
                "issuer": ISSUER,
                "audiences": [AUDIENCE],
                "algorithms": every_alg,
                "jwks": {"inline": jwks},
                "max_lifetime": "1d",
                "from_headers": [{"name": "authorization", "prefix": "Bearer "}, {"name": "x-jwt"}],
                "from_params": ["access_token"],
                "from_cookies": ["session"],
                "claim_to_headers": {
                    "x-user-id": "sub",
                    "x-tenant-id": ["tenant_id", "org.id"],
                    "x-scopes": ["scope", "scp"]
                }
            },
            "other": {
                "issuer": "https://other.fuzz.wasmgate.test",
                "audiences": [AUDIENCE],
                "jwks": {"inline": jwks}
            }
        },
        "rules": [
            {"match": {"prefix": "/public"}, "public": true},
            {"match": {"prefix": "/write"}, "providers": ["idp", "other"], "required_scopes": ["orders:write"]},
            {"match": {"prefix": "/optional"}, "providers": ["idp"], "allow_missing": true}
        ],
        "default": {"providers": ["idp", "other"]},
        "token_cache_entries": 64
    })
}

fn config() -> &'static JwtConfig {
    static CONFIG: OnceLock<JwtConfig> = OnceLock::new();
    CONFIG.get_or_init(|| {
        JwtConfig::from_json(config_json().to_string().as_bytes())
            .unwrap_or_else(|err| panic!("the fuzz JWT configuration: {err}"))
    })
}

fn fixture_keys() -> &'static KeySet {
    static KEYS: OnceLock<KeySet> = OnceLock::new();
    KEYS.get_or_init(|| {
        KeySet::parse(FIXTURE_JWKS.as_bytes(), true)
            .unwrap_or_else(|err| panic!("fixtures/jwks.json: {err}"))
    })
}

/// The fixture's HMAC secret.
fn hmac_secret() -> &'static [u8] {
    fixture_keys()
        .keys()
        .iter()
        .find_map(|jwk| match &jwk.key {
            PublicKey::Hmac(secret) => Some(secret.as_slice()),
            _ => None,
        })
        .expect("fixtures/jwks.json has an oct key")
}

/// A request: method, `:path`, headers.
struct Request {
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
}

impl RequestHeaders for Request {
    fn header(&self, name: &str) -> Option<String> {
        crate::first_value(&self.headers, name)
    }
}

/// A request carrying `token` in one of the places the configuration looks, on one
/// of its routes; `shape` picks which.
fn request(shape: u8, token: &str) -> Request {
    let (method, path, header): (_, String, Option<(&'static str, String)>) = match shape % 6 {
        0 => (
            "GET",
            "/orders".into(),
            Some(("authorization", format!("Bearer {token}"))),
        ),
        1 => (
            "POST",
            "/write/1".into(),
            Some(("authorization", format!("Bearer {token}"))),
        ),
        2 => ("GET", "/orders".into(), Some(("x-jwt", token.to_owned()))),
        3 => ("GET", format!("/orders?a=1&access_token={token}"), None),
        4 => (
            "GET",
            "/orders".into(),
            Some(("cookie", format!("a=b; session={token}"))),
        ),
        _ => (
            "GET",
            "/optional/x".into(),
            Some(("authorization", format!("Bearer {token}"))),
        ),
    };
    Request {
        method,
        path,
        headers: header.into_iter().collect(),
    }
}

/// A decision without the cache's part in it, to compare a cached one with a fresh one.
fn summary(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Allow(grant) => format!("allow {:?} {:?}", grant.remove_headers, grant.identity),
        Outcome::Deny(err) => format!("deny {err:?}"),
        Outcome::Wait(_) => "wait".to_owned(),
    }
}

/// Decides `request` twice in one VM (the second time from the token cache, when the
/// first verified it) and checks what a user relies on.
fn decide(request: &Request) {
    let config = config();
    let auth = Authenticator::new(config.clone());
    let mut keyring = Keyring::new(config, 1);
    let mut cache = TokenCache::new(config.token_cache_entries);
    let store = MemoryStore::new();
    let info = RequestInfo {
        method: request.method,
        path: &request.path,
        headers: request,
    };
    let mut decide_once = || {
        let mut cx = Context {
            keyring: &mut keyring,
            store: &store,
            cache: &mut cache,
            host: &NoHostVerifier,
            now: NOW_MS,
        };
        auth.start(&info, &mut cx)
    };
    let first = decide_once();
    let second = decide_once();
    assert_eq!(
        summary(&first),
        summary(&second),
        "the token cache changed the decision"
    );
    match first {
        Outcome::Allow(grant) => {
            for (name, value) in grant.headers() {
                assert_eq!(*name, name.to_ascii_lowercase());
                assert!(
                    check_header_value(value).is_ok(),
                    "{name}: {value:?} forwarded"
                );
            }
        }
        Outcome::Deny(err) => {
            let answer = err.answer(&config.realm);
            assert!((400..600).contains(&answer.status));
            for (_, value) in &answer.headers {
                assert!(check_header_value(value).is_ok(), "{value:?} in a refusal");
            }
        }
        // Inline keys are always there: nothing waits.
        Outcome::Wait(_) => panic!("waited for inline keys"),
    }
}

/// `jwt_token`: a request shape (1 byte), then the token text.
pub fn token(data: &[u8]) {
    let mut input = Input::new(data);
    let shape = input.byte();
    let text = String::from_utf8_lossy(input.rest()).into_owned();
    if let Ok(parsed) = token::parse(&text) {
        let dot = text.rfind('.').expect("a parsed token has dots");
        assert_eq!(parsed.signing_input, &text.as_bytes()[..dot]);
    }
    let _ = token::unverified_issuer(&text);
    decide(&request(shape, &text));
}

/// `jwt_claims`: a request shape (1 byte), an HMAC algorithm (1 byte), the JOSE header
/// JSON, a NUL, the claims JSON. The target signs the token with the fixture's secret,
/// so the claims checks run whatever the claims are.
pub fn claims(data: &[u8]) {
    let mut input = Input::new(data);
    let shape = input.byte();
    let alg = input.pick(&[Alg::HS256, Alg::HS384, Alg::HS512]);
    let rest = input.rest();
    let (header, claims) = match rest.iter().position(|&b| b == 0) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &b"{}"[..]),
    };
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let algorithm = match alg {
        Alg::HS256 => ring::hmac::HMAC_SHA256,
        Alg::HS384 => ring::hmac::HMAC_SHA384,
        _ => ring::hmac::HMAC_SHA512,
    };
    let key = ring::hmac::Key::new(algorithm, hmac_secret());
    let signature = ring::hmac::sign(&key, signing_input.as_bytes());
    let text = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature));
    decide(&request(shape, &text));
}

/// `jwt_extract`: where to look (1 byte), the location's name or prefix, a header
/// value, the `:path`.
pub fn extract(data: &[u8]) {
    let mut input = Input::new(data);
    let kind = input.byte();
    let name = input.text();
    let value = input.text();
    let path = input.text();
    let location = match kind % 4 {
        0 => TokenLocation::bearer(),
        1 => TokenLocation::Header {
            name: "x-jwt".into(),
            prefix: name,
        },
        2 => TokenLocation::Param(name),
        _ => TokenLocation::Cookie(name),
    };
    let header = match &location {
        TokenLocation::Header { name, .. } if name == "authorization" => "authorization",
        TokenLocation::Header { .. } => "x-jwt",
        TokenLocation::Param(_) => "x-other",
        TokenLocation::Cookie(_) => "cookie",
    };
    let request = Request {
        method: "GET",
        path: path.clone(),
        headers: vec![(header, value.clone())],
    };
    let Some(found) = location.find(&request, &path) else {
        return;
    };
    assert!(!found.is_empty());
    match &location {
        TokenLocation::Header { prefix, .. } => {
            assert_eq!(found, value[prefix.len()..].trim());
        }
        TokenLocation::Cookie(_) => assert!(!found.contains(';')),
        TokenLocation::Param(_) => {}
    }
}

/// `jwks`: flags (1 byte: bit 0 admits HMAC secrets), then the document.
pub fn jwks(data: &[u8]) {
    let mut input = Input::new(data);
    let allow_hmac = input.byte() & 1 == 1;
    let document = input.rest();
    let Ok(set) = KeySet::parse(document, allow_hmac) else {
        return;
    };
    assert!(!set.is_empty());
    for jwk in set.keys() {
        match &jwk.key {
            PublicKey::Rsa { n, e } => {
                assert!(n.len() >= 256 && n.len() <= 1024 && n[0] != 0);
                assert!(!e.is_empty() && e.len() <= 4 && e[0] != 0);
            }
            PublicKey::P256(point) => assert_eq!(point.len(), 65),
            PublicKey::P384(point) => assert_eq!(point.len(), 97),
            PublicKey::Ed25519(raw) => assert_eq!(raw.len(), 32),
            PublicKey::Hmac(secret) => assert!(allow_hmac && secret.len() >= 32),
        }
        let host_form = matches!(
            jwk.key,
            PublicKey::Rsa { .. } | PublicKey::P256(_) | PublicKey::P384(_)
        );
        assert_eq!(jwk.host_key.is_some(), host_form);
        if let Some(alg) = jwk.alg {
            assert!(verifier::key_fits(alg, &jwk.key));
        }
    }
    // The document written out again (as a configuration would hold it) gives the
    // same keys.
    let value: Value = serde_json::from_slice(document).expect("a parsed JWKS is JSON");
    let again = value.to_string();
    if again.len() <= wasmgate_jwt_auth::jwks::MAX_JWKS_BYTES {
        assert_eq!(
            KeySet::parse(again.as_bytes(), allow_hmac).as_ref(),
            Ok(&set)
        );
    }
    let Value::Object(doc) = value else {
        panic!("a parsed JWKS is an object")
    };
    assert_eq!(KeySet::from_json(&doc, allow_hmac).as_ref(), Ok(&set));
}

/// A host that answers with fixed bytes.
struct FixedAnswer<'a>(&'a [u8]);

impl HostVerifier for FixedAnswer<'_> {
    fn verify_signature(&self, _arguments: &[u8]) -> Option<Vec<u8>> {
        Some(self.0.to_vec())
    }
}

/// A host that checks what it is sent with `ring`, as Envoy does with BoringSSL: the
/// signature in the form the host takes (ASN.1 DER for ECDSA) against `key`.
struct RingHost<'a> {
    alg: Alg,
    key: &'a PublicKey,
}

impl HostVerifier for RingHost<'_> {
    fn verify_signature(&self, arguments: &[u8]) -> Option<Vec<u8>> {
        use ring::signature as sig;
        let fields = protobuf_fields(arguments).expect("the arguments are a protobuf message");
        let [hash, _key, signature, message] = fields.as_slice() else {
            panic!(
                "VerifySignatureArguments has four fields, got {}",
                fields.len()
            )
        };
        assert_eq!(
            Some(*hash),
            host_verifier::hash_name(self.alg).map(str::as_bytes)
        );
        let valid = match (self.alg, self.key) {
            (Alg::ES256, PublicKey::P256(point)) => {
                sig::UnparsedPublicKey::new(&sig::ECDSA_P256_SHA256_ASN1, point)
                    .verify(message, signature)
                    .is_ok()
            }
            (Alg::ES384, PublicKey::P384(point)) => {
                sig::UnparsedPublicKey::new(&sig::ECDSA_P384_SHA384_ASN1, point)
                    .verify(message, signature)
                    .is_ok()
            }
            (alg, PublicKey::Rsa { .. }) => verifier::verify(alg, self.key, message, signature),
            _ => return None,
        };
        Some(if valid { vec![0x08, 0x01] } else { Vec::new() })
    }
}

/// The length-delimited fields of a protobuf message, in order.
fn protobuf_fields(mut bytes: &[u8]) -> Option<Vec<&[u8]>> {
    let mut fields = Vec::new();
    while let Some((&tag, rest)) = bytes.split_first() {
        if tag & 7 != 2 {
            return None;
        }
        let mut len = 0usize;
        let mut at = 0;
        loop {
            let byte = *rest.get(at)?;
            len |= usize::from(byte & 0x7f) << (7 * at);
            at += 1;
            if byte & 0x80 == 0 {
                break;
            }
        }
        fields.push(rest.get(at..at + len)?);
        bytes = &rest[at + len..];
    }
    Some(fields)
}

/// `jwt_host_verifier`: an algorithm (1 byte), a fixture key (1 byte), a mode
/// (1 byte), the message (chunk), the signature (chunk), then the host's answer.
/// Even modes: the host answers those bytes (a `VerifySignatureResult`, or garbage).
/// Odd modes: the host checks the signature itself, and its verdict must be the one
/// the VM reaches on its own.
pub fn host_verifier(data: &[u8]) {
    let mut input = Input::new(data);
    let alg = input.pick(&[
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::ES256,
        Alg::ES384,
        Alg::PS256,
        Alg::EdDSA,
        Alg::HS256,
    ]);
    let keys = fixture_keys().keys();
    let jwk = &keys[usize::from(input.byte()) % keys.len()];
    let mode = input.byte();
    let message = input.chunk();
    let signature = input.chunk();
    let answer = input.rest();
    let Some(key) = HostKey::of(&jwk.key) else {
        return;
    };
    let by_host = host_verifier::hash_name(alg).is_some();
    let wrong_ecdsa_length = match alg {
        Alg::ES256 => signature.len() != 64,
        Alg::ES384 => signature.len() != 96,
        _ => false,
    };
    if mode.is_multiple_of(2) {
        let result = host_verifier::check(&FixedAnswer(answer), alg, &key, message, signature);
        if !by_host {
            assert_eq!(result, None);
        } else if wrong_ecdsa_length {
            assert_eq!(result, Some(false));
        }
        return;
    }
    if !verifier::key_fits(alg, &jwk.key) {
        return;
    }
    let host = RingHost { alg, key: &jwk.key };
    let result = host_verifier::check(&host, alg, &key, message, signature);
    if by_host {
        let in_vm = verifier::verify(alg, &jwk.key, message, signature);
        assert_eq!(
            result,
            Some(in_vm),
            "{alg}: the host's check and the VM's differ"
        );
    } else {
        assert_eq!(result, None);
    }
}
