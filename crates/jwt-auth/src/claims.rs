//! The registered claims a provider checks (RFC 7519 §4.1), scopes, and the values
//! forwarded upstream as headers.
//!
//! Runs only on tokens whose signature verified. Times are seconds in the token
//! (NumericDate, fractions allowed) and milliseconds in `now`.

use crate::error::AuthError;
use serde_json::{Map, Value};

/// Which `aud` values a provider accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audiences {
    /// `aud` must name one of these (never empty).
    OneOf(Vec<String>),
    /// `aud` is not checked: every token of the issuer is meant for this gateway.
    /// Only where the configuration says so (`"audiences": "any"`).
    Any,
}

/// What a provider requires of a verified token's claims.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimRules {
    pub issuer: String,
    pub audiences: Audiences,
    /// Tolerance for clocks that disagree, in seconds, applied to `exp`, `nbf`, `iat`.
    pub clock_skew_secs: u64,
    pub require_exp: bool,
    /// Largest `exp - iat` accepted, in seconds.
    pub max_lifetime_secs: Option<u64>,
}

/// Until when a verified token stays valid, in milliseconds since the epoch
/// (`exp` plus the skew); `None` when it has no `exp`.
pub type ValidUntil = Option<u64>;

impl ClaimRules {
    /// Checks time, issuer, audience and lifetime. `now` in milliseconds.
    pub fn check(&self, claims: &Map<String, Value>, now: u64) -> Result<ValidUntil, AuthError> {
        let now_secs = now as f64 / 1000.0;
        let skew = self.clock_skew_secs as f64;
        let exp = numeric_date(claims, "exp")?;
        let nbf = numeric_date(claims, "nbf")?;
        let iat = numeric_date(claims, "iat")?;

        match exp {
            Some(exp) if now_secs > exp + skew => return Err(AuthError::Expired),
            None if self.require_exp => {
                return Err(AuthError::MissingClaim("token has no exp claim"))
            }
            _ => {}
        }
        if nbf.is_some_and(|nbf| nbf > now_secs + skew) {
            return Err(AuthError::NotYetValid);
        }
        if iat.is_some_and(|iat| iat > now_secs + skew) {
            return Err(AuthError::IssuedInFuture);
        }
        if let Some(max) = self.max_lifetime_secs {
            let exp = exp.ok_or(AuthError::MissingClaim("token has no exp claim"))?;
            let iat = iat.ok_or(AuthError::MissingClaim("token has no iat claim"))?;
            if exp - iat > max as f64 {
                return Err(AuthError::LifetimeTooLong);
            }
        }
        if claims.get("iss").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err(AuthError::WrongIssuer);
        }
        if let Audiences::OneOf(accepted) = &self.audiences {
            if !audience_matches(accepted, claims.get("aud")) {
                return Err(AuthError::WrongAudience);
            }
        }
        Ok(exp.map(|exp| ((exp + skew) * 1000.0).max(0.0) as u64))
    }
}

/// RFC 7519 §4.1.3: `aud` is a string or an array of strings; one must be accepted.
fn audience_matches(accepted: &[String], aud: Option<&Value>) -> bool {
    let fits = |value: &Value| {
        value
            .as_str()
            .is_some_and(|aud| accepted.iter().any(|a| a == aud))
    };
    match aud {
        Some(Value::Array(values)) => values.iter().any(fits),
        Some(value) => fits(value),
        None => false,
    }
}

/// A NumericDate claim: absent is `None`; present but not a finite number is an error.
fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<f64>, AuthError> {
    match claims.get(name) {
        None => Ok(None),
        Some(value) => match value.as_f64() {
            Some(secs) if secs.is_finite() => Ok(Some(secs)),
            _ => Err(AuthError::Malformed(match name {
                "exp" => "exp is not a number",
                "nbf" => "nbf is not a number",
                _ => "iat is not a number",
            })),
        },
    }
}

/// The token's scopes: `scope` (space-separated string, RFC 8693 §4.2) or `scp`
/// (array of strings, or a space-separated string).
pub fn scopes(claims: &Map<String, Value>) -> Vec<String> {
    let from = |value: &Value| -> Vec<String> {
        match value {
            Value::String(text) => text.split_whitespace().map(str::to_owned).collect(),
            Value::Array(items) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        }
    };
    claims
        .get("scope")
        .or_else(|| claims.get("scp"))
        .map(from)
        .unwrap_or_default()
}

