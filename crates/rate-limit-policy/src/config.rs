//! The rate-limit filter's configuration: raw JSON shapes, and their validation into a
//! [`RateLimitPolicy`](crate::RateLimitPolicy) that cannot be wrong.

use crate::bucket::{Limit, LimitSet, MAX_CAPACITY, MAX_LIMITS, MAX_PERIOD_MS, MAX_TOKENS};
use crate::digest_memo::DigestMemo;
use crate::global::{GlobalMode, GlobalSpec};
use crate::identity::IdentitySource;
use crate::lease::LeaseTable;
use crate::table::BucketTable;
use crate::{
    overflow_digest, Answers, Endpoint, Fallback, Plan, RateLimitPolicy, ResetFormat, Rule,
};
use serde::Deserialize;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;
use wasmgate_config::{number, ConfigError, HeaderName, RouteMatch, RouteTable};

pub const DEFAULT_SLOTS: u64 = 100_000;
pub const MAX_SLOTS: u64 = 10_000_000;
pub const DEFAULT_PROBE: u64 = 8;
pub const DEFAULT_LEASE_SLOTS: u64 = 10_000;
pub const MAX_PROBE: u64 = 64;
const MAX_IDENTITY_SOURCES: usize = 8;
const MAX_COMPOUND_HEADERS: usize = 4;
const MAX_NAME_LEN: usize = 64;
const MAX_TABLE_NAME_LEN: usize = 32;

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicySpec {
    #[serde(default)]
    table: TableSpec,
    identity: Option<Vec<IdentitySpec>>,
    plan_header: Option<HeaderName>,
    #[serde(default)]
    rules: Vec<RuleSpec>,
    default: Option<RuleSpec>,
    #[serde(default, deserialize_with = "number::optional_u32")]
    status: Option<u32>,
    #[serde(default)]
    reset_format: ResetFormat,
    #[serde(default)]
    ietf_headers: bool,
    #[serde(default = "yes")]
    admitted_headers: bool,
    #[serde(default)]
    shadow: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct TableSpec {
    name: Option<String>,
    #[serde(default, deserialize_with = "number::optional_u64")]
    slots: Option<u64>,
    #[serde(default, deserialize_with = "number::optional_u64")]
    probe: Option<u64>,
    #[serde(default, deserialize_with = "number::optional_u64")]
    lease_slots: Option<u64>,
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub(crate) enum IdentitySpec {
    Header(HeaderName),
    Headers(Vec<HeaderName>),
    Address(AddressSpec),
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub(crate) struct AddressSpec {
    #[serde(default, deserialize_with = "number::optional_u32")]
    ipv4_prefix: Option<u32>,
    #[serde(default, deserialize_with = "number::optional_u32")]
    ipv6_prefix: Option<u32>,
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    name: Option<String>,
    #[serde(rename = "match")]
    route: Option<RouteMatch>,
    #[serde(default)]
    endpoint: Endpoint,
    /// The rule's local buckets; none for a rule that only has a global tier.
    #[serde(default)]
    limits: Vec<LimitSpec>,
    #[serde(default)]
    plans: BTreeMap<String, Vec<LimitSpec>>,
    #[serde(default, deserialize_with = "number::optional_u64")]
    cost: Option<u64>,
    #[serde(default)]
    shadow: bool,
    global: Option<GlobalSpec>,
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct LimitSpec {
    name: Option<String>,
    #[serde(deserialize_with = "number::u64")]
    requests: u64,
    #[serde(deserialize_with = "wasmgate_config::duration")]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "wasmgate_config::schema::DurationText")
    )]
    per: Duration,
    #[serde(default, deserialize_with = "number::optional_u64")]
    burst: Option<u64>,
}

/// Parses and validates the plugin configuration (JSON).
pub fn parse(bytes: &[u8]) -> Result<RateLimitPolicy, ConfigError> {
    let spec: PolicySpec = wasmgate_config::from_json(bytes)?;
    spec.compile()
}

impl PolicySpec {
    fn compile(self) -> Result<RateLimitPolicy, ConfigError> {
        let (table, lease_slots) = self.table.compile().map_err(|e| e.within("table"))?;
        let identity = match self.identity {
            None => vec![IdentitySource::Address {
                ipv4_prefix: 32,
                ipv6_prefix: 64,
            }],
            Some(list) => compile_identity(list).map_err(|e| e.within("identity"))?,
        };
        let plan_header = match self.plan_header {
            Some(name) => {
                check_regular(&name).map_err(|e| e.within("plan_header"))?;
                name
            }
            None => HeaderName::new("x-plan").map_err(|e| ConfigError::new("plan_header", e))?,
        };
        let status = self.status.unwrap_or(429);
        if !(400..=599).contains(&status) {
            return Err(ConfigError::new(
                "status",
                format!("{status} is not an error status (400 to 599)"),
            ));
        }
        if self.rules.is_empty() && self.default.is_none() {
            return Err(ConfigError::new(
                "",
                r#"no "rules" and no "default": this filter would limit nothing"#,
            ));
        }
        let mut names = BTreeSet::new();
        let mut rules = Vec::with_capacity(self.rules.len());
        for (i, mut spec) in self.rules.into_iter().enumerate() {
            let at = format!("rules[{i}]");
            let Some(route) = spec.route.take() else {
                return Err(ConfigError::new(
                    "match",
                    r#"every rule needs a "match"; use "default" for the requests no rule matches"#,
                )
                .within(&at));
            };
            let mut rule = spec.compile(None).map_err(|e| e.within(&at))?;
            rule.shadow |= self.shadow;
            if !names.insert(rule.name.clone()) {
                return Err(ConfigError::new(
                    "name",
                    format!("{:?} names two rules; rule names must be unique", rule.name),
                )
                .within(&at));
            }
            rules.push((route, Rc::new(rule)));
        }
        let fallback = match self.default {
            None => None,
            Some(spec) => {
                if spec.route.is_some() {
                    return Err(ConfigError::new(
                        "match",
                        "the default rule applies when no rule matched: it takes no \"match\"",
                    )
                    .within("default"));
                }
                let mut rule = spec
                    .compile(Some("default"))
                    .map_err(|e| e.within("default"))?;
                rule.shadow |= self.shadow;
                if !names.insert(rule.name.clone()) {
                    return Err(ConfigError::new(
                        "name",
                        format!(
                            "{:?} also names a rule; rule names must be unique",
                            rule.name
                        ),
                    )
                    .within("default"));
                }
                Some(Rc::new(rule))
            }
        };
        let leases = rules
            .iter()
            .map(|(_, rule)| rule)
            .chain(&fallback)
            .any(|rule| {
                matches!(
                    rule.global.as_ref().map(|g| &g.mode),
                    Some(GlobalMode::Lease(_))
                )
            })
            .then(|| LeaseTable::new(&table.name, lease_slots, table.probe));
        Ok(RateLimitPolicy {
            table: table.buckets,
            leases,
            identity,
            plan_header,
            rules: RouteTable::new(rules, fallback),
            answers: Answers {
                status,
                reset_format: self.reset_format,
                ietf_headers: self.ietf_headers,
                admitted_headers: self.admitted_headers,
            },
            digests: DigestMemo::default(),
            lease_digests: DigestMemo::default(),
            desk: RefCell::default(),
        })
    }
}

/// The bucket table, and what the lease table (if any rule leases) is made of.
struct Tables {
    buckets: BucketTable,
    name: String,
    probe: u32,
}

impl TableSpec {
    fn compile(self) -> Result<(Tables, u32), ConfigError> {
        let name = self.name.unwrap_or_else(|| "default".to_owned());
        let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
        if name.is_empty() || name.len() > MAX_TABLE_NAME_LEN || !name.chars().all(valid) {
            return Err(ConfigError::new(
                "name",
                format!(
                    "{name:?}: 1 to {MAX_TABLE_NAME_LEN} characters among a-z, 0-9, '_' and '-'"
                ),
            ));
        }
        let slots = self.slots.unwrap_or(DEFAULT_SLOTS);
        if !(1..=MAX_SLOTS).contains(&slots) {
            return Err(ConfigError::new(
                "slots",
                format!("{slots}: between 1 and {MAX_SLOTS}"),
            ));
        }
        let probe = self.probe.unwrap_or(DEFAULT_PROBE.min(slots));
        if !(1..=MAX_PROBE).contains(&probe) || probe > slots {
            return Err(ConfigError::new(
                "probe",
                format!("{probe}: between 1 and {MAX_PROBE}, and at most \"slots\" ({slots})"),
            ));
        }
        let lease_slots = self.lease_slots.unwrap_or(DEFAULT_LEASE_SLOTS.max(probe));
        if !(probe..=MAX_SLOTS).contains(&lease_slots) {
            return Err(ConfigError::new(
                "lease_slots",
                format!("{lease_slots}: between \"probe\" ({probe}) and {MAX_SLOTS}"),
            ));
        }
        // All fit in u32: MAX_SLOTS and MAX_PROBE are far below u32::MAX.
        let buckets = BucketTable::new(&name, slots as u32, probe as u32);
        Ok((
            Tables {
                buckets,
                name,
                probe: probe as u32,
            },
            lease_slots as u32,
        ))
    }
}

fn compile_identity(list: Vec<IdentitySpec>) -> Result<Vec<IdentitySource>, ConfigError> {
    if list.is_empty() || list.len() > MAX_IDENTITY_SOURCES {
        return Err(ConfigError::new(
            "",
            format!("list 1 to {MAX_IDENTITY_SOURCES} sources, or leave the field out (the client address)"),
        ));
    }
    list.into_iter()
        .enumerate()
        .map(|(i, spec)| {
            let at = format!("[{i}]");
            match spec {
                IdentitySpec::Header(name) => {
                    check_regular(&name).map_err(|e| e.within(&format!("{at}.header")))?;
                    Ok(IdentitySource::Header(name))
                }
                IdentitySpec::Headers(names) => {
                    if !(2..=MAX_COMPOUND_HEADERS).contains(&names.len()) {
                        return Err(ConfigError::new(
                            format!("{at}.headers"),
                            format!("2 to {MAX_COMPOUND_HEADERS} header names (for one header, use \"header\")"),
                        ));
                    }
                    for (j, name) in names.iter().enumerate() {
                        check_regular(name).map_err(|e| e.within(&format!("{at}.headers[{j}]")))?;
                    }
                    Ok(IdentitySource::Headers(names))
                }
                IdentitySpec::Address(address) => {
                    let prefix = |field: &str, value: Option<u32>, default: u32, max: u32| {
                        let value = value.unwrap_or(default);
                        if value > max {
                            return Err(ConfigError::new(
                                format!("{at}.address.{field}"),
                                format!("{value}: a prefix length from 0 to {max}"),
                            ));
                        }
                        Ok(value as u8)
                    };
                    Ok(IdentitySource::Address {
                        ipv4_prefix: prefix("ipv4_prefix", address.ipv4_prefix, 32, 32)?,
                        ipv6_prefix: prefix("ipv6_prefix", address.ipv6_prefix, 64, 128)?,
                    })
                }
            }
        })
        .collect()
}

impl RuleSpec {
    fn compile(self, default_name: Option<&str>) -> Result<Rule, ConfigError> {
        let name = match (self.name, default_name) {
            (Some(name), _) => name,
            (None, Some(name)) => name.to_owned(),
            (None, None) => {
                return Err(ConfigError::new(
                    "name",
                    "every rule needs a name: it keys the rule's buckets",
                ))
            }
        };
        check_name(&name).map_err(|p| ConfigError::new("name", p))?;
        let cost = self.cost.unwrap_or(1);
        if cost == 0 {
            return Err(ConfigError::new("cost", "a request costs at least 1"));
        }
        // A rule without local limits is counted by its global tier alone (what Envoy's
        // own ratelimit filter does): it needs one, and has no local buckets to fall
        // back to or to vary by plan.
        let global_only = self.limits.is_empty();
        if global_only && self.global.is_none() {
            return Err(ConfigError::new(
                "limits",
                format!("1 to {MAX_LIMITS} limits, all applied together (a rule may leave them out only with a \"global\" tier)"),
            ));
        }
        if global_only && !self.plans.is_empty() {
            return Err(ConfigError::new(
                "plans",
                "plans vary a rule's local limits, and this rule has none (\"limits\" is empty); the global tier's descriptor names the plan only for a rule with plans",
            ));
        }
        let global = match self.global {
            None => None,
            Some(mut spec) => {
                let identity = spec
                    .identity
                    .take()
                    .map(compile_identity)
                    .transpose()
                    .map_err(|e| e.within("global.identity"))?;
                Some(
                    spec.compile(identity, !global_only)
                        .map_err(|e| e.within("global"))?,
                )
            }
        };
        let share = global
            .as_ref()
            .filter(|g| g.failure_mode == crate::FailureMode::Local && g.fallback_share < 1.0)
            .map(|g| g.fallback_share);
        let plan = |plan: &str, limits: LimitSet| -> Result<Plan, ConfigError> {
            let fallback = match share {
                None => None,
                Some(share) => {
                    let limits = scale(&limits, share)
                        .map_err(|p| ConfigError::new("global.fallback_share", p))?;
                    let overflow = overflow_digest(&format!("{name}/fallback"), plan, &limits);
                    Some(Fallback { limits, overflow })
                }
            };
            Ok(Plan {
                overflow: overflow_digest(&name, plan, &limits),
                name: plan.to_owned(),
                limits,
                fallback,
            })
        };
        let limits = if global_only {
            if cost > MAX_TOKENS {
                return Err(ConfigError::new(
                    "cost",
                    format!("{cost}: from 1 to {MAX_TOKENS}"),
                ));
            }
            LimitSet::new(Vec::new(), cost)
        } else {
            compile_limits(self.limits, cost).map_err(|e| e.within("limits"))?
        };
        let default = plan("", limits)?;
        let mut plans = Vec::with_capacity(self.plans.len());
        for (name, specs) in self.plans {
            let at = format!("plans.{name}");
            check_name(&name).map_err(|p| ConfigError::new(&at, p))?;
            let limits = compile_limits(specs, cost).map_err(|e| e.within(&at))?;
            plans.push(plan(&name, limits)?);
        }
        Ok(Rule {
            rule_endpoint: format!("rule={name}"),
            name,
            endpoint: self.endpoint,
            default,
            plans,
            shadow: self.shadow,
            global,
        })
    }
}

/// `limits` with every `requests` and `burst` scaled by `share` (rounded up, at least 1),
/// for a global tier's per-instance fallback.
fn scale(limits: &LimitSet, share: f64) -> Result<LimitSet, String> {
    let scaled: Vec<Limit> = limits
        .limits()
        .iter()
        .map(|l| Limit {
            name: l.name.clone(),
            requests: ((l.requests as f64 * share).ceil() as u64).max(1),
            period_ms: l.period_ms,
            burst: ((l.burst as f64 * share).ceil() as u64).max(1),
        })
        .collect();
    if let Some(small) = scaled.iter().find(|l| l.burst < limits.cost()) {
        return Err(format!(
            "{share} of limit {:?} holds {} but a request costs {}: no request could pass while the service is away",
            small.name,
            small.burst,
            limits.cost()
        ));
    }
    Ok(LimitSet::new(scaled, limits.cost()))
}

fn compile_limits(specs: Vec<LimitSpec>, cost: u64) -> Result<LimitSet, ConfigError> {
    if specs.is_empty() || specs.len() > MAX_LIMITS {
        return Err(ConfigError::new(
            "",
            format!("1 to {MAX_LIMITS} limits, all applied together"),
        ));
    }
    let mut limits: Vec<Limit> = Vec::with_capacity(specs.len());
    for (i, spec) in specs.into_iter().enumerate() {
        let at = format!("[{i}]");
        let limit = spec.compile().map_err(|e| e.within(&at))?;
        if limits.iter().any(|l| l.name == limit.name) {
            return Err(ConfigError::new(
                format!("{at}.name"),
                format!("{:?} names two limits of this list", limit.name),
            ));
        }
        if cost > limit.burst {
            return Err(ConfigError::new(
                format!("{at}.burst"),
                format!(
                    "a request costs {cost} but this bucket holds only {}: no request could ever pass",
                    limit.burst
                ),
            ));
        }
        limits.push(limit);
    }
    Ok(LimitSet::new(limits, cost))
}

impl LimitSpec {
    fn compile(self) -> Result<Limit, ConfigError> {
        let period_ms = u64::try_from(self.per.as_millis()).unwrap_or(u64::MAX);
        if period_ms == 0
            || period_ms > MAX_PERIOD_MS
            || !self.per.subsec_micros().is_multiple_of(1000)
        {
            return Err(ConfigError::new(
                "per",
                "a whole number of milliseconds, from 1ms to 366d",
            ));
        }
        if !(1..=MAX_TOKENS).contains(&self.requests) {
            return Err(ConfigError::new(
                "requests",
                format!("{}: from 1 to {MAX_TOKENS}", self.requests),
            ));
        }
        let burst = self.burst.unwrap_or(self.requests);
        if !(1..=MAX_TOKENS).contains(&burst) {
            return Err(ConfigError::new(
                "burst",
                format!("{burst}: from 1 to {MAX_TOKENS}"),
            ));
        }
        if burst.saturating_mul(period_ms) > MAX_CAPACITY {
            return Err(ConfigError::new(
                "burst",
                format!("{burst} tokens over {period_ms} ms is too large to count exactly; use a shorter \"per\""),
            ));
        }
        let name = match self.name {
            Some(name) => {
                check_name(&name).map_err(|p| ConfigError::new("name", p))?;
                name
            }
            None => format!("{}-per-{}", self.requests, duration_text(period_ms)),
        };
        Ok(Limit {
            name,
            requests: self.requests,
            period_ms,
            burst,
        })
    }
}

/// `3600000` → `1h`, `1500` → `1500ms`: the shortest exact unit, for default limit names.
fn duration_text(ms: u64) -> String {
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Rule, plan and limit names: they appear in bucket keys, response headers and the 429
/// body, so they are kept to characters that need no quoting anywhere.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if name.is_empty() || name.len() > MAX_NAME_LEN || !name.chars().all(valid) {
        return Err(format!(
            "{name:?}: 1 to {MAX_NAME_LEN} characters among A-Z, a-z, 0-9, '_', '-' and '.'"
        ));
    }
    Ok(())
}

fn check_regular(name: &HeaderName) -> Result<(), ConfigError> {
    if name.is_pseudo() {
        return Err(ConfigError::new(
            "",
            format!("{name}: pseudo-headers cannot identify a client"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::duration_text;

    #[test]
    fn default_names_use_the_largest_exact_unit() {
        assert_eq!(duration_text(3_600_000), "1h");
        assert_eq!(duration_text(86_400_000 * 2), "2d");
        assert_eq!(duration_text(90_000), "90s");
        assert_eq!(duration_text(120_000), "2m");
        assert_eq!(duration_text(1_500), "1500ms");
    }
}
