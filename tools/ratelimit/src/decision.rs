//! `ShouldRateLimit`: one request's descriptors, matched, counted, answered.
//!
//! As envoyproxy/ratelimit: each descriptor is matched to its most specific rule; a rule
//! another matched rule `replaces` is dropped; an unlimited rule answers OK with an unlimited
//! remaining count; the request is OVER_LIMIT if any enforced descriptor is; a `shadow_mode`
//! rule is counted and reported, never refused. Hits: the descriptor's `hits_addend` when set
//! (0 checks without counting), else the request's (0 means 1).
//!
//! Unlike envoyproxy/ratelimit, a refused request counts nowhere: the descriptors are checked
//! and counted in one atomic step (limitador, over `counters.rs`), all of them or none.
//! Descriptors that ask for different hits are counted in separate steps (in request order, the
//! enforced ones first, stopping at the first refusal); so are two descriptors of one request
//! that match the same rule.

use crate::counters::StoreFailure;
use crate::limits::{Rate, Rule, RuleId};
use crate::snapshot::{descriptor_key, namespace, Snapshot};
use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as ProtoDuration;
use limitador::counter::Counter;
use limitador::limit::Context;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// Service-wide switches.
#[derive(Clone, Copy, Debug, Default)]
pub struct DecisionOptions {
    /// Add draft-03 `x-ratelimit-limit/remaining/reset` to `response_headers_to_add`.
    pub headers: bool,
    /// Answer OK whatever the limits say (everything is still counted).
    pub shadow_all: bool,
}

/// Why a request gets no answer (a gRPC error: Envoy's failure mode decides).
#[derive(Debug)]
pub enum Refusal {
    /// A request the protocol does not allow, or a feature this service does not serve.
    InvalidArgument(String),
    /// The counter store failed (unreachable, timed out).
    Store(StoreFailure),
}

/// The answer, and what the metrics need to know about it.
pub struct Decision {
    pub response: RateLimitResponse,
    /// Descriptors over a `shadow_mode` limit (or over any limit under `shadow_all`).
    pub shadowed: usize,
}

/// What one descriptor comes to before counting.
enum Plan {
    /// No rule, or a rule replaced by another: OK, nothing counted.
    Free,
    Unlimited,
    Count {
        rule: RuleId,
        hits: u64,
        key: String,
    },
}

/// Descriptors counted in one atomic step.
struct Group {
    hits: u64,
    shadow: bool,
    members: Vec<usize>,
}

pub async fn decide(
    snapshot: &Snapshot,
    request: &RateLimitRequest,
    options: DecisionOptions,
) -> Result<Decision, Refusal> {
    if request.domain.is_empty() {
        return Err(Refusal::InvalidArgument(
            "rate limit domain must not be empty".into(),
        ));
    }
    if request.descriptors.is_empty() {
        return Err(Refusal::InvalidArgument(
            "rate limit descriptor list must not be empty".into(),
        ));
    }
    let plans = plan(snapshot, request)?;
    let limits = &snapshot.limits;
    let mut statuses: Vec<DescriptorStatus> = plans
        .iter()
        .map(|plan| match plan {
            Plan::Unlimited => DescriptorStatus {
                code: Code::Ok as i32,
                limit_remaining: u32::MAX,
                ..Default::default()
            },
            _ => DescriptorStatus {
                code: Code::Ok as i32,
                ..Default::default()
            },
        })
        .collect();

    let mut refused = false;
    let mut shadowed = 0;
    for group in groups(snapshot, &plans) {
        // Once refused, the rest is only read: a refused request counts nowhere.
        let count = !refused && group.hits > 0;
        let (limited, counters) = run(snapshot, &request.domain, &plans, &group, count).await?;
        for counter in counters {
            let Some(rule_id) = Snapshot::rule_of(&counter) else {
                continue;
            };
            let Some(&member) = group
                .members
                .iter()
                .find(|&&i| matches!(plans[i], Plan::Count { rule, .. } if rule == rule_id))
            else {
                continue;
            };
            let rule = limits.rule(rule_id);
            let remaining = counter.remaining().unwrap_or(0);
            let over = limited && (remaining < group.hits || (group.hits == 0 && remaining == 0));
            let enforced = over && !rule.shadow && !options.shadow_all;
            if over && !enforced {
                shadowed += 1;
            }
            if enforced {
                refused = true;
            }
            statuses[member] = DescriptorStatus {
                code: if enforced { Code::OverLimit } else { Code::Ok } as i32,
                current_limit: current_limit(rule),
                limit_remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
                duration_until_reset: counter.expires_in().map(proto_duration),
                quota: None,
            };
        }
    }

    let mut response = RateLimitResponse {
        overall_code: if refused { Code::OverLimit } else { Code::Ok } as i32,
        ..Default::default()
    };
    if options.headers {
        response.response_headers_to_add = draft03_headers(&statuses);
    }
    response.statuses = statuses;
    Ok(Decision { response, shadowed })
}

