//! JWT validation for wasmgate's JWT filter, independent of the proxy-wasm host.
//!
//! The nouns are those of Envoy's own `jwt_authn`:
//!
//! * [`config`]: the plugin configuration, parsed once into a validated [`JwtConfig`];
//! * [`extract`]: where a provider's token is found (headers, query parameters, cookies);
//! * [`token`]: the compact JWS form, its header (`alg`, `kid`, `typ`, `crit`) and
//!   claims, read as [`strict_json`] (no member named twice);
//! * [`jwks`]: strict JWKS parsing into a [`KeySet`];
//! * [`discovery`]: OpenID Connect discovery: the issuer's document and its `jwks_uri`;
//! * [`verifier`]: signature checks, by the host where it can ([`host_verifier`]: Envoy's
//!   own crypto through a foreign function), else in the VM with `ring`;
//! * [`claims`]: `exp`/`nbf`/`iat`, issuer, audience, lifetime, scopes, claim-to-header;
//! * [`jwks_cache`]: the JWKS cache policy shared by all VMs through a
//!   [`SharedStore`](wasmgate_shared_store::SharedStore): one fetch per refresh, backoff,
//!   last-known-good keys, rate-limited unknown-`kid` refetches, and the discovery
//!   document ahead of the JWKS where a provider asks for it;
//! * [`token_cache`]: a bounded cache of verified tokens, keyed by a hash of the token;
//! * [`rules`]: which requirement applies to a request;
//! * [`waitlist`]: the requests of a VM waiting for keys: bounded, and checked again
//!   only when their provider's keys changed;
//! * [`error`]: one enum of reasons to refuse a request, each with exactly one answer;
//! * [`authenticator`]: the decision for one request, as a value ([`Outcome`]).
//!
//! Time is always passed in (`now`, milliseconds since the Unix epoch); nothing here
//! reads a clock, sleeps, or knows about proxy-wasm. The filter crate (`filters/jwt`)
//! turns decisions into host calls.

pub mod authenticator;
pub mod claims;
pub mod config;
pub mod discovery;
pub mod error;
pub mod extract;
pub mod host_verifier;
pub mod jwks;
pub mod jwks_cache;
pub mod rules;
pub mod strict_json;
pub mod token;
pub mod token_cache;
pub mod verifier;
pub mod waitlist;

pub use authenticator::{Attempt, Authenticator, Grant, Outcome};
pub use config::JwtConfig;
pub use error::{Answer, AuthError};
pub use jwks::KeySet;
pub use jwks_cache::{FetchOrder, FetchReport, FetchResponse, KeyView, Keyring};
pub use token_cache::TokenCache;
pub use waitlist::{WaitList, Wake};

#[cfg(test)]
mod testkit;
