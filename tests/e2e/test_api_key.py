"""The API-key filter (build/wasm/api-key.wasm) in real Envoy (2 workers), asking the
real key store (`wasmgate-keystore` on a real redis-server) over an HTTP callout. Every
test runs with the separate filter and with the combined module's `api_key` stage
(`deployment`)."""

import http.client
import re
import secrets
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from harness import Seen, wait_for
from harness.docs import doc_example
from harness.bootstrap import bootstrap, cluster, http_listener, route

METRIC = "wasmgate_api_key_"


def gateway(deployment, echo, store, config=None, env_keys=None, **bootstrap_extra):
    """Envoy with only the API-key filter (as `deployment` puts it) in front of the echo
    upstream. The filter's store cluster `keystore` points at `store` (anything with
    .host and .port).

    `/load` is answered by Envoy itself (`direct_response`, after the filter ran): load
    phases exercise the filter, not the echo server."""
    config = dict(config or {})
    plugin = {"store": {"cluster": "keystore", **config.pop("store", {})}, **config}
    api_key = deployment.filter("api-key", plugin)
    if env_keys:
        # Envoy passes these variables of its own environment into the VM: the pepper
        # stays out of the configuration (and of /config_dump).
        api_key["typed_config"]["config"]["vm_config"]["environment_variables"] = {
            "host_env_keys": env_keys}
    return bootstrap(
        [http_listener("main", [api_key], [
            {"match": {"prefix": "/load"}, "direct_response": {"status": 200}},
            route("/", "upstream", name="default"),
        ])],
        [cluster("upstream", echo.host, echo.port), cluster("keystore", store.host, store.port)],
        **bootstrap_extra,
    )


def random_key() -> str:
    return "sk_live_" + secrets.token_urlsafe(32)


def get(envoy, key=None, path="/orders", headers=None, timeout=10):
    headers = dict(headers or {})
    if key is not None:
        headers["x-api-key"] = key
    return requests.get(envoy.url(path), headers=headers, timeout=timeout)


def load(envoy, keys_per_connection, connections: int) -> Counter:
    """Sends requests over `connections` keep-alive connections in parallel, each with
    the keys `keys_per_connection(i)` gives; returns the status counts. Bounded in
    count by the keys and in time by the socket and overall timeouts."""

    def run(i):
        conn = http.client.HTTPConnection("127.0.0.1", envoy.port(), timeout=10)
        statuses = Counter()
        for key in keys_per_connection(i):
            conn.request("GET", "/load", headers={"x-api-key": key})
            response = conn.getresponse()
            response.read()
            statuses[response.status] += 1
        conn.close()
        return statuses

    total = Counter()
    with ThreadPoolExecutor(connections) as pool:
        for result in [pool.submit(run, i) for i in range(connections)]:
            total += result.result(timeout=120)
    return total


def wait_until(moment: float, what: str):
    """Waits for a point in time.monotonic() (a TTL to pass), polling."""
    wait_for(lambda: time.monotonic() >= moment, max(1.0, moment - time.monotonic() + 1), what)


def test_a_created_key_passes_and_the_upstream_sees_its_identity_not_the_key(
        deployment, start_envoy, echo, keystore):
    envoy = start_envoy(gateway(deployment, echo, keystore.service))
    created = keystore.create("acme", "gold")
    resp = get(envoy, created.api_key, headers={"x-tenant-id": "spoofed", "x-plan": "platinum"})
    assert resp.status_code == 200
    seen = Seen(resp)
    assert seen.header("x-tenant-id") == "acme"
    assert seen.header("x-api-key-id") == created.key_id
    assert seen.header("x-plan") == "gold"
    assert seen.header("x-api-key") is None
    assert created.api_key not in resp.text
    assert envoy.metric(METRIC + "allowed_total") == 1
    assert keystore.lookups() == 1
    [listed] = keystore.list()
    assert listed["last_used_at"] is not None


