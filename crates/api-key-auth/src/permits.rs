//! A bound on key-store lookups in flight across every worker of one Envoy.
//!
//! Any well-formed key the cache does not know costs a lookup, so a flood of random
//! keys would otherwise send the store one lookup per key. Before a lookup is sent it
//! takes a *permit*, one of `max` leases kept in a single shared-data key, so the bound
//! holds whichever worker sends; past it, the request is answered at once.
//!
//! A permit is a lease. It ends when its lookup answers ([`LookupPermits::release`]),
//! or, whatever happens to the lookup or to the VM that took it (a configuration
//! update, a VM that fails), when the lease runs out: the lookup timeout plus grace,
//! by which time Envoy has ended the callout. Nothing can leak the bound away.
//!
//! The key holds one little-endian `u64` per permit: the Unix ms its lease ends, 0 when
//! free. Times are passed in; nothing here reads a clock.

use wasmgate_shared_store::{Cas, SetError, SharedStore};

/// Reads and CAS writes before taking (or returning) a permit is given up: a refusal
/// then, a lease left to run out on release.
const CAS_ATTEMPTS: usize = 8;

/// A lease on one lookup in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    index: usize,
    until: u64,
}

#[cfg(test)]
impl Permit {
    /// A permit for tests that do not exercise the bound.
    pub(crate) fn test(index: usize) -> Self {
        Self { index, until: 0 }
    }
}

/// The leases of one key store's lookups, in shared-data key `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupPermits {
    key: String,
    max: u32,
    lease_ms: u64,
}

impl LookupPermits {
    /// `max` lookups in flight at once, each lease lasting at most `lease_ms`.
    pub fn new(key: impl Into<String>, max: u32, lease_ms: u64) -> Self {
        Self {
            key: key.into(),
            max,
            lease_ms,
        }
    }

    /// Creates the key if it does not exist, so that every later write is a CAS.
    pub fn create(&self, store: &impl SharedStore) {
        if store.get(&self.key).is_none() {
            let _ = store.set(&self.key, b"", None);
        }
    }

    /// Takes a permit, or `None` when `max` leases are live at `now` (or every write
    /// lost its race to another worker's).
    pub fn acquire(&self, store: &impl SharedStore, now: u64) -> Option<Permit> {
        for _ in 0..CAS_ATTEMPTS {
            let (mut leases, cas) = self.read(store);
            let live = leases.iter().filter(|until| **until > now).count();
            if live >= self.max as usize {
                return None;
            }
            // Fewer than `max` are live, so one of the first `max` is free (leases
            // beyond `max`, left by a larger bound before an update, run out).
            let max = self.max as usize;
            if leases.len() < max {
                leases.resize(max, 0);
            }
            let index = leases.iter().take(max).position(|until| *until <= now)?;
            let until = now.saturating_add(self.lease_ms);
            leases[index] = until;
            while leases.len() > max && leases.last().is_some_and(|until| *until <= now) {
                leases.pop();
            }
            match self.write(store, &leases, cas) {
                Ok(()) => return Some(Permit { index, until }),
                Err(SetError::CasMismatch) => continue,
                Err(SetError::Refused) => return None,
            }
        }
        None
    }

    /// Ends a lease before it runs out (its lookup answered, or was never sent).
    pub fn release(&self, store: &impl SharedStore, permit: Permit) {
        for _ in 0..CAS_ATTEMPTS {
            let (mut leases, cas) = self.read(store);
            // Ran out already, and maybe taken again since: not ours to free.
            if leases.get(permit.index) != Some(&permit.until) {
                return;
            }
            leases[permit.index] = 0;
            match self.write(store, &leases, cas) {
                Err(SetError::CasMismatch) => continue,
                Ok(()) | Err(SetError::Refused) => return,
            }
        }
    }

    /// Leases live at `now`: lookups in flight in every worker.
    pub fn in_flight(&self, store: &impl SharedStore, now: u64) -> usize {
        self.read(store)
            .0
            .iter()
            .filter(|until| **until > now)
            .count()
    }

