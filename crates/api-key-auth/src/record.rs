//! The lookup contract: what the filter asks a key store and how it reads the answer.
//!
//! `GET <path_prefix>/<64 hex digits of the key's hash>` answers
//!
//! * `200` with a JSON [`KeyRecord`]: the key exists (active, revoked, or expired);
//! * `404` with the JSON body `{"error": "not_found", ...}` ([`NOT_FOUND_ERROR`]): no
//!   such key. A 404 without it is not the store's answer (a misrouted path, an
//!   ingress's default backend) and counts as an error, never as "no such key";
//! * anything else, no answer, or a body that breaks the contract: the store is
//!   unavailable ([`StoreError`]), and the filter's stale-if-error policy applies.
//!
//! Both sides use these types: the filter to read answers, `wasmgate-keystore` to
//! write them, so the contract has one definition.

use crate::timestamp::{format_rfc3339, parse_rfc3339};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use wasmgate_config::check_header_value;

/// Longest answer body the filter reads; a longer one breaks the contract.
pub const MAX_RESPONSE_BODY: usize = 16 * 1024;
/// Longest `key_id`, `tenant_id`, `plan` or scope, in bytes (they become header values).
pub const MAX_FIELD_LEN: usize = 256;
/// Most scopes a key may carry.
pub const MAX_SCOPES: usize = 64;
/// The `error` member of the body of a `404` that means "no such key".
pub const NOT_FOUND_ERROR: &str = "not_found";

/// What the key store knows about one key. Unknown fields in the JSON are ignored, so a
/// store may return more than the filter reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Stable identifier of the key (never the key itself); forwarded upstream.
    pub key_id: String,
    pub tenant_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    pub status: KeyStatus,
    /// Unix seconds; written as an RFC 3339 timestamp, absent or `null` for never.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "write_time",
        deserialize_with = "read_time"
    )]
    pub expires_at: Option<u64>,
}

/// `"active"` lets requests through; `"revoked"` and any other value deny them, so a
/// store can add states (say `"suspended"`) without the gateway letting them pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", from = "String")]
pub enum KeyStatus {
    Active,
    Revoked,
}

impl From<String> for KeyStatus {
    fn from(text: String) -> Self {
        if text == "active" {
            Self::Active
        } else {
            Self::Revoked
        }
    }
}

impl KeyRecord {
    /// Refuses records whose fields could not be forwarded safely as header values.
    pub fn check(&self) -> Result<(), String> {
        check_field("key_id", &self.key_id)?;
        check_field("tenant_id", &self.tenant_id)?;
        if let Some(plan) = &self.plan {
            check_field("plan", plan)?;
        }
        if self.scopes.len() > MAX_SCOPES {
            return Err(format!("more than {MAX_SCOPES} scopes"));
        }
        for scope in &self.scopes {
            check_field("scopes[]", scope)?;
            if scope.contains(char::is_whitespace) {
                return Err(format!("scope {scope:?} contains whitespace"));
            }
        }
        Ok(())
    }

    /// Whether the key has expired at `now` (Unix seconds).
    pub fn expired_at(&self, now_seconds: u64) -> bool {
        self.expires_at.is_some_and(|at| now_seconds >= at)
    }
}

fn check_field(name: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{name} is empty"));
    }
    if value.len() > MAX_FIELD_LEN {
        return Err(format!("{name} is longer than {MAX_FIELD_LEN} bytes"));
    }
    check_header_value(value).map_err(|problem| format!("{name}: {problem}"))
}

fn write_time<S: Serializer>(time: &Option<u64>, serializer: S) -> Result<S::Ok, S::Error> {
    match time {
        Some(seconds) => serializer.serialize_str(&format_rfc3339(*seconds)),
        None => serializer.serialize_none(),
    }
}

fn read_time<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    Option::<String>::deserialize(deserializer)?
        .map(|text| parse_rfc3339(&text).map_err(serde::de::Error::custom))
        .transpose()
}

/// The store's answer about one hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreAnswer {
    Found(KeyRecord),
    NotFound,
}

/// Why the store could not answer. Each kind is counted in its own metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The callout could not be sent (for example, the cluster does not exist).
    Dispatch,
    /// The callout ended without any HTTP answer (Envoy reports no headers).
    NoResponse,
    /// An HTTP status other than 200 or 404. This includes Envoy's own answers when
    /// the store cannot be reached: 504 at the timeout, 503 when connecting fails.
    Status(u16),
    /// A 200 or 404 whose body breaks the contract.
    InvalidResponse(String),
}

impl StoreError {
    /// The metric suffix: `wasmgate.api_key.store_error.<kind>`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Dispatch => "dispatch",
            Self::NoResponse => "no_response",
            Self::Status(_) => "status",
            Self::InvalidResponse(_) => "invalid_response",
        }
    }
}

