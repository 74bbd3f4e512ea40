//! One key's lease record: spending, claiming renewals, settling, and its bytes.

use super::*;
use wasmgate_ratelimit_protocol::rls::{RateLimit, Unit};
use wasmgate_shared_store::MemoryStore;

const T0: u64 = 1_000_000;
const CLAIM: u64 = T0 + 500;
const PERIOD: u64 = 1_000;
const TERMS: Terms = Terms {
    cost: 1,
    size: 10,
    period_ms: PERIOD,
    timeout_ms: 20,
};

fn lease(id: &str, granted: u64, used: u64, valid_until: u64) -> Lease<'_> {
    Lease {
        id: id.into(),
        granted,
        used,
        valid_until,
        closed: false,
    }
}

fn grant(code: Code, id: &str, granted: u64, valid_ms: i64, remaining: u64) -> LeaseGrant {
    LeaseGrant {
        code: code as i32,
        lease_id: id.into(),
        granted,
        valid_for: Some(prost_types::Duration {
            seconds: valid_ms / 1000,
            nanos: ((valid_ms % 1000) * 1_000_000) as i32,
        }),
        current_limit: Some(RateLimit {
            name: "per-tenant".into(),
            requests_per_unit: 100,
            unit: Unit::Minute as i32,
        }),
        limit_remaining: remaining,
        duration_until_reset: Some(prost_types::Duration {
            seconds: 30,
            nanos: 0,
        }),
    }
}

#[test]
fn a_key_without_a_lease_claims_one_renewal_and_others_wait() {
    let mut record = LeaseRecord::default();
    assert_eq!(
        record.spend(1, 10, T0, CLAIM),
        (Spend::Wait { renew: true }, true)
    );
    // A second request (another worker) finds the claim: it waits, writes nothing.
    assert_eq!(
        record.spend(1, 10, T0 + 1, CLAIM),
        (Spend::Wait { renew: false }, false)
    );
    // The claim lapses: the next request claims again.
    assert_eq!(
        record.spend(1, 10, CLAIM, CLAIM + 500),
        (Spend::Wait { renew: true }, true)
    );
}

#[test]
fn spending_asks_for_the_next_lease_at_80_percent_and_never_past_a_lease() {
    let mut record = LeaseRecord {
        leases: vec![lease("a", 10, 0, T0 + 5_000)],
        ..Default::default()
    };
    for used in 1..=7 {
        let (spend, changed) = record.spend(1, 10, T0, CLAIM);
        assert!(changed);
        assert!(
            matches!(spend, Spend::Spent { renew: false, .. }),
            "{used}: {spend:?}"
        );
    }
    // The eighth hit leaves 2 of 10: the next lease is claimed now.
    assert!(matches!(
        record.spend(1, 10, T0, CLAIM).0,
        Spend::Spent { renew: true, .. }
    ));
    assert!(matches!(
        record.spend(1, 10, T0, CLAIM).0,
        Spend::Spent { renew: false, .. }
    ));
    assert!(matches!(
        record.spend(1, 10, T0, CLAIM).0,
        Spend::Spent { .. }
    ));
    // Spent: the renewal claimed above is on its way.
    assert_eq!(
        record.spend(1, 10, T0, CLAIM).0,
        Spend::Wait { renew: false }
    );
    assert_eq!(record.leases[0].used, 10);
    // A cost that does not fit what is left is not spent.
    let mut record = LeaseRecord {
        leases: vec![lease("a", 10, 8, T0 + 5_000)],
        ..Default::default()
    };
    assert_eq!(
        record.spend(3, 10, T0, CLAIM).0,
        Spend::Wait { renew: true }
    );
}

#[test]
fn a_lapsed_lease_is_not_spent() {
    let mut record = LeaseRecord {
        leases: vec![lease("a", 10, 0, T0)],
        ..Default::default()
    };
    assert_eq!(
        record.spend(1, 10, T0, CLAIM).0,
        Spend::Wait { renew: true }
    );
}