def test_unknown_revoked_and_expired_keys_get_the_same_401(deployment, start_envoy, echo, keystore):
    envoy = start_envoy(gateway(deployment, echo, keystore.service,
                                {"realm": "orders", "cache": {"ttl": "1s"}}))
    revoked = keystore.create("acme", "gold")
    keystore.revoke(revoked.key_id)
    expired = keystore.create("acme", "gold", "--expires-at", "2020-01-01T00:00:00Z")
    used_then_revoked = keystore.create("acme", "gold")
    assert get(envoy, used_then_revoked.api_key).status_code == 200
    used_at = time.monotonic()
    keystore.revoke(used_then_revoked.key_id)

    denials = [get(envoy, key) for key in (random_key(), revoked.api_key, expired.api_key)]
    # A revocation takes effect once the cached answer's TTL (1s) has passed.
    wait_until(used_at + 1.1, "the cached answer to expire")
    denials.append(get(envoy, used_then_revoked.api_key))

    first = denials[0]
    assert first.status_code == 401
    assert first.headers["www-authenticate"] == 'ApiKey realm="orders"'
    for resp in denials:
        assert (resp.status_code, resp.text, resp.headers["www-authenticate"]) == \
            (first.status_code, first.text, first.headers["www-authenticate"])

    missing = get(envoy)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == 'ApiKey realm="orders"'
    assert missing.json()["message"] == "an API key is required"
    denied = envoy.series(METRIC + "denied_total")
    assert {dict(tags)["reason"]: value for tags, value in denied.items() if value} == {
        "unknown": 1, "revoked": 2, "expired": 1, "missing": 1}


def test_malformed_keys_are_refused_without_a_lookup(deployment, start_envoy, echo, keystore):
    envoy = start_envoy(gateway(deployment, echo, keystore.service, {
        "sources": {"headers": ["x-api-key"], "bearer": True, "query": "api_key"}}))
    unknown = get(envoy, random_key())
    assert keystore.lookups() == 1
    malformed = [
        get(envoy, "sk_live_short"),
        get(envoy, "pk_live_" + "a" * 40),
        get(envoy, "sk_live_" + "a" * 200),
        get(envoy, "sk_live_abc$def" + "a" * 30),
        get(envoy, ""),
        get(envoy, headers={"authorization": "Bearer sk_live_bad%20key" + "a" * 30}),
        get(envoy, path="/orders?api_key=sk_live_" + "a" * 10),
    ]
    for resp in malformed:
        assert (resp.status_code, resp.text) == (401, unknown.text)
    # The key store's own counter: none of them was looked up.
    assert keystore.lookups() == 1
    assert envoy.metric(METRIC + "denied_total", reason="malformed") == len(malformed)
    assert envoy.metric(METRIC + "store_lookups_total") == 1


def test_bearer_and_query_keys_are_accepted_and_hidden_skip_routes_pass(
        deployment, start_envoy, echo, keystore):
    envoy = start_envoy(gateway(deployment, echo, keystore.service, {
        "sources": {"headers": ["x-api-key"], "bearer": True, "query": "api_key"},
        "forward": {"scopes": "x-scopes"},
        "skip": [{"exact": "/health"}],
    }))
    created = keystore.create("acme", "gold", "--scope", "orders:read", "--scope", "orders:write")

    seen = Seen(get(envoy, headers={"authorization": f"Bearer {created.api_key}"}))
    assert seen.header("x-tenant-id") == "acme"
    assert seen.header("x-scopes") == "orders:read orders:write"
    assert seen.header("authorization") is None

    seen = Seen(get(envoy, path=f"/orders?page=2&api_key={created.api_key}&sort=asc"))
    assert seen.header("x-api-key-id") == created.key_id
    assert seen.query == "page=2&sort=asc"

    # A bearer token without a key prefix (a JWT) is not an API key.
    jwt = get(envoy, headers={"authorization": "Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln"})
    assert jwt.status_code == 401 and jwt.json()["message"] == "an API key is required"

    # Skipped routes need no key, and still never carry a client-set identity, nor a
    # key sent there anyway (a JWT for another filter stays).
    seen = Seen(get(envoy, created.api_key, path=f"/health?api_key={created.api_key}",
                    headers={"x-tenant-id": "spoofed", "x-scopes": "admin",
                             "authorization": "Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln"}))
    assert seen.header("x-tenant-id") is None and seen.header("x-scopes") is None
    assert seen.header("x-api-key") is None and seen.query == ""
    assert seen.header("authorization") == "Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln"
    assert envoy.metric(METRIC + "skipped_total") == 1
    assert keystore.lookups() == 1


