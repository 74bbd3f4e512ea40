//! Signature checks: by the host's native crypto where it can, else in the VM with
//! `ring`.
//!
//! Speed is what decides where a signature is checked; trust is decided the same way
//! on both paths. Measured inside Envoy 1.40's V8, `ring` is as fast as any well-kept
//! crate that builds for `wasm32-wasip1` for RSA (about 200 µs for a 2048-bit key)
//! and Ed25519 (about 60 µs), and within 20% of the fastest for ECDSA (P-256 about
//! 420 µs, P-384 about 3 ms; RustCrypto's `p256`/`p384` do 350 µs and 1.4 ms), all
//! 5–10 times native code. So RS256/384/512 and ES256/384 go to Envoy's BoringSSL
//! through [`host_verifier`](crate::host_verifier) (15 µs for RS256, 35 µs for
//! ES256), and `ring` checks the rest (PSS, EdDSA, HMAC) and anything the host cannot
//! answer. Which key may verify which `alg` is decided here ([`key_fits`]) before
//! either runs: an HMAC algorithm never runs against an RSA or EC key, so the classic
//! "HS256 signed with the RSA public key" forgery has no key to succeed with.

use crate::host_verifier::{self, HostVerifier};
use crate::jwks::{Jwk, PublicKey};
use crate::token::Alg;
use ring::{hmac, signature};

/// Whether `key` can verify `alg` at all: its type fits, and an HMAC secret is at
/// least as long as the algorithm's hash (RFC 7518 §3.2).
pub fn key_fits(alg: Alg, key: &PublicKey) -> bool {
    match (alg, key) {
        (Alg::HS256 | Alg::HS384 | Alg::HS512, PublicKey::Hmac(secret)) => alg
            .min_secret_bytes()
            .is_some_and(|least| secret.len() >= least),
        _ => matches!(
            (alg, key),
            (
                Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512,
                PublicKey::Rsa { .. }
            ) | (Alg::ES256, PublicKey::P256(_))
                | (Alg::ES384, PublicKey::P384(_))
                | (Alg::EdDSA, PublicKey::Ed25519(_))
        ),
    }
}

/// Whether `jwk` may verify a token signed with `alg`: the key type fits, and the
/// key's own `alg`, if it names one, is the same.
pub fn jwk_accepts(jwk: &Jwk, alg: Alg) -> bool {
    key_fits(alg, &jwk.key) && jwk.alg.is_none_or(|own| own == alg)
}

/// Checks `sig` over `message` with `jwk` for `alg`: by the host when it can check
/// this algorithm with this key and answers, else with [`verify`]. The host's answer
/// is final either way (a signature it refuses is not tried again in the VM, so a
/// forged token costs one check). `false` when the key does not fit the algorithm.
pub fn verify_jwk(
    host: &dyn HostVerifier,
    alg: Alg,
    jwk: &Jwk,
    message: &[u8],
    sig: &[u8],
) -> bool {
    if !key_fits(alg, &jwk.key) {
        return false;
    }
    jwk.host_key
        .as_ref()
        .and_then(|key| host_verifier::check(host, alg, key, message, sig))
        .unwrap_or_else(|| verify(alg, &jwk.key, message, sig))
}

/// Checks `signature` over `message` with `key` for `alg`, in the VM. `false` when
/// the key does not fit the algorithm.
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
        testkit::parse_jwk(jwk).key
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

    /// A host that answers every request the same way and counts them.
    struct FixedHost {
        answer: Option<bool>,
        asked: std::cell::Cell<usize>,
    }

    impl HostVerifier for FixedHost {
        fn verify_signature(&self, _arguments: &[u8]) -> Option<Vec<u8>> {
            self.asked.set(self.asked.get() + 1);
            self.answer
                .map(|valid| if valid { vec![0x08, 0x01] } else { Vec::new() })
        }
    }

    fn host(answer: Option<bool>) -> FixedHost {
        FixedHost {
            answer,
            asked: std::cell::Cell::new(0),
        }
    }

    #[test]
    fn the_host_decides_what_it_can_check_and_the_vm_the_rest() {
        let keys = testkit::keys();
        for alg in Alg::ALL {
            let text = keys.sign(alg, Some("k"), &json!({"sub": "alice"}));
            let parsed = token::parse(&text).unwrap();
            let jwk = testkit::parse_jwk(keys.jwk_for(alg, "k"));
            let (input, sig) = (parsed.signing_input, &parsed.signature[..]);
            // Of the right length: JWS ECDSA signatures of another length are refused
            // before anyone is asked.
            let nonsense = vec![7u8; sig.len()];
            let by_host = host_verifier::hash_name(alg).is_some();
            let host_form = matches!(
                jwk.key,
                PublicKey::Rsa { .. } | PublicKey::P256(_) | PublicKey::P384(_)
            );
            assert_eq!(jwk.host_key.is_some(), host_form, "{alg}");

            // The host's answer is final: it may refuse a good signature...
            let refusing = host(Some(false));
            assert_eq!(
                verify_jwk(&refusing, alg, &jwk, input, sig),
                !by_host,
                "{alg}"
            );
            assert_eq!(refusing.asked.get(), usize::from(by_host), "{alg}");
            // ...and pass one the VM would not (it is the host's crypto that runs).
            let accepting = host(Some(true));
            assert_eq!(verify_jwk(&accepting, alg, &jwk, input, &nonsense), by_host);

            // A host that cannot answer leaves it to the VM, which checks properly.
            let silent = host(None);
            assert!(verify_jwk(&silent, alg, &jwk, input, sig), "{alg}");
            assert!(!verify_jwk(&silent, alg, &jwk, input, &nonsense), "{alg}");
            assert!(
                verify_jwk(&host_verifier::NoHostVerifier, alg, &jwk, input, sig),
                "{alg}"
            );
        }
    }

    #[test]
    fn the_host_is_never_asked_to_check_a_key_that_does_not_fit() {
        let keys = testkit::keys();
        let accepting = host(Some(true));
        let rsa = testkit::parse_jwk(keys.rsa_jwk("k"));
        let p256 = testkit::parse_jwk(keys.p256_jwk("k"));
        for (alg, jwk) in [
            (Alg::HS256, &rsa),
            (Alg::ES256, &rsa),
            (Alg::RS256, &p256),
            (Alg::ES384, &p256),
        ] {
            assert!(!verify_jwk(&accepting, alg, jwk, b"m", b"s"), "{alg}");
        }
        assert_eq!(accepting.asked.get(), 0);
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
