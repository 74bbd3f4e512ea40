"""Stock Envoy's own rate limit filter (envoy.filters.http.ratelimit) against
wasmgate-ratelimit, unchanged: the shipped envoy-config/ratelimit-native.yaml, with its
ports rewritten and its `ratelimit` cluster pointed at the test's replicas. Three Envoys
(--concurrency 2), two replicas, one redis-server, all on loopback; then faults: Redis
stopped and frozen, the service slower than Envoy's timeout, a replica killed."""

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness import wait_for
from harness.load import get
from harness.ports import free_ports
from harness.ratelimit_service import ratelimit_redis, start_ratelimit  # noqa: F401 (fixture)
from harness.shipped import load_shipped, shipped_ports

CONFIG = "envoy-config/ratelimit-native.yaml"

LIMITS = """
domain: edge
descriptors:
  - key: tenant
    rate_limit: {name: per-tenant, unit: hour, requests_per_unit: 100}
  - key: tenant
    value: tiny
    rate_limit: {unit: hour, requests_per_unit: 3}
"""


@pytest.fixture
def limits_file(tmp_path):
    path = tmp_path / "limits.yaml"
    path.write_text(LIMITS)
    return path


def native_envoy(start_envoy, replicas, name, deny: bool, timeout: str = "5s"):
    """The shipped config on free ports, its ratelimit cluster on `replicas`."""
    backend = free_ports(1)[0]
    ports = {8090: 0, 9903: 0, 8092: backend}
    assert shipped_ports(CONFIG) == set(ports) | {8081}, "map every port the config names"
    config = load_shipped(CONFIG, ports)
    cluster = next(c for c in config["static_resources"]["clusters"] if c["name"] == "ratelimit")
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": r.port}}}}
        for r in replicas]
    # Quicker health checks than shipped: a killed replica is dropped within a second.
    cluster["health_checks"][0].update(interval="0.5s", no_traffic_interval="0.5s", timeout="0.25s")
    ratelimit = _ratelimit_filter(config)
    ratelimit["timeout"] = timeout
    ratelimit["failure_mode_deny"] = deny
    return start_envoy(config, name=name, concurrency=2)


def _ratelimit_filter(config) -> dict:
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    return next(f["typed_config"] for f in manager["typed_config"]["http_filters"]
                if f["name"] == "envoy.filters.http.ratelimit")


def spread(envoys, count: int, tenant: str, path: str = "/", workers: int = 24) -> list:
    """`count` GETs with x-tenant, round robin over the Envoys, `workers` at a time."""
    def one(i):
        return get(envoys[i % len(envoys)].port("main"), path, {"x-tenant": tenant}, timeout=30)

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, range(count)))


def statuses(answers) -> dict:
    counts = {}
    for answer in answers:
        counts[answer.status] = counts.get(answer.status, 0) + 1
    return counts


def host_health(envoy, port: int) -> str:
    clusters = json.loads(envoy.admin("/clusters?format=json"))
    for cluster in clusters["cluster_statuses"]:
        if cluster["name"] != "ratelimit":
            continue
        for host in cluster.get("host_statuses", []):
            if host["address"]["socket_address"]["port_value"] == port:
                return "healthy" if not host["health_status"].get("failed_active_health_check") \
                    and host["health_status"].get("eds_health_status") == "HEALTHY" else "unhealthy"
    return "absent"


