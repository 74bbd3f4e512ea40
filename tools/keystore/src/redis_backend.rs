//! Keys in Redis.
//!
//! Layout (all under `wasmgate:keystore:`): `hash:<hex>` holds the [`StoredKey`] as
//! JSON, `id:<key_id>` the hash of a key id, `ids` the set of key ids, and
//! `used:<key_id>` the Unix second of the last lookup that found the key.

use crate::backend::{revoke_stored, BackendError, KeyBackend, ListedKey, Revoked, StoredKey};
use redis::{Client, Connection, RedisResult};
use std::sync::Mutex;
use std::time::Duration;
use wasmgate_api_key_auth::{KeyHash, KeyRecord};

const PREFIX: &str = "wasmgate:keystore:";
/// Connecting and each command: a Redis that does not answer by then is down.
const TIMEOUT: Duration = Duration::from_millis(500);
/// Idle connections kept for the next request.
const POOL: usize = 16;

pub struct RedisBackend {
    client: Client,
    idle: Mutex<Vec<Connection>>,
}

impl RedisBackend {
    pub fn open(url: &str) -> Result<Self, String> {
        let client = Client::open(url).map_err(|e| format!("bad Redis address {url:?}: {e}"))?;
        Ok(Self {
            client,
            idle: Mutex::new(Vec::new()),
        })
    }

    fn with_connection<T>(
        &self,
        work: impl FnOnce(&mut Connection) -> RedisResult<T>,
    ) -> Result<T, BackendError> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut connection = match idle {
            Some(connection) => connection,
            None => self
                .connect()
                .map_err(|e| BackendError(format!("Redis: {e}")))?,
        };
        // A connection that failed is dropped, not pooled.
        let result = work(&mut connection).map_err(|e| BackendError(format!("Redis: {e}")))?;
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < POOL {
            idle.push(connection);
        }
        Ok(result)
    }

    fn connect(&self) -> RedisResult<Connection> {
        let connection = self.client.get_connection_with_timeout(TIMEOUT)?;
        connection.set_read_timeout(Some(TIMEOUT))?;
        connection.set_write_timeout(Some(TIMEOUT))?;
        Ok(connection)
    }
}

fn key(kind: &str, name: &str) -> String {
    format!("{PREFIX}{kind}:{name}")
}

fn parse(json: &str) -> Result<StoredKey, BackendError> {
    serde_json::from_str(json).map_err(|e| BackendError(format!("unreadable key record: {e}")))
}

fn to_json(stored: &StoredKey) -> Result<String, BackendError> {
    serde_json::to_string(stored).map_err(|e| BackendError(e.to_string()))
}

impl KeyBackend for RedisBackend {
    fn lookup(&self, hash: &KeyHash, now: u64) -> Result<Option<KeyRecord>, BackendError> {
        let json: Option<String> =
            self.with_connection(|c| redis::cmd("GET").arg(key("hash", &hash.to_hex())).query(c))?;
        let Some(json) = json else {
            return Ok(None);
        };
        let stored = parse(&json)?;
        let used = key("used", &stored.record.key_id);
        // Last use is bookkeeping: failing to record it must not fail the lookup.
        let _ = self.with_connection(|c| redis::cmd("SET").arg(used).arg(now).query::<()>(c));
        Ok(Some(stored.record))
    }

    fn insert(&self, stored: &StoredKey) -> Result<(), BackendError> {
        let json = to_json(stored)?;
        self.with_connection(|c| {
            redis::pipe()
                .atomic()
                .cmd("SET")
                .arg(key("hash", &stored.hash))
                .arg(&json)
                .ignore()
                .cmd("SET")
                .arg(key("id", &stored.record.key_id))
                .arg(&stored.hash)
                .ignore()
                .cmd("SADD")
                .arg(format!("{PREFIX}ids"))
                .arg(&stored.record.key_id)
                .ignore()
                .query::<()>(c)
        })
    }

    fn revoke(&self, key_id: &str, now: u64) -> Result<Revoked, BackendError> {
        let hash: Option<String> =
            self.with_connection(|c| redis::cmd("GET").arg(key("id", key_id)).query(c))?;
        let Some(hash) = hash else {
            return Ok(Revoked::NoSuchKey);
        };
        let json: Option<String> =
            self.with_connection(|c| redis::cmd("GET").arg(key("hash", &hash)).query(c))?;
        let Some(json) = json else {
            return Ok(Revoked::NoSuchKey);
        };
        let Some(revoked) = revoke_stored(&parse(&json)?, now) else {
            return Ok(Revoked::Already);
        };
        let json = to_json(&revoked)?;
        self.with_connection(|c| {
            redis::cmd("SET")
                .arg(key("hash", &hash))
                .arg(json)
                .query::<()>(c)
        })?;
        Ok(Revoked::Now)
    }

    fn list(&self) -> Result<Vec<ListedKey>, BackendError> {
        let ids: Vec<String> =
            self.with_connection(|c| redis::cmd("SMEMBERS").arg(format!("{PREFIX}ids")).query(c))?;
        let mut listed = Vec::with_capacity(ids.len());
        for id in ids {
            let (hash, used): (Option<String>, Option<u64>) = self.with_connection(|c| {
                redis::cmd("MGET")
                    .arg(key("id", &id))
                    .arg(key("used", &id))
                    .query(c)
            })?;
            let Some(hash) = hash else { continue };
            let json: Option<String> =
                self.with_connection(|c| redis::cmd("GET").arg(key("hash", &hash)).query(c))?;
            if let Some(json) = json {
                listed.push(ListedKey {
                    key: parse(&json)?,
                    last_used: used,
                });
            }
        }
        Ok(listed)
    }
}
