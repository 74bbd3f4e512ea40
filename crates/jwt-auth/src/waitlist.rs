//! Requests paused until their provider's keys arrive: bounded, removed in O(1) when
//! the client leaves, and looked at on a tick only when there is something new.
//!
//! A request waits (an [`Attempt`]) when its keys are not there yet: before the first
//! JWKS, while the keys are too stale, or while a refetch for its unknown `kid` runs.
//! Every tick the glue asks [`WaitList::due`] which requests to finish:
//!
//! * those whose deadline passed (they get 503): a heap ordered by deadline, so a tick
//!   looks only at what expired;
//! * those whose provider's [`KeyView`] changed since they were put to wait: each
//!   provider keeps its last view and an epoch that grows when the view changes, and
//!   its requests in a queue in epoch order. A tick compares one view per provider;
//!   when nothing changed it checks no token at all (the filter used to re-parse every
//!   waiting token on every tick, 100 ms apart).
//!
//! At most `capacity` requests wait at once; the next one is refused at once with
//! [`AuthError::TooManyWaiting`] (503 and `Retry-After`), so a flood of tokens during
//! a JWKS outage costs a bounded amount of memory per VM. A request that leaves is
//! dropped from the map at once; its queue and heap entries are skipped when met and
//! rebuilt away when they outnumber the live ones (amortised O(1) per request).

use crate::authenticator::Attempt;
use crate::error::AuthError;
use crate::jwks_cache::KeyView;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

/// Stale entries (of requests that left or were finished) tolerated in the queues and
/// the heap before they are rebuilt from the live entries.
const SLACK: usize = 64;

/// Why a request comes out of the list.
#[derive(Debug)]
pub enum Wake {
    /// Its deadline passed: answer 503 ([`Authenticator::give_up`](crate::Authenticator::give_up)).
    Expired,
    /// Its provider's keys changed: check the attempt again (it may wait again).
    Recheck(Attempt),
}

#[derive(Debug)]
struct Waiting {
    attempt: Attempt,
    /// Tells this stay in the list from an earlier one of the same request.
    ticket: u64,
}

/// One provider: the view its waiting requests were last compared with.
#[derive(Debug, Default)]
struct ProviderQueue {
    view: Option<KeyView>,
    epoch: u64,
    /// `(epoch, ticket, request)` in epoch order.
    queue: VecDeque<(u64, u64, u32)>,
}

impl ProviderQueue {
    /// Takes `view` as the provider's current one; returns the epoch it belongs to.
    fn observe(&mut self, view: KeyView) -> u64 {
        if self.view != Some(view) {
            self.view = Some(view);
            self.epoch += 1;
        }
        self.epoch
    }
}

/// The requests of one VM (and one configuration) waiting for keys, by context id.
#[derive(Debug)]
pub struct WaitList {
    capacity: usize,
    waiting: HashMap<u32, Waiting>,
    providers: Vec<ProviderQueue>,
    /// `(deadline, ticket, request)`, earliest first.
    deadlines: BinaryHeap<Reverse<(u64, u64, u32)>>,
    next_ticket: u64,
}

impl WaitList {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            waiting: HashMap::new(),
            providers: Vec::new(),
            deadlines: BinaryHeap::new(),
            next_ticket: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Puts `request` to wait with `attempt` (an [`Outcome::Wait`](crate::Outcome::Wait)),
    /// checked under `view`, its provider's [`KeyView`] right after the check. When
    /// `capacity` requests already wait, refuses it with
    /// [`AuthError::TooManyWaiting`]: try again when the wait would have ended.
    pub fn admit(
        &mut self,
        request: u32,
        attempt: Attempt,
        view: KeyView,
        now: u64,
    ) -> Result<(), AuthError> {
        if self.waiting.len() >= self.capacity && !self.waiting.contains_key(&request) {
            let wait_ms = attempt.deadline().saturating_sub(now);
            return Err(AuthError::TooManyWaiting {
                retry_after: wait_ms.div_ceil(1000).max(1),
            });
        }
        let provider = attempt.provider();
        if self.providers.len() <= provider {
            self.providers
                .resize_with(provider + 1, ProviderQueue::default);
        }
        let queue = &mut self.providers[provider];
        let epoch = queue.observe(view);
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        queue.queue.push_back((epoch, ticket, request));
        self.deadlines
            .push(Reverse((attempt.deadline(), ticket, request)));
        self.waiting.insert(request, Waiting { attempt, ticket });
        Ok(())
    }

    /// Forgets a request that went away (or was answered elsewhere). O(1).
    pub fn remove(&mut self, request: u32) -> bool {
        // Most requests never waited: no hashing for them.
        if self.waiting.is_empty() {
            return false;
        }
        let removed = self.waiting.remove(&request).is_some();
        if removed {
            self.compact();
        }
        removed
    }

    /// The requests to finish now: those whose deadline is `now` or earlier, and those
    /// whose provider's view (`view_of(provider)`, read after the shared state) changed
    /// since they were put to wait. They leave the list; a recheck that must wait
    /// again goes back in with [`WaitList::admit`].
    pub fn due(&mut self, now: u64, mut view_of: impl FnMut(usize) -> KeyView) -> Vec<(u32, Wake)> {
        let mut due = Vec::new();
        while let Some(Reverse((deadline, ticket, request))) = self.deadlines.peek().copied() {
            if deadline > now {
                break;
            }
            self.deadlines.pop();
            if self.take(request, ticket).is_some() {
                due.push((request, Wake::Expired));
            }
        }
        for provider in 0..self.providers.len() {
            if self.providers[provider].queue.is_empty() {
                continue;
            }
            let epoch = self.providers[provider].observe(view_of(provider));
            while let Some(&(seen, ticket, request)) = self.providers[provider].queue.front() {
                if seen >= epoch {
                    break;
                }
                self.providers[provider].queue.pop_front();
                if let Some(attempt) = self.take(request, ticket) {
                    due.push((request, Wake::Recheck(attempt)));
                }
            }
        }
        self.compact();
        due
    }

    /// Removes `request` if this entry (`ticket`) is still its stay in the list.
    fn take(&mut self, request: u32, ticket: u64) -> Option<Attempt> {
        match self.waiting.get(&request) {
            Some(waiting) if waiting.ticket == ticket => {
                self.waiting.remove(&request).map(|waiting| waiting.attempt)
            }
            _ => None,
        }
    }

    /// Drops the entries of requests no longer waiting once they outnumber the live
    /// ones (each rebuild is paid for by at least as many removals before it).
    fn compact(&mut self) {
        let live = self.waiting.len();
        let waiting = &self.waiting;
        let is_live = |ticket: u64, request: u32| {
            waiting
                .get(&request)
                .is_some_and(|waiting| waiting.ticket == ticket)
        };
        if self.deadlines.len() > 2 * live + SLACK {
            self.deadlines
                .retain(|Reverse((_, ticket, request))| is_live(*ticket, *request));
        }
        let queued: usize = self.providers.iter().map(|p| p.queue.len()).sum();
        if queued > 2 * live + SLACK {
            for provider in &mut self.providers {
                provider
                    .queue
                    .retain(|(_, ticket, request)| is_live(*ticket, *request));
            }
        }
    }

    /// Entries held in the queues and the heap, live or not (for tests of the bound).
    #[cfg(test)]
    fn entries(&self) -> usize {
        self.deadlines.len() + self.providers.iter().map(|p| p.queue.len()).sum::<usize>()
    }
}

#[cfg(test)]
mod tests;