def test_three_envoys_with_the_native_filter_admit_exactly_the_limit(
        start_envoy, start_service, limits_file, ratelimit_redis):
    replicas = [start_ratelimit(start_service, limits_file, ratelimit_redis.url, name=f"ratelimit{i}")
                for i in range(2)]
    envoys = [native_envoy(start_envoy, replicas, f"edge{i}", deny=True) for i in range(3)]
    for envoy in envoys:
        for replica in replicas:
            wait_for(lambda: host_health(envoy, replica.port) == "healthy", 20,
                     "Envoy's gRPC health check to find the replica serving")

    answers = spread(envoys, 300, "t1")
    assert statuses(answers) == {200: 100, 429: 200}
    assert list(ratelimit_redis.counters().values()) == [100]
    refused = next(a for a in answers if a.status == 429)
    assert refused.header("x-envoy-ratelimited") == "true"
    # Envoy's own x-ratelimit-* headers, made from the statuses the service filled.
    assert refused.header("x-ratelimit-limit") == '100, 100;w=3600;name="per-tenant"'
    assert refused.header("x-ratelimit-remaining") == "0"
    assert 0 < int(refused.header("x-ratelimit-reset")) <= 3600
    ok = sum(e.stat("cluster.backend.ratelimit.ok") for e in envoys)
    over = sum(e.stat("cluster.backend.ratelimit.over_limit") for e in envoys)
    assert (ok, over) == (100, 200)
    assert sum(r.metric("wasmgate_ratelimit_decisions_total", domain="edge", code="ok")
               for r in replicas) == 100
    # A request without x-tenant sends only remote_address, which the limits do not name.
    assert get(envoys[0].port("main"), "/").status == 200


def test_failure_modes_when_redis_fails_and_the_service_is_slower_than_envoy(
        start_envoy, start_service, limits_file, ratelimit_redis):
    # The service waits up to 1 s for Redis; Envoy gives it 200 ms.
    replica = start_ratelimit(start_service, limits_file, ratelimit_redis.url,
                              extra_args=["--redis-timeout", "1s"])
    allow = native_envoy(start_envoy, [replica], "allow", deny=False, timeout="0.2s")
    deny = native_envoy(start_envoy, [replica], "deny", deny=True, timeout="0.2s")
    for envoy in (allow, deny):
        wait_for(lambda: host_health(envoy, replica.port) == "healthy", 20, "the replica healthy")
        assert get(envoy.port("main"), "/", {"x-tenant": "warm"}).status == 200

    def both():
        return (get(allow.port("main"), "/", {"x-tenant": "f"}).status,
                get(deny.port("main"), "/", {"x-tenant": "f"}).status)

    # Frozen (SIGSTOP): the service times out on Redis after Envoy has given up on it.
    ratelimit_redis.freeze()
    try:
        frozen = [both() for _ in range(3)]
    finally:
        ratelimit_redis.thaw()
    assert frozen == [(200, 500)] * 3
    assert allow.stat("cluster.backend.ratelimit.failure_mode_allowed") >= 3
    # Stopped: connections refused, the service answers UNAVAILABLE at once.
    ratelimit_redis.stop()
    assert [both() for _ in range(3)] == [(200, 500)] * 3
    # (While Redis was frozen, Envoy cancelled each call before the service's own Redis
    # deadline: nothing to count there but Envoy's failure modes.)
    assert replica.metric("wasmgate_ratelimit_store_errors_total", kind="connection") >= 1

    ratelimit_redis.start()
    wait_for(lambda: get(deny.port("main"), "/", {"x-tenant": "again"}).status == 200, 20,
             "counting to resume")
    assert [get(deny.port("main"), "/", {"x-tenant": "tiny"}).status for _ in range(4)] == \
        [200, 200, 200, 429]
    counters = ratelimit_redis.counters()
    assert [v for k, v in counters.items() if '"tiny"' in k] == [3], counters
    assert allow.alive() and deny.alive() and replica.alive()


def test_a_killed_replica_is_dropped_and_counting_stays_exact(
        start_envoy, start_service, limits_file, ratelimit_redis):
    first, second = [start_ratelimit(start_service, limits_file, ratelimit_redis.url,
                                     name=f"ratelimit{i}") for i in range(2)]
    envoy = native_envoy(start_envoy, [first, second], "edge", deny=True)
    for replica in (first, second):
        wait_for(lambda: host_health(envoy, replica.port) == "healthy", 20, "both replicas healthy")
    assert statuses(spread([envoy], 40, "k", workers=8)) == {200: 40}

    second.kill()
    wait_for(lambda: host_health(envoy, second.port) == "unhealthy", 30,
             "Envoy's health check to drop the killed replica")
    assert statuses(spread([envoy], 100, "k", workers=8)) == {200: 60, 429: 40}
    assert [v for k, v in ratelimit_redis.counters().items() if '"k"' in k] == [100]
    assert envoy.alive() and first.alive()
