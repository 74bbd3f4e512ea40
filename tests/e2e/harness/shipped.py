"""Running the configs we ship (envoy-config/*.yaml) with their ports rewritten.

A shipped config uses fixed ports (gateway 8080, admin 9901, demo services 180xx).
Tests load the same file and map each fixed port to a free one (0, for Envoy's own
listeners and admin) or to the port a fixture server actually got.
"""

import json
import re
from pathlib import Path

import yaml

from .paths import ROOT


# Where shipped configs expect the demo certificates (scripts/demo-certs.sh writes
# them there for `make run`); tests point the same paths at a set of their own.
SHIPPED_CERTS_DIR = "build/certs/"


# A shipped config's optional part (gateway.yaml's tracing): lines commented out with
# this mark, which the switch removes (scripts/run-demo.sh and
# docker/gateway-entrypoint.sh do the same with sed when WASMGATE_TRACING=on).
OPTIONAL_MARK = re.compile(r"^( *)#~ ", re.M)


def with_tracing(text: str) -> str:
    """A shipped config's text with its `#~ ` lines (tracing) turned on."""
    return OPTIONAL_MARK.sub(r"\1", text)


def load_shipped(relative_path: str, ports: dict, certs_dir=None, tracing: bool = False) -> dict:
    """The YAML file as a dict, with every `port_value` in `ports` replaced, and, with
    `certs_dir`, every file name under build/certs/ moved to that directory. With
    `tracing`, its `#~ ` lines are turned on first (`WASMGATE_TRACING=on`)."""
    text = (ROOT / relative_path).read_text()
    config = yaml.safe_load(with_tracing(text) if tracing else text)
    _rewrite_ports(config, ports)
    if certs_dir is not None:
        _rewrite_cert_paths(config, f"{Path(certs_dir)}/")
    return config


def shipped_ports(relative_path: str) -> set:
    """Every `port_value` a shipped config names: a test must map each of them, or
    it would bind or call a fixed port that someone else on the machine may use."""
    found = set()

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "port_value":
                    found.add(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(yaml.safe_load((ROOT / relative_path).read_text()))
    return found


def shipped_listener_ports(relative_path: str) -> dict:
    """{listener name: port} of a shipped config, plus "admin"."""
    config = yaml.safe_load((ROOT / relative_path).read_text())
    ports = {listener["name"]: listener["address"]["socket_address"]["port_value"]
             for listener in config["static_resources"].get("listeners", [])}
    ports["admin"] = config["admin"]["address"]["socket_address"]["port_value"]
    return ports


def _rewrite_cert_paths(node, certs_dir):
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        if isinstance(value, str) and value.startswith(SHIPPED_CERTS_DIR):
            node[key] = certs_dir + value[len(SHIPPED_CERTS_DIR):]
        else:
            _rewrite_cert_paths(value, certs_dir)


def _rewrite_ports(node, ports):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "port_value" and value in ports:
                node[key] = ports[value]
            else:
                _rewrite_ports(value, ports)
    elif isinstance(node, list):
        for item in node:
            _rewrite_ports(item, ports)


def mappings(node):
    """Every mapping of a parsed YAML document, in file order."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from mappings(value)
    elif isinstance(node, list):
        for item in node:
            yield from mappings(item)


def shipped_typed_configs(relative_path: str, type_suffix: str) -> list:
    """Every object of a shipped Envoy config whose `@type` ends with `type_suffix`
    (`HttpConnectionManager`, `wasm.v3.Wasm`), in file order."""
    return [node for node in mappings(yaml.safe_load((ROOT / relative_path).read_text()))
            if str(node.get("@type", "")).endswith(type_suffix)]


def shipped_plugin_configs(relative_path: str) -> list:
    """The JSON configuration of every wasm filter a shipped Envoy config runs by
    default, as (filter name, wasm filename, parsed JSON) tuples: the filters every
    request meets, which Istio's WasmPlugins mirror. Filters that are off unless a
    virtual host or route switches them on (`disabled: true`, gateway.yaml's backends
    for frontends) are left out: a WasmPlugin cannot be switched per host."""
    filters = [node for node in mappings(yaml.safe_load((ROOT / relative_path).read_text()))
               if str(node.get("typed_config", {}).get("@type", "")).endswith("wasm.v3.Wasm")
               and not node.get("disabled")]
    return [(f["typed_config"]["config"].get("name"),
             f["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"],
             json.loads(f["typed_config"]["config"]["configuration"]["value"])) for f in filters]


def shipped_envoy_configs() -> list:
    """Every Envoy config under envoy-config/, relative to the repository root."""
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "envoy-config").rglob("*.yaml")
                  if _is_envoy_bootstrap(p))


def _is_envoy_bootstrap(path: Path) -> bool:
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return True  # let validation report it
    return isinstance(doc, dict) and ("static_resources" in doc or "dynamic_resources" in doc)
