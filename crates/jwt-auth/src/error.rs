//! Every reason to refuse a request, and the one answer each gets.
//!
//! [`AuthError::answer`] is the only place that decides a status code, a
//! `WWW-Authenticate` challenge (RFC 6750 §3) or a body. Descriptions are short fixed
//! texts: they never quote the token or anything read from it.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No token where the route requires one.
    MissingToken,
    /// Larger than `max_token_bytes`.
    TooLarge,
    /// Not a well-formed compact JWS.
    Malformed(&'static str),
    /// `alg` is `none`, unknown, or not allowed for the provider.
    AlgorithmNotAllowed,
    /// The header marks an extension as critical (`crit`); we implement none.
    UnsupportedCritical,
    /// No key with the token's `kid`, even after a refetch of the JWKS.
    UnknownKey,
    /// A key was found, but it cannot verify this `alg` (e.g. HS256 with an RSA key).
    KeyMismatch,
    BadSignature,
    Expired,
    NotYetValid,
    IssuedInFuture,
    /// `exp` - `iat` is longer than the provider's `max_lifetime`.
    LifetimeTooLong,
    /// A claim that must be there is absent or not a number; holds the description,
    /// e.g. "token has no exp claim".
    MissingClaim(&'static str),
    WrongIssuer,
    WrongAudience,
    /// The token is valid but lacks scopes the route requires (space-separated list).
    InsufficientScope(String),
    /// The keys to verify the token could not be had in time: the gateway's problem.
    KeysUnavailable,
    /// The header's `typ` is absent or not one of the provider's `required_typ`.
    WrongType,
    /// The token names no `kid` and more keys fit its `alg` than a token without `kid`
    /// is tried against ([`MAX_KEYS_WITHOUT_KID`](crate::authenticator::MAX_KEYS_WITHOUT_KID)).
    KidRequired,
    /// The request would have to wait for keys, but `max_waiting_requests` requests of
    /// this VM already do; try again in `retry_after` seconds.
    TooManyWaiting {
        retry_after: u64,
    },
    /// Envoy refused to set or remove an identity header (or the token header): the
    /// request must not go upstream with what the client sent.
    HeaderEditFailed,
}

/// An HTTP answer to send instead of forwarding the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// Lower-case names.
    pub headers: Vec<(&'static str, String)>,
    /// JSON: `{"error": code, "message": text}`.
    pub body: String,
}

impl AuthError {
    /// The metric suffix: `wasmgate.jwt.denied.<reason>`.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::TooLarge => "too_large",
            AuthError::Malformed(_) => "malformed",
            AuthError::AlgorithmNotAllowed => "algorithm_not_allowed",
            AuthError::UnsupportedCritical => "unsupported_crit",
            AuthError::UnknownKey => "unknown_key",
            AuthError::KeyMismatch => "key_mismatch",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::IssuedInFuture => "issued_in_future",
            AuthError::LifetimeTooLong => "lifetime_too_long",
            AuthError::MissingClaim(_) => "missing_claim",
            AuthError::WrongIssuer => "wrong_issuer",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::InsufficientScope(_) => "insufficient_scope",
            AuthError::KeysUnavailable => "keys_unavailable",
            AuthError::WrongType => "wrong_type",
            AuthError::KidRequired => "kid_required",
            AuthError::TooManyWaiting { .. } => "too_many_waiting",
            AuthError::HeaderEditFailed => "header_edit_failed",
        }
    }

    /// Every reason, for defining one counter each up front.
    pub const REASONS: [&'static str; 21] = [
        "missing_token",
        "too_large",
        "malformed",
        "algorithm_not_allowed",
        "unsupported_crit",
        "unknown_key",
        "key_mismatch",
        "bad_signature",
        "expired",
        "not_yet_valid",
        "issued_in_future",
        "lifetime_too_long",
        "missing_claim",
        "wrong_issuer",
        "wrong_audience",
        "insufficient_scope",
        "keys_unavailable",
        "wrong_type",
        "kid_required",
        "too_many_waiting",
        "header_edit_failed",
    ];

    /// A short description, safe to show to the client and to log.
    pub fn description(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "a bearer token is required",
            AuthError::TooLarge => "token too large",
            AuthError::Malformed(why) => why,
            AuthError::AlgorithmNotAllowed => "signing algorithm not allowed",
            AuthError::UnsupportedCritical => "unsupported critical header",
            AuthError::UnknownKey => "unknown signing key",
            AuthError::KeyMismatch => "signing key does not match the algorithm",
            AuthError::BadSignature => "signature does not verify",
            AuthError::Expired => "token expired",
            AuthError::NotYetValid => "token not yet valid",
            AuthError::IssuedInFuture => "token issued in the future",
            AuthError::LifetimeTooLong => "token lifetime too long",
            AuthError::MissingClaim(description) => description,
            AuthError::WrongIssuer => "issuer not accepted",
            AuthError::WrongAudience => "audience not accepted",
            AuthError::InsufficientScope(_) => "insufficient scope",
            AuthError::KeysUnavailable => "signing keys are temporarily unavailable",
            AuthError::WrongType => "token type not accepted",
            AuthError::KidRequired => "token has no kid and several keys fit",
            AuthError::TooManyWaiting { .. } => "too many requests are waiting for signing keys",
            AuthError::HeaderEditFailed => "identity headers could not be set",
        }
    }

    /// The answer for this error. `realm` is the configured `realm` (validated to hold
    /// no quote, backslash or control character).
    pub fn answer(&self, realm: &str) -> Answer {
        let (status, code, challenge) = match self {
            // RFC 6750 §3.1: no error code when the request carried no credentials.
            AuthError::MissingToken => (401, "missing_token", Some(format!("Bearer realm=\"{realm}\""))),
            AuthError::InsufficientScope(scopes) => (
                403,
                "insufficient_scope",
                Some(format!(
                    "Bearer realm=\"{realm}\", error=\"insufficient_scope\", error_description=\"{}\", scope=\"{scopes}\"",
                    self.description()
                )),
            ),
            AuthError::KeysUnavailable | AuthError::TooManyWaiting { .. } => {
                (503, "temporarily_unavailable", None)
            }
            AuthError::HeaderEditFailed => (500, "internal_error", None),
            _ => (
                401,
                "invalid_token",
                Some(format!(
                    "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{}\"",
                    self.description()
                )),
            ),
        };
        let mut headers = vec![("content-type", "application/json".to_owned())];
        if let Some(challenge) = challenge {
            headers.push(("www-authenticate", challenge));
        }
        if let AuthError::TooManyWaiting { retry_after } = self {
            headers.push(("retry-after", retry_after.to_string()));
        }
        let body = serde_json::json!({"error": code, "message": self.description()}).to_string();
        Answer {
            status,
            headers,
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge(answer: &Answer) -> Option<&str> {
        answer
            .headers
            .iter()
            .find(|(name, _)| *name == "www-authenticate")
            .map(|(_, value)| value.as_str())
    }

    #[test]
    fn missing_token_is_a_bare_challenge() {
        let answer = AuthError::MissingToken.answer("api");
        assert_eq!(answer.status, 401);
        assert_eq!(challenge(&answer), Some("Bearer realm=\"api\""));
        let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
        assert_eq!(body["error"], "missing_token");
    }

    #[test]
    fn invalid_tokens_say_invalid_token_with_a_description() {
        let answer = AuthError::Expired.answer("api");
        assert_eq!(answer.status, 401);
        assert_eq!(
            challenge(&answer),
            Some("Bearer realm=\"api\", error=\"invalid_token\", error_description=\"token expired\"")
        );
        let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
        assert_eq!(body["error"], "invalid_token");
        assert_eq!(body["message"], "token expired");
    }

    #[test]
    fn missing_scope_is_403_naming_the_scopes() {
        let answer = AuthError::InsufficientScope("orders:write".into()).answer("api");
        assert_eq!(answer.status, 403);
        let value = challenge(&answer).unwrap();
        assert!(value.contains("error=\"insufficient_scope\""), "{value}");
        assert!(value.contains("scope=\"orders:write\""), "{value}");
    }

    #[test]
    fn unavailable_keys_are_503_without_a_challenge() {
        let answer = AuthError::KeysUnavailable.answer("api");
        assert_eq!(answer.status, 503);
        assert_eq!(challenge(&answer), None);
    }

    #[test]
    fn too_many_waiting_is_503_with_retry_after() {
        let answer = AuthError::TooManyWaiting { retry_after: 3 }.answer("api");
        assert_eq!(answer.status, 503);
        assert_eq!(challenge(&answer), None);
        assert!(answer.headers.contains(&("retry-after", "3".to_owned())));
        let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
        assert_eq!(body["error"], "temporarily_unavailable");
    }

    #[test]
    fn a_failed_header_edit_is_500_without_a_challenge() {
        let answer = AuthError::HeaderEditFailed.answer("api");
        assert_eq!(answer.status, 500);
        assert_eq!(challenge(&answer), None);
    }

    #[test]
    fn wrong_type_and_missing_kid_are_invalid_tokens() {
        for error in [AuthError::WrongType, AuthError::KidRequired] {
            let answer = error.answer("api");
            assert_eq!(answer.status, 401);
            assert_eq!(
                challenge(&answer),
                Some(
                    format!(
                        "Bearer realm=\"api\", error=\"invalid_token\", error_description=\"{}\"",
                        error.description()
                    )
                    .as_str()
                )
            );
        }
    }

    #[test]
    fn every_reason_is_listed_once() {
        let errors = [
            AuthError::MissingToken,
            AuthError::TooLarge,
            AuthError::Malformed("x"),
            AuthError::AlgorithmNotAllowed,
            AuthError::UnsupportedCritical,
            AuthError::UnknownKey,
            AuthError::KeyMismatch,
            AuthError::BadSignature,
            AuthError::Expired,
            AuthError::NotYetValid,
            AuthError::IssuedInFuture,
            AuthError::LifetimeTooLong,
            AuthError::MissingClaim("token has no exp claim"),
            AuthError::WrongIssuer,
            AuthError::WrongAudience,
            AuthError::InsufficientScope(String::new()),
            AuthError::KeysUnavailable,
            AuthError::WrongType,
            AuthError::KidRequired,
            AuthError::TooManyWaiting { retry_after: 1 },
            AuthError::HeaderEditFailed,
        ];
        let reasons: Vec<_> = errors.iter().map(AuthError::reason).collect();
        assert_eq!(reasons, AuthError::REASONS);
        for error in &errors {
            let description = error.description();
            assert!(!description.contains(['"', '\\']), "{description}");
        }
    }
}
