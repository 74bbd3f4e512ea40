"""The JWT filter finding its JWKS through OpenID Connect discovery, in real Envoy (two
workers), against the demo issuer (`wasmgate-demo jwks`), which serves a discovery
document beside its JWKS and fails, hangs up or lies on demand: the document first,
then the JWKS it names, once for all workers; a document of another issuer refused;
discovery down at start (requests wait, then pass, or get 503) and down later (the
last good jwks_uri keeps the keys fresh); a jwks_uri on another host fetched through
that host's cluster. Every test runs with the separate filter and with the combined
module's `jwt` stage (`deployment`)."""

import json

from harness import Seen, wait_for
from harness.bootstrap import cluster
from harness.jwt import (ISSUER, Background, KeyDir, call, discovered_jwks, jwt_gateway,
                         plugin_config, provider, start_jwks)

STAT = "wasmcustom.wasmgate.jwt."
FOUND = STAT + "discovery.success"
NOT_FOUND = STAT + "discovery.failure"
REFUSED = STAT + "discovery.refused"
KEYS_OK = STAT + "jwks_fetch.success"


def setup(deployment, tmp_path, start_envoy, start_service, echo, discovery_mode=None,
          issuer_args=(), more_clusters=(), **remote):
    keys = KeyDir(tmp_path / "keys")
    keys.add("k1", "ES256")
    idp = start_jwks(start_service, keys, *issuer_args)
    if discovery_mode:
        idp.discovery_mode(**discovery_mode)
    config = plugin_config(providers={"idp": provider(jwks=discovered_jwks(**remote))})
    envoy = start_envoy(jwt_gateway(echo, config, idp, deployment=deployment,
                                    more_clusters=more_clusters(keys) if more_clusters else ()))
    return envoy, idp, keys


def test_the_document_names_the_jwks_and_both_are_fetched_once_for_two_workers(
        deployment, tmp_path, start_envoy, start_service, echo):
    envoy, idp, keys = setup(deployment, tmp_path, start_envoy, start_service, echo)
    wait_for(lambda: envoy.stat(KEYS_OK) >= 1, 10, "the discovery document, then the JWKS")
    for i in range(20):
        resp = call(envoy, keys.mint("k1", sub=f"user{i}"))
        assert resp.status_code == 200, resp.text
        assert Seen(resp).header("x-user-id") == f"user{i}"
    stats = idp.stats()
    assert (stats["discovery_requests"], stats["requests"]) == (1, 1)
    assert (envoy.stat(FOUND), envoy.stat(KEYS_OK), envoy.stat(NOT_FOUND)) == (1, 1, 0)
    assert "discovery document read, jwks_uri https://issuer.wasmgate.test/.well-known/jwks.json" \
        in envoy.log()


def test_a_document_of_another_issuer_is_refused_until_the_issuer_serves_its_own(
        deployment, tmp_path, start_envoy, start_service, echo):
    # An issuer that answers for another one (a misconfigured proxy, a DNS mix-up, an
    # attacker): its jwks_uri must not be followed, whatever keys it points to.
    forged = {"issuer": "https://evil.test", "jwks_uri": f"{ISSUER}/.well-known/jwks.json"}
    envoy, idp, keys = setup(deployment, tmp_path, start_envoy, start_service, echo,
                             discovery_mode={"body": json.dumps(forged)},
                             backoff_initial="200ms", backoff_max="200ms", max_wait="100ms")
    wait_for(lambda: envoy.stat(REFUSED) >= 2, 10, "refused discovery documents")
    resp = call(envoy, keys.mint("k1"))
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"] == "temporarily_unavailable"
    assert "www-authenticate" not in resp.headers
    assert idp.requests() == 0  # the JWKS the forged document names was never fetched
    assert envoy.stat(FOUND) == 0
    assert envoy.stat(NOT_FOUND) >= envoy.stat(REFUSED)
    assert ('discovery document refused: the document\'s issuer "https://evil.test" is not '
            f'the configured "{ISSUER}"') in envoy.log()
    idp.discovery_mode()  # the issuer's own document
    wait_for(lambda: call(envoy, keys.mint("k1")).status_code == 200, 10,
             "keys once the issuer's own document is served")
    assert idp.requests() == 1


def test_discovery_down_at_start_requests_wait_then_pass(deployment, tmp_path, start_envoy,
                                                          start_service, echo):
    envoy, idp, keys = setup(deployment, tmp_path, start_envoy, start_service, echo,
                             discovery_mode={"down": True},
                             backoff_initial="200ms", backoff_max="500ms", max_wait="20s")
    waiting = [Background(envoy, keys.mint("k1", sub=f"early{i}")) for i in range(4)]
    wait_for(lambda: envoy.stat(NOT_FOUND) >= 2, 15, "failed discovery fetches")
    assert not any(w.done() for w in waiting), "requests should wait for discovery and keys"
    assert idp.requests() == 0
    idp.discovery_mode()  # back up
    for i, request in enumerate(waiting):
        resp = request.result()
        assert resp.status_code == 200, resp.text
        assert Seen(resp).header("x-user-id") == f"early{i}"
    assert envoy.stat(STAT + "waited_for_keys") == 4
    assert envoy.alive()


