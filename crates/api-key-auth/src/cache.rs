//! The key store's answers, cached in shared data for every worker of one Envoy.
//!
//! **Bounded.** Envoy never frees a shared-data key, so the cache is a fixed table of
//! `slots` keys, `<namespace>.<index>`, created up front ([`KeyCache::create_table`]).
//! A hash may live in two slots (two-way associative): one picked by its first eight
//! bytes, one by the next eight; each slot holds the full hash to tell keys apart.
//!
//! **Who may evict whom.** A newcomer takes, of its two slots, the one whose content is
//! worth least: an empty slot, then a lapsed claim, a "no such key", an answer too old
//! even to serve stale. An answer that a key *exists* is never evicted by a key not
//! known to exist: a fresh one by nobody, one past its TTL (still serving stale while
//! the store fails) only by a key the store has just found. Nor is a lookup in flight.
//! So a flood of random keys churns the negative answers among themselves and leaves
//! the real keys in place. A newcomer that finds no slot it may take asks the store
//! without a claim, and keeps its answer in its VM only.
//!
//! **One lookup per key.** Before asking the store, a worker *claims* the key's slot:
//! it writes an in-flight marker with CAS (which is meaningful because the key already
//! exists). Whoever loses the race sees the marker and waits for the answer to appear.
//! A claim expires after the lookup timeout plus a grace period, so a worker that died
//! mid-lookup delays the others by at most that.
//!
//! **Lookups in flight are bounded** for the whole Envoy ([`LookupPermits`]): a lookup
//! is only claimed and sent with a permit; past `max_in_flight`, a request gets a
//! stale answer if one is usable, else [`Lookup::Overloaded`] at once.
//!
//! **Stale if error.** A failed lookup keeps the previous answer and sets a back-off:
//! until it passes, the key is answered from the stale entry (while it is younger than
//! `ttl + max_stale`) or declared unavailable, without asking the store again. Nothing
//! refreshes an answer's age but a new answer from the store: an answer fetched at `F`
//! is never used at or after `F + ttl + max_stale`, whatever the store does.
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
use crate::permits::{LookupPermits, Permit};
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

/// How long answers are trusted, the table size, and the bound on lookups in flight.
/// Durations in milliseconds.
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
    /// Most lookups in flight at once in one Envoy, all workers together.
    pub max_in_flight: u32,
}

/// What to do about a key, according to the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The store's answer, within its TTL.
    Fresh(Rc<StoreAnswer>),
    /// An answer past its TTL, served because the store is failing (or, past
    /// `max_in_flight`, cannot be asked now).
    Stale(Rc<StoreAnswer>),
    /// The store is failing and nothing usable is cached.
    Unavailable,
    /// `max_in_flight` lookups are in flight and nothing usable is cached.
    Overloaded,
    /// Another worker is asking the store; wait for the answer to appear.
    Wait,
    /// Ask the store, holding this permit until the answer (the slot is claimed when
    /// one could be taken). [`KeyCache::release`] it then.
    Fetch(Permit),
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

/// One of the slots a key may live in, as read.
struct Way {
    key: String,
    slot: Slot,
    cas: Option<Cas>,
}

impl Way {
    fn entry(&self) -> Option<&SlotEntry> {
        match &self.slot {
            Slot::Entry(entry) => Some(entry),
            _ => None,
        }
    }
}

/// A key's slots as read: the one or two ways, and which of them holds the key.
struct Ways {
    ways: Vec<Way>,
    ours: Option<usize>,
}

impl Ways {
    fn ours(&self) -> Option<(usize, &SlotEntry)> {
        let index = self.ours?;
        Some((index, self.ways.get(index)?.entry()?))
    }
}

/// The cache table over a [`SharedStore`].
#[derive(Debug)]
pub struct KeyCache<S> {
    store: S,
    namespace: String,
    policy: CachePolicy,
    permits: LookupPermits,
    filled: Cell<u64>,
    /// Fresh answers this VM has seen, until they stop being fresh (Unix ms).
    recent: RefCell<HashMap<KeyHash, (Rc<StoreAnswer>, u64)>>,
}