    fn read(&self, store: &impl SharedStore) -> (Vec<u64>, Option<Cas>) {
        match store.get(&self.key) {
            None => (Vec::new(), None),
            // Not ours (or damaged): every lease counts as free, and the write replaces it.
            Some((bytes, cas)) if bytes.len() % 8 != 0 => (Vec::new(), Some(cas)),
            Some((bytes, cas)) => {
                let leases = bytes
                    .chunks_exact(8)
                    .map(|chunk| {
                        let mut word = [0u8; 8];
                        word.copy_from_slice(chunk);
                        u64::from_le_bytes(word)
                    })
                    .collect();
                (leases, Some(cas))
            }
        }
    }

    fn write(
        &self,
        store: &impl SharedStore,
        leases: &[u64],
        cas: Option<Cas>,
    ) -> Result<(), SetError> {
        let bytes: Vec<u8> = leases
            .iter()
            .flat_map(|until| until.to_le_bytes())
            .collect();
        store.set(&self.key, &bytes, cas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgate_shared_store::MemoryStore;

    fn permits(max: u32) -> (LookupPermits, MemoryStore) {
        let store = MemoryStore::new();
        let permits = LookupPermits::new("p", max, 1_000);
        permits.create(&store);
        (permits, store)
    }

    #[test]
    fn at_most_max_in_flight_and_a_release_makes_room() {
        let (p, store) = permits(3);
        let taken: Vec<Permit> = (0..3).map(|i| p.acquire(&store, i).unwrap()).collect();
        assert_eq!(p.in_flight(&store, 3), 3);
        assert_eq!(p.acquire(&store, 3), None);
        p.release(&store, taken[1]);
        assert_eq!(p.in_flight(&store, 4), 2);
        assert!(p.acquire(&store, 4).is_some());
        assert_eq!(p.acquire(&store, 5), None);
        assert_eq!(
            store.key_count(),
            1,
            "one shared-data key, whatever the load"
        );
    }

    #[test]
    fn leases_run_out_so_a_lost_lookup_cannot_leak_the_bound() {
        let (p, store) = permits(2);
        let first = p.acquire(&store, 0).unwrap();
        p.acquire(&store, 500).unwrap();
        assert_eq!(p.acquire(&store, 999), None);
        // The first lease ends at 1000 whether or not anyone releases it.
        let again = p.acquire(&store, 1_000).unwrap();
        // Its late release does not free the lease taken since in the same place.
        p.release(&store, first);
        assert_eq!(p.in_flight(&store, 1_001), 2);
        p.release(&store, again);
        assert_eq!(p.in_flight(&store, 1_001), 1);
    }

    #[test]
    fn workers_share_the_bound() {
        let (p, store) = permits(2);
        let other_worker = LookupPermits::new("p", 2, 1_000);
        assert!(p.acquire(&store, 0).is_some());
        assert!(other_worker.acquire(&store, 1).is_some());
        assert_eq!(p.acquire(&store, 2), None);
        assert_eq!(other_worker.acquire(&store, 2), None);
    }

    #[test]
    fn contention_is_retried_then_refused() {
        let (p, store) = permits(4);
        store.fail_next_sets(CAS_ATTEMPTS as u32 - 1);
        assert!(
            p.acquire(&store, 0).is_some(),
            "retried past the lost races"
        );
        store.fail_next_sets(CAS_ATTEMPTS as u32);
        assert_eq!(p.acquire(&store, 1), None, "every race lost: refused");
        assert_eq!(p.in_flight(&store, 1), 1);
    }

    #[test]
    fn a_smaller_bound_after_an_update_counts_the_leases_still_live() {
        let (wide, store) = permits(4);
        for now in 0..4 {
            wide.acquire(&store, now).unwrap();
        }
        let narrow = LookupPermits::new("p", 2, 1_000);
        assert_eq!(narrow.acquire(&store, 10), None);
        // Once the wide leases run out, the narrow bound applies.
        assert!(narrow.acquire(&store, 1_003).is_some());
        assert!(narrow.acquire(&store, 1_003).is_some());
        assert_eq!(narrow.acquire(&store, 1_004), None);
    }

    #[test]
    fn a_damaged_value_is_replaced() {
        let (p, store) = permits(1);
        store.set("p", b"\x01\x02\x03", None).unwrap();
        assert!(p.acquire(&store, 0).is_some());
        assert_eq!(p.acquire(&store, 1), None);
    }
}
