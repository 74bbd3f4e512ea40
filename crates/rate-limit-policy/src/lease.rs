//! Leases: budgets of a global limit that the rate-limit service grants to one Envoy
//! instance, kept per client key in shared data and spent there by every worker.
//!
//! A request spends from its key's lease with one compare-and-swap, as it takes from a
//! bucket: no call on the way. The service is asked (by the root context of the worker
//! that claimed the renewal, see `desk.rs`) when a key has no lease, when 80% of its lease
//! is spent, when a lease is about to lapse while the key is busy, and to settle leases
//! that are done: spent, lapsed, or idle for a whole period. One claim per key at a time
//! (a field of the record, set by compare-and-swap), so exactly one worker of the
//! instance renews a key.
//!
//! Why global admissions never exceed the limit: every admission spends a hit the service
//! granted, and grants are atomic holds on the global counter; a lease is spent only until
//! it lapses (`valid_for`, which the service ends with the window, counted from when the
//! renewal was *sent*, so lateness only shortens it); a lease is closed (never spent again)
//! before the hits it used are reported, so the report is final. What this costs is
//! budget held and not spent: at most two leases per key and instance (the one being spent
//! and the next, asked for at 80%), released within a period of going idle.
//!
//! Leases live in the fixed slots of a [`SlotTable`] (`wasmgate.rate_limit.<table>.lease.<i>`):
//! a slot is reused once its key holds nothing.

use crate::answer::GlobalView;
use crate::global::{duration_ms, view_of};
use crate::slots::{write_short_text, Digest, Fit, Place, Reader, Slot, SlotTable};
use crate::table::{StoreTrouble, MAX_ATTEMPTS};
use std::borrow::Cow;
use wasmgate_ratelimit_protocol::lease::LeaseGrant;
use wasmgate_ratelimit_protocol::rls::Code;
use wasmgate_shared_store::{SetError, SharedStore};

/// Leases one key may hold at once (spent, lapsed or released ones waiting to be settled
/// included); beyond it the oldest settled-pending lease is forgotten (its hits stay held
/// at the service until its window ends: under-admission, never over-admission).
const MAX_LEASES: usize = 4;
/// How long past its timeout a renewal claim stands: the claiming worker sends on its
/// next tick (1 ms), and another worker takes over only once the claim has lapsed.
const CLAIM_GRACE_MS: u64 = 100;

/// What spending and renewing one key depend on: the request's cost and the rule's lease
/// settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Terms {
    pub cost: u64,
    /// Hits a lease asks for.
    pub size: u64,
    pub period_ms: u64,
    /// The call's timeout: how long a renewal claim stands (plus a grace).
    pub timeout_ms: u64,
}

impl Terms {
    fn claim_until(&self, now: u64) -> u64 {
        now.saturating_add(self.timeout_ms + CLAIM_GRACE_MS)
    }

    /// A key holding only unsettled leases keeps its slot this long after its last request.
    fn idle_ms(&self) -> u64 {
        self.period_ms.saturating_mul(10)
    }
}

/// The fixed-size table of lease slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseTable {
    slots: SlotTable,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Lease<'a> {
    /// Borrowed from the slot's bytes when read from shared data.
    id: Cow<'a, str>,
    granted: u64,
    used: u64,
    /// Spent only before this instant (ms since the Unix epoch).
    valid_until: u64,
    /// Never spent again: its `used` is final, to be reported.
    closed: bool,
}

impl Lease<'_> {
    fn fits(&self, cost: u64, now: u64) -> bool {
        !self.closed && now < self.valid_until && self.used + cost <= self.granted
    }

    fn unspent(&self, now: u64) -> u64 {
        if self.closed || now >= self.valid_until {
            0
        } else {
            self.granted.saturating_sub(self.used)
        }
    }
}

/// Why a key may not be renewed before `ask_after`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Refusal {
    #[default]
    None,
    /// The service said the window's budget is gone.
    OverLimit,
    /// The service could not be asked or could not decide.
    Failed,
    /// The service would not lease although the window has budget left: the window ends
    /// within its lease margin (a lease would be spent in the next window). Until the
    /// reset each request is asked about, as in exact mode.
    Closing,
}

/// The fleet's view as the last renewal reported it (a [`GlobalView`] whose name is
/// borrowed from the slot's bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
struct View<'a> {
    name: Cow<'a, str>,
    limit: u64,
    window_ms: u64,
    remaining: u64,
    reset_at_ms: u64,
}

