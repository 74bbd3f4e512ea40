//! The port through which host-independent logic uses proxy-wasm shared data.
//!
//! Shared data is the one memory all Envoy workers (and all VMs with the same `vm_id`)
//! see. The logic crates (JWKS cache, API-key cache, token buckets) talk to it only
//! through [`SharedStore`]; the filter crates implement it over the proxy-wasm host
//! calls, and tests use [`MemoryStore`], which reproduces Envoy's semantics exactly:
//!
//! * every successful `set` gives the key a new, larger CAS number;
//! * `set` with `Some(cas)` fails with [`SetError::CasMismatch`] when the key exists
//!   and its CAS number differs;
//! * a `set` on a key that does not exist always succeeds, whatever CAS it carries —
//!   so two workers can both "create" a key. Create fixed keyspaces up front (for
//!   example in `on_configure`) and update them only with CAS;
//! * keys are never freed (proxy-wasm-rust-sdk#301): a keyspace must be bounded.
//!
//! This crate does not depend on proxy-wasm.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

/// The version stamp Envoy returns with every value and checks on a CAS write.
pub type Cas = u32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetError {
    /// Someone else wrote the key since it was read: read again and retry.
    CasMismatch,
    /// The host refused the write for another reason.
    Refused,
}

/// Shared data as Envoy implements it. See the crate documentation for the rules.
pub trait SharedStore {
    /// The value and its CAS number, or `None` when the key was never written.
    fn get(&self, key: &str) -> Option<(Vec<u8>, Cas)>;

    /// Writes `value`; with `Some(cas)` only if the key still carries that CAS number.
    fn set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), SetError>;
}

/// A borrowed store is the same store: several workers' caches can share one in tests.
impl<S: SharedStore + ?Sized> SharedStore for &S {
    fn get(&self, key: &str) -> Option<(Vec<u8>, Cas)> {
        (**self).get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), SetError> {
        (**self).set(key, value, cas)
    }
}

/// An in-memory [`SharedStore`] with Envoy's semantics, for tests.
///
/// `fail_next_sets(n)` makes the next `n` CAS writes fail with `CasMismatch`, to
/// exercise retry and fallback paths as if another worker had raced us.
#[derive(Debug, Default)]
pub struct MemoryStore {
    entries: RefCell<HashMap<String, (Vec<u8>, Cas)>>,
    next_cas: Cell<Cas>,
    forced_conflicts: Cell<u32>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn fail_next_sets(&self, count: u32) {
        self.forced_conflicts.set(count);
    }

    /// Number of keys ever written (shared data never shrinks).
    pub fn key_count(&self) -> usize {
        self.entries.borrow().len()
    }

    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.entries.borrow().keys().cloned().collect();
        keys.sort();
        keys
    }
}

impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, Cas)> {
        self.entries.borrow().get(key).cloned()
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), SetError> {
        let mut entries = self.entries.borrow_mut();
        if let Some((_, current)) = entries.get(key) {
            if cas.is_some() && self.forced_conflicts.get() > 0 {
                self.forced_conflicts.set(self.forced_conflicts.get() - 1);
                return Err(SetError::CasMismatch);
            }
            if let Some(expected) = cas {
                if expected != 0 && expected != *current {
                    return Err(SetError::CasMismatch);
                }
            }
        }
        let next = self.next_cas.get().wrapping_add(1).max(1);
        self.next_cas.set(next);
        entries.insert(key.to_owned(), (value.to_vec(), next));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_protects_existing_keys() {
        let store = MemoryStore::new();
        assert_eq!(store.get("k"), None);
        store.set("k", b"a", None).unwrap();
        let (value, cas) = store.get("k").unwrap();
        assert_eq!(value, b"a");
        store.set("k", b"b", Some(cas)).unwrap();
        assert_eq!(store.set("k", b"c", Some(cas)), Err(SetError::CasMismatch));
        assert_eq!(store.get("k").unwrap().0, b"b");
    }

    #[test]
    fn creating_a_key_ignores_cas_like_envoy() {
        let store = MemoryStore::new();
        store.set("new", b"x", Some(12345)).unwrap();
        assert_eq!(store.get("new").unwrap().0, b"x");
    }

    #[test]
    fn forced_conflicts_apply_to_cas_writes_only() {
        let store = MemoryStore::new();
        store.set("k", b"a", None).unwrap();
        store.fail_next_sets(1);
        let (_, cas) = store.get("k").unwrap();
        assert_eq!(store.set("k", b"b", Some(cas)), Err(SetError::CasMismatch));
        store.set("k", b"c", Some(cas)).unwrap();
        assert_eq!(store.key_count(), 1);
    }
}
