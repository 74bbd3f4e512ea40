//! API-key authentication for wasmgate, independent of the proxy-wasm host.
//!
//! The API-key filter reads a key from the request ([`KeySources`]), turns malformed
//! keys away without a lookup ([`KeyFormat`]), hashes it ([`KeyHasher`]; the plaintext
//! never goes further), and asks a key store about the hash over HTTP ([`record`]: the
//! lookup contract, shared with `wasmgate-keystore`). Answers are cached for every
//! worker in a bounded table in shared data ([`KeyCache`]); lookups in flight are
//! bounded for the whole Envoy, and one worker's requests for the same key wait on one
//! lookup ([`PendingLookups`]). The outcome is a
//! [`Verdict`]; each [`Denial`] has exactly one HTTP answer ([`ApiKeyConfig::reply`]).
//!
//! What this crate is not: it sends nothing and reads no clock. The filter crate
//! (`filters/api-key`) does the host calls and passes the time in.

mod cache;
mod config;
mod credential;
mod decision;
mod hash;
mod pending;
mod permits;
pub mod record;
pub mod timestamp;

pub use cache::{CachePolicy, KeyCache, Lookup};
pub use config::{ApiKeyConfig, ForwardHeaders, StoreSettings};
pub use credential::{
    HeaderLookup, KeyFormat, KeySources, Malformation, Presented, PresentedKey, RequestEdit,
};
pub use decision::{Denial, Reply, Verdict};
pub use hash::{KeyHash, KeyHasher, PepperError};
pub use pending::{Answered, PendingLookups, MAX_WAITING};
pub use permits::Permit;
pub use record::{KeyRecord, KeyStatus, StoreAnswer, StoreError};
