//! The JWKS cache policy: one fetch per refresh per Envoy instance, whatever the
//! number of workers, and never a cause of mass 401s.
//!
//! Every VM (one per Envoy worker, plus a few) holds a [`Keyring`]: the parsed keys of
//! each provider. Remote JWKS documents live in shared data, under keys bounded by
//! the configuration (`wasmgate.jwt.<provider>.<source hash>.state` and `.keys`):
//!
//! * `.state` is a small record every VM reads on each tick: the version (`seq`) of
//!   the published keys, when they must be refreshed, the fetch lease, the failure
//!   count and when to retry, and when the last unknown-`kid` refetch happened;
//! * `.keys` holds the last good JWKS document; a VM reads it only when `seq` moved.
//!
//! A VM fetches only after winning the lease with a CAS write on `.state`, so one
//! callout is in flight per provider and per instance. A successful fetch publishes
//! the document and clears the failure count; a failed one backs off exponentially
//! and keeps the last good keys, which stay usable until `max_staleness` past their
//! refresh time. A token with an unknown `kid` may force a refetch, at most once per
//! `unknown_kid_refetch_interval` per provider (shared, so per instance).
//!
//! A provider with OpenID Connect discovery has one more document: the issuer's
//! discovery document, whose `jwks_uri` says where the JWKS is. It is fetched under
//! the same lease, before the JWKS when it is due (first, and then on its own
//! refresh schedule, with the same policy), and only its checked `jwks_uri` is kept,
//! in `.state`. When it names a new `jwks_uri`, the JWKS is due at once (from there);
//! when it cannot be had, the last good `jwks_uri` keeps serving, and the document is
//! retried with its own backoff.
//!
//! All times are milliseconds since the Unix epoch, passed in as `now`. The glue
//! dispatches the callout a [`FetchOrder`] describes and hands the answer back as a
//! [`FetchResponse`] (to [`Keyring::on_response`] for a JWKS, to
//! [`Keyring::on_discovery_response`] for a discovery document).

use crate::config::{JwtConfig, KeySource, RemoteJwks};
use crate::discovery::{DocumentError, JwksLocation};
use crate::jwks::KeySet;
use serde::{Deserialize, Serialize};
use std::rc::Rc;
use wasmgate_shared_store::{Cas, SetError, SharedStore};

/// The cache policy of one remote JWKS, in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachePolicy {
    /// Callout timeout.
    pub fetch_timeout: u64,
    /// Refresh interval when the answer has no `Cache-Control: max-age`.
    pub cache_duration: u64,
    /// Bounds applied to `max-age`.
    pub min_cache_duration: u64,
    pub max_cache_duration: u64,
    /// How long past their refresh time the last good keys are still used while
    /// refreshes fail.
    pub max_staleness: u64,
    /// Retry delay after the first failure, doubling up to `backoff_max`.
    pub backoff_initial: u64,
    pub backoff_max: u64,
    /// Least time between two refetches forced by unknown `kid`s.
    pub unknown_kid_refetch_interval: u64,
    /// How long a request may wait for keys (first load, unknown `kid`).
    pub max_wait: u64,
}

impl CachePolicy {
    /// How long keys fetched with this `Cache-Control` stay fresh.
    pub fn time_to_live(&self, cache_control: Option<&str>) -> u64 {
        match cache_control.and_then(max_age_secs) {
            Some(secs) => secs
                .saturating_mul(1000)
                .clamp(self.min_cache_duration, self.max_cache_duration),
            None => self.cache_duration,
        }
    }

    /// The retry delay after `failures` consecutive failures (1 or more).
    pub fn backoff(&self, failures: u32) -> u64 {
        let doublings = failures.saturating_sub(1).min(32);
        self.backoff_initial
            .saturating_mul(1u64 << doublings)
            .min(self.backoff_max)
    }
}

/// `max-age` in seconds; `no-store`/`no-cache` count as 0 (then the lower bound applies).
fn max_age_secs(cache_control: &str) -> Option<u64> {
    let mut result = None;
    for directive in cache_control.split(',') {
        let directive = directive.trim().to_ascii_lowercase();
        if directive == "no-store" || directive == "no-cache" {
            return Some(0);
        }
        if let Some(value) = directive.strip_prefix("max-age=") {
            result = value.trim_matches('"').parse().ok();
        }
    }
    result
}