impl View<'_> {
    fn owned(&self) -> GlobalView {
        GlobalView {
            name: self.name.to_string(),
            limit: self.limit,
            window_ms: self.window_ms,
            remaining: self.remaining,
            reset_at_ms: self.reset_at_ms,
        }
    }

    fn from_global(view: GlobalView) -> View<'static> {
        View {
            name: Cow::Owned(view.name),
            limit: view.limit,
            window_ms: view.window_ms,
            remaining: view.remaining,
            reset_at_ms: view.reset_at_ms,
        }
    }
}

/// One key's leases and renewal state. Read from shared data, its strings are borrowed
/// from the slot's bytes: spending allocates none of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LeaseRecord<'a> {
    last_spend_ms: u64,
    /// A worker renews this key until then.
    renewing_until: u64,
    ask_after: u64,
    refusal: Refusal,
    view: Option<View<'a>>,
    leases: Vec<Lease<'a>>,
}

/// What a request got from its key's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Spend {
    /// Spent; the fleet's view as this instance knows it. `renew`: this request claimed
    /// the key's renewal (80% of its lease is spent).
    Spent {
        view: Option<GlobalView>,
        renew: bool,
    },
    /// The window's budget is gone (until `view.reset_at_ms`).
    OverLimit(Option<GlobalView>),
    /// No lease to spend; a renewal is on its way. `renew`: this request claimed it.
    Wait { renew: bool },
    /// No lease, and the service failed recently: the failure mode decides.
    Failed,
    /// No lease until the window resets, though the window has budget: ask the service
    /// about this request (exact mode).
    Ask,
}

/// The result of spending, and where the key lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SpendOutcome {
    At {
        slot: u32,
        spend: Spend,
    },
    /// No slot for this key in its probe window.
    NoSlot,
    Unavailable(StoreTrouble),
}

/// What a renewal reports and asks for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RenewalPlan {
    /// Closed leases: (id, hits used), final.
    pub settle: Vec<(String, u64)>,
    /// Hits wanted for the next lease (0: none).
    pub want: u64,
}

/// What came back for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RenewalResult {
    /// The service answered: the leases it settled, and its grant for `want` (if any).
    Answered {
        settled: Vec<String>,
        grant: Option<LeaseGrant>,
    },
    /// The call failed: nothing is known to be settled.
    Failed,
}

/// Record layout, little-endian: format (1) | digest (16) | last_spend_ms | renewing_until |
/// ask_after (8 each) | refusal (1) | view: present (1) [name (1+n) | limit | window_ms |
/// remaining | reset_at_ms (8 each)] | lease count (1) | per lease: id (1+n) | granted |
/// used | valid_until (8 each) | closed (1).
const FORMAT: u8 = 2;

fn encode(digest: &Digest, record: &LeaseRecord<'_>) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(64 + 48 * record.leases.len());
    bytes.push(FORMAT);
    bytes.extend_from_slice(digest);
    for word in [
        record.last_spend_ms,
        record.renewing_until,
        record.ask_after,
    ] {
        bytes.extend_from_slice(&word.to_le_bytes());
    }
    bytes.push(match record.refusal {
        Refusal::None => 0,
        Refusal::OverLimit => 1,
        Refusal::Failed => 2,
        Refusal::Closing => 3,
    });
    match &record.view {
        None => bytes.push(0),
        Some(view) => {
            bytes.push(1);
            write_short_text(&mut bytes, &view.name);
            for word in [view.limit, view.window_ms, view.remaining, view.reset_at_ms] {
                bytes.extend_from_slice(&word.to_le_bytes());
            }
        }
    }
    bytes.push(record.leases.len() as u8);
    for lease in &record.leases {
        write_short_text(&mut bytes, &lease.id);
        for word in [lease.granted, lease.used, lease.valid_until] {
            bytes.extend_from_slice(&word.to_le_bytes());
        }
        bytes.push(u8::from(lease.closed));
    }
    bytes
}

/// A slot as the lease record of `digest` sees it (`reusable` judges another key's).
fn fit(bytes: &[u8], digest: &Digest, reusable: impl Fn(&LeaseRecord<'_>) -> bool) -> Fit {
    if bytes.is_empty() {
        return Fit::Vacant;
    }
    // Our own record is found by its digest alone (the caller reads it once).
    if bytes.len() > 17 && bytes[0] == FORMAT && bytes[1..17] == digest[..] {
        return Fit::Mine;
    }
    match read(bytes) {
        Some((_, record)) if !reusable(&record) => Fit::Taken,
        _ => Fit::Reusable,
    }
}

fn decode(bytes: &[u8]) -> Slot<LeaseRecord<'_>> {
    if bytes.is_empty() {
        return Slot::Vacant;
    }
    match read(bytes) {
        Some((digest, record)) => Slot::Held(digest, record),
        None => Slot::Unreadable,
    }
}

