//! The JWKS issuer: serves the public keys of a key directory as a JWKS, counts the
//! fetches, and misbehaves on demand, so tests can prove how the JWT filter copes.
//!
//! * `GET <any path>` (not under `/__jwks/`): the JWKS of `--keys DIR`, read afresh
//!   on every request (add a `<kid>.<ALG>.pem` file to rotate).
//! * `GET /__jwks/stats`: `{"requests": N, "served": M}`, JWKS requests received and
//!   answered with 200.
//! * `POST /__jwks/mode` with a JSON body sets how JWKS requests are answered
//!   (missing fields take their defaults):
//!   `{"status": 200, "delay_ms": 0, "down": false, "cache_control": null,
//!   "body": null}`. `down` closes the connection without an answer; `body`
//!   replaces the JWKS with raw text (a broken document); `cache_control` adds that
//!   header. The admin paths are never affected.
//!
//! A plain HTTP/1.1 server over `std::net`, one thread per connection, one request per
//! connection (`connection: close`): it must be able to drop a connection mid-request,
//! which a full server library would not let it do.

use crate::signing_keys;
use clap::Args;
use serde::Deserialize;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const MAX_REQUEST_HEAD: usize = 16 * 1024;
const MAX_REQUEST_BODY: usize = 64 * 1024;
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
}

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

#[derive(Default)]
struct State {
    mode: Mode,
    requests: u64,
    served: u64,
}

struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
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
    let listener = TcpListener::bind(&args.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let address = listener
        .local_addr()
        .map_err(|e| format!("no local address: {e}"))?;
    println!("listening on http://{address}");
    let state = Arc::new(Mutex::new(State::default()));
    let keys = Arc::new(args.keys);
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let state = Arc::clone(&state);
        let keys = Arc::clone(&keys);
        std::thread::spawn(move || {
            let _ = handle(stream, &state, &keys);
        });
    }
    Ok(())
}

fn handle(mut stream: TcpStream, state: &Mutex<State>, keys: &Path) -> Result<(), String> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let Some(request) = read_request(&stream)? else {
        return Ok(());
    };
    if let Some(admin) = request.path.strip_prefix("/__jwks/") {
        let (status, body) = admin_answer(admin, &request, state);
        return respond(
            &mut stream,
            status,
            "application/json",
            None,
            body.as_bytes(),
        );
    }

    let mode = {
        let mut state = lock(state);
        state.requests += 1;
        state.mode.clone()
    };
    if mode.delay_ms > 0 {
        std::thread::sleep(Duration::from_millis(mode.delay_ms.min(MAX_DELAY_MS)));
    }
    if mode.down {
        // Drop the connection without a word, like a server that went away.
        let _ = stream.shutdown(std::net::Shutdown::Both);
        return Ok(());
    }
    let body = match &mode.body {
        Some(raw) => raw.clone().into_bytes(),
        None => jwks_document(keys)?.into_bytes(),
    };
    if mode.status == 200 {
        lock(state).served += 1;
    }
    respond(
        &mut stream,
        mode.status,
        "application/json",
        mode.cache_control.as_deref(),
        &body,
    )
}

fn admin_answer(admin: &str, request: &Request, state: &Mutex<State>) -> (u16, String) {
    match (request.method.as_str(), admin) {
        ("GET", "stats") => {
            let state = lock(state);
            (
                200,
                json!({"requests": state.requests, "served": state.served}).to_string(),
            )
        }
        ("POST", "mode") => {
            let text = if request.body.is_empty() {
                b"{}".as_slice()
            } else {
                &request.body
            };
            match serde_json::from_slice::<Mode>(text) {
                Ok(mode) => {
                    lock(state).mode = mode;
                    (200, json!({"ok": true}).to_string())
                }
                Err(e) => (400, json!({"error": e.to_string()}).to_string()),
            }
        }
        _ => (404, json!({"error": "unknown admin path"}).to_string()),
    }
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

fn read_request(stream: &TcpStream) -> Result<Option<Request>, String> {
    let mut reader = BufReader::new(stream);
    let mut head_bytes = 0usize;
    let mut content_length = 0usize;
    let mut first = String::new();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(None);
        }
        head_bytes += line.len();
        if head_bytes > MAX_REQUEST_HEAD {
            return Err("request head too large".into());
        }
        let line = line.trim_end();
        if first.is_empty() {
            first = line.to_owned();
            continue;
        }
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                content_length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut parts = first.split(' ');
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default();
    let path = target.split('?').next().unwrap_or_default().to_owned();
    let mut body = vec![0; content_length.min(MAX_REQUEST_BODY)];
    reader.read_exact(&mut body).map_err(|e| e.to_string())?;
    Ok(Some(Request { method, path, body }))
}

fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    cache_control: Option<&str>,
    body: &[u8],
) -> Result<(), String> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n",
        reason(status),
        body.len()
    );
    if let Some(value) = cache_control {
        head.push_str(&format!("cache-control: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body))
        .and_then(|()| stream.flush())
        .map_err(|e| e.to_string())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
