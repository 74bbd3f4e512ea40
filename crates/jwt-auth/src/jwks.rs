//! Strict JWKS parsing (RFC 7517, key types of RFC 7518 §6 and RFC 8037).
//!
//! A document is refused as a whole when it is too large, is not a JSON object with
//! a `keys` array, or holds a key of a supported type whose material is malformed
//! (bad base64url, wrong coordinate length, an RSA modulus under 2048 bits): a broken
//! document means something upstream is wrong, and the cache keeps serving the last
//! good one. Keys that are merely not for us are skipped: unknown `kty`, `use` other
//! than `sig`, `key_ops` without `verify`, curves we do not implement, algorithms
//! that are not JWS signature algorithms. Symmetric (`oct`) keys are accepted only
//! where the caller allows them (an inline JWKS with HMAC opted in).

use crate::host_verifier::HostKey;
use crate::token::Alg;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};
use std::fmt;

/// The largest JWKS document accepted, in bytes.
pub const MAX_JWKS_BYTES: usize = 64 * 1024;

/// The smallest RSA modulus accepted, in bits (RFC 7518 §3.3).
const MIN_RSA_BITS: usize = 2048;
/// The largest RSA modulus `ring` verifies with, in bits.
const MAX_RSA_BITS: usize = 8192;

/// Public key material, ready for [`verifier`](crate::verifier).
#[derive(Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// Big-endian modulus and exponent, leading zeros removed.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// Uncompressed point `0x04 || x || y` (65 bytes).
    P256(Vec<u8>),
    /// Uncompressed point `0x04 || x || y` (97 bytes).
    P384(Vec<u8>),
    /// 32 bytes.
    Ed25519(Vec<u8>),
    /// An HMAC secret (never from a fetched JWKS).
    Hmac(Vec<u8>),
}

impl fmt::Debug for PublicKey {
    /// Never prints key material (an HMAC secret must not reach a log).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PublicKey::Rsa { .. } => "Rsa",
            PublicKey::P256(_) => "P256",
            PublicKey::P384(_) => "P384",
            PublicKey::Ed25519(_) => "Ed25519",
            PublicKey::Hmac(_) => "Hmac",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jwk {
    pub kid: Option<String>,
    /// The key's own `alg`, when it names one: the key may then be used with that
    /// algorithm only.
    pub alg: Option<Alg>,
    pub key: PublicKey,
    /// The key as the host's signature check takes it (RSA and EC keys), built once
    /// here rather than on every token.
    pub host_key: Option<HostKey>,
}

/// The usable keys of one JWKS document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySet {
    keys: Vec<Jwk>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksError {
    TooLarge(usize),
    NotJson,
    NoKeysArray,
    /// `keys[index]`: problem.
    BadKey(usize, String),
    NoUsableKeys,
}

impl fmt::Display for JwksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwksError::TooLarge(size) => {
                write!(
                    f,
                    "JWKS is {size} bytes, more than the {MAX_JWKS_BYTES} allowed"
                )
            }
            JwksError::NotJson => f.write_str("JWKS is not a JSON object"),
            JwksError::NoKeysArray => f.write_str("JWKS has no \"keys\" array"),
            JwksError::BadKey(index, problem) => write!(f, "JWKS keys[{index}]: {problem}"),
            JwksError::NoUsableKeys => f.write_str("JWKS has no usable signing key"),
        }
    }
}

impl KeySet {
    /// Parses a JWKS document. `allow_hmac` admits `oct` keys (inline JWKS only).
    pub fn parse(bytes: &[u8], allow_hmac: bool) -> Result<KeySet, JwksError> {
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(JwksError::TooLarge(bytes.len()));
        }
        let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(bytes) else {
            return Err(JwksError::NotJson);
        };
        KeySet::from_json(&doc, allow_hmac)
    }

    /// Parses a JWKS already read as JSON (an inline JWKS in the plugin config).
    pub fn from_json(doc: &Map<String, Value>, allow_hmac: bool) -> Result<KeySet, JwksError> {
        let Some(Value::Array(entries)) = doc.get("keys") else {
            return Err(JwksError::NoKeysArray);
        };
        let mut keys = Vec::new();
        for (index, entry) in entries.iter().enumerate() {
            let Value::Object(entry) = entry else {
                return Err(JwksError::BadKey(index, "not a JSON object".into()));
            };
            if let Some(jwk) =
                parse_key(entry, allow_hmac).map_err(|problem| JwksError::BadKey(index, problem))?
            {
                keys.push(jwk);
            }
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKeys);
        }
        Ok(KeySet { keys })
    }

    pub fn keys(&self) -> &[Jwk] {
        &self.keys
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Keys with this `kid`.
    pub fn with_kid<'a>(&'a self, kid: &'a str) -> impl Iterator<Item = &'a Jwk> + 'a {
        self.keys
            .iter()
            .filter(move |jwk| jwk.kid.as_deref() == Some(kid))
    }

    pub fn has_kid(&self, kid: &str) -> bool {
        self.with_kid(kid).next().is_some()
    }
}

