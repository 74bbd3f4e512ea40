"""Running the configs we ship (envoy-config/*.yaml) with their ports rewritten.

A shipped config uses fixed ports (gateway 8080, admin 9901, demo services 180xx).
Tests load the same file and map each fixed port to a free one (0, for Envoy's own
listeners and admin) or to the port a fixture server actually got.
"""

import json
from pathlib import Path

import yaml

from .paths import ROOT


def load_shipped(relative_path: str, ports: dict) -> dict:
    """The YAML file as a dict, with every `port_value` in `ports` replaced."""
    config = yaml.safe_load((ROOT / relative_path).read_text())
    _rewrite_ports(config, ports)
    return config


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


def shipped_plugin_configs(relative_path: str) -> list:
    """Every wasm filter's JSON configuration in a shipped Envoy config, as
    (filter name, wasm filename, parsed JSON) tuples."""
    config = yaml.safe_load((ROOT / relative_path).read_text())
    found = []

    def walk(node):
        if isinstance(node, dict):
            typed = node.get("typed_config", {})
            if isinstance(typed, dict) and typed.get("@type", "").endswith("wasm.v3.Wasm"):
                plugin = typed["config"]
                found.append((plugin.get("name"), plugin["vm_config"]["code"]["local"]["filename"],
                              json.loads(plugin["configuration"]["value"])))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(config)
    return found


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
