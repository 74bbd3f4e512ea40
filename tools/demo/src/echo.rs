//! The echo upstream: answers with the request it received, so a test can assert
//! exactly what Envoy forwarded.
//!
//! Response body:
//! `{"service", "method", "path", "query", "headers": {name: [values]}, "body"}`
//! with header names lower-cased and repeated headers kept in order.
//!
//! A request can steer the answer (for tests of retries, timeouts and response rules):
//! `x-echo-status: 503` sets the status, `x-echo-delay-ms: 1500` waits first, and each
//! `x-echo-response-header: name=value` adds a response header.
//! `GET /__echo/stats` returns `{"requests": N}` (requests served, stats excluded).

use clap::Args;
use serde_json::{json, Map, Value};
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tiny_http::{Header, Request, Response, Server};

const MAX_ECHOED_BODY: u64 = 64 * 1024;
const MAX_DELAY_MS: u64 = 60_000;

#[derive(Args)]
pub struct EchoArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Name reported in every answer (`service`), to tell upstreams apart.
    #[arg(long, default_value = "echo")]
    name: String,
}

pub fn serve(args: EchoArgs) -> Result<(), String> {
    let server =
        Server::http(&args.listen).map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let address = server
        .server_addr()
        .to_ip()
        .ok_or("the echo server is not on an IP socket")?;
    println!("listening on http://{address}");
    let name: Arc<str> = Arc::from(args.name);
    let served = Arc::new(AtomicU64::new(0));
    for request in server.incoming_requests() {
        let name = Arc::clone(&name);
        let served = Arc::clone(&served);
        std::thread::spawn(move || answer(request, &name, &served));
    }
    Ok(())
}

fn answer(mut request: Request, name: &str, served: &AtomicU64) {
    if request.url() == "/__echo/stats" {
        let body = json!({ "requests": served.load(Ordering::SeqCst) }).to_string();
        let _ = request.respond(json_response(body, 200));
        return;
    }
    served.fetch_add(1, Ordering::SeqCst);

    let mut headers: Map<String, Value> = Map::new();
    let mut status = 200;
    let mut delay_ms = 0;
    let mut extra_headers = Vec::new();
    for header in request.headers() {
        let key = header.field.as_str().as_str().to_ascii_lowercase();
        let value = header.value.as_str().to_owned();
        match key.as_str() {
            "x-echo-status" => status = value.trim().parse().unwrap_or(200),
            "x-echo-delay-ms" => {
                delay_ms = value.trim().parse::<u64>().unwrap_or(0).min(MAX_DELAY_MS)
            }
            "x-echo-response-header" => {
                if let Some((n, v)) = value.split_once('=') {
                    extra_headers.push((n.trim().to_owned(), v.trim().to_owned()));
                }
            }
            _ => {}
        }
        if let Value::Array(values) = headers
            .entry(key)
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            values.push(Value::String(value));
        }
    }

    let mut body = Vec::new();
    let _ = request
        .as_reader()
        .take(MAX_ECHOED_BODY)
        .read_to_end(&mut body);
    let (path, query) = match request.url().split_once('?') {
        Some((path, query)) => (path.to_owned(), query.to_owned()),
        None => (request.url().to_owned(), String::new()),
    };
    let echoed = json!({
        "service": name,
        "method": request.method().as_str(),
        "path": path,
        "query": query,
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });

    if delay_ms > 0 {
        std::thread::sleep(Duration::from_millis(delay_ms));
    }
    let mut response = json_response(echoed.to_string(), status);
    for (n, v) in extra_headers {
        if let Ok(header) = Header::from_bytes(n.as_bytes(), v.as_bytes()) {
            response.add_header(header);
        }
    }
    let _ = request.respond(response);
}

fn json_response(body: String, status: u16) -> Response<std::io::Cursor<Vec<u8>>> {
    let mut response = Response::from_string(body).with_status_code(status);
    if let Ok(header) = Header::from_bytes(&b"content-type"[..], &b"application/json"[..]) {
        response.add_header(header);
    }
    response
}