#[test]
fn refusals_hold_until_asking_again() {
    let mut record = LeaseRecord {
        refusal: Refusal::OverLimit,
        ask_after: T0 + 100,
        ..Default::default()
    };
    assert!(matches!(
        record.spend(1, 10, T0, CLAIM),
        (Spend::OverLimit(_), false)
    ));
    assert_eq!(
        record.spend(1, 10, T0 + 100, CLAIM).0,
        Spend::Wait { renew: true }
    );
    let mut record = LeaseRecord {
        refusal: Refusal::Failed,
        ask_after: T0 + 100,
        ..Default::default()
    };
    assert_eq!(record.spend(1, 10, T0, CLAIM), (Spend::Failed, false));
}

#[test]
fn a_renewal_reports_closed_leases_only_and_they_are_never_spent_again() {
    let mut record = LeaseRecord {
        last_spend_ms: T0,
        renewing_until: CLAIM,
        leases: vec![
            lease("spent", 10, 10, T0 + 5_000),
            lease("lapsed", 10, 4, T0),
            lease("current", 10, 9, T0 + 5_000),
        ],
        ..Default::default()
    };
    let plan = record.plan_renewal(1, 10, PERIOD, T0, CLAIM, true).unwrap();
    assert_eq!(
        plan,
        RenewalPlan {
            settle: vec![("spent".into(), 10), ("lapsed".into(), 4)],
            want: 10,
        }
    );
    assert!(record.leases[0].closed && record.leases[1].closed && !record.leases[2].closed);
    // The last hit of "current" is still spent while the renewal is out.
    assert!(matches!(
        record.spend(1, 10, T0 + 1, CLAIM).0,
        Spend::Spent { .. }
    ));
    // The service settles both and grants 10 more.
    let result = RenewalResult::Answered {
        settled: vec!["spent".into(), "lapsed".into()],
        grant: Some(grant(Code::Ok, "next", 10, 10_000, 70)),
    };
    record.finish_renewal(&result, T0, T0 + 5, PERIOD);
    let ids: Vec<&str> = record.leases.iter().map(|l| &*l.id).collect();
    assert_eq!(ids, ["current", "next"]);
    assert_eq!(record.renewing_until, 0);
    // Valid for its 10 s, counted from when the renewal was sent.
    assert_eq!(record.leases[1].valid_until, T0 + 10_000);
    let view = record.view_now(T0 + 5).unwrap();
    assert_eq!((view.limit, view.remaining), (100, 80));
    assert_eq!(view.reset_at_ms, T0 + 30_000);
}

#[test]
fn an_unconfirmed_settlement_is_reported_again() {
    let mut record = LeaseRecord {
        leases: vec![lease("a", 10, 10, T0 + 5_000)],
        ..Default::default()
    };
    record.plan_renewal(1, 10, PERIOD, T0, CLAIM, true).unwrap();
    record.finish_renewal(&RenewalResult::Failed, T0, T0 + 20, PERIOD);
    assert_eq!(record.refusal, Refusal::Failed);
    assert_eq!(record.ask_after, T0 + 20 + PERIOD);
    // Still there, closed, with the same count: the next renewal reports it.
    assert_eq!(record.leases.len(), 1);
    let plan = record
        .plan_renewal(1, 10, PERIOD, T0 + 2_000, CLAIM + 2_000, false)
        .unwrap();
    assert_eq!(plan.settle, vec![("a".to_owned(), 10)]);
}

#[test]
fn a_grant_never_outlives_the_window() {
    let mut record = LeaseRecord::default();
    // valid_for 60 s, but the window resets in 30 s.
    let result = RenewalResult::Answered {
        settled: vec![],
        grant: Some(grant(Code::Ok, "a", 5, 60_000, 0)),
    };
    record.finish_renewal(&result, T0, T0 + 3, PERIOD);
    assert_eq!(record.leases[0].valid_until, T0 + 30_000);
}

#[test]
fn over_limit_holds_until_the_reset_or_the_next_period() {
    let mut record = LeaseRecord::default();
    let result = RenewalResult::Answered {
        settled: vec![],
        grant: Some(grant(Code::OverLimit, "", 0, 0, 0)),
    };
    record.finish_renewal(&result, T0, T0 + 3, PERIOD);
    assert_eq!(record.refusal, Refusal::OverLimit);
    assert_eq!(record.ask_after, T0 + 3 + PERIOD);
    let Spend::OverLimit(Some(view)) = record.spend(1, 10, T0 + 4, CLAIM).0 else {
        panic!("{record:?}")
    };
    assert_eq!((view.remaining, view.reset_at_ms), (0, T0 + 30_000));
    // UNKNOWN, or OK without a usable grant: failed.
    for bad in [
        grant(Code::Unknown, "", 0, 0, 0),
        grant(Code::Ok, "x", 0, 1_000, 0),
        grant(Code::Ok, "x", 5, 0, 0),
    ] {
        let mut record = LeaseRecord::default();
        let result = RenewalResult::Answered {
            settled: vec![],
            grant: Some(bad),
        };
        record.finish_renewal(&result, T0, T0, PERIOD);
        assert_eq!(record.refusal, Refusal::Failed);
        assert!(record.leases.is_empty());
    }
}

