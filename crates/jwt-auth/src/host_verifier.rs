//! Signature checks by the host's own crypto: Envoy's `verify_signature` foreign
//! function, which runs BoringSSL natively.
//!
//! Inside V8 the fastest verification any well-kept crate offers costs about 200 µs
//! for RS256 and 350–420 µs for ES256, 5–10 times what Envoy's native `jwt_authn`
//! spends; the same check through `verify_signature` costs about 15 µs and 35 µs (both
//! measured in Envoy 1.40, see the issue notes). Envoy offers it to every Wasm module
//! (`source/extensions/common/wasm/foreign.cc`): the arguments are a serialized
//! `VerifySignatureArguments` protobuf (hash name, public key as DER
//! `SubjectPublicKeyInfo`, signature, signed text), the answer a
//! `VerifySignatureResult` (`result`, `error`). It digests with the named hash and
//! calls `EVP_DigestVerify` with the key's default padding, so it serves RSA PKCS#1
//! v1.5 (RS256/384/512) and ECDSA (ES256/384, with the signature in ASN.1 DER form),
//! not PSS, Ed25519 or HMAC.
//!
//! This module encodes the arguments, decodes the answer and holds the DER forms of
//! keys; the host is behind the [`HostVerifier`] port, which the filter implements
//! with the foreign-function call. It decides nothing about trust: the
//! [`verifier`](crate::verifier) picks the key and falls back to its own checks when
//! the host cannot answer.

use crate::jwks::PublicKey;
use crate::token::Alg;
use std::fmt;

/// The host's signature check. Implemented by the filter with Envoy's
/// `verify_signature` foreign function; tests use fakes.
pub trait HostVerifier {
    /// Sends `arguments` (a serialized `VerifySignatureArguments`) and returns the
    /// serialized `VerifySignatureResult`, or `None` when the host could not check:
    /// it has no such function, withholds it, or refused the arguments (a key it
    /// cannot import). Never `None` for a signature that merely does not verify.
    fn verify_signature(&self, arguments: &[u8]) -> Option<Vec<u8>>;
}

/// A host without signature checks: everything is verified in the VM.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHostVerifier;

impl HostVerifier for NoHostVerifier {
    fn verify_signature(&self, _arguments: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

/// A public key as `verify_signature` takes it: DER `SubjectPublicKeyInfo` (RFC 5280
/// §4.1.2.7; RSA per RFC 3279 §2.3.1, EC per RFC 5480 §2). Built once per JWKS key.
#[derive(Clone, PartialEq, Eq)]
pub struct HostKey(Vec<u8>);

impl fmt::Debug for HostKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostKey({} bytes)", self.0.len())
    }
}

/// rsaEncryption (1.2.840.113549.1.1.1), then its NULL parameters.
const RSA_ALGORITHM: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];
/// id-ecPublicKey (1.2.840.10045.2.1).
const EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// prime256v1 (1.2.840.10045.3.1.7).
const P256_CURVE: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// secp384r1 (1.3.132.0.34).
const P384_CURVE: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;

impl HostKey {
    /// The DER form of an RSA or EC key; `None` for key types the host path does
    /// not serve (Ed25519, HMAC).
    pub fn of(key: &PublicKey) -> Option<HostKey> {
        let (algorithm, public_key) = match key {
            PublicKey::Rsa { n, e } => {
                let mut integers = Vec::with_capacity(n.len() + e.len() + 16);
                der_unsigned(&mut integers, n);
                der_unsigned(&mut integers, e);
                let mut rsa_public_key = Vec::with_capacity(integers.len() + 4);
                der(&mut rsa_public_key, SEQUENCE, &integers);
                (RSA_ALGORITHM.to_vec(), rsa_public_key)
            }
            PublicKey::P256(point) => ([EC_PUBLIC_KEY, P256_CURVE].concat(), point.clone()),
            PublicKey::P384(point) => ([EC_PUBLIC_KEY, P384_CURVE].concat(), point.clone()),
            PublicKey::Ed25519(_) | PublicKey::Hmac(_) => return None,
        };
        let mut identifier = Vec::with_capacity(algorithm.len() + 2);
        der(&mut identifier, SEQUENCE, &algorithm);
        // A BIT STRING starts with its count of unused bits: none.
        let mut bits = Vec::with_capacity(public_key.len() + 1);
        bits.push(0);
        bits.extend_from_slice(&public_key);
        let mut body = identifier;
        der(&mut body, BIT_STRING, &bits);
        let mut spki = Vec::with_capacity(body.len() + 4);
        der(&mut spki, SEQUENCE, &body);
        Some(HostKey(spki))
    }

    #[cfg(test)]
    pub fn der(&self) -> &[u8] {
        &self.0
    }
}

