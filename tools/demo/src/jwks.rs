//! The JWKS issuer: serves the public keys of a key directory as a JWKS, counts the
//! fetches, and misbehaves on demand, so tests can prove how the JWT filter copes.
//!
//! * `GET <path>/.well-known/openid-configuration`: an OpenID Connect discovery
//!   document, `{"issuer": <--issuer>, "jwks_uri": <--jwks-uri>, ...}`.
//! * `GET <any other path>` (not under `/__jwks/`): the JWKS of `--keys DIR`, read
//!   afresh on every request (add a `<kid>.<ALG>.pem` file to rotate).
//! * `GET /__jwks/stats`: `{"requests": N, "served": M, "discovery_requests": N,
//!   "discovery_served": M}`, JWKS (and discovery) requests received and answered
//!   with 200.
//! * `POST /__jwks/mode` (only with `--mode-endpoint`: it lets anyone who reaches the
//!   server make it publish keys of their own, so it is off unless asked for) with a
//!   JSON body sets how JWKS requests are answered (missing fields take their defaults):
//!   `{"status": 200, "delay_ms": 0, "down": false, "cache_control": null,
//!   "body": null}`. `down` closes the connection without an answer; `body`
//!   replaces the JWKS with raw text (a broken document); `cache_control` adds that
//!   header. `POST /__jwks/discovery` does the same for the discovery document (a
//!   `body` of another issuer's document, say). The admin paths are never affected.
//!
//! Served by `wasmgate-fixture-http` (keep-alive; `down` hangs up mid-request).

use crate::signing_keys;
use clap::Args;
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use wasmgate_fixture_http::{Reply, Request, Response, Server};

const MAX_DELAY_MS: u64 = 60_000;

#[derive(Args)]
pub struct JwksArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Directory of `<kid>.<ALG>.pem` private keys. When it holds none, an ES256 key
    /// `demo-es256` is generated there.
    #[arg(long)]
    keys: PathBuf,
    /// The `issuer` of the discovery document (as `wasmgate-demo token --iss`).
    #[arg(long, default_value = "https://issuer.wasmgate.test")]
    issuer: String,
    /// The `jwks_uri` of the discovery document; by default
    /// `<issuer>/.well-known/jwks.json`.
    #[arg(long)]
    jwks_uri: Option<String>,
    /// Serve `POST /__jwks/mode`, which changes how JWKS requests are answered, down
    /// to replacing the keys: for tests only. Without it the path answers 404.
    #[arg(long)]
    mode_endpoint: bool,
}

const DISCOVERY_SUFFIX: &str = "/.well-known/openid-configuration";

/// How JWKS requests are answered (`POST /__jwks/mode`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Mode {
    #[serde(default = "ok")]
    status: u16,
    #[serde(default)]
    delay_ms: u64,
    #[serde(default)]
    down: bool,
    #[serde(default)]
    cache_control: Option<String>,
    #[serde(default)]
    body: Option<String>,
}

fn ok() -> u16 {
    200
}

impl Default for Mode {
    fn default() -> Self {
        Mode {
            status: 200,
            delay_ms: 0,
            down: false,
            cache_control: None,
            body: None,
        }
    }
}

/// How one kind of document is answered, and what was asked of it.
#[derive(Default)]
struct Served {
    mode: Mode,
    requests: u64,
    served: u64,
}

#[derive(Default)]
struct State {
    jwks: Served,
    discovery: Served,
}

pub fn serve(args: JwksArgs) -> Result<(), String> {
    let has_keys = std::fs::read_dir(&args.keys)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|e| e.path().extension().is_some_and(|x| x == "pem"))
        })
        .unwrap_or(false);
    if !has_keys {
        signing_keys::generate_es256(&args.keys, "demo-es256")?;
    }
    let server = Server::bind(&args.listen)?;
    server.announce();
    let state = Mutex::new(State::default());
    let issuer = args.issuer.clone();
    let jwks_uri = args.jwks_uri.unwrap_or_else(|| {
        format!(
            "{}/.well-known/jwks.json",
            args.issuer.trim_end_matches('/')
        )
    });
    let keys = args.keys;
    let mode_endpoint = args.mode_endpoint;
    server.serve(move |request| {
        if let Some(admin) = request.path().strip_prefix("/__jwks/") {
            let (status, body) = admin_answer(admin, request, &state, mode_endpoint);
            Response::json(status, body).into()
        } else if request.path().ends_with(DISCOVERY_SUFFIX) {
            answer(
                &state,
                |s| &mut s.discovery,
                || Ok(discovery_document(&issuer, &jwks_uri)),
            )
        } else {
            answer(&state, |s| &mut s.jwks, || jwks_document(&keys))
        }
    });
    Ok(())
}

