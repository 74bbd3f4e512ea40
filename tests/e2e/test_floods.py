"""Credential floods against real Envoy: what one client sending ever new API keys or
forged tokens can make the gateway (and the key store behind it) spend.

- The API-key filter keeps at most `store.max_in_flight` lookups in flight for the
  whole Envoy: a flood of random keys (wrk, 20,000 keys as fast as this machine sends
  them) never puts more on the store, which counts what reaches it itself
  (harness/recording_store.py), while a partner's known key keeps working.
- The shipped gateway's pre-authentication tier (envoy-config/gateway.yaml, the
  rate-limit filter before the auth filters) answers a flood of forged tokens and
  random keys from one address with 429 once its burst is spent, before a signature
  is checked or a key looked up, while another client is served.

Every load is bounded in count and in time.
"""

import base64
import http.client
import os
import secrets
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness import wait_for, wasm_path
from harness.bootstrap import bootstrap, cluster, http_listener, wasm_filter
from harness.demo_gateway import GATEWAY_CONFIG, DemoGateway
from harness.load import get, wrk_distinct_clients
from harness.recording_store import record
from harness.shipped import shipped_plugin_configs

API_KEY = "wasmgate_api_key_"
# Requests the partner sends beside the random-key flood, at the fewest.
PARTNER_REQUESTS = 10
FLOOD = 20_000


def shipped_config(name: str) -> dict:
    """The configuration of filter `name` in envoy-config/gateway.yaml."""
    return next(config for filter_name, _, config in shipped_plugin_configs(GATEWAY_CONFIG)
                if filter_name == name)


# wrk on 512 connections loads every CPU: on its own (conftest.py, `serial`).
@pytest.mark.serial
def test_a_flood_of_random_keys_never_puts_more_than_the_cap_on_the_store(
        start_envoy, recording_store, tmp_path):
    config = shipped_config("api-key")
    cap = config["store"]["max_in_flight"]
    partner = "sk_live_" + secrets.token_urlsafe(32)
    # Each lookup takes 50 ms at the store: the flood presses against the cap at once.
    store = recording_store({partner: record("acme")}, delay=0.05)
    # The shipped filter, alone (the pre-authentication tier would stop a flood from
    # one address long before the cap: that is the other test), with a 1 s TTL so the
    # partner's key is due for a new lookup many times during the flood.
    config["cache"]["ttl"] = "1s"
    envoy = start_envoy(bootstrap(
        [http_listener("main", [wasm_filter(wasm_path("api-key"), config, name="api-key")],
                       [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}])],
        [cluster("keystore", store.host, store.port)]))
    assert get(envoy.port(), "/partner/orders", {"x-api-key": partner}).status == 200

    partner_answers = Counter()
    flooding = threading.Event()
    flooding.set()

    def partner_traffic():
        # All through the flood, and at least PARTNER_REQUESTS times (a flood that ends
        # in under a second would leave too few answers to judge).
        deadline = time.monotonic() + 120
        while ((flooding.is_set() or sum(partner_answers.values()) < PARTNER_REQUESTS)
               and time.monotonic() < deadline):
            answer = get(envoy.port(), "/partner/orders", {"x-api-key": partner})
            partner_answers[answer.status] += 1
            time.sleep(0.05)

    beside = threading.Thread(target=partner_traffic, daemon=True)
    beside.start()
    started = time.monotonic()
    try:
        sent = wrk_distinct_clients(envoy.port(), "/partner/orders", "x-api-key", FLOOD,
                                    tmp_path, prefix="sk_live_randomkeyflood", connections=512,
                                    max_seconds=60)
    finally:
        elapsed = time.monotonic() - started
        flooding.clear()
        beside.join(timeout=30)
    print(f"\n{sent} random keys in {elapsed:.1f} s: {sent / elapsed:,.0f} keys/s; "
          f"store: {store.counts()}; partner: {dict(partner_answers)}")

    assert sent >= FLOOD
    # Every lookup the filter sent reached the store (none is still on its way)...
    wait_for(lambda: envoy.metric(API_KEY + "store_lookups_total") == store.counts()["lookups"], 10,
             "the last lookups to reach the store")
    counts = store.counts()
    # ...never more than the cap at once, and the flood did reach the cap.
    assert counts["max_in_flight"] <= cap, counts
    assert counts["max_in_flight"] >= cap // 2, counts
    # Past it, keys were refused at once (503), not queued.
    assert envoy.metric(API_KEY + "denied_total", reason="overloaded") > 0
    unknown = envoy.metric(API_KEY + "denied_total", reason="unknown")
    assert unknown + envoy.metric(API_KEY + "denied_total", reason="overloaded") >= FLOOD
    # The partner's key kept working all along, refreshed or served stale.
    assert partner_answers[200] >= PARTNER_REQUESTS and set(partner_answers) == {200}, \
        partner_answers
    assert envoy.alive()