/// The hash `verify_signature` must digest with for `alg`; `None` for algorithms
/// it cannot check (PSS, EdDSA, HMAC).
pub fn hash_name(alg: Alg) -> Option<&'static str> {
    match alg {
        Alg::RS256 | Alg::ES256 => Some("sha256"),
        Alg::RS384 | Alg::ES384 => Some("sha384"),
        Alg::RS512 => Some("sha512"),
        _ => None,
    }
}

/// Asks the host to check `sig` over `message` with `key` for `alg`: `Some(valid)`
/// when it answered (or when the signature cannot be valid whatever the host), `None`
/// when the VM has to check instead.
pub fn check(
    host: &dyn HostVerifier,
    alg: Alg,
    key: &HostKey,
    message: &[u8],
    sig: &[u8],
) -> Option<bool> {
    let hash = hash_name(alg)?;
    let converted;
    let signature = match alg {
        Alg::ES256 | Alg::ES384 => match ecdsa_der(alg, sig) {
            Some(der) => {
                converted = der;
                &converted[..]
            }
            // JWS ECDSA signatures are exactly r || s (RFC 7518 §3.4).
            None => return Some(false),
        },
        _ => sig,
    };
    let mut arguments = Vec::with_capacity(key.0.len() + signature.len() + message.len() + 32);
    protobuf_bytes(&mut arguments, 1, hash.as_bytes());
    protobuf_bytes(&mut arguments, 2, &key.0);
    protobuf_bytes(&mut arguments, 3, signature);
    protobuf_bytes(&mut arguments, 4, message);
    verification_result(&host.verify_signature(&arguments)?)
}

/// A JWS ECDSA signature (`r || s`, each the curve's field size) as the ASN.1
/// `ECDSA-Sig-Value` BoringSSL takes; `None` when the length is wrong. Values out of
/// range (0, or not below the group order) are encoded as they are: the host refuses
/// them, as `ring` does.
fn ecdsa_der(alg: Alg, sig: &[u8]) -> Option<Vec<u8>> {
    let size = match alg {
        Alg::ES256 => 32,
        Alg::ES384 => 48,
        _ => return None,
    };
    if sig.len() != 2 * size {
        return None;
    }
    let (r, s) = sig.split_at(size);
    let mut integers = Vec::with_capacity(sig.len() + 6);
    der_unsigned(&mut integers, r);
    der_unsigned(&mut integers, s);
    let mut out = Vec::with_capacity(integers.len() + 3);
    der(&mut out, SEQUENCE, &integers);
    Some(out)
}

/// Appends one DER element (tag, definite length, contents).
fn der(out: &mut Vec<u8>, tag: u8, contents: &[u8]) {
    out.push(tag);
    let len = contents.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(contents);
}

/// Appends a big-endian unsigned number as a DER INTEGER: minimal, with a leading
/// zero byte where the top bit is set (else it would read as negative).
fn der_unsigned(out: &mut Vec<u8>, number: &[u8]) {
    let zeros = number.iter().take_while(|b| **b == 0).count();
    let digits = &number[zeros.min(number.len().saturating_sub(1))..];
    let mut contents = Vec::with_capacity(digits.len() + 1);
    if digits.first().is_none_or(|top| top & 0x80 != 0) {
        contents.push(0);
    }
    contents.extend_from_slice(digits);
    der(out, INTEGER, &contents);
}

