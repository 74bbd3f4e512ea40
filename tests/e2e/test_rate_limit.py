"""The rate-limit filter (build/wasm/rate-limit.wasm) in real Envoy (two workers) in front
of the echo upstream: who gets through, what the client is told, and what stays bounded.
Every test runs with the separate filter and with the combined module's `rate_limit`
stage (`deployment`)."""

import json
import math
import time

import pytest

from harness import wait_for
from harness.bootstrap import bootstrap, cluster, http_listener, route
from harness.load import fire_together, get, wrk_distinct_clients

STAT = "wasmgate_rate_limit_"


def gateway(deployment, echo, config, routes=None, before=()) -> dict:
    """Envoy with the rate-limit filter (after the filters `before` names: (filter,
    config) pairs), as `deployment` puts them, in front of echo."""
    return bootstrap(
        [http_listener("main", deployment.filters(*before, ("rate-limit", config)),
                       routes or [route("/", "upstream", name="default")])],
        [cluster("upstream", echo.host, echo.port)],
    )


def answered_by_envoy(prefix: str) -> dict:
    """A route Envoy answers itself (200), for tests where the upstream would only add
    work that says nothing about rate limiting."""
    return {"match": {"prefix": prefix},
            "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}


def per_user(*limits, **extra) -> dict:
    """One rule over every path, clients told apart by `x-user-id`."""
    return {
        "table": {"slots": 1024},
        "identity": [{"header": "x-user-id"}],
        "rules": [{"name": "api", "match": {"prefix": "/"}, "limits": list(limits)}],
        **extra,
    }


def as_user(user: str, **headers) -> dict:
    return {"x-user-id": user, **headers}


def worker_connections(envoy) -> list:
    """Downstream connections each Envoy worker accepted on the main listener."""
    stats = envoy.stats(r"^listener\.127\.0\.0\.1_\d+\.worker_\d+\.downstream_cx_total$")
    return sorted(stats.values())


def test_exactly_the_limit_is_admitted_across_workers(deployment, start_envoy, echo):
    envoy = start_envoy(gateway(deployment, echo,
                                per_user({"name": "hourly", "requests": 50, "per": "1h"}),
                                routes=[answered_by_envoy("/orders")]))
    started = time.time()
    answers = fire_together(envoy.port(), "/orders", 200, as_user("alice"))
    finished = time.time()
    # Both workers took connections: the count is shared, not per worker.
    per_worker = worker_connections(envoy)
    assert len(per_worker) == 2 and min(per_worker) > 0, per_worker

    statuses = [a.status for a in answers]
    assert statuses.count(200) == 50, statuses
    assert statuses.count(429) == 150, statuses
    assert envoy.metric(STAT + "allowed_total") == 50
    assert envoy.metric(STAT + "limited_total") == 150
    assert envoy.metric(STAT + "fail_open_total") == 0

    elapsed = math.ceil(finished - started)
    for answer in answers:
        assert answer.header("x-ratelimit-limit") == "50"
        # The bucket began refilling at the first admission (between `started` and
        # `finished`); after `taken` tokens it is full again `taken` × 72 s after that.
        taken = 50 - int(answer.header("x-ratelimit-remaining"))
        reset = int(answer.header("x-ratelimit-reset"))
        assert math.floor(started) + taken * 72 <= reset <= math.ceil(finished) + taken * 72, reset
        if answer.status == 200:
            continue
        assert answer.header("x-ratelimit-remaining") == "0"
        # One token every 72 s, counted from the first admission; whole seconds, never 0.
        retry_after = int(answer.header("retry-after"))
        assert 72 - elapsed - 1 <= retry_after <= 72, retry_after
        assert answer.header("content-type") == "application/problem+json"
        problem = json.loads(answer.body)
        assert problem["status"] == 429
        assert problem["violated-policies"] == ["hourly"]
        assert problem["retry_after"] == retry_after
    remaining = sorted(int(a.header("x-ratelimit-remaining")) for a in answers if a.status == 200)
    assert remaining == list(range(50)), "each admitted request saw its own count"


@pytest.mark.parametrize("reset_format", ["epoch", "delta"])
def test_allowed_responses_count_down_and_tell_when_the_quota_is_whole(deployment, start_envoy,
                                                                       echo, reset_format):
    envoy = start_envoy(gateway(deployment, echo, per_user({"requests": 50, "per": "1h"},
                                               reset_format=reset_format)))
    started = time.time()
    for taken in range(1, 6):
        answer = get(envoy.port(), "/x", as_user("bob"))
        assert answer.status == 200
        assert answer.header("x-ratelimit-limit") == "50"
        assert answer.header("x-ratelimit-remaining") == str(50 - taken)
        # Full again `taken` × 72 s after the first request, less what refilled since.
        reset = int(answer.header("x-ratelimit-reset"))
        elapsed = math.ceil(time.time() - started)
        if reset_format == "delta":
            assert taken * 72 - elapsed - 1 <= reset <= taken * 72, reset
        else:
            assert math.floor(started) + taken * 72 - 1 <= reset <= math.ceil(time.time()) + taken * 72, reset
    # Another client's count is untouched.
    assert get(envoy.port(), "/x", as_user("carol")).header("x-ratelimit-remaining") == "49"


def test_requests_pass_again_once_the_bucket_refills(deployment, start_envoy, echo):
    # One token every 2 s: slow enough that a loaded machine still sends three requests
    # before the first token comes back.
    envoy = start_envoy(gateway(deployment, echo, per_user({"requests": 2, "per": "4s"})))
    assert [get(envoy.port(), "/", as_user("dan")).status for _ in range(2)] == [200, 200]
    limited = get(envoy.port(), "/", as_user("dan"))
    assert limited.status == 429
    assert 1 <= int(limited.header("retry-after")) <= 2
    # Within a few seconds a request passes again.
    wait_for(lambda: get(envoy.port(), "/", as_user("dan")).status == 200, 10,
             "the bucket to refill")


def test_separate_clients_and_endpoints_have_separate_buckets(deployment, start_envoy, echo):
    one_per_hour = [{"requests": 1, "per": "1h"}]
    envoy = start_envoy(gateway(deployment, echo, {
        "table": {"slots": 1024},
        "identity": [{"header": "x-user-id"}, {"address": {"ipv4_prefix": 32}}],
        "rules": [
            {"name": "orders", "match": {"prefix": "/orders"}, "limits": one_per_hour},
            {"name": "reports", "match": {"prefix": "/reports"}, "limits": one_per_hour},
            {"name": "by-route", "match": {"prefix": "/"}, "endpoint": "route", "limits": one_per_hour},
        ],
    }, routes=[route("/users", "upstream", name="users"), route("/", "upstream", name="other")]))
    port = envoy.port()

    def status(path, source_ip="127.0.0.1", **headers):
        return get(port, path, headers, source_ip=source_ip).status

    assert status("/orders/1", **as_user("u1")) == 200
    assert status("/orders/2", **as_user("u1")) == 429  # same client, same rule
    assert status("/reports/1", **as_user("u1")) == 200  # another rule
    assert status("/orders/1", **as_user("u2")) == 200  # another client
    # `endpoint: route`: one bucket per Envoy route under the same rule.
    assert status("/users/1", **as_user("u1")) == 200
    assert status("/users/2", **as_user("u1")) == 429
    assert status("/misc", **as_user("u1")) == 200
    # No user id: the client is its address (/32 here), so another loopback address
    # is another client.
    assert status("/orders/9", source_ip="127.0.0.2") == 200
    assert status("/orders/9", source_ip="127.0.0.2") == 429
    assert status("/orders/9", source_ip="127.0.0.3") == 200


def test_address_prefix_masking_groups_a_network(deployment, start_envoy, echo):
    envoy = start_envoy(gateway(deployment, echo, {
        "table": {"slots": 1024},
        "identity": [{"address": {"ipv4_prefix": 24}}],
        "default": {"limits": [{"requests": 2, "per": "1h"}]},
    }))
    sources = ["127.0.0.5", "127.0.0.6", "127.0.0.7"]
    statuses = [get(envoy.port(), "/", source_ip=ip).status for ip in sources]
    assert statuses == [200, 200, 429], "one /24, one bucket"
    assert get(envoy.port(), "/", source_ip="127.0.1.5").status == 200


def test_a_gold_plan_gets_its_larger_limit(deployment, start_envoy, echo):
    envoy = start_envoy(gateway(deployment, echo, {
        "table": {"slots": 1024},
        "identity": [{"header": "x-api-key-id"}],
        "rules": [{"name": "api", "match": {"prefix": "/"},
                   "limits": [{"requests": 2, "per": "1h"}],
                   "plans": {"gold": [{"requests": 5, "per": "1h"}]}}],
    }))
    port = envoy.port()
    gold = [get(port, "/", {"x-api-key-id": "k-gold", "x-plan": "gold"}) for _ in range(6)]
    assert [a.status for a in gold] == [200] * 5 + [429]
    assert {a.header("x-ratelimit-limit") for a in gold} == {"5"}
    free = [get(port, "/", {"x-api-key-id": "k-free", "x-plan": "free"}) for _ in range(3)]
    assert [a.status for a in free] == [200, 200, 429]
    assert {a.header("x-ratelimit-limit") for a in free} == {"2"}


def test_several_limits_apply_together(deployment, start_envoy, echo):
    envoy = start_envoy(gateway(deployment, echo, per_user(
        {"name": "burst", "requests": 2, "per": "4s"},
        {"name": "hourly", "requests": 3, "per": "1h"},
        ietf_headers=True,
    )))
    port = envoy.port()

    def send():
        return get(port, "/", as_user("erin"))

    def send_until(predicate, what):
        return wait_for(lambda: (lambda a: a if predicate(a) else None)(send()), 10, what)

    def violated(answer):
        return json.loads(answer.body)["violated-policies"] if answer.status == 429 else []

    first = send()
    assert first.status == 200
    # draft-ietf-httpapi-ratelimit-headers-11: every policy, and each one's state.
    assert first.header("ratelimit-policy") == '"burst";q=2;w=4, "hourly";q=3;w=3600'
    assert first.header("ratelimit") == '"burst";r=1;t=2, "hourly";r=2;t=1200'
    assert send().status == 200
    # The burst limit refuses first; the refusal takes nothing from the hourly bucket...
    refused = send()
    assert refused.status == 429
    assert violated(refused) == ["burst"]
    assert 1 <= int(refused.header("retry-after")) <= 2
    # ...so once the burst bucket refills, the hourly bucket still has a third request.
    third = send_until(lambda a: a.status == 200, "the burst bucket to refill")
    assert third.header("x-ratelimit-remaining") == "0"
    assert '"hourly";r=0;' in third.header("ratelimit")
    # From now on the hourly limit refuses, whatever the burst bucket holds.
    refused = send_until(lambda a: violated(a) == ["hourly"], "a refusal by the hourly limit only")
    assert refused.header("x-ratelimit-limit") == "3"
    assert 1100 < int(refused.header("retry-after")) <= 1200


def test_shadow_mode_reports_but_never_refuses(deployment, start_envoy, echo):
    envoy = start_envoy(gateway(deployment, echo,
                                per_user({"requests": 2, "per": "1h"}, shadow=True)))
    answers = [get(envoy.port(), "/", as_user("fred")) for _ in range(5)]
    assert [a.status for a in answers] == [200] * 5
    assert [a.header("x-ratelimit-remaining") for a in answers] == ["1", "0", "0", "0", "0"]
    assert all(a.header("retry-after") is None for a in answers)
    assert envoy.metric(STAT + "allowed_total") == 2
    assert envoy.metric(STAT + "shadow_limited_total") == 3
    assert envoy.metric(STAT + "limited_total") == 0


def test_unmatched_requests_are_not_counted(deployment, start_envoy, echo):
    envoy = start_envoy(gateway(deployment, echo, {
        "table": {"slots": 1024},
        "rules": [{"name": "api", "match": {"prefix": "/api/"}, "limits": [{"requests": 1, "per": "1h"}]}],
    }))
    for _ in range(3):
        answer = get(envoy.port(), "/health")
        assert answer.status == 200
        assert answer.header("x-ratelimit-limit") is None
    assert get(envoy.port(), "/api/a").status == 200
    assert get(envoy.port(), "/api/a").status == 429


def test_spoofed_identity_headers_cannot_escape_the_limit(deployment, start_envoy, echo):
    """The documented order: a filter that strips client copies of the identity headers
    (here the header filter; in a gateway, the auth filters) runs before rate-limit."""
    strip = ("headers", {"strip_inbound": ["x-user-id", "x-plan"]})
    envoy = start_envoy(gateway(deployment, echo, {
        "table": {"slots": 1024},
        "identity": [{"header": "x-user-id"}, {"address": {}}],
        "default": {"limits": [{"requests": 3, "per": "1h"}],
                    "plans": {"gold": [{"requests": 100, "per": "1h"}]}},
    }, before=[strip]))
    statuses = [get(envoy.port(), "/", {"x-user-id": f"spoof-{i}", "x-plan": "gold"}).status
                for i in range(5)]
    assert statuses == [200, 200, 200, 429, 429]


def test_a_limited_client_stays_limited_through_a_flood_of_new_clients(deployment, start_envoy,
                                                                        echo, tmp_path):
    envoy = start_envoy(gateway(deployment, echo, {
        "table": {"slots": 1000},
        "identity": [{"header": "x-user-id"}],
        "rules": [{"name": "api", "match": {"prefix": "/"}, "limits": [{"requests": 5, "per": "1h"}]}],
    }))
    port = envoy.port()
    victim = [get(port, "/", as_user("victim")).status for _ in range(6)]
    assert victim == [200] * 5 + [429]

    sent = wrk_distinct_clients(port, "/", "x-user-id", 20_000, tmp_path, prefix="flood")
    assert sent >= 20_000, sent
    assert envoy.alive()
    counted = envoy.metric(STAT + "allowed_total") + envoy.metric(STAT + "limited_total")
    assert counted >= 20_000 + 6, counted
    # Every slot holds a bucket and the table grew no further: newcomers beyond it
    # share the rule's overflow bucket.
    assert envoy.metric(STAT + "slots_in_use") == 1000
    assert envoy.metric(STAT + "overflow_total") >= 20_000 - 1000
    assert envoy.metric(STAT + "fail_open_total") == 0
    # Nobody's bucket was reset to make room.
    after = get(port, "/", as_user("victim"))
    assert after.status == 429
    assert after.header("x-ratelimit-remaining") == "0"


INVALID = [
    ({"rules": [{"name": "a", "match": {"prefix": "/"}, "limits": [{"requests": 0, "per": "1h"}]}]},
     "rules[0].limits[0].requests", "from 1"),
    ({"rules": [{"name": "a", "match": {"prefix": "/"}, "limits": [{"requests": 5, "per": "60"}]}]},
     "rules[0].limits[0].per", "expected a duration"),
    ({"rules": [{"name": "a", "limits": [{"requests": 5, "per": "1h"}]}]},
     "rules[0].match", "every rule needs"),
    ({"default": {"limits": [{"requests": 5, "per": "1h", "burst": 1}], "cost": 2}},
     "default.limits[0].burst", "no request could ever pass"),
    ({"default": {"limits": [{"requests": 5, "per": "1h"}]}, "identity": [{"address": {"ipv6_prefix": 129}}]},
     "identity[0].address.ipv6_prefix", "0 to 128"),
    ({"default": {"limits": [{"requests": 5, "per": "1h"}]}, "table": {"slots": 4, "probe": 8}},
     "table.probe", "at most"),
    ({"default": {"limits": [{"requests": 5, "per": "1h"}]}, "status": 302},
     "status", "400 to 599"),
    ({"default": {"limits": [{"requests": 5, "per": "1h"}]}, "reset_format": "rfc1123"},
     "reset_format", "unknown variant"),
    ({}, "", "limit nothing"),
]


@pytest.mark.parametrize("config, field, problem", INVALID)
def test_invalid_config_is_refused_with_the_field_named(deployment, refused_envoy, echo, config,
                                                        field, problem):
    returncode, log = refused_envoy(gateway(deployment, echo, config))
    assert returncode != 0
    lines = [line for line in log.splitlines() if "invalid plugin configuration" in line]
    assert lines, log[-3000:]
    assert deployment.refusal("rate-limit", field) in lines[0], lines[0]
    assert problem in lines[0], lines[0]
