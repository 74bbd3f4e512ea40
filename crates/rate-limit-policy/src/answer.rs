//! What the client is told: the `X-RateLimit-*` (and optional IETF `RateLimit-Policy` /
//! `RateLimit`) headers on every counted response, and the one answer to a limited request.
//!
//! Times are rounded up to whole seconds: a client that waits what it was told never
//! comes back early. This module decides no limits; it only renders them.

use crate::bucket::{Levels, Limit, LimitSet, Shortfall};
use serde::Deserialize;

/// Headers to add to a response, in order.
pub type ResponseHeaders = Vec<(&'static str, String)>;

/// How `X-RateLimit-Reset` is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum ResetFormat {
    /// Unix time (seconds) at which the bucket is full again, e.g. `1713272400`.
    #[default]
    Epoch,
    /// Seconds from now until the bucket is full again, e.g. `15` (as Envoy's own
    /// `x-ratelimit-reset`, `DRAFT_VERSION_03`: draft-ietf-httpapi-ratelimit-headers-03).
    Delta,
}

/// How answers are written, from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answers {
    /// Status of a limited request's answer (400 ..= 599, default 429).
    pub status: u32,
    pub reset_format: ResetFormat,
    /// Also send `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers-11).
    pub ietf_headers: bool,
    /// Send the headers on admitted responses too, not only on refusals. Off for a tier
    /// in front of another (a pre-authentication limit), whose headers would replace
    /// the ones the later tier set: a response carries one set of headers.
    pub admitted_headers: bool,
}

/// The local reply that refuses a limited request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitedReply {
    pub status: u32,
    pub headers: ResponseHeaders,
    pub body: String,
}

/// The problem type draft-ietf-httpapi-ratelimit-headers-11 registers for this answer.
const QUOTA_EXCEEDED: &str = "https://iana.org/assignments/http-problem-types#quota-exceeded";

impl Answers {
    /// Headers for a counted request that was admitted (levels after taking its cost), or
    /// that shadow mode let through (levels as they are). The limit reported in
    /// `X-RateLimit-*` is the one with the fewest requests left.
    pub fn admitted(&self, limits: &LimitSet, levels: &Levels) -> ResponseHeaders {
        if !self.admitted_headers {
            return ResponseHeaders::new();
        }
        let tightest = limits
            .limits()
            .iter()
            .zip(&levels.levels)
            .enumerate()
            .min_by_key(|(_, (limit, level))| {
                (
                    limit.tokens(**level),
                    std::cmp::Reverse(limit.ms_to_full(**level)),
                )
            })
            .map_or(0, |(i, _)| i);
        self.headers(limits, levels, tightest)
    }

    /// The answer to a limited request: the configured status, `Retry-After` (whole
    /// seconds, at least 1), the limit that needs the longest wait in `X-RateLimit-*`, and
    /// an RFC 9457 problem body naming every limit that is short.
    pub fn limited(
        &self,
        limits: &LimitSet,
        levels: &Levels,
        shortfall: Shortfall,
    ) -> LimitedReply {
        let retry_after = seconds(shortfall.wait_ms).max(1);
        let mut headers = vec![("retry-after", retry_after.to_string())];
        headers.extend(self.headers(limits, levels, shortfall.limit));
        headers.push(("content-type", "application/problem+json".to_owned()));
        let violated: Vec<&str> = limits
            .limits()
            .iter()
            .zip(&levels.levels)
            .filter(|(limit, level)| limit.wait_ms(**level, limits.cost()) > 0)
            .map(|(limit, _)| limit.name.as_str())
            .collect();
        let body = serde_json::json!({
            "type": QUOTA_EXCEEDED,
            "title": "Quota Exceeded",
            "status": self.status,
            "detail": format!("rate limit exceeded; retry after {retry_after} s"),
            "violated-policies": violated,
            "retry_after": retry_after,
        });
        LimitedReply {
            status: self.status,
            headers,
            body: body.to_string(),
        }
    }

    fn headers(&self, limits: &LimitSet, levels: &Levels, shown: usize) -> ResponseHeaders {
        let mut headers = ResponseHeaders::new();
        let pairs = || limits.limits().iter().zip(levels.levels.iter().copied());
        if let Some((limit, level)) = pairs().nth(shown) {
            let to_full = limit.ms_to_full(level);
            let reset = match self.reset_format {
                ResetFormat::Epoch => seconds(levels.updated_ms.saturating_add(to_full)),
                ResetFormat::Delta => seconds(to_full),
            };
            headers.push(("x-ratelimit-limit", limit.burst.to_string()));
            headers.push(("x-ratelimit-remaining", limit.tokens(level).to_string()));
            headers.push(("x-ratelimit-reset", reset.to_string()));
        }
        if self.ietf_headers {
            let policy: Vec<String> = limits.limits().iter().map(policy_item).collect();
            let state: Vec<String> = pairs()
                .map(|(limit, level)| {
                    let tokens = limit.tokens(level);
                    // `t`: the seconds within which no more than `r` can be used, i.e.
                    // until the next token arrives (Retry-After when `r` is 0).
                    let next = seconds(limit.wait_ms(level, tokens + 1));
                    format!("\"{}\";r={tokens};t={next}", limit.name)
                })
                .collect();
            headers.push(("ratelimit-policy", policy.join(", ")));
            headers.push(("ratelimit", state.join(", ")));
        }
        headers
    }
}

/// `"hourly";q=1000;w=3600`, plus `wasmgate-burst` when the bucket holds more (or less)
/// than one period's worth. `w` is left out for periods that are not whole seconds.
fn policy_item(limit: &Limit) -> String {
    let mut item = format!("\"{}\";q={}", limit.name, limit.requests);
    if let Some(w) = limit.period_seconds() {
        item.push_str(&format!(";w={w}"));
    }
    if limit.burst != limit.requests {
        item.push_str(&format!(";wasmgate-burst={}", limit.burst));
    }
    item
}

/// Milliseconds to whole seconds, rounded up.
fn seconds(ms: u64) -> u64 {
    ms.div_ceil(1000)
}
