//! What a handler answers, and how it goes on the wire.

use std::io::{self, Write};

/// Every answer names the server, as real upstreams do (so that tests of a gateway's
/// response cleanup have something to remove).
const SERVER: &str = "wasmgate-fixture";

/// A handler's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Send(Response),
    /// Close the connection without a word, like a server that went away.
    Hangup,
}

impl From<Response> for Reply {
    fn from(response: Response) -> Self {
        Reply::Send(response)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Written in order. Framing headers (`content-length`, `transfer-encoding`,
    /// `connection`) are the server's business and skipped, as is any header whose
    /// name is not an HTTP token or whose value holds CR, LF or NUL.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// An answer with no headers and no body.
    pub fn new(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A JSON answer (`content-type: application/json`).
    pub fn json(status: u16, body: impl Into<String>) -> Self {
        Response::new(status)
            .header("content-type", "application/json")
            .body(body.into().into_bytes())
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn body(mut self, body: Vec<u8>) -> Self {
        self.body = body;
        self
    }

    /// Writes the answer to a request made with `method`. `keep_alive: false` adds
    /// `connection: close` (the caller closes afterwards).
    pub(crate) fn write_to(
        &self,
        out: &mut impl Write,
        method: &str,
        keep_alive: bool,
    ) -> io::Result<()> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nserver: {SERVER}\r\n",
            self.status,
            reason(self.status)
        );
        for (name, value) in &self.headers {
            if is_token(name) && !is_framing(name) && !value.contains(['\r', '\n', '\0']) {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        // RFC 9110 §6.4.1: 1xx, 204 and 304 answers have no body; a HEAD answer says
        // how long the body would have been and sends none.
        let bodiless = matches!(self.status, 100..=199 | 204 | 304);
        if !bodiless {
            head.push_str(&format!("content-length: {}\r\n", self.body.len()));
        }
        if !keep_alive {
            head.push_str("connection: close\r\n");
        }
        head.push_str("\r\n");
        out.write_all(head.as_bytes())?;
        if !bodiless && !method.eq_ignore_ascii_case("HEAD") {
            out.write_all(&self.body)?;
        }
        out.flush()
    }
}

fn is_framing(name: &str) -> bool {
    ["content-length", "transfer-encoding", "connection"]
        .iter()
        .any(|framing| name.eq_ignore_ascii_case(framing))
}

/// RFC 9110 §5.6.2 `token`.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}
