//! Keys in a JSON file: the embedded default, for a demo or a single machine (one
//! server per file; replicas need Redis).
//!
//! `PATH` holds `{"keys": [StoredKey, ...]}`; the CLI rewrites it atomically (a temp
//! file renamed over it) holding an exclusive lock on `PATH.lock` (released by the OS
//! if the command dies), and a running server reads it again when it changes, so keys
//! created while it runs are found at once. Last-use times live in `PATH.last-used`,
//! written by the server only, in batches (see `last_used.rs`).

use crate::store::{BackendError, ChangeError, KeyChange, ListedKey, StoredKey};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;
use wasmgate_api_key_auth::KeyHash;

#[derive(Debug, Default, Serialize, Deserialize)]
struct KeyFile {
    keys: Vec<StoredKey>,
}

#[derive(Default)]
struct Loaded {
    /// Modification time and length of the file last read.
    stamp: Option<(SystemTime, u64)>,
    by_hash: HashMap<String, StoredKey>,
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

    pub fn describe(&self) -> String {
        format!("file {}", self.path.display())
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

    /// Reads the file again if it changed since it was last read (one `stat` when it
    /// did not).
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
        loaded.stamp = stamp.or(Some((SystemTime::UNIX_EPOCH, 0)));
        Ok(())
    }

    /// Read-modify-write of the key file under the lock.
    fn update<T>(
        &self,
        change: impl FnOnce(&mut KeyFile) -> Result<T, ChangeError>,
    ) -> Result<T, ChangeError> {
        let _lock = lock(&with_suffix(&self.path, ".lock"))?;
        let mut file = self.read_keys()?;
        let result = change(&mut file)?;
        write_atomically(&self.path, &file)?;
        Ok(result)
    }

    pub fn lookup(&self, hash: &KeyHash) -> Result<Option<StoredKey>, BackendError> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh(&mut loaded)?;
        Ok(loaded.by_hash.get(&hash.to_hex()).cloned())
    }

    pub fn ping(&self) -> Result<(), BackendError> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh(&mut loaded)
    }

    pub fn insert(&self, key: &StoredKey) -> Result<(), BackendError> {
        self.update(|file| {
            file.keys.push(key.clone());
            Ok(())
        })
        .map_err(|err| match err {
            ChangeError::Backend(err) => err,
            other => BackendError(other.to_string()),
        })
    }

    pub fn change(
        &self,
        key_id: &str,
        change: impl Fn(&StoredKey) -> Result<KeyChange, ChangeError>,
    ) -> Result<KeyChange, ChangeError> {
        self.update(|file| {
            let stored = file
                .keys
                .iter_mut()
                .find(|k| k.record.key_id == key_id)
                .ok_or(ChangeError::NoSuchKey)?;
            let decided = change(stored)?;
            *stored = decided.replace.clone();
            if let Some(new) = &decided.insert {
                file.keys.push(new.clone());
            }
            Ok(decided)
        })
    }

    pub fn list(&self) -> Result<Vec<ListedKey>, BackendError> {
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

    /// Merges `used` into the sidecar file (keeping the later time of each key).
    pub fn write_last_used(&self, used: &[(String, u64)]) -> Result<(), BackendError> {
        let mut all = self.read_last_used();
        for (key_id, seconds) in used {
            let entry = all.entry(key_id.clone()).or_insert(*seconds);
            *entry = (*entry).max(*seconds);
        }
        write_atomically(&self.sidecar(), &all)
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

/// An exclusive lock on `path` (created if missing), held until the file is dropped;
/// the OS releases it if the process dies.
fn lock(path: &Path) -> Result<fs::File, BackendError> {
    let fail = |e: std::io::Error| BackendError(format!("cannot lock {}: {e}", path.display()));
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(fail)?;
    file.lock().map_err(fail)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgate_api_key_auth::{KeyHasher, KeyRecord, KeyStatus};

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
        let record = KeyRecord {
            key_id: id.into(),
            tenant_id: "acme".into(),
            plan: Some("gold".into()),
            scopes: vec![],
            status: KeyStatus::Active,
            expires_at: None,
        };
        StoredKey::new(KeyHasher::Sha256.hash(key).to_hex(), record, 100)
    }

    fn revoke(backend: &FileBackend, key_id: &str, now: u64) -> Result<KeyChange, ChangeError> {
        backend.change(key_id, |k| match k.revoked(now) {
            Some(replace) => Ok(KeyChange {
                replace,
                insert: None,
            }),
            None => Err(ChangeError::Refused("already".into())),
        })
    }

    #[test]
    fn a_running_server_sees_keys_the_cli_adds_and_changes() {
        let path = temp_path("reload");
        let server = FileBackend::new(&path);
        let cli = FileBackend::new(&path);
        let hash = KeyHasher::Sha256.hash("sk_live_one");
        assert_eq!(server.lookup(&hash), Ok(None), "no file yet: no keys");
        cli.insert(&stored("sk_live_one", "key_1")).unwrap();
        assert_eq!(
            server.lookup(&hash).unwrap().unwrap().record.key_id,
            "key_1"
        );
        assert!(revoke(&cli, "key_1", 3).is_ok());
        assert!(matches!(
            revoke(&cli, "key_1", 4),
            Err(ChangeError::Refused(_))
        ));
        assert_eq!(revoke(&cli, "key_9", 4), Err(ChangeError::NoSuchKey));
        assert_eq!(
            server.lookup(&hash).unwrap().unwrap().record.status,
            KeyStatus::Revoked
        );
        server
            .write_last_used(&[("key_1".into(), 5), ("key_2".into(), 7)])
            .unwrap();
        server.write_last_used(&[("key_1".into(), 4)]).unwrap();
        let listed = cli.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].last_used, Some(5), "a later time is kept");
        assert_eq!(listed[0].key.revoked_at, Some(3));
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains("sk_live_one"),
            "the key itself is never stored"
        );
    }

    #[test]
    fn a_change_adds_and_replaces_in_one_write() {
        let path = temp_path("change");
        let backend = FileBackend::new(&path);
        backend.insert(&stored("sk_live_old", "key_old")).unwrap();
        let mut retiring = stored("sk_live_old", "key_old");
        retiring.revoked_at = Some(500);
        let new = stored("sk_live_new", "key_new");
        backend
            .change("key_old", |_| {
                Ok(KeyChange {
                    replace: retiring.clone(),
                    insert: Some(new.clone()),
                })
            })
            .unwrap();
        let mut listed: Vec<_> = backend.list().unwrap().into_iter().map(|l| l.key).collect();
        listed.sort_by(|a, b| a.record.key_id.cmp(&b.record.key_id));
        assert_eq!(listed, [new, retiring]);
    }

    #[test]
    fn a_corrupt_file_is_a_backend_error() {
        let path = temp_path("corrupt");
        fs::write(&path, b"{not json").unwrap();
        let backend = FileBackend::new(&path);
        assert!(backend.lookup(&KeyHasher::Sha256.hash("x")).is_err());
        assert!(backend.ping().is_err());
        assert!(backend.insert(&stored("x", "key_x")).is_err());
    }
}