def forged_token(gateway) -> str:
    """A well-formed ES256 token for the gateway's issuer and key, with a signature
    that is not the issuer's (new random bytes each time: no cache can answer it)."""
    head, body, _ = gateway.token(sub="forger").split(".")
    signature = base64.urlsafe_b64encode(os.urandom(64)).rstrip(b"=").decode()
    return f"{head}.{body}.{signature}"


def flood(port: int, source_ip: str, total: int, gateway, threads: int = 8) -> list:
    """`total` requests from `source_ip`, alternately a forged token on /api/ and a
    random API key on /partner, over keep-alive connections; returns (path, status,
    headers, body) of each. Bounded by count and by the socket timeouts."""
    per_thread = -(-total // threads)

    def run(_):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10,
                                          source_address=(source_ip, 0))
        answers = []
        try:
            for i in range(per_thread):
                if i % 2:
                    path, headers = "/api/v2/users", {
                        "authorization": f"Bearer {forged_token(gateway)}"}
                else:
                    path, headers = "/partner/orders", {
                        "x-api-key": "sk_live_" + secrets.token_urlsafe(32)}
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                answers.append((path, resp.status,
                                {k.lower(): v for k, v in resp.getheaders()}, resp.read()))
        finally:
            conn.close()
        return answers

    with ThreadPoolExecutor(threads) as pool:
        return [a for result in pool.map(run, range(threads), timeout=120) for a in result]


@pytest.fixture
def own_gateway(tmp_path, demo_certs, on_failure):
    gateway = DemoGateway(tmp_path, demo_certs).start()
    on_failure(gateway.logs)
    yield gateway
    gateway.stop()


def test_a_flood_of_forged_credentials_from_one_address_gets_429_before_any_check(own_gateway):
    gateway = own_gateway
    envoy = gateway.envoy
    [limit] = shipped_config("pre-auth")["default"]["limits"]
    burst, per_second = limit["burst"], limit["requests"]
    assert limit["per"] == "1s"
    # Requests the auth filters judged: each forged token a signature check, each
    # random key a lookup (or a 503 when max_in_flight lookups are out already).
    judged = lambda: (envoy.metric("wasmgate_jwt_denied_total")  # noqa: E731
                      + envoy.metric(API_KEY + "denied_total"))
    before = judged()
    lookups = envoy.metric(API_KEY + "store_lookups_total")

    attacker, other = "127.0.0.2", "127.0.0.3"
    started = time.monotonic()
    answers = flood(envoy.port(), attacker, burst + 2_000, gateway)
    elapsed = time.monotonic() - started
    statuses = Counter(status for _, status, _, _ in answers)
    print(f"\n{len(answers)} forged credentials in {elapsed:.1f} s: {dict(statuses)}")

    # The burst, and what refilled meanwhile, reached the auth filters (401; 503 for
    # a random key past max_in_flight)...
    passed = len(answers) - statuses[429]
    assert set(statuses) <= {401, 429, 503} and statuses[401], statuses
    assert burst <= passed <= burst + per_second * (elapsed + 1), statuses
    # ...and each of them was judged once; the rest cost no check and no lookup.
    assert judged() - before == passed
    keys_passed = sum(1 for path, status, _, _ in answers
                      if path == "/partner/orders" and status != 429)
    assert envoy.metric(API_KEY + "store_lookups_total") - lookups <= keys_passed
    limited = [(headers, body) for _, status, headers, body in answers if status == 429]
    for headers, body in limited[:50]:
        assert headers["x-ratelimit-limit"] == str(burst)
        assert int(headers["retry-after"]) >= 1
        assert b'"violated-policies":["per-address"]' in body

    # Another client is served as ever (the attacker's own address gets its 100 a
    # second back as they refill, valid credentials or not).
    served = get(envoy.port(), "/api/v2/users", gateway.bearer(), source_ip=other)
    assert served.status == 200
    # What a client sees is the tier after authentication: 1200 a minute per user.
    assert served.header("x-ratelimit-limit") == "1200"
    key = gateway.keys.create("globex", "gold")
    assert get(envoy.port(), "/partner/orders", {"x-api-key": key.api_key},
               source_ip=other).status == 200
