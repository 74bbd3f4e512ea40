//! What each request gets: the lookup contract (`GET <prefix>/<64 hex digits>`), the
//! probes and the metrics.
//!
//! * lookup: `200` with the key's record (active, revoked or expired), `404` with
//!   `{"error":"not_found"}` for no such key (any other path: `404` `no_route`), `400` for a path that is not a hash, `503` when the backend cannot
//!   answer (in time); every answer `cache-control: no-store` (only the filter caches,
//!   under its own TTLs);
//! * `/healthz`: `200` while the process serves; `/readyz`: `200` when one backend
//!   round trip (a Redis `PING`) succeeds, `503` otherwise and while shutting down;
//! * `/metrics`: OpenMetrics text (metrics.rs);
//! * `/__keystore/stats` (JSON lookup counters) and `/__keystore/health` (the same as
//!   `/readyz`), kept for the tools that used them.

use crate::last_used::LastUsed;
use crate::metrics::{BackendOperation, LookupResult, Metrics, CONTENT_TYPE};
use crate::store::{unix_now, Backend, BackendError};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{header, Method, Response, StatusCode};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use wasmgate_api_key_auth::KeyHash;

pub type Answer = Response<Full<Bytes>>;

#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Lookup(KeyHash),
    BadHash,
    Healthz,
    Readyz,
    Metrics,
    Stats,
    NotFound,
    MethodNotAllowed,
}

impl Route {
    pub fn of(method: &Method, path: &str, prefix: &str) -> Self {
        let target = match path {
            "/healthz" => Self::Healthz,
            "/readyz" | "/__keystore/health" => Self::Readyz,
            "/metrics" => Self::Metrics,
            "/__keystore/stats" => Self::Stats,
            _ => match path
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_prefix('/'))
            {
                Some(hash) => KeyHash::from_hex(hash).map_or(Self::BadHash, Self::Lookup),
                None => Self::NotFound,
            },
        };
        if method != Method::GET && target != Self::NotFound {
            return Self::MethodNotAllowed;
        }
        target
    }

    pub fn is_lookup(&self) -> bool {
        matches!(self, Self::Lookup(_) | Self::BadHash)
    }
}

/// Everything a request may need, shared by all connections.
pub struct App {
    pub backend: Arc<Backend>,
    pub prefix: String,
    pub metrics: Metrics,
    pub last_used: Arc<LastUsed>,
    pub write_last_used: Arc<Notify>,
    /// Set at SIGTERM: `/readyz` answers 503 from then on.
    pub draining: AtomicBool,
    pub request_timeout: Duration,
    /// Whether the last backend operation failed (logged when it changes).
    backend_failing: AtomicBool,
}

impl App {
    pub fn new(
        backend: Arc<Backend>,
        prefix: String,
        last_used: Arc<LastUsed>,
        write_last_used: Arc<Notify>,
        request_timeout: Duration,
    ) -> Self {
        Self {
            backend,
            prefix,
            metrics: Metrics::new(),
            last_used,
            write_last_used,
            draining: AtomicBool::new(false),
            request_timeout,
            backend_failing: AtomicBool::new(false),
        }
    }

