//! Counter storage for limitador that is exact across replicas: every decision is one atomic
//! step, and per-request checks and lease holds see each other.
//!
//! limitador's own storages do not give that: its Redis storage reads (one Lua script) and then
//! increments (a pipeline), so two replicas can both admit the last hit; its in-memory storage
//! checks under a read lock and then increments; and `check_and_update` ignores reservations.
//! The storages here implement limitador's [`AsyncCounterStorage`] with one atomic step per
//! call (a Lua script in Redis, a mutex in memory) that counts outstanding holds:
//!
//! - a check admits `delta` only if `value + held + delta <= max` for every counter, and then
//!   increments all of them, or none;
//! - a reservation (a lease) holds `amount` only under the same condition;
//! - a hold lasts until it is settled ([`LeaseSettlement::settle`]) or its window ends. It is
//!   never released early: its holder may have spent it, so an unsettled hold counts in full.
//!
//! So `value + held <= max` holds for every counter at every moment, whatever the number of
//! replicas, and admissions (increments plus settled use) never exceed the limit.
//!
//! Counters are fixed windows that start with their first hit (or hold), as in limitador. They
//! are identified by namespace, window length and variable values (not by the limit's other
//! fields), so a limit changed in a reload keeps counting where it was.

mod memory;
mod redis;

pub use self::memory::MemoryCounters;
pub use self::redis::{RedisCounters, RedisOptions};

use async_trait::async_trait;
use limitador::counter::Counter;
use limitador::storage::{AsyncCounterStorage, StorageErr};
use std::sync::Arc;
use std::time::Duration;

/// Settling leases, which limitador's storage trait cannot do atomically: its
/// `commit_reservation` adds the amount and then releases the hold, unconditionally, so a
/// repeated commit counts twice.
#[async_trait]
pub trait LeaseSettlement: Send + Sync {
    /// If `lease` is still held on `counter`: releases it and counts `min(used, held)` in one
    /// step, returning what was counted. An unknown lease (never granted, already settled, or
    /// from a window that has ended) changes nothing: `None`.
    async fn settle(
        &self,
        counter: &Counter,
        lease: &str,
        used: u64,
    ) -> Result<Option<u64>, StorageErr>;
}

/// Where counters live.
#[derive(Clone)]
pub enum Store {
    Redis(RedisCounters),
    Memory(MemoryCounters),
}

impl Store {
    /// The storage for a limitador `AsyncRateLimiter` (a handle on the same counters).
    pub fn limiter_storage(&self) -> Box<dyn AsyncCounterStorage> {
        match self {
            Store::Redis(redis) => Box::new(redis.clone()),
            Store::Memory(memory) => Box::new(memory.clone()),
        }
    }

    pub fn settlement(&self) -> Arc<dyn LeaseSettlement> {
        match self {
            Store::Redis(redis) => Arc::new(redis.clone()),
            Store::Memory(memory) => Arc::new(memory.clone()),
        }
    }

    pub fn describe(&self) -> &'static str {
        match self {
            Store::Redis(_) => "redis",
            Store::Memory(_) => "memory",
        }
    }
}

/// The Redis key of a counter: `wasmgate-ratelimit:{<namespace>}:<window seconds>:<value>`,
/// where the value is the limit's one variable (the service's: the descriptor's entries as
/// JSON, `[["tenant","acme"]]`), or all of them as a JSON list. The braces are a Redis
/// Cluster hash tag: one request's counters share a slot, as one script touches them all.
pub fn counter_key(counter: &Counter) -> String {
    let variables = counter.set_variables();
    let values = match variables.values().next() {
        Some(value) if variables.len() == 1 => value.clone(),
        _ => serde_json::to_string(&variables.values().collect::<Vec<_>>()).unwrap_or_default(),
    };
    format!(
        "wasmgate-ratelimit:{{{}}}:{}:{}",
        counter.namespace().as_ref(),
        counter.window().as_secs(),
        values
    )
}

/// What one counter looked like inside the atomic step, before it changed anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Reading {
    value: u64,
    held: u64,
    /// Time left in the window; `None` when the window has not started.
    ttl: Option<Duration>,
}

impl Reading {
    fn fits(&self, counter: &Counter, amount: u64) -> bool {
        self.value.saturating_add(self.held).saturating_add(amount) <= counter.max_value()
    }

    /// Sets `remaining` (after `extra` more is held or counted) and `expires_in` on `counter`.
    fn annotate(&self, counter: &mut Counter, extra: u64) {
        counter.set_remaining(
            counter
                .max_value()
                .saturating_sub(self.value.saturating_add(self.held).saturating_add(extra)),
        );
        counter.set_expires_in(self.ttl.unwrap_or_else(|| counter.window()));
    }
}

/// The first counter that does not fit, as limitador reports it.
fn limited_by(counters: &[Counter], readings: &[Reading], amount: u64) -> Option<Option<String>> {
    counters
        .iter()
        .zip(readings)
        .find(|(counter, reading)| !reading.fits(counter, amount))
        .map(|(counter, _)| counter.limit().name().map(str::to_owned))
}

#[cfg(test)]
mod tests;

/// The trait's listing and deleting calls, which the service never makes: counters of a limit
/// removed by a reload simply end with their window, and nothing flushes a shared Redis.
fn unsupported(what: &'static str) -> StorageErr {
    StorageErr::from(limitador_redis::RedisError::from((
        limitador_redis::ErrorKind::ClientError,
        "not supported by wasmgate-ratelimit's counter storage",
        what.to_owned(),
    )))
}

/// A failure of the counter store, with its kind for the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreFailure {
    /// `timeout`, `connection` or `other`.
    pub kind: &'static str,
    pub message: String,
}

impl StoreFailure {
    pub fn other(message: impl Into<String>) -> StoreFailure {
        StoreFailure {
            kind: "other",
            message: message.into(),
        }
    }

    fn classify(error: &(dyn std::error::Error + 'static)) -> StoreFailure {
        let mut source = Some(error);
        let mut kind = "other";
        while let Some(e) = source {
            if let Some(redis) = e.downcast_ref::<limitador_redis::RedisError>() {
                kind = if redis.is_timeout() {
                    "timeout"
                } else if redis.is_connection_refusal()
                    || redis.is_connection_dropped()
                    || redis.is_io_error()
                {
                    "connection"
                } else {
                    "other"
                };
                break;
            }
            source = e.source();
        }
        StoreFailure {
            kind,
            message: error.to_string(),
        }
    }
}

impl From<StorageErr> for StoreFailure {
    fn from(error: StorageErr) -> StoreFailure {
        StoreFailure::classify(&error)
    }
}

impl From<limitador::errors::LimitadorError> for StoreFailure {
    fn from(error: limitador::errors::LimitadorError) -> StoreFailure {
        StoreFailure::classify(&error)
    }
}

impl std::fmt::Display for StoreFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "counter store failed ({}): {}", self.kind, self.message)
    }
}
