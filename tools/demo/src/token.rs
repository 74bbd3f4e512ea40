//! `wasmgate-demo token`: mints a JWT with a key of the key directory, using
//! jwt-simple (an implementation independent of the filter's `ring` verifier).
//!
//! ```text
//! wasmgate-demo token --keys DIR --sub alice --tenant acme --scope orders:read \
//!     --aud orders --lifetime 1h
//! ```
//! A negative `--lifetime` (`-5m`) mints a token that expired that long ago.

use crate::signing_keys::{self, NamedKey};
use clap::Args;
use jwt_simple::prelude::{Clock, Duration as JwtDuration, JWTClaims};
use serde_json::{Map, Value};
use std::path::PathBuf;

#[derive(Args)]
pub struct TokenArgs {
    /// Directory of `<kid>.<ALG>.pem` private keys (as for `jwks --keys`).
    #[arg(long)]
    keys: PathBuf,
    /// Which key signs; by default the first key of the directory.
    #[arg(long)]
    kid: Option<String>,
    /// `sub` claim (forwarded as X-User-ID).
    #[arg(long, default_value = "alice")]
    sub: String,
    /// `tenant_id` claim (forwarded as X-Tenant-ID).
    #[arg(long)]
    tenant: Option<String>,
    /// `scope` claim, space-separated (forwarded as X-Scopes); repeat to add scopes.
    #[arg(long)]
    scope: Vec<String>,
    /// `aud` claim; repeat for several audiences.
    #[arg(long)]
    aud: Vec<String>,
    /// `iss` claim.
    #[arg(long, default_value = "https://issuer.wasmgate.test")]
    iss: String,
    /// From now until `exp`: "1h", "15m", "30s"; negative for an expired token.
    #[arg(long, default_value = "1h", allow_hyphen_values = true)]
    lifetime: String,
    /// Any other claim, `name=JSON` (`level=3`, `groups=["a","b"]`) or `name=text`.
    #[arg(long)]
    claim: Vec<String>,
}

pub fn mint(args: TokenArgs) -> Result<(), String> {
    let key = pick_key(&args)?;
    let lifetime = parse_signed_secs(&args.lifetime)?;
    let mut custom = Map::new();
    if let Some(tenant) = &args.tenant {
        custom.insert("tenant_id".into(), Value::String(tenant.clone()));
    }
    if !args.scope.is_empty() {
        custom.insert("scope".into(), Value::String(args.scope.join(" ")));
    }
    for claim in &args.claim {
        let (name, value) = claim
            .split_once('=')
            .ok_or_else(|| format!("--claim {claim:?}: expected name=value"))?;
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.into()));
        custom.insert(name.to_owned(), value);
    }

    let now = Clock::now_since_epoch().as_secs() as i64;
    let exp = (now + lifetime).max(0) as u64;
    // An expired token was issued before it expired, not in the future.
    let iat = if lifetime < 0 {
        exp.saturating_sub(3600)
    } else {
        now as u64
    };
    let mut claims: JWTClaims<Map<String, Value>> =
        jwt_simple::prelude::Claims::with_custom_claims(custom, JwtDuration::from_secs(0));
    claims.issued_at = Some(JwtDuration::from_secs(iat));
    claims.invalid_before = Some(JwtDuration::from_secs(iat));
    claims.expires_at = Some(JwtDuration::from_secs(exp));
    claims.issuer = Some(args.iss.clone());
    claims.subject = Some(args.sub.clone());
    claims = match args.aud.len() {
        0 => claims,
        1 => claims.with_audience(&args.aud[0]),
        _ => claims.with_audiences(args.aud.iter().cloned().collect()),
    };
    println!("{}", key.sign(claims)?);
    Ok(())
}

fn pick_key(args: &TokenArgs) -> Result<NamedKey, String> {
    let keys = signing_keys::load_dir(&args.keys)?;
    let found = match &args.kid {
        Some(kid) => keys.into_iter().find(|k| &k.kid == kid),
        None => keys.into_iter().next(),
    };
    found.ok_or_else(|| {
        format!(
            "no key {}in {}",
            args.kid
                .as_deref()
                .map(|k| format!("{k:?} "))
                .unwrap_or_default(),
            args.keys.display()
        )
    })
}

/// "1h", "-5m", "30s", "2d" as signed seconds.
fn parse_signed_secs(text: &str) -> Result<i64, String> {
    let (sign, body) = match text.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, text),
    };
    let unit_at = body
        .find(|c: char| c.is_ascii_alphabetic())
        .ok_or_else(|| format!("--lifetime {text:?}: expected e.g. 1h, 15m, -5m"))?;
    let (number, unit) = body.split_at(unit_at);
    let number: i64 = number
        .parse()
        .map_err(|_| format!("--lifetime {text:?}: expected e.g. 1h, 15m, -5m"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("--lifetime {text:?}: unit must be s, m, h or d")),
    };
    Ok(sign * number * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes() {
        assert_eq!(parse_signed_secs("1h"), Ok(3600));
        assert_eq!(parse_signed_secs("-5m"), Ok(-300));
        assert_eq!(parse_signed_secs("30s"), Ok(30));
        assert!(parse_signed_secs("5").is_err());
        assert!(parse_signed_secs("5y").is_err());
    }
}