@pytest.mark.parametrize("strip_on_skip", [True, False])
def test_strip_on_skip_decides_who_owns_identity_headers_on_skipped_routes(
        deployment, start_envoy, echo, keystore, strip_on_skip):
    """The gateway's chain: a filter before this one (there the JWT filter) sets
    x-tenant-id on routes this one skips. `strip_on_skip: false` leaves it to that
    filter there; routes that need a key always get the key's own tenant."""
    filters = deployment.filters(
        ("headers", {"default": {"request": {"set": {"x-tenant-id": "set-earlier"}}}}),
        ("api-key", {"store": {"cluster": "keystore"}, "skip": [{"prefix": "/api/"}],
                     "strip_on_skip": strip_on_skip}))
    envoy = start_envoy(bootstrap(
        [http_listener("main", filters, [route("/", "upstream", name="default")])],
        [cluster("upstream", echo.host, echo.port),
         cluster("keystore", keystore.service.host, keystore.service.port)]))
    skipped = Seen(get(envoy, path="/api/users"))
    assert skipped.header("x-tenant-id") == (None if strip_on_skip else "set-earlier")
    created = keystore.create("acme", "gold")
    assert Seen(get(envoy, created.api_key)).header("x-tenant-id") == "acme"


def test_a_thousand_requests_with_one_key_make_one_lookup_per_ttl(deployment, start_envoy, echo,
                                                                  keystore):
    ttl = 5.0
    # Histograms reach /stats when Envoy flushes its stats: flush often.
    envoy = start_envoy(gateway(deployment, echo, keystore.service, {"cache": {"ttl": "5s"}},
                                stats_flush_interval="0.5s"))
    created = keystore.create("acme", "gold")

    started = time.monotonic()
    statuses = load(envoy, lambda i: [created.api_key] * 50, connections=20)
    finished = time.monotonic()
    assert statuses == Counter({200: 1000})
    assert finished - started < ttl, "the burst outlasted the TTL; it cannot show one lookup per TTL"
    # Both workers served it: the first requests waited on one lookup, the rest hit.
    assert keystore.lookups() == 1
    assert envoy.metric(METRIC + "store_lookups_total") == 1
    assert envoy.metric(METRIC + "cache_lookups_total", result="miss") == 1
    assert (envoy.metric(METRIC + "cache_lookups_total", result="hit")
            + envoy.metric(METRIC + "cache_lookups_total", result="coalesced")) == 999

    wait_until(started + ttl + 0.2, "the cached answer to expire")
    second = time.monotonic()
    assert load(envoy, lambda i: [created.api_key] * 50, connections=20) == Counter({200: 1000})
    assert time.monotonic() - second < ttl
    assert keystore.lookups() == 2
    assert envoy.metric(METRIC + "store_lookups_total") == 2
    # Both lookups' round trips are in the latency histogram.
    wait_for(lambda: re.search(r"store_lookup_duration_milliseconds: P0\(\d",
                               envoy.admin("/stats?filter=store_lookup_duration")),
             10, "the lookup latency histogram to be flushed")


@pytest.mark.parametrize("outage", ["redis", "keystore"])
def test_when_the_store_is_down_cached_keys_work_until_max_stale_and_new_keys_get_503(
        deployment, start_envoy, echo, keystore, redis_server, outage):
    envoy = start_envoy(gateway(deployment, echo, keystore.service, {
        "store": {"timeout": "500ms"},
        "cache": {"ttl": "1s", "max_stale": "2s", "error_backoff": "200ms"},
    }))
    known = keystore.create("acme", "gold")
    new = keystore.create("beta", "free")
    assert get(envoy, known.api_key).status_code == 200
    fetched = time.monotonic()

    if outage == "redis":
        redis_server.stop()  # the key store answers 503
    else:
        keystore.service.stop()  # connection refused: Envoy answers the callout 503
    wait_until(fetched + 1.1, "the cached answer to pass its TTL")

    stale = get(envoy, known.api_key)
    assert stale.status_code == 200
    assert Seen(stale).header("x-tenant-id") == "acme"
    unavailable = get(envoy, new.api_key)
    assert unavailable.status_code == 503
    assert unavailable.headers["retry-after"] == "1"
    assert "www-authenticate" not in unavailable.headers
    assert envoy.metric(METRIC + "cache_lookups_total", result="stale") == 1
    assert envoy.metric(METRIC + "store_errors_total", kind="status") >= 2

    # ttl + max_stale after it was fetched, the answer is too old to trust.
    wait_until(fetched + 3.2, "the cached answer to pass max_stale")
    assert get(envoy, known.api_key).status_code == 503
    assert envoy.metric(METRIC + "denied_total", reason="store_unavailable") == 2