/// The shared `.state` record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct FetchState {
    /// Version of the document in `.keys`; 0 before the first good fetch.
    seq: u64,
    refresh_at: u64,
    /// The VM holding the fetch lease (0: nobody) and until when.
    lease_holder: u64,
    lease_until: u64,
    /// Consecutive failed fetches, and when the next attempt may start.
    failures: u32,
    retry_at: u64,
    /// When the last refetch forced by an unknown `kid` started.
    refetched_at: u64,
    /// Providers with discovery only (absent until the first document is dealt with).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    discovery: Option<DiscoveryState>,
}

/// Where the discovery document of a provider stands, in `.state`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct DiscoveryState {
    /// The last good document's `jwks_uri` ("" before the first), checked when it
    /// came: it maps to a cluster.
    jwks_uri: String,
    /// When the document is fetched again: its refresh after a success, the retry
    /// after a failure.
    due_at: u64,
    /// Consecutive failed fetches of the document.
    failures: u32,
}

impl FetchState {
    fn lease_active(&self, now: u64) -> bool {
        self.lease_holder != 0 && now < self.lease_until
    }
}

/// Which document a fetch is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Document {
    Jwks,
    /// The issuer's OpenID Connect discovery document.
    Discovery,
}

/// A callout the glue must send (from the root context), then answer with
/// [`Keyring::on_response`] (a JWKS) or [`Keyring::on_discovery_response`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchOrder {
    pub provider: usize,
    pub document: Document,
    pub cluster: String,
    pub path: String,
    pub authority: String,
    /// Milliseconds.
    pub timeout: u64,
    /// Started for an unknown `kid` rather than because the keys were due.
    pub forced: bool,
}

/// What the callout brought back.
#[derive(Debug, Clone, Default)]
pub struct FetchResponse {
    /// `None` when no HTTP answer came (timeout, reset, no healthy upstream).
    pub status: Option<u16>,
    pub body: Vec<u8>,
    /// The body was longer than [`MAX_JWKS_BYTES`](crate::jwks::MAX_JWKS_BYTES).
    pub truncated: bool,
    pub cache_control: Option<String>,
}

/// The result of a fetch, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchReport {
    Success {
        keys: usize,
        time_to_live: u64,
    },
    Failure {
        reason: String,
        retry_in: u64,
    },
    /// A discovery document was read; `changed`: its `jwks_uri` is not the one
    /// before (or there was none), so the JWKS is fetched from there now.
    Discovered {
        jwks_uri: String,
        changed: bool,
        time_to_live: u64,
    },
    /// A discovery document came but is not to be followed (another issuer, a
    /// `jwks_uri` on a host without a cluster): a failed fetch, counted apart.
    Refused {
        reason: String,
        retry_in: u64,
    },
}

/// Keys usable for a provider right now.
#[derive(Debug, Clone)]
pub enum KeyLookup {
    /// `seq` identifies this version of the keys (0 for an inline JWKS).
    Ready { keys: Rc<KeySet>, seq: u64 },
    /// Not loaded yet (or too stale), but a fetch is under way or due within the
    /// request's wait: the request may wait.
    Pending,
    /// No usable keys and no fetch expected soon: answer 503 now.
    Unavailable,
}

/// Everything about one provider's keys that a check waiting for them depends on, at
/// one instant: [`Keyring::lookup`] and [`Keyring::unknown_kid`] answer the same for
/// two equal views (the shared state having been read just before each, as the
/// root's tick does). So a waiting request needs checking again only once the view of
/// its provider differs from the one it was put to wait under
/// ([`WaitList`](crate::WaitList)), not on every tick.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyView {
    /// The version of the keys this VM holds (0: none yet, or an inline JWKS).
    seq: u64,
    /// The keys are fresh enough to use.
    usable: bool,
    /// Fetches are failing and the next try is further away than a request waits.
    failing: bool,
    /// A fetch is under way somewhere in this Envoy.
    lease_active: bool,
    /// A refetch for an unknown `kid` may start now.
    refetch_allowed: bool,
}

/// The answer for a token whose `kid` is not among the keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownKid {
    /// Another VM published newer keys meanwhile: check again with them.
    NewerKeys,
    /// A refetch is in flight or was just asked for: wait for it.
    Wait,
    /// No refetch now (one happened within `unknown_kid_refetch_interval`, or
    /// fetches are backing off, or the keys are inline): the key is unknown.
    Refused,
}

