//! Where the key store keeps keys (only their hashes and metadata, never a key), and
//! what a stored key answers at a given moment.
//!
//! A key stops working at `revoked_at`: now (`keys revoke`) or at the end of a
//! rotation's overlap (`keys rotate`). Until then a rotated key answers `active` with
//! its `expires_at` brought forward to the end of the overlap, so that the filter,
//! which checks `expires_at` on every request, stops accepting it on time even from
//! its cache; from then on it answers `revoked`.

use crate::file_backend::FileBackend;
use crate::redis_backend::{RedisBackend, RedisOptions};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};
use wasmgate_api_key_auth::{KeyHash, KeyRecord, KeyStatus};

/// One key as stored: the hash it is found by, what the lookup returns, and
/// bookkeeping. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredKey {
    /// SHA-256 (or HMAC-SHA-256) of the key, hex.
    pub hash: String,
    pub record: KeyRecord,
    pub created_at: u64,
    /// When the key stops (or stopped) working: revoked, or the end of a rotation's
    /// overlap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<u64>,
    /// The key this one replaced (`keys rotate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_from: Option<String>,
    /// The key that replaced this one (`keys rotate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_to: Option<String>,
    /// The environment variable that held the pepper the key was hashed with (its
    /// name, never its value); absent for plain SHA-256. A rotation hashes the new key
    /// the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pepper_env: Option<String>,
    /// An `sk_test_` key (its rotation makes another).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub test: bool,
}

/// What a stored key is at one moment, as `keys list` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Active,
    /// Rotated: works until the overlap ends.
    Retiring {
        until: u64,
    },
    Revoked,
    Expired,
}

impl KeyState {
    pub fn name(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Retiring { .. } => "retiring",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
        }
    }
}

impl StoredKey {
    /// A new key as `keys create` stores it: active, no rotation, plain SHA-256, live.
    pub fn new(hash: String, record: KeyRecord, created_at: u64) -> Self {
        Self {
            hash,
            record,
            created_at,
            revoked_at: None,
            rotated_from: None,
            rotated_to: None,
            pepper_env: None,
            test: false,
        }
    }

    fn revoked_by(&self, now: u64) -> bool {
        self.record.status == KeyStatus::Revoked || self.revoked_at.is_some_and(|at| at <= now)
    }

    pub fn state(&self, now: u64) -> KeyState {
        if self.revoked_by(now) {
            return KeyState::Revoked;
        }
        if self.record.expired_at(now) {
            return KeyState::Expired;
        }
        match self.revoked_at {
            Some(until) => KeyState::Retiring { until },
            None => KeyState::Active,
        }
    }

    /// The record a lookup answers at `now` (the lookup contract's body).
    pub fn answer_at(&self, now: u64) -> KeyRecord {
        let mut record = self.record.clone();
        if self.revoked_by(now) {
            record.status = KeyStatus::Revoked;
        } else if let Some(until) = self.revoked_at {
            record.expires_at = Some(record.expires_at.map_or(until, |at| at.min(until)));
        }
        record
    }

    /// The revoked form of this key, or `None` if it already answers `revoked`.
    pub fn revoked(&self, now: u64) -> Option<StoredKey> {
        if self.revoked_by(now) {
            return None;
        }
        let mut revoked = self.clone();
        revoked.record.status = KeyStatus::Revoked;
        revoked.revoked_at = Some(now);
        Some(revoked)
    }
}

/// A key in a listing, with when a lookup last found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedKey {
    pub key: StoredKey,
    pub last_used: Option<u64>,
}

/// What to write for one change of a key (`keys revoke`, `keys rotate`): the key's new
/// form, and a key to add with it, in one atomic write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyChange {
    pub replace: StoredKey,
    pub insert: Option<StoredKey>,
}

/// Why a change of a key was not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeError {
    NoSuchKey,
    /// The change does not apply to the key as it is (already revoked, ...).
    Refused(String),
    Backend(BackendError),
}

impl fmt::Display for ChangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSuchKey => f.write_str("no such key"),
            Self::Refused(why) => f.write_str(why),
            Self::Backend(err) => err.fmt(f),
        }
    }
}

impl From<BackendError> for ChangeError {
    fn from(err: BackendError) -> Self {
        Self::Backend(err)
    }
}

/// The backend could not be reached or read: lookups answer 503.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendError(pub String);

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The two backends: Redis (what replicas share) and a JSON file (one machine, demos).
pub enum Backend {
    Redis(RedisBackend),
    File(FileBackend),
}

impl Backend {
    /// Opens `redis://…`, `rediss://…`, `redis+unix:///PATH`, `unix:///PATH` or
    /// `file:PATH`. Nothing is connected yet: Redis connects on first use.
    pub fn open(location: &str, redis: &RedisOptions) -> Result<Self, String> {
        if let Some(path) = location.strip_prefix("file:") {
            if path.is_empty() {
                return Err("file: needs a path, e.g. file:keys.json".to_owned());
            }
            return Ok(Self::File(FileBackend::new(path)));
        }
        if ["redis://", "rediss://", "redis+unix://", "unix://"]
            .iter()
            .any(|scheme| location.starts_with(scheme))
        {
            return RedisBackend::open(location, redis).map(Self::Redis);
        }
        Err(
            "unknown store: use redis://HOST:PORT, rediss://HOST:PORT, redis+unix:///PATH \
             or file:PATH"
                .to_owned(),
        )
    }

