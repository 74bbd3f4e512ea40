//! The key store's HTTP/1.1 transport: a thread per connection, keep-alive, bodies
//! read and ignored; `httparse` does the parsing.
//!
//! Why not tiny_http (the demo's server): its connection pool (0.12) can leave a new
//! connection queued with no thread to run it when several arrive at once, and since
//! a keep-alive connection holds its thread for its whole life, that connection then
//! waits indefinitely. Envoy opens connections to the key store exactly that way, in
//! bursts, and keeps them alive; a stalled lookup would turn into a 503 at the timeout.

use std::io::{BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Largest request head (request line and headers).
const MAX_HEAD: usize = 16 * 1024;
/// Largest request body read (and ignored); larger ones close the connection.
const MAX_BODY: u64 = 64 * 1024;
const MAX_HEADERS: usize = 64;
/// Connections served at once; more are closed on arrival.
const MAX_CONNECTIONS: usize = 1024;
/// An idle keep-alive connection is closed after this long, freeing its thread.
const IDLE: Duration = Duration::from_secs(600);

/// What a handler sees of a request.
pub struct RequestHead {
    pub method: String,
    /// The request target, query included.
    pub target: String,
}

pub struct Reply {
    pub status: u16,
    pub body: String,
}

pub type Handler = dyn Fn(&RequestHead) -> Reply + Send + Sync;

/// Binds `address` and returns the listener with the address it got (port 0 picks).
pub fn bind(address: &str) -> Result<(TcpListener, SocketAddr), String> {
    let listener =
        TcpListener::bind(address).map_err(|e| format!("cannot listen on {address}: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    Ok((listener, local))
}

/// Serves until the process ends.
pub fn serve(listener: TcpListener, handler: Arc<Handler>) {
    let open = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::SeqCst);
            continue; // dropped: closed at once
        }
        let (handler, open) = (Arc::clone(&handler), Arc::clone(&open));
        let spawned = std::thread::Builder::new().spawn(move || {
            connection(stream, handler.as_ref());
            open.fetch_sub(1, Ordering::SeqCst);
        });
        if spawned.is_err() {
            eprintln!("wasmgate-keystore: cannot start a connection thread");
        }
    }
}

fn connection(stream: TcpStream, handler: &Handler) {
    let _ = stream.set_read_timeout(Some(IDLE));
    let _ = stream.set_nodelay(true);
    let Ok(mut reader) = stream.try_clone() else {
        return;
    };
    let mut writer = BufWriter::new(stream);
    let mut buffer: Vec<u8> = Vec::with_capacity(4096);
    loop {
        let (head, consumed, body_length, keep_alive) = match read_head(&mut reader, &mut buffer) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return, // closed between requests
            Err(status) => {
                let _ = write_reply(
                    &mut writer,
                    &Reply {
                        status,
                        body: String::new(),
                    },
                    false,
                );
                return;
            }
        };
        buffer.drain(..consumed);
        if !skip_body(&mut reader, &mut buffer, body_length) {
            return;
        }
        let reply = handler(&head);
        if write_reply(&mut writer, &reply, keep_alive).is_err() || !keep_alive {
            return;
        }
    }
}

type Head = (RequestHead, usize, u64, bool);

/// Reads until a whole request head is buffered. `Ok(None)`: the peer closed cleanly;
/// `Err(status)`: answer that status and close.
fn read_head(reader: &mut TcpStream, buffer: &mut Vec<u8>) -> Result<Option<Head>, u16> {
    loop {
        if !buffer.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut request = httparse::Request::new(&mut headers);
            match request.parse(buffer) {
                Ok(httparse::Status::Complete(consumed)) => {
                    return parsed(&request, consumed).map(Some);
                }
                Ok(httparse::Status::Partial) if buffer.len() < MAX_HEAD => {}
                Ok(httparse::Status::Partial) => return Err(431),
                Err(_) => return Err(400),
            }
        }
        let mut chunk = [0u8; 4096];
        match reader.read(&mut chunk) {
            Ok(0) if buffer.is_empty() => return Ok(None),
            Ok(0) => return Err(400),
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(_) => return Ok(None),
        }
    }
}

