//! The decision for one request, as a value.
//!
//! [`Authenticator::start`] picks the route's requirement, finds the token and checks
//! it; the answer is an [`Outcome`]: forward the request with these header edits,
//! refuse it with this error, or wait for keys (an [`Attempt`] to check again when
//! the keys arrive, or to give up on at its deadline: see [`WaitList`](crate::WaitList)).
//! The glue turns it into host calls; nothing here touches the host.

use crate::claims::{self, header_value};
use crate::config::{JwtConfig, Provider};
use crate::error::AuthError;
use crate::extract::{RequestHeaders, TokenLocation};
use crate::host_verifier::HostVerifier;
use crate::jwks::Jwk;
use crate::jwks_cache::{KeyLookup, Keyring, UnknownKid};
use crate::rules::Requirement;
use crate::token;
use crate::token_cache::{TokenCache, UNBOUNDED_TOKEN_TTL};
use crate::verifier;
use std::rc::Rc;
use wasmgate_shared_store::SharedStore;

/// What a verified token says about its holder, as forwarded upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub provider: usize,
    /// Header (lower-case) and value, from `claim_to_headers`.
    pub headers: Vec<(String, String)>,
    pub scopes: Vec<String>,
    /// The key that verified the token, to drop cached tokens whose key left the JWKS.
    pub kid: Option<String>,
    pub key_seq: u64,
}

/// How the token cache took part in a decision (for metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    Hit,
    Miss,
    /// No token was checked, or the cache is off.
    NotUsed,
}

/// Forward the request with the identity's headers (every other output header
/// removed), and without `remove_headers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub remove_headers: Vec<String>,
    /// `None` for a public route or a missing token where `allow_missing` holds.
    pub identity: Option<Rc<Identity>>,
    pub cache: CacheUse,
}

/// One change to the request's headers before it goes upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderEdit<'a> {
    Set(&'a str, &'a str),
    Remove(&'a str),
}

impl Grant {
    /// Header (lower-case) and value for each output header a claim gave a value.
    pub fn headers(&self) -> &[(String, String)] {
        self.identity
            .as_ref()
            .map_or(&[], |identity| &identity.headers)
    }

    /// Every edit the request needs before it may go upstream: each of
    /// `output_headers` (the configuration's) set to its verified claim or removed
    /// (public routes included: a client's copy never passes), then the token header
    /// removed unless forwarded. The glue must apply all of them or refuse the request.
    pub fn header_edits<'a>(
        &'a self,
        output_headers: &'a [String],
    ) -> impl Iterator<Item = HeaderEdit<'a>> + 'a {
        let identity = output_headers.iter().map(|name| {
            match self.headers().iter().find(|(header, _)| header == name) {
                Some((_, value)) => HeaderEdit::Set(name, value),
                None => HeaderEdit::Remove(name),
            }
        });
        let token = self
            .remove_headers
            .iter()
            .map(|name| HeaderEdit::Remove(name));
        identity.chain(token)
    }

    fn anonymous() -> Self {
        Grant {
            remove_headers: Vec::new(),
            identity: None,
            cache: CacheUse::NotUsed,
        }
    }
}

#[derive(Debug)]
pub enum Outcome {
    Allow(Grant),
    Deny(AuthError),
    /// Keys are not there yet: pause the request, call [`Authenticator::check`]
    /// again when keys may have arrived, and [`Authenticator::give_up`] at
    /// [`Attempt::deadline`].
    Wait(Attempt),
}

/// A token being checked for a route, kept while the request waits for keys.
#[derive(Debug, Clone)]
pub struct Attempt {
    provider: usize,
    token: String,
    location: TokenLocation,
    required_scopes: Vec<String>,
    /// The key version seen when a refetch was asked for an unknown `kid`: once the
    /// version moves, a still-unknown `kid` is refused instead of waiting again.
    refetch_from: Option<u64>,
    deadline: Option<u64>,
}

impl Attempt {
    /// When to stop waiting (milliseconds since the epoch); set on the first wait.
    pub fn deadline(&self) -> u64 {
        self.deadline.unwrap_or(0)
    }

    /// The provider whose keys the attempt waits for (an index into the
    /// configuration's providers).
    pub fn provider(&self) -> usize {
        self.provider
    }
}

/// The request line and headers.
pub struct RequestInfo<'a> {
    pub method: &'a str,
    /// `:path`, query included.
    pub path: &'a str,
    pub headers: &'a dyn RequestHeaders,
}

/// Everything a check may consult or update: the VM's keys, the shared store behind
/// them, the token cache, the host's signature check, and the time.
pub struct Context<'a> {
    pub keyring: &'a mut Keyring,
    pub store: &'a dyn SharedStore,
    pub cache: &'a mut TokenCache,
    /// The host's signature check ([`NoHostVerifier`](crate::host_verifier::NoHostVerifier)
    /// where there is none).
    pub host: &'a dyn HostVerifier,
    pub now: u64,
}

/// Built once per configuration, shared by every request of the VM.
#[derive(Debug)]
pub struct Authenticator {
    config: JwtConfig,
}