fn read(bytes: &[u8]) -> Option<(Digest, LeaseRecord<'_>)> {
    let mut r = Reader(bytes);
    if r.u8()? != FORMAT {
        return None;
    }
    let digest = r.digest()?;
    let (last_spend_ms, renewing_until, ask_after) = (r.u64()?, r.u64()?, r.u64()?);
    let refusal = match r.u8()? {
        0 => Refusal::None,
        1 => Refusal::OverLimit,
        2 => Refusal::Failed,
        3 => Refusal::Closing,
        _ => return None,
    };
    let view = match r.u8()? {
        0 => None,
        1 => Some(View {
            name: Cow::Borrowed(r.short_text()?),
            limit: r.u64()?,
            window_ms: r.u64()?,
            remaining: r.u64()?,
            reset_at_ms: r.u64()?,
        }),
        _ => return None,
    };
    let count = r.u8()?;
    let mut leases = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        leases.push(Lease {
            id: Cow::Borrowed(r.short_text()?),
            granted: r.u64()?,
            used: r.u64()?,
            valid_until: r.u64()?,
            closed: r.u8()? != 0,
        });
    }
    if !r.is_empty() {
        return None;
    }
    Some((
        digest,
        LeaseRecord {
            last_spend_ms,
            renewing_until,
            ask_after,
            refusal,
            view,
            leases,
        },
    ))
}

impl<'a> LeaseRecord<'a> {
    fn unspent(&self, now: u64) -> u64 {
        self.leases.iter().map(|l| l.unspent(now)).sum()
    }

    fn renewing(&self, now: u64) -> bool {
        self.renewing_until > now
    }

    /// The fleet's view for the headers: what the service said was left when it last
    /// granted, plus what this instance still holds.
    fn view_now(&self, now: u64) -> Option<GlobalView> {
        let mut view = self.view.as_ref()?.owned();
        view.remaining = view
            .remaining
            .saturating_add(self.unspent(now))
            .min(view.limit);
        Some(view)
    }

    /// May another key take this slot? Only once this one holds nothing that can be
    /// spent and no renewal is on its way; leases not yet settled are forgotten after
    /// `idle_ms` without a request (their hits stay held until their window ends).
    fn reusable(&self, now: u64, idle_ms: u64) -> bool {
        if self.renewing(now) || self.unspent(now) > 0 {
            return false;
        }
        self.leases.is_empty() || now.saturating_sub(self.last_spend_ms) >= idle_ms
    }

    /// A request of `cost` hits. `size` is what a lease asks for; `claim_until` is how
    /// long a renewal this request claims stands. Returns what happened and whether the
    /// record changed.
    fn spend(&mut self, cost: u64, size: u64, now: u64, claim_until: u64) -> (Spend, bool) {
        if let Some(lease) = self.leases.iter_mut().find(|l| l.fits(cost, now)) {
            lease.used += cost;
            self.last_spend_ms = now;
            // 80% of the lease spent: ask for the next one now, while this one lasts.
            let renew = !self.renewing(now)
                && self.ask_after <= now
                && self.unspent(now).saturating_mul(5) <= size;
            if renew {
                self.renewing_until = claim_until;
            }
            let view = self.view_now(now);
            return (Spend::Spent { view, renew }, true);
        }
        if self.renewing(now) {
            return (Spend::Wait { renew: false }, false);
        }
        if self.ask_after > now {
            return match self.refusal {
                Refusal::OverLimit => (Spend::OverLimit(self.view_now(now)), false),
                Refusal::Closing => (Spend::Ask, false),
                Refusal::None | Refusal::Failed => (Spend::Failed, false),
            };
        }
        self.renewing_until = claim_until;
        (Spend::Wait { renew: true }, true)
    }

