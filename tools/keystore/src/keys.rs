//! `keys create|rotate|revoke|list`: managing keys in a backend.
//!
//! A new key is `sk_live_` (or `sk_test_`) followed by 32 random bytes in base64url
//! (43 characters). It is printed once; the backend stores only its hash.
//!
//! `rotate` issues a new key for the same tenant, plan and scopes, linked to the old
//! one (`rotated_from` / `rotated_to`); the old key keeps working until the overlap
//! ends, then answers `revoked` (store.rs says how the filter's cache is kept to it).

use crate::store::{unix_now, Backend, ChangeError, KeyChange, KeyState, ListedKey, StoredKey};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use clap::{Args, Subcommand};
use serde_json::json;
use std::time::Duration;
use wasmgate_api_key_auth::timestamp::{format_rfc3339, parse_rfc3339};
use wasmgate_api_key_auth::{KeyHasher, KeyRecord, KeyStatus};
use wasmgate_config::parse_duration;

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create a key; prints it once.
    Create(CreateArgs),
    /// Replace a key by a new one for the same tenant, plan and scopes; the old one
    /// keeps working until the overlap ends. Prints the new key once.
    Rotate(RotateArgs),
    /// Revoke a key by its id (a key being rotated out stops at once).
    Revoke {
        /// The key id printed by `create` (and shown by `list`).
        key_id: String,
    },
    /// List keys: ids, tenants, plans, status, created, last-used and revoked times,
    /// rotations.
    List {
        /// One JSON object per key instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct Expiry {
    /// Expiry as a duration from now: 30d, 12h...
    #[arg(long, conflicts_with = "expires_at")]
    expires_in: Option<String>,
    /// Expiry as an RFC 3339 timestamp: 2027-01-31T00:00:00Z.
    #[arg(long)]
    expires_at: Option<String>,
}

impl Expiry {
    fn at(&self, now: u64) -> Result<Option<u64>, String> {
        match (&self.expires_in, &self.expires_at) {
            (Some(duration), _) => Ok(Some(now + parse_duration(duration)?.as_secs())),
            (_, Some(at)) => parse_rfc3339(at).map(Some),
            _ => Ok(None),
        }
    }
}

