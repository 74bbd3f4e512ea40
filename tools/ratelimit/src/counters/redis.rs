//! Counters in Redis (≥ 7.0), shared by every replica: each step is one Lua script, which Redis
//! runs atomically.
//!
//! A counter is a string key (its value, expiring with its window) and a hash beside it
//! (`<key>:holds`, lease id → hits held) that expires at the same instant. Every call has a
//! deadline; the connection is re-established after Redis restarts (a `ConnectionManager`,
//! opened lazily so the service starts while Redis is down). `rediss://` connects over TLS.

use super::{counter_key, limited_by, unsupported, LeaseSettlement, Reading};
use async_trait::async_trait;
use limitador::counter::Counter;
use limitador::limit::Limit;
use limitador::reservation::ReservationId;
use limitador::storage::{AsyncCounterStorage, Authorization, StorageErr};
use limitador_redis::aio::{ConnectionManager, ConnectionManagerConfig};
use limitador_redis::{Client, RedisError, Script};
use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::sync::OnceCell;

/// The first part of CHECK and RESERVE: `read(wanted)` reads every counter of the request,
/// with its holds, into `out` (value, held, ttl per counter) and clears `admitted` unless
/// `wanted` more fits on all of them. Holds of a window that has ended are dropped with it.
///
/// KEYS: counter, holds (per counter). ARGV: window seconds, max (per counter), then the
/// script's own arguments from `ARGV[2 * n + 1]`.
macro_rules! read_counters {
    () => {
        r"
local n = #KEYS / 2
local out = {}
local admitted = 1
local function read(wanted)
  for i = 1, n do
    local counter, holds = KEYS[2 * i - 1], KEYS[2 * i]
    local ttl = redis.call('PTTL', counter)
    local value, held = 0, 0
    if ttl == -2 then
      redis.call('DEL', holds)
    else
      value = tonumber(redis.call('GET', counter)) or 0
      for _, amount in ipairs(redis.call('HVALS', holds)) do held = held + tonumber(amount) end
    end
    out[3 * i - 2], out[3 * i - 1], out[3 * i] = value, held, ttl
    if value + held + wanted > tonumber(ARGV[2 * i]) then admitted = 0 end
  end
end
"
    };
}

/// Reads every counter of a request and, with `apply`, admits `delta` on all of them or none.
///
/// ARGV after the counters': delta, apply. Returns value, held, ttl (ms; negative: no
/// window) per counter, as they were before, then 1 (admitted) or 0.
const CHECK: &str = concat!(
    read_counters!(),
    r"
local delta = tonumber(ARGV[2 * n + 1])
local apply = ARGV[2 * n + 2] == '1'
read(delta)
if apply and admitted == 1 and delta > 0 then
  for i = 1, n do
    local counter = KEYS[2 * i - 1]
    redis.call('INCRBY', counter, delta)
    if out[3 * i] < 0 then redis.call('EXPIRE', counter, ARGV[2 * i - 1]) end
  end
end
out[3 * n + 1] = admitted
return out
"
);

/// Holds `hold` on every counter if `check` more fits on all of them (all or nothing).
///
/// ARGV after the counters': check, hold, lease id. Returns value, held, ttl per counter
/// (ttl after a window it started), then 1 or 0.
const RESERVE: &str = concat!(
    read_counters!(),
    r"
local check = tonumber(ARGV[2 * n + 1])
local hold = tonumber(ARGV[2 * n + 2])
local lease = ARGV[2 * n + 3]
read(check)
if admitted == 1 and hold > 0 then
  for i = 1, n do
    local counter, holds = KEYS[2 * i - 1], KEYS[2 * i]
    if out[3 * i] < 0 then
      redis.call('SET', counter, out[3 * i - 2], 'EX', ARGV[2 * i - 1])
      out[3 * i] = redis.call('PTTL', counter)
    end
    redis.call('HSET', holds, lease, hold)
    redis.call('PEXPIREAT', holds, redis.call('PEXPIRETIME', counter))
  end
end
out[3 * n + 1] = admitted
return out
"
);

