"""A fleet, in real processes on loopback: three gateway Envoys (`--concurrency 2`, the
separate rate-limit filter), one Redis, two `wasmgate-ratelimit` replicas behind one
HTTP/2 cluster with gRPC health checks. The exact tier admits exactly the limit
whichever gateways the requests cross; the lease tier never admits more and holds back
at most its documented bound; through Redis stopped and frozen, a replica killed, a
service slower than the timeout and a broken limits file, each `failure_mode` does what
it says, no Envoy crashes or traps, counting resumes, and Redis never counts a request
twice.

Every burst is bounded in count and time; counts are checked exactly against the
answers, the filters' counters and the counters in Redis."""

import time

import pytest

from harness import wait_for
from harness.global_tier import (
    burst, gateway_config, ratelimit_cluster, statuses, wasm_trouble,
)
from harness.bootstrap import wasm_filter
from harness.paths import wasm_path
from harness.ratelimit_service import RedisTcp, replace_file, start_ratelimit

GATEWAYS = 3
LEASE_SIZE = 5

LIMITS = """
domain: wasmgate
descriptors:
  - key: rule
    value: exact
    descriptors:
      - key: x-tenant-id
        rate_limit: {name: per-tenant, unit: minute, requests_per_unit: 40}
  - key: rule
    value: lease
    descriptors:
      - key: x-tenant-id
        rate_limit: {name: per-tenant, unit: minute, requests_per_unit: 60}
  - key: rule
    value: allow
    descriptors:
      - key: x-tenant-id
        rate_limit: {unit: minute, requests_per_unit: 1000}
  - key: rule
    value: deny
    descriptors:
      - key: x-tenant-id
        rate_limit: {unit: minute, requests_per_unit: 1000}
  - key: rule
    value: local
    descriptors:
      - key: x-tenant-id
        rate_limit: {unit: minute, requests_per_unit: 1000}
  - key: rule
    value: lease-deny
    descriptors:
      - key: x-tenant-id
        rate_limit: {unit: minute, requests_per_unit: 1000}
"""


def tier(mode: str, timeout: str = "1s", **extra) -> dict:
    return {"mode": mode, "cluster": "ratelimit", "timeout": timeout,
            "identity": [{"header": "x-tenant-id"}], **extra}


def rule(name: str, global_tier: dict, requests: int = 100_000) -> dict:
    return {"name": name, "match": {"prefix": f"/{name}/"},
            "limits": [{"name": "local", "requests": requests, "per": "1m"}],
            "global": global_tier}


# Each gateway's filter. `deny` and `lease-deny` answer 503 when the service cannot
# decide; `allow` admits; `local` falls back to a tenth of its 40 a minute per gateway.
POLICY = {
    "table": {"slots": 1024, "lease_slots": 256},
    "identity": [{"header": "x-user-id"}],
    "rules": [
        rule("exact", tier("exact")),
        rule("lease", tier("lease", lease={"size": LEASE_SIZE, "period": "1s"})),
        rule("allow", tier("exact", "300ms", failure_mode="allow")),
        rule("deny", tier("exact", "300ms", failure_mode="deny")),
        rule("local", tier("exact", "300ms", failure_mode="local", fallback_share=0.1),
             requests=40),
        # A long period: its leases are not given back as idle while the test runs.
        rule("lease-deny", tier("lease", "300ms", failure_mode="deny",
                                lease={"size": LEASE_SIZE, "period": "30s"})),
    ],
}


