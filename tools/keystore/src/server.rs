//! The lookup service: `GET <prefix>/<64 hex digits>` answers the API-key filter.
//!
//! `200` with the key's record (active, revoked or expired), `404` for no such key,
//! `400` for a path that is not a hash, `503` when the backend cannot be read.
//! `GET /__keystore/stats` counts lookups (for tests and dashboards);
//! `GET /__keystore/health` says whether the backend answers.

use crate::backend::{unix_now, KeyBackend};
use clap::Args;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use wasmgate_api_key_auth::KeyHash;
use wasmgate_fixture_http::{Request, Response, Server};

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Path before the hash (the filter's `store.path_prefix`).
    #[arg(long, default_value = "/v1/keys")]
    path_prefix: String,
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Lookup(KeyHash),
    BadHash,
    Stats,
    Health,
    NotFound,
    MethodNotAllowed,
}

fn route(request: &Request, prefix: &str) -> Route {
    let path = request.path();
    let target = match path {
        "/__keystore/stats" => Route::Stats,
        "/__keystore/health" => Route::Health,
        _ => match path
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('/'))
        {
            Some(hash) => KeyHash::from_hex(hash).map_or(Route::BadHash, Route::Lookup),
            None => Route::NotFound,
        },
    };
    if request.method != "GET" && target != Route::NotFound {
        return Route::MethodNotAllowed;
    }
    target
}

#[derive(Default)]
struct Stats {
    lookups: AtomicU64,
    found: AtomicU64,
    not_found: AtomicU64,
    bad_request: AtomicU64,
    unavailable: AtomicU64,
}

impl Stats {
    fn to_json(&self) -> String {
        let get = |n: &AtomicU64| n.load(Ordering::SeqCst);
        json!({
            "lookups": get(&self.lookups),
            "found": get(&self.found),
            "not_found": get(&self.not_found),
            "bad_request": get(&self.bad_request),
            "unavailable": get(&self.unavailable),
        })
        .to_string()
    }
}

pub fn serve(backend: Box<dyn KeyBackend>, args: ServeArgs) -> Result<(), String> {
    let prefix = args.path_prefix.trim_end_matches('/').to_owned();
    if !args.path_prefix.starts_with('/') {
        return Err(format!(
            "--path-prefix {:?} must start with /",
            args.path_prefix
        ));
    }
    let server = Server::bind(&args.listen)?;
    server.announce();
    let stats = Stats::default();
    server.serve(move |request| answer(request, backend.as_ref(), &stats, &prefix).into());
    Ok(())
}

fn answer(request: &Request, backend: &dyn KeyBackend, stats: &Stats, prefix: &str) -> Response {
    let route = route(request, prefix);
    if matches!(route, Route::Lookup(_) | Route::BadHash) {
        stats.lookups.fetch_add(1, Ordering::SeqCst);
    }
    let (status, body) = match route {
        Route::Lookup(hash) => match backend.lookup(&hash, unix_now()) {
            Ok(Some(record)) => {
                stats.found.fetch_add(1, Ordering::SeqCst);
                (200, serde_json::to_string(&record).unwrap_or_default())
            }
            Ok(None) => {
                stats.not_found.fetch_add(1, Ordering::SeqCst);
                (404, error("not_found", "no such key"))
            }
            Err(err) => {
                eprintln!("wasmgate-keystore: lookup failed: {err}");
                stats.unavailable.fetch_add(1, Ordering::SeqCst);
                (503, error("unavailable", "the key backend cannot be read"))
            }
        },
        Route::BadHash => {
            stats.bad_request.fetch_add(1, Ordering::SeqCst);
            (
                400,
                error("bad_request", "expected the key's SHA-256 as 64 hex digits"),
            )
        }
        Route::Stats => (200, stats.to_json()),
        Route::Health => match backend.list() {
            Ok(keys) => (200, json!({"status": "ok", "keys": keys.len()}).to_string()),
            Err(err) => (503, error("unavailable", &err.0)),
        },
        Route::NotFound => (404, error("not_found", "no such path")),
        Route::MethodNotAllowed => (405, error("method_not_allowed", "use GET")),
    };
    // A lookup answer is only ever cached by the filter, under its own TTLs.
    Response::json(status, body).header("cache-control", "no-store")
}

fn error(code: &str, message: &str) -> String {
    json!({ "error": code, "message": message }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, target: &str) -> Request {
        Request {
            method: method.into(),
            target: target.into(),
            headers: vec![],
            body: vec![],
        }
    }

    #[test]
    fn routes() {
        let hex = "ab".repeat(32);
        let get = |url: &str| route(&request("GET", url), "/v1/keys");
        assert_eq!(
            get(&format!("/v1/keys/{hex}")),
            Route::Lookup(KeyHash::from_hex(&hex).unwrap())
        );
        assert_eq!(
            get(&format!("/v1/keys/{}", hex.to_uppercase())),
            Route::Lookup(KeyHash::from_hex(&hex).unwrap())
        );
        assert_eq!(
            get(&format!("/v1/keys/{hex}?x=1")),
            Route::Lookup(KeyHash::from_hex(&hex).unwrap())
        );
        assert_eq!(get(&format!("/v1/keys/{}", &hex[1..])), Route::BadHash);
        assert_eq!(get(&format!("/v1/keys/{hex}0")), Route::BadHash);
        assert_eq!(get(&format!("/v1/keys/{}zz", &hex[2..])), Route::BadHash);
        assert_eq!(get("/v1/keys/"), Route::BadHash);
        assert_eq!(get(&format!("/v1/keys/{hex}/x")), Route::BadHash);
        assert_eq!(get(&format!("/v1/keysx/{hex}")), Route::NotFound);
        assert_eq!(get("/"), Route::NotFound);
        assert_eq!(get("/__keystore/stats"), Route::Stats);
        assert_eq!(get("/__keystore/health"), Route::Health);
        assert_eq!(
            route(&request("POST", &format!("/v1/keys/{hex}")), "/v1/keys"),
            Route::MethodNotAllowed
        );
    }
}
