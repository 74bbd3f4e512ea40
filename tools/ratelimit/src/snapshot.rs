//! The limits in force and the limitador limiter that counts them, swapped whole on reload.
//!
//! Each rule of the configuration becomes one limitador `Limit` in its domain's namespace,
//! qualified by one CEL variable named after the rule (`r<index>`). For a request the service
//! matches each descriptor to its rule itself (envoyproxy/ratelimit's most-specific match, which
//! limitador's all-matching conditions cannot express) and binds that rule's variable to the
//! descriptor's entries: limitador then finds exactly those limits, makes one counter per
//! descriptor value and checks and counts them in one storage step.

use crate::counters::Store;
use crate::limits::{Limits, Rate, RuleId};
use limitador::counter::Counter;
use limitador::limit::{Context, Expression, Limit, Namespace};
use limitador::AsyncRateLimiter;
use std::collections::HashMap;
use std::sync::Arc;

pub struct Snapshot {
    pub limits: Limits,
    pub limiter: AsyncRateLimiter,
    /// Per rule (same index); `None` for an unlimited rule.
    counted: Vec<Option<Counted>>,
}

struct Counted {
    limit: Arc<Limit>,
    variable: String,
}

/// One descriptor's entries, encoded as its counter's identity (envoyproxy/ratelimit counts a
/// descriptor by all its entries, whichever rule it matched).
pub fn descriptor_key<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let pairs: Vec<[&str; 2]> = entries.into_iter().map(|(k, v)| [k, v]).collect();
    serde_json::to_string(&pairs).unwrap_or_default()
}

impl Snapshot {
    pub fn new(limits: Limits, store: &Store) -> Result<Snapshot, String> {
        let limiter = AsyncRateLimiter::new_with_storage(store.limiter_storage());
        let mut counted = Vec::with_capacity(limits.rules().len());
        for (id, rule) in limits.rules().iter().enumerate() {
            let Rate::PerUnit {
                requests_per_unit,
                unit,
            } = rule.rate
            else {
                counted.push(None);
                continue;
            };
            let variable = format!("r{id}");
            let expression = Expression::parse(&variable)
                .map_err(|e| format!("{}: cannot make a limit: {e}", rule.path))?;
            let mut limit = Limit::with_id(
                rule.path.clone(),
                rule.domain.as_str(),
                u64::from(requests_per_unit),
                unit.seconds(),
                [],
                [expression],
            );
            limit.set_name(rule.name.clone().unwrap_or_else(|| rule.path.clone()));
            limiter.add_limit(limit.clone());
            counted.push(Some(Counted {
                limit: Arc::new(limit),
                variable,
            }));
        }
        Ok(Snapshot {
            limits,
            limiter,
            counted,
        })
    }

    /// The rule's variable name; `None` for an unlimited rule.
    pub fn variable(&self, rule: RuleId) -> Option<&str> {
        self.counted[rule].as_ref().map(|c| c.variable.as_str())
    }

    /// The counter of `rule` for one descriptor value (for settling a lease).
    pub fn counter(&self, rule: RuleId, key: &str) -> Option<Counter> {
        let counted = self.counted[rule].as_ref()?;
        let ctx = Context::from(HashMap::from([(counted.variable.clone(), key.to_owned())]));
        Counter::new(Arc::clone(&counted.limit), &ctx)
            .ok()
            .flatten()
    }

    /// The rule a limitador counter belongs to (its one variable is `r<rule index>`).
    pub fn rule_of(counter: &Counter) -> Option<RuleId> {
        let variable = counter.set_variables().keys().next()?;
        variable.strip_prefix('r')?.parse().ok()
    }
}

/// A limitador namespace for a domain.
pub fn namespace(domain: &str) -> Namespace {
    Namespace::from(domain)
}