/// Settles a lease: if it is held, releases it and counts `min(used, held)`.
///
/// KEYS: counter, holds. ARGV: lease id, used, window seconds. Returns what was counted, or -1
/// when the lease is not held (unknown, already settled, or its window has ended).
const SETTLE: &str = r"
local held = redis.call('HGET', KEYS[2], ARGV[1])
if not held then return -1 end
redis.call('HDEL', KEYS[2], ARGV[1])
local used = math.min(tonumber(ARGV[2]), tonumber(held))
if used > 0 then
  redis.call('INCRBY', KEYS[1], used)
  if redis.call('PTTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
end
return used
";

/// Adds `delta` unconditionally (limitador's `update_counter`; the service does not use it).
const UPDATE: &str = r"
redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 1
";

static SCRIPTS: LazyLock<[Script; 4]> =
    LazyLock::new(|| [CHECK, RESERVE, SETTLE, UPDATE].map(Script::new));

/// Connection settings.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// The deadline of every call (connecting included).
    pub timeout: Duration,
}

#[derive(Clone)]
pub struct RedisCounters {
    client: Client,
    options: RedisOptions,
    connection: Arc<OnceCell<ConnectionManager>>,
}

impl RedisCounters {
    /// Checks the URL; connects on first use.
    pub fn new(url: &str, options: RedisOptions) -> Result<RedisCounters, String> {
        let client = Client::open(url).map_err(|e| format!("bad Redis URL `{url}`: {e}"))?;
        Ok(RedisCounters {
            client,
            options,
            connection: Arc::new(OnceCell::new()),
        })
    }

    /// Runs `call` on the connection, within the deadline (connecting included).
    async fn run<T, F, Fut>(&self, call: F) -> Result<T, StorageErr>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let work = async {
            let connection = self
                .connection
                .get_or_try_init(|| {
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(self.options.timeout)
                        .set_response_timeout(self.options.timeout)
                        .set_number_of_retries(1)
                        .set_max_delay(self.options.timeout.as_millis() as u64);
                    ConnectionManager::new_with_config(self.client.clone(), config)
                })
                .await?
                .clone();
            call(connection).await
        };
        match tokio::time::timeout(self.options.timeout, work).await {
            Ok(result) => result.map_err(StorageErr::from),
            Err(_) => Err(StorageErr::from(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer from Redis within {:?}", self.options.timeout),
            )))),
        }
    }

    /// Runs CHECK or RESERVE over `counters`: one reading each, and whether it admitted.
    async fn readings(
        &self,
        script: &Script,
        counters: &[Counter],
        tail: Vec<String>,
    ) -> Result<(Vec<Reading>, bool), StorageErr> {
        let mut args: Vec<String> = Vec::with_capacity(counters.len() * 2 + tail.len());
        for counter in counters {
            args.push(counter.window().as_secs().to_string());
            args.push(counter.max_value().to_string());
        }
        args.extend(tail);
        let raw: Vec<i64> = self
            .run(|mut connection| async move {
                let mut invocation = script.prepare_invoke();
                for counter in counters {
                    let key = counter_key(counter);
                    invocation.key(&key);
                    invocation.key(format!("{key}:holds"));
                }
                for arg in &args {
                    invocation.arg(arg);
                }
                invocation.invoke_async(&mut connection).await
            })
            .await?;
        parse_readings(&raw, counters.len())
    }
}

/// The flat answer of CHECK and RESERVE.
fn parse_readings(raw: &[i64], counters: usize) -> Result<(Vec<Reading>, bool), StorageErr> {
    if raw.len() != counters * 3 + 1 {
        return Err(StorageErr::from(RedisError::from((
            limitador_redis::ErrorKind::TypeError,
            "unexpected answer from a counter script",
        ))));
    }
    let readings = raw
        .chunks_exact(3)
        .map(|r| Reading {
            value: r[0].max(0) as u64,
            held: r[1].max(0) as u64,
            ttl: (r[2] >= 0).then(|| Duration::from_millis(r[2] as u64)),
        })
        .collect();
    Ok((readings, raw[counters * 3] == 1))
}

