"""The key store as a service an operator deploys (`wasmgate-keystore serve`, real
processes, a real redis-server): configuration from the environment, probes, metrics
and logs; what it does when abused (slow clients, too many connections), when Redis
hangs, dies and comes back, when it is stopped under load; rediss://; two replicas
behind the gateway's `keystore` cluster."""

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import http.client
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from harness import tool_path, wait_for
from harness.keystore import (KeyStore, RedisServer, Slowloris, keystore_gateway, make_tls_files,
                              raise_open_files_limit, start_keystore)

FILTER_METRIC = "wasmcustom.wasmgate.api_key."


@pytest.fixture
def redis_servers(tmp_path):
    """`redis_servers(name, **kwargs) -> RedisServer` (started), stopped after the test."""
    started = []

    def start(name="redis", **kwargs):
        workdir = tmp_path / name
        workdir.mkdir()
        server = RedisServer(workdir, **kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def random_key() -> str:
    return "sk_live_" + secrets.token_urlsafe(32)


def status_of(url: str, timeout: float = 10) -> int:
    return requests.get(url, timeout=timeout).status_code


def test_configured_only_through_the_environment_with_probes_metrics_and_json_logs(
        start_service, redis_servers, tmp_path):
    password = secrets.token_urlsafe(16)
    redis = redis_servers(requirepass=password)
    password_file = tmp_path / "redis-password"
    password_file.write_text(password + "\n")
    env = {
        "WASMGATE_KEYSTORE_STORE": redis.url,
        "WASMGATE_KEYSTORE_REDIS_PASSWORD_FILE": str(password_file),
        "WASMGATE_KEYSTORE_LISTEN": "127.0.0.1:0",
        "WASMGATE_KEYSTORE_PATH_PREFIX": "/lookup",
    }
    service = start_service([tool_path("keystore"), "serve"], "keystore", env=env)
    # The command line holds no secret.
    assert password not in Path(f"/proc/{service.proc.pid}/cmdline").read_text()

    cli = subprocess.run([tool_path("keystore"), "keys", "create", "--tenant", "acme", "--json"],
                         capture_output=True, text=True, timeout=30, env={**os.environ, **env})
    assert cli.returncode == 0, cli.stderr
    created = json.loads(cli.stdout)
    key_hash = KeyStore.hash_of(created["api_key"])
    found = requests.get(service.url(f"/lookup/{key_hash}"), timeout=10)
    assert found.status_code == 200 and found.json()["key_id"] == created["key_id"]
    # Not the configured prefix: a 404 that is not the contract's "no such key", so a
    # filter with a wrong path_prefix sees a store error rather than unknown keys.
    misrouted = requests.get(service.url(f"/v1/keys/{key_hash}"), timeout=10)
    assert misrouted.status_code == 404 and misrouted.json()["error"] == "no_route"

    assert requests.get(service.url("/healthz"), timeout=10).json() == {"status": "ok"}
    assert requests.get(service.url("/readyz"), timeout=10).json() == {"status": "ready"}
    store = KeyStore(redis.url, service)
    metrics = store.metrics()
    assert metrics[("wasmgate_keystore_lookups_total", (("result", "found"),))] == 1
    assert metrics[("wasmgate_keystore_lookups_total", (("result", "not_found"),))] == 0
    assert metrics[("wasmgate_keystore_lookup_duration_seconds_count", ())] == 1
    assert metrics[("wasmgate_keystore_backend_errors_total", (("operation", "lookup"),))] == 0
    assert metrics[("wasmgate_keystore_requests_in_flight", ())] == 1  # this scrape
    assert metrics[("wasmgate_keystore_connections_open", ())] >= 1

    # A wrong password: not ready, and lookups answer 503 (never a 404 that would
    # tell the gateway the key does not exist).
    password_file.write_text("not-the-password\n")
    wrong = start_service([tool_path("keystore"), "serve"], "keystore-wrong-password", env=env)
    not_ready = requests.get(wrong.url("/readyz"), timeout=10)
    assert not_ready.status_code == 503 and not_ready.json()["status"] == "unavailable"
    assert status_of(wrong.url(f"/lookup/{key_hash}")) == 503
    assert password not in not_ready.text

    # Logs: one JSON object per line, each with an RFC 3339 timestamp and a level.
    logs = [json.loads(line) for line in wrong.log().splitlines() if line.startswith("{")]
    assert any(log["message"] == "serving lookups" and log["listen"] == wrong.address
               for log in logs)
    assert any(log["level"] == "WARN" and "503" in log["message"] for log in logs)
    for log in logs:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", log["timestamp"]), log
        assert log["level"] in ("ERROR", "WARN", "INFO", "DEBUG"), log
    assert password not in wrong.log()


def test_redis_hung_or_stopped_answers_503_at_once_and_recovers(start_service, redis_servers):
    redis = redis_servers(tcp=True)
    store = start_keystore(start_service, redis.url, global_args=["--redis-timeout", "300ms"])
    key = store.create("acme", "gold")
    assert store.lookup(key.hash).status_code == 200

    # Hung (SIGSTOP): every command ends at the Redis timeout, well inside the
    # request timeout (2 s) and the client's 5 s.
    redis.pause()
    for _ in range(3):
        answer = store.lookup(key.hash, timeout=5)
        assert answer.status_code == 503
        assert answer.json()["error"] == "unavailable"
    assert status_of(store.service.url("/readyz"), timeout=5) == 503
    assert store.metric("wasmgate_keystore_requests_timed_out_total") == 0
    redis.resume()
    wait_for(lambda: status_of(store.service.url("/readyz")) == 200, 10, "readiness after SIGCONT")
    assert store.lookup(key.hash).status_code == 200

    # Stopped: connection refused, 503 at once; started again (empty: no
    # persistence), the same connection manager reconnects.
    redis.stop()
    answer = store.lookup(key.hash, timeout=5)
    assert answer.status_code == 503
    assert status_of(store.service.url("/readyz"), timeout=5) == 503
    redis.start()
    wait_for(lambda: status_of(store.service.url("/readyz")) == 200, 10, "readiness after restart")
    assert store.lookup(key.hash).status_code == 404
    again = store.create("acme", "gold")
    assert store.lookup(again.hash).status_code == 200

    metrics = store.metrics()
    assert metrics[("wasmgate_keystore_lookups_total", (("result", "unavailable"),))] == 4
    assert metrics[("wasmgate_keystore_backend_errors_total", (("operation", "lookup"),))] == 4
    assert metrics[("wasmgate_keystore_backend_errors_total", (("operation", "ping"),))] >= 2
    messages = [json.loads(line)["message"] for line in store.service.log().splitlines()
                if line.startswith("{")]
    # One line when it starts failing and one when it recovers, not one per lookup.
    assert messages.count("the key backend fails: lookups answer 503 until it recovers") == 2
    assert messages.count("the key backend answers again") == 2


def test_two_thousand_slow_clients_do_not_stop_lookups_through_the_gateway(
        start_service, start_envoy, echo, redis_server):
    if raise_open_files_limit(4096) < 2100:
        pytest.skip("this process may not open 2,100 files")
    store = start_keystore(start_service, redis_server.url, args=["--header-read-timeout", "10s"])
    envoy = start_envoy(keystore_gateway(echo, [store.service], {"store": {"timeout": "1s"}}))
    known = store.create("acme", "gold")

    slow = Slowloris(store.service.port, 2000, interval=0.5, duration=20).start()
    wait_for(lambda: slow.connected == 2000 or slow.errors, 30, "2,000 slow connections")
    assert not slow.errors, slow.errors
    # While all of them are held, lookups through Envoy (each key a new lookup) get
    # their answers, not the filter's 503 for a store that did not answer in 1 s.
    statuses = [requests.get(envoy.url("/orders"), headers={"x-api-key": k}, timeout=10).status_code
                for k in [known.api_key] + [random_key() for _ in range(20)]]
    assert statuses == [200] + [401] * 20
    assert store.metric("wasmgate_keystore_connections_open") >= 2000
    assert envoy.stat(FILTER_METRIC + "denied.store_unavailable") == 0

    # The server closes each slow client once its head is 10 s late.
    slow.wait()
    assert slow.closed_by_server == 2000
    assert min(slow.closed_after) >= 9.5
    assert store.metric("wasmgate_keystore_connections_timed_out_total",
                        timeout="header_read") == 2000
    wait_for(lambda: store.metric("wasmgate_keystore_connections_open") < 10, 10,
             "the slow connections to be gone")


def test_past_the_connection_limit_a_client_gets_503_not_a_dropped_connection(
        start_service, redis_server):
    store = start_keystore(start_service, redis_server.url, args=["--max-connections", "4"])
    key = store.create("acme", "gold")
    held = []
    for _ in range(4):
        conn = http.client.HTTPConnection(store.service.host, store.service.port, timeout=10)
        conn.request("GET", f"/v1/keys/{key.hash}")
        assert conn.getresponse().read() and True
        held.append(conn)  # kept open (keep-alive): the limit is reached

    refused = requests.get(store.service.url(f"/v1/keys/{key.hash}"), timeout=10)
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["connection"] == "close"
    assert refused.json()["error"] == "overloaded"
    # The held connections still work.
    held[0].request("GET", f"/v1/keys/{key.hash}")
    assert held[0].getresponse().status == 200

    held.pop().close()
    wait_for(lambda: store.lookup(key.hash).status_code == 200, 10, "a free connection slot")
    for conn in held:
        conn.close()
    # (Each try that came too early was itself answered 503, and counted.)
    metrics = wait_for(store.metrics, 10, "a free connection slot for the metrics")
    assert metrics[("wasmgate_keystore_connections_rejected_total", ())] >= 1
    assert metrics[("wasmgate_keystore_connections_dropped_total", ())] == 0


def test_sigterm_answers_every_lookup_in_flight_then_exits_0(start_service, redis_server):
    store = start_keystore(start_service, redis_server.url, global_args=["--redis-timeout", "20s"],
                           args=["--request-timeout", "30s"])
    key = store.create("acme", "gold")
    proc, port = store.service.proc, store.service.port

    # Twenty lookups in flight, held there by a hung Redis.
    redis_server.pause()
    with ThreadPoolExecutor(20) as pool:
        lookups = [pool.submit(store.lookup, key.hash, 30) for _ in range(20)]
        wait_for(lambda: store.metric("wasmgate_keystore_requests_in_flight") == 21, 20,
                 "20 lookups in flight (and this scrape)")
        proc.send_signal(signal.SIGTERM)

        def refused():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return False
            except ConnectionRefusedError:
                return True

        wait_for(refused, 10, "the listener to close")
        assert proc.poll() is None, "it exited with lookups in flight"
        redis_server.resume()
        answers = [future.result(timeout=30) for future in lookups]
    assert [a.status_code for a in answers] == [200] * 20
    assert {a.json()["key_id"] for a in answers} == {key.key_id}
    assert proc.wait(timeout=15) == 0
    assert "every connection finished" in store.service.log()


def test_rediss_with_a_private_ca(start_service, redis_servers, tmp_path):
    tls = make_tls_files(tmp_path / "tls")
    redis = redis_servers(tls=tls)
    assert redis.url.startswith("rediss://")
    store = start_keystore(start_service, redis.url,
                           env={"WASMGATE_KEYSTORE_REDIS_CA_FILE": str(tls.ca)})
    key = store.create("acme", "gold")  # the CLI over TLS too
    assert store.lookup(key.hash).json()["key_id"] == key.key_id
    assert status_of(store.service.url("/readyz")) == 200
    # Without the CA, the system's roots do not trust the server: not ready, 503.
    untrusting = start_keystore(start_service, redis.url, name="untrusting")
    answer = requests.get(untrusting.service.url("/readyz"), timeout=10)
    assert answer.status_code == 503
    assert "certificate" in answer.json()["error"].lower()
    assert untrusting.lookup(key.hash).status_code == 503


def test_two_replicas_behind_the_gateway_share_redis_and_one_leaves_without_a_failed_lookup(
        start_service, start_envoy, echo, redis_server):
    replicas = [start_keystore(start_service, redis_server.url, name=f"keystore-{i}",
                               args=["--shutdown-delay", "1s"]) for i in range(2)]
    envoy = start_envoy(keystore_gateway(
        echo, [r.service for r in replicas],
        {"store": {"timeout": "1s"}, "cache": {"ttl": "1s", "negative_ttl": "1s"}},
        health_checks=True))
    keys = [replicas[i % 2].create("acme", "gold") for i in range(4)]

    def get(api_key):
        return requests.get(envoy.url("/orders"), headers={"x-api-key": api_key}, timeout=10)

    # Every key, whichever replica made it, is found through either replica.
    for _ in range(5):
        assert [get(k.api_key).status_code for k in keys] + \
               [get(random_key()).status_code for _ in range(4)] == [200] * 4 + [401] * 4
    counts = [r.lookups() for r in replicas]
    assert all(count > 0 for count in counts), counts

    # Stopped with a shutdown delay, the first replica fails /readyz at once; Envoy's
    # health check takes it out before its listener closes, so no lookup fails.
    leaving = replicas[0]
    leaving.service.proc.send_signal(signal.SIGTERM)
    statuses = []
    while leaving.service.proc.poll() is None and len(statuses) < 400:
        statuses.append(get(random_key()).status_code)
    assert leaving.service.proc.wait(timeout=15) == 0
    statuses += [get(random_key()).status_code for _ in range(20)]
    statuses += [get(k.api_key).status_code for k in keys]
    assert statuses == [401] * (len(statuses) - 4) + [200] * 4, statuses
    assert envoy.stat(FILTER_METRIC + "denied.store_unavailable") == 0
