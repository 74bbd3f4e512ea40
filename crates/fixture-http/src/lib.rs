//! The HTTP/1.1 server of wasmgate's demo and test servers: the echo upstream and the
//! JWKS issuer (`wasmgate-demo`).
//!
//! **A test and demo fixture only**, never a server to deploy: one thread per
//! connection, a 1,024-connection cap past which connections are closed unanswered,
//! per-read timeouts only (a slow client holds its thread), no graceful shutdown. The
//! one service people deploy, the key store (`wasmgate-keystore serve`), runs on tokio
//! and hyper instead (docs/keystore.md).
//!
//! One thread per connection, keep-alive and pipelining, request bodies framed by
//! `Content-Length` or chunked, every size bounded; `httparse` parses the head. A
//! handler is a plain function from a whole [`Request`] to a [`Reply`]. It may block
//! (the echo's `x-echo-delay-ms`): it only holds its own connection's thread.
//!
//! Why not a server library: tiny_http 0.12 (used here before) can leave a new
//! connection queued with no thread to run it when many arrive at once, and since a
//! keep-alive connection holds its thread for its whole life, that connection then
//! waits indefinitely: of 200 simultaneous first requests through Envoy to the echo,
//! about 23 got 504. Envoy opens upstream connections exactly that way, in bursts,
//! and keeps them alive.
//!
//! It is a fixture, not a web server to build on: no TLS, no HTTP/2, no streaming;
//! every body is read whole into memory (at most [`MAX_BODY`]).

mod connection;
mod response;

pub use response::{Reply, Response};

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Largest request head (request line and headers), in bytes. Generous: tests send
/// tokens of up to 100 KiB through Envoy configs that allow 256 KiB of headers.
pub const MAX_HEAD: usize = 256 * 1024;
/// Most header lines in one request.
pub const MAX_HEADERS: usize = 256;
/// Largest request body, in bytes; a larger one is answered 413 and the connection
/// closed.
pub const MAX_BODY: usize = 1024 * 1024;
/// Connections served at once; more are closed on arrival.
pub const MAX_CONNECTIONS: usize = 1024;
/// An idle keep-alive connection is closed after this long, freeing its thread.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// A client that does not take its answer within this long loses the connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// A request as the handler sees it: head and whole body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// As sent, e.g. `GET`.
    pub method: String,
    /// The request target as sent, query string included.
    pub target: String,
    /// In the order received, names lower-cased, values as text (bytes that are not
    /// UTF-8 become U+FFFD).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The target without its query string.
    pub fn path(&self) -> &str {
        self.target
            .split_once('?')
            .map_or(self.target.as_str(), |(path, _)| path)
    }

    /// The query string without `?`; empty when there is none.
    pub fn query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, query)| query)
    }

    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What serves the requests: called once per request, on its connection's thread.
pub type Handler = dyn Fn(&Request) -> Reply + Send + Sync;

/// A bound listener, not yet serving.
pub struct Server {
    listener: TcpListener,
    address: SocketAddr,
}

impl Server {
    /// Binds `address` (`127.0.0.1:0` picks a free port).
    pub fn bind(address: &str) -> Result<Server, String> {
        let listener =
            TcpListener::bind(address).map_err(|e| format!("cannot listen on {address}: {e}"))?;
        let address = listener
            .local_addr()
            .map_err(|e| format!("cannot read the bound address: {e}"))?;
        Ok(Server { listener, address })
    }

    /// The address actually bound.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Prints `listening on http://ADDR` on stdout, the line every project server
    /// prints once it is bound (the test harness reads the port from it).
    pub fn announce(&self) {
        println!("listening on http://{}", self.address);
        let _ = std::io::stdout().flush();
    }

    /// Serves until the process ends.
    pub fn serve(self, handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) {
        let handler: Arc<Handler> = Arc::new(handler);
        let open = Arc::new(AtomicUsize::new(0));
        for stream in self.listener.incoming() {
            let Ok(stream) = stream else { continue };
            if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                open.fetch_sub(1, Ordering::SeqCst);
                continue; // dropped: closed at once
            }
            let (handler, finished) = (Arc::clone(&handler), Arc::clone(&open));
            let spawned = std::thread::Builder::new().spawn(move || {
                connection::serve(stream, handler.as_ref());
                finished.fetch_sub(1, Ordering::SeqCst);
            });
            if spawned.is_err() {
                // The closure (and the stream in it) is dropped: the client sees a close.
                open.fetch_sub(1, Ordering::SeqCst);
                eprintln!("wasmgate-fixture-http: cannot start a connection thread");
            }
        }
    }
}

#[cfg(test)]
mod tests;
