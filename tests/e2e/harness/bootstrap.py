"""Envoy bootstrap configs as plain dicts, for tests that need their own config.

Tests of shipped configs load `envoy-config/*.yaml` instead (run what you ship).
"""

import json

from .metrics import STATS_CONFIG

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
WASM = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
STRING_VALUE = "type.googleapis.com/google.protobuf.StringValue"


def wasm_filter(wasm_file: str, config, *, name: str = "wasmgate", root_id: str = "",
                vm_id: str = "", fail_open: bool = False) -> dict:
    """An `envoy.filters.http.wasm` filter running `wasm_file` with a JSON config.

    `config` (a dict, or a string sent as-is) arrives at the filter as a
    `google.protobuf.StringValue`, exactly as Istio delivers `pluginConfig`.
    """
    text = config if isinstance(config, str) else json.dumps(config)
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": WASM,
            "config": {
                "name": name,
                "root_id": root_id,
                "configuration": {"@type": STRING_VALUE, "value": text},
                "fail_open": fail_open,
                "vm_config": {
                    "vm_id": vm_id,
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": wasm_file}},
                },
            },
        },
    }


def router() -> dict:
    return {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}


def route(prefix: str = "/", cluster: str = "upstream", name: str = None, **extra) -> dict:
    """A route to `cluster`; `extra` is merged into the route action (timeouts, retries)."""
    entry = {"match": {"prefix": prefix}, "route": {"cluster": cluster, **extra}}
    if name:
        entry["name"] = name
    return entry


def http_listener(name: str, http_filters: list, routes: list, port: int = 0,
                  hcm_extra: dict = None, listener_extra: dict = None) -> dict:
    """A plain-HTTP listener on 127.0.0.1 whose chain is `http_filters` + router."""
    hcm = {
        "@type": HCM,
        "stat_prefix": name,
        "route_config": {
            "name": f"{name}_routes",
            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}],
        },
        "http_filters": [*http_filters, router()],
        **(hcm_extra or {}),
    }
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                        "typed_config": hcm}]}],
        **(listener_extra or {}),
    }


def cluster(name: str, address: str, port: int, timeout: str = "5s", **extra) -> dict:
    """A STATIC cluster with one endpoint."""
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": timeout,
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": address, "port_value": port}}}}]}],
        },
        **extra,
    }


def bootstrap(listeners: list, clusters: list, node_id: str = "wasmgate-test", **extra) -> dict:
    """A bootstrap with gateway.yaml's `stats_config`: the filters' metrics with their
    tags, as the docs tell users to configure."""
    return {
        "node": {"id": node_id, "cluster": "wasmgate-test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "stats_config": STATS_CONFIG,
        "static_resources": {"listeners": listeners, "clusters": clusters},
        **extra,
    }


def single_filter_gateway(http_filters: list, upstream, routes: list = None) -> dict:
    """The common test shape: one listener (`main`) with `http_filters`, routed to one
    upstream `Service` (cluster `upstream`)."""
    return bootstrap(
        [http_listener("main", http_filters, routes or [route("/", "upstream", name="default")])],
        [cluster("upstream", upstream.host, upstream.port)],
    )
