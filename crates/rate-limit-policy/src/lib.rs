//! Rate limits for wasmgate's rate-limit filter: which rule applies to a request, who the
//! client is, which limits (plan) it has, and whether its token buckets admit it.
//!
//! A [`RateLimitPolicy`] is parsed once from the plugin configuration. For each request,
//! [`RateLimitPolicy::decide`] reads the request through [`RequestView`], counts it in the
//! bounded [`BucketTable`] through the [`SharedStore`] port (proxy-wasm shared data in
//! Envoy, a [`MemoryStore`](wasmgate_shared_store::MemoryStore) in tests), and returns a
//! [`Decision`]: a value the filter turns into host calls with one `match`. Time is passed
//! in; nothing here sleeps, reads a clock or depends on proxy-wasm.

mod answer;
mod bucket;
mod config;
mod digest_memo;
mod identity;
mod table;

pub use answer::{Answers, LimitedReply, ResetFormat, ResponseHeaders};
pub use bucket::{Levels, Limit, LimitSet, Shortfall};
pub use identity::{identify, IdentitySource, ANONYMOUS};
pub use table::{
    BucketTable, Digest, StoreTrouble, TableCensus, TableEvents, TableOutcome, TableVerdict,
    MAX_ATTEMPTS,
};

use digest_memo::DigestMemo;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use wasmgate_config::{ConfigError, HeaderName, RouteRequest, RouteTable};
use wasmgate_shared_store::SharedStore;

/// What the policy needs to know about a request. The filter implements it over Envoy's
/// header map and attributes; tests use a fake.
pub trait RequestView {
    /// A request header (`:method` and `:path` included), lower-case name.
    fn header(&self, name: &str) -> Option<String>;
    /// The downstream address as Envoy reports it (`source.address`: `ip:port`).
    fn source_address(&self) -> Option<String>;
    /// The name of the Envoy route that matched (`xds.route_name`).
    fn route_name(&self) -> Option<String>;
}

/// What the endpoint part of a bucket key is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    /// The rule itself: every request the rule matches shares the client's buckets.
    #[default]
    Rule,
    /// The Envoy route the request took: one set of buckets per route name.
    Route,
}

/// A rule's limits for one plan (the value of the plan header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub name: String,
    pub limits: LimitSet,
    /// The overflow bucket of this rule and plan (worked out once).
    pub overflow: Digest,
}

/// Where limits apply and what they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Part of every bucket key of this rule: renaming a rule starts its buckets afresh.
    pub name: String,
    pub endpoint: Endpoint,
    /// The endpoint part of the bucket keys when it is the rule (`rule=<name>`).
    pub rule_endpoint: String,
    /// The limits for a request whose plan is absent or not listed.
    pub default_plan: LimitSet,
    /// The overflow bucket of those limits (worked out once).
    pub default_overflow: Digest,
    pub plans: Vec<Plan>,
    /// Count and report, never refuse (this rule's or the whole policy's `shadow`).
    pub shadow: bool,
}

/// The rate-limit filter's validated configuration.
#[derive(Debug, Clone)]
pub struct RateLimitPolicy {
    table: BucketTable,
    identity: Vec<IdentitySource>,
    plan_header: HeaderName,
    rules: RouteTable<Rule>,
    answers: Answers,
    /// Bucket digests of recent clients: SHA-256 runs once per client, not per request.
    digests: DigestMemo,
}

/// What the filter does with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No rule applies: pass, add nothing.
    Unlimited,
    /// Counted and admitted: pass, and add these headers to the response.
    Allowed(ResponseHeaders),
    /// Over a limit in shadow mode: pass (nothing taken), add these headers.
    ShadowLimited(ResponseHeaders),
    /// Over a limit: answer with this instead of forwarding.
    Limited(LimitedReply),
    /// The bucket table could not be updated: pass uncounted (fail open).
    Uncounted(StoreTrouble),
}

/// A [`Verdict`] and what the table did to reach it (for metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub events: TableEvents,
}