impl<S: SharedStore> KeyCache<S> {
    pub fn new(store: S, namespace: impl Into<String>, policy: CachePolicy) -> Self {
        let namespace = namespace.into();
        let permits = LookupPermits::new(
            format!("{namespace}.in_flight"),
            policy.max_in_flight,
            policy.claim_ms,
        );
        Self {
            store,
            namespace,
            policy,
            permits,
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

    /// The shared-data keys of the slots `hash` may live in (one when the table has a
    /// single slot).
    pub fn slot_keys(&self, hash: &KeyHash) -> Vec<String> {
        let slots = u64::from(self.policy.slots.max(1));
        let (first, second) = hash.slot_seeds();
        let one = first % slots;
        let mut keys = vec![format!("{}.{one}", self.namespace)];
        if slots > 1 {
            let mut two = second % slots;
            if two == one {
                two = (one + 1) % slots;
            }
            keys.push(format!("{}.{two}", self.namespace));
        }
        keys
    }

    /// Creates every slot that does not exist yet, empty, and the lookup permits;
    /// returns how many slots it created. Run once per VM before serving, so later
    /// writes can rely on CAS.
    pub fn create_table(&self) -> u32 {
        let mut created = 0;
        for index in 0..self.policy.slots {
            let key = format!("{}.{index}", self.namespace);
            if self.store.get(&key).is_none() && self.store.set(&key, b"", None).is_ok() {
                created += 1;
            }
        }
        self.permits.create(&self.store);
        created
    }

    /// How many empty slots this instance filled since the last call (for a gauge of
    /// occupied slots: a slot goes from empty to filled once, and only one CAS write
    /// can do it).
    pub fn take_filled(&self) -> u64 {
        self.filled.replace(0)
    }

    /// Gives back the permit of a lookup that answered (or was never sent).
    pub fn release(&self, permit: Permit) {
        self.permits.release(&self.store, permit);
    }

    /// Lookups in flight in this Envoy at `now` (every worker's).
    pub fn in_flight(&self, now: u64) -> usize {
        self.permits.in_flight(&self.store, now)
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

    /// Decides what a request for `hash` does, taking a permit and claiming a slot
    /// when it must fetch.
    pub fn begin(&self, hash: &KeyHash, now: u64) -> Lookup {
        if let Some(answer) = self.recent(hash, now) {
            return Lookup::Fresh(answer);
        }
        let mut permit = None;
        let lookup = self.claim(hash, now, &mut permit);
        if let (Some(taken), false) = (permit, matches!(lookup, Lookup::Fetch(_))) {
            self.release(taken);
        }
        lookup
    }

    /// `begin` past the memo; a permit taken on the way is left in `permit`.
    fn claim(&self, hash: &KeyHash, now: u64, permit: &mut Option<Permit>) -> Lookup {
        let hex = hash.to_hex();
        for _ in 0..CAS_ATTEMPTS {
            let ways = self.read_ways(hash, &hex);
            let (target, kept) = match ways.ours() {
                Some((index, entry)) => {
                    if let Some(answer) = entry.answer.as_ref().filter(|a| self.fresh(a, now)) {
                        return self.fresh_answer(hash, answer);
                    }
                    if entry.lookup_until.is_some_and(|until| now < until) {
                        return Lookup::Wait;
                    }
                    if entry.retry_at.is_some_and(|at| now < at) {
                        return self.fallback(entry.answer.as_ref(), now);
                    }
                    (Some(index), entry.answer.clone())
                }
                None => (self.victim(&ways.ways, now, false), None),
            };
            let Some(granted) = permit.or_else(|| self.permits.acquire(&self.store, now)) else {
                return self.shed(kept.as_ref(), now);
            };
            *permit = Some(granted);
            // No slot it may take: ask without a claim.
            let Some(way) = target.and_then(|index| ways.ways.get(index)) else {
                return Lookup::Fetch(granted);
            };
            let claim = SlotEntry {
                hash: hex.clone(),
                answer: kept,
                lookup_until: Some(now.saturating_add(self.policy.claim_ms)),
                retry_at: None,
            };
            match self.write(way, &claim) {
                Err(SetError::CasMismatch) => continue,
                Ok(()) | Err(SetError::Refused) => return Lookup::Fetch(granted),
            }
        }
        match permit.or_else(|| self.permits.acquire(&self.store, now)) {
            Some(granted) => {
                *permit = Some(granted);
                Lookup::Fetch(granted)
            }
            None => Lookup::Overloaded,
        }
    }

    /// Stores the store's answer, and returns it as `Fresh` (shared with this VM's
    /// memo). Evicts only what a newcomer may evict (see the module documentation).
    pub fn complete(&self, hash: &KeyHash, answer: &StoreAnswer, now: u64) -> Lookup {
        let hex = hash.to_hex();
        let record = match answer {
            StoreAnswer::Found(record) => Some(record.clone()),
            StoreAnswer::NotFound => None,
        };
        let found = record.is_some();
        let cached = CachedAnswer {
            fetched_at: now,
            record,
        };
        // This VM has the answer from the store itself, whether or not the table
        // takes it.
        let fresh = self.fresh_answer(hash, &cached);
        for _ in 0..CAS_ATTEMPTS {
            let ways = self.read_ways(hash, &hex);
            let target = ways.ours.or_else(|| self.victim(&ways.ways, now, found));
            let Some(way) = target.and_then(|index| ways.ways.get(index)) else {
                break;
            };
            let entry = SlotEntry {
                hash: hex.clone(),
                answer: Some(cached.clone()),
                lookup_until: None,
                retry_at: None,
            };
            match self.write(way, &entry) {
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
            let ways = self.read_ways(hash, &hex);
            let Some((index, entry)) = ways.ours() else {
                return Lookup::Unavailable;
            };
            if let Some(answer) = entry.answer.as_ref().filter(|a| self.fresh(a, now)) {
                // Another worker's lookup succeeded meanwhile.
                return self.fresh_answer(hash, answer);
            }
            let failed = SlotEntry {
                hash: hex.clone(),
                answer: entry.answer.clone(),
                lookup_until: None,
                retry_at: Some(now.saturating_add(self.policy.error_backoff_ms)),
            };
            let Some(way) = ways.ways.get(index) else {
                return Lookup::Unavailable;
            };
            match self.write(way, &failed) {
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
        let ways = self.read_ways(hash, &hash.to_hex());
        match ways.ours() {
            Some((_, entry)) => match &entry.answer {
                Some(answer) if self.fresh(answer, now) => {
                    Lookup::Fresh(Rc::new(answer.to_answer()))
                }
                answer => self.fallback(answer.as_ref(), now),
            },
            None => Lookup::Unavailable,
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

    /// Whether an answer may still be served stale at `now`.
    fn servable(&self, answer: &CachedAnswer, now: u64) -> bool {
        let limit = self.ttl(answer).saturating_add(self.policy.max_stale_ms);
        now < answer.fetched_at.saturating_add(limit)
    }

    fn fallback(&self, answer: Option<&CachedAnswer>, now: u64) -> Lookup {
        match answer {
            Some(a) if self.servable(a, now) => Lookup::Stale(Rc::new(a.to_answer())),
            _ => Lookup::Unavailable,
        }
    }

    /// The answer when no permit is left: a stale answer if one is usable.
    fn shed(&self, answer: Option<&CachedAnswer>, now: u64) -> Lookup {
        match self.fallback(answer, now) {
            Lookup::Stale(answer) => Lookup::Stale(answer),
            _ => Lookup::Overloaded,
        }
    }

    /// Of a newcomer's ways, the one whose content is worth least, or `None` when each
    /// holds something it may not evict. `found`: the store said the newcomer exists.
    fn victim(&self, ways: &[Way], now: u64, found: bool) -> Option<usize> {
        ways.iter()
            .enumerate()
            .filter_map(|(index, way)| Some((self.worth(&way.slot, now, found)?, index)))
            .min()
            .map(|(_, index)| index)
    }

    /// How much a slot's content is worth keeping against a newcomer, as (kind, age):
    /// lower goes first, and of two of a kind the older answer. `None`: not to be
    /// evicted.
    fn worth(&self, slot: &Slot, now: u64, found: bool) -> Option<(u8, u64)> {
        let entry = match slot {
            Slot::Empty | Slot::Unreadable => return Some((0, 0)),
            Slot::Entry(entry) => entry,
        };
        if entry.lookup_until.is_some_and(|until| now < until) {
            return None;
        }
        let Some(answer) = &entry.answer else {
            return Some((1, 0));
        };
        let kind = if answer.record.is_none() {
            2
        } else if !self.servable(answer, now) {
            3
        } else if found && !self.fresh(answer, now) {
            4
        } else {
            return None;
        };
        Some((kind, answer.fetched_at))
    }

    fn read_ways(&self, hash: &KeyHash, hex: &str) -> Ways {
        let mut ways = Vec::with_capacity(2);
        for key in self.slot_keys(hash) {
            let (slot, cas) = self.read(&key);
            let ours = matches!(&slot, Slot::Entry(entry) if entry.hash == hex);
            ways.push(Way { key, slot, cas });
            if ours {
                // The first way is read alone when it holds the key.
                let ours = Some(ways.len() - 1);
                return Ways { ways, ours };
            }
        }
        Ways { ways, ours: None }
    }

    fn read(&self, key: &str) -> (Slot, Option<Cas>) {
        match self.store.get(key) {
            None => (Slot::Empty, None),
            Some((bytes, cas)) if bytes.is_empty() => (Slot::Empty, Some(cas)),
            Some((bytes, cas)) => match serde_json::from_slice(&bytes) {
                Ok(entry) => (Slot::Entry(entry), Some(cas)),
                Err(_) => (Slot::Unreadable, Some(cas)),
            },
        }
    }

    fn write(&self, way: &Way, entry: &SlotEntry) -> Result<(), SetError> {
        let bytes = serde_json::to_vec(entry).map_err(|_| SetError::Refused)?;
        self.store.set(&way.key, &bytes, way.cas)?;
        if matches!(way.slot, Slot::Empty) {
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
        max_in_flight: 64,
    };

    fn cache() -> KeyCache<MemoryStore> {
        cache_with(POLICY)
    }

    fn cache_with(policy: CachePolicy) -> KeyCache<MemoryStore> {
        let cache = KeyCache::new(MemoryStore::new(), "t", policy);
        assert_eq!(cache.create_table(), policy.slots);
        cache
    }

    /// Two slots: every key may live in either, so three keys compete for two places.
    fn two_slots() -> KeyCache<MemoryStore> {
        cache_with(CachePolicy { slots: 2, ..POLICY })
    }

    /// Another worker of the same Envoy: the same table, none of this VM's memo.
    fn worker(c: &KeyCache<MemoryStore>) -> KeyCache<&MemoryStore> {
        KeyCache::new(c.store(), "t", *c.policy())
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

    fn fresh(answer: StoreAnswer) -> Lookup {
        Lookup::Fresh(answer.into())
    }

    fn stale(answer: StoreAnswer) -> Lookup {
        Lookup::Stale(answer.into())
    }

    /// Whether `begin` says to fetch; the permit goes back at once (as when the lookup
    /// answers), so tests that do not count lookups in flight need not.
    fn fetches<S: SharedStore>(c: &KeyCache<S>, h: &KeyHash, now: u64) -> bool {
        match c.begin(h, now) {
            Lookup::Fetch(permit) => {
                c.release(permit);
                true
            }
            _ => false,
        }
    }

    #[test]
    fn table_is_created_once_and_never_grows() {
        let c = cache();
        assert_eq!(c.create_table(), 0);
        for i in 0..500 {
            let h = hash(&format!("key-{i}"));
            if fetches(&c, &h, i) {
                c.complete(&h, &StoreAnswer::NotFound, i);
            }
        }
        // The slots and the permits: nothing a key brings adds a shared-data key.
        assert_eq!(c.store().key_count(), 9);
        assert!(c.store().keys().iter().all(|k| k.starts_with("t.")));
        // Each slot went from empty to filled exactly once.
        assert_eq!(c.take_filled(), 8);
        assert_eq!(c.take_filled(), 0);
    }

    #[test]
    fn every_key_has_two_distinct_slots_and_one_when_the_table_has_one() {
        let c = cache();
        for i in 0..200 {
            let keys = c.slot_keys(&hash(&format!("k{i}")));
            assert_eq!(keys.len(), 2);
            assert_ne!(keys[0], keys[1]);
        }
        let single = cache_with(CachePolicy { slots: 1, ..POLICY });
        assert_eq!(single.slot_keys(&hash("a")), ["t.0"]);
        let h = hash("a");
        assert!(fetches(&single, &h, 0));
        single.complete(&h, &found("a"), 0);
        assert_eq!(worker(&single).begin(&h, 1), fresh(found("a")));
    }

    #[test]
    fn miss_claims_then_the_answer_is_fresh_until_its_ttl() {
        let c = cache();
        let h = hash("a");
        assert!(fetches(&c, &h, 1_000));
        // Everyone else waits while the lookup is in flight...
        assert_eq!(c.begin(&h, 1_001), Lookup::Wait);
        c.complete(&h, &found("acme"), 1_050);
        // ...and then reads the answer.
        assert_eq!(c.begin(&h, 1_051), fresh(found("acme")));
        assert_eq!(c.begin(&h, 61_049), fresh(found("acme")));
        // At the TTL the next request claims a refresh; the rest wait for it.
        assert!(fetches(&c, &h, 61_050));
        assert_eq!(c.begin(&h, 61_051), Lookup::Wait);
    }

    #[test]
    fn unknown_keys_use_the_negative_ttl() {
        let c = cache();
        let h = hash("nobody");
        assert!(fetches(&c, &h, 0));
        c.complete(&h, &StoreAnswer::NotFound, 0);
        assert_eq!(c.begin(&h, 9_999), fresh(StoreAnswer::NotFound));
        assert!(fetches(&c, &h, 10_000));
    }

    #[test]
    fn an_abandoned_claim_expires_after_timeout_plus_grace() {
        let c = cache();
        let h = hash("a");
        assert!(fetches(&c, &h, 0));
        assert_eq!(c.begin(&h, 1_249), Lookup::Wait);
        assert!(fetches(&c, &h, 1_250));
    }

    #[test]
    fn failure_serves_stale_within_max_stale_and_backs_off() {
        let c = cache();
        let h = hash("a");
        assert!(fetches(&c, &h, 0));
        c.complete(&h, &found("acme"), 0);
        // TTL over, store down: the refresh fails and the old answer is served.
        assert!(fetches(&c, &h, 60_000));
        assert_eq!(c.fail(&h, 60_010), stale(found("acme")));
        // During the back-off nobody asks the store again.
        assert_eq!(c.begin(&h, 60_500), stale(found("acme")));
        assert_eq!(c.usable(&h, 60_500), stale(found("acme")));
        // After it, one request tries again.
        assert!(fetches(&c, &h, 61_010));
        assert_eq!(c.fail(&h, 61_020), stale(found("acme")));
        // Beyond ttl + max_stale the answer is too old to use.
        assert!(fetches(&c, &h, 359_999));
        assert_eq!(c.fail(&h, 360_000), Lookup::Unavailable);
        assert_eq!(c.begin(&h, 360_500), Lookup::Unavailable);
        // The store comes back.
        assert!(fetches(&c, &h, 361_000));
        c.complete(&h, &found("acme"), 361_000);
        assert_eq!(c.begin(&h, 361_001), fresh(found("acme")));
    }

    #[test]
    fn a_revoked_key_is_never_served_from_its_last_good_answer_past_ttl_plus_max_stale() {
        // The key was active when fetched at F = 5_000 and revoked just after; the store
        // then fails for ever. Whatever the mix of requests, back-offs, lapsed claims,
        // workers and lookups refused for want of a permit, that answer is never used
        // at or after F + ttl + max_stale.
        let policy = CachePolicy {
            ttl_ms: 2_000,
            max_stale_ms: 3_000,
            error_backoff_ms: 300,
            max_in_flight: 1,
            ..POLICY
        };
        let c = cache_with(policy);
        let workers = [worker(&c), worker(&c)];
        let h = hash("revoked-later");
        assert!(fetches(&c, &h, 5_000));
        c.complete(&h, &found("acme"), 5_000);
        let bound = 5_000 + 2_000 + 3_000;
        let mut served_until = 0;
        let mut hog = None;
        for now in (5_001..20_000).step_by(37) {
            // Now and then someone else's lookup holds the only permit.
            if now % 5 == 0 && hog.is_none() {
                if let Lookup::Fetch(permit) = c.begin(&hash(&format!("x{now}")), now) {
                    hog = Some(permit);
                }
            } else if let Some(permit) = hog.take() {
                c.release(permit);
            }
            let cache = &workers[(now % 2) as usize];
            let outcome = match cache.begin(&h, now) {
                Lookup::Fetch(permit) => {
                    cache.release(permit);
                    if now % 3 == 0 {
                        // a lookup that never answers: its claim lapses
                        cache.usable(&h, now)
                    } else {
                        cache.fail(&h, now)
                    }
                }
                other => other,
            };
            if matches!(outcome, Lookup::Fresh(_) | Lookup::Stale(_)) {
                served_until = now;
            }
        }
        assert!(served_until < bound, "served at {served_until}");
        assert!(
            served_until > 5_000 + 2_000,
            "stale-if-error did apply past the TTL"
        );
    }

    #[test]
    fn a_new_key_that_fails_is_unavailable_without_hammering_the_store() {
        let c = cache();
        let h = hash("new");
        assert!(fetches(&c, &h, 0));
        assert_eq!(c.fail(&h, 5), Lookup::Unavailable);
        assert_eq!(c.begin(&h, 500), Lookup::Unavailable);
        assert!(fetches(&c, &h, 1_005));
    }

    #[test]
    fn failure_after_another_worker_succeeded_uses_the_fresh_answer() {
        let c = cache();
        let h = hash("a");
        assert!(fetches(&c, &h, 0));
        c.complete(&h, &found("acme"), 10);
        assert_eq!(c.fail(&h, 20), fresh(found("acme")));
    }

    #[test]
    fn lookups_in_flight_are_bounded_and_a_stale_answer_serves_past_the_bound() {
        let c = cache_with(CachePolicy {
            max_in_flight: 2,
            ..POLICY
        });
        let (a, b, k) = (hash("a"), hash("b"), hash("known"));
        assert!(fetches(&c, &k, 0));
        c.complete(&k, &found("known"), 0);
        let Lookup::Fetch(first) = c.begin(&a, 60_000) else {
            panic!("a: no permit")
        };
        let Lookup::Fetch(_) = worker(&c).begin(&b, 60_001) else {
            panic!("b: no permit")
        };
        assert_eq!(c.in_flight(60_001), 2);
        // Both permits are out (taken by two workers): a new key is refused at once,
        // a known key whose answer aged past its TTL is served stale.
        assert_eq!(c.begin(&hash("new"), 60_002), Lookup::Overloaded);
        assert_eq!(c.begin(&k, 60_002), stale(found("known")));
        // Waiting on a lookup in flight takes no permit, and gives none back.
        assert_eq!(worker(&c).begin(&a, 60_003), Lookup::Wait);
        assert_eq!(c.in_flight(60_003), 2);
        // An answer returns its permit: the next key may be looked up.
        c.complete(&a, &StoreAnswer::NotFound, 60_004);
        c.release(first);
        assert!(fetches(&c, &hash("new"), 60_005));
        // A lookup that never answers holds its permit only until its claim would lapse.
        let Lookup::Fetch(_) = c.begin(&hash("lost"), 60_006) else {
            panic!("lost: no permit")
        };
        assert_eq!(c.begin(&hash("new2"), 60_007), Lookup::Overloaded);
        assert!(fetches(&c, &hash("new2"), 60_001 + 1_250));
    }

    #[test]
    fn a_refused_request_writes_nothing_to_the_table() {
        let c = cache_with(CachePolicy {
            slots: 2,
            max_in_flight: 1,
            ..POLICY
        });
        let Lookup::Fetch(_) = c.begin(&hash("a"), 0) else {
            panic!("no permit")
        };
        let before: Vec<_> = ["t.0", "t.1"]
            .iter()
            .map(|k| c.store().get(k).unwrap())
            .collect();
        for i in 0..50 {
            assert_eq!(c.begin(&hash(&format!("r{i}")), 1), Lookup::Overloaded);
        }
        let after: Vec<_> = ["t.0", "t.1"]
            .iter()
            .map(|k| c.store().get(k).unwrap())
            .collect();
        assert_eq!(before, after);
    }

    #[test]
    fn unknown_keys_never_evict_a_key_that_exists() {
        let c = two_slots();
        let (a, b) = (hash("a"), hash("b"));
        for (h, tenant) in [(&a, "a"), (&b, "b")] {
            assert!(fetches(&c, h, 0));
            c.complete(h, &found(tenant), 0);
        }
        // A flood of keys the store does not know: each is looked up (unclaimed: both
        // slots hold keys that exist), and each answer stays in its VM.
        for i in 0..100 {
            let r = hash(&format!("random-{i}"));
            assert!(fetches(&worker(&c), &r, 10 + i));
            worker(&c).complete(&r, &StoreAnswer::NotFound, 10 + i);
        }
        // Another worker (no memo) still reads both from the table.
        assert_eq!(worker(&c).begin(&a, 1_000), fresh(found("a")));
        assert_eq!(worker(&c).begin(&b, 1_000), fresh(found("b")));
        // Past their TTL, while they would serve stale, still not by an unknown key...
        let r = hash("random-late");
        assert!(fetches(&worker(&c), &r, 61_000));
        worker(&c).complete(&r, &StoreAnswer::NotFound, 61_000);
        assert!(fetches(&worker(&c), &r, 61_001), "not in the table");
        assert_eq!(worker(&c).usable(&a, 61_001), stale(found("a")));
        assert_eq!(worker(&c).usable(&b, 61_001), stale(found("b")));
        // ...but by a key the store found, which takes the older of the two.
        let n = hash("new-partner");
        assert!(fetches(&worker(&c), &n, 62_000));
        worker(&c).complete(&n, &found("n"), 62_000);
        assert_eq!(worker(&c).begin(&n, 62_001), fresh(found("n")));
        let kept = [&a, &b]
            .iter()
            .filter(|h| worker(&c).usable(h, 62_001) != Lookup::Unavailable)
            .count();
        assert_eq!(kept, 1);
    }

    #[test]
    fn unknown_keys_evict_unknown_keys_and_answers_too_old_to_serve() {
        let c = two_slots();
        let (x, y, z) = (hash("x"), hash("y"), hash("z"));
        for (i, h) in [&x, &y].iter().enumerate() {
            assert!(fetches(&c, h, i as u64));
            c.complete(h, &StoreAnswer::NotFound, i as u64);
        }
        // A newcomer takes the slot of a "no such key" (the older one goes first)...
        assert!(fetches(&worker(&c), &z, 2));
        assert_eq!(
            worker(&c).begin(&z, 3),
            Lookup::Wait,
            "claimed in the table"
        );
        worker(&c).complete(&z, &StoreAnswer::NotFound, 4);
        assert_eq!(worker(&c).begin(&z, 5), fresh(StoreAnswer::NotFound));
        assert_eq!(worker(&c).begin(&y, 5), fresh(StoreAnswer::NotFound));
        assert!(fetches(&worker(&c), &x, 6), "x was evicted");
        // A key that exists, once its answer is too old even to serve stale, goes too.
        let old = two_slots();
        let (a, b) = (hash("a"), hash("b"));
        for h in [&a, &b] {
            assert!(fetches(&old, h, 0));
            old.complete(h, &found("a"), 0);
        }
        let late = 60_000 + 300_000;
        assert!(fetches(&worker(&old), &z, late));
        assert_eq!(worker(&old).begin(&z, late + 1), Lookup::Wait);
    }

    #[test]
    fn a_lookup_in_flight_is_never_evicted() {
        let c = two_slots();
        let (a, b, n) = (hash("a"), hash("b"), hash("n"));
        assert!(fetches(&c, &a, 0));
        assert!(fetches(&worker(&c), &b, 1));
        // Both slots hold a claim: a third key asks without one, and its answer (even
        // one that exists) does not overwrite them.
        assert!(fetches(&worker(&c), &n, 2));
        worker(&c).complete(&n, &found("n"), 3);
        assert_eq!(worker(&c).begin(&a, 4), Lookup::Wait);
        assert_eq!(worker(&c).begin(&b, 4), Lookup::Wait);
        c.complete(&a, &found("a"), 5);
        assert_eq!(worker(&c).begin(&a, 6), fresh(found("a")));
        // A failure for a key without a slot has nothing stale to offer.
        assert_eq!(worker(&c).fail(&n, 7), Lookup::Unavailable);
    }

    #[test]
    fn a_key_in_its_second_slot_is_found_there() {
        let c = two_slots();
        let (a, b) = (hash("a"), hash("b"));
        // Each takes the first of its slots that is free: both are found, one of them
        // in its second slot.
        assert!(fetches(&c, &a, 0));
        c.complete(&a, &found("a"), 0);
        assert!(fetches(&c, &b, 1));
        c.complete(&b, &found("b"), 1);
        for h in [&a, &b] {
            assert!(matches!(worker(&c).begin(h, 2), Lookup::Fresh(_)));
        }
        assert_eq!(c.store().keys(), ["t.0", "t.1", "t.in_flight"]);
    }

    #[test]
    fn a_vm_remembers_fresh_answers_until_their_ttl_and_no_longer() {
        let c = cache();
        let h = hash("a");
        assert!(fetches(&c, &h, 0));
        c.complete(&h, &found("acme"), 10);
        let empty_both = |c: &KeyCache<MemoryStore>| {
            for key in c.slot_keys(&h) {
                c.store().set(&key, b"", None).unwrap();
            }
        };
        // The table is emptied behind the VM's back: its memo still answers, and
        // only until the answer's TTL.
        empty_both(&c);
        assert_eq!(c.begin(&h, 60_009), fresh(found("acme")));
        assert!(fetches(&c, &h, 60_010));
        // Answers read from the table are remembered too.
        let other = worker(&c);
        c.complete(&h, &found("acme"), 70_000);
        assert_eq!(other.begin(&h, 70_001), fresh(found("acme")));
        empty_both(&c);
        assert_eq!(other.begin(&h, 70_002), fresh(found("acme")));
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
        assert!(fetches(&c, &h, 0));
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
        assert_eq!(c.begin(&h, 3), fresh(found("acme")));
    }

    #[test]
    fn two_workers_racing_for_a_claim_make_one_lookup() {
        // Worker A and B both read the empty slot; A writes its claim first; B's CAS
        // write fails, B reads again, sees A's claim and waits.
        let c = cache();
        let h = hash("a");
        let key = c.slot_keys(&h)[0].clone();
        let (_, stale_cas) = c.store().get(&key).unwrap();
        assert!(fetches(&c, &h, 0));
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
            .set(&c.slot_keys(&h)[0], b"\x00garbage", None)
            .unwrap();
        assert!(fetches(&c, &h, 0));
        c.complete(&h, &StoreAnswer::NotFound, 1);
        assert_eq!(c.begin(&h, 2), fresh(StoreAnswer::NotFound));
        assert_eq!(c.take_filled(), 0, "the slot was not empty");
    }
}