class Fleet:
    def __init__(self, redis, replicas, envoys, limits_file):
        self.redis = redis
        self.replicas = replicas
        self.envoys = envoys
        self.limits_file = limits_file

    @property
    def ports(self) -> list:
        return [envoy.port() for envoy in self.envoys]

    def send(self, path: str, tenant: str, count: int, concurrency: int = 12) -> dict:
        """`count` requests spread over every gateway; {status: count}."""
        return statuses(burst(self.ports, path, {"x-tenant-id": tenant}, count, concurrency))

    def one_each(self, path: str, tenant: str) -> list:
        """One request through each gateway, in turn; their statuses."""
        return [a.status for a in burst(self.ports, path, {"x-tenant-id": tenant},
                                        len(self.envoys), concurrency=1)]

    def counted(self, tenant: str) -> int:
        """What Redis counts for `tenant`, over every rule (holds excluded)."""
        return sum(v for k, v in self.redis.counters().items() if tenant in k)

    def held(self, tenant: str) -> int:
        return sum(sum(h.values()) for k, h in self.redis.holds().items() if tenant in k)

    def metric(self, name: str, **tags) -> int:
        """A wasmgate metric (its Prometheus name) summed over every gateway."""
        return sum(envoy.metric(name, **tags) for envoy in self.envoys)

    def replicas_answer(self) -> bool:
        """Every live replica decides again (asked directly, with its own client)."""
        return all("error" not in r.ask("wasmgate", "rule=allow,x-tenant-id=t-probe")
                   for r in self.replicas if r.alive())

    def healthy_replicas(self) -> list:
        return [envoy.stat("cluster.ratelimit.membership_healthy") for envoy in self.envoys]

    def check_unharmed(self):
        for envoy in self.envoys:
            assert envoy.alive(), envoy.name
            assert not wasm_trouble(envoy.log()), (envoy.name, wasm_trouble(envoy.log()))


@pytest.fixture
def fleet(tmp_path, start_service, start_envoy, on_failure):
    redis = RedisTcp(tmp_path, "fleet-redis").start()
    limits = tmp_path / "limits.yaml"
    limits.write_text(LIMITS)
    replicas = [start_ratelimit(start_service, limits, redis.url, name=f"ratelimit{i}",
                                extra_args=["--redis-timeout", "200ms",
                                            "--lease-validity", "60s"])
                for i in range(2)]
    cluster = ratelimit_cluster("ratelimit", [("127.0.0.1", r.port) for r in replicas],
                                health_checks=True)
    config = gateway_config([wasm_filter(wasm_path("rate-limit"), POLICY, name="rate-limit")],
                            [cluster])
    envoys = [start_envoy(config, name=f"gateway{i}") for i in range(GATEWAYS)]
    fleet = Fleet(redis, replicas, envoys, limits)
    on_failure(lambda: "\n".join(f"===== {r.service.name} =====\n{r.log()[-4000:]}"
                                 for r in replicas))
    wait_for(lambda: fleet.healthy_replicas() == [2] * GATEWAYS, 30,
             "every gateway to see both replicas healthy")
    yield fleet
    redis.stop()


def test_a_fleet_admits_exactly_the_global_limit_and_leases_stay_within_their_bound(fleet):
    # Exact: 120 requests, 40 at a time in flight, spread over three gateways (six workers).
    seen = fleet.send("/exact/orders", "t-exact", 120)
    assert seen == {200: 40, 429: 80}, seen
    assert fleet.counted("t-exact") == 40
    assert fleet.metric("wasmgate_rate_limit_global_over_limit_total") == 80

    # Lease: never more than the limit; at most 2 leases per gateway held back unspent.
    seen = fleet.send("/lease/orders", "t-lease", 180)
    admitted = seen.get(200, 0)
    assert set(seen) <= {200, 429}, seen
    bound = GATEWAYS * 2 * LEASE_SIZE
    assert 60 - bound <= admitted <= 60, seen
    # Far fewer calls than requests: one per lease, not one per request.
    renewals = fleet.metric("wasmgate_rate_limit_lease_renewals_total")
    assert renewals < 60, renewals
    # Within a few periods idle leases are given back: Redis then counts exactly what
    # was admitted, and holds nothing.
    wait_for(lambda: fleet.held("t-lease") == 0, 15, "idle leases to be settled")
    assert fleet.counted("t-lease") == admitted
    fleet.check_unharmed()