/// Answers a request for one kind of document the way its mode says.
fn answer(
    state: &Mutex<State>,
    kind: fn(&mut State) -> &mut Served,
    document: impl FnOnce() -> Result<String, String>,
) -> Reply {
    let mode = {
        let mut state = lock(state);
        let served = kind(&mut state);
        served.requests += 1;
        served.mode.clone()
    };
    if mode.delay_ms > 0 {
        std::thread::sleep(Duration::from_millis(mode.delay_ms.min(MAX_DELAY_MS)));
    }
    if mode.down {
        return Reply::Hangup;
    }
    let body = match &mode.body {
        Some(raw) => raw.clone(),
        None => match document() {
            Ok(document) => document,
            Err(err) => {
                eprintln!("wasmgate-demo: {err}");
                return Response::json(500, json!({"error": err}).to_string()).into();
            }
        },
    };
    if mode.status == 200 {
        kind(&mut lock(state)).served += 1;
    }
    let mut response = Response::json(mode.status, body);
    if let Some(value) = mode.cache_control {
        response = response.header("cache-control", value);
    }
    response.into()
}

fn admin_answer(
    admin: &str,
    request: &Request,
    state: &Mutex<State>,
    mode_endpoint: bool,
) -> (u16, String) {
    match (request.method.as_str(), admin) {
        ("GET", "stats") => {
            let state = lock(state);
            (
                200,
                json!({"requests": state.jwks.requests, "served": state.jwks.served,
                       "discovery_requests": state.discovery.requests,
                       "discovery_served": state.discovery.served})
                .to_string(),
            )
        }
        ("POST", "mode" | "discovery") if !mode_endpoint => (
            404,
            json!({"error": "POST /__jwks/mode and /__jwks/discovery are off: start the issuer with --mode-endpoint"})
                .to_string(),
        ),
        ("POST", which @ ("mode" | "discovery")) => {
            let text = if request.body.is_empty() {
                b"{}".as_slice()
            } else {
                &request.body
            };
            match serde_json::from_slice::<Mode>(text) {
                Ok(mode) => {
                    let mut state = lock(state);
                    let served = if which == "mode" {
                        &mut state.jwks
                    } else {
                        &mut state.discovery
                    };
                    served.mode = mode;
                    (200, json!({"ok": true}).to_string())
                }
                Err(e) => (400, json!({"error": e.to_string()}).to_string()),
            }
        }
        _ => (404, json!({"error": "unknown admin path"}).to_string()),
    }
}

/// An OpenID Connect discovery document with the members an IdP must publish
/// (OpenID Connect Discovery 1.0 §3) that make sense for a token issuer of the demo.
fn discovery_document(issuer: &str, jwks_uri: &str) -> String {
    let base = issuer.trim_end_matches('/');
    json!({
        "issuer": issuer,
        "jwks_uri": jwks_uri,
        "authorization_endpoint": format!("{base}/authorize"),
        "token_endpoint": format!("{base}/token"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256", "RS256"]
    })
    .to_string()
}

/// The JWKS of every key in the directory.
fn jwks_document(dir: &Path) -> Result<String, String> {
    let keys = signing_keys::load_dir(dir)?;
    let jwks: Vec<Value> = keys
        .iter()
        .filter_map(|key| match key.public_jwk() {
            Ok(jwk) => Some(jwk),
            Err(err) => {
                eprintln!("wasmgate-demo: {err}");
                None
            }
        })
        .collect();
    Ok(json!({ "keys": jwks }).to_string())
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
