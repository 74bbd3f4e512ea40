//! Counters in this process's memory: exact for a single instance (one mutex around each
//! step), gone when it stops.

use super::{limited_by, unsupported, LeaseSettlement, Reading};
use async_trait::async_trait;
use limitador::counter::Counter;
use limitador::limit::Limit;
use limitador::reservation::ReservationId;
use limitador::storage::{AsyncCounterStorage, Authorization, StorageErr};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How often ended windows are swept out.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone, Default)]
pub struct MemoryCounters {
    windows: Arc<Mutex<Windows>>,
}

#[derive(Default)]
struct Windows {
    by_key: HashMap<String, Window>,
    next_sweep: Option<Instant>,
}

struct Window {
    value: u64,
    /// Lease id → hits held.
    holds: HashMap<String, u64>,
    ends: Instant,
}

impl Windows {
    fn sweep(&mut self, now: Instant) {
        if self.next_sweep.is_some_and(|at| now < at) {
            return;
        }
        self.by_key.retain(|_, window| window.ends > now);
        self.next_sweep = Some(now + SWEEP_EVERY);
    }

    fn live(&mut self, key: &str, now: Instant) -> Option<&mut Window> {
        self.by_key.get_mut(key).filter(|window| window.ends > now)
    }

    fn read(&mut self, counter: &Counter, now: Instant) -> Reading {
        match self.live(&super::counter_key(counter), now) {
            Some(window) => Reading {
                value: window.value,
                held: window.holds.values().sum(),
                ttl: Some(window.ends - now),
            },
            None => Reading {
                value: 0,
                held: 0,
                ttl: None,
            },
        }
    }

    /// The counter's live window, started now if it has none.
    fn window(&mut self, counter: &Counter, now: Instant) -> &mut Window {
        let window = self
            .by_key
            .entry(super::counter_key(counter))
            .or_insert_with(|| Window {
                value: 0,
                holds: HashMap::new(),
                ends: now,
            });
        if window.ends <= now {
            *window = Window {
                value: 0,
                holds: HashMap::new(),
                ends: now + counter.window(),
            };
        }
        window
    }

    fn check(
        &mut self,
        counters: &mut [Counter],
        delta: u64,
        apply: bool,
        now: Instant,
    ) -> Authorization {
        self.sweep(now);
        let readings: Vec<Reading> = counters.iter().map(|c| self.read(c, now)).collect();
        for (counter, reading) in counters.iter_mut().zip(&readings) {
            // Before `delta`: limitador's limiter takes an applied delta off afterwards.
            reading.annotate(counter, 0);
        }
        if let Some(name) = limited_by(counters, &readings, delta) {
            return Authorization::Limited(name);
        }
        if apply && delta > 0 {
            for counter in counters.iter() {
                let window = self.window(counter, now);
                window.value = window.value.saturating_add(delta);
            }
        }
        Authorization::Ok
    }

    fn reserve(
        &mut self,
        counters: &mut [Counter],
        lease: &str,
        check: u64,
        hold: u64,
        now: Instant,
    ) -> Authorization {
        self.sweep(now);
        let readings: Vec<Reading> = counters.iter().map(|c| self.read(c, now)).collect();
        if let Some(name) = limited_by(counters, &readings, check) {
            for (counter, reading) in counters.iter_mut().zip(&readings) {
                reading.annotate(counter, 0);
            }
            return Authorization::Limited(name);
        }
        for (counter, reading) in counters.iter_mut().zip(&readings) {
            if hold > 0 {
                let window = self.window(counter, now);
                window.holds.insert(lease.to_owned(), hold);
                let started = Reading {
                    ttl: Some(window.ends - now),
                    ..*reading
                };
                started.annotate(counter, hold);
            } else {
                reading.annotate(counter, 0);
            }
        }
        Authorization::Ok
    }

    fn settle(&mut self, counter: &Counter, lease: &str, used: u64, now: Instant) -> Option<u64> {
        let window = self.live(&super::counter_key(counter), now)?;
        let held = window.holds.remove(lease)?;
        let counted = used.min(held);
        window.value = window.value.saturating_add(counted);
        Some(counted)
    }
}

impl MemoryCounters {
    fn lock(&self) -> MutexGuard<'_, Windows> {
        // A panic elsewhere while locked leaves consistent data (each step is a few plain
        // assignments): keep counting.
        self.windows.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl AsyncCounterStorage for MemoryCounters {
    async fn is_within_limits(&self, counter: &Counter, delta: u64) -> Result<bool, StorageErr> {
        Ok(self
            .lock()
            .read(counter, Instant::now())
            .fits(counter, delta))
    }

    async fn update_counter(&self, counter: &Counter, delta: u64) -> Result<(), StorageErr> {
        let mut windows = self.lock();
        let window = windows.window(counter, Instant::now());
        window.value = window.value.saturating_add(delta);
        Ok(())
    }

    async fn check<'a>(
        &self,
        counters: &mut Vec<Counter>,
        delta: u64,
    ) -> Result<Authorization, StorageErr> {
        Ok(self.lock().check(counters, delta, false, Instant::now()))
    }

    async fn check_and_update<'a>(
        &self,
        counters: &mut Vec<Counter>,
        delta: u64,
    ) -> Result<Authorization, StorageErr> {
        Ok(self.lock().check(counters, delta, true, Instant::now()))
    }

    async fn get_counters(
        &self,
        _limits: &HashSet<Arc<Limit>>,
    ) -> Result<HashSet<Counter>, StorageErr> {
        Err(unsupported("listing counters"))
    }

    async fn delete_counters(&self, _limits: &HashSet<Arc<Limit>>) -> Result<(), StorageErr> {
        Err(unsupported("deleting counters"))
    }

    async fn clear(&self) -> Result<(), StorageErr> {
        Err(unsupported("clearing counters"))
    }

    async fn reserve(
        &self,
        counters: &mut Vec<Counter>,
        reservation_id: &ReservationId,
        check_amount: u64,
        hold_amount: u64,
        _ttl: Duration,
    ) -> Result<Authorization, StorageErr> {
        Ok(self.lock().reserve(
            counters,
            reservation_id.as_str(),
            check_amount,
            hold_amount,
            Instant::now(),
        ))
    }

    async fn release_reservation(
        &self,
        counters: &[Counter],
        reservation_id: &ReservationId,
    ) -> Result<bool, StorageErr> {
        let mut windows = self.lock();
        let now = Instant::now();
        let mut released = false;
        for counter in counters {
            if let Some(window) = windows.live(&super::counter_key(counter), now) {
                released |= window.holds.remove(reservation_id.as_str()).is_some();
            }
        }
        Ok(released)
    }
}

#[async_trait]
impl LeaseSettlement for MemoryCounters {
    async fn settle(
        &self,
        counter: &Counter,
        lease: &str,
        used: u64,
    ) -> Result<Option<u64>, StorageErr> {
        Ok(self.lock().settle(counter, lease, used, Instant::now()))
    }
}