#[test]
fn a_grant_without_an_id_is_spent_and_never_settled() {
    // The service limits nothing for this descriptor: it grants what was asked, holds nothing.
    let mut record = LeaseRecord::default();
    let result = RenewalResult::Answered {
        settled: vec![],
        grant: Some(grant(Code::Ok, "", 10, 10_000, 0)),
    };
    record.finish_renewal(&result, T0, T0, PERIOD);
    for _ in 0..10 {
        assert!(matches!(
            record.spend(1, 10, T0 + 1, CLAIM).0,
            Spend::Spent { .. }
        ));
    }
    let plan = record
        .plan_renewal(1, 10, PERIOD, T0 + 2, CLAIM, true)
        .unwrap();
    assert_eq!(
        plan,
        RenewalPlan {
            settle: vec![],
            want: 10
        }
    );
    assert!(record.leases.is_empty());
}

#[test]
fn the_tick_settles_done_leases_renews_lapsing_ones_and_releases_idle_ones() {
    // Busy, and its lease lapses within the period: settle nothing, ask for the next.
    let mut busy = LeaseRecord {
        last_spend_ms: T0 - 10,
        leases: vec![lease("a", 10, 2, T0 + 500)],
        ..Default::default()
    };
    let plan = busy.plan_renewal(1, 10, PERIOD, T0, CLAIM, false).unwrap();
    assert_eq!(
        plan,
        RenewalPlan {
            settle: vec![],
            want: 10
        }
    );
    // Another worker's renewal is out: nothing.
    assert_eq!(busy.plan_renewal(1, 10, PERIOD, T0, CLAIM, false), None);
    // Busy with plenty left and time to spend it: nothing to do.
    let mut steady = LeaseRecord {
        last_spend_ms: T0 - 10,
        leases: vec![lease("a", 10, 2, T0 + 5_000)],
        ..Default::default()
    };
    assert_eq!(steady.plan_renewal(1, 10, PERIOD, T0, CLAIM, false), None);
    // Idle for a period: give everything back, ask for nothing.
    let mut idle = LeaseRecord {
        last_spend_ms: T0 - PERIOD,
        leases: vec![lease("a", 10, 2, T0 + 5_000)],
        ..Default::default()
    };
    let plan = idle.plan_renewal(1, 10, PERIOD, T0, CLAIM, false).unwrap();
    assert_eq!(
        plan,
        RenewalPlan {
            settle: vec![("a".into(), 2)],
            want: 0
        }
    );
    assert_eq!(idle.unspent(T0), 0, "released: nothing left to spend here");
}

#[test]
fn a_slot_is_reused_only_once_its_key_holds_nothing() {
    let holding = LeaseRecord {
        leases: vec![lease("a", 10, 2, T0 + 5_000)],
        ..Default::default()
    };
    assert!(!holding.reusable(T0, 10 * PERIOD));
    let renewing = LeaseRecord {
        renewing_until: CLAIM,
        ..Default::default()
    };
    assert!(!renewing.reusable(T0, 10 * PERIOD));
    assert!(LeaseRecord::default().reusable(T0, 10 * PERIOD));
    // Leases never settled are forgotten once the key has been idle long enough.
    let mut unsettled = LeaseRecord {
        last_spend_ms: T0,
        leases: vec![lease("a", 10, 10, T0 + 5_000)],
        ..Default::default()
    };
    unsettled.leases[0].closed = true;
    assert!(!unsettled.reusable(T0 + 1, 10 * PERIOD));
    assert!(unsettled.reusable(T0 + 10 * PERIOD, 10 * PERIOD));
}