/// One remote JWKS as seen by one VM.
#[derive(Debug)]
struct JwksCache {
    remote: RemoteJwks,
    state_key: String,
    keys_key: String,
    holder: u64,
    keys: Option<Rc<KeySet>>,
    /// Version and refresh time of `keys`.
    seq: u64,
    refresh_at: u64,
    shared: FetchState,
    shared_cas: Option<Cas>,
    /// A request of this VM met an unknown `kid` and a refetch is allowed: the next
    /// poll takes the lease for it.
    want_refetch: bool,
    /// This VM dispatched a fetch; its lease ends then.
    in_flight_until: Option<u64>,
}

/// Why a fetch without a status failed.
const NO_ANSWER: &str = "no answer (timeout, reset or no healthy upstream)";
/// How many times a CAS write is retried against concurrent writers.
const CAS_ATTEMPTS: usize = 8;
/// Extra lease time beyond the callout timeout, so the lease never ends before the
/// callout does.
const LEASE_MARGIN: u64 = 1_000;

impl JwksCache {
    fn new(provider: &str, remote: &RemoteJwks, holder: u64) -> Self {
        // The source is part of the key: two configurations that give one provider
        // name different JWKS URLs must not share (or overwrite) each other's keys.
        // With discovery, so is what the document is checked against.
        let mut source = format!("{}\n{}\n{}", remote.cluster, remote.authority, remote.path);
        if let Some(discovery) = &remote.discovery {
            source.push_str(&format!(
                "\ndiscovery\n{}\n{:?}",
                discovery.issuer, discovery.jwks_clusters
            ));
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, source.as_bytes());
        let hash: String = digest.as_ref()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let prefix = format!("wasmgate.jwt.{provider}.{hash}");
        Self {
            remote: remote.clone(),
            state_key: format!("{prefix}.state"),
            keys_key: format!("{prefix}.keys"),
            holder,
            keys: None,
            seq: 0,
            refresh_at: 0,
            shared: FetchState::default(),
            shared_cas: None,
            want_refetch: false,
            in_flight_until: None,
        }
    }

    fn policy(&self) -> &CachePolicy {
        &self.remote.policy
    }

    /// Creates `.state` where missing. Called from `on_configure`, before any VM
    /// competes for the lease: every later write is a CAS on an existing key.
    fn create_shared_keys(&self, store: &dyn SharedStore) {
        if store.get(&self.state_key).is_none() {
            if let Ok(text) = serde_json::to_vec(&FetchState::default()) {
                let _ = store.set(&self.state_key, &text, None);
            }
        }
    }

    /// Reads `.state` and, when another VM published newer keys, `.keys`.
    fn sync(&mut self, store: &dyn SharedStore) {
        (self.shared, self.shared_cas) = self.read_state(store);
        if self.shared.seq > self.seq {
            if let Some((record, _)) = store.get(&self.keys_key) {
                if let Some((seq, refresh_at, set)) = parse_keys_record(&record) {
                    if seq > self.seq {
                        self.install(seq, refresh_at, set);
                    }
                }
            }
        }
    }

    fn install(&mut self, seq: u64, refresh_at: u64, set: KeySet) {
        self.keys = Some(Rc::new(set));
        self.seq = seq;
        self.refresh_at = refresh_at;
        self.want_refetch = false;
    }

    fn usable(&self, now: u64) -> bool {
        self.keys.is_some() && now < self.refresh_at.saturating_add(self.policy().max_staleness)
    }

    fn usable_keys(&self, now: u64) -> Option<KeyLookup> {
        let keys = self.keys.as_ref().filter(|_| self.usable(now))?;
        Some(KeyLookup::Ready {
            keys: Rc::clone(keys),
            seq: self.seq,
        })
    }

    /// No usable keys can be expected within a request's wait: fetches fail, none
    /// is under way, and the next try is later than `max_wait` from now.
    fn failing(&self, now: u64) -> bool {
        let horizon = now.saturating_add(self.policy().max_wait);
        let stuck = if self.knows_jwks_location() {
            self.shared.failures > 0 && self.shared.retry_at > horizon
        } else {
            // Discovery has not found the JWKS yet.
            let discovery = self.shared.discovery.clone().unwrap_or_default();
            discovery.failures > 0 && discovery.due_at > horizon
        };
        stuck && !self.shared.lease_active(now)
    }

