//! The bounded table of token buckets in shared data, exact across Envoy workers.
//!
//! Buckets live in the slots of a [`SlotTable`] (`wasmgate.rate_limit.<table>.<i>`), at
//! most `slots` of them, each created when a key first needs it. Every write is a
//! compare-and-swap on one slot,
//! which holds every limit of that key, so a request takes from all its buckets or from
//! none.
//!
//! Eviction never hands anyone a fresh bucket: a slot is reused only when it is vacant or
//! its bucket has refilled completely (a full bucket is the same as a new one). When the
//! probe window holds no such slot, the request counts against an *overflow* bucket shared
//! by every such client of the rule (and plan), and nobody's bucket is reset.
//!
//! This module does not parse configuration, identify clients or speak HTTP.

use crate::bucket::{Levels, LimitSet, Shortfall};
use crate::slots::{Fit, Place, Reader, Slot, SlotTable};
use std::fmt::Write as _;
use wasmgate_shared_store::{SetError, SharedStore};

pub use crate::slots::Digest;

/// Write attempts per request before giving up on a slot that keeps changing under us.
/// Each worker runs one request at a time, so a conflict means another worker wrote the
/// same slot between our read and our write; several in a row are very unlikely.
pub const MAX_ATTEMPTS: u32 = 8;

/// The bounded table of bucket slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketTable {
    slots: SlotTable,
}

/// How a request fared in the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableVerdict {
    /// The cost was taken from every bucket; the levels after it.
    Taken(Levels),
    /// Some bucket is short; the levels now (nothing was taken).
    Short(Levels, Shortfall),
    /// The table could not be updated: the request passes uncounted (fail open).
    Unavailable(StoreTrouble),
}

/// Why a request could not be counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreTrouble {
    /// Every attempt lost a compare-and-swap race.
    Contention,
    /// The host refused a write, or a key created at configuration time is missing.
    Refused,
}

/// What the table did on the way, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableEvents {
    /// Compare-and-swap writes that lost a race, and slots another worker was creating
    /// (each was retried).
    pub cas_conflicts: u32,
    /// A vacant slot received its first bucket (slots in use went up by one).
    pub occupied_vacant_slot: bool,
    /// A slot whose bucket had fully refilled was given to another key.
    pub reclaimed_slot: bool,
    /// The key found no slot and was counted against its rule's overflow bucket.
    pub overflow: bool,
}

/// The result of counting one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableOutcome {
    pub verdict: TableVerdict,
    pub events: TableEvents,
}

/// What `prepare` found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableCensus {
    /// Keys this call created: the slots' creation guards and the overflow buckets.
    pub created: u64,
    /// Table slots that exist (created since Envoy started, by any configuration).
    pub existing: u64,
    /// Table slots holding a bucket.
    pub occupied: u64,
}

/// One bucket: when it is full again (from then on its slot may be reused), and its levels.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Bucket {
    full_at_ms: u64,
    levels: Levels,
}

/// Slot layout, little-endian: format (1 byte) | digest (16) | updated_ms (8) |
/// full_at_ms (8) | one level per limit (8 each). A vacant slot is the empty value.
const FORMAT: u8 = 1;
const HEADER_LEN: usize = 1 + 16 + 8 + 8;

fn encode(digest: &Digest, bucket: &Bucket) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER_LEN + 8 * bucket.levels.levels.len());
    bytes.push(FORMAT);
    bytes.extend_from_slice(digest);
    bytes.extend_from_slice(&bucket.levels.updated_ms.to_le_bytes());
    bytes.extend_from_slice(&bucket.full_at_ms.to_le_bytes());
    for level in &bucket.levels.levels {
        bytes.extend_from_slice(&level.to_le_bytes());
    }
    bytes
}

