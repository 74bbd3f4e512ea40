//! `Renew`: settle an instance's lease on a descriptor's limit and grant the next one.
//!
//! Per renewal, in this order:
//! 1. **Settle** `lease_id` (when not empty): if that hold still exists, it is released and
//!    `min(used, held)` is counted, in one atomic step. A lease that is unknown, already
//!    settled, or from a window that has ended changes nothing: a repeated or forged renewal
//!    never counts twice. If the store fails here, nothing is granted (UNKNOWN) and the holder
//!    keeps its lease id to settle later.
//! 2. **Grant** up to `want` as a new hold (limitador's `reserve`, atomic and all-or-nothing;
//!    refused, it is retried once with what remains). The hold lasts until settled or until the
//!    window ends, never less: an instance that stops renewing keeps its grant counted in full.
//! 3. **Validity**: the holder may spend the grant for `valid_for` = min(lease validity,
//!    time left in the window − margin), so it never spends it in the next window, where the
//!    counter starts again. A grant whose window ends within the margin is given back at once
//!    and answered OVER_LIMIT with the time to the reset.
//!
//! No limit for the descriptor (no rule, or `unlimited`): OK, `granted = want`, no lease id
//! (nothing to settle). A `shadow_mode` rule that refuses grants `want` anyway, without a hold.

use crate::counters::{LeaseSettlement, StoreFailure};
use crate::limits::{Rate, Rule, RuleId};
use crate::snapshot::{descriptor_key, namespace, Snapshot};
use limitador::counter::Counter;
use limitador::limit::Context;
use std::collections::HashMap;
use std::time::Duration;
use wasmgate_ratelimit_protocol::lease::{LeaseGrant, LeaseRenewal, RenewRequest, RenewResponse};
use wasmgate_ratelimit_protocol::rls::{Code, RateLimit};

/// How long grants may be spent.
#[derive(Clone, Copy, Debug)]
pub struct LeaseOptions {
    /// The longest `valid_for` granted.
    pub validity: Duration,
    /// Kept off the end of the window: more than the time an answer takes to reach its holder.
    pub margin: Duration,
}

/// What happened to one renewal, for the metrics.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RenewalReport {
    pub domain_known: bool,
    pub code: Option<Code>,
    pub granted: u64,
    /// Hits counted by settling the previous lease.
    pub settled: u64,
    /// The previous lease was not held (unknown, settled, or its window ended).
    pub unknown_lease: bool,
    pub shadowed: bool,
    pub store_error: Option<StoreFailure>,
}

pub async fn renew(
    snapshot: &Snapshot,
    settlement: &dyn LeaseSettlement,
    request: &RenewRequest,
    options: LeaseOptions,
) -> (RenewResponse, Vec<RenewalReport>) {
    let mut grants = Vec::with_capacity(request.renewals.len());
    let mut reports = Vec::with_capacity(request.renewals.len());
    for renewal in &request.renewals {
        let mut report = RenewalReport {
            domain_known: snapshot.limits.has_domain(&request.domain),
            ..Default::default()
        };
        let grant = renew_one(
            snapshot,
            settlement,
            &request.domain,
            renewal,
            options,
            &mut report,
        )
        .await;
        report.code = Code::try_from(grant.code).ok();
        report.granted = grant.granted;
        grants.push(grant);
        reports.push(report);
    }
    (RenewResponse { grants }, reports)
}