def test_a_revoked_key_works_at_most_ttl_plus_max_stale_while_the_store_fails(
        deployment, start_envoy, echo, keystore, redis_server):
    """The bound of docs/filters/api-key.md, "Revocation": a key revoked at R is refused from R +
    store.timeout + cache.ttl + cache.max_stale on, whatever the store does."""
    envoy = start_envoy(gateway(deployment, echo, keystore.service, {
        "store": {"timeout": "500ms"},
        "cache": {"ttl": "1s", "max_stale": "2s", "error_backoff": "200ms"},
    }))
    key = keystore.create("acme", "gold")
    assert get(envoy, key.api_key).status_code == 200
    fetched = time.monotonic()
    keystore.revoke(key.key_id)
    redis_server.stop()  # and the store fails from now on

    # Within the TTL the cached answer stands; past it, stale-if-error serves it...
    assert get(envoy, key.api_key).status_code == 200
    wait_until(fetched + 1.3, "the cached answer to pass its TTL")
    assert get(envoy, key.api_key).status_code == 200
    assert envoy.stat(METRIC + "cache_stale") >= 1
    # ...until ttl + max_stale after the answer, however often it is asked meanwhile.
    while time.monotonic() < fetched + 2.5:
        get(envoy, key.api_key)
        time.sleep(0.05)
    wait_until(fetched + 3.2, "the cached answer to pass ttl + max_stale")
    refused = get(envoy, key.api_key)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    # When the store is back, its answer decides again (this Redis keeps nothing on
    # disk: it no longer knows the key at all).
    redis_server.start()
    wait_for(lambda: get(envoy, key.api_key).status_code == 401, 10, "the store's answer")


def test_a_404_that_is_not_the_stores_is_an_error_not_an_unknown_key(deployment, start_envoy,
                                                                     echo, recording_store):
    """A 404 without the contract's body (a wrong path_prefix, an ingress's default
    backend) neither refuses keys as unknown nor evicts what was cached."""
    partner = random_key()
    store = recording_store({partner: {"key_id": "key_1", "tenant_id": "acme",
                                       "status": "active"}})
    envoy = start_envoy(gateway(deployment, echo, store, {
        "cache": {"ttl": "1s", "max_stale": "60s", "error_backoff": "200ms"}}))
    assert get(envoy, partner).status_code == 200
    assert get(envoy, random_key()).status_code == 401  # the contract's 404
    fetched = time.monotonic()
    store.misrouted = True
    unknown = get(envoy, random_key())
    assert unknown.status_code == 503 and "www-authenticate" not in unknown.headers
    wait_until(fetched + 1.2, "the cached answer to pass its TTL")
    assert Seen(get(envoy, partner)).header("x-tenant-id") == "acme"  # served stale
    assert envoy.stat(METRIC + "store_error.invalid_response") >= 2
    assert envoy.stat(METRIC + "denied.unknown") == 1


def test_past_max_in_flight_a_new_key_gets_503_at_once_and_a_known_one_its_answer(
        deployment, start_envoy, echo, recording_store):
    known = random_key()
    store = recording_store({known: {"key_id": "key_1", "tenant_id": "acme",
                                     "status": "active"}}, delay=2.0)
    envoy = start_envoy(gateway(deployment, echo, store, {
        "store": {"timeout": "5s", "max_in_flight": 1}}))
    assert get(envoy, known).status_code == 200  # cached from now on (2 s)
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(get, envoy, random_key())  # holds the only permit for 2 s
        wait_for(lambda: store.counts()["in_flight"] == 1, 10, "the first lookup")
        started = time.monotonic()
        refused = get(envoy, random_key())
        assert time.monotonic() - started < 1.5, "answered without waiting for a permit"
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert get(envoy, known).status_code == 200
        assert slow.result(timeout=10).status_code == 401
    assert store.counts()["max_in_flight"] == 1
    assert envoy.stat(METRIC + "denied.overloaded") == 1
    assert get(envoy, random_key()).status_code == 401  # the permit is back