/// Appends a length-delimited protobuf field (wire type 2).
fn protobuf_bytes(out: &mut Vec<u8>, field: u8, data: &[u8]) {
    out.push(field << 3 | 2);
    let mut len = data.len();
    while len >= 0x80 {
        out.push((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(data);
}

/// `VerifySignatureResult.result` (field 1, a bool; absent means false). `None` for
/// an answer that is not such a message.
fn verification_result(answer: &[u8]) -> Option<bool> {
    let mut result = false;
    let mut rest = answer;
    while let Some((&tag, after)) = rest.split_first() {
        let (value, after) = varint(after)?;
        rest = match tag {
            // Field 1, varint: the result.
            0x08 => {
                result = value != 0;
                after
            }
            // Field 2, length-delimited: the error text, not needed.
            0x12 => after.get(usize::try_from(value).ok()?..)?,
            _ => return None,
        };
    }
    Some(result)
}

fn varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (index, byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            return Some((value, &bytes[index + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit;
    use crate::token;
    use ring::signature;
    use serde_json::json;
    use std::cell::RefCell;

    fn key_of(jwk: serde_json::Value) -> PublicKey {
        testkit::parse_jwk(jwk).key
    }

    #[test]
    fn keys_are_encoded_as_an_independent_library_encodes_them() {
        use jwt_simple::prelude::*;
        let keys = testkit::keys();
        let rsa = key_of(keys.rsa_jwk("k"));
        let PublicKey::Rsa { n, e } = &rsa else {
            unreachable!()
        };
        let theirs = RS256PublicKey::from_components(n, e)
            .unwrap()
            .to_der()
            .unwrap();
        assert_eq!(HostKey::of(&rsa).unwrap().der(), &theirs[..]);

        let p256 = key_of(keys.p256_jwk("k"));
        let PublicKey::P256(point) = &p256 else {
            unreachable!()
        };
        let theirs = ES256PublicKey::from_bytes(point).unwrap().to_der().unwrap();
        assert_eq!(HostKey::of(&p256).unwrap().der(), &theirs[..]);

        let p384 = key_of(keys.p384_jwk("k"));
        let PublicKey::P384(point) = &p384 else {
            unreachable!()
        };
        let theirs = ES384PublicKey::from_bytes(point).unwrap().to_der().unwrap();
        assert_eq!(HostKey::of(&p384).unwrap().der(), &theirs[..]);

        assert_eq!(HostKey::of(&key_of(keys.ed25519_jwk("k"))), None);
        assert_eq!(HostKey::of(&key_of(keys.hmac_jwk("k"))), None);
    }

    #[test]
    fn a_large_rsa_modulus_gets_long_form_lengths() {
        // 8192 bits: every length past 255 bytes takes two length octets.
        let n = [&[0xc5u8][..], &[0x5a; 1023]].concat();
        let key = HostKey::of(&PublicKey::Rsa {
            n: n.clone(),
            e: vec![1, 0, 1],
        })
        .unwrap();
        let der = key.der();
        // SEQUENCE, 0x82, two length bytes, covering the rest exactly.
        assert_eq!((der[0], der[1]), (0x30, 0x82));
        assert_eq!(
            usize::from(der[2]) << 8 | usize::from(der[3]),
            der.len() - 4
        );
        // The modulus: INTEGER, 0x82 0x04 0x01 (a zero byte, then 1024 bytes).
        let at = der
            .windows(4)
            .position(|w| w == [0x02, 0x82, 0x04, 0x01])
            .unwrap();
        assert_eq!(der[at + 4], 0);
        assert_eq!(&der[at + 5..at + 5 + 1024], &n[..]);
    }

    #[test]
    fn integers_are_minimal_and_never_negative() {
        let encode = |number: &[u8]| {
            let mut out = Vec::new();
            der_unsigned(&mut out, number);
            out
        };
        assert_eq!(encode(&[0x01, 0x00, 0x01]), [0x02, 0x03, 0x01, 0x00, 0x01]);
        assert_eq!(encode(&[0x00, 0x00, 0x7f]), [0x02, 0x01, 0x7f]);
        assert_eq!(encode(&[0x00, 0x80]), [0x02, 0x02, 0x00, 0x80]);
        assert_eq!(encode(&[0xff]), [0x02, 0x02, 0x00, 0xff]);
        assert_eq!(encode(&[0x00, 0x00]), [0x02, 0x01, 0x00]);
    }

    /// `order - s`, big-endian, for `0 < s < order`.
    fn order_minus(order: &[u8], s: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; order.len()];
        let mut borrow = 0i16;
        for i in (0..order.len()).rev() {
            let mut digit = i16::from(order[i]) - i16::from(s[i]) - borrow;
            borrow = i16::from(digit < 0);
            if digit < 0 {
                digit += 256;
            }
            out[i] = digit as u8;
        }
        out
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn ecdsa_signatures_in_der_verify_exactly_when_the_jws_form_does() {
        // ring checks both forms: the DER we hand the host must be accepted exactly
        // when the JWS form is. Edge values of r and s (0, the group order n, n - s:
        // the "high s" twin every ECDSA signature has, values with the top bit set
        // or leading zero bytes), flipped bits and wrong lengths.
        let keys = testkit::keys();
        let cases = [
            (
                Alg::ES256,
                &signature::ECDSA_P256_SHA256_FIXED,
                &signature::ECDSA_P256_SHA256_ASN1,
                // The group order n (SEC 2 §2.4.2).
                hex("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551"),
            ),
            (
                Alg::ES384,
                &signature::ECDSA_P384_SHA384_FIXED,
                &signature::ECDSA_P384_SHA384_ASN1,
                // SEC 2 §2.5.1.
                hex(concat!(
                    "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf",
                    "581a0db248b0a77aecec196accc52973"
                )),
            ),
        ];
        for (alg, fixed, asn1, order) in cases {
            let (PublicKey::P256(point) | PublicKey::P384(point)) = key_of(keys.jwk_for(alg, "k"))
            else {
                unreachable!()
            };
            let size = order.len();
            let mut accepted = 0;
            // Several signatures, so that some r or s has its top bit set or
            // starts with a zero byte.
            for round in 0..24 {
                let text = keys.sign(alg, None, &json!({"sub": "alice", "n": round}));
                let parsed = token::parse(&text).unwrap();
                let sig = &parsed.signature;
                let (r, s) = sig.split_at(size);
                let zeros = vec![0u8; size];
                let mut small = zeros.clone();
                *small.last_mut().unwrap() = 1;
                let mut signatures = vec![
                    sig.clone(),
                    [r, &order_minus(&order, s)].concat(),
                    [&zeros, s].concat(),
                    [r, &zeros].concat(),
                    [&order, s].concat(),
                    [r, &order[..]].concat(),
                    [&small, s].concat(),
                    sig[1..].to_vec(),
                    [&sig[..], &[0]].concat(),
                ];
                let mut flipped = sig.clone();
                flipped[round * 3 % sig.len()] ^= 1 << (round % 8);
                signatures.push(flipped);
                for candidate in &signatures {
                    let jws = signature::UnparsedPublicKey::new(fixed, &point)
                        .verify(parsed.signing_input, candidate)
                        .is_ok();
                    let der = ecdsa_der(alg, candidate).is_some_and(|der| {
                        signature::UnparsedPublicKey::new(asn1, &point)
                            .verify(parsed.signing_input, &der)
                            .is_ok()
                    });
                    assert_eq!(der, jws, "{alg}: {candidate:02x?}");
                    accepted += usize::from(jws);
                }
            }
            // Each signature and its high-s twin.
            assert_eq!(accepted, 48, "{alg}");
        }
    }

    /// A host that records the arguments it got and answers with `answer`.
    struct RecordingHost {
        answer: Option<Vec<u8>>,
        seen: RefCell<Vec<Vec<u8>>>,
    }

    impl HostVerifier for RecordingHost {
        fn verify_signature(&self, arguments: &[u8]) -> Option<Vec<u8>> {
            self.seen.borrow_mut().push(arguments.to_vec());
            self.answer.clone()
        }
    }

    fn host(answer: Option<&[u8]>) -> RecordingHost {
        RecordingHost {
            answer: answer.map(<[u8]>::to_vec),
            seen: RefCell::new(Vec::new()),
        }
    }

    #[test]
    fn the_arguments_are_a_verify_signature_message() {
        let key = HostKey(vec![0xaa; 3]);
        let long_text = vec![b't'; 200];
        let recording = host(Some(&[0x08, 0x01]));
        assert_eq!(
            check(&recording, Alg::RS384, &key, &long_text, b"sig"),
            Some(true)
        );
        let expected = [
            &[0x0a, 6][..],
            b"sha384",
            &[0x12, 3, 0xaa, 0xaa, 0xaa],
            &[0x1a, 3],
            b"sig",
            // 200 bytes: a two-byte varint length.
            &[0x22, 0xc8, 0x01],
            &long_text,
        ]
        .concat();
        assert_eq!(recording.seen.borrow()[0], expected);
    }

    #[test]
    fn the_answer_decides_and_a_missing_or_broken_one_leaves_it_to_the_vm() {
        let key = HostKey(vec![1]);
        let ask = |answer: Option<&[u8]>| check(&host(answer), Alg::RS256, &key, b"m", b"s");
        assert_eq!(ask(Some(&[0x08, 0x01])), Some(true));
        // result false is absent from the wire; an error text may come with it.
        assert_eq!(ask(Some(&[])), Some(false));
        assert_eq!(ask(Some(&[0x12, 0x03, b'b', b'a', b'd'])), Some(false));
        assert_eq!(ask(Some(&[0x08, 0x00, 0x12, 0x00])), Some(false));
        // The last value of a repeated field wins (protobuf's rule).
        assert_eq!(ask(Some(&[0x08, 0x01, 0x08, 0x00])), Some(false));
        // Not a VerifySignatureResult: the VM decides.
        assert_eq!(ask(Some(&[0x12, 0x05, b'x'])), None);
        assert_eq!(ask(Some(&[0x18, 0x01])), None);
        assert_eq!(ask(Some(&[0x08])), None);
        assert_eq!(ask(None), None);
    }

    #[test]
    fn only_what_the_host_can_check_is_sent() {
        let key = HostKey(vec![1]);
        for alg in [Alg::PS256, Alg::PS512, Alg::EdDSA, Alg::HS256] {
            let recording = host(Some(&[0x08, 0x01]));
            assert_eq!(check(&recording, alg, &key, b"m", b"s"), None, "{alg}");
            assert!(recording.seen.borrow().is_empty());
        }
        // An ECDSA signature of the wrong length is refused without asking.
        let recording = host(Some(&[0x08, 0x01]));
        assert_eq!(
            check(&recording, Alg::ES256, &key, b"m", &[1; 63]),
            Some(false)
        );
        assert!(recording.seen.borrow().is_empty());
    }
}
