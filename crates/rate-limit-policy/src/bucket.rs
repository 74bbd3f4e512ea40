//! Token buckets in exact integer arithmetic, with time passed in.
//!
//! A [`Limit`] is the shape of one bucket: `requests` tokens per `period`, holding at
//! most `burst`. A [`LimitSet`] is every limit that applies to one request (say 10 per
//! second and 1000 per hour) with the request's cost; its state, [`Levels`], is what the
//! bucket table stores in one shared-data value, so that a request takes from all of the
//! buckets or from none of them in a single compare-and-swap.
//!
//! Levels are counted in *units* of `1 / period_ms` of a token: refilling for `dt`
//! milliseconds adds exactly `dt × requests` units, so there is no rounding and no
//! floating point anywhere. This module knows nothing about storage or HTTP.

/// Longest refill period (a little over a year): keeps `burst × period` within `u64`.
pub const MAX_PERIOD_MS: u64 = 366 * 24 * 3_600_000;
/// Largest `requests` and `burst` a limit may have.
pub const MAX_TOKENS: u64 = 1_000_000_000;
/// The most units a bucket may hold (`burst × period_ms`), far from `u64::MAX` so that
/// refills and costs never overflow.
pub const MAX_CAPACITY: u64 = 1 << 62;
/// Most limits one rule (or plan) may combine: bounds the size of a stored bucket.
pub const MAX_LIMITS: usize = 8;

/// One token bucket's shape. Built only by the config parser, which checks the ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// Shown in `RateLimit-Policy` and in the 429 body; unique within its set.
    pub name: String,
    /// Tokens added per period (1 ..= 10^9).
    pub requests: u64,
    /// The refill period in milliseconds (1 ..= [`MAX_PERIOD_MS`]).
    pub period_ms: u64,
    /// The most tokens the bucket holds (1 ..= 10^9, and `burst × period_ms` at most
    /// [`MAX_CAPACITY`]); a new bucket starts full.
    pub burst: u64,
}

impl Limit {
    fn capacity(&self) -> u64 {
        // The config parser keeps this at most MAX_CAPACITY.
        self.burst.saturating_mul(self.period_ms)
    }

    fn refill(&self, level: u64, elapsed_ms: u64) -> u64 {
        level
            .saturating_add(elapsed_ms.saturating_mul(self.requests))
            .min(self.capacity())
    }

    /// Whole tokens in a bucket at `level`.
    pub fn tokens(&self, level: u64) -> u64 {
        level / self.period_ms
    }

    /// Milliseconds until `cost` tokens are available (0 if they are now).
    pub fn wait_ms(&self, level: u64, cost: u64) -> u64 {
        let needed = cost.saturating_mul(self.period_ms);
        needed.saturating_sub(level).div_ceil(self.requests)
    }

    /// Milliseconds until the bucket is full again (0 if it is).
    pub fn ms_to_full(&self, level: u64) -> u64 {
        self.capacity()
            .saturating_sub(level)
            .div_ceil(self.requests)
    }

    /// The period in whole seconds, if it is one.
    pub fn period_seconds(&self) -> Option<u64> {
        self.period_ms
            .is_multiple_of(1000)
            .then_some(self.period_ms / 1000)
    }
}

/// The state of every bucket of a [`LimitSet`] at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Levels {
    /// When the levels were last brought up to date (ms since the Unix epoch).
    pub updated_ms: u64,
    /// One level per limit, in units of `1 / period_ms` token.
    pub levels: Vec<u64>,
}

/// The limits that apply together to one request, and what the request costs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitSet {
    limits: Vec<Limit>,
    cost: u64,
}

/// Why a request cannot be admitted now: the longest wait over the buckets that are short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shortfall {
    /// Milliseconds until every bucket holds the cost (≥ 1).
    pub wait_ms: u64,
    /// The limit that needs the longest wait.
    pub limit: usize,
}

impl LimitSet {
    /// `limits` is non-empty and `cost` at most the smallest burst (checked by the config parser).
    pub(crate) fn new(limits: Vec<Limit>, cost: u64) -> Self {
        Self { limits, cost }
    }

    pub fn limits(&self) -> &[Limit] {
        &self.limits
    }

