//! Keys in Redis, through the async client's `ConnectionManager`: one multiplexed
//! connection shared by every request, reconnected after an error, every command
//! bounded by one timeout (`--redis-timeout`), so a Redis that is down or hung makes a
//! lookup fail fast (503) instead of waiting.
//!
//! Layout (all under `wasmgate:keystore:`): `hash:<hex>` holds the [`StoredKey`] as
//! JSON, `id:<key_id>` the hash of a key id, `ids` the set of key ids, and the sorted
//! set `last-used` the Unix second each key was last found (`ZADD GT`, so replicas
//! never move it back; needs Redis 6.2 or later). A lookup is one `GET`.

use crate::store::{BackendError, ChangeError, KeyChange, ListedKey, StoredKey};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, ClientTlsConfig, FromRedisValue, IntoConnectionInfo, TlsCertificates};
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;
use wasmgate_api_key_auth::KeyHash;

const PREFIX: &str = "wasmgate:keystore:";
/// Attempts of a `keys` change that another writer raced (WATCH/MULTI/EXEC).
const CHANGE_ATTEMPTS: usize = 5;

/// How to reach Redis beyond its URL: the flags shared by `serve` and `keys`.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// A file holding the password (its first line), instead of one in the URL.
    pub password_file: Option<PathBuf>,
    /// PEM CA certificates to trust for `rediss://` instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for Redis that asks for them (mutual TLS).
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Connecting, and each command, end with an error after this long.
    pub timeout: Duration,
}

pub struct RedisBackend {
    manager: ConnectionManager,
    timeout: Duration,
    address: String,
}

fn read(path: &PathBuf, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
}