/// `Ok(None)` for a key that is not for us; `Err` for a malformed one.
fn parse_key(entry: &Map<String, Value>, allow_hmac: bool) -> Result<Option<Jwk>, String> {
    let kty = text_member(entry, "kty")?.ok_or("no \"kty\"")?;
    if let Some(usage) = text_member(entry, "use")? {
        if usage != "sig" {
            return Ok(None);
        }
    }
    if let Some(ops) = entry.get("key_ops") {
        let Value::Array(ops) = ops else {
            return Err("\"key_ops\" is not an array".into());
        };
        if !ops.iter().any(|op| op == "verify") {
            return Ok(None);
        }
    }
    let kid = text_member(entry, "kid")?.map(str::to_owned);
    let alg = match text_member(entry, "alg")? {
        None => None,
        Some(name) => match Alg::from_name(name) {
            Some(alg) => Some(alg),
            // An encryption key (RSA-OAEP, ECDH-ES...) or an algorithm we do not
            // implement (ES512, ES256K): not for us.
            None => return Ok(None),
        },
    };
    let key = match kty {
        "RSA" => {
            let n = strip_leading_zeros(binary_member(entry, "n")?);
            let e = strip_leading_zeros(binary_member(entry, "e")?);
            // `n` may be all zeros, hence empty once stripped: 0 bits, refused below.
            let bits = n
                .first()
                .map_or(0, |top| n.len() * 8 - top.leading_zeros() as usize);
            if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
                return Err(format!(
                    "RSA modulus of {bits} bits (between {MIN_RSA_BITS} and {MAX_RSA_BITS} required)"
                ));
            }
            if e.is_empty() || e.len() > 4 {
                return Err("RSA exponent out of range".into());
            }
            PublicKey::Rsa { n, e }
        }
        "EC" => {
            let crv = text_member(entry, "crv")?.ok_or("EC key without \"crv\"")?;
            let size = match crv {
                "P-256" => 32,
                "P-384" => 48,
                _ => return Ok(None),
            };
            let x = binary_member(entry, "x")?;
            let y = binary_member(entry, "y")?;
            if x.len() != size || y.len() != size {
                return Err(format!("{crv} coordinates must be {size} bytes"));
            }
            let mut point = Vec::with_capacity(1 + 2 * size);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            if size == 32 {
                PublicKey::P256(point)
            } else {
                PublicKey::P384(point)
            }
        }
        "OKP" => {
            let crv = text_member(entry, "crv")?.ok_or("OKP key without \"crv\"")?;
            if crv != "Ed25519" {
                return Ok(None);
            }
            let x = binary_member(entry, "x")?;
            if x.len() != 32 {
                return Err("Ed25519 key must be 32 bytes".into());
            }
            PublicKey::Ed25519(x)
        }
        "oct" => {
            if !allow_hmac {
                return Ok(None);
            }
            let secret = binary_member(entry, "k")?;
            // RFC 7518 §3.2: at least the hash's size; the key's own `alg` may ask more.
            let least = alg.and_then(Alg::min_secret_bytes).unwrap_or(32);
            if secret.len() < least {
                return Err(format!(
                    "HMAC secret of {} bytes, shorter than the {least} {} needs (RFC 7518 §3.2)",
                    secret.len(),
                    alg.map_or("HS256", Alg::name),
                ));
            }
            PublicKey::Hmac(secret)
        }
        _ => return Ok(None),
    };
    if let Some(alg) = alg {
        if !crate::verifier::key_fits(alg, &key) {
            return Err(format!("\"alg\" {alg} does not fit a {kty} key"));
        }
    }
    let host_key = HostKey::of(&key);
    Ok(Some(Jwk {
        kid,
        alg,
        key,
        host_key,
    }))
}

fn text_member<'a>(entry: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, String> {
    match entry.get(name) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(format!("\"{name}\" is not a string")),
    }
}

fn binary_member(entry: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    let text = text_member(entry, name)?.ok_or_else(|| format!("no \"{name}\""))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| format!("\"{name}\" is not base64url"))?;
    if bytes.is_empty() {
        return Err(format!("\"{name}\" is empty"));
    }
    Ok(bytes)
}

