//! One connection: read a request, ask the handler, write the answer, and again, until
//! the peer closes, asks to close, stays idle too long, or sends something refused.

use crate::response::{Reply, Response};
use crate::{Handler, Request, IDLE_TIMEOUT, MAX_BODY, MAX_HEAD, MAX_HEADERS, WRITE_TIMEOUT};
use std::io::{BufWriter, Read, Write};
use std::net::{Shutdown, TcpStream};

/// Longest line of chunked framing (a chunk size with its extensions, a trailer).
const MAX_LINE: usize = 8 * 1024;

/// Why a connection stops reading requests.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    /// The peer closed, stayed silent past the idle timeout, or the socket failed:
    /// there is nobody to answer.
    Gone,
    /// A request this server refuses: answer this status, then close.
    Refuse(u16),
}

/// How the body of a request is delimited (RFC 9112 §6).
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
}

struct Incoming {
    request: Request,
    keep_alive: bool,
}

pub(crate) fn serve(stream: TcpStream, handler: &Handler) {
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut writer = BufWriter::new(write_half);
    let mut reader = Reader {
        stream,
        buffer: Vec::with_capacity(4096),
    };
    loop {
        let incoming = match reader.next_request(&mut writer) {
            Ok(incoming) => incoming,
            Err(Stop::Gone) => return,
            Err(Stop::Refuse(status)) => {
                let _ = Response::new(status).write_to(&mut writer, "GET", false);
                let _ = reader.stream.shutdown(Shutdown::Write);
                return;
            }
        };
        let Incoming {
            request,
            keep_alive,
        } = incoming;
        match handler(&request) {
            Reply::Send(response) => {
                let written = response.write_to(&mut writer, &request.method, keep_alive);
                if written.is_err() || !keep_alive {
                    let _ = reader.stream.shutdown(Shutdown::Write);
                    return;
                }
            }
            Reply::Hangup => {
                let _ = reader.stream.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

/// The read half of a connection, with the bytes received but not used yet (the start
/// of a pipelined request, the rest of a body).
struct Reader {
    stream: TcpStream,
    buffer: Vec<u8>,
}

/// A parsed request head, owned.
struct Head {
    method: String,
    target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    version: u8,
    headers: Vec<(String, String)>,
}

impl Reader {
    fn next_request(&mut self, writer: &mut impl Write) -> Result<Incoming, Stop> {
        let head = self.read_head()?;
        let framing = head.framing()?;
        let has_body = framing != Framing::Length(0);
        if has_body && head.version == 1 && head.expects_continue() {
            writer
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .and_then(|()| writer.flush())
                .map_err(|_| Stop::Gone)?;
        }
        let body = match framing {
            Framing::Length(length) => self.take(length)?,
            Framing::Chunked => self.read_chunked()?,
        };
        let keep_alive = head.keep_alive();
        Ok(Incoming {
            request: Request {
                method: head.method,
                target: head.target,
                headers: head.headers,
                body,
            },
            keep_alive,
        })
    }

    /// Reads more bytes; `Gone` at the end of the stream or on a socket error (the idle
    /// timeout included).
    fn fill(&mut self) -> Result<(), Stop> {
        let mut chunk = [0u8; 8192];
        match self.stream.read(&mut chunk) {
            Ok(0) | Err(_) => Err(Stop::Gone),
            Ok(n) => {
                self.buffer.extend_from_slice(&chunk[..n]);
                Ok(())
            }
        }
    }

    fn read_head(&mut self) -> Result<Head, Stop> {
        loop {
            if !self.buffer.is_empty() {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut parsed = httparse::Request::new(&mut headers);
                let complete = match parsed.parse(&self.buffer) {
                    Ok(httparse::Status::Complete(consumed)) => {
                        Some((Head::from_parsed(&parsed), consumed))
                    }
                    Ok(httparse::Status::Partial) if self.buffer.len() < MAX_HEAD => None,
                    Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
                        return Err(Stop::Refuse(431))
                    }
                    Err(_) => return Err(Stop::Refuse(400)),
                };
                if let Some((head, consumed)) = complete {
                    self.buffer.drain(..consumed);
                    return Ok(head);
                }
            }
            self.fill()?;
        }
    }

    fn take(&mut self, length: usize) -> Result<Vec<u8>, Stop> {
        while self.buffer.len() < length {
            self.fill()?;
        }
        Ok(self.buffer.drain(..length).collect())
    }

    /// One line of chunked framing, without its CRLF.
    fn read_line(&mut self) -> Result<String, Stop> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|pair| pair == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buffer[..end]).into_owned();
                self.buffer.drain(..end + 2);
                return Ok(line);
            }
            if self.buffer.len() > MAX_LINE {
                return Err(Stop::Refuse(400));
            }
            self.fill()?;
        }
    }

    /// A chunked body (RFC 9112 §7.1); chunk extensions and trailers are dropped.
    fn read_chunked(&mut self) -> Result<Vec<u8>, Stop> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line()?;
            let size_text = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_text, 16).map_err(|_| Stop::Refuse(400))?;
            if size == 0 {
                break;
            }
            if body.len().saturating_add(size) > MAX_BODY {
                return Err(Stop::Refuse(413));
            }
            body.extend(self.take(size)?);
            if !self.read_line()?.is_empty() {
                return Err(Stop::Refuse(400));
            }
        }
        for _ in 0..=MAX_HEADERS {
            if self.read_line()?.is_empty() {
                return Ok(body);
            }
        }
        Err(Stop::Refuse(431))
    }
}

impl Head {
    fn from_parsed(parsed: &httparse::Request<'_, '_>) -> Head {
        Head {
            method: parsed.method.unwrap_or_default().to_owned(),
            target: parsed.path.unwrap_or_default().to_owned(),
            version: parsed.version.unwrap_or(1),
            headers: parsed
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect(),
        }
    }

    /// Every comma-separated element of every `name` header, trimmed, lower-cased.
    fn list(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .map(|element| element.trim().to_ascii_lowercase())
            .filter(|element| !element.is_empty())
            .collect()
    }

    fn keep_alive(&self) -> bool {
        let connection = self.list("connection");
        if self.version == 1 {
            !connection.iter().any(|c| c == "close")
        } else {
            connection.iter().any(|c| c == "keep-alive")
        }
    }

    fn expects_continue(&self) -> bool {
        self.list("expect").iter().any(|e| e == "100-continue")
    }

    fn framing(&self) -> Result<Framing, Stop> {
        let codings = self.list("transfer-encoding");
        let lengths = self.list("content-length");
        if !codings.is_empty() {
            // Both at once is how requests are smuggled past a proxy (RFC 9112 §6.3).
            if !lengths.is_empty() {
                return Err(Stop::Refuse(400));
            }
            return if codings.iter().all(|c| c == "chunked") {
                Ok(Framing::Chunked)
            } else {
                Err(Stop::Refuse(501))
            };
        }
        let Some(first) = lengths.first() else {
            return Ok(Framing::Length(0));
        };
        if lengths.iter().any(|l| l != first) {
            return Err(Stop::Refuse(400));
        }
        match first.parse::<usize>() {
            Ok(length) if length <= MAX_BODY => Ok(Framing::Length(length)),
            Ok(_) => Err(Stop::Refuse(413)),
            Err(_) => Err(Stop::Refuse(400)),
        }
    }
}