    pub fn cost(&self) -> u64 {
        self.cost
    }

    /// New buckets: all full.
    pub fn full(&self, now_ms: u64) -> Levels {
        Levels {
            updated_ms: now_ms,
            levels: self.limits.iter().map(Limit::capacity).collect(),
        }
    }

    /// Levels refilled up to `now_ms`. A clock that went backwards (another worker wrote a
    /// slightly later time) refills nothing rather than moving the record back in time.
    pub fn refill(&self, state: &Levels, now_ms: u64) -> Levels {
        let elapsed = now_ms.saturating_sub(state.updated_ms);
        Levels {
            updated_ms: state.updated_ms.max(now_ms),
            levels: self
                .limits
                .iter()
                .zip(&state.levels)
                .map(|(limit, level)| limit.refill(*level, elapsed))
                .collect(),
        }
    }

    /// Takes the cost from every bucket, or from none when any of them is short.
    pub fn take(&self, state: &Levels) -> Result<Levels, Shortfall> {
        let shortfall = self
            .limits
            .iter()
            .zip(&state.levels)
            .map(|(limit, level)| limit.wait_ms(*level, self.cost))
            .enumerate()
            .filter(|(_, wait)| *wait > 0)
            .max_by_key(|(_, wait)| *wait);
        if let Some((limit, wait_ms)) = shortfall {
            return Err(Shortfall { wait_ms, limit });
        }
        Ok(Levels {
            updated_ms: state.updated_ms,
            levels: self
                .limits
                .iter()
                .zip(&state.levels)
                .map(|(limit, level)| level.saturating_sub(self.cost * limit.period_ms))
                .collect(),
        })
    }

    /// When every bucket will be full again: from then on the record is the same as a new
    /// one and its slot may be handed to another client.
    pub fn full_at(&self, state: &Levels) -> u64 {
        let longest = self
            .limits
            .iter()
            .zip(&state.levels)
            .map(|(limit, level)| limit.ms_to_full(*level))
            .max()
            .unwrap_or(0);
        state.updated_ms.saturating_add(longest)
    }