fn authorization(
    counters: &[Counter],
    readings: &[Reading],
    amount: u64,
    admitted: bool,
) -> Authorization {
    if admitted {
        return Authorization::Ok;
    }
    Authorization::Limited(limited_by(counters, readings, amount).unwrap_or(None))
}

#[async_trait]
impl AsyncCounterStorage for RedisCounters {
    async fn is_within_limits(&self, counter: &Counter, delta: u64) -> Result<bool, StorageErr> {
        let counters = [counter.clone()];
        let (_, admitted) = self
            .readings(&SCRIPTS[0], &counters, vec![delta.to_string(), "0".into()])
            .await?;
        Ok(admitted)
    }

    async fn update_counter(&self, counter: &Counter, delta: u64) -> Result<(), StorageErr> {
        let key = counter_key(counter);
        let window = counter.window().as_secs();
        self.run(|mut connection| async move {
            SCRIPTS[3]
                .key(&key)
                .arg(delta)
                .arg(window)
                .invoke_async::<i64>(&mut connection)
                .await
        })
        .await?;
        Ok(())
    }

    async fn check<'a>(
        &self,
        counters: &mut Vec<Counter>,
        delta: u64,
    ) -> Result<Authorization, StorageErr> {
        let (readings, admitted) = self
            .readings(&SCRIPTS[0], counters, vec![delta.to_string(), "0".into()])
            .await?;
        for (counter, reading) in counters.iter_mut().zip(&readings) {
            reading.annotate(counter, 0);
        }
        Ok(authorization(counters, &readings, delta, admitted))
    }

    async fn check_and_update<'a>(
        &self,
        counters: &mut Vec<Counter>,
        delta: u64,
    ) -> Result<Authorization, StorageErr> {
        let (readings, admitted) = self
            .readings(&SCRIPTS[0], counters, vec![delta.to_string(), "1".into()])
            .await?;
        // Before `delta`: limitador's limiter takes an applied delta off afterwards.
        for (counter, reading) in counters.iter_mut().zip(&readings) {
            reading.annotate(counter, 0);
        }
        Ok(authorization(counters, &readings, delta, admitted))
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
        let tail = vec![
            check_amount.to_string(),
            hold_amount.to_string(),
            reservation_id.as_str().to_owned(),
        ];
        let (readings, admitted) = self.readings(&SCRIPTS[1], counters, tail).await?;
        let held = if admitted { hold_amount } else { 0 };
        for (counter, reading) in counters.iter_mut().zip(&readings) {
            reading.annotate(counter, held);
        }
        Ok(authorization(counters, &readings, check_amount, admitted))
    }

    async fn release_reservation(
        &self,
        counters: &[Counter],
        reservation_id: &ReservationId,
    ) -> Result<bool, StorageErr> {
        let keys: Vec<String> = counters
            .iter()
            .map(|c| format!("{}:holds", counter_key(c)))
            .collect();
        let lease = reservation_id.as_str().to_owned();
        let removed: Vec<i64> = self
            .run(|mut connection| async move {
                let mut pipe = limitador_redis::pipe();
                for key in &keys {
                    pipe.hdel(key, &lease);
                }
                pipe.query_async(&mut connection).await
            })
            .await?;
        Ok(removed.into_iter().any(|n| n > 0))
    }
}

#[async_trait]
impl LeaseSettlement for RedisCounters {
    async fn settle(
        &self,
        counter: &Counter,
        lease: &str,
        used: u64,
    ) -> Result<Option<u64>, StorageErr> {
        let key = counter_key(counter);
        let window = counter.window().as_secs();
        let counted: i64 = self
            .run(|mut connection| async move {
                SCRIPTS[2]
                    .key(&key)
                    .key(format!("{key}:holds"))
                    .arg(lease)
                    .arg(used)
                    .arg(window)
                    .invoke_async(&mut connection)
                    .await
            })
            .await?;
        Ok((counted >= 0).then_some(counted as u64))
    }
}