    /// The answer to one request, within the request timeout.
    pub async fn answer(&self, method: &Method, path: &str) -> Answer {
        let route = Route::of(method, path, &self.prefix);
        let is_lookup = route.is_lookup();
        match tokio::time::timeout(self.request_timeout, self.route(route)).await {
            Ok(answer) => answer,
            Err(_) => {
                self.metrics.requests_timed_out.inc();
                if is_lookup {
                    self.metrics.lookup(LookupResult::Unavailable);
                }
                json_answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    error("unavailable", "the key backend did not answer in time"),
                )
            }
        }
    }

    async fn route(&self, route: Route) -> Answer {
        match route {
            Route::Lookup(hash) => self.lookup(&hash).await,
            Route::BadHash => {
                self.metrics.lookup(LookupResult::BadRequest);
                json_answer(
                    StatusCode::BAD_REQUEST,
                    error("bad_request", "expected the key's SHA-256 as 64 hex digits"),
                )
            }
            Route::Healthz => json_answer(StatusCode::OK, json!({"status": "ok"}).to_string()),
            Route::Readyz => self.readiness().await,
            Route::Metrics => Response::builder()
                .header(header::CONTENT_TYPE, CONTENT_TYPE)
                .header(header::CACHE_CONTROL, "no-store")
                .body(Full::new(Bytes::from(self.metrics.encode())))
                .unwrap_or_default(),
            Route::Stats => json_answer(StatusCode::OK, self.metrics.stats_json()),
            // Not the contract's "no such key" (`not_found`): a filter whose path_prefix
            // is wrong must see a store error, not every key refused as unknown.
            Route::NotFound => json_answer(
                StatusCode::NOT_FOUND,
                error("no_route", "no such path: lookups are GET <prefix>/<hash>"),
            ),
            Route::MethodNotAllowed => {
                let mut answer = json_answer(
                    StatusCode::METHOD_NOT_ALLOWED,
                    error("method_not_allowed", "use GET"),
                );
                answer
                    .headers_mut()
                    .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
                answer
            }
        }
    }

    async fn lookup(&self, hash: &KeyHash) -> Answer {
        let started = Instant::now();
        let found = self.backend.lookup(hash).await;
        self.backend_outcome(BackendOperation::Lookup, found.as_ref().err());
        let (result, answer) = match found {
            Ok(Some(stored)) => {
                let now = unix_now();
                if self.last_used.note(&stored.record.key_id, now) {
                    self.write_last_used.notify_one();
                }
                let body = serde_json::to_string(&stored.answer_at(now)).unwrap_or_default();
                (LookupResult::Found, json_answer(StatusCode::OK, body))
            }
            Ok(None) => (
                LookupResult::NotFound,
                json_answer(StatusCode::NOT_FOUND, error("not_found", "no such key")),
            ),
            Err(_) => (
                LookupResult::Unavailable,
                json_answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    error("unavailable", "the key backend cannot be read"),
                ),
            ),
        };
        self.metrics.lookup(result);
        self.metrics
            .lookup_seconds
            .observe(started.elapsed().as_secs_f64());
        answer
    }

    async fn readiness(&self) -> Answer {
        if self.draining.load(Ordering::SeqCst) {
            return json_answer(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "draining"}).to_string(),
            );
        }
        let pinged = self.backend.ping().await;
        self.backend_outcome(BackendOperation::Ping, pinged.as_ref().err());
        match pinged {
            Ok(()) => json_answer(StatusCode::OK, json!({"status": "ready"}).to_string()),
            Err(err) => json_answer(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "unavailable", "error": err.0}).to_string(),
            ),
        }
    }

    /// Counts a failure; logs when the backend starts failing and when it recovers
    /// (not once per failed lookup: an outage would flood the log).
    fn backend_outcome(&self, operation: BackendOperation, error: Option<&BackendError>) {
        match error {
            Some(err) => {
                self.metrics.backend_error(operation);
                if !self.backend_failing.swap(true, Ordering::SeqCst) {
                    tracing::warn!(error = %err, store = %self.backend.describe(),
                        "the key backend fails: lookups answer 503 until it recovers");
                } else {
                    tracing::debug!(error = %err, "key backend error");
                }
            }
            None => {
                if self.backend_failing.swap(false, Ordering::SeqCst) {
                    tracing::info!(store = %self.backend.describe(), "the key backend answers again");
                }
            }
        }
    }
}

pub fn json_answer(status: StatusCode, body: String) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::from(body)));
    *answer.status_mut() = status;
    let headers = answer.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    answer
}

pub fn error(code: &str, message: &str) -> String {
    json!({ "error": code, "message": message }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let hex = "ab".repeat(32);
        let get = |path: &str| Route::of(&Method::GET, path, "/v1/keys");
        let hash = KeyHash::from_hex(&hex).unwrap();
        assert_eq!(get(&format!("/v1/keys/{hex}")), Route::Lookup(hash));
        assert_eq!(
            get(&format!("/v1/keys/{}", hex.to_uppercase())),
            Route::Lookup(hash)
        );
        assert_eq!(get(&format!("/v1/keys/{}", &hex[1..])), Route::BadHash);
        assert_eq!(get(&format!("/v1/keys/{hex}0")), Route::BadHash);
        assert_eq!(get(&format!("/v1/keys/{}zz", &hex[2..])), Route::BadHash);
        assert_eq!(get("/v1/keys/"), Route::BadHash);
        assert_eq!(get(&format!("/v1/keys/{hex}/x")), Route::BadHash);
        assert_eq!(get(&format!("/v1/keysx/{hex}")), Route::NotFound);
        assert_eq!(get("/"), Route::NotFound);
        assert_eq!(get("/healthz"), Route::Healthz);
        assert_eq!(get("/readyz"), Route::Readyz);
        assert_eq!(get("/__keystore/health"), Route::Readyz);
        assert_eq!(get("/metrics"), Route::Metrics);
        assert_eq!(get("/__keystore/stats"), Route::Stats);
        assert_eq!(
            Route::of(&Method::POST, &format!("/v1/keys/{hex}"), "/v1/keys"),
            Route::MethodNotAllowed
        );
        assert_eq!(
            Route::of(&Method::POST, "/nowhere", "/v1/keys"),
            Route::NotFound
        );
    }
}
