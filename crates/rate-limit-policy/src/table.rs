//! The bounded table of token buckets in shared data, exact across Envoy workers.
//!
//! Envoy never frees a shared-data key, and a client can invent a new identity for every
//! request, so buckets live in a fixed number of slots (`wasmgate.rate_limit.<table>.<i>`)
//! created when the filter is configured. A bucket key's digest picks a start slot; the
//! bucket lives in the first slot of the next `probe` slots that holds its digest. Every
//! write is a compare-and-swap on one slot, which holds every limit of that key, so a
//! request takes from all its buckets or from none.
//!
//! Eviction never hands anyone a fresh bucket: a slot is reused only when it is vacant or
//! its bucket has refilled completely (a full bucket is the same as a new one). When the
//! probe window holds no such slot, the request counts against an *overflow* bucket shared
//! by every such client of the rule (and plan), and nobody's bucket is reset.
//!
//! This module does not parse configuration, identify clients or speak HTTP.

use crate::bucket::{Levels, LimitSet, Shortfall};
use std::fmt::Write as _;
use wasmgate_shared_store::{Cas, SetError, SharedStore};

/// Write attempts per request before giving up on a slot that keeps changing under us.
/// Each worker runs one request at a time, so a conflict means another worker wrote the
/// same slot between our read and our write; several in a row are very unlikely.
pub const MAX_ATTEMPTS: u32 = 8;

/// Identifies a bucket: the first 16 bytes of a SHA-256 over rule, plan, endpoint,
/// identity and the limits' shape.
pub type Digest = [u8; 16];

/// The fixed-size table of slots, and where its keys live in shared data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketTable {
    prefix: String,
    slots: u32,
    probe: u32,
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
    /// The host refused a write, or a slot created at configuration time is missing.
    Refused,
}

/// What the table did on the way, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableEvents {
    /// Compare-and-swap writes that lost a race (each was retried).
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
    /// Slots (and overflow buckets) this call created.
    pub created: u64,
    /// Table slots holding a bucket.
    pub occupied: u64,
}

/// Where a key's bucket is, or where it will go.
enum Place {
    /// The key's own record.
    Found {
        key: String,
        cas: Cas,
        levels: Levels,
    },
    /// A slot the key may take: vacant, or holding a bucket that has fully refilled.
    Claim { key: String, cas: Cas, vacant: bool },
    /// No slot in the probe window: the overflow bucket.
    Overflow,
}

/// One slot's content.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Slot {
    Vacant,
    Bucket(Record),
    /// Bytes this version cannot read (another format): reusable like a full bucket.
    Unreadable,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    digest: Digest,
    full_at_ms: u64,
    levels: Levels,
}

/// Slot layout, little-endian: format (1 byte) | digest (16) | updated_ms (8) |
/// full_at_ms (8) | one level per limit (8 each). A vacant slot is the empty value.
const FORMAT: u8 = 1;
const HEADER_LEN: usize = 1 + 16 + 8 + 8;

impl Record {
    fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(HEADER_LEN + 8 * self.levels.levels.len());
        bytes.push(FORMAT);
        bytes.extend_from_slice(&self.digest);
        bytes.extend_from_slice(&self.levels.updated_ms.to_le_bytes());
        bytes.extend_from_slice(&self.full_at_ms.to_le_bytes());
        for level in &self.levels.levels {
            bytes.extend_from_slice(&level.to_le_bytes());
        }
        bytes
    }
}

impl Slot {
    fn decode(bytes: &[u8]) -> Slot {
        if bytes.is_empty() {
            return Slot::Vacant;
        }
        let Some((&FORMAT, rest)) = bytes.split_first() else {
            return Slot::Unreadable;
        };
        if bytes.len() < HEADER_LEN || !(bytes.len() - HEADER_LEN).is_multiple_of(8) {
            return Slot::Unreadable;
        }
        let (digest, rest) = rest.split_at(16);
        let mut words = rest
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])));
        let (Some(updated_ms), Some(full_at_ms)) = (words.next(), words.next()) else {
            return Slot::Unreadable;
        };
        Slot::Bucket(Record {
            digest: digest.try_into().unwrap_or([0; 16]),
            full_at_ms,
            levels: Levels {
                updated_ms,
                levels: words.collect(),
            },
        })
    }
}

impl BucketTable {
    /// `name` is already validated (short, `[a-z0-9_-]`); `1 <= probe <= slots`.
    pub(crate) fn new(name: &str, slots: u32, probe: u32) -> Self {
        Self {
            prefix: format!("wasmgate.rate_limit.{name}."),
            slots,
            probe,
        }
    }

    pub fn slots(&self) -> u32 {
        self.slots
    }

    fn slot_key(&self, index: u32) -> String {
        format!("{}{index}", self.prefix)
    }

    fn overflow_key(&self, digest: &Digest) -> String {
        let mut key = format!("{}overflow.", self.prefix);
        for byte in &digest[..8] {
            // Writing to a String cannot fail.
            let _ = write!(key, "{byte:02x}");
        }
        key
    }

    fn start(&self, digest: &Digest) -> u32 {
        let mut head = [0u8; 8];
        head.copy_from_slice(&digest[..8]);
        (u64::from_le_bytes(head) % u64::from(self.slots)) as u32
    }