def test_discovery_failing_beyond_the_wait_is_503_not_401(deployment, tmp_path, start_envoy,
                                                          start_service, echo):
    envoy, idp, keys = setup(deployment, tmp_path, start_envoy, start_service, echo,
                             discovery_mode={"status": 500},
                             backoff_initial="100ms", backoff_max="200ms", max_wait="500ms")
    resp = call(envoy, keys.mint("k1"))
    assert resp.status_code == 503, resp.text
    assert "www-authenticate" not in resp.headers
    assert envoy.stat(STAT + "denied.keys_unavailable") == 1
    # A document that is not one (no jwks_uri) is a failure too, not a refusal.
    idp.discovery_mode(body=json.dumps({"issuer": ISSUER}))
    wait_for(lambda: idp.stats()["discovery_served"] >= 1 and envoy.stat(NOT_FOUND) >= 3, 10,
             "the broken document to be fetched")
    assert call(envoy, keys.mint("k1")).status_code == 503
    assert envoy.stat(REFUSED) == 0


def test_discovery_down_later_the_last_good_jwks_uri_keeps_the_keys_fresh(
        deployment, tmp_path, start_envoy, start_service, echo):
    envoy, idp, keys = setup(deployment, tmp_path, start_envoy, start_service, echo,
                             cache_duration="1s", min_cache_duration="1s",
                             backoff_initial="200ms", backoff_max="200ms")
    assert call(envoy, keys.mint("k1")).status_code == 200
    idp.discovery_mode(down=True)
    # Both documents are due every second: the document fails again and again, and the
    # JWKS is still refreshed from the jwks_uri the last good document named.
    keys_before = envoy.stat(KEYS_OK)
    wait_for(lambda: envoy.stat(NOT_FOUND) >= 3 and envoy.stat(KEYS_OK) >= keys_before + 2,
             15, "failed discovery fetches and JWKS refreshes beside them")
    # A key published meanwhile is found through those refreshes.
    keys.add("k2", "EdDSA")
    wait_for(lambda: call(envoy, keys.mint("k2")).status_code == 200, 10,
             "the new key through the last good jwks_uri")
    for i in range(6):  # new tokens: verified with the keys, not the token cache
        resp = call(envoy, keys.mint("k1", sub=f"later{i}"))
        assert resp.status_code == 200, resp.text
        assert Seen(resp).header("x-user-id") == f"later{i}"


def test_a_jwks_uri_on_another_host_goes_through_that_hosts_cluster(
        deployment, tmp_path, start_envoy, start_service, echo):
    # The issuer's document names keys on keys.wasmgate.test, which the configuration
    # maps to cluster `keys` (a second server with the same key directory); nothing
    # maps evil.test.
    def keys_cluster(keys):
        keys_server = start_jwks(start_service, keys, name="keys")
        holder["keys"] = keys_server
        return [cluster("keys", keys_server.host, keys_server.port)]

    holder = {}
    envoy, idp, keys = setup(
        deployment, tmp_path, start_envoy, start_service, echo,
        issuer_args=("--jwks-uri", "https://Keys.wasmgate.test:8443/jwks"),
        more_clusters=keys_cluster, jwks_clusters={"keys.wasmgate.test": "keys"},
        cache_duration="1s", min_cache_duration="1s",
        backoff_initial="200ms", backoff_max="200ms")
    resp = call(envoy, keys.mint("k1"))
    assert resp.status_code == 200, resp.text
    assert holder["keys"].requests() >= 1
    assert idp.requests() == 0
    # The IdP now points at a host no cluster is named for: refused, and the keys keep
    # coming from where the last good document said.
    elsewhere = {"issuer": ISSUER, "jwks_uri": "https://evil.test/jwks"}
    idp.discovery_mode(body=json.dumps(elsewhere))
    wait_for(lambda: envoy.stat(REFUSED) >= 2, 10, "the refused documents")
    assert ('jwks_uri "https://evil.test/jwks" is on host "evil.test", which is neither the '
            'discovery document\'s ("issuer.wasmgate.test") nor in jwks_clusters') in envoy.log()
    served = holder["keys"].requests()
    wait_for(lambda: holder["keys"].requests() > served, 10, "a JWKS refresh from keys")
    assert call(envoy, keys.mint("k1", sub="still")).status_code == 200
    assert idp.requests() == 0