    /// Where the JWKS is: configured, or the last good discovery document's
    /// `jwks_uri` (`None` before there is one).
    fn jwks_location(&self) -> Option<JwksLocation> {
        let remote = &self.remote;
        match &remote.discovery {
            None => Some(JwksLocation {
                cluster: remote.cluster.clone(),
                authority: remote.authority.clone(),
                path: remote.path.clone(),
            }),
            Some(discovery) => {
                let uri = &self.shared.discovery.as_ref()?.jwks_uri;
                if uri.is_empty() {
                    return None;
                }
                discovery.locate(uri).ok()
            }
        }
    }

    /// Cheaper than [`JwksCache::jwks_location`]: whether there is one.
    fn knows_jwks_location(&self) -> bool {
        self.remote.discovery.is_none()
            || self
                .shared
                .discovery
                .as_ref()
                .is_some_and(|d| !d.jwks_uri.is_empty())
    }

    /// The discovery document is to be fetched now (providers with discovery only):
    /// first, when its refresh is due, and when its retry is.
    fn discovery_due(&self, now: u64) -> bool {
        self.remote.discovery.is_some()
            && now >= self.shared.discovery.as_ref().map_or(0, |d| d.due_at)
    }

    fn view(&self, now: u64) -> KeyView {
        KeyView {
            seq: self.seq,
            usable: self.usable(now),
            failing: self.failing(now),
            lease_active: self.shared.lease_active(now),
            refetch_allowed: self.refetch_allowed(now),
        }
    }

    /// Usable keys as this VM knows them; shared data is read only when there are
    /// none (the root's tick keeps the VM's copy current, so the request path does
    /// not pay a shared-data read on every token).
    fn lookup(&mut self, store: &dyn SharedStore, now: u64) -> KeyLookup {
        if let Some(ready) = self.usable_keys(now) {
            return ready;
        }
        self.sync(store);
        if let Some(ready) = self.usable_keys(now) {
            return ready;
        }
        if self.failing(now) {
            KeyLookup::Unavailable
        } else {
            KeyLookup::Pending
        }
    }

    fn refetch_allowed(&self, now: u64) -> bool {
        now >= self
            .shared
            .refetched_at
            .saturating_add(self.policy().unknown_kid_refetch_interval)
            && (self.shared.failures == 0 || now >= self.shared.retry_at)
    }

    /// A token names a `kid` missing from the keys of version `seen`.
    fn unknown_kid(&mut self, store: &dyn SharedStore, now: u64, seen: u64) -> UnknownKid {
        self.sync(store);
        if self.seq > seen {
            return UnknownKid::NewerKeys;
        }
        if self.shared.lease_active(now) {
            return UnknownKid::Wait;
        }
        if self.refetch_allowed(now) {
            self.want_refetch = true;
            return UnknownKid::Wait;
        }
        UnknownKid::Refused
    }

    /// Takes the fetch lease when a fetch is due (or forced) and nobody holds it: the
    /// order this VM must now send. The discovery document, when due, goes first.
    fn poll(&mut self, store: &dyn SharedStore, now: u64) -> Option<FetchOrder> {
        self.sync(store);
        if let Some(until) = self.in_flight_until {
            if now < until {
                return None;
            }
            // Our callout outlived its lease (it should not: Envoy enforces the
            // timeout). Forget it; its answer, if any, is still accepted.
            self.in_flight_until = None;
        }
        let shared = &self.shared;
        let (document, location, forced, due) = if self.discovery_due(now) {
            let remote = &self.remote;
            let location = JwksLocation {
                cluster: remote.cluster.clone(),
                authority: remote.authority.clone(),
                path: remote.path.clone(),
            };
            (Document::Discovery, location, false, true)
        } else {
            let due = shared.seq == 0 || now >= shared.refresh_at;
            let forced = self.want_refetch && self.refetch_allowed(now);
            if self.want_refetch && !forced && !shared.lease_active(now) {
                // Someone else refetched meanwhile, or we are backing off.
                self.want_refetch = false;
            }
            let backing_off = shared.failures > 0 && now < shared.retry_at;
            // (`forced` already implies that we are not backing off.)
            if !(due || forced) || backing_off {
                return None;
            }
            (Document::Jwks, self.jwks_location()?, forced, due)
        };
        if shared.lease_active(now) {
            return None;
        }
        let mut next = shared.clone();
        next.lease_holder = self.holder;
        next.lease_until = now
            .saturating_add(self.policy().fetch_timeout)
            .saturating_add(LEASE_MARGIN);
        if forced && !due {
            next.refetched_at = now;
        }
        let text = serde_json::to_vec(&next).ok()?;
        match store.set(&self.state_key, &text, self.shared_cas) {
            Ok(()) => {
                self.in_flight_until = Some(next.lease_until);
                if document == Document::Jwks {
                    self.want_refetch = false;
                }
                self.shared = next;
                Some(FetchOrder {
                    provider: 0,
                    document,
                    cluster: location.cluster,
                    path: location.path,
                    authority: location.authority,
                    timeout: self.policy().fetch_timeout,
                    forced: forced && !due,
                })
            }
            Err(SetError::CasMismatch | SetError::Refused) => None,
        }
    }

