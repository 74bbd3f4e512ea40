//! Test keys and token minting for the unit tests: keys are generated once per test
//! run (none is stored in the repository), tokens are signed with `ring` so tests can
//! build any header, including malicious ones.

use crate::authenticator::{Attempt, Authenticator, Context, Outcome, RequestInfo};
use crate::extract::RequestHeaders;
use crate::host_verifier::NoHostVerifier;
use crate::jwks::{Jwk, KeySet};
use crate::token::Alg;
use crate::{JwtConfig, Keyring, TokenCache};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::OnceLock;
use wasmgate_shared_store::MemoryStore;

pub struct Keys {
    rsa: RsaKeyPair,
    rsa_simple: jwt_simple::prelude::RS256KeyPair,
    p256: EcdsaKeyPair,
    p384: EcdsaKeyPair,
    ed25519: Ed25519KeyPair,
    pub hmac_secret: Vec<u8>,
}

pub fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(Keys::generate)
}

/// `jwk` as parsed from a JWKS holding only it (HMAC secrets allowed).
pub fn parse_jwk(jwk: Value) -> Jwk {
    let set = KeySet::parse(json!({"keys": [jwk]}).to_string().as_bytes(), true).unwrap();
    set.keys()[0].clone()
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl Keys {
    fn generate() -> Keys {
        let rng = SystemRandom::new();
        // ring cannot generate RSA keys; jwt-simple can, and its key doubles as the
        // independent signer for cross-checks.
        let rsa_simple = jwt_simple::prelude::RS256KeyPair::generate(2048).unwrap();
        let der = rsa_simple.to_der().unwrap();
        let rsa = RsaKeyPair::from_der(&der)
            .or_else(|_| RsaKeyPair::from_pkcs8(&der))
            .unwrap();
        let p256 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .unwrap();
        let p256 = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            p256.as_ref(),
            &rng,
        )
        .unwrap();
        let p384 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, &rng)
            .unwrap();
        let p384 = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            p384.as_ref(),
            &rng,
        )
        .unwrap();
        let ed = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let ed25519 = Ed25519KeyPair::from_pkcs8(ed.as_ref()).unwrap();
        Keys {
            rsa,
            rsa_simple,
            p256,
            p384,
            ed25519,
            // Long enough for HS512 (RFC 7518 §3.2), so for every HMAC algorithm.
            hmac_secret: (0..64u8).map(|i| i.wrapping_mul(37)).collect(),
        }
    }

    pub fn jwt_simple_rsa(&self) -> &jwt_simple::prelude::RS256KeyPair {
        &self.rsa_simple
    }

    pub fn rsa_jwk(&self, kid: &str) -> Value {
        let components: signature::RsaPublicKeyComponents<Vec<u8>> = self.rsa.public().into();
        json!({"kty": "RSA", "kid": kid, "n": b64(&components.n), "e": b64(&components.e)})
    }

    pub fn p256_jwk(&self, kid: &str) -> Value {
        let point = self.p256.public_key().as_ref();
        json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64(&point[1..33]), "y": b64(&point[33..])})
    }

    pub fn p384_jwk(&self, kid: &str) -> Value {
        let point = self.p384.public_key().as_ref();
        json!({"kty": "EC", "crv": "P-384", "kid": kid, "x": b64(&point[1..49]), "y": b64(&point[49..])})
    }

    pub fn ed25519_jwk(&self, kid: &str) -> Value {
        json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(self.ed25519.public_key().as_ref())})
    }

    pub fn hmac_jwk(&self, kid: &str) -> Value {
        json!({"kty": "oct", "kid": kid, "k": b64(&self.hmac_secret)})
    }

    /// The public JWK that verifies `alg`.
    pub fn jwk_for(&self, alg: Alg, kid: &str) -> Value {
        match alg {
            Alg::HS256 | Alg::HS384 | Alg::HS512 => self.hmac_jwk(kid),
            Alg::ES256 => self.p256_jwk(kid),
            Alg::ES384 => self.p384_jwk(kid),
            Alg::EdDSA => self.ed25519_jwk(kid),
            _ => self.rsa_jwk(kid),
        }
    }

    /// A JWKS with every asymmetric key, kids `rsa`, `p256`, `p384`, `ed25519`.
    pub fn jwks(&self) -> Value {
        json!({"keys": [self.rsa_jwk("rsa"), self.p256_jwk("p256"), self.p384_jwk("p384"), self.ed25519_jwk("ed25519")]})
    }

    /// The kid under which [`Keys::jwks`] publishes the key for `alg`.
    pub fn kid_for(alg: Alg) -> &'static str {
        match alg {
            Alg::HS256 | Alg::HS384 | Alg::HS512 => "hmac",
            Alg::ES256 => "p256",
            Alg::ES384 => "p384",
            Alg::EdDSA => "ed25519",
            _ => "rsa",
        }
    }

    /// A token with header `{"alg", "kid"}` and `claims`, signed for `alg`.
    pub fn sign(&self, alg: Alg, kid: Option<&str>, claims: &Value) -> String {
        let mut header = json!({"alg": alg.name(), "typ": "JWT"});
        if let Some(kid) = kid {
            header["kid"] = json!(kid);
        }
        self.sign_raw(alg, &header, claims)
    }

    /// A token with exactly this header, signed for `alg`.
    pub fn sign_raw(&self, alg: Alg, header: &Value, claims: &Value) -> String {
        self.sign_text(alg, &header.to_string(), &claims.to_string())
    }

    /// A token whose header and claims are exactly these texts (which need not be
    /// JSON a `Value` can hold: duplicate members, say), signed for `alg`.
    pub fn sign_text(&self, alg: Alg, header: &str, claims: &str) -> String {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
        let sig = self.signature(alg, input.as_bytes());
        format!("{input}.{}", b64(&sig))
    }

    pub fn signature(&self, alg: Alg, input: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        let rsa = |encoding: &'static dyn signature::RsaEncoding| {
            let mut sig = vec![0; self.rsa.public().modulus_len()];
            self.rsa.sign(encoding, &rng, input, &mut sig).unwrap();
            sig
        };
        let hmac = |algorithm| {
            ring::hmac::sign(&ring::hmac::Key::new(algorithm, &self.hmac_secret), input)
                .as_ref()
                .to_vec()
        };
        match alg {
            Alg::RS256 => rsa(&signature::RSA_PKCS1_SHA256),
            Alg::RS384 => rsa(&signature::RSA_PKCS1_SHA384),
            Alg::RS512 => rsa(&signature::RSA_PKCS1_SHA512),
            Alg::PS256 => rsa(&signature::RSA_PSS_SHA256),
            Alg::PS384 => rsa(&signature::RSA_PSS_SHA384),
            Alg::PS512 => rsa(&signature::RSA_PSS_SHA512),
            Alg::ES256 => self.p256.sign(&rng, input).unwrap().as_ref().to_vec(),
            Alg::ES384 => self.p384.sign(&rng, input).unwrap().as_ref().to_vec(),
            Alg::EdDSA => self.ed25519.sign(input).as_ref().to_vec(),
            Alg::HS256 => hmac(ring::hmac::HMAC_SHA256),
            Alg::HS384 => hmac(ring::hmac::HMAC_SHA384),
            Alg::HS512 => hmac(ring::hmac::HMAC_SHA512),
        }
    }
}