def test_a_hung_store_ends_requests_at_the_timeout_with_503(deployment, start_envoy, echo,
                                                            hung_server):
    envoy = start_envoy(gateway(deployment, echo, hung_server, {"store": {"timeout": "500ms"}}))
    key, other = random_key(), random_key()

    def timed(k):
        started = time.monotonic()
        resp = get(envoy, k, timeout=10)
        return resp.status_code, time.monotonic() - started

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(timed, [key] * 5 + [other]))
    for status, elapsed in results:
        assert status == 503
        assert elapsed >= 0.4, results  # it did wait for the store...
    # ...on one lookup per key, which Envoy ended at the timeout (with a local 504).
    assert envoy.metric(METRIC + "store_lookups_total") == 2
    assert envoy.metric(METRIC + "store_errors_total", kind="status") == 2
    assert envoy.metric(METRIC + "denied_total", reason="store_unavailable") == 6
    assert get(envoy).status_code == 401  # and the gateway still answers at once


def test_a_request_body_cannot_push_a_request_past_a_pending_lookup(deployment, start_envoy, echo,
                                                                   hung_server):
    # A body that arrives while the headers wait for the lookup must wait with them,
    # or the request would go upstream unchecked.
    envoy = start_envoy(gateway(deployment, echo, hung_server, {"store": {"timeout": "500ms"}}))
    for body in (b"x" * 10, b"y" * 200_000):
        resp = requests.post(envoy.url("/orders"), data=body, timeout=10,
                             headers={"x-api-key": random_key()})
        assert resp.status_code == 503, resp.text[:300]
    assert requests.get(echo.url("/__echo/stats")).json()["requests"] == 0


def test_a_request_body_reaches_the_upstream_after_the_lookup(deployment, start_envoy, echo,
                                                              keystore):
    envoy = start_envoy(gateway(deployment, echo, keystore.service))
    body = "order=" + "z" * 50_000  # the echo server echoes up to 64 KiB
    created = keystore.create("acme", "gold")
    resp = requests.post(envoy.url("/orders"), data=body, timeout=10,
                         headers={"x-api-key": created.api_key})
    seen = Seen(resp)
    assert seen.header("x-tenant-id") == "acme"
    assert seen.body == body
    assert envoy.metric(METRIC + "cache_lookups_total", result="miss") == 1


def test_fail_open_passes_anonymously_when_the_store_cannot_answer(deployment, start_envoy, echo,
                                                                   hung_server):
    envoy = start_envoy(gateway(deployment, echo, hung_server,
                                {"store": {"timeout": "300ms"}, "fail_open": True}))
    key = random_key()
    resp = get(envoy, key, headers={"x-tenant-id": "spoofed"})
    assert resp.status_code == 200
    seen = Seen(resp)
    assert seen.header("x-tenant-id") is None
    assert seen.header("x-api-key-id") is None
    assert seen.header("x-api-key") is None
    assert envoy.metric(METRIC + "fail_open_total") == 1


def test_a_missing_store_cluster_is_a_503_not_a_crash(deployment, start_envoy, echo, keystore):
    envoy = start_envoy(gateway(deployment, echo, keystore.service,
                                {"store": {"cluster": "no-such-cluster"}}))
    assert get(envoy, random_key()).status_code == 503
    assert envoy.metric(METRIC + "store_errors_total", kind="dispatch") == 1
    assert envoy.alive()


