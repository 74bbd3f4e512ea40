//! The compact JWS serialization of a JWT: `header.payload.signature`, each part
//! base64url without padding.
//!
//! Parsing is strict and bounded: the caller caps the size before calling [`parse`];
//! every part must be canonical base64url; header and payload must be JSON objects
//! that name no member twice ([`strict_json`](crate::strict_json)).
//! Parsing checks nothing about trust: the signature and the claims are checked by
//! [`verifier`](crate::verifier) and [`claims`](crate::claims).

use crate::error::AuthError;
use crate::strict_json::{self, StrictJsonError};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};
use std::fmt;

/// A JWS signature algorithm this filter can verify (RFC 7518 §3, RFC 8037 for EdDSA).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl Alg {
    /// Every algorithm, the asymmetric ones first.
    pub const ALL: [Alg; 12] = [
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::EdDSA,
        Alg::HS256,
        Alg::HS384,
        Alg::HS512,
    ];

    /// Every asymmetric algorithm: the default allow-list of a provider.
    pub const ASYMMETRIC: &'static [Alg] = Alg::ALL.split_at(9).0;

    /// The `alg` name, case-sensitive as RFC 7515 §4.1.1 requires.
    pub fn from_name(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|alg| alg.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Alg::HS256 => "HS256",
            Alg::HS384 => "HS384",
            Alg::HS512 => "HS512",
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::EdDSA => "EdDSA",
        }
    }

    pub fn is_hmac(self) -> bool {
        matches!(self, Alg::HS256 | Alg::HS384 | Alg::HS512)
    }

    /// The shortest secret an HMAC algorithm takes, in bytes: the size of its hash
    /// (RFC 7518 §3.2). `None` for the others.
    pub fn min_secret_bytes(self) -> Option<usize> {
        match self {
            Alg::HS256 => Some(32),
            Alg::HS384 => Some(48),
            Alg::HS512 => Some(64),
            _ => None,
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the JOSE header says. Unknown members other than `crit` are ignored, as RFC
/// 7515 §4 allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// `Err(name)` for an algorithm this filter does not implement (`none` included).
    pub alg: Result<Alg, String>,
    pub kid: Option<String>,
    /// The `typ` media type as [`media_type`] writes it (lower case, without an
    /// `application/` prefix).
    pub typ: Option<String>,
    /// The header has a `crit` member. This filter understands no JWS extension, so a
    /// token that marks any as critical must be refused (RFC 7515 §4.1.11).
    pub has_crit: bool,
}

/// A parsed (not yet trusted) token.
#[derive(Debug, Clone)]
pub struct Token<'a> {
    pub header: Header,
    pub claims: Map<String, Value>,
    /// `header.payload` exactly as received: what the signature covers.
    pub signing_input: &'a [u8],
    pub signature: Vec<u8>,
}

/// Parses the compact serialization. Any structural problem is
/// [`AuthError::Malformed`] with a short reason that never quotes the token.
pub fn parse(text: &str) -> Result<Token<'_>, AuthError> {
    #[cfg(test)]
    PARSES.with(|count| count.set(count.get() + 1));
    let mut parts = text.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed("not three dot-separated parts"));
    };
    let header_json = decode(header)?;
    let payload_json = decode(payload)?;
    let signature = decode(signature)?;
    if signature.is_empty() {
        return Err(AuthError::Malformed("empty signature"));
    }
    let header_map = strict_json::object(&header_json).map_err(|err| {
        AuthError::Malformed(match err {
            StrictJsonError::NotAnObject => "header is not a JSON object",
            StrictJsonError::DuplicateMember => "header names a member twice",
        })
    })?;
    let claims = strict_json::object(&payload_json).map_err(|err| {
        AuthError::Malformed(match err {
            StrictJsonError::NotAnObject => "payload is not a JSON object",
            StrictJsonError::DuplicateMember => "payload names a member twice",
        })
    })?;
    let signing_input = &text.as_bytes()[..header.len() + 1 + payload.len()];
    Ok(Token {
        header: parse_header_fields(header_map)?,
        claims,
        signing_input,
        signature,
    })
}