fn plan(snapshot: &Snapshot, request: &RateLimitRequest) -> Result<Vec<Plan>, Refusal> {
    let limits = &snapshot.limits;
    let default_hits = u64::from(request.hits_addend.max(1));
    let mut plans = Vec::with_capacity(request.descriptors.len());
    for descriptor in &request.descriptors {
        if descriptor.limit.is_some() {
            return Err(Refusal::InvalidArgument(
                "descriptor limit overrides are not supported by wasmgate-ratelimit".into(),
            ));
        }
        if descriptor.is_negative_hits {
            return Err(Refusal::InvalidArgument(
                "is_negative_hits is not supported by wasmgate-ratelimit".into(),
            ));
        }
        let entries = descriptor
            .entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()));
        let plan = match limits.rule_for(&request.domain, entries.clone()) {
            None => Plan::Free,
            Some(rule) if limits.rule(rule).rate == Rate::Unlimited => Plan::Unlimited,
            Some(rule) => Plan::Count {
                rule,
                hits: descriptor
                    .hits_addend
                    .map_or(default_hits, |hits| hits.value),
                key: descriptor_key(entries),
            },
        };
        plans.push(plan);
    }
    // A matched rule switches off the rules it `replaces` (by name) for this request.
    let replaced: HashSet<&str> = plans
        .iter()
        .filter_map(|plan| match plan {
            Plan::Count { rule, .. } => Some(limits.rule(*rule).replaces.iter()),
            _ => None,
        })
        .flatten()
        .map(String::as_str)
        .collect();
    if !replaced.is_empty() {
        for plan in &mut plans {
            if let Plan::Count { rule, .. } = plan {
                if limits
                    .rule(*rule)
                    .name
                    .as_deref()
                    .is_some_and(|name| replaced.contains(name))
                {
                    *plan = Plan::Free;
                }
            }
        }
    }
    Ok(plans)
}

/// Counted descriptors in atomic steps: same hits, same shadow mode, each rule at most once;
/// the enforced steps first.
fn groups(snapshot: &Snapshot, plans: &[Plan]) -> Vec<Group> {
    let mut groups: Vec<(Group, HashSet<RuleId>)> = Vec::new();
    for (index, plan) in plans.iter().enumerate() {
        let Plan::Count { rule, hits, .. } = plan else {
            continue;
        };
        let shadow = snapshot.limits.rule(*rule).shadow;
        let fitting = groups
            .iter_mut()
            .find(|(g, rules)| g.hits == *hits && g.shadow == shadow && !rules.contains(rule));
        match fitting {
            Some((group, rules)) => {
                group.members.push(index);
                rules.insert(*rule);
            }
            None => groups.push((
                Group {
                    hits: *hits,
                    shadow,
                    members: vec![index],
                },
                HashSet::from([*rule]),
            )),
        }
    }
    let mut groups: Vec<Group> = groups.into_iter().map(|(g, _)| g).collect();
    groups.sort_by_key(|g| g.shadow);
    groups
}

/// One step through limitador: counts (`count`) or only checks the group's descriptors.
async fn run(
    snapshot: &Snapshot,
    domain: &str,
    plans: &[Plan],
    group: &Group,
    count: bool,
) -> Result<(bool, Vec<Counter>), Refusal> {
    let mut bindings = HashMap::with_capacity(group.members.len());
    for &member in &group.members {
        if let Plan::Count { rule, key, .. } = &plans[member] {
            if let Some(variable) = snapshot.variable(*rule) {
                bindings.insert(variable.to_owned(), key.clone());
            }
        }
    }
    let ctx = Context::from(bindings);
    let namespace = namespace(domain);
    let result = if count {
        snapshot
            .limiter
            .check_rate_limited_and_update(&namespace, &ctx, group.hits)
            .await
    } else {
        snapshot
            .limiter
            .is_rate_limited(&namespace, &ctx, group.hits)
            .await
    };
    let result = result.map_err(|e| Refusal::Store(e.into()))?;
    Ok((result.limited, result.counters))
}

fn current_limit(rule: &Rule) -> Option<RateLimit> {
    match rule.rate {
        Rate::Unlimited => None,
        Rate::PerUnit {
            requests_per_unit,
            unit,
        } => Some(RateLimit {
            name: rule.name.clone().unwrap_or_default(),
            requests_per_unit,
            unit: unit.proto(),
        }),
    }
}

pub fn proto_duration(duration: Duration) -> ProtoDuration {
    ProtoDuration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(duration.subsec_nanos()).unwrap_or(0),
    }
}

/// `x-ratelimit-*` (draft 03) as Envoy's own ratelimit filter makes them from `statuses`: the
/// status with the least remaining (the first of equals) gives the numbers, every status with a
/// limit adds its quota policy (`, <limit>;w=<window seconds>[;name="<name>"]`).
pub fn draft03_headers(statuses: &[DescriptorStatus]) -> Vec<HeaderValue> {
    let mut closest: Option<&DescriptorStatus> = None;
    let mut policies = String::new();
    for status in statuses {
        let Some(limit) = &status.current_limit else {
            continue;
        };
        if closest.is_none_or(|c| status.limit_remaining < c.limit_remaining) {
            closest = Some(status);
        }
        let window = crate::limits::Unit::from_proto(limit.unit).map_or(0, |u| u.seconds());
        policies.push_str(&format!(", {};w={window}", limit.requests_per_unit));
        if !limit.name.is_empty() {
            policies.push_str(&format!(";name=\"{}\"", limit.name));
        }
    }
    let Some(closest) = closest else {
        return Vec::new();
    };
    let requests_per_unit = closest
        .current_limit
        .as_ref()
        .map_or(0, |limit| limit.requests_per_unit);
    let reset = closest
        .duration_until_reset
        .as_ref()
        .map_or(0, |d| d.seconds);
    [
        (
            "x-ratelimit-limit",
            format!("{requests_per_unit}{policies}"),
        ),
        ("x-ratelimit-remaining", closest.limit_remaining.to_string()),
        ("x-ratelimit-reset", reset.to_string()),
    ]
    .into_iter()
    .map(|(key, value)| HeaderValue {
        key: key.into(),
        value,
        raw_value: Vec::new(),
    })
    .collect()
}

#[cfg(test)]
mod tests;
