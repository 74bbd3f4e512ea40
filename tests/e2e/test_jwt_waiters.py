"""The JWT filter when many requests wait for keys (build/wasm/jwt.wasm and the combined
module's `jwt` stage, in real Envoy with one worker, so one VM holds every request):
the JWKS is held back, requests past `max_waiting_requests` get 503 with Retry-After at
once, a client that leaves frees its place, and every request still waiting passes
when the keys arrive. Each waiting client is a raw socket the test opens, keeps or
closes."""

import socket

import requests

from harness import wait_for
from harness.jwt import KeyDir, jwt_gateway, plugin_config, provider, remote_jwks, start_jwks

BOUND = 100        # max_waiting_requests in the VM
REFUSED = 100      # requests sent while BOUND wait
LEAVING = 20       # waiting clients that close their connection


def send_waiting(envoy, token: str) -> socket.socket:
    """Sends a request on a connection of its own and returns without reading."""
    sock = socket.create_connection(("127.0.0.1", envoy.port()), timeout=60)
    sock.sendall(f"GET /orders/1 HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {token}\r\n"
                 "Connection: close\r\n\r\n".encode())
    return sock


def status_of(sock: socket.socket) -> int:
    """The status of the answer on `sock` (read to the end: Connection: close)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    return int(data.split(b" ", 2)[1])


def test_past_the_bound_requests_get_503_at_once_and_the_rest_pass_when_keys_arrive(
        deployment, tmp_path, start_envoy, start_service, echo):
    keys = KeyDir(tmp_path / "keys")
    keys.add("k1", "ES256")
    jwks = start_jwks(start_service, keys)
    jwks.mode(down=True)  # held back until the test lets it answer
    remote = remote_jwks(max_wait="30s", backoff_initial="200ms", backoff_max="1s")
    config = plugin_config(providers={"idp": provider(jwks=remote)},
                           rules=[{"match": {"prefix": "/public"}, "public": True}],
                           max_waiting_requests=BOUND)
    envoy = start_envoy(jwt_gateway(echo, config, jwks, deployment=deployment), concurrency=1)
    token = keys.mint("k1")  # waiting is per request, not per token: one for all

    waiting = [send_waiting(envoy, token) for _ in range(BOUND)]
    wait_for(lambda: envoy.metric("wasmgate_jwt_waited_for_keys_total") == BOUND, 30, f"{BOUND} requests to wait for keys")
    # Past the bound: 503 at once, with when to come back (max_wait), while the
    # first BOUND still wait for their keys.
    for _ in range(REFUSED):
        resp = requests.get(envoy.url("/orders/2"), headers={"authorization": f"Bearer {token}"},
                            timeout=10)
        assert resp.status_code == 503, resp.text
        assert resp.headers["retry-after"] == "30"
        assert "www-authenticate" not in resp.headers
        assert resp.json() == {"error": "temporarily_unavailable",
                               "message": "too many requests are waiting for signing keys"}
    assert envoy.metric("wasmgate_jwt_denied_total", reason="too_many_waiting") == REFUSED
    # Envoy serves everything else meanwhile.
    assert requests.get(envoy.url("/public/x"), timeout=10).status_code == 200

    # Clients that leave free their places at once: as many new requests wait.
    for sock in waiting[:LEAVING]:
        sock.close()
    wait_for(lambda: envoy.stat("http.main.downstream_cx_destroy_remote_active_rq") == LEAVING,
             30, "Envoy to see the leaving clients go")
    waiting = waiting[LEAVING:] + [send_waiting(envoy, token) for _ in range(LEAVING)]
    wait_for(lambda: envoy.metric("wasmgate_jwt_waited_for_keys_total") == BOUND + LEAVING, 30, "the newcomers to wait")
    assert envoy.metric("wasmgate_jwt_denied_total", reason="too_many_waiting") == REFUSED

    jwks.mode()  # the keys arrive at the next retry
    statuses = [status_of(sock) for sock in waiting]
    assert statuses == [200] * BOUND
    assert envoy.alive()
    assert requests.get(envoy.url("/orders/3"), headers={"authorization": f"Bearer {token}"},
                        timeout=10).status_code == 200
    assert envoy.metric("wasmgate_jwt_denied_total", reason="too_many_waiting") == REFUSED