    /// The answer to a discovery document's fetch: its checked `jwks_uri` into
    /// `.state` (the JWKS due at once when it changed), or a failure that keeps the
    /// last good `jwks_uri` and backs the document off.
    fn on_discovery_response(
        &mut self,
        store: &dyn SharedStore,
        now: u64,
        response: &FetchResponse,
    ) -> FetchReport {
        self.in_flight_until = None;
        let read = match (&self.remote.discovery, response.status) {
            (None, _) => Err(DocumentError::Broken(
                "this provider has no discovery".to_owned(),
            )),
            (_, None) => Err(DocumentError::Broken(NO_ANSWER.to_owned())),
            (Some(_), Some(200)) if response.truncated => Err(DocumentError::Broken(format!(
                "discovery document larger than {} bytes",
                crate::discovery::MAX_DISCOVERY_BYTES
            ))),
            (Some(discovery), Some(200)) => discovery.read(&response.body),
            (_, Some(status)) => Err(DocumentError::Broken(format!("HTTP status {status}"))),
        };
        let policy = self.policy().clone();
        match read {
            Ok(jwks_uri) => {
                let ttl = policy.time_to_live(response.cache_control.as_deref());
                let mut changed = false;
                self.update_state(store, |state| {
                    let before = state.discovery.take().unwrap_or_default();
                    changed = before.jwks_uri != jwks_uri;
                    if changed {
                        // The keys come from there now: fetch them at once (the last
                        // good ones stay usable meanwhile), without the old
                        // location's backoff.
                        state.refresh_at = state.refresh_at.min(now);
                        state.failures = 0;
                        state.retry_at = 0;
                    }
                    state.discovery = Some(DiscoveryState {
                        jwks_uri: jwks_uri.clone(),
                        due_at: now.saturating_add(ttl),
                        failures: 0,
                    });
                });
                FetchReport::Discovered {
                    jwks_uri,
                    changed,
                    time_to_live: ttl,
                }
            }
            Err(error) => {
                let mut failures = 0;
                self.update_state(store, |state| {
                    let discovery = state.discovery.get_or_insert_with(Default::default);
                    discovery.failures = discovery.failures.saturating_add(1);
                    discovery.due_at = now.saturating_add(policy.backoff(discovery.failures));
                    failures = discovery.failures;
                });
                let retry_in = policy.backoff(failures.max(1));
                match error {
                    DocumentError::Broken(reason) => FetchReport::Failure { reason, retry_in },
                    DocumentError::Refused(reason) => FetchReport::Refused { reason, retry_in },
                }
            }
        }
    }

    /// Changes `.state` with a CAS write (retried against concurrent writers),
    /// releasing our lease; this VM's view of it follows.
    fn update_state(&mut self, store: &dyn SharedStore, mut edit: impl FnMut(&mut FetchState)) {
        for _ in 0..CAS_ATTEMPTS {
            let (mut state, cas) = self.read_state(store);
            edit(&mut state);
            if state.lease_holder == self.holder {
                state.lease_holder = 0;
                state.lease_until = 0;
            }
            if self.write_state(store, &state, cas) {
                self.shared = state;
                return;
            }
        }
    }