    /// What a renewal of this key sends, claiming it until `claim_until`. `requested`: a
    /// request claimed it (it wants a lease); otherwise the periodic tick looks whether
    /// anything is to settle or to renew. `None`: nothing to do (or another worker's
    /// renewal is on its way).
    fn plan_renewal(
        &mut self,
        cost: u64,
        size: u64,
        period_ms: u64,
        now: u64,
        claim_until: u64,
        requested: bool,
    ) -> Option<RenewalPlan> {
        if self.renewing(now) && !requested {
            return None;
        }
        let busy = requested || now.saturating_sub(self.last_spend_ms) < period_ms;
        for lease in &mut self.leases {
            let done = now >= lease.valid_until || lease.used + cost > lease.granted;
            // An idle key gives back what it holds: other instances may need it.
            if done || !busy {
                lease.closed = true;
            }
        }
        // A grant without an id (a descriptor the service does not limit) held nothing:
        // closed, it is simply dropped.
        self.leases.retain(|l| !(l.closed && l.id.is_empty()));
        let settle: Vec<(String, u64)> = self
            .leases
            .iter()
            .filter(|l| l.closed)
            .map(|l| (l.id.to_string(), l.used))
            .collect();
        let unspent = self.unspent(now);
        let lapsing = self
            .leases
            .iter()
            .filter(|l| l.unspent(now) > 0)
            .all(|l| l.valid_until <= now.saturating_add(period_ms));
        let want = if requested
            || (busy && self.ask_after <= now && (unspent.saturating_mul(5) <= size || lapsing))
        {
            size
        } else {
            0
        };
        if settle.is_empty() && want == 0 {
            return None;
        }
        self.renewing_until = claim_until;
        Some(RenewalPlan { settle, want })
    }

    /// Applies what came back for this key's renewal (sent at `sent_at`).
    fn finish_renewal(&mut self, result: &RenewalResult, sent_at: u64, now: u64, period_ms: u64) {
        self.renewing_until = 0;
        let failed = |record: &mut Self| {
            record.refusal = Refusal::Failed;
            record.ask_after = now.saturating_add(period_ms);
        };
        let (settled, grant) = match result {
            RenewalResult::Failed => return failed(self),
            RenewalResult::Answered { settled, grant } => (settled, grant),
        };
        self.leases
            .retain(|l| !(l.closed && settled.iter().any(|id| *id == l.id)));
        let Some(grant) = grant else {
            return;
        };
        let view = grant.current_limit.as_ref().and_then(|limit| {
            view_of(
                limit,
                grant.limit_remaining,
                grant.duration_until_reset.as_ref(),
                sent_at,
            )
        });
        let valid_ms = match (&grant.valid_for, &grant.duration_until_reset) {
            (Some(valid), Some(reset)) => duration_ms(valid).min(duration_ms(reset)),
            (Some(valid), None) => duration_ms(valid),
            (None, _) => 0,
        };
        match Code::try_from(grant.code) {
            // An empty id: the service holds nothing for it (no limit applies to this
            // descriptor); it is spent like any lease and never settled.
            Ok(Code::Ok) if grant.granted > 0 && valid_ms > 0 => {
                self.refusal = Refusal::None;
                self.ask_after = 0;
                if let Some(view) = view {
                    self.view = Some(View::from_global(view));
                }
                self.leases.push(Lease {
                    id: Cow::Owned(grant.lease_id.clone()),
                    granted: grant.granted,
                    used: 0,
                    valid_until: sent_at.saturating_add(valid_ms),
                    closed: false,
                });
                while self.leases.len() > MAX_LEASES {
                    let oldest = self.leases.iter().position(|l| l.closed).unwrap_or(0);
                    self.leases.remove(oldest);
                }
            }
            Ok(Code::OverLimit) => {
                if let Some(view) = view {
                    self.view = Some(View::from_global(view));
                }
                // Budget left, yet no lease: the window ends within the service's lease
                // margin. Its remaining hits are asked for one request at a time.
                let closing = grant.limit_remaining > 0;
                if !closing {
                    if let Some(view) = self.view.as_mut() {
                        view.remaining = 0;
                    }
                }
                // Ask again at the reset, or sooner: other instances may give back budget.
                let reset = self.view.as_ref().map_or(u64::MAX, |v| v.reset_at_ms);
                self.refusal = if closing {
                    Refusal::Closing
                } else {
                    Refusal::OverLimit
                };
                self.ask_after = reset.min(now.saturating_add(period_ms));
            }
            _ => failed(self),
        }
    }
}

impl LeaseTable {
    /// `name` is the bucket table's (validated); `1 <= probe <= slots`.
    pub(crate) fn new(name: &str, slots: u32, probe: u32) -> Self {
        Self {
            slots: SlotTable::new(format!("wasmgate.rate_limit.{name}.lease."), slots, probe),
        }
    }

    pub fn slots(&self) -> u32 {
        self.slots.slots()
    }

    /// Creates the slots' creation guards that do not exist yet (slots are created when
    /// first needed); returns (keys created, slots holding a lease).
    pub fn prepare(&self, store: &dyn SharedStore) -> (u64, u64) {
        let census = self
            .slots
            .prepare(store, &[], |bytes| matches!(decode(bytes), Slot::Held(..)));
        (census.created, census.held)
    }

