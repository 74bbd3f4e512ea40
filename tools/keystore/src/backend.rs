//! Where the key store keeps keys: only their hashes and metadata, never a key.

use crate::file_backend::FileBackend;
use crate::redis_backend::RedisBackend;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};
use wasmgate_api_key_auth::{KeyHash, KeyRecord};

/// One key as stored: the hash it is found by, what the lookup returns, and
/// bookkeeping. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredKey {
    /// SHA-256 (or HMAC-SHA-256) of the key, hex.
    pub hash: String,
    pub record: KeyRecord,
    pub created_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<u64>,
}

/// A key in a listing, with when a lookup last found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedKey {
    pub key: StoredKey,
    pub last_used: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    Now,
    Already,
    NoSuchKey,
}

/// The backend could not be reached or read: lookups answer 503.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendError(pub String);

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub trait KeyBackend: Send + Sync {
    /// The record stored under `hash`; a found key's last use is recorded (best effort).
    fn lookup(&self, hash: &KeyHash, now: u64) -> Result<Option<KeyRecord>, BackendError>;
    fn insert(&self, key: &StoredKey) -> Result<(), BackendError>;
    fn revoke(&self, key_id: &str, now: u64) -> Result<Revoked, BackendError>;
    fn list(&self) -> Result<Vec<ListedKey>, BackendError>;
}

/// Opens `redis://HOST:PORT[/DB]`, `redis+unix:///PATH` or `file:PATH`.
pub fn open(location: &str) -> Result<Box<dyn KeyBackend>, String> {
    if let Some(path) = location.strip_prefix("file:") {
        if path.is_empty() {
            return Err("file: needs a path, e.g. file:keys.json".to_owned());
        }
        return Ok(Box::new(FileBackend::new(path)));
    }
    if ["redis://", "redis+unix://", "unix://"]
        .iter()
        .any(|scheme| location.starts_with(scheme))
    {
        return RedisBackend::open(location).map(|b| Box::new(b) as Box<dyn KeyBackend>);
    }
    Err(format!(
        "unknown store {location:?}: use redis://HOST:PORT, redis+unix:///PATH or file:PATH"
    ))
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The revoked form of a stored key.
pub fn revoke_stored(key: &StoredKey, now: u64) -> Option<StoredKey> {
    if key.revoked_at.is_some() {
        return None;
    }
    let mut revoked = key.clone();
    revoked.record.status = wasmgate_api_key_auth::KeyStatus::Revoked;
    revoked.revoked_at = Some(now);
    Some(revoked)
}
