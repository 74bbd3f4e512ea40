//! A bounded cache of verified tokens, per VM.
//!
//! Keyed by a 128-bit keyed hash of the provider name and the token, so the cache
//! never holds a token itself. An entry is valid until the token's `exp` (plus skew),
//! at most [`UNBOUNDED_TOKEN_TTL`] for tokens without `exp`, and only while the key
//! that verified it is still in the provider's JWKS (checked by the authenticator).
//! When full, the oldest entry goes first.
//!
//! The hash is SipHash-1-3 (the standard library's), twice with two domain bytes,
//! under a random key per cache (so per VM) that never leaves it. Not SHA-256: the
//! hash runs on every request, and SHA-256 of a 700-byte RS256 token costs about
//! 3 µs in Envoy's V8, ten times SipHash (BENCHMARKS.md, "Findings"). What the key
//! must guarantee is that no other token lands on a cached token's entry: with a secret
//! random key nobody can compute the hash of a token, let alone look for a collision,
//! and accidental collisions among 128-bit values are out of reach.
//!
//! It is not shared across workers: a hit costs a hash and a map lookup, while a
//! shared-data read would copy the identity out of the host on every request.

use crate::authenticator::Identity;
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::rc::Rc;

/// How long a verified token without `exp` is remembered, in milliseconds.
pub const UNBOUNDED_TOKEN_TTL: u64 = 60_000;

pub type TokenKey = u128;

#[derive(Debug, Default)]
pub struct TokenCache {
    capacity: usize,
    entries: HashMap<TokenKey, (Rc<Identity>, u64)>,
    /// Insertion order; may hold keys already removed (skipped on eviction).
    order: VecDeque<TokenKey>,
    /// The secret key of [`TokenCache::key`], random for each cache.
    hasher: RandomState,
}

impl TokenCache {
    /// `capacity` 0 turns the cache off.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: HashMap::new(),
            order: VecDeque::new(),
            hasher: RandomState::new(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry key of `token` for `provider` (see the module's doc for the hash).
    pub fn key(&self, provider: &str, token: &str) -> TokenKey {
        let half = |domain: u8| {
            let mut hasher = self.hasher.build_hasher();
            hasher.write_u8(domain);
            hasher.write(provider.as_bytes());
            // Provider names are [A-Za-z0-9_-]: 0xFF cannot occur in one, so the
            // boundary between name and token is unambiguous.
            hasher.write_u8(0xFF);
            hasher.write(token.as_bytes());
            hasher.finish()
        };
        (u128::from(half(1)) << 64) | u128::from(half(2))
    }

    /// The identity, if the entry exists and `now` is before its end.
    pub fn get(&mut self, key: &TokenKey, now: u64) -> Option<Rc<Identity>> {
        match self.entries.get(key) {
            Some((identity, until)) if now < *until => Some(Rc::clone(identity)),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    pub fn remove(&mut self, key: &TokenKey) {
        self.entries.remove(key);
    }

    /// Remembers `identity` until `until` (milliseconds since the epoch).
    pub fn insert(&mut self, key: TokenKey, identity: Rc<Identity>, until: u64) {
        if self.capacity == 0 {
            return;
        }
        if let Some(entry) = self.entries.get_mut(&key) {
            *entry = (identity, until);
            return;
        }
        while self.entries.len() >= self.capacity {
            match self.order.pop_front() {
                Some(oldest) => {
                    self.entries.remove(&oldest);
                }
                None => break,
            }
        }
        self.entries.insert(key, (identity, until));
        self.order.push_back(key);
        // Keys removed by `get` or `remove` stay in `order` until evicted; compact so
        // the queue stays bounded too.
        if self.order.len() > 2 * self.capacity {
            let entries = &self.entries;
            self.order.retain(|k| entries.contains_key(k));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(name: &str) -> Rc<Identity> {
        Rc::new(Identity {
            provider: 0,
            headers: vec![("x-user-id".into(), name.into())],
            scopes: vec![],
            kid: None,
            key_seq: 0,
        })
    }

    #[test]
    fn entries_expire_at_their_end() {
        let mut cache = TokenCache::new(10);
        let key = cache.key("idp", "token");
        cache.insert(key, identity("a"), 1_000);
        assert!(cache.get(&key, 999).is_some());
        assert!(cache.get(&key, 1_000).is_none());
        assert!(cache.is_empty());
    }

    #[test]
    fn the_oldest_entry_is_evicted_when_full() {
        let mut cache = TokenCache::new(2);
        let keys: Vec<_> = (0..3).map(|i| cache.key("idp", &format!("t{i}"))).collect();
        for key in &keys {
            cache.insert(*key, identity("a"), 10_000);
        }
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&keys[0], 0).is_none());
        assert!(cache.get(&keys[1], 0).is_some());
        assert!(cache.get(&keys[2], 0).is_some());
    }

    #[test]
    fn keys_differ_by_provider_and_token_and_by_cache() {
        let cache = TokenCache::new(10);
        assert_eq!(cache.key("a", "t"), cache.key("a", "t"));
        assert_ne!(cache.key("a", "t"), cache.key("b", "t"));
        assert_ne!(cache.key("a", "t"), cache.key("a", "u"));
        assert_ne!(cache.key("ab", "c"), cache.key("a", "bc"));
        // Another cache (another VM) has another secret key.
        assert_ne!(cache.key("a", "t"), TokenCache::new(10).key("a", "t"));
    }

    #[test]
    fn capacity_zero_is_off_and_the_queue_stays_bounded() {
        let mut off = TokenCache::new(0);
        off.insert(off.key("a", "t"), identity("a"), 10);
        assert!(off.is_empty() && !off.enabled());

        let mut cache = TokenCache::new(4);
        for i in 0..1000 {
            let key = cache.key("a", &i.to_string());
            cache.insert(key, identity("a"), 10);
            cache.remove(&key);
        }
        assert!(cache.order.len() <= 8);
    }
}