    fn on_response(
        &mut self,
        store: &dyn SharedStore,
        now: u64,
        response: &FetchResponse,
    ) -> FetchReport {
        self.in_flight_until = None;
        let parsed = match response.status {
            None => Err(NO_ANSWER.to_owned()),
            Some(200) if response.truncated => Err(format!(
                "JWKS larger than {} bytes",
                crate::jwks::MAX_JWKS_BYTES
            )),
            Some(200) => KeySet::parse(&response.body, false).map_err(|e| e.to_string()),
            Some(status) => Err(format!("HTTP status {status}")),
        };
        match parsed {
            Ok(set) => {
                let ttl = self
                    .policy()
                    .time_to_live(response.cache_control.as_deref());
                let refresh_at = now.saturating_add(ttl);
                let count = set.len();
                let seq = self.publish(store, now, refresh_at, &response.body);
                self.install(seq, refresh_at, set);
                FetchReport::Success {
                    keys: count,
                    time_to_live: ttl,
                }
            }
            Err(reason) => {
                let failures = self.record_failure(store, now);
                FetchReport::Failure {
                    reason,
                    retry_in: self.policy().backoff(failures),
                }
            }
        }
    }

    /// Writes the document to `.keys`, then the new `seq` to `.state` (clearing the
    /// lease and failures). Returns the new `seq`.
    fn publish(&mut self, store: &dyn SharedStore, now: u64, refresh_at: u64, body: &[u8]) -> u64 {
        self.sync(store);
        let seq = self.shared.seq.max(self.seq) + 1;
        let mut record = format!("{seq} {now} {refresh_at}\n").into_bytes();
        record.extend_from_slice(body);
        // Only the lease holder writes `.keys`; readers look at it only after `.state`
        // announces the new `seq`, so the order of these two writes is what matters.
        let _ = store.set(&self.keys_key, &record, None);
        let holder = self.holder;
        for _ in 0..CAS_ATTEMPTS {
            let (mut state, cas) = self.read_state(store);
            state.seq = state.seq.max(seq);
            state.refresh_at = refresh_at;
            state.failures = 0;
            state.retry_at = 0;
            if state.lease_holder == holder {
                state.lease_holder = 0;
                state.lease_until = 0;
            }
            if self.write_state(store, &state, cas) {
                break;
            }
        }
        seq
    }

    /// Counts a failed fetch in `.state`, schedules the retry and clears our lease.
    /// Returns the failure count.
    fn record_failure(&mut self, store: &dyn SharedStore, now: u64) -> u32 {
        let policy = self.policy().clone();
        let mut failures = self.shared.failures.saturating_add(1);
        self.update_state(store, |state| {
            state.failures = state.failures.saturating_add(1);
            state.retry_at = now.saturating_add(policy.backoff(state.failures));
            failures = state.failures;
        });
        failures
    }

    fn read_state(&self, store: &dyn SharedStore) -> (FetchState, Option<Cas>) {
        match store.get(&self.state_key) {
            Some((bytes, cas)) => (
                serde_json::from_slice(&bytes).unwrap_or_default(),
                Some(cas),
            ),
            None => (FetchState::default(), None),
        }
    }

    fn write_state(&self, store: &dyn SharedStore, state: &FetchState, cas: Option<Cas>) -> bool {
        match serde_json::to_vec(state) {
            Ok(text) => store.set(&self.state_key, &text, cas).is_ok(),
            Err(_) => false,
        }
    }
}

/// `.keys` is `"<seq> <fetched_at> <refresh_at>\n<JWKS document>"`.
fn parse_keys_record(record: &[u8]) -> Option<(u64, u64, KeySet)> {
    let newline = record.iter().position(|b| *b == b'\n')?;
    let header = std::str::from_utf8(&record[..newline]).ok()?;
    let mut fields = header.split(' ').map(|f| f.parse::<u64>().ok());
    let (Some(Some(seq)), Some(Some(_fetched_at)), Some(Some(refresh_at))) =
        (fields.next(), fields.next(), fields.next())
    else {
        return None;
    };
    let set = KeySet::parse(&record[newline + 1..], false).ok()?;
    Some((seq, refresh_at, set))
}

#[derive(Debug)]
enum ProviderKeys {
    Inline(Rc<KeySet>),
    Remote(Box<JwksCache>),
}

/// The keys of every provider of one configuration, in one VM.
#[derive(Debug)]
pub struct Keyring {
    providers: Vec<ProviderKeys>,
}