impl Authenticator {
    pub fn new(config: JwtConfig) -> Self {
        Self { config }
    }

    pub fn config(&self) -> &JwtConfig {
        &self.config
    }

    pub fn start(&self, request: &RequestInfo<'_>, cx: &mut Context<'_>) -> Outcome {
        let requirement = self
            .config
            .rules
            .select(request.method, request.path, request.headers);
        let (providers, allow_missing, required_scopes) = match requirement {
            Requirement::Public => return Outcome::Allow(Grant::anonymous()),
            Requirement::Token {
                providers,
                allow_missing,
                required_scopes,
            } => (providers, *allow_missing, required_scopes),
        };
        let Some((provider, token, location)) = self.find_token(providers, request) else {
            return if allow_missing {
                Outcome::Allow(Grant::anonymous())
            } else {
                Outcome::Deny(AuthError::MissingToken)
            };
        };
        if token.len() > self.config.max_token_bytes {
            return Outcome::Deny(AuthError::TooLarge);
        }
        self.check(
            Attempt {
                provider,
                token,
                location,
                required_scopes: required_scopes.clone(),
                refetch_from: None,
                deadline: None,
            },
            cx,
        )
    }

    /// The first token found, looking at each provider's locations in the order the
    /// requirement lists the providers. Providers that read the same token (they
    /// share `Authorization: Bearer`) are told apart by the token's `iss`.
    fn find_token(
        &self,
        providers: &[usize],
        request: &RequestInfo<'_>,
    ) -> Option<(usize, String, TokenLocation)> {
        let mut found: Option<(String, TokenLocation)> = None;
        let mut owners = Vec::new();
        for &index in providers {
            let provider = self.config.providers.get(index)?;
            for location in &provider.locations {
                if let Some(token) = location.find(request.headers, request.path) {
                    match &found {
                        None => {
                            found = Some((token, location.clone()));
                            owners.push(index);
                        }
                        Some((first, _)) if *first == token => owners.push(index),
                        Some(_) => {}
                    }
                    break;
                }
            }
        }
        let (token, location) = found?;
        let provider = if owners.len() > 1 && token.len() <= self.config.max_token_bytes {
            let issuer = token::unverified_issuer(&token);
            owners
                .iter()
                .copied()
                .find(|&i| Some(&self.config.providers[i].claims.issuer) == issuer.as_ref())
                .unwrap_or(owners[0])
        } else {
            owners[0]
        };
        Some((provider, token, location))
    }

    /// Checks (or re-checks, after a wait) an attempt.
    pub fn check(&self, mut attempt: Attempt, cx: &mut Context<'_>) -> Outcome {
        let Some(provider) = self.config.providers.get(attempt.provider) else {
            return Outcome::Deny(AuthError::KeysUnavailable);
        };
        let cache_key = cx
            .cache
            .enabled()
            .then(|| cx.cache.key(&provider.name, &attempt.token));
        if let Some(key) = &cache_key {
            if let Some(identity) = cx.cache.get(key, cx.now) {
                if self.key_still_published(&identity, cx) {
                    return self.grant(&attempt, provider, identity, CacheUse::Hit);
                }
                cx.cache.remove(key);
            }
        }

        let parsed = match token::parse(&attempt.token) {
            Ok(parsed) => parsed,
            Err(err) => return Outcome::Deny(err),
        };
        let alg = match parsed.header.alg {
            Ok(alg) if provider.algorithms.contains(&alg) => alg,
            _ => return Outcome::Deny(AuthError::AlgorithmNotAllowed),
        };
        if parsed.header.has_crit {
            return Outcome::Deny(AuthError::UnsupportedCritical);
        }
        // RFC 8725 §3.11: an ID token or a logout token of the same issuer and key is
        // not an access token, whatever its claims say.
        if !provider.required_typ.is_empty()
            && !parsed
                .header
                .typ
                .as_ref()
                .is_some_and(|typ| provider.required_typ.contains(typ))
        {
            return Outcome::Deny(AuthError::WrongType);
        }

        let (keys, seq) = match cx.keyring.lookup(attempt.provider, cx.store, cx.now) {
            KeyLookup::Ready { keys, seq } => (keys, seq),
            KeyLookup::Pending => return self.wait(attempt, cx),
            KeyLookup::Unavailable => return Outcome::Deny(AuthError::KeysUnavailable),
        };
        if let Some(kid) = &parsed.header.kid {
            if !keys.has_kid(kid) {
                // Once a refetch made for this request has landed, a still-unknown
                // kid is refused rather than waited for again.
                if attempt.refetch_from.is_some_and(|from| from != seq) {
                    return Outcome::Deny(AuthError::UnknownKey);
                }
                return match cx
                    .keyring
                    .unknown_kid(attempt.provider, cx.store, cx.now, seq)
                {
                    // Strictly newer keys each time: this recursion is short.
                    UnknownKid::NewerKeys => self.check(attempt, cx),
                    UnknownKid::Wait => {
                        attempt.refetch_from.get_or_insert(seq);
                        self.wait(attempt, cx)
                    }
                    UnknownKid::Refused => Outcome::Deny(AuthError::UnknownKey),
                };
            }
        }
        // The keys with the token's `kid` (every key when it names none) that take `alg`.
        let kid = parsed.header.kid.as_deref();
        let fitting: Vec<&Jwk> = keys
            .keys()
            .iter()
            .filter(|jwk| kid.is_none_or(|kid| jwk.kid.as_deref() == Some(kid)))
            .filter(|jwk| verifier::jwk_accepts(jwk, alg))
            .collect();
        if fitting.is_empty() {
            return Outcome::Deny(AuthError::KeyMismatch);
        }
        // A forged token without `kid` would cost one signature check per fitting key.
        if kid.is_none() && fitting.len() > MAX_KEYS_WITHOUT_KID {
            return Outcome::Deny(AuthError::KidRequired);
        }
        let Some(signer) = fitting.iter().find(|jwk| {
            verifier::verify_jwk(cx.host, alg, jwk, parsed.signing_input, &parsed.signature)
        }) else {
            return Outcome::Deny(AuthError::BadSignature);
        };

        let valid_until = match provider.claims.check(&parsed.claims, cx.now) {
            Ok(until) => until,
            Err(err) => return Outcome::Deny(err),
        };
        let identity = Rc::new(Identity {
            provider: attempt.provider,
            headers: claim_headers(provider, &parsed.claims),
            scopes: claims::scopes(&parsed.claims),
            kid: signer.kid.clone(),
            key_seq: seq,
        });
        if let Some(key) = cache_key {
            let cap = cx.now.saturating_add(UNBOUNDED_TOKEN_TTL);
            let until = valid_until.map_or(cap, |until| {
                until.min(cx.now.saturating_add(MAX_CACHED_TTL))
            });
            cx.cache.insert(key, Rc::clone(&identity), until);
        }
        let cache = if cx.cache.enabled() {
            CacheUse::Miss
        } else {
            CacheUse::NotUsed
        };
        self.grant(&attempt, provider, identity, cache)
    }