/// A claim path: a top-level claim name, or a dotted path into nested objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPath(String);

impl ClaimPath {
    pub fn new(path: &str) -> Result<Self, String> {
        if path.is_empty() || path.split('.').any(str::is_empty) {
            return Err(format!(
                "{path:?} is not a claim path (names separated by single dots)"
            ));
        }
        Ok(Self(path.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The claim's value. A top-level claim whose name contains dots (such as
    /// `https://example.com/tenant`) is found before the path is split.
    pub fn find<'a>(&self, claims: &'a Map<String, Value>) -> Option<&'a Value> {
        if let Some(value) = claims.get(&self.0) {
            return Some(value);
        }
        let mut parts = self.0.split('.');
        let mut current = claims.get(parts.next()?)?;
        for part in parts {
            current = current.as_object()?.get(part)?;
        }
        Some(current)
    }
}

/// The longest value forwarded in a header, in bytes.
pub const MAX_HEADER_VALUE_BYTES: usize = 8 * 1024;

/// A claim as a header value: strings as they are, numbers and booleans as JSON,
/// arrays of those joined with single spaces. Objects, nulls, values with control
/// characters, values over 8 KiB and arrays with an item containing whitespace give
/// `None`: nothing is forwarded rather than a mangled value (`["orders:read admin"]`
/// joined would read as two scopes to a service that splits on spaces).
pub fn header_value(value: &Value) -> Option<String> {
    let scalar = |value: &Value| match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    };
    let text = match value {
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().filter_map(scalar).collect();
            if parts.is_empty() || parts.iter().any(|part| part.contains(char::is_whitespace)) {
                return None;
            }
            parts.join(" ")
        }
        other => scalar(other)?,
    };
    if text.len() > MAX_HEADER_VALUE_BYTES || wasmgate_config::check_header_value(&text).is_err() {
        return None;
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: u64 = 1_700_000_000_000;
    const NOW_SECS: i64 = 1_700_000_000;

    fn rules() -> ClaimRules {
        ClaimRules {
            issuer: "https://issuer".into(),
            audiences: Audiences::OneOf(vec!["orders".into(), "billing".into()]),
            clock_skew_secs: 60,
            require_exp: true,
            max_lifetime_secs: None,
        }
    }

    fn claims(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    fn good() -> Value {
        json!({"iss": "https://issuer", "aud": "orders", "exp": NOW_SECS + 3600, "iat": NOW_SECS})
    }

    fn with(field: &str, value: Value) -> Map<String, Value> {
        let mut c = claims(good());
        c.insert(field.into(), value);
        c
    }

    #[test]
    fn a_good_token_is_valid_until_exp_plus_skew() {
        assert_eq!(
            rules().check(&claims(good()), NOW),
            Ok(Some((NOW_SECS as u64 + 3600 + 60) * 1000))
        );
    }

    #[test]
    fn expiry_honours_the_skew_exactly() {
        let r = rules();
        let c = with("exp", json!(NOW_SECS - 60));
        assert!(
            r.check(&c, NOW).is_ok(),
            "exactly at the skew is still valid"
        );
        let c = with("exp", json!(NOW_SECS - 61));
        assert_eq!(r.check(&c, NOW), Err(AuthError::Expired));
        let c = with("exp", json!(NOW_SECS as f64 - 60.5));
        assert_eq!(r.check(&c, NOW), Err(AuthError::Expired));
    }

    #[test]
    fn nbf_and_iat_in_the_future_beyond_skew() {
        let r = rules();
        assert!(r.check(&with("nbf", json!(NOW_SECS + 60)), NOW).is_ok());
        assert_eq!(
            r.check(&with("nbf", json!(NOW_SECS + 61)), NOW),
            Err(AuthError::NotYetValid)
        );
        assert!(r.check(&with("iat", json!(NOW_SECS + 60)), NOW).is_ok());
        assert_eq!(
            r.check(&with("iat", json!(NOW_SECS + 61)), NOW),
            Err(AuthError::IssuedInFuture)
        );
    }

    #[test]
    fn exp_is_required_unless_turned_off() {
        let mut c = claims(good());
        c.remove("exp");
        assert!(matches!(
            rules().check(&c, NOW),
            Err(AuthError::MissingClaim(_))
        ));
        let lenient = ClaimRules {
            require_exp: false,
            ..rules()
        };
        assert_eq!(lenient.check(&c, NOW), Ok(None));
    }

    #[test]
    fn non_numeric_dates_are_malformed() {
        assert!(matches!(
            rules().check(&with("exp", json!("tomorrow")), NOW),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            rules().check(&with("nbf", json!(null)), NOW),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn issuer_must_match_exactly() {
        assert_eq!(
            rules().check(&with("iss", json!("https://issuer/")), NOW),
            Err(AuthError::WrongIssuer)
        );
        let mut c = claims(good());
        c.remove("iss");
        assert_eq!(rules().check(&c, NOW), Err(AuthError::WrongIssuer));
    }

    #[test]
    fn audience_is_any_of_string_or_array() {
        let r = rules();
        assert!(r
            .check(&with("aud", json!(["other", "billing"])), NOW)
            .is_ok());
        assert_eq!(
            r.check(&with("aud", json!(["other"])), NOW),
            Err(AuthError::WrongAudience)
        );
        assert_eq!(
            r.check(&with("aud", json!("other")), NOW),
            Err(AuthError::WrongAudience)
        );
        let mut c = claims(good());
        c.remove("aud");
        assert_eq!(r.check(&c, NOW), Err(AuthError::WrongAudience));
        let unchecked = ClaimRules {
            audiences: Audiences::Any,
            ..rules()
        };
        assert!(unchecked.check(&c, NOW).is_ok());
        assert!(unchecked
            .check(&with("aud", json!("anything")), NOW)
            .is_ok());
    }

    #[test]
    fn max_lifetime_needs_exp_and_iat() {
        let r = ClaimRules {
            max_lifetime_secs: Some(3600),
            ..rules()
        };
        assert!(r.check(&claims(good()), NOW).is_ok());
        assert_eq!(
            r.check(&with("exp", json!(NOW_SECS + 3601)), NOW),
            Err(AuthError::LifetimeTooLong)
        );
        let mut c = claims(good());
        c.remove("iat");
        assert!(matches!(r.check(&c, NOW), Err(AuthError::MissingClaim(_))));
    }

    #[test]
    fn scopes_from_scope_or_scp() {
        assert_eq!(scopes(&claims(json!({"scope": "a  b"}))), ["a", "b"]);
        assert_eq!(scopes(&claims(json!({"scp": ["a", "b", 3]}))), ["a", "b"]);
        assert_eq!(scopes(&claims(json!({"scp": "a b"}))), ["a", "b"]);
        assert_eq!(scopes(&claims(json!({"scope": "a", "scp": ["b"]}))), ["a"]);
        assert!(scopes(&claims(json!({}))).is_empty());
    }

    #[test]
    fn claim_paths_find_nested_and_dotted_names() {
        let c = claims(json!({
            "sub": "alice",
            "org": {"tenant": {"id": "acme"}},
            "https://example.com/tenant": "dotted"
        }));
        let find = |p: &str| ClaimPath::new(p).unwrap().find(&c).cloned();
        assert_eq!(find("sub"), Some(json!("alice")));
        assert_eq!(find("org.tenant.id"), Some(json!("acme")));
        assert_eq!(find("https://example.com/tenant"), Some(json!("dotted")));
        assert_eq!(find("org.missing"), None);
        assert_eq!(find("sub.x"), None);
        assert!(ClaimPath::new("a..b").is_err());
        assert!(ClaimPath::new("").is_err());
    }

    #[test]
    fn header_values_join_arrays_and_refuse_what_cannot_be_a_header() {
        assert_eq!(header_value(&json!("alice")), Some("alice".into()));
        assert_eq!(header_value(&json!(42)), Some("42".into()));
        assert_eq!(header_value(&json!(true)), Some("true".into()));
        assert_eq!(header_value(&json!(["a", "b", 3])), Some("a b 3".into()));
        // An item with a space would split into two for a service that splits on spaces.
        assert_eq!(header_value(&json!(["orders:read admin"])), None);
        assert_eq!(header_value(&json!(["a", "b\tc"])), None);
        assert_eq!(header_value(&json!("a b")), Some("a b".into()));
        assert_eq!(header_value(&json!({"a": 1})), None);
        assert_eq!(header_value(&json!(null)), None);
        assert_eq!(header_value(&json!([])), None);
        assert_eq!(header_value(&json!("a\r\nx-evil: 1")), None);
        assert_eq!(
            header_value(&json!("x".repeat(MAX_HEADER_VALUE_BYTES + 1))),
            None
        );
    }
}
