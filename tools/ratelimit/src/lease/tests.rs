use super::*;
use crate::counters::{MemoryCounters, Store};
use crate::limits::Limits;
use std::path::Path;
use wasmgate_ratelimit_protocol::rls::{Entry, RateLimitDescriptor};

const LIMITS: &str = "
domain: d
descriptors:
  - key: tenant
    rate_limit: {unit: minute, requests_per_unit: 100, name: per-tenant}
  - key: tenant
    value: vip
    rate_limit: {unlimited: true}
  - key: tenant
    value: trial
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 5}
  - key: second
    rate_limit: {unit: second, requests_per_unit: 10}
";

const OPTIONS: LeaseOptions = LeaseOptions {
    validity: Duration::from_secs(10),
    margin: Duration::from_millis(100),
};

struct Fixture {
    snapshot: Snapshot,
    store: Store,
}

fn fixture() -> Fixture {
    let store = Store::Memory(MemoryCounters::default());
    let limits = Limits::parse(Path::new("limits.yaml"), LIMITS).unwrap();
    Fixture {
        snapshot: Snapshot::new(limits, &store).unwrap(),
        store,
    }
}

impl Fixture {
    async fn renew(
        &self,
        key: &str,
        value: &str,
        lease: &str,
        used: u64,
        want: u64,
    ) -> (LeaseGrant, RenewalReport) {
        let request = RenewRequest {
            domain: "d".into(),
            holder: "test".into(),
            renewals: vec![LeaseRenewal {
                descriptor: Some(RateLimitDescriptor {
                    entries: vec![Entry {
                        key: key.into(),
                        value: value.into(),
                    }],
                    ..Default::default()
                }),
                lease_id: lease.into(),
                used,
                want,
            }],
        };
        let (response, mut reports) = renew(
            &self.snapshot,
            self.store.settlement().as_ref(),
            &request,
            OPTIONS,
        )
        .await;
        (response.grants[0].clone(), reports.remove(0))
    }
}

fn millis(duration: &Option<prost_types::Duration>) -> u128 {
    let d = duration.unwrap();
    d.seconds as u128 * 1000 + d.nanos as u128 / 1_000_000
}

#[tokio::test]
async fn grants_settles_and_never_grants_past_the_limit() {
    let f = fixture();
    let (first, _) = f.renew("tenant", "acme", "", 0, 60).await;
    assert_eq!(first.code, Code::Ok as i32);
    assert_eq!(first.granted, 60);
    assert_eq!(first.limit_remaining, 40);
    assert!(!first.lease_id.is_empty());
    assert_eq!(
        millis(&first.valid_for),
        10_000,
        "the validity, well inside the window"
    );
    assert!(millis(&first.duration_until_reset) > 10_000);
    assert_eq!(first.current_limit.as_ref().unwrap().name, "per-tenant");

    // Another holder wants 60: only 40 are left, and it gets them.
    let (second, _) = f.renew("tenant", "acme", "", 0, 60).await;
    assert_eq!((second.code, second.granted), (Code::Ok as i32, 40));
    assert_eq!(second.limit_remaining, 0);
    let (none, _) = f.renew("tenant", "acme", "", 0, 1).await;
    assert_eq!(none.code, Code::OverLimit as i32);

    // The first holder used 25 of its 60: 35 come back, and it takes 30 of them.
    let (renewed, report) = f.renew("tenant", "acme", &first.lease_id, 25, 30).await;
    assert_eq!(report.settled, 25);
    assert_eq!((renewed.code, renewed.granted), (Code::Ok as i32, 30));
    assert_eq!(renewed.limit_remaining, 5);

    // The same settlement again (a retried call) counts nothing and grants from what is left.
    let (again, report) = f.renew("tenant", "acme", &first.lease_id, 25, 30).await;
    assert!(report.unknown_lease);
    assert_eq!(report.settled, 0);
    assert_eq!((again.code, again.granted), (Code::Ok as i32, 5));
    let (forged, report) = f.renew("tenant", "acme", "made-up", 1000, 0).await;
    assert!(report.unknown_lease);
    assert_eq!(
        (forged.code, forged.granted, forged.lease_id.as_str()),
        (Code::Ok as i32, 0, "")
    );
}

#[tokio::test]
async fn grants_all_holders_spend_never_exceed_the_limit() {
    let f = fixture();
    let mut leases = vec![(String::new(), 0); 7];
    let mut admitted = 0;
    for _round in 0..40 {
        for (lease, granted) in leases.iter_mut() {
            let (grant, _) = f.renew("tenant", "race", lease, *granted, 9).await;
            // Every grant is spent in full before the next renewal.
            admitted += grant.granted;
            *lease = grant.lease_id;
            *granted = grant.granted;
        }
    }
    assert_eq!(admitted, 100);
}

#[tokio::test]
async fn no_limit_grants_what_is_wanted_without_a_lease() {
    let f = fixture();
    for (key, value) in [("tenant", "vip"), ("nothing", "matches")] {
        let (grant, _) = f.renew(key, value, "", 0, 1_000_000).await;
        assert_eq!((grant.code, grant.granted), (Code::Ok as i32, 1_000_000));
        assert!(grant.lease_id.is_empty() && grant.current_limit.is_none());
        assert_eq!(millis(&grant.valid_for), 10_000);
    }
    // Shadow mode: refused grants are given anyway, without a hold.
    let (held, _) = f.renew("tenant", "trial", "", 0, 5).await;
    assert_eq!(held.granted, 5);
    let (shadowed, report) = f.renew("tenant", "trial", "", 0, 5).await;
    assert!(report.shadowed);
    assert_eq!((shadowed.code, shadowed.granted), (Code::Ok as i32, 5));
    assert!(shadowed.lease_id.is_empty());
}

#[tokio::test]
async fn validity_stops_short_of_the_window() {
    let f = fixture();
    let (grant, _) = f.renew("second", "s", "", 0, 4).await;
    assert_eq!(grant.code, Code::Ok as i32);
    let valid = millis(&grant.valid_for);
    let reset = millis(&grant.duration_until_reset);
    assert!(
        valid + 100 <= reset && reset <= 1000,
        "valid {valid} ms, reset {reset} ms"
    );
}
