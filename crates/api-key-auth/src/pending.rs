//! One worker's lookups in flight, and the requests paused until they answer.
//!
//! Lookups are dispatched by the worker's root context, never by a request: a callout
//! answers the context that sent it, and the root outlives every request, so a client
//! that hangs up cannot take the answer others wait for with it. A request that needs
//! a lookup queues it here and asks for a 1 ms tick; the root sends what is queued on
//! that tick. Requests waiting on another worker's lookup are polled on a 5 ms tick
//! until the answer shows up in shared data. With nothing waiting, the tick is off.
//!
//! Every waiting request has a deadline (lookup timeout plus grace), so no request
//! waits longer than that, whatever happens to the lookup.

use crate::hash::KeyHash;
use std::collections::HashMap;
use std::time::Duration;

/// Tick while a lookup waits to be sent.
pub const DISPATCH_TICK: Duration = Duration::from_millis(1);
/// Tick while requests wait for another worker's lookup.
pub const POLL_TICK: Duration = Duration::from_millis(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LocalLookup {
    Queued,
    Sent { token: u32, sent_at: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Waiter {
    context_id: u32,
    hash: KeyHash,
    deadline: u64,
}

/// A lookup that answered: which key, and when it was sent (Unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answered {
    pub hash: KeyHash,
    pub sent_at: u64,
}

#[derive(Debug, Default)]
pub struct PendingLookups {
    lookups: HashMap<KeyHash, LocalLookup>,
    waiters: Vec<Waiter>,
}

impl PendingLookups {
    pub fn new() -> Self {
        Self::default()
    }

    /// Pauses request `context_id` until `hash` is answered or `deadline` (Unix ms).
    pub fn wait(&mut self, context_id: u32, hash: KeyHash, deadline: u64) {
        self.waiters.push(Waiter {
            context_id,
            hash,
            deadline,
        });
    }

    /// The request ended (client gone): nobody is to wake it.
    pub fn forget(&mut self, context_id: u32) {
        self.waiters.retain(|w| w.context_id != context_id);
    }

    /// Whether request `context_id` still waits for its key's answer.
    pub fn is_waiting(&self, context_id: u32) -> bool {
        self.waiters.iter().any(|w| w.context_id == context_id)
    }

    /// Whether this worker is already looking `hash` up.
    pub fn fetching(&self, hash: &KeyHash) -> bool {
        self.lookups.contains_key(hash)
    }

    /// Queues a lookup for the next tick; `false` if one is queued or sent already.
    pub fn queue(&mut self, hash: KeyHash) -> bool {
        if self.fetching(&hash) {
            return false;
        }
        self.lookups.insert(hash, LocalLookup::Queued);
        true
    }

    /// The queued lookups, to send now. Each must then be [`sent`](Self::sent) or
    /// [`abandon`](Self::abandon)ed.
    pub fn to_send(&self) -> Vec<KeyHash> {
        let mut queued: Vec<KeyHash> = self
            .lookups
            .iter()
            .filter(|(_, state)| **state == LocalLookup::Queued)
            .map(|(hash, _)| *hash)
            .collect();
        queued.sort();
        queued
    }

    pub fn sent(&mut self, hash: KeyHash, token: u32, now: u64) {
        self.lookups.insert(
            hash,
            LocalLookup::Sent {
                token,
                sent_at: now,
            },
        );
    }

    /// The lookup could not be sent.
    pub fn abandon(&mut self, hash: &KeyHash) {
        self.lookups.remove(hash);
    }

    /// Whether the callout `token` is one of these lookups (without taking it).
    pub fn expects(&self, token: u32) -> bool {
        self.lookups
            .values()
            .any(|state| matches!(state, LocalLookup::Sent { token: t, .. } if *t == token))
    }

    /// The callout `token` answered; `None` if it is not one of ours.
    pub fn answered(&mut self, token: u32) -> Option<Answered> {
        let (hash, sent_at) = self.lookups.iter().find_map(|(hash, state)| match state {
            LocalLookup::Sent { token: t, sent_at } if *t == token => Some((*hash, *sent_at)),
            _ => None,
        })?;
        self.lookups.remove(&hash);
        Some(Answered { hash, sent_at })
    }

    /// Takes the requests waiting on `hash`, to be woken with its answer.
    pub fn take_waiters(&mut self, hash: &KeyHash) -> Vec<u32> {
        let (done, rest): (Vec<Waiter>, Vec<Waiter>) =
            self.waiters.drain(..).partition(|w| w.hash == *hash);
        self.waiters = rest;
        done.into_iter().map(|w| w.context_id).collect()
    }

    /// Keys with waiting requests but no lookup of ours: another worker is asking the
    /// store, and the answer is to be looked for in shared data.
    pub fn watched(&self) -> Vec<KeyHash> {
        let mut hashes: Vec<KeyHash> = self
            .waiters
            .iter()
            .map(|w| w.hash)
            .filter(|h| !self.fetching(h))
            .collect();
        hashes.sort();
        hashes.dedup();
        hashes
    }

    /// Takes the requests whose deadline has passed.
    pub fn take_overdue(&mut self, now: u64) -> Vec<(u32, KeyHash)> {
        let (late, rest): (Vec<Waiter>, Vec<Waiter>) =
            self.waiters.drain(..).partition(|w| now >= w.deadline);
        self.waiters = rest;
        late.into_iter().map(|w| (w.context_id, w.hash)).collect()
    }

    /// The tick the root needs: fast while something is to be sent, slower while
    /// requests wait, none when idle.
    pub fn tick(&self) -> Option<Duration> {
        if self.lookups.values().any(|s| *s == LocalLookup::Queued) {
            Some(DISPATCH_TICK)
        } else if !self.waiters.is_empty() {
            Some(POLL_TICK)
        } else {
            None
        }
    }

    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.waiters.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::KeyHasher;

    fn hash(key: &str) -> KeyHash {
        KeyHasher::Sha256.hash(key)
    }

    #[test]
    fn one_lookup_wakes_every_request_waiting_on_it() {
        let mut p = PendingLookups::new();
        let (a, b) = (hash("a"), hash("b"));
        assert_eq!(p.tick(), None);
        assert!(p.queue(a));
        assert!(
            !p.queue(a),
            "a second request for the same key does not queue again"
        );
        p.wait(10, a, 1_000);
        p.wait(11, a, 1_000);
        p.wait(12, b, 1_000);
        assert_eq!(p.tick(), Some(DISPATCH_TICK));
        assert_eq!(p.to_send(), vec![a]);
        p.sent(a, 7, 5);
        assert_eq!(p.tick(), Some(POLL_TICK));
        assert!(p.to_send().is_empty());
        // b has a waiter but no local lookup: it is watched in shared data.
        assert_eq!(p.watched(), vec![b]);
        assert_eq!(p.answered(99), None);
        assert_eq!(
            p.answered(7),
            Some(Answered {
                hash: a,
                sent_at: 5
            })
        );
        assert!(!p.fetching(&a));
        assert_eq!(p.take_waiters(&a), vec![10, 11]);
        assert_eq!(p.waiting(), 1);
        assert_eq!(p.take_waiters(&b), vec![12]);
        assert_eq!(p.tick(), None);
    }

    #[test]
    fn gone_and_overdue_requests() {
        let mut p = PendingLookups::new();
        let a = hash("a");
        p.wait(1, a, 100);
        p.wait(2, a, 200);
        p.wait(3, a, 300);
        p.forget(2);
        assert!(p.is_waiting(1) && !p.is_waiting(2));
        assert_eq!(p.take_overdue(99), vec![]);
        assert_eq!(p.take_overdue(100), vec![(1, a)]);
        assert_eq!(p.take_waiters(&a), vec![3]);
    }

    #[test]
    fn an_abandoned_lookup_can_be_queued_again() {
        let mut p = PendingLookups::new();
        let a = hash("a");
        p.queue(a);
        p.abandon(&a);
        assert!(!p.fetching(&a));
        assert!(p.queue(a));
    }
}
