//! Keys in a JSON file: the embedded default, for a demo or a single machine.
//!
//! `PATH` holds `{"keys": [StoredKey, ...]}`; the CLI rewrites it atomically (a temp
//! file renamed over it) under a lock file `PATH.lock`, and a running server reloads it
//! when it changes, so keys created while it runs are found. Last-use times live in
//! `PATH.last-used` (written by the server only, so the two never race).

use crate::backend::{revoke_stored, BackendError, KeyBackend, ListedKey, Revoked, StoredKey};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};
use wasmgate_api_key_auth::{KeyHash, KeyRecord};

/// How long the CLI waits for another writer's lock.
const LOCK_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Default, Serialize, Deserialize)]
struct KeyFile {
    keys: Vec<StoredKey>,
}

#[derive(Default)]
struct Loaded {
    /// Modification time and length of the file last read.
    stamp: Option<(SystemTime, u64)>,
    by_hash: HashMap<String, StoredKey>,
    last_used: HashMap<String, u64>,
}

pub struct FileBackend {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

impl FileBackend {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            loaded: Mutex::new(Loaded::default()),
        }
    }

    fn sidecar(&self) -> PathBuf {
        with_suffix(&self.path, ".last-used")
    }

    fn read_keys(&self) -> Result<KeyFile, BackendError> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                BackendError(format!("{} is not a key file: {e}", self.path.display()))
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(KeyFile::default()),
            Err(e) => Err(BackendError(format!(
                "cannot read {}: {e}",
                self.path.display()
            ))),
        }
    }

    fn read_last_used(&self) -> HashMap<String, u64> {
        fs::read(self.sidecar())
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// Reads the file again if it changed since the last lookup.
    fn refresh(&self, loaded: &mut Loaded) -> Result<(), BackendError> {
        let stamp = match fs::metadata(&self.path) {
            Ok(meta) => Some((
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                meta.len(),
            )),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => {
                return Err(BackendError(format!(
                    "cannot read {}: {e}",
                    self.path.display()
                )))
            }
        };
        if loaded.stamp.is_some() && stamp == loaded.stamp {
            return Ok(());
        }
        let file = self.read_keys()?;
        loaded.by_hash = file.keys.into_iter().map(|k| (k.hash.clone(), k)).collect();
        if loaded.stamp.is_none() {
            loaded.last_used = self.read_last_used();
        }
        loaded.stamp = stamp.or(Some((SystemTime::UNIX_EPOCH, 0)));
        Ok(())
    }

    /// Read-modify-write of the key file under the lock.
    fn update<T>(&self, change: impl FnOnce(&mut KeyFile) -> T) -> Result<T, BackendError> {
        let _lock = LockFile::acquire(&with_suffix(&self.path, ".lock"))?;
        let mut file = self.read_keys()?;
        let result = change(&mut file);
        write_atomically(&self.path, &file)?;
        Ok(result)
    }
}

impl KeyBackend for FileBackend {
    fn lookup(&self, hash: &KeyHash, now: u64) -> Result<Option<KeyRecord>, BackendError> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh(&mut loaded)?;
        let Some(found) = loaded.by_hash.get(&hash.to_hex()).map(|k| k.record.clone()) else {
            return Ok(None);
        };
        loaded.last_used.insert(found.key_id.clone(), now);
        // Bookkeeping only: a failure to write it must not fail the lookup.
        let _ = write_atomically(&self.sidecar(), &loaded.last_used);
        Ok(Some(found))
    }

    fn insert(&self, key: &StoredKey) -> Result<(), BackendError> {
        self.update(|file| file.keys.push(key.clone()))
    }

    fn revoke(&self, key_id: &str, now: u64) -> Result<Revoked, BackendError> {
        self.update(|file| {
            let Some(stored) = file.keys.iter_mut().find(|k| k.record.key_id == key_id) else {
                return Revoked::NoSuchKey;
            };
            match revoke_stored(stored, now) {
                Some(revoked) => {
                    *stored = revoked;
                    Revoked::Now
                }
                None => Revoked::Already,
            }
        })
    }

    fn list(&self) -> Result<Vec<ListedKey>, BackendError> {
        let last_used = self.read_last_used();
        Ok(self
            .read_keys()?
            .keys
            .into_iter()
            .map(|key| ListedKey {
                last_used: last_used.get(&key.record.key_id).copied(),
                key,
            })
            .collect())
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn write_atomically<T: Serialize>(path: &Path, value: &T) -> Result<(), BackendError> {
    let fail = |e: std::io::Error| BackendError(format!("cannot write {}: {e}", path.display()));
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| BackendError(e.to_string()))?;
    let temp = with_suffix(path, &format!(".tmp{}", std::process::id()));
    fs::write(&temp, bytes).map_err(fail)?;
    fs::rename(&temp, path).map_err(fail)
}

/// A lock file created exclusively and removed on drop.
struct LockFile(PathBuf);

impl LockFile {
    fn acquire(path: &Path) -> Result<Self, BackendError> {
        let started = Instant::now();
        loop {
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
            {
                Ok(_) => return Ok(Self(path.to_owned())),
                Err(e) if e.kind() == ErrorKind::AlreadyExists && started.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(BackendError(format!(
                        "cannot lock {} ({e}); if no other `keys` command is running, remove it",
                        path.display()
                    )))
                }
            }
        }
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgate_api_key_auth::{KeyHasher, KeyStatus};

    fn temp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "wasmgate-keystore-test-{}-{name}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir.join("keys.json")
    }

    fn stored(key: &str, id: &str) -> StoredKey {
        StoredKey {
            hash: KeyHasher::Sha256.hash(key).to_hex(),
            record: KeyRecord {
                key_id: id.into(),
                tenant_id: "acme".into(),
                plan: Some("gold".into()),
                scopes: vec![],
                status: KeyStatus::Active,
                expires_at: None,
            },
            created_at: 100,
            revoked_at: None,
        }
    }

    #[test]
    fn a_running_server_sees_keys_the_cli_adds_and_revokes() {
        let path = temp_path("reload");
        let server = FileBackend::new(&path);
        let cli = FileBackend::new(&path);
        let hash = KeyHasher::Sha256.hash("sk_live_one");
        assert_eq!(server.lookup(&hash, 1), Ok(None), "no file yet: no keys");
        cli.insert(&stored("sk_live_one", "key_1")).unwrap();
        let found = server.lookup(&hash, 2).unwrap().unwrap();
        assert_eq!(found.key_id, "key_1");
        assert_eq!(cli.revoke("key_1", 3), Ok(Revoked::Now));
        assert_eq!(cli.revoke("key_1", 4), Ok(Revoked::Already));
        assert_eq!(cli.revoke("key_9", 4), Ok(Revoked::NoSuchKey));
        assert_eq!(
            server.lookup(&hash, 5).unwrap().unwrap().status,
            KeyStatus::Revoked
        );
        let listed = cli.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].last_used, Some(5));
        assert_eq!(listed[0].key.revoked_at, Some(3));
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains("sk_live_one"),
            "the key itself is never stored"
        );
        assert!(!with_suffix(&path, ".lock").exists());
    }

    #[test]
    fn a_corrupt_file_is_a_backend_error() {
        let path = temp_path("corrupt");
        fs::write(&path, b"{not json").unwrap();
        let backend = FileBackend::new(&path);
        assert!(backend.lookup(&KeyHasher::Sha256.hash("x"), 1).is_err());
        assert!(backend.insert(&stored("x", "key_x")).is_err());
    }
}
