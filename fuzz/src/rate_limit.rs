//! Rate limits: client identity and the bounded table of token buckets, over the
//! in-memory store.
//!
//! The invariant checked is the one a user relies on: over any stretch of time
//! `[t1, t2]`, a bucket admits at most `burst + (t2 - t1) × requests / period` tokens'
//! worth of requests, whatever other clients do to the table, because eviction only
//! reuses a slot whose bucket has refilled completely. Each client's requests are
//! checked against its own bucket, and those counted against the rule's overflow
//! bucket against that one. When the input overwrites a slot with junk (as another
//! format or a broken writer would), only the absence of panics is checked.

use crate::Input;
use std::collections::BTreeMap;
use wasmgate_config::HeaderName;
use wasmgate_rate_limit_policy::{identify, IdentitySource, RateLimitPolicy, RequestView, Verdict};
use wasmgate_shared_store::{MemoryStore, SharedStore};

/// A configuration, its identity sources and its limits (requests, period ms, burst)
/// and cost, as the oracle needs them.
struct Setup {
    json: &'static str,
    identity: fn() -> Vec<IdentitySource>,
    limits: &'static [(u64, u64, u64)],
    cost: u64,
    slots: u32,
}

fn name(text: &str) -> HeaderName {
    HeaderName::new(text).expect("a valid header name")
}

const SETUPS: [Setup; 3] = [
    Setup {
        json: r#"{"table": {"name": "fz", "slots": 2, "probe": 2},
                  "identity": [{"header": "x-user-id"}, {"address": {"ipv4_prefix": 24, "ipv6_prefix": 64}}],
                  "default": {"limits": [{"requests": 3, "per": "1s", "burst": 5}]}}"#,
        identity: || {
            vec![
                IdentitySource::Header(name("x-user-id")),
                IdentitySource::Address {
                    ipv4_prefix: 24,
                    ipv6_prefix: 64,
                },
            ]
        },
        limits: &[(3, 1_000, 5)],
        cost: 1,
        slots: 2,
    },
    Setup {
        json: r#"{"table": {"name": "fz", "slots": 3, "probe": 1},
                  "identity": [{"headers": ["x-tenant-id", "x-user-id"]}, {"address": {}}],
                  "default": {"limits": [{"name": "fast", "requests": 2, "per": "100ms", "burst": 2},
                                         {"name": "slow", "requests": 5, "per": "1s", "burst": 5}]}}"#,
        identity: || {
            vec![
                IdentitySource::Headers(vec![name("x-tenant-id"), name("x-user-id")]),
                IdentitySource::Address {
                    ipv4_prefix: 32,
                    ipv6_prefix: 64,
                },
            ]
        },
        limits: &[(2, 100, 2), (5, 1_000, 5)],
        cost: 1,
        slots: 3,
    },
    Setup {
        json: r#"{"table": {"name": "fz", "slots": 1, "probe": 1},
                  "identity": [{"header": "x-user-id"}],
                  "default": {"cost": 2, "limits": [{"requests": 4, "per": "1s", "burst": 6}]}}"#,
        identity: || vec![IdentitySource::Header(name("x-user-id"))],
        limits: &[(4, 1_000, 6)],
        cost: 2,
        slots: 1,
    },
];

const USERS: [&str; 5] = ["", "alice", "bob", "carol", "dave"];
const ADDRESSES: [&str; 6] = [
    "10.0.0.1:1000",
    "10.0.0.2:1000",
    "10.0.1.1:1000",
    "[2001:db8::1]:443",
    "[2001:db8:0:1::1]:443",
    "[::ffff:10.0.0.9]:1",
];

#[derive(Default)]
struct Request {
    headers: Vec<(&'static str, String)>,
    address: Option<String>,
}

impl RequestView for Request {
    fn header(&self, name: &str) -> Option<String> {
        crate::first_value(&self.headers, name)
    }
    fn source_address(&self) -> Option<String> {
        self.address.clone()
    }
    fn route_name(&self) -> Option<String> {
        None
    }
}

/// `rate_limit`: a setup byte, then operations until the input runs out: 0 a request
/// (a user byte, a tenant byte, an address byte; address byte 255: the address is the
/// next chunk), 1 time passes (u16 ms), 2 the next CAS writes fail (a count byte), 3 a
/// shared-data key is overwritten with a chunk (a key byte).
pub fn buckets(data: &[u8]) {
    let mut input = Input::new(data);
    let setup = &SETUPS[usize::from(input.byte()) % SETUPS.len()];
    let policy = RateLimitPolicy::from_json(setup.json.as_bytes())
        .unwrap_or_else(|err| panic!("the fuzz rate-limit setup: {err}"));
    let store = MemoryStore::new();
    let census = policy.prepare(&store);
    assert_eq!(census.created, u64::from(setup.slots) + 1);
    let sources = (setup.identity)();
    // Admissions per bucket: the client's identity, or the overflow bucket.
    let mut admitted: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut junk_written = false;
    let mut now = 1_767_225_600_000u64;
    while !input.is_empty() {
        match input.byte() % 4 {
            0 => {
                let mut request = Request::default();
                request.headers.push((":method", "GET".into()));
                request.headers.push((":path", "/orders".into()));
                let user = USERS[usize::from(input.byte()) % USERS.len()];
                let tenant = USERS[usize::from(input.byte()) % USERS.len()];
                for (header, value) in [("x-user-id", user), ("x-tenant-id", tenant)] {
                    if !value.is_empty() {
                        request.headers.push((header, value.into()));
                    }
                }
                let address = input.byte();
                request.address = Some(match ADDRESSES.get(usize::from(address)) {
                    Some(known) => (*known).to_owned(),
                    None if address == 255 => input.text(),
                    None => ADDRESSES[usize::from(address) % ADDRESSES.len()].to_owned(),
                });
                let decision = policy.decide(&request, &store, now);
                if let Verdict::Allowed(_) = decision.verdict {
                    let bucket = if decision.events.overflow {
                        "overflow".to_owned()
                    } else {
                        identify(&sources, &request)
                    };
                    admitted.entry(bucket).or_default().push(now);
                }
            }
            1 => now += u64::from(input.u16()),
            2 => store.fail_next_sets(u32::from(input.byte() % 10)),
            _ => {
                let keys = store.keys();
                let key = &keys[usize::from(input.byte()) % keys.len()];
                store
                    .set(key, input.chunk(), None)
                    .expect("the store takes any bytes");
                junk_written = true;
            }
        }
        assert_eq!(
            store.key_count(),
            setup.slots as usize + 1,
            "the table grew: {:?}",
            store.keys()
        );
    }
    if junk_written {
        return;
    }
    for (bucket, times) in &admitted {
        for &(requests, period_ms, burst) in setup.limits {
            for (i, &start) in times.iter().enumerate() {
                for (j, &end) in times.iter().enumerate().skip(i) {
                    let taken = (j - i + 1) as u64 * setup.cost;
                    let allowance = burst + (end - start) * requests / period_ms;
                    assert!(
                        taken <= allowance,
                        "{bucket}: {taken} tokens taken within {start}..={end} ms, \
                         at most {allowance} allowed ({requests} per {period_ms} ms, burst {burst})"
                    );
                }
            }
        }
    }
}