async fn renew_one(
    snapshot: &Snapshot,
    settlement: &dyn LeaseSettlement,
    domain: &str,
    renewal: &LeaseRenewal,
    options: LeaseOptions,
    report: &mut RenewalReport,
) -> LeaseGrant {
    let free = LeaseGrant {
        code: Code::Ok as i32,
        granted: renewal.want,
        valid_for: Some(proto_duration(options.validity)),
        ..Default::default()
    };
    let entries: Vec<(&str, &str)> = renewal
        .descriptor
        .iter()
        .flat_map(|d| d.entries.iter().map(|e| (e.key.as_str(), e.value.as_str())))
        .collect();
    let Some(rule_id) = snapshot.limits.rule_for(domain, entries.iter().copied()) else {
        return free;
    };
    let rule = snapshot.limits.rule(rule_id);
    if rule.rate == Rate::Unlimited {
        return free;
    }
    let key = descriptor_key(entries.iter().copied());
    let Some(counter) = snapshot.counter(rule_id, &key) else {
        return failed(
            report,
            StoreFailure::other("no counter for this descriptor"),
        );
    };

    if !renewal.lease_id.is_empty() {
        match settlement
            .settle(&counter, &renewal.lease_id, renewal.used)
            .await
        {
            Ok(Some(counted)) => report.settled = counted,
            Ok(None) => report.unknown_lease = true,
            Err(e) => return failed(report, e.into()),
        }
    }
    let limit = current_limit(rule);
    if renewal.want == 0 {
        return LeaseGrant {
            code: Code::Ok as i32,
            current_limit: limit,
            ..Default::default()
        };
    }

    match hold(snapshot, rule_id, domain, &key, renewal.want).await {
        Err(e) => failed(report, e),
        Ok(Held::Granted {
            lease,
            amount,
            counter,
        }) => {
            let left = counter.expires_in().unwrap_or_else(|| counter.window());
            let Some(valid_for) = left.checked_sub(options.margin).filter(|d| !d.is_zero()) else {
                // Too close to the reset to be spent safely: give it back.
                if let Err(e) = settlement.settle(&counter, &lease, 0).await {
                    return failed(report, e.into());
                }
                return refused(
                    limit,
                    &counter,
                    counter.remaining().unwrap_or(0).saturating_add(amount),
                );
            };
            LeaseGrant {
                code: Code::Ok as i32,
                lease_id: lease,
                granted: amount,
                valid_for: Some(proto_duration(valid_for.min(options.validity))),
                current_limit: limit,
                limit_remaining: counter.remaining().unwrap_or(0),
                duration_until_reset: Some(proto_duration(left)),
            }
        }
        Ok(Held::Refused(counter)) if rule.shadow => {
            report.shadowed = true;
            LeaseGrant {
                current_limit: limit,
                duration_until_reset: counter.expires_in().map(proto_duration),
                ..free
            }
        }
        Ok(Held::Refused(counter)) => refused(limit, &counter, counter.remaining().unwrap_or(0)),
    }
}

enum Held {
    Granted {
        lease: String,
        amount: u64,
        counter: Counter,
    },
    Refused(Counter),
}

/// limitador's reserve for `want`, then for what remains if `want` does not fit.
async fn hold(
    snapshot: &Snapshot,
    rule: RuleId,
    domain: &str,
    key: &str,
    want: u64,
) -> Result<Held, StoreFailure> {
    let Some(variable) = snapshot.variable(rule) else {
        return Err(StoreFailure::other("the rule counts nothing"));
    };
    let ctx = Context::from(HashMap::from([(variable.to_owned(), key.to_owned())]));
    let namespace = namespace(domain);
    let (namespace, ctx) = (&namespace, &ctx);
    let reserve = |amount: u64| async move {
        let result = snapshot
            .limiter
            .reserve(namespace, ctx, amount, None)
            .await
            .map_err(StoreFailure::from)?;
        let Some(counter) = result.counters.into_iter().next() else {
            return Err(StoreFailure::other("no counter for this descriptor"));
        };
        Ok(match result.reservation_id {
            Some(lease) if !result.limited => Held::Granted {
                lease: lease.to_string(),
                amount: result.amount,
                counter,
            },
            _ => Held::Refused(counter),
        })
    };
    match reserve(want).await? {
        Held::Refused(counter) => {
            let remaining = counter.remaining().unwrap_or(0);
            if remaining == 0 || remaining >= want {
                return Ok(Held::Refused(counter));
            }
            reserve(remaining).await
        }
        granted => Ok(granted),
    }
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

fn refused(limit: Option<RateLimit>, counter: &Counter, remaining: u64) -> LeaseGrant {
    LeaseGrant {
        code: Code::OverLimit as i32,
        current_limit: limit,
        limit_remaining: remaining,
        duration_until_reset: counter.expires_in().map(proto_duration),
        ..Default::default()
    }
}

fn failed(report: &mut RenewalReport, error: StoreFailure) -> LeaseGrant {
    report.store_error = Some(error);
    LeaseGrant {
        code: Code::Unknown as i32,
        ..Default::default()
    }
}

fn proto_duration(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(duration.subsec_nanos()).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests;
