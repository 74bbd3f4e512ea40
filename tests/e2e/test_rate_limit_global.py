"""The rate-limit filter's global tier (docs/filters/rate-limit.md, "Global tier") in real
Envoy, against a real `wasmgate-ratelimit` (one replica, memory store): the exact mode
asks about every request and answers a refusal as a local limit does; the lease mode
spends leased budgets without a call per request; without a service, each
`failure_mode` does what it says. Every test runs with the separate filter and with the
combined module's `rate_limit` stage (`deployment`). Fleets of gateways, Redis and
faults: test_rate_limit_fleet.py."""

import json
import time

import pytest

from harness import wait_for
from harness.global_tier import gateway_config, ratelimit_cluster, wasm_trouble
from harness.load import get
from harness.ports import free_ports
from harness.ratelimit_service import start_ratelimit


LIMITS = """
domain: wasmgate
descriptors:
  - key: rule
    value: exact
    descriptors:
      - key: x-tenant-id
        rate_limit: {name: per-tenant, unit: minute, requests_per_unit: 5}
  - key: rule
    value: lease
    descriptors:
      - key: x-tenant-id
        rate_limit: {name: per-tenant, unit: minute, requests_per_unit: 20}
  - key: rule
    value: seconds
    descriptors:
      - key: x-tenant-id
        rate_limit: {name: per-tenant, unit: second, requests_per_unit: 100000}
"""


def tier(mode: str, **extra) -> dict:
    return {"mode": mode, "cluster": "ratelimit", "timeout": "2s",
            "identity": [{"header": "x-tenant-id"}], **extra}


def rule(name: str, global_tier: dict, requests: int = 1000) -> dict:
    return {"name": name, "match": {"prefix": f"/{name}"},
            "limits": [{"name": "local", "requests": requests, "per": "1m"}],
            "global": global_tier}


def policy(*rules, **extra) -> dict:
    return {"table": {"slots": 1024, "lease_slots": 64}, "identity": [{"header": "x-user-id"}],
            "rules": list(rules), **extra}


def tenant(name: str) -> dict:
    return {"x-tenant-id": name}


@pytest.fixture
def service(start_service, tmp_path):
    limits = tmp_path / "limits.yaml"
    limits.write_text(LIMITS)
    return start_ratelimit(start_service, limits)


def gateway(start_envoy, deployment, config: dict, endpoints: list):
    return start_envoy(gateway_config([deployment.filter("rate-limit", config)],
                                      [ratelimit_cluster("ratelimit", endpoints)]))


def test_exact_refuses_past_the_global_limit_with_the_usual_answer(deployment, start_envoy,
                                                                     service):
    envoy = gateway(start_envoy, deployment,
                    policy(rule("exact", tier("exact")), ietf_headers=True),
                    [("127.0.0.1", service.port)])
    answers = [get(envoy.port(), "/exact/orders", tenant("acme")) for _ in range(7)]
    assert [a.status for a in answers] == [200] * 5 + [429] * 2
    # The fleet's count is the tighter one: it is what the headers show.
    assert [a.header("x-ratelimit-remaining") for a in answers[:5]] == ["4", "3", "2", "1", "0"]
    assert {a.header("x-ratelimit-limit") for a in answers} == {"5"}
    assert answers[0].header("ratelimit-policy") == '"local";q=1000;w=60, "per-tenant";q=5;w=60'
    refused = answers[5]
    assert refused.header("content-type") == "application/problem+json"
    problem = json.loads(refused.body)
    assert problem["status"] == 429
    assert problem["violated-policies"] == ["per-tenant"]
    # The window began with the first request, less than a minute ago.
    assert 1 <= int(refused.header("retry-after")) <= 60
    assert problem["retry_after"] == int(refused.header("retry-after"))
    # Another tenant has its own count.
    assert get(envoy.port(), "/exact/orders", tenant("globex")).status == 200
    assert envoy.metric("wasmgate_rate_limit_global_calls_total") == 8
    assert envoy.metric("wasmgate_rate_limit_global_over_limit_total") == 2
    assert envoy.metric("wasmgate_rate_limit_limited_total") == 2


def test_a_rule_with_only_a_global_tier_is_counted_by_the_service_alone(deployment, start_envoy,
                                                                        service):
    """No local limits: every request asks the service, the headers show its limit alone,
    and without a service the default failure mode lets requests through."""
    global_only = {"name": "exact", "match": {"prefix": "/exact"}, "global": tier("exact")}
    envoy = gateway(start_envoy, deployment, policy(global_only, ietf_headers=True),
                    [("127.0.0.1", service.port)])
    answers = [get(envoy.port(), "/exact/orders", tenant("acme")) for _ in range(7)]
    assert [a.status for a in answers] == [200] * 5 + [429] * 2
    assert [a.header("x-ratelimit-remaining") for a in answers[:5]] == ["4", "3", "2", "1", "0"]
    assert answers[0].header("ratelimit-policy") == '"per-tenant";q=5;w=60'
    assert json.loads(answers[5].body)["violated-policies"] == ["per-tenant"]
    assert envoy.metric("wasmgate_rate_limit_global_calls_total") == 7
    assert envoy.metric("wasmgate_rate_limit_global_over_limit_total") == 2

    nobody = free_ports(1)[0]
    away = gateway(start_envoy, deployment, policy(global_only), [("127.0.0.1", nobody)])
    unchecked = [get(away.port(), "/exact/orders", tenant("acme")) for _ in range(3)]
    assert [a.status for a in unchecked] == [200] * 3
    # Nothing was counted: there is no limit to show.
    assert unchecked[0].header("x-ratelimit-limit") is None
    decided = "wasmgate_rate_limit_global_failure_decisions_total"
    assert away.metric(decided, result="allow") == 3
    assert not wasm_trouble(envoy.log()) and not wasm_trouble(away.log())


