//! Properties of the token buckets and of the bounded table that holds them, over any
//! limits and any sequence of requests and times (proptest), through the public API:
//! a configuration, requests, the in-memory store.
//!
//! * A bucket never admits more than `burst` plus what refilled: over any stretch
//!   `[t1, t2]` of a client's admitted requests, `cost × count ≤ burst +
//!   ⌊(t2 − t1) × requests / period⌋`, for every limit of the rule.
//! * Eviction never resets a bucket that has not refilled: the same bound holds per
//!   client when many clients fight over a table of one to three slots (a client
//!   whose bucket was evicted before it refilled would get more). Requests the table
//!   counts against the rule's overflow bucket are checked against that bucket.

// Test code: a failed unwrap is a failed test (clippy.toml allows it in #[test]s only).
#![allow(clippy::unwrap_used)]

use proptest::collection::vec;
use proptest::prelude::*;
use std::collections::BTreeMap;
use wasmgate_rate_limit_policy::{RateLimitPolicy, RequestView, Verdict};
use wasmgate_shared_store::MemoryStore;

/// One limit: requests per period (ms), burst.
#[derive(Debug, Clone, Copy)]
struct Limit {
    requests: u64,
    period_ms: u64,
    burst: u64,
}

fn limit() -> impl Strategy<Value = Limit> {
    (1u64..=5, 1u64..=2_000, 1u64..=6).prop_map(|(requests, period_ms, burst)| Limit {
        requests,
        period_ms,
        burst,
    })
}

struct Client(String);

impl RequestView for Client {
    fn header(&self, name: &str) -> Option<String> {
        match name {
            ":method" => Some("GET".into()),
            ":path" => Some("/orders".into()),
            "x-user-id" => Some(self.0.clone()),
            _ => None,
        }
    }
    fn source_address(&self) -> Option<String> {
        None
    }
    fn route_name(&self) -> Option<String> {
        None
    }
}

/// Sends `steps` (client, milliseconds since the previous request) through a policy
/// with these limits, cost and table, and returns the admission times per bucket: the
/// client's name, or "overflow".
fn admissions(
    limits: &[Limit],
    cost_pick: u64,
    slots: u32,
    probe: u32,
    steps: &[(usize, u64)],
) -> (u64, BTreeMap<String, Vec<u64>>) {
    let smallest_burst = limits.iter().map(|l| l.burst).min().unwrap();
    let cost = 1 + cost_pick % smallest_burst;
    let limits_json: Vec<String> = limits
        .iter()
        .enumerate()
        .map(|(i, l)| {
            format!(
                r#"{{"name": "l{i}", "requests": {}, "per": "{}ms", "burst": {}}}"#,
                l.requests, l.period_ms, l.burst
            )
        })
        .collect();
    let config = format!(
        r#"{{"table": {{"name": "prop", "slots": {slots}, "probe": {probe}}},
            "identity": [{{"header": "x-user-id"}}],
            "default": {{"cost": {cost}, "limits": [{}]}}}}"#,
        limits_json.join(", ")
    );
    let policy = RateLimitPolicy::from_json(config.as_bytes()).unwrap();
    let store = MemoryStore::new();
    policy.prepare(&store);
    let mut now = 1_767_225_600_000u64;
    let mut admitted: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for &(client, elapsed) in steps {
        now += elapsed;
        let name = format!("client-{client}");
        let decision = policy.decide(&Client(name.clone()), &store, now);
        assert!(!matches!(decision.verdict, Verdict::Uncounted(_)));
        if let Verdict::Allowed(_) = decision.verdict {
            let bucket = if decision.events.overflow {
                "overflow".to_owned()
            } else {
                name
            };
            admitted.entry(bucket).or_default().push(now);
        }
    }
    (cost, admitted)
}

/// The bound, for every bucket, limit and stretch of admitted requests.
fn check_bound(
    limits: &[Limit],
    cost: u64,
    admitted: &BTreeMap<String, Vec<u64>>,
) -> Result<(), TestCaseError> {
    for (bucket, times) in admitted {
        for l in limits {
            for (i, &start) in times.iter().enumerate() {
                for (j, &end) in times.iter().enumerate().skip(i) {
                    let taken = (j - i + 1) as u64 * cost;
                    let allowance = l.burst + (end - start) * l.requests / l.period_ms;
                    prop_assert!(
                        taken <= allowance,
                        "{bucket}: {taken} tokens within {start}..={end}, at most {allowance} ({l:?})"
                    );
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn a_bucket_never_admits_more_than_burst_plus_refill(
        limits in vec(limit(), 1..=3),
        cost_pick in 0u64..6,
        steps in vec((0usize..3, 0u64..1_500), 1..60),
    ) {
        // A table large enough that nothing is evicted.
        let (cost, admitted) = admissions(&limits, cost_pick, 64, 8, &steps);
        check_bound(&limits, cost, &admitted)?;
        // Somebody got in: the first request finds a full bucket.
        prop_assert!(!admitted.is_empty());
    }

    #[test]
    fn eviction_never_resets_a_bucket_that_has_not_refilled(
        limits in vec(limit(), 1..=2),
        cost_pick in 0u64..6,
        slots in 1u32..=3,
        probe_pick in 0u32..3,
        steps in vec((0usize..8, 0u64..800), 1..80),
    ) {
        let probe = 1 + probe_pick % slots;
        let (cost, admitted) = admissions(&limits, cost_pick, slots, probe, &steps);
        check_bound(&limits, cost, &admitted)?;
    }
}