def test_through_faults_each_failure_mode_does_what_it_says(fleet):
    # Healthy: every mode admits; a lease is held by each gateway for "lease-deny".
    for path in ("/allow/x", "/deny/x", "/local/x", "/lease-deny/x"):
        assert fleet.one_each(path, "t-fault") == [200] * GATEWAYS, path
    counted_before = fleet.counted("t-fault")
    # (lease-deny's hits are held, not yet counted.)
    assert counted_before == 3 * GATEWAYS

    # Redis stopped: connections refused, the service answers errors at once.
    fleet.redis.stop()
    assert fleet.one_each("/allow/x", "t-fault") == [200] * GATEWAYS
    assert fleet.one_each("/deny/x", "t-fault") == [503] * GATEWAYS
    # A tenth of 40 a minute per gateway: 4 each, then refused.
    local = fleet.send("/local/x", "t-fault", 6 * GATEWAYS, concurrency=1)
    assert local == {200: 4 * GATEWAYS, 429: 2 * GATEWAYS}, local
    # The leases each gateway holds (5, one spent) are spent while Redis is away...
    held = fleet.send("/lease-deny/x", "t-fault", 4 * GATEWAYS, concurrency=1)
    assert held == {200: 4 * GATEWAYS}, held
    # ...then the failure mode decides.
    assert fleet.one_each("/lease-deny/x", "t-fault") == [503] * GATEWAYS
    fleet.check_unharmed()

    # Redis back: counting resumes at once, each request counted once.
    fleet.redis.start()
    wait_for(fleet.replicas_answer, 20, "both replicas to count again")
    assert fleet.one_each("/deny/x", "t-back") == [200] * GATEWAYS
    assert fleet.one_each("/exact/x", "t-back") == [200] * GATEWAYS
    assert fleet.counted("t-back") == 2 * GATEWAYS

    # Redis frozen (SIGSTOP): the service's calls hang, the filter's timeout ends them.
    fleet.redis.freeze()
    try:
        assert fleet.one_each("/allow/x", "t-frozen") == [200] * GATEWAYS
        assert fleet.one_each("/deny/x", "t-frozen") == [503] * GATEWAYS
    finally:
        fleet.redis.thaw()
    failures = (fleet.metric("wasmgate_rate_limit_global_failures_total", kind="timeout")
                + fleet.metric("wasmgate_rate_limit_global_failures_total", kind="status"))
    assert failures >= 2 * GATEWAYS
    wait_for(fleet.replicas_answer, 20, "both replicas to answer again")
    assert fleet.one_each("/deny/x", "t-thawed") == [200] * GATEWAYS
    fleet.check_unharmed()

    # One replica killed: health checks take it out; the other decides alone, exactly.
    fleet.replicas[0].kill()
    wait_for(lambda: fleet.healthy_replicas() == [1] * GATEWAYS, 20,
             "every gateway to mark the dead replica unhealthy")
    seen = fleet.send("/exact/x", "t-one-replica", 60)
    assert seen == {200: 40, 429: 20}, seen
    assert fleet.counted("t-one-replica") == 40
    fleet.check_unharmed()

    # A broken limits file: the service keeps its old limits, the gateways keep working.
    replace_file(fleet.limits_file, "domain: wasmgate\ndescriptors:\n  - key: rule\n    rate_limits: {}\n")
    time.sleep(1)  # several of the service's reload checks (every 200 ms)
    seen = fleet.send("/exact/x", "t-bad-config", 45)
    assert seen == {200: 40, 429: 5}, seen
    fleet.check_unharmed()


def test_a_service_slower_than_the_timeout_meets_the_failure_mode(start_envoy, hung_server):
    """A service that accepts and never answers: every call ends at the timeout."""
    cluster = ratelimit_cluster("ratelimit", [(hung_server.host, hung_server.port)])
    config = gateway_config([wasm_filter(wasm_path("rate-limit"), POLICY, name="rate-limit")],
                            [cluster])
    envoy = start_envoy(config)
    started = time.monotonic()
    answers = burst([envoy.port()], "/allow/x", {"x-tenant-id": "slow"}, 4, concurrency=4)
    assert [a.status for a in answers] == [200] * 4
    assert [a.status for a in burst([envoy.port()], "/deny/x", {"x-tenant-id": "slow"}, 2)] == [503] * 2
    # Each waited for its 300 ms timeout, no longer (generously bounded on a busy machine).
    assert time.monotonic() - started < 10
    assert envoy.metric("wasmgate_rate_limit_global_failures_total", kind="timeout") == 6
    assert envoy.alive() and not wasm_trouble(envoy.log())