/// A slot as the bucket of `digest` (with `levels` limits) sees it at `now_ms`, from
/// the fixed part of its bytes alone (no decoding of the levels).
fn fit(bytes: &[u8], digest: &Digest, levels: usize, now_ms: u64) -> Fit {
    if bytes.is_empty() {
        return Fit::Vacant;
    }
    if bytes[0] != FORMAT
        || bytes.len() < HEADER_LEN
        || !(bytes.len() - HEADER_LEN).is_multiple_of(8)
    {
        return Fit::Reusable;
    }
    let mut reader = Reader(&bytes[1..]);
    let (Some(held), Some(_updated), Some(full_at_ms)) =
        (reader.digest(), reader.u64(), reader.u64())
    else {
        return Fit::Reusable;
    };
    if held == *digest && (bytes.len() - HEADER_LEN) / 8 == levels {
        Fit::Mine
    } else if full_at_ms <= now_ms {
        Fit::Reusable
    } else {
        Fit::Taken
    }
}

fn decode(bytes: &[u8]) -> Slot<Bucket> {
    if bytes.is_empty() {
        return Slot::Vacant;
    }
    if bytes[0] != FORMAT
        || bytes.len() < HEADER_LEN
        || !(bytes.len() - HEADER_LEN).is_multiple_of(8)
    {
        return Slot::Unreadable;
    }
    let mut reader = Reader(&bytes[1..]);
    let (Some(digest), Some(updated_ms), Some(full_at_ms)) =
        (reader.digest(), reader.u64(), reader.u64())
    else {
        return Slot::Unreadable;
    };
    let levels = std::iter::from_fn(|| reader.u64()).collect();
    Slot::Held(
        digest,
        Bucket {
            full_at_ms,
            levels: Levels { updated_ms, levels },
        },
    )
}

impl BucketTable {
    /// `name` is already validated (short, `[a-z0-9_-]`); `1 <= probe <= slots`.
    pub(crate) fn new(name: &str, slots: u32, probe: u32) -> Self {
        Self {
            slots: SlotTable::new(format!("wasmgate.rate_limit.{name}."), slots, probe),
        }
    }

    pub fn slots(&self) -> u32 {
        self.slots.slots()
    }

    fn overflow_key(&self, digest: &Digest) -> String {
        let mut key = format!("{}overflow.", self.slots.prefix());
        for byte in &digest[..8] {
            // Writing to a String cannot fail.
            let _ = write!(key, "{byte:02x}");
        }
        key
    }

    /// Creates the slots' creation guards and the overflow buckets that do not exist yet,
    /// and counts the slots in use. Run at configuration time, before this VM serves a
    /// request. Slots are created when first needed.
    pub fn prepare(&self, store: &dyn SharedStore, overflow: &[Digest]) -> TableCensus {
        let extra: Vec<String> = overflow.iter().map(|d| self.overflow_key(d)).collect();
        let census = self.slots.prepare(store, &extra, |bytes| {
            matches!(decode(bytes), Slot::Held(..))
        });
        TableCensus {
            created: census.created,
            existing: census.existing,
            occupied: census.held,
        }
    }

    /// Counts one request against the bucket `digest`, or against the overflow bucket
    /// `overflow` when the key has no slot and none is free. A request that does not fit
    /// writes nothing: the caller refuses it, or lets it through in shadow mode.
    pub fn take(
        &self,
        store: &dyn SharedStore,
        digest: &Digest,
        overflow: &Digest,
        limits: &LimitSet,
        now_ms: u64,
    ) -> TableOutcome {
        let mut events = TableEvents::default();
        for attempt in 1..=MAX_ATTEMPTS {
            events.overflow = false;
            let levels = limits.limits().len();
            let place = self
                .slots
                .locate(store, digest, attempt < MAX_ATTEMPTS, |bytes| {
                    fit(bytes, digest, levels, now_ms)
                });
            let (key, cas, current, claim) = match place {
                Place::Found {
                    key, cas, bytes, ..
                } => match decode(&bytes) {
                    Slot::Held(_, bucket) => (key, cas, Some(bucket.levels), None),
                    Slot::Vacant | Slot::Unreadable => (key, cas, None, None),
                },
                Place::Claim {
                    key, cas, vacant, ..
                } => (key, cas, None, Some(vacant)),
                Place::Busy => {
                    events.cas_conflicts += 1;
                    continue;
                }
                Place::Full => {
                    events.overflow = true;
                    let key = self.overflow_key(overflow);
                    let Some((bytes, cas)) = store.get(&key) else {
                        return unavailable(StoreTrouble::Refused, events);
                    };
                    let current = match decode(&bytes) {
                        Slot::Held(d, b) if d == *overflow && limits.fits(&b.levels) => {
                            Some(b.levels)
                        }
                        _ => None,
                    };
                    (key, cas, current, None)
                }
            };
            let before = match &current {
                Some(levels) => limits.refill(levels, now_ms),
                None => limits.full(now_ms),
            };
            let after = match limits.take(&before) {
                Ok(after) => after,
                Err(shortfall) => {
                    return TableOutcome {
                        verdict: TableVerdict::Short(before, shortfall),
                        events,
                    }
                }
            };
            let owner = if events.overflow { overflow } else { digest };
            let bucket = Bucket {
                full_at_ms: limits.full_at(&after),
                levels: after,
            };
            match store.set(&key, &encode(owner, &bucket), Some(cas)) {
                Ok(()) => {
                    events.occupied_vacant_slot = claim == Some(true);
                    events.reclaimed_slot = claim == Some(false);
                    return TableOutcome {
                        verdict: TableVerdict::Taken(bucket.levels),
                        events,
                    };
                }
                Err(SetError::CasMismatch) => events.cas_conflicts += 1,
                Err(SetError::Refused) => return unavailable(StoreTrouble::Refused, events),
            }
        }
        unavailable(StoreTrouble::Contention, events)
    }
}

