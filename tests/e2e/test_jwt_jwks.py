"""The JWT filter's JWKS handling in real Envoy (two workers) against the JWKS fixture
(`wasmgate-demo jwks`), which counts fetches and fails, slows down or goes away on
demand: one fetch for all workers, rotation without waiting for expiry, waiting for
the first keys, last-known-good keys, and 503 (not 401) when keys cannot be had. Every
test runs with the separate filter and with the combined module's `jwt` stage
(`deployment`)."""

import requests

from harness import Seen, wait_for
from harness.jwt import (Background, KeyDir, call, jwt_gateway, plugin_config, provider,
                         remote_jwks, start_jwks)

FETCHES = "wasmgate_jwt_jwks_fetches_total"


def setup(deployment, tmp_path, start_envoy, start_service, echo, jwks_mode=None, **remote):
    keys = KeyDir(tmp_path / "keys")
    keys.add("k1", "ES256")
    jwks = start_jwks(start_service, keys)
    if jwks_mode:
        jwks.mode(**jwks_mode)
    config = plugin_config(providers={"idp": provider(jwks=remote_jwks(**remote))})
    envoy = start_envoy(jwt_gateway(echo, config, jwks, deployment=deployment))
    return envoy, jwks, keys


def test_the_jwks_is_fetched_once_for_two_workers(deployment, tmp_path, start_envoy, start_service,
                                                  echo):
    envoy, jwks, keys = setup(deployment, tmp_path, start_envoy, start_service, echo)
    wait_for(lambda: envoy.metric(FETCHES, result="success") >= 1, 10, "the first JWKS fetch")
    for i in range(20):
        resp = call(envoy, keys.mint("k1", sub=f"user{i}"))
        assert resp.status_code == 200, resp.text
        assert Seen(resp).header("x-user-id") == f"user{i}"
    # Every VM (two workers and the main thread's) started, ticked and served: still
    # exactly one fetch.
    assert jwks.requests() == 1
    assert envoy.metric(FETCHES, result="success") == 1
    assert envoy.metric(FETCHES, result="failure") == 0


def test_a_rotated_key_works_at_once_and_unknown_kids_are_rate_limited(deployment, tmp_path,
                                                                       start_envoy,
                                                                    start_service, echo):
    envoy, jwks, keys = setup(deployment, tmp_path, start_envoy, start_service, echo,
                              cache_duration="1h")
    assert call(envoy, keys.mint("k1")).status_code == 200
    assert jwks.requests() == 1
    # The IdP publishes a new key and signs with it; our cache is an hour from expiry.
    keys.add("k2", "EdDSA")
    for i in range(6):
        resp = call(envoy, keys.mint("k2", sub=f"rotated{i}"))
        assert resp.status_code == 200, resp.text
        assert Seen(resp).header("x-user-id") == f"rotated{i}"
    assert jwks.requests() == 2  # one refetch, whichever worker asked first
    # A kid nobody publishes, right after: refused without another fetch.
    keys.add("ghost", "ES256", publish=False)
    resp = call(envoy, keys.mint("ghost"))
    assert resp.status_code == 401
    assert 'error_description="unknown signing key"' in resp.headers["www-authenticate"]
    assert jwks.requests() == 2
    assert call(envoy, keys.mint("k1")).status_code == 200


