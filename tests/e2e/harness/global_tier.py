"""The rate-limit filter's global tier in real processes: gateways (Envoy with the filter,
answering from `direct_response` routes) that share `wasmgate-ratelimit` replicas
(harness/ratelimit_service.py) over one Envoy cluster.

- `ratelimit_cluster`: the HTTP/2 cluster of the replicas (round robin, optional gRPC
  health checks so a dead replica stops taking calls).
- `gateway_config`: one listener whose chain is `filters` and whose routes answer 200
  themselves, plus the clusters.
- `burst`: requests spread round robin over several gateways, a few at a time, bounded
  in count and time; returns every answer.
- `wasm_trouble`: the lines of an Envoy log that say a wasm VM failed (a panic, a trap).
"""

import threading
from concurrent.futures import ThreadPoolExecutor

from .bootstrap import bootstrap, http_listener
from .load import get

HTTP2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}


def ratelimit_cluster(name: str, endpoints: list, health_checks: bool = False) -> dict:
    """A STATIC HTTP/2 cluster over `endpoints` ((host, port) pairs), round robin. With
    `health_checks`, gRPC health checks every 500 ms take a dead replica out."""
    cluster = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "0.25s",
        "lb_policy": "ROUND_ROBIN",
        "typed_extension_protocol_options": HTTP2,
        "common_lb_config": {"update_merge_window": "0s"},
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
            for host, port in endpoints]}]},
    }
    if health_checks:
        cluster["health_checks"] = [{
            "timeout": "0.25s", "interval": "0.5s", "unhealthy_threshold": 1,
            "healthy_threshold": 1, "no_traffic_interval": "0.5s",
            "grpc_health_check": {}}]
    return cluster


def answered_here(prefix: str = "/") -> dict:
    return {"match": {"prefix": prefix},
            "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}


def gateway_config(filters: list, clusters: list, routes: list = None) -> dict:
    return bootstrap([http_listener("main", filters, routes or [answered_here()])], clusters)


def burst(ports: list, path: str, headers: dict, count: int, concurrency: int = 12,
          timeout: float = 30.0) -> list:
    """`count` GETs, the i-th to `ports[i % len(ports)]`, `concurrency` at a time, each on
    its own connection; every `Answer`, in order. Bounded: each request has `timeout`."""
    answers = [None] * count
    lock = threading.Lock()

    def one(i):
        answer = get(ports[i % len(ports)], path, headers, timeout=timeout)
        with lock:
            answers[i] = answer

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for future in [pool.submit(one, i) for i in range(count)]:
            future.result(timeout=timeout * 2)
    return answers


def statuses(answers) -> dict:
    """{status: count}."""
    counts = {}
    for answer in answers:
        counts[answer.status] = counts.get(answer.status, 0) + 1
    return counts


TROUBLE = ("panic", "RuntimeError", "wasm trap", "Wasm VM failed", "Function: proxy_on",
           "unreachable")


def wasm_trouble(log: str) -> list:
    """Lines of an Envoy log that say a wasm VM failed."""
    return [line for line in log.splitlines() if any(word in line for word in TROUBLE)]