fn unavailable(trouble: StoreTrouble, events: TableEvents) -> TableOutcome {
    TableOutcome {
        verdict: TableVerdict::Unavailable(trouble),
        events,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::Limit;
    use std::cell::Cell;
    use wasmgate_shared_store::{Cas, MemoryStore};

    const HOUR: u64 = 3_600_000;

    fn per_hour(requests: u64) -> LimitSet {
        LimitSet::new(
            vec![Limit {
                name: "hourly".into(),
                requests,
                period_ms: HOUR,
                burst: requests,
            }],
            1,
        )
    }

    fn digest(n: u64) -> Digest {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&n.to_le_bytes());
        d[8] = 0xAB;
        d
    }

    const OVERFLOW: Digest = [0xFF; 16];

    fn prepared(slots: u32, probe: u32) -> (BucketTable, MemoryStore) {
        let table = BucketTable::new("t", slots, probe);
        let store = MemoryStore::new();
        let census = table.prepare(&store, &[OVERFLOW]);
        // One creation guard per 64 slots, and the overflow bucket: no slot yet.
        assert_eq!(census.created, u64::from(guards(slots)) + 1);
        assert_eq!(census.existing, 0);
        assert_eq!(store.key_count() as u64, census.created);
        (table, store)
    }

    fn guards(slots: u32) -> u32 {
        slots.div_ceil(64)
    }

    fn admitted(outcome: &TableOutcome) -> bool {
        matches!(outcome.verdict, TableVerdict::Taken(_))
    }

    /// Tokens left in the (single-limit) bucket after an admission.
    fn tokens_left(outcome: &TableOutcome, limits: &LimitSet) -> u64 {
        match &outcome.verdict {
            TableVerdict::Taken(levels) => limits.limits()[0].tokens(levels.levels[0]),
            other => panic!("expected an admission, got {other:?}"),
        }
    }

    #[test]
    fn slots_are_created_when_first_needed() {
        let (table, store) = prepared(16, 4);
        let limits = per_hour(5);
        table.take(&store, &digest(3), &OVERFLOW, &limits, 0);
        let again = table.prepare(&store, &[OVERFLOW]);
        assert_eq!(
            again,
            TableCensus {
                created: 0,
                existing: 1,
                occupied: 1
            }
        );
        // The guard, the overflow bucket and the one slot the client needed.
        assert_eq!(store.key_count(), 3);
        // The bucket survived a second configuration.
        let outcome = table.take(&store, &digest(3), &OVERFLOW, &limits, 0);
        assert_eq!(tokens_left(&outcome, &limits), 3);
    }

    #[test]
    fn a_key_gets_exactly_its_limit() {
        let (table, store) = prepared(64, 8);
        let limits = per_hour(50);
        let admitted_count = (0..200)
            .filter(|i| admitted(&table.take(&store, &digest(7), &OVERFLOW, &limits, *i)))
            .count();
        assert_eq!(admitted_count, 50);
    }

    #[test]
    fn lost_races_are_retried_and_counted() {
        let (table, store) = prepared(64, 8);
        let limits = per_hour(50);
        table.take(&store, &digest(7), &OVERFLOW, &limits, 0);
        store.fail_next_sets(3);
        let outcome = table.take(&store, &digest(7), &OVERFLOW, &limits, 0);
        assert!(admitted(&outcome));
        assert_eq!(outcome.events.cas_conflicts, 3);
        store.fail_next_sets(MAX_ATTEMPTS);
        let outcome = table.take(&store, &digest(7), &OVERFLOW, &limits, 0);
        assert_eq!(
            outcome.verdict,
            TableVerdict::Unavailable(StoreTrouble::Contention)
        );
        assert_eq!(outcome.events.cas_conflicts, MAX_ATTEMPTS);
    }

    /// A store where another worker counts a request for `rival` between our read and our
    /// write, for the first `races` writes.
    struct RacingStore<'a> {
        inner: &'a MemoryStore,
        table: &'a BucketTable,
        rival: Digest,
        races: Cell<u32>,
        rival_admitted: Cell<u32>,
    }

    impl<'a> RacingStore<'a> {
        fn new(inner: &'a MemoryStore, table: &'a BucketTable, rival: Digest, races: u32) -> Self {
            Self {
                inner,
                table,
                rival,
                races: Cell::new(races),
                rival_admitted: Cell::new(0),
            }
        }
    }

    impl SharedStore for RacingStore<'_> {
        fn get(&self, key: &str) -> Option<(Vec<u8>, Cas)> {
            self.inner.get(key)
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), SetError> {
            if self.races.get() > 0 {
                self.races.set(self.races.get() - 1);
                let outcome = self
                    .table
                    .take(self.inner, &self.rival, &OVERFLOW, &per_hour(50), 0);
                if admitted(&outcome) {
                    self.rival_admitted.set(self.rival_admitted.get() + 1);
                }
            }
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn two_workers_on_one_key_never_over_admit() {
        let (table, store) = prepared(64, 8);
        let limits = per_hour(50);
        let racing = RacingStore::new(&store, &table, digest(7), 20);
        let mut ours = 0;
        let mut uncounted = 0;
        for _ in 0..100 {
            let outcome = table.take(&racing, &digest(7), &OVERFLOW, &limits, 0);
            match outcome.verdict {
                TableVerdict::Taken(_) => ours += 1,
                TableVerdict::Unavailable(StoreTrouble::Contention) => uncounted += 1,
                _ => {}
            }
        }
        // Our first two requests lost all their races and passed uncounted (fail open);
        // the third won on its fifth attempt. Every counted admission came out of the one
        // bucket of 50: the rival's 20 and our 30.
        assert_eq!(racing.rival_admitted.get(), 20);
        assert_eq!(uncounted, 2);
        assert_eq!(ours, 30);
    }

    #[test]
    fn new_keys_share_one_slot_race_safely() {
        // Two workers create the same new key at once: only one slot ends up holding it.
        let (table, store) = prepared(64, 8);
        let limits = per_hour(50);
        let racing = RacingStore::new(&store, &table, digest(9), 1);
        assert!(admitted(&table.take(
            &racing,
            &digest(9),
            &OVERFLOW,
            &limits,
            0
        )));
        let holders = (0..64)
            .filter_map(|i| store.get(&table.slots.slot_key(i)))
            .filter(|(bytes, _)| matches!(decode(bytes), Slot::Held(d, _) if d == digest(9)))
            .count();
        assert_eq!(holders, 1);
        // The rival created the slot; ours was not created again.
        assert_eq!(store.key_count(), 1 + 1 + 1);
        let outcome = table.take(&store, &digest(9), &OVERFLOW, &limits, 0);
        assert_eq!(tokens_left(&outcome, &limits), 47);
    }

    #[test]
    fn a_flood_of_new_keys_never_evicts_a_limited_client() {
        let (table, store) = prepared(100, 8);
        let limits = per_hour(5);
        let victim = digest(1);
        for _ in 0..5 {
            assert!(admitted(
                &table.take(&store, &victim, &OVERFLOW, &limits, 0)
            ));
        }
        assert!(!admitted(
            &table.take(&store, &victim, &OVERFLOW, &limits, 0)
        ));
        let mut overflowed = 0;
        for n in 1_000..21_000 {
            let outcome = table.take(&store, &digest(n), &OVERFLOW, &limits, 1_000);
            overflowed += u32::from(outcome.events.overflow);
        }
        assert!(overflowed > 19_000, "{overflowed}");
        assert_eq!(
            store.key_count(),
            100 + 2 + 1,
            "the table grows to its slots (and guards) and no further"
        );
        assert_eq!(table.prepare(&store, &[OVERFLOW]).occupied, 100);
        let outcome = table.take(&store, &victim, &OVERFLOW, &limits, 2_000);
        assert!(
            !admitted(&outcome),
            "the victim is still limited: {outcome:?}"
        );
        assert!(!outcome.events.overflow);
    }

    #[test]
    fn overflow_is_one_shared_bucket_and_resets_nobody() {
        let (table, store) = prepared(8, 8);
        let limits = per_hour(2);
        for n in 0..8 {
            assert!(admitted(&table.take(
                &store,
                &digest(n),
                &OVERFLOW,
                &limits,
                0
            )));
        }
        // The table is full of buckets that are not full: newcomers share the overflow.
        let a = table.take(&store, &digest(100), &OVERFLOW, &limits, 0);
        let b = table.take(&store, &digest(101), &OVERFLOW, &limits, 0);
        let c = table.take(&store, &digest(102), &OVERFLOW, &limits, 0);
        assert!(a.events.overflow && b.events.overflow && c.events.overflow);
        assert!(admitted(&a) && admitted(&b) && !admitted(&c));
        // Everyone in the table still has exactly one token left.
        for n in 0..8 {
            assert!(admitted(&table.take(
                &store,
                &digest(n),
                &OVERFLOW,
                &limits,
                0
            )));
            assert!(!admitted(&table.take(
                &store,
                &digest(n),
                &OVERFLOW,
                &limits,
                0
            )));
        }
    }

    #[test]
    fn only_fully_refilled_buckets_are_reclaimed() {
        let (table, store) = prepared(1, 1);
        let limits = per_hour(2);
        let first = table.take(&store, &digest(1), &OVERFLOW, &limits, 0);
        assert!(first.events.occupied_vacant_slot);
        // Half refilled: not reusable.
        let early = table.take(&store, &digest(2), &OVERFLOW, &limits, HOUR / 2 - 1);
        assert!(early.events.overflow);
        // Fully refilled (one token in 30 min): the slot goes to the newcomer.
        let later = table.take(&store, &digest(2), &OVERFLOW, &limits, HOUR / 2);
        assert!(later.events.reclaimed_slot && !later.events.overflow);
        // The first client, back, gets no slot and counts against the shared overflow.
        let back = table.take(&store, &digest(1), &OVERFLOW, &limits, HOUR / 2);
        assert!(back.events.overflow);
    }

    #[test]
    fn missing_and_foreign_slots() {
        let table = BucketTable::new("t", 4, 4);
        let store = MemoryStore::new();
        // Never prepared: nothing to write to, the request passes uncounted.
        let outcome = table.take(&store, &digest(1), &OVERFLOW, &per_hour(1), 0);
        assert_eq!(
            outcome.verdict,
            TableVerdict::Unavailable(StoreTrouble::Refused)
        );
        table.prepare(&store, &[OVERFLOW]);
        for i in 0..4 {
            store
                .set(&table.slots.slot_key(i), b"\x09garbage", None)
                .unwrap();
        }
        // Bytes of another format are reusable.
        let outcome = table.take(&store, &digest(1), &OVERFLOW, &per_hour(1), 0);
        assert!(outcome.events.reclaimed_slot);
    }

    #[test]
    fn one_client_costs_one_slot_of_a_large_table() {
        let (table, store) = prepared(100_000, 8);
        let limits = per_hour(5);
        for now in 0..5 {
            assert!(admitted(&table.take(
                &store,
                &digest(1),
                &OVERFLOW,
                &limits,
                now
            )));
        }
        assert_eq!(store.key_count(), 1563 + 1 + 1);
        let census = table.prepare(&store, &[OVERFLOW]);
        assert_eq!((census.existing, census.occupied), (1, 1));
    }

    #[test]
    fn an_existing_free_slot_is_taken_before_a_new_one_is_created() {
        let (table, store) = prepared(64, 8);
        // digest(10) starts at slot 10; slot 13 exists (empty), 10 to 12 do not.
        store.set(&table.slots.slot_key(13), &[], None).unwrap();
        let outcome = table.take(&store, &digest(10), &OVERFLOW, &per_hour(5), 0);
        assert!(outcome.events.occupied_vacant_slot);
        assert_eq!(store.key_count(), 1 + 1 + 1, "no slot was created");
        assert!(matches!(
            decode(&store.get(&table.slots.slot_key(13)).unwrap().0),
            Slot::Held(d, _) if d == digest(10)
        ));
    }

    #[test]
    fn a_slot_another_worker_is_creating_is_not_created_twice() {
        let (table, store) = prepared(64, 8);
        // Another worker has set slot 10's bit and not yet created the slot.
        let guard = table.slots.guard_key(0);
        store
            .set(&guard, &(1u64 << 10).to_le_bytes(), None)
            .unwrap();
        let outcome = table.take(&store, &digest(10), &OVERFLOW, &per_hour(5), 0);
        // Every attempt but the last found it still being created; the last counts the
        // request against the overflow bucket (a creation that never finishes strands
        // nobody).
        assert_eq!(outcome.events.cas_conflicts, MAX_ATTEMPTS - 1);
        assert!(outcome.events.overflow && admitted(&outcome));
        assert_eq!(store.get(&table.slots.slot_key(10)), None);
        // Once that worker has created it, the key takes it.
        store.set(&table.slots.slot_key(10), &[], None).unwrap();
        let outcome = table.take(&store, &digest(10), &OVERFLOW, &per_hour(5), 0);
        assert_eq!(tokens_left(&outcome, &per_hour(5)), 4);
        assert!(outcome.events.occupied_vacant_slot);
    }

    #[test]
    fn a_guard_lost_to_another_worker_is_retried() {
        let (table, store) = prepared(64, 8);
        // Our compare-and-swap on the guard loses once, as if another worker had set a bit.
        store.fail_next_sets(1);
        let outcome = table.take(&store, &digest(10), &OVERFLOW, &per_hour(5), 0);
        assert_eq!(outcome.events.cas_conflicts, 1);
        assert_eq!(tokens_left(&outcome, &per_hour(5)), 4);
        assert_eq!(store.key_count(), 1 + 1 + 1);
    }

    #[test]
    fn slots_an_earlier_version_created_up_front_are_counted_and_used() {
        let table = BucketTable::new("t", 100, 8);
        let store = MemoryStore::new();
        let limits = per_hour(5);
        // Every slot exists (empty) and slot 7 holds a bucket, but there are no guards.
        for i in 0..100 {
            store.set(&table.slots.slot_key(i), &[], None).unwrap();
        }
        let held = Bucket {
            full_at_ms: HOUR,
            levels: limits.take(&limits.full(0)).unwrap(),
        };
        store
            .set(&table.slots.slot_key(7), &encode(&digest(7), &held), None)
            .unwrap();
        let census = table.prepare(&store, &[OVERFLOW]);
        assert_eq!(
            census,
            TableCensus {
                created: 2 + 1,
                existing: 100,
                occupied: 1
            }
        );
        let outcome = table.take(&store, &digest(7), &OVERFLOW, &limits, 0);
        assert_eq!(tokens_left(&outcome, &limits), 3);
        table.take(&store, &digest(50), &OVERFLOW, &limits, 0);
        assert_eq!(store.key_count(), 100 + 2 + 1);
    }

    #[test]
    fn records_round_trip() {
        let bucket = Bucket {
            full_at_ms: 99,
            levels: Levels {
                updated_ms: 7,
                levels: vec![1, u64::MAX, 0],
            },
        };
        let bytes = encode(&digest(42), &bucket);
        assert_eq!(decode(&bytes), Slot::Held(digest(42), bucket.clone()));
        assert_eq!(decode(&[]), Slot::Vacant);
        let mut truncated = bytes;
        truncated.pop();
        assert_eq!(decode(&truncated), Slot::Unreadable);
    }
}