impl RedisBackend {
    /// A backend that connects on first use (so the server starts, and reports not
    /// ready, while Redis is down). Must run inside the tokio runtime.
    pub fn open(url: &str, options: &RedisOptions) -> Result<Self, String> {
        // The URL may hold a password: the client's errors never repeat the URL.
        let mut info = url
            .into_connection_info()
            .map_err(|e| format!("bad Redis address: {e}"))?;
        if let Some(path) = &options.password_file {
            let text = String::from_utf8(read(path, "Redis password file")?)
                .map_err(|_| format!("{} is not UTF-8", path.display()))?;
            let password = text.lines().next().unwrap_or_default();
            if password.is_empty() {
                return Err(format!(
                    "the Redis password file {} is empty",
                    path.display()
                ));
            }
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let address = info.addr().to_string();
        let tls = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
        let custom_tls = options.ca_file.is_some() || options.client_cert.is_some();
        if custom_tls && !tls {
            return Err("--redis-ca-file and --redis-client-cert need a rediss:// store".into());
        }
        let client = if custom_tls {
            let client_tls = match (&options.client_cert, &options.client_key) {
                (Some(cert), Some(key)) => Some(ClientTlsConfig {
                    client_cert: read(cert, "Redis client certificate")?,
                    client_key: read(key, "Redis client key")?,
                }),
                (None, None) => None,
                _ => return Err("--redis-client-cert and --redis-client-key go together".into()),
            };
            let root_cert = match &options.ca_file {
                Some(path) => Some(read(path, "Redis CA file")?),
                None => None,
            };
            Client::build_with_tls(
                info,
                TlsCertificates {
                    client_tls,
                    root_cert,
                },
            )
        } else {
            Client::open(info)
        }
        .map_err(|e| format!("bad Redis settings: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.timeout))
            .set_response_timeout(Some(options.timeout))
            // One quick retry per reconnection; the next command starts another. A
            // long retry loop would hold every lookup waiting behind it.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(200));
        let manager = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("Redis: {e}"))?;
        Ok(Self {
            manager,
            timeout: options.timeout,
            address: format!("{}{address}", if tls { "rediss " } else { "redis " }),
        })
    }

    pub fn describe(&self) -> String {
        self.address.clone()
    }

    /// Runs one command or pipeline on the shared connection within the timeout
    /// (which also bounds waiting for a reconnection).
    async fn run<T, F>(&self, work: impl FnOnce(ConnectionManager) -> F) -> Result<T, BackendError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        match tokio::time::timeout(self.timeout, work(self.manager.clone())).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(BackendError(format!("Redis: {e}"))),
            Err(_) => Err(BackendError(format!(
                "Redis did not answer within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }

    async fn query<T: FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, BackendError> {
        self.run(|mut c| async move { cmd.query_async(&mut c).await })
            .await
    }

    pub async fn lookup(&self, hash: &KeyHash) -> Result<Option<StoredKey>, BackendError> {
        let json: Option<String> = self
            .query(redis::cmd("GET").arg(key("hash", &hash.to_hex())).clone())
            .await?;
        json.map(|json| parse(&json)).transpose()
    }

    pub async fn ping(&self) -> Result<(), BackendError> {
        self.query::<String>(redis::cmd("PING").clone())
            .await
            .map(drop)
    }

    pub async fn insert(&self, stored: &StoredKey) -> Result<(), BackendError> {
        let mut pipe = redis::pipe();
        add_insert(pipe.atomic(), stored)?;
        self.run(|mut c| async move { pipe.query_async::<()>(&mut c).await })
            .await
    }

    /// WATCH the key's id and record, read, change, then MULTI/EXEC; a write by
    /// someone else in between aborts the EXEC and the change is made again.
    pub async fn change(
        &self,
        key_id: &str,
        change: impl Fn(&StoredKey) -> Result<KeyChange, ChangeError>,
    ) -> Result<KeyChange, ChangeError> {
        let id_key = key("id", key_id);
        for _ in 0..CHANGE_ATTEMPTS {
            self.query::<()>(redis::cmd("WATCH").arg(&id_key).clone())
                .await?;
            let hash: Option<String> = self.query(redis::cmd("GET").arg(&id_key).clone()).await?;
            let Some(hash) = hash else {
                self.query::<()>(redis::cmd("UNWATCH").clone()).await?;
                return Err(ChangeError::NoSuchKey);
            };
            let hash_key = key("hash", &hash);
            self.query::<()>(redis::cmd("WATCH").arg(&hash_key).clone())
                .await?;
            let json: Option<String> = self.query(redis::cmd("GET").arg(&hash_key).clone()).await?;
            let decided = match json {
                None => Err(ChangeError::NoSuchKey),
                Some(json) => parse(&json)
                    .map_err(ChangeError::from)
                    .and_then(|s| change(&s)),
            };
            let decided = match decided {
                Ok(decided) => decided,
                Err(err) => {
                    self.query::<()>(redis::cmd("UNWATCH").clone()).await?;
                    return Err(err);
                }
            };
            let mut pipe = redis::pipe();
            pipe.atomic()
                .cmd("SET")
                .arg(&hash_key)
                .arg(to_json(&decided.replace)?)
                .ignore();
            if let Some(new) = &decided.insert {
                add_insert(&mut pipe, new)?;
            }
            let done: Option<()> = self
                .run(|mut c| async move { pipe.query_async(&mut c).await })
                .await?;
            if done.is_some() {
                return Ok(decided);
            }
        }
        Err(ChangeError::Refused(format!(
            "{key_id} kept changing under this command; try again"
        )))
    }

    /// Four round trips whatever the number of keys.
    pub async fn list(&self) -> Result<Vec<ListedKey>, BackendError> {
        let ids: Vec<String> = self
            .query(redis::cmd("SMEMBERS").arg(format!("{PREFIX}ids")).clone())
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let id_keys: Vec<String> = ids.iter().map(|id| key("id", id)).collect();
        let hashes: Vec<Option<String>> =
            self.query(redis::cmd("MGET").arg(&id_keys).clone()).await?;
        let used: Vec<Option<f64>> = self
            .query(
                redis::cmd("ZMSCORE")
                    .arg(format!("{PREFIX}last-used"))
                    .arg(&ids)
                    .clone(),
            )
            .await?;
        let hash_keys: Vec<String> = hashes.iter().flatten().map(|h| key("hash", h)).collect();
        let records: Vec<Option<String>> = if hash_keys.is_empty() {
            Vec::new()
        } else {
            self.query(redis::cmd("MGET").arg(&hash_keys).clone())
                .await?
        };
        let mut records = records.into_iter();
        let mut listed = Vec::with_capacity(ids.len());
        for (hash, used) in hashes.iter().zip(used) {
            if hash.is_none() {
                continue;
            }
            if let Some(Some(json)) = records.next() {
                listed.push(ListedKey {
                    key: parse(&json)?,
                    last_used: used.map(|seconds| seconds as u64),
                });
            }
        }
        Ok(listed)
    }

    pub async fn write_last_used(&self, used: &[(String, u64)]) -> Result<(), BackendError> {
        if used.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("ZADD");
        cmd.arg(format!("{PREFIX}last-used")).arg("GT");
        for (key_id, seconds) in used {
            cmd.arg(*seconds).arg(key_id);
        }
        self.query::<()>(cmd).await
    }
}

/// SET the record, its id and add the id to the set.
fn add_insert(pipe: &mut redis::Pipeline, stored: &StoredKey) -> Result<(), BackendError> {
    pipe.cmd("SET")
        .arg(key("hash", &stored.hash))
        .arg(to_json(stored)?)
        .ignore()
        .cmd("SET")
        .arg(key("id", &stored.record.key_id))
        .arg(&stored.hash)
        .ignore()
        .cmd("SADD")
        .arg(format!("{PREFIX}ids"))
        .arg(&stored.record.key_id)
        .ignore();
    Ok(())
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
