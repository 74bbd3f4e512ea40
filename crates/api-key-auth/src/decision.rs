//! What happens to a request, and the one HTTP answer each refusal gets.

use crate::config::ApiKeyConfig;
use crate::record::{KeyRecord, KeyStatus, StoreAnswer};

/// Why a request is refused. Unknown, revoked, expired and malformed keys get the
/// same answer, so a client cannot tell which keys exist; the reason is only counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    MissingKey,
    MalformedKey,
    UnknownKey,
    RevokedKey,
    ExpiredKey,
    /// The store could not be asked and nothing usable is cached.
    StoreUnavailable,
    /// Too many lookups in flight (`store.max_in_flight` in this Envoy, or requests
    /// waiting in this worker), and nothing usable is cached. Never fails open: the
    /// store is not down, the gateway is shedding a flood.
    Overloaded,
}

impl Denial {
    /// The metric suffix: `wasmgate.api_key.denied.<reason>`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::MissingKey => "missing",
            Self::MalformedKey => "malformed",
            Self::UnknownKey => "unknown",
            Self::RevokedKey => "revoked",
            Self::ExpiredKey => "expired",
            Self::StoreUnavailable => "store_unavailable",
            Self::Overloaded => "overloaded",
        }
    }

    pub const ALL: [Denial; 7] = [
        Self::MissingKey,
        Self::MalformedKey,
        Self::UnknownKey,
        Self::RevokedKey,
        Self::ExpiredKey,
        Self::StoreUnavailable,
        Self::Overloaded,
    ];
}

/// A local reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u32,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

/// The outcome for a request whose key was looked up (or could not be). An allowed
/// key's record is borrowed from the answer it was judged on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict<'a> {
    Allow(&'a KeyRecord),
    /// The store is unavailable and `fail_open` lets the request through, anonymous.
    FailOpen,
    Deny(Denial),
}

impl ApiKeyConfig {
    /// Judges the store's answer at `now_ms` (Unix milliseconds).
    pub fn judge<'a>(&self, answer: &'a StoreAnswer, now_ms: u64) -> Verdict<'a> {
        match answer {
            StoreAnswer::NotFound => Verdict::Deny(Denial::UnknownKey),
            StoreAnswer::Found(record) if record.status != KeyStatus::Active => {
                Verdict::Deny(Denial::RevokedKey)
            }
            StoreAnswer::Found(record) if record.expired_at(now_ms / 1000) => {
                Verdict::Deny(Denial::ExpiredKey)
            }
            StoreAnswer::Found(record) => Verdict::Allow(record),
        }
    }

    /// The verdict when the store cannot be asked and nothing usable is cached.
    pub fn unavailable(&self) -> Verdict<'static> {
        if self.fail_open {
            Verdict::FailOpen
        } else {
            Verdict::Deny(Denial::StoreUnavailable)
        }
    }

    /// The answer to a refused request.
    pub fn reply(&self, denial: Denial) -> Reply {
        let json = |error: &str, message: &str| {
            serde_json::json!({ "error": error, "message": message }).to_string()
        };
        let mut headers = vec![
            ("content-type", "application/json".to_owned()),
            ("cache-control", "no-store".to_owned()),
        ];
        match denial {
            Denial::StoreUnavailable | Denial::Overloaded => {
                let seconds = match denial {
                    Denial::StoreUnavailable => self.cache.error_backoff_ms.div_ceil(1000).max(1),
                    // A permit frees up as soon as a lookup answers.
                    _ => 1,
                };
                headers.push(("retry-after", seconds.to_string()));
                Reply {
                    status: 503,
                    headers,
                    body: json(
                        "unavailable",
                        "the API key could not be checked; try again later",
                    ),
                }
            }
            Denial::MissingKey => {
                headers.push(("www-authenticate", self.challenge()));
                Reply {
                    status: 401,
                    headers,
                    body: json("unauthorized", "an API key is required"),
                }
            }
            Denial::MalformedKey | Denial::UnknownKey | Denial::RevokedKey | Denial::ExpiredKey => {
                headers.push(("www-authenticate", self.challenge()));
                Reply {
                    status: 401,
                    headers,
                    body: json("unauthorized", "the API key is not valid"),
                }
            }
        }
    }

    fn challenge(&self) -> String {
        format!("ApiKey realm=\"{}\"", self.realm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> ApiKeyConfig {
        let json = format!(r#"{{"store": {{"cluster": "ks"}}, "realm": "orders"{extra}}}"#);
        ApiKeyConfig::from_json(json.as_bytes(), &|_| None).unwrap()
    }

    fn record(status: KeyStatus, expires_at: Option<u64>) -> StoreAnswer {
        StoreAnswer::Found(KeyRecord {
            key_id: "key_1".into(),
            tenant_id: "acme".into(),
            plan: None,
            scopes: vec![],
            status,
            expires_at,
        })
    }

    #[test]
    fn verdicts() {
        let c = config("");
        let now = 1_800_000_000_000;
        let active = record(KeyStatus::Active, Some(1_800_000_001));
        assert!(matches!(c.judge(&active, now), Verdict::Allow(r) if r.tenant_id == "acme"));
        assert_eq!(
            c.judge(&active, now + 1_000),
            Verdict::Deny(Denial::ExpiredKey)
        );
        assert_eq!(
            c.judge(&record(KeyStatus::Revoked, None), now),
            Verdict::Deny(Denial::RevokedKey)
        );
        assert_eq!(
            c.judge(&StoreAnswer::NotFound, now),
            Verdict::Deny(Denial::UnknownKey)
        );
        assert_eq!(c.unavailable(), Verdict::Deny(Denial::StoreUnavailable));
        assert_eq!(
            config(r#", "fail_open": true"#).unavailable(),
            Verdict::FailOpen
        );
    }

    #[test]
    fn invalid_keys_are_indistinguishable() {
        let c = config("");
        let unknown = c.reply(Denial::UnknownKey);
        for denial in [Denial::MalformedKey, Denial::RevokedKey, Denial::ExpiredKey] {
            assert_eq!(c.reply(denial), unknown, "{denial:?}");
        }
        assert_eq!(unknown.status, 401);
        assert!(unknown
            .headers
            .contains(&("www-authenticate", "ApiKey realm=\"orders\"".to_owned())));
        let missing = c.reply(Denial::MissingKey);
        assert_eq!(missing.status, 401);
        assert_ne!(missing.body, unknown.body);
    }

    #[test]
    fn unavailable_is_503_with_retry_after() {
        let c = config(r#", "cache": {"error_backoff": "2500ms"}"#);
        let reply = c.reply(Denial::StoreUnavailable);
        assert_eq!(reply.status, 503);
        assert!(reply.headers.contains(&("retry-after", "3".to_owned())));
        assert!(!reply.headers.iter().any(|(n, _)| *n == "www-authenticate"));
        let overloaded = c.reply(Denial::Overloaded);
        assert_eq!(overloaded.status, 503);
        assert!(overloaded
            .headers
            .contains(&("retry-after", "1".to_owned())));
        assert_eq!(overloaded.body, reply.body);
        let reasons: Vec<&str> = Denial::ALL.iter().map(|d| d.reason()).collect();
        assert_eq!(
            reasons,
            [
                "missing",
                "malformed",
                "unknown",
                "revoked",
                "expired",
                "store_unavailable",
                "overloaded"
            ]
        );
    }
}
