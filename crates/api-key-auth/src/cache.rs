//! The key store's answers, cached in shared data for every worker of one Envoy.
//!
//! **Bounded.** Envoy never frees a shared-data key, so the cache is a fixed table of
//! `slots` keys, `<namespace>.<index>`, created up front ([`KeyCache::create_table`]);
//! a hash always lands in slot `hash mod slots`, and the slot holds the full hash to
//! tell colliding keys apart. A new key evicts whatever its slot held, except a lookup
//! still in flight (the newcomer then asks the store without caching the slot).
//!
//! **One lookup per key.** Before asking the store, a worker *claims* the slot: it
//! writes an in-flight marker with CAS (which is meaningful because the key already
//! exists). Whoever loses the race sees the marker and waits for the answer to appear.
//! A claim expires after the lookup timeout plus a grace period, so a worker that died
//! mid-lookup delays the others by at most that.
//!
//! **Stale if error.** A failed lookup keeps the previous answer and sets a back-off:
//! until it passes, the key is answered from the stale entry (while it is younger than
//! `ttl + max_stale`) or declared unavailable, without asking the store again.
//!
//! **Recent answers, per VM.** A fresh answer read from (or written to) the table is
//! also kept in the VM until the instant it stops being fresh, so the hot path (a key
//! seen moments ago) reads no shared data and parses no JSON: that read is a host call
//! that copies the slot into the VM, the dearest kind. Nothing is trusted longer than
//! the table would trust it: the answer is the one the table holds, until the same
//! moment. The memo is bounded (emptied when full), and shares its answers: a hit hands
//! out the same `Rc`, copying nothing.
//!
//! Times are Unix milliseconds passed in by the caller; nothing here reads a clock.

use crate::hash::KeyHash;
use crate::record::{KeyRecord, StoreAnswer};
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use wasmgate_shared_store::{Cas, SetError, SharedStore};

/// Reads and CAS writes before a caller gives up on coordinating and just proceeds.
const CAS_ATTEMPTS: usize = 4;
/// Fresh answers a VM keeps before it empties its memo and starts again.
pub const RECENT_ANSWERS: usize = 1024;

/// How long answers are trusted, and the table size. Durations in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePolicy {
    /// Number of slots, hence of shared-data keys, hence the most keys cached.
    pub slots: u32,
    /// How long a found key (active, revoked or expired) is trusted.
    pub ttl_ms: u64,
    /// How long "no such key" is trusted.
    pub negative_ttl_ms: u64,
    /// How long past its TTL an answer may serve while the store is failing.
    pub max_stale_ms: u64,
    /// After a failed lookup, how long the key is not looked up again.
    pub error_backoff_ms: u64,
    /// How long a claim on a slot (an in-flight lookup) holds: timeout plus grace.
    pub claim_ms: u64,
}

/// What to do about a key, according to the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The store's answer, within its TTL.
    Fresh(Rc<StoreAnswer>),
    /// An answer past its TTL, served because the store is failing.
    Stale(Rc<StoreAnswer>),
    /// The store is failing and nothing usable is cached.
    Unavailable,
    /// Another worker is asking the store; wait for the answer to appear.
    Wait,
    /// Ask the store (the slot is claimed when that was possible).
    Fetch,
}

/// A slot's content. Field names are short: every request reads one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SlotEntry {
    /// The full hash, hex.
    #[serde(rename = "h")]
    hash: String,
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    answer: Option<CachedAnswer>,
    /// A lookup is in flight until then.
    #[serde(rename = "l", default, skip_serializing_if = "Option::is_none")]
    lookup_until: Option<u64>,
    /// The last lookup failed; do not ask again before then.
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    retry_at: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct CachedAnswer {
    #[serde(rename = "t")]
    fetched_at: u64,
    /// `None`: the store said 404.
    #[serde(rename = "k")]
    record: Option<KeyRecord>,
}

impl CachedAnswer {
    fn to_answer(&self) -> StoreAnswer {
        match &self.record {
            Some(record) => StoreAnswer::Found(record.clone()),
            None => StoreAnswer::NotFound,
        }
    }
}