    /// Creates every slot and overflow bucket that does not exist yet, and counts the
    /// slots in use. Run at configuration time, before this VM serves a request: a write
    /// to a key that does not exist ignores compare-and-swap, so keys are created here
    /// (vacant) and only ever updated with compare-and-swap afterwards.
    pub fn prepare(&self, store: &dyn SharedStore, overflow: &[Digest]) -> TableCensus {
        let mut census = TableCensus::default();
        let keys = (0..self.slots)
            .map(|i| (self.slot_key(i), true))
            .chain(overflow.iter().map(|d| (self.overflow_key(d), false)));
        for (key, is_slot) in keys {
            match store.get(&key) {
                Some((bytes, _)) => {
                    if is_slot && matches!(Slot::decode(&bytes), Slot::Bucket(_)) {
                        census.occupied += 1;
                    }
                }
                None => {
                    if store.set(&key, &[], None).is_ok() {
                        census.created += 1;
                    }
                }
            }
        }
        census
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
        for _ in 0..MAX_ATTEMPTS {
            events.overflow = false;
            let (key, cas, current, claim) = match self.locate(store, digest, limits, now_ms) {
                Place::Found { key, cas, levels } => (key, cas, Some(levels), None),
                Place::Claim { key, cas, vacant } => (key, cas, None, Some(vacant)),
                Place::Overflow => {
                    events.overflow = true;
                    let key = self.overflow_key(overflow);
                    let Some((bytes, cas)) = store.get(&key) else {
                        return unavailable(StoreTrouble::Refused, events);
                    };
                    let current = match Slot::decode(&bytes) {
                        Slot::Bucket(r) if r.digest == *overflow && limits.fits(&r.levels) => {
                            Some(r.levels)
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
            let record = Record {
                digest: if events.overflow { *overflow } else { *digest },
                full_at_ms: limits.full_at(&after),
                levels: after,
            };
            match store.set(&key, &record.encode(), Some(cas)) {
                Ok(()) => {
                    events.occupied_vacant_slot = claim == Some(true);
                    events.reclaimed_slot = claim == Some(false);
                    return TableOutcome {
                        verdict: TableVerdict::Taken(record.levels),
                        events,
                    };
                }
                Err(SetError::CasMismatch) => events.cas_conflicts += 1,
                Err(SetError::Refused) => return unavailable(StoreTrouble::Refused, events),
            }
        }
        unavailable(StoreTrouble::Contention, events)
    }

    /// Scans the probe window: the key's own record if it is there, else the first slot it
    /// may take, else overflow.
    ///
    /// Two workers placing the same new key at the same time read the same window and pick
    /// the same first free slot, so the compare-and-swap lets only one of them create it.
    /// (Only if a bucket in the window becomes full between their two reads can they pick
    /// different slots. The key then has a second record, holding one request's count,
    /// that later lookups skip because they use the first in probe order: that one request
    /// goes uncounted, nobody gets a bucket fresher than a new one, and the spare record
    /// is reclaimed once full.)
    fn locate(
        &self,
        store: &dyn SharedStore,
        digest: &Digest,
        limits: &LimitSet,
        now_ms: u64,
    ) -> Place {
        let start = self.start(digest);
        let mut claim = None;
        for step in 0..self.probe {
            let key = self.slot_key((start + step) % self.slots);
            let Some((bytes, cas)) = store.get(&key) else {
                continue;
            };
            let vacant = match Slot::decode(&bytes) {
                Slot::Bucket(record) if record.digest == *digest && limits.fits(&record.levels) => {
                    return Place::Found {
                        key,
                        cas,
                        levels: record.levels,
                    };
                }
                Slot::Bucket(record) if record.full_at_ms <= now_ms => false,
                Slot::Bucket(_) => continue,
                Slot::Vacant => true,
                Slot::Unreadable => false,
            };
            if claim.is_none() {
                claim = Some(Place::Claim { key, cas, vacant });
            }
        }
        claim.unwrap_or(Place::Overflow)
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
    use wasmgate_shared_store::MemoryStore;

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
        assert_eq!(census.created, u64::from(slots) + 1);
        (table, store)
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
    fn prepare_creates_missing_slots_only() {
        let (table, store) = prepared(16, 4);
        let limits = per_hour(5);
        table.take(&store, &digest(3), &OVERFLOW, &limits, 0);
        let again = table.prepare(&store, &[OVERFLOW]);
        assert_eq!(
            again,
            TableCensus {
                created: 0,
                occupied: 1
            }
        );
        assert_eq!(store.key_count(), 17);
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
            .filter(|i| {
                matches!(Slot::decode(&store.get(&table.slot_key(*i)).unwrap().0),
                    Slot::Bucket(r) if r.digest == digest(9))
            })
            .count();
        assert_eq!(holders, 1);
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
        assert_eq!(store.key_count(), 101, "the table never grows");
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
            store.set(&table.slot_key(i), b"\x09garbage", None).unwrap();
        }
        // Bytes of another format are reusable.
        let outcome = table.take(&store, &digest(1), &OVERFLOW, &per_hour(1), 0);
        assert!(outcome.events.reclaimed_slot);
    }

    #[test]
    fn records_round_trip() {
        let record = Record {
            digest: digest(42),
            full_at_ms: 99,
            levels: Levels {
                updated_ms: 7,
                levels: vec![1, u64::MAX, 0],
            },
        };
        assert_eq!(Slot::decode(&record.encode()), Slot::Bucket(record.clone()));
        assert_eq!(Slot::decode(&[]), Slot::Vacant);
        let mut truncated = record.encode();
        truncated.pop();
        assert_eq!(Slot::decode(&truncated), Slot::Unreadable);
    }
}