impl RateLimitPolicy {
    /// Parses and validates the plugin configuration (JSON).
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        config::parse(bytes)
    }

    /// The JSON Schema of the configuration [`Self::from_json`] reads (feature `schema`):
    /// the shape only, its nested types' schemas go into `generator`'s definitions.
    #[cfg(feature = "schema")]
    pub fn config_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        <config::PolicySpec as schemars::JsonSchema>::json_schema(generator)
    }

    pub fn table(&self) -> &BucketTable {
        &self.table
    }

    /// Every overflow bucket this configuration may use (one per rule and plan), for
    /// [`BucketTable::prepare`].
    pub fn overflow_digests(&self) -> Vec<Digest> {
        self.all_rules()
            .flat_map(|rule| {
                std::iter::once(rule.default_overflow).chain(rule.plans.iter().map(|p| p.overflow))
            })
            .collect()
    }

    /// Creates the table's slots where missing; see [`BucketTable::prepare`].
    pub fn prepare(&self, store: &dyn SharedStore) -> TableCensus {
        self.table.prepare(store, &self.overflow_digests())
    }

    fn all_rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules
            .rules()
            .map(|(_, rule)| rule)
            .chain(self.rules.fallback())
    }

    /// Decides one request at `now_ms` (milliseconds since the Unix epoch).
    pub fn decide(&self, view: &dyn RequestView, store: &dyn SharedStore, now_ms: u64) -> Decision {
        let method = view.header(":method").unwrap_or_default();
        let path = view.header(":path").unwrap_or_default();
        let authority = (self.rules.names_hosts())
            .then(|| view.header(":authority"))
            .flatten();
        let route = RouteRequest::new(&method, &path).with_authority(authority.as_deref());
        let Some(rule) = self.rules.select(&route) else {
            return Decision {
                verdict: Verdict::Unlimited,
                events: TableEvents::default(),
            };
        };
        // Most rules have no plans: then the plan header is not even read.
        let requested_plan = if rule.plans.is_empty() {
            None
        } else {
            view.header(self.plan_header.as_str())
        };
        let (plan, limits, overflow) = requested_plan
            .and_then(|wanted| rule.plans.iter().find(|p| p.name == wanted))
            .map_or(("", &rule.default_plan, rule.default_overflow), |p| {
                (p.name.as_str(), &p.limits, p.overflow)
            });
        let route_endpoint = match rule.endpoint {
            Endpoint::Rule => None,
            Endpoint::Route => view
                .route_name()
                .filter(|name| !name.is_empty())
                .map(|name| format!("route={name}")),
        };
        let endpoint = route_endpoint.as_deref().unwrap_or(&rule.rule_endpoint);
        let identity = identify(&self.identity, view);
        let digest = self
            .digests
            .get_or_insert([&rule.name, plan, endpoint, &identity], || {
                bucket_digest(&[
                    b"bucket",
                    rule.name.as_bytes(),
                    plan.as_bytes(),
                    endpoint.as_bytes(),
                    identity.as_bytes(),
                    &limits_fingerprint(limits),
                ])
            });
        let outcome = self.table.take(store, &digest, &overflow, limits, now_ms);
        let verdict = match outcome.verdict {
            TableVerdict::Taken(levels) => Verdict::Allowed(self.answers.admitted(limits, &levels)),
            TableVerdict::Short(levels, _) if rule.shadow => {
                Verdict::ShadowLimited(self.answers.admitted(limits, &levels))
            }
            TableVerdict::Short(levels, shortfall) => {
                Verdict::Limited(self.answers.limited(limits, &levels, shortfall))
            }
            TableVerdict::Unavailable(trouble) => Verdict::Uncounted(trouble),
        };
        Decision {
            verdict,
            events: outcome.events,
        }
    }
}

/// The overflow bucket of a rule (by name) and plan with these limits.
pub(crate) fn overflow_digest(rule: &str, plan: &str, limits: &LimitSet) -> Digest {
    bucket_digest(&[
        b"overflow",
        rule.as_bytes(),
        plan.as_bytes(),
        &limits_fingerprint(limits),
    ])
}

/// The limits' shape: a bucket stored under other limits is not reused when they change.
fn limits_fingerprint(limits: &LimitSet) -> Vec<u8> {
    limits
        .limits()
        .iter()
        .flat_map(|l| [l.requests, l.period_ms, l.burst])
        .flat_map(u64::to_le_bytes)
        .collect()
}

/// SHA-256 over length-prefixed parts (so no two part lists hash the same input), cut to
/// 16 bytes: collisions stay out of reach even for a client choosing its own identity.
fn bucket_digest(parts: &[&[u8]]) -> Digest {
    let mut hasher = Sha256::new();
    hasher.update(b"wasmgate.rate_limit/1");
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    let full = hasher.finalize();
    let mut digest = [0u8; 16];
    digest.copy_from_slice(&full[..16]);
    digest
}

#[cfg(test)]
mod tests;
