//! What a filter needs in order to also run as a stage of the combined module: how a
//! request it paused goes on once it has decided ([`Continuation`]), and its share of
//! the root context's timer ([`TickDemand`]).
//!
//! A filter on its own resumes the request in Envoy and sets the root's tick period
//! itself. In the combined module several stages share one filter, so a request one
//! stage paused must first go through the later stages, and the one root ticks at the
//! shortest period any stage wants. Both are decided where the root is created; the
//! filters' glue calls the same two things either way.

use crate::callout::resume_request;
use proxy_wasm::hostcalls;
use std::cell::{Cell, RefCell};
use std::fmt;
use std::rc::Rc;
use std::time::Duration;

/// Lets a request this filter paused go on, once the filter has decided to let it
/// through (after applying its edits, with the request as the effective context).
#[derive(Clone)]
pub struct Continuation(Rc<dyn Fn(u32)>);

impl Continuation {
    /// A filter on its own: resume the request in Envoy.
    pub fn resume_in_envoy() -> Self {
        Self(Rc::new(|context_id| {
            // A request that went away meanwhile cannot be resumed; nothing to do.
            if let Err(status) = resume_request(context_id) {
                log::debug!("cannot resume request {context_id}: {status:?}");
            }
        }))
    }

    /// Anything else (the combined module's later stages).
    pub fn new(next: impl Fn(u32) + 'static) -> Self {
        Self(Rc::new(next))
    }

    pub fn resume(&self, context_id: u32) {
        (self.0)(context_id)
    }
}

impl fmt::Debug for Continuation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Continuation")
    }
}

/// The tick periods the parts of one root context want; the root ticks at the
/// shortest (none: no tick).
#[derive(Debug, Default)]
pub struct TickPeriods {
    wanted: RefCell<Vec<Option<Duration>>>,
    /// When each part last had its tick (milliseconds), for [`TickDemand::due`].
    ticked_at: RefCell<Vec<u64>>,
    current: Cell<Option<Duration>>,
}

impl TickPeriods {
    /// A new share of this root's tick, wanting none yet.
    pub fn demand(self: &Rc<Self>) -> TickDemand {
        let mut wanted = self.wanted.borrow_mut();
        wanted.push(None);
        self.ticked_at.borrow_mut().push(0);
        TickDemand {
            periods: Rc::clone(self),
            index: wanted.len() - 1,
        }
    }

    fn shortest(&self) -> Option<Duration> {
        self.wanted.borrow().iter().flatten().min().copied()
    }
}

/// One part's share of its root context's tick.
#[derive(Debug, Clone)]
pub struct TickDemand {
    periods: Rc<TickPeriods>,
    index: usize,
}

impl TickDemand {
    /// A root context with one part: a filter on its own.
    pub fn alone() -> Self {
        Rc::new(TickPeriods::default()).demand()
    }

    /// Asks for ticks every `period` (`None`: this part needs none). Envoy's period
    /// changes only when the shortest wanted one does. Works from a request context
    /// too: Envoy applies it to the request's root.
    pub fn want(&self, period: Option<Duration>) {
        if let Some(slot) = self.periods.wanted.borrow_mut().get_mut(self.index) {
            *slot = period;
        }
        let shortest = self.periods.shortest();
        if shortest != self.periods.current.get() {
            if let Err(status) = hostcalls::set_tick_period(shortest.unwrap_or(Duration::ZERO)) {
                log::warn!("cannot set the tick period: {status:?}");
            }
            self.periods.current.set(shortest);
        }
    }

    /// Whether this part's tick is due at `now_ms`, in a root whose tick several parts
    /// share (it ticks at the shortest period wanted, so a part that wants a longer one
    /// skips ticks). Due when the part wants ticks and its period has passed since its
    /// last one, less a tenth (at least 1 ms: timers are not exact); a due tick counts
    /// as had.
    pub fn due(&self, now_ms: u64) -> bool {
        let wanted = self
            .periods
            .wanted
            .borrow()
            .get(self.index)
            .copied()
            .flatten();
        let Some(period) = wanted else {
            return false;
        };
        let period_ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
        let slack_ms = (period_ms / 10).max(1);
        let mut ticked_at = self.periods.ticked_at.borrow_mut();
        let Some(last) = ticked_at.get_mut(self.index) else {
            return false;
        };
        if now_ms.saturating_sub(*last) < period_ms.saturating_sub(slack_ms) {
            return false;
        }
        *last = now_ms;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A demand wanting `period` (set directly: `want` also tells the host).
    fn wanting(periods: &Rc<TickPeriods>, period: Option<Duration>) -> TickDemand {
        let demand = periods.demand();
        periods.wanted.borrow_mut()[demand.index] = period;
        demand
    }

    #[test]
    fn a_part_ticks_at_its_own_period_within_a_tenth() {
        let periods = Rc::new(TickPeriods::default());
        let slow = wanting(&periods, Some(Duration::from_millis(100)));
        assert!(slow.due(1_000), "the first tick is due");
        assert!(!slow.due(1_050));
        assert!(!slow.due(1_089));
        assert!(slow.due(1_090), "a tick a little early still counts");
        assert!(!slow.due(1_100), "counted from the tick it had");
        assert!(slow.due(1_190));
    }

    #[test]
    fn a_short_period_is_due_on_every_tick_and_none_never() {
        let periods = Rc::new(TickPeriods::default());
        let fast = wanting(&periods, Some(Duration::from_millis(1)));
        let idle = wanting(&periods, None);
        for now in [1_000, 1_000, 1_001, 1_003] {
            assert!(fast.due(now), "{now}");
            assert!(!idle.due(now), "{now}");
        }
    }
}
