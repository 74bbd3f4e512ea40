//! One worker's part in keeping its instance's leases (the root context's side of
//! `lease.rs`): the renewals its requests claimed, the calls it has out, the requests of
//! this worker waiting for a lease, and the keys it spent on lately, visited once a
//! period to settle what is done and to renew what is about to lapse.
//!
//! Renewals are sent by the root, never by a request: an answer comes back to the context
//! that sent the call, and the root outlives every request. A request that claims a
//! renewal queues it here and asks for a 1 ms tick; the root sends everything queued on
//! that tick, one call per cluster and domain. Requests waiting on a renewal another
//! worker sends look for its result in shared data on a 5 ms tick. This module sends
//! nothing and holds no host handles: the glue dispatches the [`LeaseCall`]s it returns.

use crate::global::LeaseSettings;
use crate::lease::{LeaseTable, RenewalPlan, RenewalResult, Terms};
use crate::slots::Digest;
use crate::{LeaseWait, Rule};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;
use wasmgate_ratelimit_protocol::lease::{LeaseRenewal, RenewRequest, RenewResponse};
use wasmgate_ratelimit_protocol::rls::{Code, RateLimitDescriptor};
use wasmgate_ratelimit_protocol::Message;
use wasmgate_shared_store::SharedStore;

/// Tick while a renewal waits to be sent.
pub const DISPATCH_TICK: Duration = Duration::from_millis(1);
/// Tick while requests wait for another worker's renewal.
pub const POLL_TICK: Duration = Duration::from_millis(5);
/// Keys one worker keeps visiting each period; beyond it, a key's leases are settled when
/// a request touches it again (or stay held at the service until their window ends).
pub const MAX_ACTIVE: usize = 4096;

/// A key whose lease this worker renews or watches.
#[derive(Debug, Clone)]
pub(crate) struct Ticket {
    pub rule: Rc<Rule>,
    pub slot: u32,
    pub digest: Digest,
    pub descriptor: RateLimitDescriptor,
    pub cost: u64,
}

impl Ticket {
    fn settings(&self) -> Option<LeaseSettings> {
        match self.rule.global.as_ref()?.mode {
            crate::GlobalMode::Lease(settings) => Some(settings),
            crate::GlobalMode::Exact => None,
        }
    }

    fn terms(&self) -> Option<Terms> {
        let tier = self.rule.global.as_ref()?;
        let settings = self.settings()?;
        Some(Terms {
            cost: self.cost,
            size: settings.size,
            period_ms: millis(settings.period),
            timeout_ms: millis(tier.timeout),
        })
    }
}

/// Renewals of one call: the cluster and domain they go to, the call's timeout, and each
/// key with what is asked for it.
struct Group {
    cluster: String,
    domain: String,
    timeout: Duration,
    members: Vec<(Ticket, RenewalPlan)>,
}

/// A request of this worker paused until its key has a lease.
#[derive(Debug)]
pub struct Waiter {
    pub context_id: u32,
    pub(crate) wait: LeaseWait,
}

/// A renewal call for the glue to send (`wasmgate.ratelimit.v1.LeaseService/Renew`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseCall {
    /// Hand back to [`crate::RateLimitPolicy::lease_dispatched`].
    pub id: u64,
    pub cluster: String,
    pub timeout: Duration,
    /// The encoded `RenewRequest`.
    pub message: Vec<u8>,
}

/// What the root does on a tick.
#[derive(Debug, Default)]
pub struct LeaseTick {
    pub calls: Vec<LeaseCall>,
    /// Waiting requests to look again (their key changed, or they waited long enough).
    pub ready: Vec<Waiter>,
}

/// What a renewal answer changed.
#[derive(Debug, Default)]
pub struct LeaseAnswer {
    /// This worker's requests waiting on the renewed keys.
    pub ready: Vec<Waiter>,
    /// Hits granted by this answer.
    pub granted: u64,
    /// Keys the service refused (over the limit).
    pub over_limit: u32,
    /// Keys whose renewal failed (the whole call, or the service could not decide).
    pub failed: u32,
}

struct Entry {
    ticket: Ticket,
    settle: Vec<String>,
    want: u64,
    /// Where this key's renewals start in the request.
    first: usize,
}

struct Batch {
    id: u64,
    token: Option<u32>,
    sent_at: u64,
    entries: Vec<Entry>,
}

struct Active {
    ticket: Ticket,
    touched: u64,
}

#[derive(Default)]
pub(crate) struct LeaseDesk {
    holder: String,
    queued: Vec<Ticket>,
    batches: Vec<Batch>,
    waiters: Vec<Waiter>,
    active: HashMap<u32, Active>,
    next_sweep: u64,
    next_id: u64,
}

