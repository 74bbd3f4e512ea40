"""Running the configs we ship (envoy-config/*.yaml) with their ports rewritten.

A shipped config uses fixed ports (gateway 8080, admin 9901, demo services 180xx).
Tests load the same file and map each fixed port to a free one (0, for Envoy's own
listeners and admin) or to the port a fixture server actually got.
"""

import json
from pathlib import Path

import yaml

from .paths import ROOT


# Where shipped configs expect the demo certificates (scripts/demo-certs.sh writes
# them there for `make run`); tests point the same paths at a set of their own.
SHIPPED_CERTS_DIR = "build/certs/"


def load_shipped(relative_path: str, ports: dict, certs_dir=None) -> dict:
    """The YAML file as a dict, with every `port_value` in `ports` replaced, and, with
    `certs_dir`, every file name under build/certs/ moved to that directory."""
    config = yaml.safe_load((ROOT / relative_path).read_text())
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


def shipped_typed_configs(relative_path: str, type_suffix: str) -> list:
    """Every object of a shipped Envoy config whose `@type` ends with `type_suffix`
    (`HttpConnectionManager`, `wasm.v3.Wasm`), in file order."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if str(node.get("@type", "")).endswith(type_suffix):
                found.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(yaml.safe_load((ROOT / relative_path).read_text()))
    return found


def shipped_plugin_configs(relative_path: str) -> list:
    """Every wasm filter's JSON configuration in a shipped Envoy config, as
    (filter name, wasm filename, parsed JSON) tuples."""
    return [(typed["config"].get("name"), typed["config"]["vm_config"]["code"]["local"]["filename"],
             json.loads(typed["config"]["configuration"]["value"]))
            for typed in shipped_typed_configs(relative_path, "wasm.v3.Wasm")]


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