def test_lease_spends_locally_and_renews_in_the_background(deployment, start_envoy, service):
    envoy = gateway(start_envoy, deployment,
                    policy(rule("lease", tier("lease", lease={"size": 5, "period": "1s"}))),
                    [("127.0.0.1", service.port)])
    answers = [get(envoy.port(), "/lease/orders", tenant("acme")) for _ in range(12)]
    assert [a.status for a in answers] == [200] * 12
    assert {a.header("x-ratelimit-limit") for a in answers} == {"20"}
    # One call per lease (5 hits), none per request; the first request waited for the
    # first lease, the rest were spent at once.
    renewals = envoy.metric("wasmgate_rate_limit_lease_renewals_total")
    assert 3 <= renewals <= 5, renewals
    assert envoy.metric("wasmgate_rate_limit_global_calls_total") == 0
    assert envoy.metric("wasmgate_rate_limit_lease_waits_total") >= 1
    # The limit holds: 20 in the window, whatever the leases.
    more = [get(envoy.port(), "/lease/orders", tenant("acme")).status for _ in range(12)]
    assert more.count(200) == 8, more
    assert set(more[8:]) == {429}, more


def test_lease_windows_of_a_second_are_never_refused_below_the_limit(deployment, start_envoy,
                                                                     service):
    """The service leases nothing in a window's last 100 ms (its lease margin: a lease
    would be spent in the next window). Requests of those 100 ms are asked about one by
    one, as in exact mode, instead of being refused while the limit is far off."""
    envoy = gateway(start_envoy, deployment,
                    policy(rule("seconds", tier("lease", failure_mode="deny",
                                                lease={"size": 20, "period": "1s"}),
                                requests=1_000_000)),
                    [("127.0.0.1", service.port)])
    statuses = []
    deadline = time.monotonic() + 2.5
    # Three window ends or so; bounded in count and time.
    while time.monotonic() < deadline and len(statuses) < 20_000:
        statuses.append(get(envoy.port(), "/seconds/orders", tenant("acme")).status)
    refused = [s for s in statuses if s != 200]
    assert not refused, f"{len(refused)} of {len(statuses)} refused: {set(refused)}"
    # Asked one by one only near a window's end: far fewer calls than requests.
    calls = envoy.metric("wasmgate_rate_limit_global_calls_total")
    assert 1 <= calls < len(statuses) / 2, (calls, len(statuses))
    assert envoy.metric("wasmgate_rate_limit_global_failures_total") == 0
    assert not wasm_trouble(envoy.log())


def test_each_failure_mode_does_what_it_says_without_a_service(deployment, start_envoy):
    # Nothing listens on the cluster's port: every call is refused at once.
    nobody = free_ports(1)[0]
    config = policy(
        rule("allow", tier("exact", failure_mode="allow")),
        rule("deny", tier("exact", failure_mode="deny")),
        # A quarter of 8 a minute: each gateway admits 2 on its own.
        rule("local", tier("exact", failure_mode="local", fallback_share=0.25), requests=8),
        rule("lease-deny", tier("lease", failure_mode="deny")),
    )
    envoy = gateway(start_envoy, deployment, config, [("127.0.0.1", nobody)])

    def statuses(path, count=4):
        return [get(envoy.port(), path, tenant("acme")).status for _ in range(count)]

    assert statuses("/allow") == [200] * 4
    denied = get(envoy.port(), "/deny", tenant("acme"))
    assert denied.status == 503
    assert denied.header("content-type") == "application/problem+json"
    assert statuses("/local") == [200, 200, 429, 429]
    assert statuses("/lease-deny", 2) == [503, 503]
    decided = "wasmgate_rate_limit_global_failure_decisions_total"
    assert envoy.metric(decided, result="allow") == 4
    assert envoy.metric(decided, result="deny") >= 3
    assert envoy.metric(decided, result="local") == 4
    assert envoy.metric("wasmgate_rate_limit_global_failures_total", kind="status") >= 9
    assert envoy.alive()
    assert not wasm_trouble(envoy.log())


def test_a_request_that_leaves_while_waiting_harms_nobody(deployment, start_envoy,
                                                           hung_server):
    """A service that never answers: the first request of a key waits for its lease up to
    the timeout; a client that hangs up meanwhile leaves nothing behind."""
    config = policy(rule("lease", tier("lease", timeout="1s", failure_mode="deny")))
    envoy = gateway(start_envoy, deployment, config, [(hung_server.host, hung_server.port)])
    with pytest.raises(OSError):
        get(envoy.port(), "/lease/x", tenant("acme"), timeout=0.2)
    answer = get(envoy.port(), "/lease/x", tenant("acme"))
    assert answer.status == 503
    wait_for(lambda: envoy.metric("wasmgate_rate_limit_lease_failed_total") >= 1, 10,
             "the renewal to time out")
    assert envoy.alive()
    assert not wasm_trouble(envoy.log())
