//! The key directory shared by `wasmgate-demo jwks` (which publishes the public
//! halves) and `wasmgate-demo token` (which signs with the private ones).
//!
//! One file per key, `<kid>.<ALG>.pem`, holding a PKCS#8 PEM private key (as written
//! by `openssl genpkey` or Python's `cryptography`): RS256/384/512, PS256/384/512,
//! ES256, ES384, EdDSA (Ed25519). Rotating keys is adding or removing a file: the
//! JWKS server reads the directory on every request. Keys are made by whoever runs
//! the demo or a test, never stored in the repository.

use jwt_simple::prelude::*;
use serde_json::{Map, Value};
use std::path::Path;

/// A private key with its `kid`, able to sign and to describe its public half.
pub enum SigningKey {
    Rs256(RS256KeyPair),
    Rs384(RS384KeyPair),
    Rs512(RS512KeyPair),
    Ps256(PS256KeyPair),
    Ps384(PS384KeyPair),
    Ps512(PS512KeyPair),
    Es256(ES256KeyPair),
    Es384(ES384KeyPair),
    EdDsa(Ed25519KeyPair),
}

pub struct NamedKey {
    pub kid: String,
    pub key: SigningKey,
}

/// Reads one key file named `<kid>.<ALG>.pem`.
pub fn load(path: &Path) -> Result<NamedKey, String> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{}: not a key file name", path.display()))?;
    let stem = name
        .strip_suffix(".pem")
        .ok_or_else(|| format!("{name}: key files end in .pem"))?;
    let (kid, alg) = stem
        .rsplit_once('.')
        .ok_or_else(|| format!("{name}: key files are named <kid>.<ALG>.pem"))?;
    let pem = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let bad = |e: jwt_simple::Error| format!("{name}: not a {alg} private key: {e}");
    let key = match alg {
        "RS256" => SigningKey::Rs256(RS256KeyPair::from_pem(&pem).map_err(bad)?.with_key_id(kid)),
        "RS384" => SigningKey::Rs384(RS384KeyPair::from_pem(&pem).map_err(bad)?.with_key_id(kid)),
        "RS512" => SigningKey::Rs512(RS512KeyPair::from_pem(&pem).map_err(bad)?.with_key_id(kid)),
        "PS256" => SigningKey::Ps256(PS256KeyPair::from_pem(&pem).map_err(bad)?.with_key_id(kid)),
        "PS384" => SigningKey::Ps384(PS384KeyPair::from_pem(&pem).map_err(bad)?.with_key_id(kid)),
        "PS512" => SigningKey::Ps512(PS512KeyPair::from_pem(&pem).map_err(bad)?.with_key_id(kid)),
        "ES256" => SigningKey::Es256(ES256KeyPair::from_pem(&pem).map_err(bad)?.with_key_id(kid)),
        "ES384" => SigningKey::Es384(ES384KeyPair::from_pem(&pem).map_err(bad)?.with_key_id(kid)),
        "EdDSA" => SigningKey::EdDsa(
            Ed25519KeyPair::from_pem(&pem)
                .map_err(bad)?
                .with_key_id(kid),
        ),
        other => return Err(format!("{name}: unsupported algorithm {other}")),
    };
    Ok(NamedKey {
        kid: kid.to_owned(),
        key,
    })
}

/// Every `*.pem` file of `dir`, sorted by file name. Unreadable files are reported
/// and skipped, so one bad file does not take the whole JWKS down.
pub fn load_dir(dir: &Path) -> Result<Vec<NamedKey>, String> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "pem"))
        .collect();
    paths.sort();
    let mut keys = Vec::new();
    for path in paths {
        match load(&path) {
            Ok(key) => keys.push(key),
            Err(err) => eprintln!("wasmgate-demo: skipping {err}"),
        }
    }
    Ok(keys)
}

impl NamedKey {
    /// The public JWK, with `kid`, `alg` and `use: sig`.
    pub fn public_jwk(&self) -> Result<Value, String> {
        let kid = self.kid.as_str();
        let text = match &self.key {
            SigningKey::Rs256(k) => k.public_key().with_key_id(kid).to_jwk(),
            SigningKey::Rs384(k) => k.public_key().with_key_id(kid).to_jwk(),
            SigningKey::Rs512(k) => k.public_key().with_key_id(kid).to_jwk(),
            SigningKey::Ps256(k) => k.public_key().with_key_id(kid).to_jwk(),
            SigningKey::Ps384(k) => k.public_key().with_key_id(kid).to_jwk(),
            SigningKey::Ps512(k) => k.public_key().with_key_id(kid).to_jwk(),
            SigningKey::Es256(k) => k.public_key().with_key_id(kid).to_jwk(),
            SigningKey::Es384(k) => k.public_key().with_key_id(kid).to_jwk(),
            SigningKey::EdDsa(k) => k.public_key().with_key_id(kid).to_jwk(),
        };
        serde_json::from_str(&text).map_err(|e| format!("{kid}: JWK export: {e}"))
    }

    /// Signs `claims` (header `{"alg", "typ": "JWT", "kid"}`).
    pub fn sign(&self, claims: JWTClaims<Map<String, Value>>) -> Result<String, String> {
        let signed = match &self.key {
            SigningKey::Rs256(k) => k.sign(claims),
            SigningKey::Rs384(k) => k.sign(claims),
            SigningKey::Rs512(k) => k.sign(claims),
            SigningKey::Ps256(k) => k.sign(claims),
            SigningKey::Ps384(k) => k.sign(claims),
            SigningKey::Ps512(k) => k.sign(claims),
            SigningKey::Es256(k) => k.sign(claims),
            SigningKey::Es384(k) => k.sign(claims),
            SigningKey::EdDsa(k) => k.sign(claims),
        };
        signed.map_err(|e| format!("signing with {}: {e}", self.kid))
    }
}

/// Writes a new ES256 key as `<kid>.ES256.pem` (quick to generate, unlike RSA).
pub fn generate_es256(dir: &Path, kid: &str) -> Result<(), String> {
    let pem = ES256KeyPair::generate()
        .to_pem()
        .map_err(|e| format!("generating a key: {e}"))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join(format!("{kid}.ES256.pem"));
    std::fs::write(&path, pem).map_err(|e| format!("{}: {e}", path.display()))
}