enum Slot {
    /// Created up front and never written (or, if `cas` is `None`, not created).
    Empty,
    /// Written by something else, or by an older layout: free to overwrite.
    Unreadable,
    Entry(SlotEntry),
}

/// The cache table over a [`SharedStore`].
#[derive(Debug)]
pub struct KeyCache<S> {
    store: S,
    namespace: String,
    policy: CachePolicy,
    filled: Cell<u64>,
    /// Fresh answers this VM has seen, until they stop being fresh (Unix ms).
    recent: RefCell<HashMap<KeyHash, (Rc<StoreAnswer>, u64)>>,
}

impl<S: SharedStore> KeyCache<S> {
    pub fn new(store: S, namespace: impl Into<String>, policy: CachePolicy) -> Self {
        Self {
            store,
            namespace: namespace.into(),
            policy,
            filled: Cell::new(0),
            recent: RefCell::new(HashMap::new()),
        }
    }

    #[cfg(test)]
    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn policy(&self) -> &CachePolicy {
        &self.policy
    }

    /// The shared-data key of the slot `hash` lands in.
    pub fn slot_key(&self, hash: &KeyHash) -> String {
        let index = hash.prefix_u64() % u64::from(self.policy.slots.max(1));
        format!("{}.{index}", self.namespace)
    }

    /// Creates every slot that does not exist yet, empty; returns how many it created.
    /// Run once per VM before serving, so later writes can rely on CAS.
    pub fn create_table(&self) -> u32 {
        let mut created = 0;
        for index in 0..self.policy.slots {
            let key = format!("{}.{index}", self.namespace);
            if self.store.get(&key).is_none() && self.store.set(&key, b"", None).is_ok() {
                created += 1;
            }
        }
        created
    }

    /// How many empty slots this instance filled since the last call (for a gauge of
    /// occupied slots: a slot goes from empty to filled once, and only one CAS write
    /// can do it).
    pub fn take_filled(&self) -> u64 {
        self.filled.replace(0)
    }

    /// A fresh answer this VM has seen for `hash`, if it is still fresh.
    fn recent(&self, hash: &KeyHash, now: u64) -> Option<Rc<StoreAnswer>> {
        let recent = self.recent.borrow();
        let (answer, until) = recent.get(hash)?;
        (now < *until).then(|| Rc::clone(answer))
    }

    /// The table's fresh answer, remembered in this VM until it stops being fresh.
    fn fresh_answer(&self, hash: &KeyHash, answer: &CachedAnswer) -> Lookup {
        let mut recent = self.recent.borrow_mut();
        if recent.len() >= RECENT_ANSWERS {
            recent.clear();
        }
        let until = answer.fetched_at.saturating_add(self.ttl(answer));
        let shared = Rc::new(answer.to_answer());
        recent.insert(*hash, (Rc::clone(&shared), until));
        Lookup::Fresh(shared)
    }

    /// Decides what a request for `hash` does, claiming the slot when it must fetch.
    pub fn begin(&self, hash: &KeyHash, now: u64) -> Lookup {
        if let Some(answer) = self.recent(hash, now) {
            return Lookup::Fresh(answer);
        }
        let hex = hash.to_hex();
        for _ in 0..CAS_ATTEMPTS {
            let (slot, cas) = self.read(hash);
            let claim = match &slot {
                Slot::Entry(entry) if entry.hash == hex => {
                    if let Some(answer) = entry.answer.as_ref().filter(|a| self.fresh(a, now)) {
                        return self.fresh_answer(hash, answer);
                    }
                    if entry.lookup_until.is_some_and(|until| now < until) {
                        return Lookup::Wait;
                    }
                    if entry.retry_at.is_some_and(|at| now < at) {
                        return self.fallback(entry.answer.as_ref(), now);
                    }
                    SlotEntry {
                        hash: hex.clone(),
                        answer: entry.answer.clone(),
                        lookup_until: Some(now + self.policy.claim_ms),
                        retry_at: None,
                    }
                }
                Slot::Entry(other) if other.lookup_until.is_some_and(|until| now < until) => {
                    return Lookup::Fetch;
                }
                _ => SlotEntry {
                    hash: hex.clone(),
                    answer: None,
                    lookup_until: Some(now + self.policy.claim_ms),
                    retry_at: None,
                },
            };
            match self.write(hash, &claim, &slot, cas) {
                Err(SetError::CasMismatch) => continue,
                Ok(()) | Err(SetError::Refused) => return Lookup::Fetch,
            }
        }
        Lookup::Fetch
    }