    /// Spends a request's hits from `digest`'s lease (see [`LeaseRecord::spend`]).
    pub(crate) fn spend(
        &self,
        store: &dyn SharedStore,
        digest: &Digest,
        terms: Terms,
        now: u64,
    ) -> SpendOutcome {
        let claim_until = terms.claim_until(now);
        for attempt in 1..=MAX_ATTEMPTS {
            let place = self
                .slots
                .locate(store, digest, attempt < MAX_ATTEMPTS, |bytes| {
                    fit(bytes, digest, |record| {
                        record.reusable(now, terms.idle_ms())
                    })
                });
            let (slot, key, cas, bytes) = match place {
                Place::Found {
                    index,
                    key,
                    cas,
                    bytes,
                } => (index, key, cas, bytes),
                Place::Claim {
                    index, key, cas, ..
                } => (index, key, cas, Vec::new()),
                Place::Busy => continue,
                Place::Full => return SpendOutcome::NoSlot,
            };
            let mut record = match decode(&bytes) {
                Slot::Held(_, record) => record,
                Slot::Vacant | Slot::Unreadable => LeaseRecord::default(),
            };
            let (spend, changed) = record.spend(terms.cost, terms.size, now, claim_until);
            if !changed {
                return SpendOutcome::At { slot, spend };
            }
            match store.set(&key, &encode(digest, &record), Some(cas)) {
                Ok(()) => return SpendOutcome::At { slot, spend },
                Err(SetError::CasMismatch) => continue,
                Err(SetError::Refused) => return SpendOutcome::Unavailable(StoreTrouble::Refused),
            }
        }
        SpendOutcome::Unavailable(StoreTrouble::Contention)
    }

    /// Reads, changes and writes back (compare-and-swap) the record of `digest` in `slot`;
    /// `change` returns `None` to leave it as it is. `None` when the slot holds another
    /// key now, or the write kept failing.
    fn update<T>(
        &self,
        store: &dyn SharedStore,
        slot: u32,
        digest: &Digest,
        mut change: impl FnMut(&mut LeaseRecord) -> Option<T>,
    ) -> Option<T> {
        let key = self.slots.slot_key(slot);
        for _ in 0..MAX_ATTEMPTS {
            let (bytes, cas) = store.get(&key)?;
            let Slot::Held(held, mut record) = decode(&bytes) else {
                return None;
            };
            if held != *digest {
                return None;
            }
            let result = change(&mut record)?;
            match store.set(&key, &encode(digest, &record), Some(cas)) {
                Ok(()) => return Some(result),
                Err(SetError::CasMismatch) => continue,
                Err(SetError::Refused) => return None,
            }
        }
        None
    }

    /// Claims and plans the renewal of the key `digest` in `slot` (see
    /// [`LeaseRecord::plan_renewal`]).
    pub(crate) fn begin_renewal(
        &self,
        store: &dyn SharedStore,
        (slot, digest): (u32, &Digest),
        terms: Terms,
        now: u64,
        requested: bool,
    ) -> Option<RenewalPlan> {
        let claim_until = terms.claim_until(now);
        self.update(store, slot, digest, |record| {
            record.plan_renewal(
                terms.cost,
                terms.size,
                terms.period_ms,
                now,
                claim_until,
                requested,
            )
        })
    }

    /// Applies a renewal's result (sent at `sent_at`) to the key `digest` in `slot`.
    pub(crate) fn finish_renewal(
        &self,
        store: &dyn SharedStore,
        (slot, digest): (u32, &Digest),
        result: &RenewalResult,
        (sent_at, now): (u64, u64),
        terms: Terms,
    ) {
        let _ = self.update(store, slot, digest, |record| {
            record.finish_renewal(result, sent_at, now, terms.period_ms);
            Some(())
        });
    }

    /// Whether a request waiting on this key should look again: a lease to spend, a
    /// refusal in force, or nobody renewing it any more.
    pub(crate) fn worth_retrying(
        &self,
        store: &dyn SharedStore,
        (slot, digest): (u32, &Digest),
        cost: u64,
        now: u64,
    ) -> bool {
        let Some((bytes, _)) = store.get(&self.slots.slot_key(slot)) else {
            return true;
        };
        match decode(&bytes) {
            Slot::Held(held, record) if held == *digest => {
                record.leases.iter().any(|l| l.fits(cost, now)) || !record.renewing(now)
            }
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests;