    /// The answer for an attempt whose wait ran out.
    pub fn give_up(&self) -> AuthError {
        AuthError::KeysUnavailable
    }

    fn wait(&self, mut attempt: Attempt, cx: &mut Context<'_>) -> Outcome {
        if attempt.deadline.is_none() {
            let max_wait = cx.keyring.max_wait(attempt.provider);
            if max_wait == 0 {
                return Outcome::Deny(AuthError::KeysUnavailable);
            }
            attempt.deadline = Some(cx.now.saturating_add(max_wait));
        }
        Outcome::Wait(attempt)
    }

    /// A cached identity stays good while its key is still published. When the key
    /// set changed since it was cached, look for the key's `kid` again.
    fn key_still_published(&self, identity: &Identity, cx: &mut Context<'_>) -> bool {
        match cx.keyring.lookup(identity.provider, cx.store, cx.now) {
            KeyLookup::Ready { keys, seq } => {
                seq == identity.key_seq
                    || identity.kid.as_deref().is_some_and(|kid| keys.has_kid(kid))
            }
            // Keys too stale to use: do not trust what they verified either.
            _ => false,
        }
    }

    fn grant(
        &self,
        attempt: &Attempt,
        provider: &Provider,
        identity: Rc<Identity>,
        cache: CacheUse,
    ) -> Outcome {
        let missing: Vec<&str> = attempt
            .required_scopes
            .iter()
            .filter(|scope| !identity.scopes.iter().any(|s| s == *scope))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Outcome::Deny(AuthError::InsufficientScope(
                attempt.required_scopes.join(" "),
            ));
        }
        let remove_headers = match (&attempt.location, provider.forward) {
            (TokenLocation::Header { name, .. }, false) => vec![name.clone()],
            _ => Vec::new(),
        };
        Outcome::Allow(Grant {
            remove_headers,
            identity: Some(identity),
            cache,
        })
    }
}

/// Longest time a verified token is cached even when its `exp` is far away, so a
/// key removed from the JWKS stops being trusted within this time at worst.
const MAX_CACHED_TTL: u64 = 10 * 60 * 1000;

/// The most keys a token without `kid` is checked against: when more keys of the
/// provider fit its `alg`, it is refused ([`AuthError::KidRequired`]) before any
/// signature check. Three covers an issuer that signs without `kid` while it rotates
/// (old, current and next key of one type) and bounds what a forged token costs.
pub const MAX_KEYS_WITHOUT_KID: usize = 3;

fn claim_headers(
    provider: &Provider,
    claims: &serde_json::Map<String, serde_json::Value>,
) -> Vec<(String, String)> {
    provider
        .claim_to_headers
        .iter()
        .filter_map(|(header, paths)| {
            paths
                .iter()
                .find_map(|path| path.find(claims).and_then(header_value))
                .map(|value| (header.clone(), value))
        })
        .collect()
}

#[cfg(test)]
mod discovery_tests;
#[cfg(test)]
mod tests;
