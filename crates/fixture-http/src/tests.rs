use super::*;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;

/// A server answering `METHOD TARGET body=<body>`; `/hangup` closes without answering,
/// `/headers` answers with handler headers, good and bad.
fn start() -> SocketAddr {
    let server = Server::bind("127.0.0.1:0").unwrap();
    let address = server.address();
    std::thread::spawn(move || {
        server.serve(|request: &Request| match request.path() {
            "/hangup" => Reply::Hangup,
            "/headers" => Response::new(200)
                .header("x-good", "yes")
                .header("bad name", "no")
                .header("x-injected", "a\r\nx-evil: 1")
                .header("content-length", "999")
                .into(),
            _ => Response::json(
                200,
                format!(
                    "{} {} q={} a={} body={}",
                    request.method,
                    request.path(),
                    request.query(),
                    request.header("X-A").unwrap_or("-"),
                    String::from_utf8_lossy(&request.body)
                ),
            )
            .into(),
        })
    });
    address
}

struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

/// Status line, headers (lower-case names) and body of one answer.
type Answer = (String, Vec<(String, String)>, String);

impl Client {
    fn connect(address: SocketAddr) -> Client {
        let stream = TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
        self.writer.flush().unwrap();
    }

    fn answer(&mut self, head_request: bool) -> Answer {
        let mut status = String::new();
        self.reader.read_line(&mut status).unwrap();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            let (name, value) = line.trim_end().split_once(": ").unwrap();
            headers.push((name.to_owned(), value.to_owned()));
        }
        let length = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map_or(0, |(_, v)| v.parse().unwrap());
        let mut body = vec![0; if head_request { 0 } else { length }];
        self.reader.read_exact(&mut body).unwrap();
        (
            status.trim().to_owned(),
            headers,
            String::from_utf8(body).unwrap(),
        )
    }

    /// True when the server closed the connection (end of stream, nothing more).
    fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        matches!(self.reader.read_to_end(&mut rest), Ok(0))
    }
}

#[test]
fn keep_alive_pipelining_and_both_body_framings() {
    let mut client = Client::connect(start());
    // Three pipelined requests: a length-framed body, a chunked one (with an
    // extension and a trailer), and none.
    client.send(
        b"POST /a?x=1 HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhello\
          PUT /b HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n4\r\ndefg\r\n0\r\nx-trailer: t\r\n\r\n\
          GET /c HTTP/1.1\r\n\r\n",
    );
    assert_eq!(client.answer(false).2, "POST /a q=x=1 a=1 body=hello");
    assert_eq!(client.answer(false).2, "PUT /b q= a=- body=abcdefg");
    let (status, headers, body) = client.answer(false);
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "GET /c q= a=- body=")
    );
    assert!(headers.contains(&("content-type".into(), "application/json".into())));
    assert!(headers.contains(&("server".into(), "wasmgate-fixture".into())));
    // A request split across writes, still on the same connection.
    client.send(b"GET /d HT");
    std::thread::sleep(Duration::from_millis(20));
    client.send(b"TP/1.1\r\n\r\n");
    assert_eq!(client.answer(false).2, "GET /d q= a=- body=");
}

#[test]
fn connection_close_and_http_1_0_end_the_connection() {
    let address = start();
    let mut client = Client::connect(address);
    client.send(b"GET /a HTTP/1.1\r\nconnection: close\r\n\r\n");
    let (_, headers, _) = client.answer(false);
    assert!(headers.contains(&("connection".into(), "close".into())));
    assert!(client.closed());
    let mut client = Client::connect(address);
    client.send(b"GET /a HTTP/1.0\r\n\r\n");
    client.answer(false);
    assert!(client.closed());
}

#[test]
fn head_answers_carry_the_length_but_no_body() {
    let mut client = Client::connect(start());
    client.send(b"HEAD /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n");
    let (_, headers, body) = client.answer(true);
    assert!(headers.contains(&("content-length".into(), "20".into())));
    assert_eq!(body, "");
    assert_eq!(client.answer(false).2, "GET /b q= a=- body=");
}

#[test]
fn a_client_that_expects_100_continue_gets_it_before_sending_the_body() {
    let mut client = Client::connect(start());
    client.send(b"POST /a HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n");
    let mut interim = String::new();
    client.reader.read_line(&mut interim).unwrap();
    assert_eq!(interim, "HTTP/1.1 100 Continue\r\n");
    client.reader.read_line(&mut interim).unwrap();
    client.send(b"ok");
    assert_eq!(client.answer(false).2, "POST /a q= a=- body=ok");
}

#[test]
fn handler_headers_that_could_break_framing_are_dropped() {
    let mut client = Client::connect(start());
    client.send(b"GET /headers HTTP/1.1\r\n\r\n");
    let (_, headers, _) = client.answer(false);
    let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["server", "x-good", "content-length"]);
    assert!(headers.contains(&("content-length".into(), "0".into())));
}

#[test]
fn hangup_closes_without_an_answer() {
    let mut client = Client::connect(start());
    client.send(b"GET /hangup HTTP/1.1\r\n\r\n");
    assert!(client.closed());
}

#[test]
fn many_connections_at_once_are_all_served() {
    let address = start();
    let clients: Vec<_> = (0..200)
        .map(|i| {
            std::thread::spawn(move || {
                let mut client = Client::connect(address);
                client.send(format!("GET /{i} HTTP/1.1\r\n\r\n").as_bytes());
                client.answer(false).2
            })
        })
        .collect();
    for (i, client) in clients.into_iter().enumerate() {
        assert_eq!(client.join().unwrap(), format!("GET /{i} q= a=- body="));
    }
}

#[test]
fn requests_it_cannot_serve_are_refused_and_closed() {
    let address = start();
    let too_large = format!(
        "POST / HTTP/1.1\r\ncontent-length: {}\r\n\r\n",
        MAX_BODY + 1
    );
    let huge_chunk = format!(
        "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n",
        MAX_BODY + 1
    );
    // Exactly MAX_HEAD bytes of a head that never ends (all of it read, so closing
    // the connection does not reset it under the answer).
    let start_of_head = "GET / HTTP/1.1\r\nx-a: ";
    let long_head = format!(
        "{start_of_head}{}",
        "a".repeat(MAX_HEAD - start_of_head.len())
    );
    let cases: [(&[u8], &str); 8] = [
        (b"NOT HTTP\r\n\r\n", "HTTP/1.1 400 Bad Request"),
        (
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
            "HTTP/1.1 400 Bad Request",
        ),
        (
            b"POST / HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
            "HTTP/1.1 400 Bad Request",
        ),
        (
            b"POST / HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n",
            "HTTP/1.1 501 Not Implemented",
        ),
        (
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            "HTTP/1.1 400 Bad Request",
        ),
        (too_large.as_bytes(), "HTTP/1.1 413 Content Too Large"),
        (huge_chunk.as_bytes(), "HTTP/1.1 413 Content Too Large"),
        (
            long_head.as_bytes(),
            "HTTP/1.1 431 Request Header Fields Too Large",
        ),
    ];
    for (request, status) in cases {
        let mut client = Client::connect(address);
        client.send(request);
        let (got, headers, _) = client.answer(false);
        assert_eq!(got, status, "{}", String::from_utf8_lossy(&request[..40]));
        assert!(headers.contains(&("connection".into(), "close".into())));
    }
}
