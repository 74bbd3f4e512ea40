"""The demo gateway's traffic features in real Envoy, on envoy-config/gateway.yaml as
shipped: least-request load balancing against round robin.
"""

import concurrent.futures
import copy
from collections import Counter

import requests

from harness import tool_path, wait_for
from harness.bootstrap import bootstrap, http_listener, route
from harness.demo_gateway import GATEWAY_CONFIG
from harness.shipped import load_shipped

TIMEOUT = 10


# --- load balancing -------------------------------------------------------------------


def test_a_slow_instance_gets_fewer_requests_under_least_request_than_round_robin(
        start_envoy, start_service):
    """gateway.yaml's `users` cluster as shipped (least request), and the same cluster
    with round robin, in one Envoy in front of the same two instances, one of them
    300 ms slow. 12 clients at a time send 240 requests through each.

    Round robin alternates: the slow instance gets half of them (one worker: exactly,
    give or take one). Least request compares two instances picked at random and
    takes the one with fewer requests in flight, which the slow one never is once it
    holds a few: it gets a request when both picks land on it (one time in four) and
    some of the first ones, before it holds any. That made 56 to 79 in trial runs;
    100 (the bound) is over four standard deviations above. A busy machine slows the
    fast instance by milliseconds, not by the 300 ms that decide."""
    instances = {name: start_service([tool_path("demo"), "echo", "--name", "users",
                                      "--instance", name], name) for name in ("fast", "slow")}
    shipped = load_shipped(GATEWAY_CONFIG, {18081: instances["fast"].port,
                                            18082: instances["slow"].port})
    least_request = next(c for c in shipped["static_resources"]["clusters"] if c["name"] == "users")
    assert least_request["lb_policy"] == "LEAST_REQUEST"
    round_robin = copy.deepcopy(least_request)
    round_robin.update(name="users-rr", lb_policy="ROUND_ROBIN")
    round_robin["load_assignment"]["cluster_name"] = "users-rr"
    envoy = start_envoy(bootstrap(
        [http_listener("main", [], [route("/rr/", "users-rr"), route("/", "users")])],
        [least_request, round_robin]), concurrency=1)
    wait_for(lambda: all(envoy.stat(f"cluster.{c}.membership_healthy") == 2 for c in ("users", "users-rr")),
             30, "both instances to pass their health checks")
    resp = requests.put(instances["slow"].url("/__echo/delay"), data="300", timeout=TIMEOUT)
    assert resp.status_code == 200

    def spread(prefix: str) -> Counter:
        def one(n):
            return requests.get(envoy.url(f"{prefix}{n}"), timeout=TIMEOUT).json()["instance"]
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            return Counter(pool.map(one, range(240)))

    by_round_robin, by_least_request = spread("/rr/"), spread("/lr/")
    assert sum(by_round_robin.values()) == sum(by_least_request.values()) == 240
    assert by_round_robin["slow"] >= 119, by_round_robin
    assert by_least_request["slow"] <= 100, by_least_request
    assert by_least_request["fast"] > by_round_robin["fast"]
