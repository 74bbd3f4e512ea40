"""The project's fixture servers (crates/fixture-http: the echo upstream, the JWKS
issuer, the key store) behind real Envoy, the way the gateway uses them: many new
keep-alive connections at once.

The echo upstream used to run on tiny_http 0.12, whose connection pool could leave some
of a burst of new connections with no thread, indefinitely: of 200 simultaneous first
requests through Envoy, about 23 got 504 at the route timeout.
"""

import http.client
import json
import urllib.request
from collections import Counter

import pytest

from harness import tool_path
from harness.bootstrap import route, single_filter_gateway
from harness.load import fire_together

BURST = 200
SLOW_ANSWER_MS = 1000


@pytest.mark.parametrize("server", ["echo", "jwks"])
def test_a_burst_of_new_connections_through_envoy_is_served_in_full(start_envoy, start_service,
                                                                    tmp_path, server):
    argv = {"echo": [tool_path("demo"), "echo", "--name", "burst"],
            "jwks": [tool_path("demo"), "jwks", "--keys", tmp_path / "keys", "--mode-endpoint"]}[server]
    upstream = start_service(argv, server)
    # Each answer takes a second, so the requests overlap however slowly a busy
    # machine releases them: Envoy must open one upstream connection per request
    # (nothing is pooled yet), and keeps them alive. The route timeout bounds a wait.
    headers = {}
    if server == "echo":
        headers = {"x-echo-delay-ms": str(SLOW_ANSWER_MS)}
    else:
        mode = urllib.request.Request(upstream.url("/__jwks/mode"), method="POST",
                                      data=json.dumps({"delay_ms": SLOW_ANSWER_MS}).encode())
        urllib.request.urlopen(mode, timeout=10).close()
    envoy = start_envoy(single_filter_gateway([], upstream, [route("/", "upstream", name="all",
                                                                   timeout="10s")]))
    answers = fire_together(envoy.port(), "/burst", BURST, headers=headers, timeout=30)
    assert Counter(a.status for a in answers) == {200: BURST}
    assert envoy.stat("cluster.upstream.upstream_cx_total") >= BURST // 2  # a real burst
    assert envoy.stat("cluster.upstream.upstream_rq_timeout") == 0
    # ...and the connections stay usable: a second burst reuses them.
    again = fire_together(envoy.port(), "/burst", BURST, headers=headers, timeout=30)
    assert Counter(a.status for a in again) == {200: BURST}


def test_echo_reads_a_chunked_body_forwarded_by_envoy(start_envoy, echo):
    """A client body without a length reaches the upstream chunked."""
    envoy = start_envoy(single_filter_gateway([], echo))
    conn = http.client.HTTPConnection("127.0.0.1", envoy.port(), timeout=10)
    try:
        conn.request("POST", "/chunked", body=iter([b"chunk one, ", b"chunk two"]),
                     encode_chunked=True)
        resp = conn.getresponse()
        seen = json.loads(resp.read())
    finally:
        conn.close()
    assert resp.status == 200
    assert seen["headers"]["transfer-encoding"] == ["chunked"]
    assert seen["body"] == "chunk one, chunk two"