impl Keyring {
    /// `holder` identifies this VM in the fetch lease: any number no other VM of the
    /// instance uses (the glue draws a random one; never 0).
    pub fn new(config: &JwtConfig, holder: u64) -> Self {
        let holder = holder.max(1);
        let providers = config
            .providers
            .iter()
            .map(|provider| match &provider.keys {
                KeySource::Inline(set) => ProviderKeys::Inline(Rc::new(set.clone())),
                KeySource::Remote(remote) => {
                    ProviderKeys::Remote(Box::new(JwksCache::new(&provider.name, remote, holder)))
                }
            })
            .collect();
        Self { providers }
    }

    /// Creates the fixed shared-data keys where missing (see the module docs).
    pub fn create_shared_keys(&self, store: &dyn SharedStore) {
        for provider in &self.providers {
            if let ProviderKeys::Remote(cache) = provider {
                cache.create_shared_keys(store);
            }
        }
    }

    pub fn lookup(&mut self, provider: usize, store: &dyn SharedStore, now: u64) -> KeyLookup {
        match self.providers.get_mut(provider) {
            Some(ProviderKeys::Inline(keys)) => KeyLookup::Ready {
                keys: Rc::clone(keys),
                seq: 0,
            },
            Some(ProviderKeys::Remote(cache)) => cache.lookup(store, now),
            None => KeyLookup::Unavailable,
        }
    }

    /// What to do about a token whose `kid` is not in the keys of version `seen`.
    pub fn unknown_kid(
        &mut self,
        provider: usize,
        store: &dyn SharedStore,
        now: u64,
        seen: u64,
    ) -> UnknownKid {
        match self.providers.get_mut(provider) {
            Some(ProviderKeys::Remote(cache)) => cache.unknown_kid(store, now, seen),
            _ => UnknownKid::Refused,
        }
    }

    /// What a waiting check of this provider depends on, now (see [`KeyView`]).
    pub fn view(&self, provider: usize, now: u64) -> KeyView {
        match self.providers.get(provider) {
            Some(ProviderKeys::Remote(cache)) => cache.view(now),
            _ => KeyView::default(),
        }
    }

    /// Reads every remote provider's shared state (and newer keys) without taking
    /// part in fetching: for a configuration that was replaced but still has requests
    /// waiting for its keys.
    pub fn sync(&mut self, store: &dyn SharedStore) {
        for provider in &mut self.providers {
            if let ProviderKeys::Remote(cache) = provider {
                cache.sync(store);
            }
        }
    }

    /// How long a request may wait for this provider's keys, in milliseconds.
    pub fn max_wait(&self, provider: usize) -> u64 {
        match self.providers.get(provider) {
            Some(ProviderKeys::Remote(cache)) => cache.policy().max_wait,
            _ => 0,
        }
    }

    /// Called on every tick: the fetches this VM won the lease for.
    pub fn poll(&mut self, store: &dyn SharedStore, now: u64) -> Vec<FetchOrder> {
        let mut orders = Vec::new();
        for (index, provider) in self.providers.iter_mut().enumerate() {
            if let ProviderKeys::Remote(cache) = provider {
                if let Some(order) = cache.poll(store, now) {
                    orders.push(FetchOrder {
                        provider: index,
                        ..order
                    });
                }
            }
        }
        orders
    }

    /// The answer to a [`FetchOrder`] for a discovery document (or a failure to
    /// dispatch it, as a response without status).
    pub fn on_discovery_response(
        &mut self,
        provider: usize,
        store: &dyn SharedStore,
        now: u64,
        response: &FetchResponse,
    ) -> Option<FetchReport> {
        Some(
            self.remote(provider)?
                .on_discovery_response(store, now, response),
        )
    }

    /// The answer to a [`FetchOrder`] for a JWKS (or a failure to dispatch it, as a
    /// response without status).
    pub fn on_response(
        &mut self,
        provider: usize,
        store: &dyn SharedStore,
        now: u64,
        response: &FetchResponse,
    ) -> Option<FetchReport> {
        Some(self.remote(provider)?.on_response(store, now, response))
    }

    fn remote(&mut self, provider: usize) -> Option<&mut JwksCache> {
        match self.providers.get_mut(provider) {
            Some(ProviderKeys::Remote(cache)) => Some(cache),
            _ => None,
        }
    }
}
