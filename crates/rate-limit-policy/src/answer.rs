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

/// The fleet-wide limit as the rate-limit service last reported it, for the headers of a
/// rule with a global tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalView {
    /// Shown in `RateLimit-Policy` and in the 429 body.
    pub name: String,
    /// Requests per window.
    pub limit: u64,
    /// The window in milliseconds (0 when the service did not say).
    pub window_ms: u64,
    /// Requests left in this window, all instances together.
    pub remaining: u64,
    /// When the window ends (ms since the Unix epoch).
    pub reset_at_ms: u64,
}

/// One limit as the headers show it: a local bucket or the global tier.
struct Row<'a> {
    source: Source<'a>,
    /// `X-RateLimit-Limit`.
    quota: u64,
    remaining: u64,
    /// Milliseconds until the quota is whole again (`X-RateLimit-Reset`), from `as_of_ms`.
    reset_in_ms: u64,
    as_of_ms: u64,
    /// Milliseconds until more than `remaining` may be used (`RateLimit`'s `t`).
    next_in_ms: u64,
}

/// What a row describes (its name and `RateLimit-Policy` item come from it, and are
/// written only when the IETF fields are).
enum Source<'a> {
    Local(&'a Limit),
    Global(&'a GlobalView),
}

impl Source<'_> {
    fn name(&self) -> &str {
        match self {
            Source::Local(limit) => &limit.name,
            Source::Global(view) => &view.name,
        }
    }

    fn policy(&self) -> String {
        match self {
            Source::Local(limit) => policy_item(limit),
            Source::Global(view) => {
                let mut item = format!("\"{}\";q={}", view.name, view.limit);
                if view.window_ms > 0 && view.window_ms.is_multiple_of(1000) {
                    item.push_str(&format!(";w={}", view.window_ms / 1000));
                }
                item
            }
        }
    }
}

impl Answers {
    /// Headers for a counted request that was admitted (levels after taking its cost), or
    /// that shadow mode let through (levels as they are), with the global tier's view if
    /// the rule has one. The limit reported in `X-RateLimit-*` is the one with the fewest
    /// requests left.
    pub fn admitted(
        &self,
        limits: &LimitSet,
        levels: Option<&Levels>,
        global: Option<&GlobalView>,
        now_ms: u64,
    ) -> ResponseHeaders {
        if !self.admitted_headers {
            return ResponseHeaders::new();
        }
        let rows = rows(limits, levels, global, now_ms);
        self.headers(&rows, tightest(&rows))
    }

    /// The answer to a request a local bucket refused: the configured status,
    /// `Retry-After` (whole seconds, at least 1), the limit that needs the longest wait in
    /// `X-RateLimit-*`, and an RFC 9457 problem body naming every limit that is short.
    pub fn limited(
        &self,
        limits: &LimitSet,
        levels: &Levels,
        shortfall: Shortfall,
        global: Option<&GlobalView>,
        now_ms: u64,
    ) -> LimitedReply {
        let violated: Vec<&str> = limits
            .limits()
            .iter()
            .zip(&levels.levels)
            .filter(|(limit, level)| limit.wait_ms(**level, limits.cost()) > 0)
            .map(|(limit, _)| limit.name.as_str())
            .collect();
        let rows = rows(limits, Some(levels), global, now_ms);
        self.reply(&rows, shortfall.limit, shortfall.wait_ms, &violated)
    }

    /// The answer to a request the global tier refused: as [`limited`](Self::limited),
    /// with the global limit shown and `Retry-After` the end of its window (1 s when the
    /// service did not say).
    pub fn limited_globally(
        &self,
        limits: &LimitSet,
        levels: Option<&Levels>,
        global: Option<&GlobalView>,
        now_ms: u64,
    ) -> LimitedReply {
        let rows = rows(limits, levels, global, now_ms);
        let (name, wait_ms) = match global {
            Some(view) => (view.name.as_str(), view.reset_at_ms.saturating_sub(now_ms)),
            None => (crate::global::GLOBAL_NAME, 1_000),
        };
        let shown = if global.is_some() {
            rows.len() - 1
        } else {
            tightest(&rows)
        };
        self.reply(&rows, shown, wait_ms, &[name])
    }

