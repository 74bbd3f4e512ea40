"""The combined module (build/wasm/combined.wasm) as a whole, in real Envoy (two workers).

The separate filters' tests run against it too (their `deployment` fixture); these show
what they cannot: stages working on one request (the identity one stage sets is what
the next one counts, a header one stage strips is gone for the next), a request that one
stage paused going on through the later stages once released, and the combined
configuration's own refusals. The chain tests run against both deployments: the
combined module must answer as the chained separate filters do."""

import threading

import pytest
import requests

from harness import Seen, wait_for, wasm_path
from harness.bootstrap import bootstrap, cluster, http_listener, route, wasm_filter
from harness.docs import doc_example
from harness.jwt import (AUDIENCE, ISSUER, KeyDir, plugin_config, provider, remote_jwks,
                         start_jwks)

HEADERS = {
    "strip_inbound": ["x-user-id", "x-tenant-id", "x-api-key-id", "x-plan"],
    "default": {"request": {"set": {"x-gateway": "wasmgate"}},
                "response": {"set": {"x-served-by": "wasmgate"}}},
}
# Two requests per hour per client, clients told apart by the identity the auth
# stages set.
RATE_LIMIT = {
    "table": {"slots": 1024},
    "identity": [{"header": "x-api-key-id"}, {"header": "x-user-id"}],
    "default": {"limits": [{"requests": 2, "per": "1h"}]},
}


def chain(deployment, echo, *filters, clusters=()) -> dict:
    return bootstrap(
        [http_listener("main", deployment.filters(*filters),
                       [route("/", "upstream", name="default")])],
        [cluster("upstream", echo.host, echo.port), *clusters],
    )


@pytest.fixture
def keys(tmp_path):
    keys = KeyDir(tmp_path / "keys")
    keys.add("k1", "ES256")
    return keys


def jwt_chain(deployment, echo, jwks, **remote):
    jwt = plugin_config(providers={"idp": provider(jwks=remote_jwks(**remote))})
    return chain(deployment, echo, ("headers", HEADERS), ("jwt", jwt), ("rate-limit", RATE_LIMIT),
                 clusters=[cluster("idp", jwks.host, jwks.port)])


def get(envoy, token=None, **headers):
    if token:
        headers["authorization"] = f"Bearer {token}"
    return requests.get(envoy.url("/orders"), headers=headers, timeout=20)


def test_each_stage_works_on_what_the_previous_one_left(start_envoy, start_service, echo, keys,
                                                        deployment):
    jwks = start_jwks(start_service, keys)
    envoy = start_envoy(jwt_chain(deployment, echo, jwks))
    token = keys.mint("k1", sub="alice")
    answers = [get(envoy, token, **{"x-user-id": f"spoofed-{i}"}) for i in range(3)]
    first, second, third = answers
    # The header stage stripped the spoofed id, the JWT stage set the token's, and the
    # rate limit counted that one: a client cannot buy new buckets by sending new ids.
    for resp in (first, second):
        assert resp.status_code == 200, resp.text
        seen = Seen(resp)
        assert seen.header("x-user-id") == "alice"
        assert seen.header("x-gateway") == "wasmgate"
        assert resp.headers["x-served-by"] == "wasmgate"
    assert [r.headers["x-ratelimit-remaining"] for r in (first, second)] == ["1", "0"]
    assert third.status_code == 429
    # Another user has buckets of their own.
    assert get(envoy, keys.mint("k1", sub="bob")).headers["x-ratelimit-remaining"] == "1"
    # A refused request never reaches the rate limit; its answer still goes through the
    # header stage's response rules, as the chained filters' does.
    refused = get(envoy)
    assert refused.status_code == 401
    assert "x-ratelimit-remaining" not in refused.headers
    assert refused.headers["x-served-by"] == "wasmgate"
    assert third.headers["x-served-by"] == "wasmgate"
    assert envoy.metric("wasmgate_rate_limit_allowed_total") == 3
    assert envoy.metric("wasmgate_rate_limit_limited_total") == 1
    assert envoy.metric("wasmgate_jwt_denied_total", reason="missing_token") == 1