#[derive(Args)]
pub struct CreateArgs {
    /// The tenant the key belongs to (forwarded as X-Tenant-ID).
    #[arg(long)]
    tenant: String,
    /// The plan (forwarded as X-Plan).
    #[arg(long)]
    plan: Option<String>,
    /// A scope; repeat for several.
    #[arg(long = "scope")]
    scopes: Vec<String>,
    #[command(flatten)]
    expiry: Expiry,
    /// Make an `sk_test_` key instead of `sk_live_`.
    #[arg(long)]
    test: bool,
    /// Environment variable holding the pepper, when the filter hashes with
    /// HMAC-SHA-256 (its `pepper_env`); the same pepper must be used on both sides.
    #[arg(long)]
    pepper_env: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct RotateArgs {
    /// The id of the key to replace.
    key_id: String,
    /// How long the old key keeps working: 24h, 30m, 0s (it stops at once).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    overlap: Duration,
    /// The new key's expiry (default: the old key's).
    #[command(flatten)]
    expiry: Expiry,
    /// Environment variable holding the pepper (default: the one the old key was
    /// created with, if any).
    #[arg(long)]
    pepper_env: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub async fn run(backend: &Backend, command: KeysCommand) -> Result<(), String> {
    match command {
        KeysCommand::Create(args) => create(backend, args).await,
        KeysCommand::Rotate(args) => rotate(backend, args).await,
        KeysCommand::Revoke { key_id } => revoke(backend, &key_id).await,
        KeysCommand::List { json } => {
            let mut keys = backend.list().await.map_err(|e| e.0)?;
            keys.sort_by(|a, b| {
                (a.key.created_at, &a.key.record.key_id)
                    .cmp(&(b.key.created_at, &b.key.record.key_id))
            });
            print_list(&keys, json, unix_now());
            Ok(())
        }
    }
}

/// A new key before it is stored: the secret (printed once) and its id.
struct NewKey {
    secret: String,
    key_id: String,
}

impl NewKey {
    fn generate(test: bool) -> Result<Self, String> {
        let prefix = if test { "sk_test_" } else { "sk_live_" };
        Ok(Self {
            secret: format!("{prefix}{}", URL_SAFE_NO_PAD.encode(random_bytes::<32>()?)),
            key_id: format!("key_{}", hex::encode(random_bytes::<8>()?)),
        })
    }
}

/// The filter's own rule, so both sides accept the same peppers.
fn hasher(pepper_env: Option<&str>) -> Result<KeyHasher, String> {
    match pepper_env {
        None => Ok(KeyHasher::Sha256),
        Some(name) => KeyHasher::from_pepper_env(name, &|var| std::env::var(var).ok())
            .map_err(|err| format!("--pepper-env: {err}")),
    }
}

async fn create(backend: &Backend, args: CreateArgs) -> Result<(), String> {
    let now = unix_now();
    let expires_at = args.expiry.at(now)?;
    let hasher = hasher(args.pepper_env.as_deref())?;
    let new = NewKey::generate(args.test)?;
    let record = KeyRecord {
        key_id: new.key_id.clone(),
        tenant_id: args.tenant,
        plan: args.plan,
        scopes: args.scopes,
        status: KeyStatus::Active,
        expires_at,
    };
    record.check()?;
    let stored = StoredKey {
        pepper_env: args.pepper_env,
        test: args.test,
        ..StoredKey::new(hasher.hash(&new.secret).to_hex(), record, now)
    };
    backend.insert(&stored).await.map_err(|e| e.0)?;
    print_new_key(&stored, &new.secret, None, args.json);
    Ok(())
}

async fn rotate(backend: &Backend, args: RotateArgs) -> Result<(), String> {
    let now = unix_now();
    let expires_at = args.expiry.at(now)?;
    let plan = RotationPlan {
        now,
        overlap: args.overlap.as_secs(),
        expires_at,
        pepper_env: args.pepper_env,
    };
    // The secret's prefix follows the old key, known only inside the change: make
    // both, keep the one that fits.
    let (live, test) = (NewKey::generate(false)?, NewKey::generate(true)?);
    let changed = backend
        .change(&args.key_id, |old| {
            let new = if old.test { &test } else { &live };
            plan.apply(old, new)
        })
        .await
        .map_err(|err| match err {
            ChangeError::NoSuchKey => format!("no key with id {}", args.key_id),
            other => other.to_string(),
        })?;
    let Some(new) = &changed.insert else {
        return Err("the rotation wrote no new key".into());
    };
    let secret = if new.test { &test.secret } else { &live.secret };
    print_new_key(new, secret, Some(&changed.replace), args.json);
    Ok(())
}

/// `keys rotate`, decided on the old key as stored (logic only; `now` passed in).
struct RotationPlan {
    now: u64,
    /// Seconds the old key keeps working.
    overlap: u64,
    /// The new key's expiry, if given (else the old key's).
    expires_at: Option<u64>,
    pepper_env: Option<String>,
}

impl RotationPlan {
    fn apply(&self, old: &StoredKey, new: &NewKey) -> Result<KeyChange, ChangeError> {
        let id = &old.record.key_id;
        let refuse = |why: String| Err(ChangeError::Refused(why));
        match old.state(self.now) {
            KeyState::Revoked => return refuse(format!("{id} is revoked: create a new key")),
            _ if old.rotated_to.is_some() => {
                return refuse(format!(
                    "{id} was already rotated to {}: rotate that key, or revoke {id} to end its overlap now",
                    old.rotated_to.as_deref().unwrap_or_default()
                ))
            }
            KeyState::Expired if self.expires_at.is_none() => {
                return refuse(format!(
                    "{id} has expired: give the new key --expires-in or --expires-at"
                ))
            }
            _ => {}
        }
        let expires_at = self.expires_at.or(old.record.expires_at);
        if expires_at.is_some_and(|at| at <= self.now) {
            return refuse("the new key's expiry is not in the future".into());
        }
        let pepper_env = self.pepper_env.clone().or_else(|| old.pepper_env.clone());
        let hasher = hasher(pepper_env.as_deref()).map_err(ChangeError::Refused)?;
        let record = KeyRecord {
            key_id: new.key_id.clone(),
            status: KeyStatus::Active,
            expires_at,
            ..old.record.clone()
        };
        record.check().map_err(ChangeError::Refused)?;
        let mut retiring = old.clone();
        retiring.rotated_to = Some(new.key_id.clone());
        retiring.revoked_at = Some(self.now + self.overlap);
        if self.overlap == 0 {
            retiring.record.status = KeyStatus::Revoked;
        }
        Ok(KeyChange {
            replace: retiring,
            insert: Some(StoredKey {
                rotated_from: Some(id.clone()),
                pepper_env,
                test: old.test,
                ..StoredKey::new(hasher.hash(&new.secret).to_hex(), record, self.now)
            }),
        })
    }
}

async fn revoke(backend: &Backend, key_id: &str) -> Result<(), String> {
    let now = unix_now();
    let result = backend
        .change(key_id, |stored| match stored.revoked(now) {
            Some(revoked) => Ok(KeyChange {
                replace: revoked,
                insert: None,
            }),
            None => Err(ChangeError::Refused("already revoked".into())),
        })
        .await;
    match result {
        Ok(_) => {
            println!("revoked {key_id}");
            Ok(())
        }
        Err(ChangeError::Refused(_)) => {
            println!("{key_id} was already revoked");
            Ok(())
        }
        Err(ChangeError::NoSuchKey) => Err(format!("no key with id {key_id}")),
        Err(ChangeError::Backend(err)) => Err(err.0),
    }
}

fn print_new_key(stored: &StoredKey, secret: &str, replaced: Option<&StoredKey>, as_json: bool) {
    let record = &stored.record;
    let old_until = replaced.and_then(|old| old.revoked_at);
    if as_json {
        let line = json!({
            "key_id": record.key_id,
            "tenant_id": record.tenant_id,
            "plan": record.plan,
            "scopes": record.scopes,
            "expires_at": record.expires_at.map(format_rfc3339),
            "rotated_from": stored.rotated_from,
            "old_key_until": old_until.map(format_rfc3339),
            "api_key": secret,
        });
        println!("{line}");
    } else {
        println!("key_id         {}", record.key_id);
        println!("tenant         {}", record.tenant_id);
        if let Some(plan) = &record.plan {
            println!("plan           {plan}");
        }
        if let Some(at) = record.expires_at {
            println!("expires        {}", format_rfc3339(at));
        }
        if let Some(from) = &stored.rotated_from {
            println!("rotated_from   {from}");
        }
        if let Some(until) = old_until {
            println!("old_key_until  {}", format_rfc3339(until));
        }
        println!("api_key        {secret}");
    }
    eprintln!("The API key is shown only this once; the store keeps only its hash.");
}

fn random_bytes<const N: usize>() -> Result<[u8; N], String> {
    let mut bytes = [0u8; N];
    getrandom::getrandom(&mut bytes).map_err(|e| format!("no randomness from the OS: {e}"))?;
    Ok(bytes)
}

fn print_list(keys: &[ListedKey], as_json: bool, now: u64) {
    let time = |t: Option<u64>| t.map_or_else(|| "-".to_owned(), format_rfc3339);
    if as_json {
        for listed in keys {
            let key = &listed.key;
            let line = json!({
                "key_id": key.record.key_id,
                "tenant_id": key.record.tenant_id,
                "plan": key.record.plan,
                "scopes": key.record.scopes,
                "status": key.state(now).name(),
                "created_at": format_rfc3339(key.created_at),
                "last_used_at": listed.last_used.map(format_rfc3339),
                "expires_at": key.record.expires_at.map(format_rfc3339),
                "revoked_at": key.revoked_at.map(format_rfc3339),
                "rotated_from": key.rotated_from,
                "rotated_to": key.rotated_to,
            });
            println!("{line}");
        }
        return;
    }
    println!(
        "{:<22} {:<16} {:<10} {:<8} {:<20} {:<20} {:<20} {:<20} ROTATION",
        "KEY_ID", "TENANT", "PLAN", "STATUS", "CREATED", "LAST_USED", "EXPIRES", "REVOKED"
    );
    for listed in keys {
        let key = &listed.key;
        let rotation = match (&key.rotated_from, &key.rotated_to) {
            (_, Some(to)) => format!("to {to}"),
            (Some(from), None) => format!("from {from}"),
            (None, None) => "-".to_owned(),
        };
        println!(
            "{:<22} {:<16} {:<10} {:<8} {:<20} {:<20} {:<20} {:<20} {rotation}",
            key.record.key_id,
            key.record.tenant_id,
            key.record.plan.as_deref().unwrap_or("-"),
            key.state(now).name(),
            format_rfc3339(key.created_at),
            time(listed.last_used),
            time(key.record.expires_at),
            time(key.revoked_at),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn old_key() -> StoredKey {
        let record = KeyRecord {
            key_id: "key_old".into(),
            tenant_id: "acme".into(),
            plan: Some("gold".into()),
            scopes: vec!["orders:read".into()],
            status: KeyStatus::Active,
            expires_at: Some(50_000),
        };
        StoredKey::new(KeyHasher::Sha256.hash("sk_live_old").to_hex(), record, 100)
    }

    fn new_key() -> NewKey {
        NewKey {
            secret: "sk_live_new".into(),
            key_id: "key_new".into(),
        }
    }

    fn plan(overlap: u64) -> RotationPlan {
        RotationPlan {
            now: 1_000,
            overlap,
            expires_at: None,
            pepper_env: None,
        }
    }

    #[test]
    fn a_rotation_keeps_the_lineage_and_retires_the_old_key_after_the_overlap() {
        let change = plan(3_600).apply(&old_key(), &new_key()).unwrap();
        let old = &change.replace;
        assert_eq!(old.rotated_to.as_deref(), Some("key_new"));
        assert_eq!(old.revoked_at, Some(4_600));
        assert_eq!(old.state(4_599), KeyState::Retiring { until: 4_600 });
        assert_eq!(old.state(4_600), KeyState::Revoked);
        let new = change.insert.unwrap();
        assert_eq!(new.hash, KeyHasher::Sha256.hash("sk_live_new").to_hex());
        assert_eq!(new.rotated_from.as_deref(), Some("key_old"));
        assert_eq!(new.created_at, 1_000);
        assert_eq!(
            new.record,
            KeyRecord {
                key_id: "key_new".into(),
                ..old_key().record
            },
            "same tenant, plan, scopes and expiry"
        );
        assert_eq!(new.state(4_600), KeyState::Active);
    }

    #[test]
    fn a_zero_overlap_revokes_the_old_key_at_once() {
        let change = plan(0).apply(&old_key(), &new_key()).unwrap();
        assert_eq!(change.replace.state(1_000), KeyState::Revoked);
        assert_eq!(change.replace.record.status, KeyStatus::Revoked);
    }

    #[test]
    fn refusals() {
        let refused = |old: &StoredKey, plan: &RotationPlan| match plan.apply(old, &new_key()) {
            Err(ChangeError::Refused(why)) => why,
            other => panic!("not refused: {other:?}"),
        };
        let revoked = old_key().revoked(500).unwrap();
        assert!(refused(&revoked, &plan(60)).contains("is revoked"));

        let rotated = plan(60).apply(&old_key(), &new_key()).unwrap().replace;
        assert!(refused(&rotated, &plan(60)).contains("already rotated to key_new"));

        let mut expired = old_key();
        expired.record.expires_at = Some(900);
        assert!(refused(&expired, &plan(60)).contains("has expired"));
        let renewed = RotationPlan {
            expires_at: Some(90_000),
            ..plan(60)
        };
        let change = renewed.apply(&expired, &new_key()).unwrap();
        assert_eq!(change.insert.unwrap().record.expires_at, Some(90_000));

        let mut peppered = old_key();
        peppered.pepper_env = Some("WASMGATE_TEST_UNSET_PEPPER_VARIABLE".into());
        assert!(refused(&peppered, &plan(60)).contains("WASMGATE_TEST_UNSET_PEPPER_VARIABLE"));
    }
}
