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
//! waits longer than that, whatever happens to the lookup. At most [`MAX_WAITING`]
//! requests wait per worker, and a lookup holds its [`Permit`] (the Envoy-wide bound
//! on lookups in flight) from queueing to answer.

use crate::hash::KeyHash;
use crate::permits::Permit;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::time::Duration;

/// Tick while a lookup waits to be sent.
pub const DISPATCH_TICK: Duration = Duration::from_millis(1);
/// Tick while requests wait for another worker's lookup.
pub const POLL_TICK: Duration = Duration::from_millis(5);
/// Most requests one worker holds paused for lookups; past it, a request that would
/// wait is answered at once (503). Each costs a few dozen bytes here, and its stream
/// in Envoy.
pub const MAX_WAITING: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LocalLookup {
    Queued(Permit),
    Sent {
        token: u32,
        sent_at: u64,
        permit: Permit,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Waiter {
    hash: KeyHash,
    deadline: u64,
}

/// A lookup that answered: which key, when it was sent (Unix ms), and the permit it
/// held, to be released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answered {
    pub hash: KeyHash,
    pub sent_at: u64,
    pub permit: Permit,
}

/// Every operation a request or an answer causes is O(1) (or O(what it returns)): a
/// flood makes each of them no dearer.
#[derive(Debug, Default)]
pub struct PendingLookups {
    lookups: HashMap<KeyHash, LocalLookup>,
    /// The keys of `Queued` lookups, in the order they were queued.
    queued: Vec<KeyHash>,
    /// `Sent` lookups by callout token.
    sent: HashMap<u32, KeyHash>,
    waiters: HashMap<u32, Waiter>,
    /// The requests waiting on each key.
    waiting_on: HashMap<KeyHash, HashSet<u32>>,
    /// Deadlines, earliest first; entries of requests that stopped waiting are skipped
    /// when they come up (and dropped in bulk when they outnumber the waiting).
    deadlines: BinaryHeap<Reverse<(u64, u32)>>,
}

impl PendingLookups {
    pub fn new() -> Self {
        Self::default()
    }

    /// Pauses request `context_id` until `hash` is answered or `deadline` (Unix ms);
    /// `false` (and nothing recorded) when `MAX_WAITING` requests wait already.
    pub fn wait(&mut self, context_id: u32, hash: KeyHash, deadline: u64) -> bool {
        if self.waiters.len() >= MAX_WAITING {
            return false;
        }
        if let Some(previous) = self.waiters.insert(context_id, Waiter { hash, deadline }) {
            self.unlink(context_id, &previous.hash);
        }
        self.waiting_on.entry(hash).or_default().insert(context_id);
        self.deadlines.push(Reverse((deadline, context_id)));
        true
    }

    /// The request ended (client gone): nobody is to wake it.
    pub fn forget(&mut self, context_id: u32) {
        if let Some(waiter) = self.waiters.remove(&context_id) {
            self.unlink(context_id, &waiter.hash);
        }
        self.compact_deadlines();
    }

    fn unlink(&mut self, context_id: u32, hash: &KeyHash) {
        if let Some(set) = self.waiting_on.get_mut(hash) {
            set.remove(&context_id);
            if set.is_empty() {
                self.waiting_on.remove(hash);
            }
        }
    }

    /// Whether request `context_id` still waits for its key's answer.
    pub fn is_waiting(&self, context_id: u32) -> bool {
        self.waiters.contains_key(&context_id)
    }

    /// Whether this worker is already looking `hash` up.
    pub fn fetching(&self, hash: &KeyHash) -> bool {
        self.lookups.contains_key(hash)
    }

    /// Queues a lookup, holding `permit`, for the next tick; `false` if one is queued
    /// or sent already (the caller then releases `permit`).
    pub fn queue(&mut self, hash: KeyHash, permit: Permit) -> bool {
        if self.fetching(&hash) {
            return false;
        }
        self.lookups.insert(hash, LocalLookup::Queued(permit));
        self.queued.push(hash);
        true
    }

    /// The queued lookups, to send now, with their permits. Each must then be
    /// [`sent`](Self::sent) or [`abandon`](Self::abandon)ed.
    pub fn take_queued(&mut self) -> Vec<(KeyHash, Permit)> {
        std::mem::take(&mut self.queued)
            .into_iter()
            .filter_map(|hash| match self.lookups.get(&hash) {
                Some(LocalLookup::Queued(permit)) => Some((hash, *permit)),
                _ => None,
            })
            .collect()
    }

    pub fn sent(&mut self, hash: KeyHash, token: u32, now: u64) {
        if let Some(LocalLookup::Queued(permit)) = self.lookups.get(&hash).copied() {
            self.lookups.insert(
                hash,
                LocalLookup::Sent {
                    token,
                    sent_at: now,
                    permit,
                },
            );
            self.sent.insert(token, hash);
        }
    }

    /// The lookup could not be sent.
    pub fn abandon(&mut self, hash: &KeyHash) {
        if let Some(LocalLookup::Sent { token, .. }) = self.lookups.remove(hash) {
            self.sent.remove(&token);
        }
    }

    /// Whether the callout `token` is one of these lookups (without taking it).
    pub fn expects(&self, token: u32) -> bool {
        self.sent.contains_key(&token)
    }

    /// The callout `token` answered; `None` if it is not one of ours.
    pub fn answered(&mut self, token: u32) -> Option<Answered> {
        let hash = self.sent.remove(&token)?;
        match self.lookups.remove(&hash)? {
            LocalLookup::Sent {
                sent_at, permit, ..
            } => Some(Answered {
                hash,
                sent_at,
                permit,
            }),
            LocalLookup::Queued(_) => None,
        }
    }

    /// Takes the requests waiting on `hash`, to be woken with its answer.
    pub fn take_waiters(&mut self, hash: &KeyHash) -> Vec<u32> {
        let mut woken: Vec<u32> = self
            .waiting_on
            .remove(hash)
            .unwrap_or_default()
            .into_iter()
            .collect();
        for context_id in &woken {
            self.waiters.remove(context_id);
        }
        woken.sort_unstable();
        self.compact_deadlines();
        woken
    }

    /// Keys with waiting requests but no lookup of ours: another worker is asking the
    /// store, and the answer is to be looked for in shared data.
    pub fn watched(&self) -> Vec<KeyHash> {
        let mut hashes: Vec<KeyHash> = self
            .waiting_on
            .keys()
            .filter(|h| !self.fetching(h))
            .copied()
            .collect();
        hashes.sort_unstable();
        hashes
    }

    /// Takes the requests whose deadline has passed.
    pub fn take_overdue(&mut self, now: u64) -> Vec<(u32, KeyHash)> {
        let mut late = Vec::new();
        while let Some(Reverse((deadline, context_id))) = self.deadlines.peek().copied() {
            if deadline > now {
                break;
            }
            self.deadlines.pop();
            // Skips a request that stopped waiting (or waits again, on a later deadline).
            let Some(waiter) = self.waiters.get(&context_id).copied() else {
                continue;
            };
            if waiter.deadline == deadline {
                self.waiters.remove(&context_id);
                self.unlink(context_id, &waiter.hash);
                late.push((context_id, waiter.hash));
            }
        }
        late
    }

    /// Drops the deadlines of requests that stopped waiting once they outnumber the
    /// waiting ones: memory follows the requests waiting now, not all that ever did.
    fn compact_deadlines(&mut self) {
        if self.deadlines.len() > 2 * self.waiters.len() + 64 {
            self.deadlines = self
                .waiters
                .iter()
                .map(|(context_id, waiter)| Reverse((waiter.deadline, *context_id)))
                .collect();
        }
    }

    /// The tick the root needs: fast while something is to be sent, slower while
    /// requests wait, none when idle.
    pub fn tick(&self) -> Option<Duration> {
        if !self.queued.is_empty() {
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
        assert!(p.queue(a, Permit::test(0)));
        assert!(
            !p.queue(a, Permit::test(1)),
            "a second request for the same key does not queue again"
        );
        assert!(p.wait(10, a, 1_000));
        assert!(p.wait(11, a, 1_000));
        assert!(p.wait(12, b, 1_000));
        assert_eq!(p.tick(), Some(DISPATCH_TICK));
        assert_eq!(p.take_queued(), vec![(a, Permit::test(0))]);
        p.sent(a, 7, 5);
        assert_eq!(p.tick(), Some(POLL_TICK));
        assert!(p.take_queued().is_empty());
        // b has a waiter but no local lookup: it is watched in shared data.
        assert_eq!(p.watched(), vec![b]);
        assert!(p.expects(7) && !p.expects(99));
        assert_eq!(p.answered(99), None);
        assert_eq!(
            p.answered(7),
            Some(Answered {
                hash: a,
                sent_at: 5,
                permit: Permit::test(0),
            })
        );
        assert!(!p.fetching(&a) && !p.expects(7));
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
        assert_eq!(p.take_overdue(250), vec![(1, a)], "2 left: nobody to wake");
        assert_eq!(p.take_waiters(&a), vec![3]);
        assert_eq!(p.take_overdue(1_000), vec![], "3 was woken already");
        assert_eq!(p.tick(), None);
    }

    #[test]
    fn an_abandoned_lookup_can_be_queued_again() {
        let mut p = PendingLookups::new();
        let a = hash("a");
        p.queue(a, Permit::test(0));
        assert_eq!(p.take_queued().len(), 1);
        p.abandon(&a);
        assert!(!p.fetching(&a));
        assert_eq!(p.tick(), None);
        assert!(p.queue(a, Permit::test(1)));
    }

    #[test]
    fn waiting_is_bounded() {
        let mut p = PendingLookups::new();
        let a = hash("a");
        for context_id in 0..MAX_WAITING as u32 {
            assert!(p.wait(context_id, a, 100));
        }
        assert!(!p.wait(u32::MAX, a, 100));
        assert!(!p.is_waiting(u32::MAX));
        p.forget(0);
        assert!(p.wait(u32::MAX, a, 100), "room again once one left");
    }

    #[test]
    fn a_flood_of_short_waits_leaves_no_trace() {
        // Requests that wait and go (answered, or the client left) must not pile up
        // anywhere: the deadline queue follows the requests waiting now.
        let mut p = PendingLookups::new();
        for i in 0..100_000u32 {
            let h = hash(&format!("k{}", i % 50));
            p.wait(i, h, 1_000 + u64::from(i));
            if i % 2 == 0 {
                p.forget(i);
            } else {
                p.take_waiters(&h);
            }
        }
        assert_eq!(p.waiting(), 0);
        assert!(p.waiting_on.is_empty());
        assert!(p.deadlines.len() <= 64, "{}", p.deadlines.len());
        assert_eq!(p.take_overdue(u64::MAX), vec![]);
    }

    #[test]
    fn many_keys_in_flight_answer_in_any_order() {
        let mut p = PendingLookups::new();
        let keys: Vec<KeyHash> = (0..100).map(|i| hash(&format!("k{i}"))).collect();
        for (i, k) in keys.iter().enumerate() {
            assert!(p.queue(*k, Permit::test(i)));
            assert!(p.wait(i as u32, *k, 10_000));
        }
        let queued = p.take_queued();
        assert_eq!(queued.len(), 100);
        assert_eq!(queued[0].0, keys[0], "sent in the order they were queued");
        for (i, (k, _)) in queued.iter().enumerate() {
            p.sent(*k, 1_000 + i as u32, 1);
        }
        for i in (0..100).rev() {
            let answered = p.answered(1_000 + i).unwrap();
            assert_eq!(answered.hash, keys[i as usize]);
            assert_eq!(p.take_waiters(&answered.hash), vec![i]);
        }
        assert_eq!(p.tick(), None);
    }
}