fn parsed(request: &httparse::Request, consumed: usize) -> Result<Head, u16> {
    let method = request.method.unwrap_or_default().to_owned();
    let target = request.path.unwrap_or_default().to_owned();
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
    };
    if header("transfer-encoding").is_some() {
        return Err(411); // the key store takes no bodies, let alone chunked ones
    }
    let body_length = match header("content-length") {
        None => 0,
        Some(text) => text.parse::<u64>().map_err(|_| 400u16)?,
    };
    let connection = header("connection").unwrap_or_default();
    let keep_alive = match request.version {
        Some(1) => connection != "close",
        _ => connection == "keep-alive",
    };
    Ok((
        RequestHead { method, target },
        consumed,
        body_length,
        keep_alive,
    ))
}

/// Reads and drops a request body, part of which may already be buffered.
fn skip_body(reader: &mut TcpStream, buffer: &mut Vec<u8>, length: u64) -> bool {
    if length > MAX_BODY {
        return false;
    }
    let buffered = (buffer.len() as u64).min(length) as usize;
    buffer.drain(..buffered);
    let rest = length - buffered as u64;
    std::io::copy(&mut reader.take(rest), &mut std::io::sink()).is_ok_and(|n| n == rest)
}

fn write_reply(
    writer: &mut BufWriter<TcpStream>,
    reply: &Reply,
    keep_alive: bool,
) -> std::io::Result<()> {
    write!(
        writer,
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncache-control: no-store\r\ncontent-length: {}\r\n{}\r\n",
        reply.status,
        reason(reply.status),
        reply.body.len(),
        if keep_alive { "" } else { "connection: close\r\n" },
    )?;
    writer.write_all(reply.body.as_bytes())?;
    writer.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};

    fn start() -> SocketAddr {
        let (listener, address) = bind("127.0.0.1:0").unwrap();
        let handler: Arc<Handler> = Arc::new(|head: &RequestHead| Reply {
            status: 200,
            body: format!("{} {}", head.method, head.target),
        });
        std::thread::spawn(move || serve(listener, handler));
        address
    }

    fn read_reply(reader: &mut BufReader<TcpStream>) -> (String, String) {
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.strip_prefix("content-length: ") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        (status.trim().to_owned(), String::from_utf8(body).unwrap())
    }

    #[test]
    fn keep_alive_pipelining_and_bodies() {
        let address = start();
        let stream = TcpStream::connect(address).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        // Two pipelined requests, the first with a body to skip.
        writer
            .write_all(b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhelloGET /b?q=1 HTTP/1.1\r\nhost: x\r\n\r\n")
            .unwrap();
        assert_eq!(
            read_reply(&mut reader),
            ("HTTP/1.1 200 OK".into(), "POST /a".into())
        );
        assert_eq!(
            read_reply(&mut reader),
            ("HTTP/1.1 200 OK".into(), "GET /b?q=1".into())
        );
        // A request split across writes.
        writer.write_all(b"GET /c HT").unwrap();
        writer.flush().unwrap();
        writer.write_all(b"TP/1.1\r\n\r\n").unwrap();
        assert_eq!(read_reply(&mut reader).1, "GET /c");
    }

    #[test]
    fn many_connections_at_once_are_all_served() {
        let address = start();
        let clients: Vec<_> = (0..32)
            .map(|i| {
                std::thread::spawn(move || {
                    let stream = TcpStream::connect(address).unwrap();
                    stream
                        .set_read_timeout(Some(Duration::from_secs(5)))
                        .unwrap();
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut writer = stream;
                    write!(writer, "GET /{i} HTTP/1.1\r\n\r\n").unwrap();
                    read_reply(&mut reader).1
                })
            })
            .collect();
        for (i, client) in clients.into_iter().enumerate() {
            assert_eq!(client.join().unwrap(), format!("GET /{i}"));
        }
    }

    #[test]
    fn malformed_and_chunked_requests_are_refused() {
        let address = start();
        for (request, status) in [
            (&b"NOT HTTP\r\n\r\n"[..], "HTTP/1.1 400 Bad Request"),
            (
                b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
                "HTTP/1.1 411 Length Required",
            ),
        ] {
            let mut stream = TcpStream::connect(address).unwrap();
            stream.write_all(request).unwrap();
            let mut reader = BufReader::new(stream);
            assert_eq!(read_reply(&mut reader).0, status);
        }
    }
}
