"""Host-aware rules in real Envoy: one listener with two virtual hosts (an exact host,
matched with any port as Istio's gateways do, and a `*.` wildcard), one plugin
configuration for both, and each filter giving each host its own rules through
`match.hosts` (case and port ignored). Every test runs with the separate filter and
with the combined module's stage (`deployment`)."""

import requests

from harness import Seen
from harness.bootstrap import bootstrap, cluster, http_listener
from harness.jwt import KeyDir, plugin_config, provider, remote_jwks, start_jwks

SHOP = "shop.example.test"
PARTNERS = "*.partners.example.test"


def two_hosts(deployment, echo, *chain, more_clusters=()) -> dict:
    """`chain` in front of two virtual hosts routing to the echo upstream, each adding
    `x-vhost` so the upstream shows which one served the request."""
    def vhost(name, domains):
        return {"name": name, "domains": domains,
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}],
                "request_headers_to_add": [{"header": {"key": "x-vhost", "value": name}}]}

    listener = http_listener("main", deployment.filters(*chain), [])
    listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"] = [
        vhost("shop", [SHOP, f"{SHOP}:*"]),
        vhost("partners", [PARTNERS]),
    ]
    return bootstrap([listener], [cluster("upstream", echo.host, echo.port), *more_clusters])


def get(envoy, host, path="/", **headers):
    return requests.get(envoy.url(path), headers={"host": host, **headers}, timeout=10)


def test_the_header_filter_gives_each_host_its_rules(deployment, start_envoy, echo):
    config = {
        "rules": [
            {"match": {"hosts": [SHOP]}, "request": {"set": {"x-rules": "shop"}}},
            {"match": {"hosts": [PARTNERS], "prefix": "/api/"},
             "request": {"set": {"x-rules": "partners-api"}}},
        ],
        "default": {"request": {"set": {"x-rules": "default"}}},
    }
    envoy = start_envoy(two_hosts(deployment, echo, ("headers", config)))
    for host, path, vhost, rules in [
        (SHOP, "/api/x", "shop", "shop"),
        ("Shop.Example.TEST:8080", "/anything", "shop", "shop"),
        ("acme.partners.example.test", "/api/x", "partners", "partners-api"),
        ("ACME.Partners.example.test", "/api/x?q=1", "partners", "partners-api"),
        ("acme.partners.example.test", "/other", "partners", "default"),
    ]:
        resp = get(envoy, host, path)
        assert resp.status_code == 200, (host, path, resp.text)
        seen = Seen(resp)
        assert (seen.header("x-vhost"), seen.header("x-rules")) == (vhost, rules), (host, path)


def test_the_jwt_filter_gives_each_host_its_rules(deployment, tmp_path, start_envoy,
                                                  start_service, echo):
    keys = KeyDir(tmp_path / "keys")
    keys.add("k1", "ES256")
    jwks = start_jwks(start_service, keys)
    config = plugin_config(
        providers={"idp": provider(jwks=remote_jwks())},
        rules=[
            {"match": {"hosts": [SHOP]}, "public": True},
            {"match": {"hosts": [PARTNERS], "prefix": "/api/"}, "providers": ["idp"],
             "required_scopes": ["partners:read"]},
        ])
    envoy = start_envoy(two_hosts(deployment, echo, ("jwt", config),
                                  more_clusters=[cluster("idp", jwks.host, jwks.port)]))
    partner = "acme.partners.example.test"
    bearer = lambda scope: {"authorization": f"Bearer {keys.mint('k1', scope=scope)}"}  # noqa: E731

    # The shop is public, whatever the port or case of its host.
    for host in (SHOP, "SHOP.example.test:8443"):
        resp = get(envoy, host, "/api/x")
        assert resp.status_code == 200, resp.text
        assert Seen(resp).header("x-vhost") == "shop"
    # The partners' API needs a token with its scope; the rest of their host the
    # default (any valid token).
    assert get(envoy, partner, "/api/x").status_code == 401
    assert get(envoy, partner, "/api/x", **bearer("orders:read")).status_code == 403
    resp = get(envoy, "Acme.Partners.Example.test", "/api/x", **bearer("partners:read"))
    assert resp.status_code == 200, resp.text
    assert Seen(resp).header("x-vhost") == "partners"
    assert get(envoy, partner, "/other").status_code == 401
    assert get(envoy, partner, "/other", **bearer("orders:read")).status_code == 200


def test_the_api_key_filter_skips_by_host(deployment, start_envoy, echo):
    # The store is never asked: a request without a key is refused before any lookup.
    config = {"store": {"cluster": "keystore"}, "skip": [{"hosts": [SHOP], "methods": ["GET"]}]}
    envoy = start_envoy(two_hosts(deployment, echo, ("api-key", config),
                                  more_clusters=[cluster("keystore", echo.host, echo.port)]))
    resp = get(envoy, "Shop.example.test:8080", "/orders")
    assert resp.status_code == 200, resp.text
    assert Seen(resp).header("x-vhost") == "shop"
    assert requests.post(envoy.url("/orders"), headers={"host": SHOP}, timeout=10).status_code == 401
    resp = get(envoy, "acme.partners.example.test", "/orders")
    assert resp.status_code == 401, resp.text
    assert envoy.stat("wasmcustom.wasmgate.api_key.skipped") == 1


def test_the_rate_limit_filter_limits_each_host_by_its_rule(deployment, start_envoy, echo):
    config = {
        "identity": [{"header": "x-user-id"}],
        "rules": [
            {"name": "shop", "match": {"hosts": [SHOP]},
             "limits": [{"requests": 2, "per": "1h"}]},
            {"name": "partners", "match": {"hosts": [PARTNERS]},
             "limits": [{"requests": 4, "per": "1h"}]},
        ],
    }
    envoy = start_envoy(two_hosts(deployment, echo, ("rate-limit", config)))

    def statuses(host, count):
        answers = [get(envoy, host, "/x", **{"x-user-id": "alice"}) for _ in range(count)]
        return [a.status_code for a in answers], answers[0].headers.get("x-ratelimit-limit")

    # One client, two hosts: each host's rule with its own limit and its own buckets
    # (the port and case of the host do not make a new one).
    assert statuses(SHOP, 2) == ([200, 200], "2")
    assert statuses("SHOP.example.test:8080", 1) == ([429], "2")
    assert statuses("a.partners.example.test", 4) == ([200] * 4, "4")
    assert statuses("b.partners.example.test", 1) == ([429], "4")
