"""An OpenTelemetry trace receiver for tests: OTLP/HTTP, protobuf encoding.

`OtlpReceiver().start()` listens on 127.0.0.1 (a port the kernel picks) and accepts
`POST /v1/traces` as a collector does: the body is an `ExportTraceServiceRequest`
(decoded with PyPI's `opentelemetry-proto`), the answer an empty
`ExportTraceServiceResponse`. `spans()` returns every span received so far, flattened
with its resource's attributes. Anything else is answered 404, and counted in
`refused`, so a test can tell "no spans" from "spans sent somewhere else".
"""

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto, Status


def _value(any_value):
    """An OTLP `AnyValue` as a Python value (str, int, float, bool, list, dict)."""
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in any_value.kvlist_value.values}
    return getattr(any_value, kind) if kind else None


def _attributes(key_values) -> dict:
    return {kv.key: _value(kv.value) for kv in key_values}


@dataclass
class Span:
    """One received span, ids as lower-case hex (as in `traceparent`)."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: str          # SPAN_KIND_SERVER, SPAN_KIND_CLIENT, ...
    status: str        # STATUS_CODE_UNSET, STATUS_CODE_OK, STATUS_CODE_ERROR
    attributes: dict
    resource: dict     # the resource's attributes (service.name, ...)
    scope: str         # the instrumentation scope's name
    start_ns: int = 0
    end_ns: int = 0
    events: list = field(default_factory=list)


class OtlpReceiver:
    """A collector endpoint in this process; `stop()` closes it."""

    def __init__(self):
        self._lock = threading.Lock()
        self._spans = []
        self.requests = 0
        self.refused = []  # (method, path, content-type) of requests not accepted
        self._server = None
        self._thread = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self._body()
                content_type = self.headers.get("content-type", "")
                if self.path != "/v1/traces" or content_type != "application/x-protobuf":
                    receiver._refuse(self, content_type)
                    return
                request = ExportTraceServiceRequest()
                try:
                    request.ParseFromString(body)
                except Exception:  # a body that is not an ExportTraceServiceRequest
                    receiver._refuse(self, content_type)
                    return
                receiver._add(request)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def _body(self) -> bytes:
                # Envoy's exporter streams its body chunked, with no content-length.
                if self.headers.get("transfer-encoding", "").lower() == "chunked":
                    body = b""
                    while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                        body += self.rfile.read(size)
                        self.rfile.readline()
                    while self.rfile.readline().strip():  # trailers, then the blank line
                        pass
                    return body
                return self.rfile.read(int(self.headers.get("content-length") or 0))

            def do_GET(self):  # noqa: N802
                receiver._refuse(self, self.headers.get("content-type", ""))

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def _refuse(self, handler, content_type):
        with self._lock:
            self.refused.append((handler.command, handler.path, content_type))
        handler.send_response(404)
        handler.send_header("content-length", "0")
        handler.end_headers()

    def _add(self, request):
        found = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    found.append(Span(
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        kind=SpanProto.SpanKind.Name(span.kind),
                        status=Status.StatusCode.Name(span.status.code),
                        attributes=_attributes(span.attributes),
                        resource=resource,
                        scope=scope_spans.scope.name,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        events=[event.name for event in span.events],
                    ))
        with self._lock:
            self.requests += 1
            self._spans.extend(found)

    def spans(self, trace_id: str = None) -> list:
        """Every span received so far (of one trace, with `trace_id`)."""
        with self._lock:
            return [s for s in self._spans if trace_id is None or s.trace_id == trace_id]

    def stop(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