    /// Whether `state` has one level per limit (a stored record of another shape is not ours).
    pub fn fits(&self, state: &Levels) -> bool {
        state.levels.len() == self.limits.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(requests: u64, period_ms: u64, burst: u64) -> Limit {
        Limit {
            name: format!("{requests}-per-{period_ms}ms"),
            requests,
            period_ms,
            burst,
        }
    }

    fn tokens(set: &LimitSet, state: &Levels) -> Vec<u64> {
        set.limits()
            .iter()
            .zip(&state.levels)
            .map(|(l, v)| l.tokens(*v))
            .collect()
    }

    const HOUR: u64 = 3_600_000;

    #[test]
    fn a_new_bucket_admits_exactly_its_burst() {
        let set = LimitSet::new(vec![limit(50, HOUR, 50)], 1);
        let mut state = set.full(0);
        for expected_left in (0..50).rev() {
            state = set.take(&state).unwrap();
            assert_eq!(tokens(&set, &state), vec![expected_left]);
        }
        let shortfall = set.take(&state).unwrap_err();
        // 50 per hour: one token every 72 s.
        assert_eq!(shortfall.wait_ms, 72_000);
    }

    #[test]
    fn refill_is_exact_and_capped_at_the_burst() {
        let set = LimitSet::new(vec![limit(50, HOUR, 50)], 1);
        let empty = Levels {
            updated_ms: 1_000,
            levels: vec![0],
        };
        let later = set.refill(&empty, 1_000 + 71_999);
        assert_eq!(tokens(&set, &later), vec![0]);
        assert_eq!(set.take(&later).unwrap_err().wait_ms, 1);
        let later = set.refill(&empty, 1_000 + 72_000);
        assert_eq!(tokens(&set, &later), vec![1]);
        let much_later = set.refill(&empty, 1_000 + 10 * HOUR);
        assert_eq!(tokens(&set, &much_later), vec![50]);
        assert_eq!(much_later, set.full(1_000 + 10 * HOUR));
    }

    #[test]
    fn fractional_rates_lose_nothing() {
        // 3 per 10 s: one token every 3333.33 ms; three tokens after exactly 10 s.
        let set = LimitSet::new(vec![limit(3, 10_000, 3)], 1);
        let empty = Levels {
            updated_ms: 0,
            levels: vec![0],
        };
        assert_eq!(tokens(&set, &set.refill(&empty, 3_333)), vec![0]);
        assert_eq!(tokens(&set, &set.refill(&empty, 3_334)), vec![1]);
        assert_eq!(tokens(&set, &set.refill(&empty, 9_999)), vec![2]);
        assert_eq!(tokens(&set, &set.refill(&empty, 10_000)), vec![3]);
        assert_eq!(set.take(&empty).unwrap_err().wait_ms, 3_334);
    }

    #[test]
    fn a_clock_that_goes_back_refills_nothing() {
        let set = LimitSet::new(vec![limit(1, 1_000, 1)], 1);
        let state = Levels {
            updated_ms: 5_000,
            levels: vec![0],
        };
        let back = set.refill(&state, 4_000);
        assert_eq!(back, state);
    }

    #[test]
    fn all_limits_apply_and_a_refusal_takes_nothing() {
        // 2 per second, 3 per hour.
        let set = LimitSet::new(vec![limit(2, 1_000, 2), limit(3, HOUR, 3)], 1);
        let s = set.take(&set.full(0)).unwrap();
        let s = set.take(&s).unwrap();
        assert_eq!(tokens(&set, &s), vec![0, 1]);
        let refused = set.take(&s).unwrap_err();
        assert_eq!(refused.limit, 0);
        assert_eq!(refused.wait_ms, 500);
        // Half a second later the short bucket has one token; the hourly one still has its
        // last token because the refusal took nothing.
        let s = set.take(&set.refill(&s, 500)).unwrap();
        assert_eq!(tokens(&set, &s), vec![0, 0]);
        let refused = set.take(&set.refill(&s, 5_000)).unwrap_err();
        assert_eq!(
            refused.limit, 1,
            "now the hourly limit is the one that blocks"
        );
        assert_eq!(refused.wait_ms, HOUR / 3 - 5_000);
    }

    #[test]
    fn cost_takes_several_tokens() {
        let set = LimitSet::new(vec![limit(10, 1_000, 10)], 4);
        let s = set.take(&set.full(0)).unwrap();
        let s = set.take(&s).unwrap();
        assert_eq!(tokens(&set, &s), vec![2]);
        // Two tokens short: 200 ms at 10 per second.
        assert_eq!(set.take(&s).unwrap_err().wait_ms, 200);
    }

    #[test]
    fn full_at_is_when_the_slowest_bucket_is_full_again() {
        let set = LimitSet::new(vec![limit(2, 1_000, 2), limit(3, HOUR, 3)], 1);
        let s = set.take(&set.full(10)).unwrap();
        assert_eq!(set.full_at(&s), 10 + HOUR / 3);
        assert_eq!(set.full_at(&set.full(10)), 10);
        let refilled = set.refill(&s, set.full_at(&s));
        assert_eq!(refilled, set.full(10 + HOUR / 3));
    }

    #[test]
    fn burst_larger_than_rate() {
        // 1 per second with a burst of 5.
        let set = LimitSet::new(vec![limit(1, 1_000, 5)], 1);
        let mut s = set.full(0);
        for _ in 0..5 {
            s = set.take(&s).unwrap();
        }
        assert_eq!(set.take(&s).unwrap_err().wait_ms, 1_000);
        assert_eq!(set.limits()[0].ms_to_full(s.levels[0]), 5_000);
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        // The largest burst the config accepts for the longest period.
        let burst = MAX_CAPACITY / MAX_PERIOD_MS;
        let set = LimitSet::new(vec![limit(MAX_TOKENS, MAX_PERIOD_MS, burst)], 1);
        let empty = Levels {
            updated_ms: 0,
            levels: vec![0],
        };
        let refilled = set.refill(&empty, u64::MAX);
        assert_eq!(tokens(&set, &refilled), vec![burst]);
        assert_eq!(set.refill(&refilled, u64::MAX), refilled);
        assert_eq!(
            set.full_at(&empty),
            (burst * MAX_PERIOD_MS).div_ceil(MAX_TOKENS)
        );
    }
}