    /// Where keys live, for logs (a Redis address without its credentials).
    pub fn describe(&self) -> String {
        match self {
            Self::Redis(redis) => redis.describe(),
            Self::File(file) => file.describe(),
        }
    }

    /// The key stored under `hash`.
    pub async fn lookup(&self, hash: &KeyHash) -> Result<Option<StoredKey>, BackendError> {
        match self {
            Self::Redis(redis) => redis.lookup(hash).await,
            Self::File(file) => file.lookup(hash),
        }
    }

    /// One cheap round trip: can lookups be answered?
    pub async fn ping(&self) -> Result<(), BackendError> {
        match self {
            Self::Redis(redis) => redis.ping().await,
            Self::File(file) => file.ping(),
        }
    }

    pub async fn insert(&self, key: &StoredKey) -> Result<(), BackendError> {
        match self {
            Self::Redis(redis) => redis.insert(key).await,
            Self::File(file) => file.insert(key),
        }
    }

    /// Changes the key `key_id` as `change` says, atomically with respect to other
    /// changes: `change` sees the key as stored and returns what to write.
    pub async fn change(
        &self,
        key_id: &str,
        change: impl Fn(&StoredKey) -> Result<KeyChange, ChangeError>,
    ) -> Result<KeyChange, ChangeError> {
        match self {
            Self::Redis(redis) => redis.change(key_id, change).await,
            Self::File(file) => file.change(key_id, change),
        }
    }

    pub async fn list(&self) -> Result<Vec<ListedKey>, BackendError> {
        match self {
            Self::Redis(redis) => redis.list().await,
            Self::File(file) => file.list(),
        }
    }

    /// Records when keys were last found: `(key_id, unix seconds)`; a later time
    /// already recorded (by another replica) is kept.
    pub async fn write_last_used(&self, used: &[(String, u64)]) -> Result<(), BackendError> {
        match self {
            Self::Redis(redis) => redis.write_last_used(used).await,
            Self::File(file) => file.write_last_used(used),
        }
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(expires_at: Option<u64>) -> StoredKey {
        let record = KeyRecord {
            key_id: "key_1".into(),
            tenant_id: "acme".into(),
            plan: Some("gold".into()),
            scopes: vec![],
            status: KeyStatus::Active,
            expires_at,
        };
        StoredKey::new("ab".repeat(32), record, 100)
    }

    #[test]
    fn an_active_key_answers_as_stored() {
        let stored = key(Some(5_000));
        assert_eq!(stored.answer_at(1_000), stored.record);
        assert_eq!(stored.state(1_000), KeyState::Active);
        assert_eq!(stored.state(5_000), KeyState::Expired);
    }

    #[test]
    fn a_retiring_key_expires_at_the_end_of_its_overlap_then_answers_revoked() {
        let mut stored = key(None);
        stored.revoked_at = Some(2_000);
        let during = stored.answer_at(1_999);
        assert_eq!(during.status, KeyStatus::Active);
        assert_eq!(during.expires_at, Some(2_000));
        assert_eq!(stored.state(1_999), KeyState::Retiring { until: 2_000 });
        let after = stored.answer_at(2_000);
        assert_eq!(after.status, KeyStatus::Revoked);
        assert_eq!(
            after.expires_at, None,
            "the stored expiry is kept as it was"
        );
        assert_eq!(stored.state(2_000), KeyState::Revoked);

        // An earlier expiry of its own still wins.
        let mut short = key(Some(1_500));
        short.revoked_at = Some(2_000);
        assert_eq!(short.answer_at(1_000).expires_at, Some(1_500));
        assert_eq!(short.state(1_600), KeyState::Expired);
    }

    #[test]
    fn revoking() {
        let stored = key(None);
        let revoked = stored.revoked(1_000).unwrap();
        assert_eq!(revoked.record.status, KeyStatus::Revoked);
        assert_eq!(revoked.revoked_at, Some(1_000));
        assert_eq!(revoked.revoked(1_001), None, "already revoked");

        // A retiring key can be revoked at once; after its overlap it already is.
        let mut retiring = key(None);
        retiring.revoked_at = Some(2_000);
        assert_eq!(retiring.revoked(1_000).unwrap().revoked_at, Some(1_000));
        assert_eq!(retiring.revoked(2_000), None);
    }

    #[test]
    fn stored_form_omits_absent_bookkeeping() {
        let json = serde_json::to_value(key(None)).unwrap();
        let fields: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        assert_eq!(fields, ["created_at", "hash", "record"]);
        // Keys written before rotation existed read back unchanged.
        let old = r#"{"hash":"x","record":{"key_id":"k","tenant_id":"t","status":"revoked"},
                      "created_at":1,"revoked_at":2}"#;
        let read: StoredKey = serde_json::from_str(old).unwrap();
        assert_eq!(read.state(3), KeyState::Revoked);
        assert!(!read.test && read.pepper_env.is_none());
    }
}