/// A request as the authenticator reads it.
pub struct Request {
    pub method: &'static str,
    pub path: String,
    pub headers: HashMap<String, String>,
}

impl RequestHeaders for Request {
    fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).cloned()
    }
}

pub fn get(path: &str) -> Request {
    Request {
        method: "GET",
        path: path.to_owned(),
        headers: HashMap::new(),
    }
}

pub fn bearer(path: &str, token: &str) -> Request {
    let mut request = get(path);
    request
        .headers
        .insert("authorization".into(), format!("Bearer {token}"));
    request
}

/// One VM: an authenticator, its keyring and token cache, over a shared store.
pub struct Vm {
    pub auth: Authenticator,
    pub keyring: Keyring,
    pub cache: TokenCache,
}

impl Vm {
    pub fn new(config: Value, holder: u64) -> Vm {
        let config = JwtConfig::from_json(config.to_string().as_bytes()).unwrap();
        let keyring = Keyring::new(&config, holder);
        let cache = TokenCache::new(config.token_cache_entries);
        Vm {
            auth: Authenticator::new(config),
            keyring,
            cache,
        }
    }

    pub fn start(&mut self, store: &MemoryStore, request: &Request, now: u64) -> Outcome {
        let info = RequestInfo {
            method: request.method,
            path: &request.path,
            headers: request,
        };
        let mut cx = Context {
            keyring: &mut self.keyring,
            store,
            cache: &mut self.cache,
            host: &NoHostVerifier,
            now,
        };
        self.auth.start(&info, &mut cx)
    }

    pub fn check(&mut self, store: &MemoryStore, attempt: Attempt, now: u64) -> Outcome {
        let mut cx = Context {
            keyring: &mut self.keyring,
            store,
            cache: &mut self.cache,
            host: &NoHostVerifier,
            now,
        };
        self.auth.check(attempt, &mut cx)
    }
}
