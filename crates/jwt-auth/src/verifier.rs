//! Signature checks with `ring`.
//!
//! `ring` is the verify path because it is the fastest well-kept implementation that
//! builds for `wasm32-wasip1` (about 4x jwt-simple's pure-Rust RSA in V8). Which key
//! may verify which `alg` is decided here ([`key_fits`]): an HMAC algorithm never
//! runs against an RSA or EC key, so the classic "HS256 signed with the RSA public
//! key" forgery has no key to succeed with.

use crate::jwks::{Jwk, PublicKey};
use crate::token::Alg;
use ring::{hmac, signature};

/// Whether `key`'s type can verify `alg` at all.
pub fn key_fits(alg: Alg, key: &PublicKey) -> bool {
    matches!(
        (alg, key),
        (Alg::HS256 | Alg::HS384 | Alg::HS512, PublicKey::Hmac(_))
            | (
                Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512,
                PublicKey::Rsa { .. }
            )
            | (Alg::ES256, PublicKey::P256(_))
            | (Alg::ES384, PublicKey::P384(_))
            | (Alg::EdDSA, PublicKey::Ed25519(_))
    )
}

/// Whether `jwk` may verify a token signed with `alg`: the key type fits, and the
/// key's own `alg`, if it names one, is the same.
pub fn jwk_accepts(jwk: &Jwk, alg: Alg) -> bool {
    key_fits(alg, &jwk.key) && jwk.alg.is_none_or(|own| own == alg)
}

/// Checks `signature` over `message` with `key` for `alg`. `false` when the key does
/// not fit the algorithm.
pub fn verify(alg: Alg, key: &PublicKey, message: &[u8], sig: &[u8]) -> bool {
    match (alg, key) {
        (_, PublicKey::Rsa { n, e }) => {
            let params: &signature::RsaParameters = match alg {
                Alg::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                Alg::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                Alg::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                Alg::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
                Alg::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
                Alg::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
                _ => return false,
            };
            signature::RsaPublicKeyComponents { n, e }
                .verify(params, message, sig)
                .is_ok()
        }
        (Alg::ES256, PublicKey::P256(point)) => {
            signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(message, sig)
                .is_ok()
        }
        (Alg::ES384, PublicKey::P384(point)) => {
            signature::UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point)
                .verify(message, sig)
                .is_ok()
        }
        (Alg::EdDSA, PublicKey::Ed25519(raw)) => {
            signature::UnparsedPublicKey::new(&signature::ED25519, raw)
                .verify(message, sig)
                .is_ok()
        }
        (Alg::HS256 | Alg::HS384 | Alg::HS512, PublicKey::Hmac(secret)) => {
            let algorithm = match alg {
                Alg::HS256 => hmac::HMAC_SHA256,
                Alg::HS384 => hmac::HMAC_SHA384,
                _ => hmac::HMAC_SHA512,
            };
            // Constant-time comparison inside ring.
            hmac::verify(&hmac::Key::new(algorithm, secret), message, sig).is_ok()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwks::KeySet;
    use crate::testkit;
    use crate::token;
    use serde_json::json;

    fn key_of(jwk: serde_json::Value) -> PublicKey {
        let set = KeySet::parse(json!({"keys": [jwk]}).to_string().as_bytes(), true).unwrap();
        set.keys()[0].key.clone()
    }

    #[test]
    fn every_algorithm_verifies_its_own_signature_and_rejects_a_changed_one() {
        let keys = testkit::keys();
        for alg in Alg::ALL {
            let text = keys.sign(alg, Some("k"), &json!({"sub": "alice"}));
            let parsed = token::parse(&text).unwrap();
            let key = key_of(keys.jwk_for(alg, "k"));
            assert!(
                verify(alg, &key, parsed.signing_input, &parsed.signature),
                "{alg} did not verify"
            );
            let mut tampered = parsed.signature.clone();
            tampered[0] ^= 1;
            assert!(!verify(alg, &key, parsed.signing_input, &tampered), "{alg}");
            let other_input = [parsed.signing_input, b"x"].concat();
            assert!(!verify(alg, &key, &other_input, &parsed.signature), "{alg}");
        }
    }

    #[test]
    fn tokens_minted_by_jwt_simple_verify() {
        // An independent implementation signs; ring verifies.
        use jwt_simple::prelude::*;
        let keys = testkit::keys();
        let claims =
            Claims::create(jwt_simple::prelude::Duration::from_hours(1)).with_subject("alice");
        let text = keys.jwt_simple_rsa().sign(claims.clone()).unwrap();
        let parsed = token::parse(&text).unwrap();
        let key = key_of(keys.rsa_jwk("k"));
        assert!(verify(
            Alg::RS256,
            &key,
            parsed.signing_input,
            &parsed.signature
        ));

        let es = ES256KeyPair::generate();
        let text = es.sign(claims).unwrap();
        let parsed = token::parse(&text).unwrap();
        let point = es.public_key().public_key().to_bytes_uncompressed();
        assert!(verify(
            Alg::ES256,
            &PublicKey::P256(point),
            parsed.signing_input,
            &parsed.signature
        ));
    }

    #[test]
    fn algorithm_confusion_has_no_key_to_succeed_with() {
        // HS256 "signed" with the RSA public key's bytes must not verify against the
        // RSA key, nor may an RSA algorithm run with an HMAC secret.
        let keys = testkit::keys();
        let rsa = key_of(keys.rsa_jwk("k"));
        let PublicKey::Rsa { n, .. } = &rsa else {
            unreachable!()
        };
        let input = b"header.payload";
        let forged = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, n), input);
        assert!(!key_fits(Alg::HS256, &rsa));
        assert!(!verify(Alg::HS256, &rsa, input, forged.as_ref()));
        assert!(!key_fits(Alg::RS256, &PublicKey::Hmac(n.clone())));
        assert!(!verify(
            Alg::RS256,
            &PublicKey::Hmac(n.clone()),
            input,
            forged.as_ref()
        ));
        assert!(!key_fits(Alg::ES256, &PublicKey::P384(vec![4; 97])));
    }

    #[test]
    fn a_key_with_its_own_alg_accepts_only_that_alg() {
        let keys = testkit::keys();
        let mut jwk = keys.rsa_jwk("k");
        jwk["alg"] = json!("RS256");
        let set = KeySet::parse(json!({"keys": [jwk]}).to_string().as_bytes(), false).unwrap();
        assert!(jwk_accepts(&set.keys()[0], Alg::RS256));
        assert!(!jwk_accepts(&set.keys()[0], Alg::PS256));
        let any = KeySet::parse(
            json!({"keys": [keys.rsa_jwk("k")]}).to_string().as_bytes(),
            false,
        )
        .unwrap();
        assert!(jwk_accepts(&any.keys()[0], Alg::PS256));
    }
}