impl std::fmt::Debug for LeaseDesk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseDesk")
            .field("queued", &self.queued.len())
            .field("calls", &self.batches.len())
            .field("waiters", &self.waiters.len())
            .field("active", &self.active.len())
            .finish()
    }
}

impl LeaseDesk {
    pub fn set_holder(&mut self, holder: String) {
        self.holder = holder;
    }

    /// Whether this worker already visits `slot` for `digest` (then a request spending on
    /// it needs to tell nothing).
    pub fn knows(&mut self, slot: u32, digest: &Digest, now: u64) -> bool {
        match self.active.get_mut(&slot) {
            Some(active) if active.ticket.digest == *digest => {
                active.touched = now;
                true
            }
            _ => false,
        }
    }

    /// A key a request of this worker spent on (or waits for).
    pub fn note(&mut self, ticket: &Ticket, now: u64) {
        if self.active.len() < MAX_ACTIVE || self.active.contains_key(&ticket.slot) {
            if let Some(settings) = ticket.settings() {
                let due = now.saturating_add(millis(settings.period));
                self.next_sweep = self.next_sweep.min(due);
            }
            self.active.insert(
                ticket.slot,
                Active {
                    ticket: ticket.clone(),
                    touched: now,
                },
            );
        }
    }

    /// A renewal a request of this worker claimed: sent on the next tick.
    pub fn queue(&mut self, ticket: Ticket, now: u64) {
        self.note(&ticket, now);
        if !self
            .queued
            .iter()
            .any(|t| t.slot == ticket.slot && t.digest == ticket.digest)
        {
            self.queued.push(ticket);
        }
    }

    pub fn wait(&mut self, waiter: Waiter) {
        self.waiters.push(waiter);
    }

    /// The request ended (client gone): nobody is to wake it.
    pub fn forget(&mut self, context_id: u32) {
        self.waiters.retain(|w| w.context_id != context_id);
    }

    pub fn take_waiters(&mut self) -> Vec<Waiter> {
        std::mem::take(&mut self.waiters)
    }

    pub fn is_waiting(&self, context_id: u32) -> bool {
        self.waiters.iter().any(|w| w.context_id == context_id)
    }

    pub fn expects(&self, token: u32) -> bool {
        self.batches.iter().any(|b| b.token == Some(token))
    }

    /// The tick this worker needs: fast while something is to be sent, slower while
    /// requests wait, once a period while it holds keys, none when idle.
    pub fn tick_period(&self) -> Option<Duration> {
        if !self.queued.is_empty() {
            return Some(DISPATCH_TICK);
        }
        if !self.waiters.is_empty() {
            return Some(POLL_TICK);
        }
        self.active
            .values()
            .filter_map(|a| a.ticket.settings())
            .map(|settings| settings.period)
            .min()
    }

