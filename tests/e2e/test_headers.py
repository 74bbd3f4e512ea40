"""The header filter (build/wasm/headers.wasm) in real Envoy, in front of the echo
upstream: what the upstream sees and what the client gets back. Every test runs with
the separate filter and with the combined module's `headers` stage (`deployment`)."""

import http.client
import re

import pytest
import requests

from harness import Seen
from harness.bootstrap import bootstrap, cluster, http_listener, route

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def gateway(deployment, echo, config):
    """Envoy with only the header filter, routing everything to the echo upstream.

    `server_header_transformation: PASS_THROUGH` lets the filter decide about the
    `server` header (Envoy's default would overwrite it after the filters ran)."""
    filters = deployment.filters(("headers", config))
    return bootstrap(
        [http_listener("main", filters, [route("/", "upstream", name="default")],
                       hcm_extra={"server_header_transformation": "PASS_THROUGH"})],
        [cluster("upstream", echo.host, echo.port)],
    )


def test_request_operations_reach_the_upstream(start_envoy, echo, deployment):
    envoy = start_envoy(gateway(deployment, echo, {
        "rules": [{
            "match": {"prefix": "/ops"},
            "request": {
                "set": {"x-gateway": "wasmgate"},
                "append": {"x-list": "from-gateway"},
                "if_absent": {"x-source": "edge", "x-keep": "gateway-value"},
                "remove": ["x-debug"],
                "rename": {"x-old-name": "x-new-name"},
            },
        }],
    }))
    resp = requests.get(envoy.url("/ops/a?q=1"), headers={
        "x-gateway": "client-value",
        "x-list": "from-client",
        "x-keep": "client-value",
        "x-debug": "1",
        "x-old-name": "moved",
    })
    assert resp.status_code == 200
    seen = Seen(resp)
    assert seen.path == "/ops/a" and seen.query == "q=1"
    assert seen.header("x-gateway") == "wasmgate"  # set overrides the client's value
    assert ",".join(seen.values("x-list")).replace(" ", "") == "from-client,from-gateway"
    assert seen.header("x-source") == "edge"  # if_absent fills in
    assert seen.header("x-keep") == "client-value"  # if_absent keeps
    assert seen.header("x-debug") is None
    assert seen.header("x-old-name") is None
    assert seen.header("x-new-name") == "moved"


def test_response_operations_reach_the_client(start_envoy, echo, deployment):
    envoy = start_envoy(gateway(deployment, echo, {
        "default": {
            "response": {
                "set": {"x-served-by": "wasmgate", "cache-control": "no-store"},
                "append": {"x-list": "gateway"},
                "if_absent": {"x-frame-options": "DENY", "x-content-type-options": "nosniff"},
                "remove": ["x-internal-secret"],
                "rename": {"x-upstream-version": "x-api-version"},
            },
        },
    }))
    upstream_sets = ["cache-control=max-age=60", "x-list=upstream", "x-internal-secret=s3cr3t",
                     "x-upstream-version=2.1", "x-content-type-options=upstream"]
    # The echo upstream takes one x-echo-response-header per line; requests would
    # merge repeated headers, http.client sends each line.
    conn = http.client.HTTPConnection("127.0.0.1", envoy.port())
    conn.putrequest("GET", "/r")
    for value in upstream_sets:
        conn.putheader("x-echo-response-header", value)
    conn.endheaders()
    raw = conn.getresponse()
    raw.read()
    headers = raw.getheaders()
    conn.close()
    assert raw.status == 200

    def values(name):
        return [v for k, v in headers if k.lower() == name]

    assert values("x-served-by") == ["wasmgate"]
    assert values("cache-control") == ["no-store"]  # set replaces the upstream's
    assert ",".join(values("x-list")).replace(" ", "") == "upstream,gateway"
    assert values("x-frame-options") == ["DENY"]
    assert values("x-content-type-options") == ["upstream"]  # if_absent keeps
    assert values("x-internal-secret") == []
    assert values("x-upstream-version") == []
    assert values("x-api-version") == ["2.1"]


def test_templates_fill_in_client_address_request_id_and_route(start_envoy, echo, deployment):
    envoy = start_envoy(gateway(deployment, echo, {
        "default": {
            "request": {"set": {
                "x-client-ip": "${downstream_ip}",
                "x-client-address": "${downstream_address}",
                "x-trace": "rid=${request_id}",
                "x-route": "${route_name}",
                "x-tenant-copy": "tenant:${header:x-tenant-hint}",
                "x-price": "$$5",
                "x-absent": "${header:x-not-sent}",
                "x-peer": "${peer_uri_san}",
            }},
            "response": {"set": {"x-request-echo": "${request_id}"}},
        },
    }))
    resp = requests.get(envoy.url("/t"), headers={"x-tenant-hint": "acme"})
    seen = Seen(resp)
    assert seen.header("x-client-ip") == "127.0.0.1"
    assert re.fullmatch(r"127\.0\.0\.1:\d+", seen.header("x-client-address"))
    request_id = seen.header("x-request-id")
    assert UUID.match(request_id), request_id  # generated by Envoy
    assert seen.header("x-trace") == f"rid={request_id}"
    assert seen.header("x-route") == "default"
    assert seen.header("x-tenant-copy") == "tenant:acme"
    assert seen.header("x-price") == "$5"
    # A variable with no value skips the operation instead of writing half a value.
    assert seen.header("x-absent") is None
    assert seen.header("x-peer") is None  # plain HTTP: no client certificate
    # Response templates are filled in from the request.
    assert resp.headers["x-request-echo"] == request_id