#[cfg(test)]
thread_local! {
    /// Tokens parsed on this thread, for tests that count the work a tick does.
    pub static PARSES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn decode(part: &str) -> Result<Vec<u8>, AuthError> {
    if part.is_empty() {
        return Err(AuthError::Malformed("empty part"));
    }
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::Malformed("invalid base64url"))
}

fn parse_header_fields(map: Map<String, Value>) -> Result<Header, AuthError> {
    let alg = match map.get("alg") {
        Some(Value::String(name)) => Alg::from_name(name).ok_or_else(|| name.clone()),
        _ => return Err(AuthError::Malformed("header has no \"alg\" string")),
    };
    let kid = match map.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(AuthError::Malformed("\"kid\" is not a string")),
    };
    let typ = match map.get("typ") {
        None => None,
        Some(Value::String(typ)) => Some(media_type(typ)),
        Some(_) => return Err(AuthError::Malformed("\"typ\" is not a string")),
    };
    Ok(Header {
        alg,
        kid,
        typ,
        has_crit: map.contains_key("crit"),
    })
}

/// A `typ` value in the form it is compared in: media types are case-insensitive, and
/// a `typ` without a `/` stands for `application/<typ>` (RFC 7515 §4.1.9), so
/// `"at+JWT"` and `"application/at+jwt"` both read `at+jwt`.
pub fn media_type(typ: &str) -> String {
    let lower = typ.to_ascii_lowercase();
    match lower.strip_prefix("application/") {
        Some(rest) if !rest.contains('/') => rest.to_owned(),
        _ => lower,
    }
}