def test_a_request_one_stage_paused_goes_through_the_later_stages(start_envoy, start_service,
                                                                  echo, keys, deployment):
    """Requests wait for the first JWKS (the IdP is down at start); once it is up, each
    goes on through the rate limit: one is admitted, the same user's next is limited."""
    jwks = start_jwks(start_service, keys)
    jwks.mode(down=True)
    envoy = start_envoy(jwt_chain(deployment, echo, jwks, max_wait="10s"))
    token = keys.mint("k1", sub="carol")
    answers = [None] * 3

    def send(i):
        answers[i] = get(envoy, token, connection="close")

    threads = [threading.Thread(target=send, args=(i,), daemon=True) for i in range(3)]
    for t in threads:
        t.start()
    # All three are held (none has an answer) until the keys come.
    waited = "wasmgate_jwt_waited_for_keys_total"
    wait_for(lambda: envoy.metric(waited) == 3, 10, "the three requests to wait for keys")
    assert answers == [None, None, None]
    jwks.mode()  # up again
    for t in threads:
        t.join(20)
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200, 200, 429], [(a.status_code, a.text) for a in answers]
    for answer in answers:
        assert answer.headers["x-served-by"] == "wasmgate"
        if answer.status_code == 200:
            assert Seen(answer).header("x-user-id") == "carol"
            assert answer.headers["x-ratelimit-limit"] == "2"


def test_a_request_waiting_for_the_key_store_goes_through_the_rate_limit(start_envoy, echo,
                                                                         keystore, deployment):
    api_key = {"store": {"cluster": "keystore"}}
    envoy = start_envoy(chain(
        deployment, echo, ("headers", HEADERS), ("api-key", api_key), ("rate-limit", RATE_LIMIT),
        clusters=[cluster("keystore", keystore.service.host, keystore.service.port)]))
    created = keystore.create("acme", "gold")
    # The first request pauses for the lookup; the second finds the cached answer.
    answers = [get(envoy, **{"x-api-key": created.api_key, "x-api-key-id": "spoofed"})
               for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert [a.headers.get("x-ratelimit-remaining") for a in answers[:2]] == ["1", "0"]
    assert Seen(answers[0]).header("x-api-key-id") == created.key_id
    assert envoy.metric("wasmgate_api_key_store_lookups_total") == 1


@pytest.mark.parametrize("config, problem", [
    ({}, "wasmgate-combined: invalid plugin configuration: no stage configured"),
    ({"headers": None}, "wasmgate-combined: invalid plugin configuration: no stage configured"),
    ({"headers": {}, "jwt_auth": {}},
     "wasmgate-combined: invalid plugin configuration: jwt_auth: unknown field `jwt_auth`, "
     "expected one of `headers`, `jwt`, `api_key`, `rate_limit`"),
    ({"headers": {}, "rate_limit": {"default": {"limits": [{"requests": 0, "per": "1s"}]}}},
     "wasmgate-combined: invalid plugin configuration: rate_limit.default.limits[0].requests: "),
])
def test_a_combined_configuration_is_refused_as_a_whole(refused_envoy, echo, config, problem):
    filters = [wasm_filter(wasm_path("combined"), config, name="combined")]
    returncode, log = refused_envoy(bootstrap(
        [http_listener("main", filters, [route("/", "upstream", name="default")])],
        [cluster("upstream", echo.host, echo.port)]))
    assert returncode != 0
    lines = [line for line in log.splitlines() if "invalid plugin configuration" in line]
    assert len(lines) == 1, log[-3000:]
    assert problem in lines[0], lines[0]


def test_the_documented_example_works_as_documented(start_envoy, start_service, echo, keys):
    """The example of docs/filters/combined.md."""
    jwks = start_jwks(start_service, keys)
    config = doc_example("docs/filters/combined.md", "combined")
    idp = config["jwt"]["providers"]["idp"]
    idp["issuer"], idp["audiences"] = ISSUER, [AUDIENCE]  # the test issuer's tokens
    filters = [wasm_filter(wasm_path("combined"), config, name="combined")]
    envoy = start_envoy(bootstrap(
        [http_listener("main", filters, [route("/", "upstream", name="default")],
                       hcm_extra={"server_header_transformation": "PASS_THROUGH"})],
        [cluster("upstream", echo.host, echo.port), cluster("idp", jwks.host, jwks.port)]))
    health = requests.get(envoy.url("/health"), headers={"x-user-id": "admin"}, timeout=20)
    assert health.status_code == 200
    assert Seen(health).header("x-user-id") is None
    assert Seen(health).header("x-gateway") == "wasmgate"
    assert "server" not in health.headers
    assert get(envoy).status_code == 401
    resp = get(envoy, keys.mint("k1", sub="dave"))
    assert resp.status_code == 200, resp.text
    assert Seen(resp).header("x-user-id") == "dave"
    assert resp.headers["x-ratelimit-limit"] == "600"