def test_strip_inbound_removes_spoofed_identity_headers(start_envoy, echo, deployment):
    envoy = start_envoy(gateway(deployment, echo, {
        "strip_inbound": ["x-user-id", "X-Tenant-ID", "x-scopes"],
        "rules": [{"match": {"prefix": "/private"},
                   "request": {"set": {"x-copied-user": "${header:x-user-id}"}}}],
    }))
    spoof = {"X-User-ID": "admin", "x-tenant-id": "other-tenant", "X-SCOPES": "admin:*"}
    for path in ("/private/data", "/no/rule/matches/here"):
        seen = Seen(requests.get(envoy.url(path), headers=spoof))
        assert seen.header("x-user-id") is None, path
        assert seen.header("x-tenant-id") is None, path
        assert seen.header("x-scopes") is None, path
        # Stripped values are invisible to templates as well.
        assert seen.header("x-copied-user") is None, path
    assert envoy.metric("wasmgate_headers_spoofed_headers_stripped_total") == 6


def test_response_cleanup_and_request_id_echo(start_envoy, echo, deployment):
    envoy = start_envoy(gateway(deployment, echo, {
        "response_cleanup": ["server", "x-powered-by", "x-envoy-upstream-service-time"],
        "echo_request_id": True,
    }))
    resp = requests.get(envoy.url("/c"), headers={
        "x-echo-response-header": "x-powered-by=PHP/5.6"})
    seen = Seen(resp)
    assert "server" not in resp.headers
    assert "x-powered-by" not in resp.headers
    assert "x-envoy-upstream-service-time" not in resp.headers
    assert UUID.match(seen.header("x-request-id"))
    assert resp.headers["x-request-id"] == seen.header("x-request-id")


def test_rules_match_by_path_and_method_first_match_wins(start_envoy, echo, deployment):
    envoy = start_envoy(gateway(deployment, echo, {
        "rules": [
            {"match": {"exact": "/health"}, "request": {"set": {"x-rule": "exact"}}},
            {"match": {"prefix": "/api/", "methods": ["POST", "PUT"]}, "request": {"set": {"x-rule": "api-write"}}},
            {"match": {"prefix": "/api/"}, "request": {"set": {"x-rule": "api"}}},
        ],
        "default": {"request": {"set": {"x-rule": "default"}}},
    }))
    cases = [
        ("GET", "/health", "exact"),
        ("GET", "/health?probe=1", "exact"),
        ("GET", "/health/deep", "default"),
        ("POST", "/api/orders", "api-write"),
        ("PUT", "/api/orders/1", "api-write"),
        ("GET", "/api/orders", "api"),
        ("DELETE", "/api/orders/1", "api"),
        ("GET", "/apiary", "default"),
    ]
    for method, path, expected in cases:
        seen = Seen(requests.request(method, envoy.url(path)))
        assert seen.header("x-rule") == expected, (method, path)


def test_request_path_and_authority_can_be_rewritten(start_envoy, echo, deployment):
    envoy = start_envoy(gateway(deployment, echo, {
        "rules": [{"match": {"exact": "/legacy"},
                   "request": {"set": {":path": "/v2/resource", ":authority": "internal.example"}}}],
    }))
    seen = Seen(requests.get(envoy.url("/legacy")))
    assert seen.path == "/v2/resource"
    assert seen.header("host") == "internal.example"


@pytest.mark.parametrize("config, field, problem", [
    ({"rules": [{"match": {"prefix": "/"}, "request": {"set": {"x-a": "line\r\nx-evil: 1"}}}]},
     "rules[0].request.set.x-a", "control characters"),
    ({"default": {"request": {"remove": [":path"]}}},
     "default.request.remove[0]", "pseudo-header :path"),
    ({"default": {"response": {"set": {"x-a": "${no_such_variable}"}}}},
     "default.response.set.x-a", "unknown template variable"),
    ({"strip_inbound": ["x user"]}, "strip_inbound[0]", "not a valid header name"),
    ({"rules": [{"match": {"prefix": "/"}, "requets": {}}]}, "rules[0].requets", "unknown field"),
    ({"rules": [{"match": {"prefix": "no-slash"}}]}, "rules[0].match", "must start with"),
    ("not json", "", "expected"),
])
def test_invalid_config_is_refused_with_the_field_named(refused_envoy, echo, deployment, config,
                                                        field, problem):
    returncode, log = refused_envoy(gateway(deployment, echo, config))
    assert returncode != 0
    lines = [line for line in log.splitlines() if "invalid plugin configuration" in line]
    assert lines, log[-3000:]
    assert deployment.refusal("headers", field) in lines[0], lines[0]
    assert problem in lines[0], lines[0]


def test_non_utf8_upstream_header_values_do_not_trap_the_filter(start_envoy, deployment):
    """An upstream may send header bytes above 0x7F. Response rules that read such a
    header must treat it as unreadable, not trap the VM (which would fail every
    request on that worker)."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    answer = b"HTTP/1.1 200 OK\r\nx-odd: caf\xe9\xff\r\ncontent-length: 2\r\n\r\nok"

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                conn.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    try:
        config = {"default": {"response": {"rename": {"x-odd": "x-renamed"},
                                           "if_absent": {"x-odd": "replaced"}}}}
        filters = deployment.filters(("headers", config))
        envoy = start_envoy(bootstrap(
            [http_listener("main", filters, [route("/", "upstream", name="default")])],
            [cluster("upstream", "127.0.0.1", listener.getsockname()[1])],
        ))
        for _ in range(4):  # more requests than workers: every VM took the odd header
            resp = requests.get(envoy.url("/odd"), headers={"connection": "close"})
            assert resp.status_code == 200 and resp.text == "ok"
        assert "panic" not in envoy.log()
    finally:
        listener.close()
