"""One HTTP/2 request the way a test needs to spell it: a lower-case method, a header
name with an underscore, a path left exactly as written. High-level clients correct
such requests (or cannot speak HTTP/2 at all); the `h2` protocol library sends them
as given. One request per connection, over TLS (ALPN h2) or cleartext (prior
knowledge)."""

import socket
import ssl
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events


@dataclass
class Http2Answer:
    """`status` is None when the server reset the stream instead of answering
    (`reset` then holds the HTTP/2 error code)."""

    status: int = None
    headers: dict = field(default_factory=dict)
    body: bytes = b""
    reset: int = None
    server_certificate: bytes = None  # DER, over TLS


def http2_request(port: int, method: str, path: str, headers=None, body: bytes = b"",
                  context: ssl.SSLContext = None, timeout: float = 10) -> Http2Answer:
    """`headers`: a dict, or a list of (name, value) pairs to send a name more than once
    (HTTP/2 clients send each cookie as a header of its own)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    answer = Http2Answer()
    try:
        sock = raw
        if context is not None:
            context.set_alpn_protocols(["h2"])
            sock = context.wrap_socket(raw)
            assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()
            answer.server_certificate = sock.getpeercert(binary_form=True)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding="utf-8", validate_outbound_headers=False,
            normalize_outbound_headers=False))
        conn.initiate_connection()
        request = [(":method", method), (":path", path), (":scheme", "https" if context else "http"),
                   (":authority", "localhost"),
                   *(headers.items() if isinstance(headers, dict) else headers or [])]
        conn.send_headers(1, request, end_stream=not body)
        if body:
            conn.send_data(1, body, end_stream=True)
        sock.sendall(conn.data_to_send())
        while True:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection without an answer")
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    answer.headers = dict(event.headers)
                    answer.status = int(answer.headers[":status"])
                elif isinstance(event, h2.events.DataReceived):
                    answer.body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamReset):
                    answer.reset = int(event.error_code)
                    return answer
                elif isinstance(event, h2.events.StreamEnded):
                    return answer
                elif isinstance(event, h2.events.ConnectionTerminated):
                    answer.reset = int(event.error_code)
                    return answer
            sock.sendall(conn.data_to_send())
    finally:
        raw.close()