    /// Stores the store's answer, and returns it as `Fresh` (shared with this VM's
    /// memo). Does not evict another key's lookup in flight.
    pub fn complete(&self, hash: &KeyHash, answer: &StoreAnswer, now: u64) -> Lookup {
        let hex = hash.to_hex();
        let record = match answer {
            StoreAnswer::Found(record) => Some(record.clone()),
            StoreAnswer::NotFound => None,
        };
        let cached = CachedAnswer {
            fetched_at: now,
            record,
        };
        // This VM has the answer from the store itself, whether or not the table
        // takes it.
        let fresh = self.fresh_answer(hash, &cached);
        for _ in 0..CAS_ATTEMPTS {
            let (slot, cas) = self.read(hash);
            if let Slot::Entry(other) = &slot {
                if other.hash != hex && other.lookup_until.is_some_and(|until| now < until) {
                    break;
                }
            }
            let entry = SlotEntry {
                hash: hex.clone(),
                answer: Some(cached.clone()),
                lookup_until: None,
                retry_at: None,
            };
            match self.write(hash, &entry, &slot, cas) {
                Err(SetError::CasMismatch) => continue,
                Ok(()) | Err(SetError::Refused) => break,
            }
        }
        fresh
    }

    /// Records a failed lookup (back-off) and says what to answer instead.
    pub fn fail(&self, hash: &KeyHash, now: u64) -> Lookup {
        let hex = hash.to_hex();
        for _ in 0..CAS_ATTEMPTS {
            let (slot, cas) = self.read(hash);
            let Slot::Entry(entry) = &slot else {
                return Lookup::Unavailable;
            };
            if entry.hash != hex {
                return Lookup::Unavailable;
            }
            if let Some(answer) = entry.answer.as_ref().filter(|a| self.fresh(a, now)) {
                // Another worker's lookup succeeded meanwhile.
                return self.fresh_answer(hash, answer);
            }
            let failed = SlotEntry {
                hash: hex.clone(),
                answer: entry.answer.clone(),
                lookup_until: None,
                retry_at: Some(now + self.policy.error_backoff_ms),
            };
            match self.write(hash, &failed, &slot, cas) {
                Err(SetError::CasMismatch) => continue,
                Ok(()) | Err(SetError::Refused) => {
                    return self.fallback(entry.answer.as_ref(), now)
                }
            }
        }
        self.usable(hash, now)
    }

    /// What the cache can answer right now without asking the store: `Fresh`,
    /// `Stale` or `Unavailable`. Writes nothing.
    pub fn usable(&self, hash: &KeyHash, now: u64) -> Lookup {
        let hex = hash.to_hex();
        match self.read(hash) {
            (Slot::Entry(entry), _) if entry.hash == hex => match &entry.answer {
                Some(answer) if self.fresh(answer, now) => {
                    Lookup::Fresh(Rc::new(answer.to_answer()))
                }
                answer => self.fallback(answer.as_ref(), now),
            },
            _ => Lookup::Unavailable,
        }
    }

    fn ttl(&self, answer: &CachedAnswer) -> u64 {
        if answer.record.is_some() {
            self.policy.ttl_ms
        } else {
            self.policy.negative_ttl_ms
        }
    }

    fn fresh(&self, answer: &CachedAnswer, now: u64) -> bool {
        now < answer.fetched_at.saturating_add(self.ttl(answer))
    }

    fn fallback(&self, answer: Option<&CachedAnswer>, now: u64) -> Lookup {
        match answer {
            Some(a)
                if now
                    < a.fetched_at
                        .saturating_add(self.ttl(a) + self.policy.max_stale_ms) =>
            {
                Lookup::Stale(Rc::new(a.to_answer()))
            }
            _ => Lookup::Unavailable,
        }
    }