#[test]
fn records_round_trip_and_foreign_bytes_are_unreadable() {
    let mut record = LeaseRecord {
        last_spend_ms: 1,
        renewing_until: 2,
        ask_after: 3,
        refusal: Refusal::OverLimit,
        view: Some(View {
            name: "per-tenant".into(),
            limit: 100,
            window_ms: 60_000,
            remaining: 7,
            reset_at_ms: 9,
        }),
        leases: vec![lease("a", 10, 2, 4), lease("ü-ünïcode", 1, 0, 5)],
    };
    record.leases[1].closed = true;
    let digest = [7u8; 16];
    let bytes = encode(&digest, &record);
    assert_eq!(decode(&bytes), Slot::Held(digest, record.clone()));
    assert_eq!(decode(&[]), Slot::Vacant);
    let mut truncated = bytes.clone();
    truncated.pop();
    assert_eq!(decode(&truncated), Slot::Unreadable);
    let mut longer = bytes;
    longer.push(0);
    assert_eq!(decode(&longer), Slot::Unreadable);
    // A bucket record (format 1) is not a lease record.
    assert_eq!(decode(&[1; 40]), Slot::Unreadable);
    for refusal in [Refusal::None, Refusal::Failed, Refusal::Closing] {
        let record = LeaseRecord {
            refusal,
            ..record.clone()
        };
        assert_eq!(
            decode(&encode(&digest, &record)),
            Slot::Held(digest, record.clone())
        );
    }
}

#[test]
fn a_window_closing_with_budget_left_asks_per_request_until_the_reset() {
    // The service leased nothing, the window ending within its margin, 12 hits left.
    let mut record = LeaseRecord::default();
    let result = RenewalResult::Answered {
        settled: vec![],
        grant: Some(grant(Code::OverLimit, "", 0, 0, 12)),
    };
    record.finish_renewal(&result, T0, T0 + 3, 60_000);
    assert_eq!(record.refusal, Refusal::Closing);
    // The reset (30 s after the renewal was sent) comes before the next period.
    assert_eq!(record.ask_after, T0 + 30_000);
    assert_eq!(record.spend(1, 10, T0 + 4, CLAIM), (Spend::Ask, false));
    assert_eq!(record.view.as_ref().map(|v| v.remaining), Some(12));
    // At the reset a request claims the next lease.
    assert_eq!(
        record.spend(1, 10, T0 + 30_000, CLAIM),
        (Spend::Wait { renew: true }, true)
    );
}

#[test]
fn two_workers_spending_one_lease_never_spend_more_than_it_holds() {
    let table = LeaseTable::new("t", 16, 4);
    let store = MemoryStore::new();
    table.prepare(&store);
    let digest = [3u8; 16];
    // The first request claims the key's renewal; the grant of 10 lands.
    let SpendOutcome::At { slot, spend } = table.spend(&store, &digest, TERMS, T0) else {
        panic!()
    };
    assert_eq!(spend, Spend::Wait { renew: true });
    let plan = table
        .begin_renewal(&store, (slot, &digest), TERMS, T0, true)
        .unwrap();
    assert_eq!(plan.want, 10);
    let result = RenewalResult::Answered {
        settled: vec![],
        grant: Some(grant(Code::Ok, "a", 10, 10_000, 90)),
    };
    table.finish_renewal(&store, (slot, &digest), &result, (T0, T0 + 2), TERMS);
    // Every other write loses a race once: still exactly 10 spent.
    let mut spent = 0;
    for i in 0..30 {
        if i % 2 == 0 {
            store.fail_next_sets(1);
        }
        if let SpendOutcome::At {
            spend: Spend::Spent { .. },
            ..
        } = table.spend(&store, &digest, TERMS, T0 + 3)
        {
            spent += 1;
        }
    }
    assert_eq!(spent, 10);
}

#[test]
fn a_full_probe_window_has_no_slot_for_a_newcomer() {
    let table = LeaseTable::new("t", 2, 2);
    let store = MemoryStore::new();
    table.prepare(&store);
    for n in 0..2u8 {
        let outcome = table.spend(&store, &[n; 16], TERMS, T0);
        assert!(matches!(outcome, SpendOutcome::At { .. }));
    }
    assert_eq!(
        table.spend(&store, &[9; 16], TERMS, T0),
        SpendOutcome::NoSlot
    );
    assert_eq!(
        store.key_count(),
        2 + 1,
        "two slots and their guard, no more"
    );
}
