//! `keys create|revoke|list`: managing keys in a backend.
//!
//! A new key is `sk_live_` (or `sk_test_`) followed by 32 random bytes in base64url
//! (43 characters). It is printed once; the backend stores only its hash.

use crate::backend::{unix_now, KeyBackend, ListedKey, Revoked, StoredKey};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use clap::{Args, Subcommand};
use serde_json::json;
use wasmgate_api_key_auth::timestamp::{format_rfc3339, parse_rfc3339};
use wasmgate_api_key_auth::{KeyHasher, KeyRecord, KeyStatus};

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create a key; prints it once.
    Create(CreateArgs),
    /// Revoke a key by its id.
    Revoke {
        /// The key id printed by `create` (and shown by `list`).
        key_id: String,
    },
    /// List keys: ids, tenants, plans, status, created and last-used times.
    List {
        /// One JSON object per key instead of a table.
        #[arg(long)]
        json: bool,
    },
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
    /// Expiry as a duration from now: 30d, 12h...
    #[arg(long, conflicts_with = "expires_at")]
    expires_in: Option<String>,
    /// Expiry as an RFC 3339 timestamp: 2027-01-31T00:00:00Z.
    #[arg(long)]
    expires_at: Option<String>,
    /// Make an `sk_test_` key instead of `sk_live_`.
    #[arg(long)]
    test: bool,
    /// Environment variable holding the pepper, when the filter hashes with
    /// HMAC-SHA-256 (its `pepper_env`); the same pepper must be used on both sides.
    #[arg(long)]
    pepper_env: Option<String>,
}

pub fn run(backend: &dyn KeyBackend, command: KeysCommand) -> Result<(), String> {
    match command {
        KeysCommand::Create(args) => create(backend, args),
        KeysCommand::Revoke { key_id } => {
            match backend.revoke(&key_id, unix_now()).map_err(|e| e.0)? {
                Revoked::Now => {
                    println!("revoked {key_id}");
                    Ok(())
                }
                Revoked::Already => {
                    println!("{key_id} was already revoked");
                    Ok(())
                }
                Revoked::NoSuchKey => Err(format!("no key with id {key_id}")),
            }
        }
        KeysCommand::List { json } => {
            let mut keys = backend.list().map_err(|e| e.0)?;
            keys.sort_by(|a, b| {
                (a.key.created_at, &a.key.record.key_id)
                    .cmp(&(b.key.created_at, &b.key.record.key_id))
            });
            print_list(&keys, json, unix_now());
            Ok(())
        }
    }
}

fn create(backend: &dyn KeyBackend, args: CreateArgs) -> Result<(), String> {
    let now = unix_now();
    let expires_at = match (&args.expires_in, &args.expires_at) {
        (Some(duration), _) => Some(now + wasmgate_config::parse_duration(duration)?.as_secs()),
        (_, Some(at)) => Some(parse_rfc3339(at)?),
        _ => None,
    };
    let hasher = match &args.pepper_env {
        None => KeyHasher::Sha256,
        // The filter's own rule, so both sides accept the same peppers.
        Some(name) => KeyHasher::from_pepper_env(name, &|var| std::env::var(var).ok())
            .map_err(|err| format!("--pepper-env: {err}"))?,
    };
    let prefix = if args.test { "sk_test_" } else { "sk_live_" };
    let key = format!("{prefix}{}", URL_SAFE_NO_PAD.encode(random_bytes::<32>()?));
    let key_id = format!("key_{}", hex::encode(random_bytes::<8>()?));
    let record = KeyRecord {
        key_id: key_id.clone(),
        tenant_id: args.tenant,
        plan: args.plan,
        scopes: args.scopes,
        status: KeyStatus::Active,
        expires_at,
    };
    record.check()?;
    let stored = StoredKey {
        hash: hasher.hash(&key).to_hex(),
        record,
        created_at: now,
        revoked_at: None,
    };
    backend.insert(&stored).map_err(|e| e.0)?;
    println!("key_id   {key_id}");
    println!("tenant   {}", stored.record.tenant_id);
    if let Some(plan) = &stored.record.plan {
        println!("plan     {plan}");
    }
    if let Some(at) = expires_at {
        println!("expires  {}", format_rfc3339(at));
    }
    println!("api_key  {key}");
    eprintln!("The API key is shown only this once; the store keeps only its hash.");
    Ok(())
}

fn random_bytes<const N: usize>() -> Result<[u8; N], String> {
    let mut bytes = [0u8; N];
    getrandom::getrandom(&mut bytes).map_err(|e| format!("no randomness from the OS: {e}"))?;
    Ok(bytes)
}

fn status(key: &StoredKey, now: u64) -> &'static str {
    match key.record.status {
        KeyStatus::Revoked => "revoked",
        KeyStatus::Active if key.record.expired_at(now) => "expired",
        KeyStatus::Active => "active",
    }
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
                "status": status(key, now),
                "created_at": format_rfc3339(key.created_at),
                "last_used_at": listed.last_used.map(format_rfc3339),
                "expires_at": key.record.expires_at.map(format_rfc3339),
            });
            println!("{line}");
        }
        return;
    }
    println!(
        "{:<22} {:<16} {:<10} {:<8} {:<21} {:<21} EXPIRES",
        "KEY_ID", "TENANT", "PLAN", "STATUS", "CREATED", "LAST_USED"
    );
    for listed in keys {
        let key = &listed.key;
        println!(
            "{:<22} {:<16} {:<10} {:<8} {:<21} {:<21} {}",
            key.record.key_id,
            key.record.tenant_id,
            key.record.plan.as_deref().unwrap_or("-"),
            status(key, now),
            format_rfc3339(key.created_at),
            time(listed.last_used),
            time(key.record.expires_at),
        );
    }
}