    pub fn tick(&mut self, table: &LeaseTable, store: &dyn SharedStore, now: u64) -> LeaseTick {
        let (ready, waiting): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|w| {
                now >= w.wait.deadline
                    || table.worth_retrying(store, (w.wait.slot, &w.wait.digest), w.wait.cost, now)
            });
        self.waiters = waiting;
        let mut entries = Vec::new();
        if now >= self.next_sweep {
            let mut next = u64::MAX;
            let mut idle = Vec::new();
            for (slot, active) in &self.active {
                let Some(terms) = active.ticket.terms() else {
                    idle.push(*slot);
                    continue;
                };
                next = next.min(now.saturating_add(terms.period_ms));
                let key = (*slot, &active.ticket.digest);
                match table.begin_renewal(store, key, terms, now, false) {
                    Some(plan) => entries.push((active.ticket.clone(), plan)),
                    None if now.saturating_sub(active.touched) > 2 * terms.period_ms => {
                        idle.push(*slot)
                    }
                    None => {}
                }
            }
            for slot in idle {
                self.active.remove(&slot);
            }
            self.next_sweep = next;
        }
        for ticket in std::mem::take(&mut self.queued) {
            let Some(terms) = ticket.terms() else {
                continue;
            };
            let key = (ticket.slot, &ticket.digest);
            if let Some(plan) = table.begin_renewal(store, key, terms, now, true) {
                entries.retain(|(t, _): &(Ticket, _)| t.slot != ticket.slot);
                entries.push((ticket, plan));
            }
        }
        let calls = self.batch(entries, now);
        LeaseTick { calls, ready }
    }

    /// One call per cluster and domain.
    fn batch(&mut self, entries: Vec<(Ticket, RenewalPlan)>, now: u64) -> Vec<LeaseCall> {
        let mut groups: Vec<Group> = Vec::new();
        for (ticket, plan) in entries {
            let Some(tier) = ticket.rule.global.as_ref() else {
                continue;
            };
            match groups
                .iter_mut()
                .find(|g| g.cluster == tier.cluster && g.domain == tier.domain)
            {
                Some(group) => {
                    group.timeout = group.timeout.max(tier.timeout);
                    group.members.push((ticket, plan));
                }
                None => groups.push(Group {
                    cluster: tier.cluster.clone(),
                    domain: tier.domain.clone(),
                    timeout: tier.timeout,
                    members: vec![(ticket, plan)],
                }),
            }
        }
        let mut calls = Vec::new();
        for Group {
            cluster,
            domain,
            timeout,
            members,
        } in groups
        {
            let mut renewals = Vec::new();
            let mut batch_entries = Vec::new();
            for (ticket, plan) in members {
                let first = renewals.len();
                let descriptor = Some(ticket.descriptor.clone());
                for (id, used) in &plan.settle {
                    renewals.push(LeaseRenewal {
                        descriptor: descriptor.clone(),
                        lease_id: id.clone(),
                        used: *used,
                        want: 0,
                    });
                }
                if plan.want > 0 {
                    renewals.push(LeaseRenewal {
                        descriptor,
                        lease_id: String::new(),
                        used: 0,
                        want: plan.want,
                    });
                }
                batch_entries.push(Entry {
                    ticket,
                    settle: plan.settle.into_iter().map(|(id, _)| id).collect(),
                    want: plan.want,
                    first,
                });
            }
            let message = RenewRequest {
                domain,
                holder: self.holder.clone(),
                renewals,
            }
            .encode_to_vec();
            self.next_id += 1;
            let id = self.next_id;
            self.batches.push(Batch {
                id,
                token: None,
                sent_at: now,
                entries: batch_entries,
            });
            calls.push(LeaseCall {
                id,
                cluster,
                timeout,
                message,
            });
        }
        calls
    }

    /// The glue sent call `id` (Envoy's token), or could not.
    pub fn dispatched(
        &mut self,
        id: u64,
        token: Option<u32>,
        table: &LeaseTable,
        store: &dyn SharedStore,
        now: u64,
    ) -> LeaseAnswer {
        let Some(index) = self.batches.iter().position(|b| b.id == id) else {
            return LeaseAnswer::default();
        };
        match token {
            Some(token) => {
                self.batches[index].token = Some(token);
                LeaseAnswer::default()
            }
            None => {
                let batch = self.batches.remove(index);
                self.settle_batch(batch, None, table, store, now)
            }
        }
    }

    /// A renewal call answered (`grpc_status` 0 and the message), or failed.
    pub fn answered(
        &mut self,
        token: u32,
        grpc_status: u32,
        message: &[u8],
        table: &LeaseTable,
        store: &dyn SharedStore,
        now: u64,
    ) -> LeaseAnswer {
        let Some(index) = self.batches.iter().position(|b| b.token == Some(token)) else {
            return LeaseAnswer::default();
        };
        let batch = self.batches.remove(index);
        let expected: usize = batch
            .entries
            .iter()
            .map(|e| e.settle.len() + usize::from(e.want > 0))
            .sum();
        let response = (grpc_status == 0)
            .then(|| RenewResponse::decode(message).ok())
            .flatten()
            .filter(|r| r.grants.len() == expected);
        self.settle_batch(batch, response, table, store, now)
    }

    fn settle_batch(
        &mut self,
        batch: Batch,
        response: Option<RenewResponse>,
        table: &LeaseTable,
        store: &dyn SharedStore,
        now: u64,
    ) -> LeaseAnswer {
        let mut answer = LeaseAnswer::default();
        for entry in &batch.entries {
            let Some(terms) = entry.ticket.terms() else {
                continue;
            };
            let result = match &response {
                None => {
                    answer.failed += 1;
                    RenewalResult::Failed
                }
                Some(response) => {
                    let settled = entry
                        .settle
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| {
                            response
                                .grants
                                .get(entry.first + i)
                                .is_some_and(|g| g.code != Code::Unknown as i32)
                        })
                        .map(|(_, id)| id.clone())
                        .collect();
                    let grant = (entry.want > 0)
                        .then(|| {
                            response
                                .grants
                                .get(entry.first + entry.settle.len())
                                .cloned()
                        })
                        .flatten();
                    if let Some(grant) = &grant {
                        match Code::try_from(grant.code) {
                            Ok(Code::Ok) => answer.granted += grant.granted,
                            Ok(Code::OverLimit) => answer.over_limit += 1,
                            _ => answer.failed += 1,
                        }
                    }
                    RenewalResult::Answered { settled, grant }
                }
            };
            table.finish_renewal(
                store,
                (entry.ticket.slot, &entry.ticket.digest),
                &result,
                (batch.sent_at, now),
                terms,
            );
            let slot = entry.ticket.slot;
            let (ready, waiting): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(&mut self.waiters)
                .into_iter()
                .partition(|w| w.wait.slot == slot);
            self.waiters = waiting;
            answer.ready.extend(ready);
        }
        answer
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