    fn read(&self, hash: &KeyHash) -> (Slot, Option<Cas>) {
        match self.store.get(&self.slot_key(hash)) {
            None => (Slot::Empty, None),
            Some((bytes, cas)) if bytes.is_empty() => (Slot::Empty, Some(cas)),
            Some((bytes, cas)) => match serde_json::from_slice(&bytes) {
                Ok(entry) => (Slot::Entry(entry), Some(cas)),
                Err(_) => (Slot::Unreadable, Some(cas)),
            },
        }
    }

    fn write(
        &self,
        hash: &KeyHash,
        entry: &SlotEntry,
        previous: &Slot,
        cas: Option<Cas>,
    ) -> Result<(), SetError> {
        let bytes = serde_json::to_vec(entry).map_err(|_| SetError::Refused)?;
        self.store.set(&self.slot_key(hash), &bytes, cas)?;
        if matches!(previous, Slot::Empty) {
            self.filled.set(self.filled.get() + 1);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::KeyHasher;
    use crate::record::KeyStatus;
    use wasmgate_shared_store::MemoryStore;

    const POLICY: CachePolicy = CachePolicy {
        slots: 8,
        ttl_ms: 60_000,
        negative_ttl_ms: 10_000,
        max_stale_ms: 300_000,
        error_backoff_ms: 1_000,
        claim_ms: 1_250,
    };

    fn cache() -> KeyCache<MemoryStore> {
        let cache = KeyCache::new(MemoryStore::new(), "t", POLICY);
        assert_eq!(cache.create_table(), 8);
        cache
    }

    fn hash(key: &str) -> KeyHash {
        KeyHasher::Sha256.hash(key)
    }

    fn found(tenant: &str) -> StoreAnswer {
        StoreAnswer::Found(KeyRecord {
            key_id: format!("key_{tenant}"),
            tenant_id: tenant.into(),
            plan: Some("gold".into()),
            scopes: vec![],
            status: KeyStatus::Active,
            expires_at: None,
        })
    }

    /// Two keys whose hashes land in the same slot of an 8-slot table.
    fn colliding_pair() -> (KeyHash, KeyHash) {
        let c = cache();
        let first = hash("k0");
        let other = (1..1000)
            .map(|i| hash(&format!("k{i}")))
            .find(|h| c.slot_key(h) == c.slot_key(&first))
            .unwrap();
        (first, other)
    }

    #[test]
    fn table_is_created_once_and_never_grows() {
        let c = cache();
        assert_eq!(c.create_table(), 0);
        for i in 0..500 {
            let h = hash(&format!("key-{i}"));
            if c.begin(&h, i) == Lookup::Fetch {
                c.complete(&h, &StoreAnswer::NotFound, i);
            }
        }
        assert_eq!(c.store().key_count(), 8);
        assert!(c.store().keys().iter().all(|k| k.starts_with("t.")));
        // Each slot went from empty to filled exactly once.
        assert_eq!(c.take_filled(), 8);
        assert_eq!(c.take_filled(), 0);
    }

    #[test]
    fn miss_claims_then_the_answer_is_fresh_until_its_ttl() {
        let c = cache();
        let h = hash("a");
        assert_eq!(c.begin(&h, 1_000), Lookup::Fetch);
        // Everyone else waits while the lookup is in flight...
        assert_eq!(c.begin(&h, 1_001), Lookup::Wait);
        c.complete(&h, &found("acme"), 1_050);
        // ...and then reads the answer.
        assert_eq!(c.begin(&h, 1_051), Lookup::Fresh(found("acme").into()));
        assert_eq!(c.begin(&h, 61_049), Lookup::Fresh(found("acme").into()));
        // At the TTL the next request claims a refresh; the rest wait for it.
        assert_eq!(c.begin(&h, 61_050), Lookup::Fetch);
        assert_eq!(c.begin(&h, 61_051), Lookup::Wait);
    }

    #[test]
    fn unknown_keys_use_the_negative_ttl() {
        let c = cache();
        let h = hash("nobody");
        assert_eq!(c.begin(&h, 0), Lookup::Fetch);
        c.complete(&h, &StoreAnswer::NotFound, 0);
        assert_eq!(
            c.begin(&h, 9_999),
            Lookup::Fresh(StoreAnswer::NotFound.into())
        );
        assert_eq!(c.begin(&h, 10_000), Lookup::Fetch);
    }

    #[test]
    fn an_abandoned_claim_expires_after_timeout_plus_grace() {
        let c = cache();
        let h = hash("a");
        assert_eq!(c.begin(&h, 0), Lookup::Fetch);
        assert_eq!(c.begin(&h, 1_249), Lookup::Wait);
        assert_eq!(c.begin(&h, 1_250), Lookup::Fetch);
    }

    #[test]
    fn failure_serves_stale_within_max_stale_and_backs_off() {
        let c = cache();
        let h = hash("a");
        c.begin(&h, 0);
        c.complete(&h, &found("acme"), 0);
        // TTL over, store down: the refresh fails and the old answer is served.
        assert_eq!(c.begin(&h, 60_000), Lookup::Fetch);
        assert_eq!(c.fail(&h, 60_010), Lookup::Stale(found("acme").into()));
        // During the back-off nobody asks the store again.
        assert_eq!(c.begin(&h, 60_500), Lookup::Stale(found("acme").into()));
        assert_eq!(c.usable(&h, 60_500), Lookup::Stale(found("acme").into()));
        // After it, one request tries again.
        assert_eq!(c.begin(&h, 61_010), Lookup::Fetch);
        assert_eq!(c.fail(&h, 61_020), Lookup::Stale(found("acme").into()));
        // Beyond ttl + max_stale the answer is too old to use.
        assert_eq!(c.begin(&h, 359_999), Lookup::Fetch);
        assert_eq!(c.fail(&h, 360_000), Lookup::Unavailable);
        assert_eq!(c.begin(&h, 360_500), Lookup::Unavailable);
        // The store comes back.
        assert_eq!(c.begin(&h, 361_000), Lookup::Fetch);
        c.complete(&h, &found("acme"), 361_000);
        assert_eq!(c.begin(&h, 361_001), Lookup::Fresh(found("acme").into()));
    }

    #[test]
    fn a_new_key_that_fails_is_unavailable_without_hammering_the_store() {
        let c = cache();
        let h = hash("new");
        assert_eq!(c.begin(&h, 0), Lookup::Fetch);
        assert_eq!(c.fail(&h, 5), Lookup::Unavailable);
        assert_eq!(c.begin(&h, 500), Lookup::Unavailable);
        assert_eq!(c.begin(&h, 1_005), Lookup::Fetch);
    }

    #[test]
    fn failure_after_another_worker_succeeded_uses_the_fresh_answer() {
        let c = cache();
        let h = hash("a");
        c.begin(&h, 0);
        c.complete(&h, &found("acme"), 10);
        assert_eq!(c.fail(&h, 20), Lookup::Fresh(found("acme").into()));
    }

    /// Another worker of the same Envoy: the same table, none of this VM's memo.
    fn worker(c: &KeyCache<MemoryStore>) -> KeyCache<&MemoryStore> {
        KeyCache::new(c.store(), "t", POLICY)
    }

    #[test]
    fn colliding_keys_evict_each_other_but_never_a_lookup_in_flight() {
        let c = cache();
        let (a, b) = colliding_pair();
        assert_eq!(c.begin(&a, 0), Lookup::Fetch);
        // b's slot holds a's lookup: b asks the store without a claim...
        assert_eq!(worker(&c).begin(&b, 1), Lookup::Fetch);
        worker(&c).complete(&b, &found("b"), 2);
        // ...and does not overwrite a's marker.
        assert_eq!(worker(&c).begin(&a, 3), Lookup::Wait);
        c.complete(&a, &found("a"), 4);
        assert_eq!(worker(&c).begin(&a, 5), Lookup::Fresh(found("a").into()));
        // Once a's answer is in, b evicts it (newest wins), and the full hash keeps
        // a from reading b's answer.
        assert_eq!(worker(&c).begin(&b, 6), Lookup::Fetch);
        worker(&c).complete(&b, &found("b"), 7);
        assert_eq!(worker(&c).begin(&b, 8), Lookup::Fresh(found("b").into()));
        assert_eq!(worker(&c).begin(&a, 9), Lookup::Fetch);
        // A failure for a key that lost its slot has nothing stale to offer.
        assert_eq!(worker(&c).fail(&b, 10), Lookup::Unavailable);
        // The VM that looked a up still trusts its fresh answer until the TTL: the one
        // the table gave out, no longer than the table would have.
        assert_eq!(c.begin(&a, 11), Lookup::Fresh(found("a").into()));
        assert_eq!(c.begin(&a, 60_004), Lookup::Fetch);
    }

    #[test]
    fn a_vm_remembers_fresh_answers_until_their_ttl_and_no_longer() {
        let c = cache();
        let h = hash("a");
        assert_eq!(c.begin(&h, 0), Lookup::Fetch);
        c.complete(&h, &found("acme"), 10);
        // The table is emptied behind the VM's back: its memo still answers, and
        // only until the answer's TTL.
        c.store().set(&c.slot_key(&h), b"", None).unwrap();
        assert_eq!(c.begin(&h, 60_009), Lookup::Fresh(found("acme").into()));
        assert_eq!(c.begin(&h, 60_010), Lookup::Fetch);
        // Answers read from the table are remembered too.
        let other = worker(&c);
        c.complete(&h, &found("acme"), 70_000);
        assert_eq!(other.begin(&h, 70_001), Lookup::Fresh(found("acme").into()));
        c.store().set(&c.slot_key(&h), b"", None).unwrap();
        assert_eq!(other.begin(&h, 70_002), Lookup::Fresh(found("acme").into()));
    }

    #[test]
    fn the_memo_stays_bounded() {
        let c = cache();
        for i in 0..(3 * RECENT_ANSWERS as u64) {
            let h = hash(&format!("k{i}"));
            c.complete(&h, &StoreAnswer::NotFound, i);
        }
        assert!(c.recent.borrow().len() <= RECENT_ANSWERS);
    }

    #[test]
    fn cas_conflicts_are_retried() {
        let c = cache();
        let h = hash("a");
        c.store().fail_next_sets(2);
        assert_eq!(c.begin(&h, 0), Lookup::Fetch);
        assert_eq!(
            c.begin(&h, 1),
            Lookup::Wait,
            "the claim was written after retries"
        );
        c.store().fail_next_sets(CAS_ATTEMPTS as u32);
        c.complete(&h, &found("acme"), 2);
        assert_eq!(
            worker(&c).begin(&h, 3),
            Lookup::Wait,
            "the answer could not be written"
        );
        // The VM that asked the store has its answer all the same.
        assert_eq!(c.begin(&h, 3), Lookup::Fresh(found("acme").into()));
    }

    #[test]
    fn two_workers_racing_for_a_claim_make_one_lookup() {
        // Worker A and B both read the empty slot; A writes its claim first; B's CAS
        // write fails, B reads again, sees A's claim and waits.
        let c = cache();
        let h = hash("a");
        let key = c.slot_key(&h);
        let (_, stale_cas) = c.store().get(&key).unwrap();
        assert_eq!(c.begin(&h, 0), Lookup::Fetch);
        assert_eq!(
            c.store().set(&key, b"late", Some(stale_cas)),
            Err(SetError::CasMismatch)
        );
        assert_eq!(c.begin(&h, 1), Lookup::Wait);
    }

    #[test]
    fn unreadable_slots_are_overwritten() {
        let c = cache();
        let h = hash("a");
        c.store()
            .set(&c.slot_key(&h), b"\x00garbage", None)
            .unwrap();
        assert_eq!(c.begin(&h, 0), Lookup::Fetch);
        c.complete(&h, &StoreAnswer::NotFound, 1);
        assert_eq!(c.begin(&h, 2), Lookup::Fresh(StoreAnswer::NotFound.into()));
        assert_eq!(c.take_filled(), 0, "the slot was not empty");
    }
}