def test_jwks_down_at_start_requests_wait_then_pass_once_it_is_up(deployment, tmp_path, start_envoy,
                                                                  start_service, echo):
    envoy, jwks, keys = setup(deployment, tmp_path, start_envoy, start_service, echo,
                              jwks_mode={"down": True},
                              backoff_initial="200ms", backoff_max="500ms", max_wait="20s")
    waiting = [Background(envoy, keys.mint("k1", sub=f"early{i}")) for i in range(4)]
    # A client that gives up while its request waits: the filter must forget it.
    impatient = Background(envoy, keys.mint("k1"), timeout=0.5)
    wait_for(lambda: envoy.metric(FETCHES, result="failure") >= 2, 15, "failed JWKS fetches")
    assert not any(w.done() for w in waiting), "requests should wait for the keys"
    wait_for(impatient.done, 10, "the impatient client to give up")
    assert isinstance(impatient.error, requests.exceptions.Timeout), impatient.error
    jwks.mode()  # back up
    for i, request in enumerate(waiting):
        resp = request.result()
        assert resp.status_code == 200, resp.text
        assert Seen(resp).header("x-user-id") == f"early{i}"
    assert envoy.metric("wasmgate_jwt_waited_for_keys_total") == 5
    assert envoy.alive()


def test_no_keys_at_all_is_503_not_401(deployment, tmp_path, start_envoy, start_service, echo):
    envoy, jwks, keys = setup(deployment, tmp_path, start_envoy, start_service, echo,
                              jwks_mode={"status": 500}, backoff_initial="100ms",
                              backoff_max="200ms", max_wait="500ms")
    resp = call(envoy, keys.mint("k1"))
    assert resp.status_code == 503
    assert "www-authenticate" not in resp.headers
    assert resp.json()["error"] == "temporarily_unavailable"
    assert envoy.metric("wasmgate_jwt_denied_total", reason="keys_unavailable") == 1
    # A broken document is a failure too, never keys.
    jwks.mode(body='{"keys": [{"kty": "RSA", "n": "not base64!", "e": "AQAB"}]}')
    wait_for(lambda: jwks.stats()["served"] >= 1 and envoy.metric(FETCHES, result="failure") >= 3, 10,
             "the broken JWKS to be fetched")
    assert call(envoy, keys.mint("k1")).status_code == 503
    jwks.mode()
    wait_for(lambda: call(envoy, keys.mint("k1")).status_code == 200, 10, "keys after recovery")


def test_jwks_down_after_a_good_fetch_keeps_the_last_good_keys(deployment, tmp_path, start_envoy,
                                                              start_service, echo):
    envoy, jwks, keys = setup(deployment, tmp_path, start_envoy, start_service, echo,
                              cache_duration="1s",
                              min_cache_duration="1s", backoff_initial="200ms",
                              backoff_max="200ms", max_staleness="1h")
    assert call(envoy, keys.mint("k1")).status_code == 200
    jwks.mode(down=True)
    # The 1 s cache expires; refreshes fail again and again.
    wait_for(lambda: envoy.metric(FETCHES, result="failure") >= 3, 15, "failed refreshes")
    for i in range(6):  # new tokens: verified with the last good keys, not the token cache
        resp = call(envoy, keys.mint("k1", sub=f"later{i}"))
        assert resp.status_code == 200, resp.text
        assert Seen(resp).header("x-user-id") == f"later{i}"


def test_a_slow_jwks_within_the_timeout_holds_requests_until_it_answers(deployment, tmp_path,
                                                                        start_envoy,
                                                                       start_service, echo):
    envoy, jwks, keys = setup(deployment, tmp_path, start_envoy, start_service, echo,
                              jwks_mode={"delay_ms": 1500}, timeout="5s", max_wait="10s")
    resp = call(envoy, keys.mint("k1"))
    assert resp.status_code == 200, resp.text
    assert jwks.requests() == 1
    assert envoy.metric(FETCHES, result="failure") == 0


def test_a_jwks_slower_than_the_timeout_is_a_failure(deployment, tmp_path, start_envoy,
                                                     start_service, echo):
    envoy, jwks, keys = setup(deployment, tmp_path, start_envoy, start_service, echo,
                              jwks_mode={"delay_ms": 3000}, timeout="300ms",
                              backoff_initial="5s", max_wait="1s")
    wait_for(lambda: envoy.metric(FETCHES, result="failure") >= 1, 10, "the fetch to time out")
    assert call(envoy, keys.mint("k1")).status_code == 503