/// The `iss` claim of a token that has not been verified yet, read only to choose
/// between providers that look for tokens in the same place.
pub fn unverified_issuer(text: &str) -> Option<String> {
    let payload = text.split('.').nth(1)?;
    let json = URL_SAFE_NO_PAD.decode(payload).ok()?;
    match serde_json::from_slice::<Value>(&json).ok()? {
        Value::Object(map) => match map.get("iss") {
            Some(Value::String(iss)) => Some(iss.clone()),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn token(header: &str, payload: &str, sig: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            b64(header.as_bytes()),
            b64(payload.as_bytes()),
            b64(sig)
        )
    }

    #[test]
    fn parses_header_claims_and_signing_input() {
        let text = token(
            r#"{"alg":"RS256","kid":"k1","typ":"JWT"}"#,
            r#"{"sub":"alice"}"#,
            b"sig",
        );
        let parsed = parse(&text).unwrap();
        assert_eq!(parsed.header.alg, Ok(Alg::RS256));
        assert_eq!(parsed.header.kid.as_deref(), Some("k1"));
        assert_eq!(parsed.header.typ.as_deref(), Some("jwt"));
        assert!(!parsed.header.has_crit);
        assert_eq!(parsed.claims["sub"], "alice");
        assert_eq!(parsed.signature, b"sig");
        let dot = text.rfind('.').unwrap();
        assert_eq!(parsed.signing_input, &text.as_bytes()[..dot]);
    }

    #[test]
    fn unknown_and_none_algorithms_are_reported_by_name() {
        let text = token(r#"{"alg":"none"}"#, "{}", b"x");
        assert_eq!(parse(&text).unwrap().header.alg, Err("none".to_owned()));
        // Names are case-sensitive: "rs256" is not RS256.
        let text = token(r#"{"alg":"rs256"}"#, "{}", b"x");
        assert_eq!(parse(&text).unwrap().header.alg, Err("rs256".to_owned()));
    }

    #[test]
    fn crit_is_noticed() {
        let text = token(r#"{"alg":"ES256","crit":["exp"]}"#, "{}", b"x");
        assert!(parse(&text).unwrap().header.has_crit);
    }

    #[test]
    fn typ_is_read_as_a_case_insensitive_media_type() {
        let typ = |header: &str| parse(&token(header, "{}", b"x")).map(|t| t.header.typ);
        assert_eq!(typ(r#"{"alg":"ES256"}"#), Ok(None));
        for spelling in [
            "at+jwt",
            "AT+JWT",
            "application/at+jwt",
            "Application/At+JWT",
        ] {
            let header = format!(r#"{{"alg":"ES256","typ":"{spelling}"}}"#);
            assert_eq!(typ(&header), Ok(Some("at+jwt".to_owned())), "{spelling}");
        }
        // Only `application/` is implied; another type keeps its own prefix.
        assert_eq!(
            typ(r#"{"alg":"ES256","typ":"text/jwt"}"#),
            Ok(Some("text/jwt".to_owned()))
        );
        assert_eq!(
            typ(r#"{"alg":"ES256","typ":7}"#),
            Err(AuthError::Malformed("\"typ\" is not a string"))
        );
    }

    #[test]
    fn a_member_named_twice_in_header_or_payload_is_malformed() {
        let header = r#"{"alg":"RS256","kid":"a","kid":"b"}"#;
        assert_eq!(
            parse(&token(header, "{}", b"x")).map(|_| ()),
            Err(AuthError::Malformed("header names a member twice"))
        );
        let payload = r#"{"sub":"alice","sub":"admin"}"#;
        assert_eq!(
            parse(&token(r#"{"alg":"RS256"}"#, payload, b"x")).map(|_| ()),
            Err(AuthError::Malformed("payload names a member twice"))
        );
        let nested = r#"{"org":{"tenant":"a","tenant":"b"}}"#;
        assert_eq!(
            parse(&token(r#"{"alg":"RS256"}"#, nested, b"x")).map(|_| ()),
            Err(AuthError::Malformed("payload names a member twice"))
        );
    }

    #[test]
    fn hmac_secrets_are_at_least_as_long_as_the_hash() {
        let sizes: Vec<_> = Alg::ALL.iter().map(|a| a.min_secret_bytes()).collect();
        assert_eq!(&sizes[9..], [Some(32), Some(48), Some(64)]);
        assert!(sizes[..9].iter().all(Option::is_none));
    }

    #[test]
    fn structural_problems_are_malformed() {
        let good_header = b64(br#"{"alg":"RS256"}"#);
        let good_payload = b64(br#"{"sub":"a"}"#);
        let cases = [
            String::new(),
            "abc".to_owned(),
            format!("{good_header}.{good_payload}"),
            format!("{good_header}.{good_payload}.c2ln.extra"),
            format!("{good_header}.{good_payload}."),
            format!("{good_header}..c2ln"),
            format!("{good_header}.{good_payload}.c2ln="), // padding
            format!("{good_header}.{good_payload}.c2l+"),  // standard alphabet
            format!("{good_header}.{good_payload}.c2lu!"), // garbage
            format!("{}.{good_payload}.c2ln", b64(b"[1,2]")),
            format!("{}.{good_payload}.c2ln", b64(b"{\"alg\":5}")),
            format!(
                "{}.{good_payload}.c2ln",
                b64(b"{\"alg\":\"RS256\",\"kid\":7}")
            ),
            format!("{good_header}.{}.c2ln", b64(b"\"just a string\"")),
            format!("{good_header}.{}.c2ln", b64(b"{not json")),
        ];
        for text in cases {
            assert!(
                matches!(parse(&text), Err(AuthError::Malformed(_))),
                "{text:?} parsed"
            );
        }
    }

    #[test]
    fn unverified_issuer_reads_iss_only_when_it_is_a_string() {
        assert_eq!(
            unverified_issuer(&token(r#"{"alg":"RS256"}"#, r#"{"iss":"https://a"}"#, b"s")),
            Some("https://a".to_owned())
        );
        assert_eq!(
            unverified_issuer(&token(r#"{"alg":"RS256"}"#, r#"{"iss":1}"#, b"s")),
            None
        );
        assert_eq!(unverified_issuer("garbage"), None);
    }
}