fn strip_leading_zeros(mut bytes: Vec<u8>) -> Vec<u8> {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    bytes.drain(..zeros);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit;
    use serde_json::json;

    fn parse(doc: Value) -> Result<KeySet, JwksError> {
        KeySet::parse(doc.to_string().as_bytes(), false)
    }

    #[test]
    fn parses_every_supported_key_type() {
        let keys = testkit::keys();
        let set = parse(json!({"keys": [
            keys.rsa_jwk("r1"), keys.p256_jwk("e1"), keys.p384_jwk("e2"), keys.ed25519_jwk("o1")
        ]}))
        .unwrap();
        assert_eq!(set.len(), 4);
        assert!(matches!(
            set.with_kid("r1").next().unwrap().key,
            PublicKey::Rsa { .. }
        ));
        assert!(
            matches!(set.with_kid("e1").next().unwrap().key, PublicKey::P256(ref p) if p.len() == 65)
        );
        assert!(
            matches!(set.with_kid("e2").next().unwrap().key, PublicKey::P384(ref p) if p.len() == 97)
        );
        assert!(matches!(
            set.with_kid("o1").next().unwrap().key,
            PublicKey::Ed25519(_)
        ));
    }

    #[test]
    fn keys_not_for_signatures_are_skipped() {
        let keys = testkit::keys();
        let mut enc = keys.rsa_jwk("enc");
        enc["use"] = json!("enc");
        let mut oaep = keys.rsa_jwk("oaep");
        oaep["alg"] = json!("RSA-OAEP");
        let mut ops = keys.rsa_jwk("ops");
        ops["key_ops"] = json!(["encrypt"]);
        let set = parse(json!({"keys": [
            enc, oaep, ops,
            {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"},
            {"kty": "OKP", "crv": "X25519", "x": "AA"},
            {"kty": "oct", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"},
            {"kty": "weird"},
            keys.ed25519_jwk("ok"),
        ]}))
        .unwrap();
        assert_eq!(set.len(), 1);
        assert!(set.has_kid("ok"));
    }

    #[test]
    fn hmac_secrets_only_when_allowed_and_long_enough() {
        let long =
            json!({"keys": [{"kty": "oct", "kid": "h", "k": URL_SAFE_NO_PAD.encode([7u8; 32])}]});
        assert_eq!(parse(long.clone()), Err(JwksError::NoUsableKeys));
        let set = KeySet::parse(long.to_string().as_bytes(), true).unwrap();
        assert!(matches!(set.keys()[0].key, PublicKey::Hmac(_)));
        let short = json!({"keys": [{"kty": "oct", "k": URL_SAFE_NO_PAD.encode([7u8; 16])}]});
        assert!(matches!(
            KeySet::parse(short.to_string().as_bytes(), true),
            Err(JwksError::BadKey(0, _))
        ));
        // A key that names HS384 or HS512 needs a secret as long as that hash.
        for (alg, least) in [("HS384", 48), ("HS512", 64)] {
            let doc = |len: usize| json!({"keys": [{"kty": "oct", "alg": alg, "k": URL_SAFE_NO_PAD.encode(vec![7u8; len])}]});
            let err = KeySet::parse(doc(least - 1).to_string().as_bytes(), true).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "JWKS keys[0]: HMAC secret of {} bytes, shorter than the {least} {alg} needs (RFC 7518 §3.2)",
                    least - 1
                )
            );
            assert!(KeySet::parse(doc(least).to_string().as_bytes(), true).is_ok());
        }
    }

    #[test]
    fn malformed_documents_are_refused_whole() {
        let keys = testkit::keys();
        let mut bad_b64 = keys.rsa_jwk("r");
        bad_b64["n"] = json!("not+base64url/");
        let mut padded = keys.ed25519_jwk("o");
        padded["x"] = json!(format!("{}=", padded["x"].as_str().unwrap()));
        let mut short_ec = keys.p256_jwk("e");
        short_ec["x"] = json!(URL_SAFE_NO_PAD.encode([1u8; 31]));
        let mut mismatched = keys.p256_jwk("m");
        mismatched["alg"] = json!("RS256");
        let small_rsa =
            json!({"kty": "RSA", "n": URL_SAFE_NO_PAD.encode([0xffu8; 128]), "e": "AQAB"});
        let cases = [
            json!({"keys": [bad_b64]}),
            json!({"keys": [padded]}),
            json!({"keys": [short_ec]}),
            json!({"keys": [mismatched]}),
            json!({"keys": [small_rsa]}),
            json!({"keys": [{"kty": "RSA", "n": "AAAA", "e": "AQAB"}]}),
            json!({"keys": [{"kty": "RSA", "e": "AQAB"}]}),
            json!({"keys": [{"n": "AQAB"}]}),
            json!({"keys": ["a string"]}),
            json!({"keys": [{"kty": 5}]}),
        ];
        for doc in cases {
            assert!(
                matches!(parse(doc.clone()), Err(JwksError::BadKey(0, _))),
                "{doc}"
            );
        }
        assert_eq!(parse(json!({"nokeys": []})), Err(JwksError::NoKeysArray));
        assert_eq!(parse(json!({"keys": []})), Err(JwksError::NoUsableKeys));
        assert_eq!(KeySet::parse(b"[1]", false), Err(JwksError::NotJson));
        assert_eq!(KeySet::parse(b"{", false), Err(JwksError::NotJson));
    }

    #[test]
    fn size_is_capped() {
        let big = vec![b' '; MAX_JWKS_BYTES + 1];
        assert_eq!(
            KeySet::parse(&big, false),
            Err(JwksError::TooLarge(MAX_JWKS_BYTES + 1))
        );
    }

    #[test]
    fn rsa_leading_zeros_are_removed() {
        let keys = testkit::keys();
        let mut jwk = keys.rsa_jwk("r");
        let mut n = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
        let plain = n.clone();
        n.insert(0, 0);
        jwk["n"] = json!(URL_SAFE_NO_PAD.encode(&n));
        let set = parse(json!({"keys": [jwk]})).unwrap();
        assert!(matches!(&set.keys()[0].key, PublicKey::Rsa { n, .. } if *n == plain));
    }
}