/// Reads a lookup answer. `status` is `None` when the callout got no HTTP answer;
/// `truncated` says the body was longer than [`MAX_RESPONSE_BODY`].
pub fn read_lookup_response(
    status: Option<u16>,
    body: &[u8],
    truncated: bool,
) -> Result<StoreAnswer, StoreError> {
    match status {
        None => Err(StoreError::NoResponse),
        Some(404) => {
            // A JSON object (other members are ignored) whose `error` says so.
            let object: Option<serde_json::Map<String, serde_json::Value>> =
                serde_json::from_slice(body).ok();
            let error = object.as_ref().and_then(|o| o.get("error")?.as_str());
            match error {
                Some(NOT_FOUND_ERROR) if !truncated => Ok(StoreAnswer::NotFound),
                _ => Err(StoreError::InvalidResponse(format!(
                    "a 404 without the body {{\"error\": \"{NOT_FOUND_ERROR}\"}}: not the key store's answer"
                ))),
            }
        }
        Some(200) => {
            if truncated {
                return Err(StoreError::InvalidResponse(format!(
                    "body longer than {MAX_RESPONSE_BODY} bytes"
                )));
            }
            let record: KeyRecord = serde_json::from_slice(body)
                .map_err(|err| StoreError::InvalidResponse(err.to_string()))?;
            record.check().map_err(StoreError::InvalidResponse)?;
            Ok(StoreAnswer::Found(record))
        }
        Some(other) => Err(StoreError::Status(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(json: &str) -> Result<StoreAnswer, StoreError> {
        read_lookup_response(Some(200), json.as_bytes(), false)
    }

    #[test]
    fn a_full_record() {
        let answer = found(
            r#"{"key_id":"key_1","tenant_id":"acme","plan":"gold","scopes":["orders:read"],
                "status":"active","expires_at":"2027-01-31T00:00:00Z","created_at":"ignored"}"#,
        );
        let StoreAnswer::Found(record) = answer.unwrap() else {
            panic!("not found")
        };
        assert_eq!(record.key_id, "key_1");
        assert_eq!(record.plan.as_deref(), Some("gold"));
        assert_eq!(record.scopes, ["orders:read"]);
        assert_eq!(record.status, KeyStatus::Active);
        assert_eq!(record.expires_at, Some(1_801_353_600));
        assert!(!record.expired_at(1_801_353_599));
        assert!(record.expired_at(1_801_353_600));
    }

    #[test]
    fn minimal_record_and_round_trip() {
        let answer = found(r#"{"key_id":"k","tenant_id":"t","status":"active","expires_at":null}"#);
        let StoreAnswer::Found(record) = answer.unwrap() else {
            panic!("not found")
        };
        assert_eq!(record.plan, None);
        assert!(record.scopes.is_empty());
        assert_eq!(record.expires_at, None);
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(
            json,
            r#"{"key_id":"k","tenant_id":"t","scopes":[],"status":"active"}"#
        );
        assert_eq!(found(&json).unwrap(), StoreAnswer::Found(record));
    }

    #[test]
    fn any_status_but_active_denies() {
        for status in ["revoked", "suspended", "ACTIVE", ""] {
            let json = format!(r#"{{"key_id":"k","tenant_id":"t","status":"{status}"}}"#);
            let Ok(StoreAnswer::Found(record)) = found(&json) else {
                panic!("{status}")
            };
            assert_eq!(record.status, KeyStatus::Revoked, "{status}");
        }
    }

    #[test]
    fn a_404_is_no_such_key_only_with_the_contracts_body() {
        for body in [
            r#"{"error":"not_found","message":"no such key"}"#,
            r#"{"error":"not_found"}"#,
            r#" {"message":"x","error":"not_found","extra":[1]} "#,
        ] {
            assert_eq!(
                read_lookup_response(Some(404), body.as_bytes(), false),
                Ok(StoreAnswer::NotFound),
                "{body}"
            );
        }
        // What a misrouted lookup gets from something that is not the store.
        for body in [
            "",
            "404 page not found",
            "<html><body>Not Found</body></html>",
            r#"{"error":"Not Found"}"#,
            r#"{"error":404}"#,
            r#"{"status":"not_found"}"#,
            r#"["not_found"]"#,
            r#"{"error":"not_found""#,
        ] {
            let err = read_lookup_response(Some(404), body.as_bytes(), false).unwrap_err();
            assert_eq!(err.kind(), "invalid_response", "{body}");
        }
        // Truncated: whatever the first bytes say, it is not the contract's small body.
        assert!(read_lookup_response(Some(404), br#"{"error":"not_found"}"#, true).is_err());
    }

    #[test]
    fn statuses_other_than_200_and_404() {
        assert_eq!(
            read_lookup_response(None, b"", false),
            Err(StoreError::NoResponse)
        );
        assert_eq!(
            read_lookup_response(Some(503), b"{}", false),
            Err(StoreError::Status(503))
        );
        assert_eq!(
            read_lookup_response(Some(400), b"", false),
            Err(StoreError::Status(400))
        );
    }

    #[test]
    fn bodies_that_break_the_contract() {
        let long = "x".repeat(MAX_FIELD_LEN + 1);
        for body in [
            "not json".to_owned(),
            r#"{"tenant_id":"t","status":"active"}"#.to_owned(),
            r#"{"key_id":"","tenant_id":"t","status":"active"}"#.to_owned(),
            r#"{"key_id":"k","tenant_id":"a\r\nx-evil: 1","status":"active"}"#.to_owned(),
            format!(r#"{{"key_id":"k","tenant_id":"{long}","status":"active"}}"#),
            r#"{"key_id":"k","tenant_id":"t","status":"active","scopes":["a b"]}"#.to_owned(),
            r#"{"key_id":"k","tenant_id":"t","status":"active","expires_at":"tomorrow"}"#
                .to_owned(),
            r#"{"key_id":"k","tenant_id":"t","status":"active","expires_at":1801526400}"#
                .to_owned(),
        ] {
            let err = found(&body).unwrap_err();
            assert!(matches!(err, StoreError::InvalidResponse(_)), "{body}");
            assert_eq!(err.kind(), "invalid_response");
        }
        assert!(matches!(
            read_lookup_response(Some(200), b"{}", true),
            Err(StoreError::InvalidResponse(_))
        ));
    }
}