def test_twenty_thousand_random_keys_leave_the_cache_at_its_bound(deployment, start_envoy, echo,
                                                                  keystore):
    # 64.0: Istio delivers every number as a double.
    # A generous timeout: this test is about the bound, and a loaded machine must not
    # turn a slow lookup into a 503.
    envoy = start_envoy(gateway(deployment, echo, keystore.service, {"store": {"timeout": "10s"},
                                                         "cache": {"slots": 64.0}}))
    statuses = load(envoy, lambda i: [random_key() for _ in range(1250)], connections=16)
    assert statuses == Counter({401: 20_000})
    # Every key was looked up once (no colliding key was mistaken for another)...
    assert keystore.lookups() == 20_000
    # ...and the table holds at most its 64 slots, all now in use.
    assert envoy.metric(METRIC + "cache_slots") == 64
    assert envoy.metric(METRIC + "cache_entries") == 64
    created = keystore.create("acme", "gold")
    assert get(envoy, created.api_key).status_code == 200
    assert envoy.alive()


def test_hmac_pepper_comes_from_the_environment_not_the_config(
        deployment, start_envoy, echo, keystore, monkeypatch):
    pepper = secrets.token_urlsafe(24)
    monkeypatch.setenv("WASMGATE_TEST_PEPPER", pepper)  # Envoy inherits it
    envoy = start_envoy(gateway(deployment, echo, keystore.service, {
        "pepper_env": "WASMGATE_TEST_PEPPER",
        "hide_credentials": False,
    }, env_keys=["WASMGATE_TEST_PEPPER"]))
    peppered = keystore.create("acme", "gold", "--pepper-env", "WASMGATE_TEST_PEPPER",
                               env={"WASMGATE_TEST_PEPPER": pepper})
    plain = keystore.create("beta", "free")
    resp = get(envoy, peppered.api_key)
    assert Seen(resp).header("x-tenant-id") == "acme"
    # hide_credentials: false forwards the key as sent.
    assert Seen(resp).header("x-api-key") == peppered.api_key
    assert get(envoy, plain.api_key).status_code == 401
    assert pepper not in envoy.admin("/config_dump")


@pytest.mark.parametrize("config, field, problem", [
    ({"store": {"cluster": ""}}, "store.cluster", "may not be empty"),
    ({"store": {"timeout": "soon"}}, "store.timeout", "expected a duration"),
    ({"cache": {"slots": 0}}, "cache.slots", "between 1 and"),
    ({"store": {"max_in_flight": 0}}, "store.max_in_flight", "between 1 and 1024"),
    ({"cache": {"max_stale": "2h"}}, "cache.max_stale", "at most 1h"),
    ({"cache": {"ttl": "100ms"}}, "cache.ttl", "between 1s and 1h"),
    ({"format": {"min_length": 60, "max_length": 50}}, "format.min_length", "larger than"),
    ({"sources": {"headers": []}}, "sources", "no key source"),
    ({"pepper_env": "WASMGATE_PEPPER_THAT_IS_NOT_SET"}, "pepper_env", "is not set in the Wasm VM"),
    ({"forward": {"plan": "x-api-key"}}, "forward.plan", "also a key source"),
    ({"hide_credential": True}, "hide_credential", "unknown field"),
])
def test_invalid_config_is_refused_with_the_field_named(deployment, refused_envoy, echo,
                                                        hung_server,
                                                        config, field, problem):
    returncode, log = refused_envoy(gateway(deployment, echo, hung_server, config))
    assert returncode != 0
    lines = [line for line in log.splitlines() if "invalid plugin configuration" in line]
    assert lines, log[-3000:]
    assert deployment.refusal("api-key", field) + ": " in lines[0], lines[0]
    assert problem in lines[0], lines[0]


def test_the_documented_example_works_as_documented(deployment, start_envoy, echo, keystore):
    """The example of docs/filters/api-key.md."""
    example = doc_example("docs/filters/api-key.md", "api-key")
    envoy = start_envoy(gateway(deployment, echo, keystore.service, example))
    created = keystore.create("acme", "gold")
    for headers in ({"x-api-key": created.api_key}, {"authorization": f"Bearer {created.api_key}"}):
        seen = Seen(get(envoy, headers=headers))
        assert (seen.header("x-tenant-id"), seen.header("x-plan")) == ("acme", "gold")
        assert seen.header("x-api-key") is None and seen.header("authorization") is None
    assert get(envoy, path="/health").status_code == 200
    denied = get(envoy, random_key())
    assert denied.headers["www-authenticate"] == 'ApiKey realm="orders-api"'