    /// The answer when the global tier could not decide and its `failure_mode` is `deny`.
    pub fn service_unavailable(&self) -> LimitedReply {
        let body = serde_json::json!({
            "type": "about:blank",
            "title": "Service Unavailable",
            "status": 503,
            "detail": "the rate limit could not be checked; retry later",
        });
        LimitedReply {
            status: 503,
            headers: vec![
                ("retry-after", "1".to_owned()),
                ("content-type", "application/problem+json".to_owned()),
            ],
            body: body.to_string(),
        }
    }

    fn reply(
        &self,
        rows: &[Row<'_>],
        shown: usize,
        wait_ms: u64,
        violated: &[&str],
    ) -> LimitedReply {
        let retry_after = seconds(wait_ms).max(1);
        let mut headers = vec![("retry-after", retry_after.to_string())];
        headers.extend(self.headers(rows, shown));
        headers.push(("content-type", "application/problem+json".to_owned()));
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

    fn headers(&self, rows: &[Row<'_>], shown: usize) -> ResponseHeaders {
        let mut headers = ResponseHeaders::new();
        if let Some(row) = rows.get(shown) {
            let reset = match self.reset_format {
                ResetFormat::Epoch => seconds(row.as_of_ms.saturating_add(row.reset_in_ms)),
                ResetFormat::Delta => seconds(row.reset_in_ms),
            };
            headers.push(("x-ratelimit-limit", row.quota.to_string()));
            headers.push(("x-ratelimit-remaining", row.remaining.to_string()));
            headers.push(("x-ratelimit-reset", reset.to_string()));
        }
        if self.ietf_headers {
            let policy: Vec<String> = rows.iter().map(|row| row.source.policy()).collect();
            let state: Vec<String> = rows
                .iter()
                .map(|row| {
                    format!(
                        "\"{}\";r={};t={}",
                        row.source.name(),
                        row.remaining,
                        seconds(row.next_in_ms)
                    )
                })
                .collect();
            headers.push(("ratelimit-policy", policy.join(", ")));
            headers.push(("ratelimit", state.join(", ")));
        }
        headers
    }
}

/// The row with the fewest requests left (the longest wait among equals).
fn tightest(rows: &[Row<'_>]) -> usize {
    rows.iter()
        .enumerate()
        .min_by_key(|(_, row)| (row.remaining, std::cmp::Reverse(row.reset_in_ms)))
        .map_or(0, |(i, _)| i)
}

/// The local limits' rows (none when the buckets could not be read), then the global tier's.
fn rows<'a>(
    limits: &'a LimitSet,
    levels: Option<&Levels>,
    global: Option<&'a GlobalView>,
    now_ms: u64,
) -> Vec<Row<'a>> {
    let (levels, updated_ms) = match levels {
        Some(levels) => (levels.levels.as_slice(), levels.updated_ms),
        None => (&[][..], now_ms),
    };
    let mut rows: Vec<Row<'a>> = Vec::with_capacity(limits.limits().len() + 1);
    rows.extend(
        limits
            .limits()
            .iter()
            .zip(levels.iter().copied())
            .map(|(limit, level)| {
                let tokens = limit.tokens(level);
                Row {
                    source: Source::Local(limit),
                    quota: limit.burst,
                    remaining: tokens,
                    reset_in_ms: limit.ms_to_full(level),
                    as_of_ms: updated_ms,
                    // Until the next token arrives (Retry-After when none is left).
                    next_in_ms: limit.wait_ms(level, tokens + 1),
                }
            }),
    );
    if let Some(global) = global {
        let reset_in_ms = global.reset_at_ms.saturating_sub(now_ms);
        rows.push(Row {
            source: Source::Global(global),
            quota: global.limit,
            remaining: global.remaining,
            reset_in_ms,
            as_of_ms: now_ms,
            next_in_ms: if global.remaining == 0 {
                reset_in_ms
            } else {
                0
            },
        });
    }
    rows
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
