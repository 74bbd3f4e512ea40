"""The manifests under istio/ and the checks Istio itself would not make.

Istio accepts a WasmPlugin whose pluginConfig the filter will refuse, whose sha256 is
stale, whose priority puts it in the wrong place, or whose callout names a cluster no
ServiceEntry creates: each of these only shows up at run time, in a proxy. The checks
here find them offline, for every WasmPlugin found under istio/:

- `check_pins`: `sha256` is the digest of what `make build` produced (the OCI
  manifest for an oci:// url, the .wasm for http(s)), and the image tag is the
  workspace version;
- `check_order`: phases and priorities put the filters in the order they rely on
  (`PLUGIN_ROLES`), as istiod orders them;
- `check_clusters`: every Istio cluster name in a pluginConfig
  (`outbound|<port>|<subset>|<host>`) is created by a ServiceEntry (and a
  DestinationRule subset), and fields named `cluster` hold such names.

That a pluginConfig, serialised as istiod does, is accepted by the filter's own parser
is proven in real Envoy by the delivery emulation (test_istio_delivery.py).
"""

from __future__ import annotations

import json
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import yaml

from .istio_delivery import IstiodEmulation, WasmPlugin
from .paths import BUILD, ROOT

ISTIO_DIR = ROOT / "istio"
HTTPS_PATCHES = ISTIO_DIR / "wasmplugins" / "https"
CRD_FILE = ROOT / "tests" / "istio" / "crds" / "crd-all.gen.istio-1.30.3.yaml"
DIGESTS_FILE = BUILD / "oci" / "digests.json"


@dataclass(frozen=True)
class PluginRole:
    """Where a filter's WasmPlugin belongs in the chain, and why."""

    phase: str
    runs_after: tuple  # modules whose WasmPlugins (when shipped) must run earlier
    reason: str


#: One entry per filter module (build/wasm/<module>.wasm). A WasmPlugin whose module
#: is missing here fails `check_order`: add its entry when adding its manifest.
PLUGIN_ROLES = {
    "headers": PluginRole(
        "AUTHN", (),
        "removes client-sent identity headers before any auth filter sets its own; "
        "AUTHN is the earliest phase, the highest priority runs first"),
    "jwt": PluginRole(
        "AUTHN", ("headers",),
        "authenticates, then sets x-user-id/x-tenant-id/x-scopes, which the header "
        "filter must not strip afterwards"),
    "api-key": PluginRole(
        "AUTHN", ("headers",),
        "authenticates, then sets x-api-key-id/x-tenant-id/x-plan, which the header "
        "filter must not strip afterwards"),
    "rate-limit": PluginRole(
        "AUTHZ", ("headers", "jwt", "api-key"),
        "keys its buckets by the identity and plan the auth filters set, so it runs "
        "after authentication (AUTHZ: after Istio's authn, before its RBAC)"),
}

ISTIO_CLUSTER = re.compile(r"^(inbound|outbound)\|(\d+)\|([^|]*)\|([^|]+)$")


@dataclass(frozen=True)
class Manifest:
    """One YAML document of a file under istio/."""

    file: Path
    index: int
    doc: dict

    @property
    def kind(self) -> str:
        return self.doc.get("kind", "")

    @property
    def name(self) -> str:
        return self.doc.get("metadata", {}).get("name", "")

    @property
    def label(self) -> str:
        where = self.file.relative_to(ROOT) if self.file.is_relative_to(ROOT) else self.file
        return f"{where}#{self.index} {self.kind}/{self.name}"


def load_manifests(path: Path) -> list:
    """Every non-empty YAML document of one file."""
    with open(path) as text:
        return [Manifest(Path(path), i, doc)
                for i, doc in enumerate(yaml.safe_load_all(text)) if doc is not None]


def shipped_manifests() -> list:
    """Every Kubernetes object under istio/ (the https merge patches are not objects)."""
    found = []
    for path in sorted(ISTIO_DIR.rglob("*.yaml")):
        if not path.is_relative_to(HTTPS_PATCHES):
            found.extend(load_manifests(path))
    return found


def wasm_plugins(manifests: list) -> list:
    return [m for m in manifests if m.kind == "WasmPlugin"]


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch (what `kubectl patch --type merge` applies)."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def https_variants(plugins: list) -> list:
    """Each WasmPlugin with its https merge patch (wasmplugins/https/<same file>)
    applied: the manifests a user applies to fetch the .wasm over https."""
    variants = []
    for plugin in plugins:
        patch_file = HTTPS_PATCHES / plugin.file.name
        if patch_file.is_file():
            patch = yaml.safe_load(patch_file.read_text())
            variants.append(Manifest(patch_file, plugin.index, merge_patch(plugin.doc, patch)))
    return variants


def module_of(url: str) -> str:
    """The filter a WasmPlugin ships: the image repository's last segment
    (oci://registry/wasmgate/headers:0.1.0) or the file name (.../headers.wasm)."""
    parts = urllib.parse.urlsplit(url)
    last = parts.path.rsplit("/", 1)[-1]
    if parts.scheme == "oci":
        return last.split("@", 1)[0].split(":", 1)[0]
    return last.removesuffix(".wasm")


def built_digests() -> dict:
    """build/oci/digests.json from `make oci`: {"version", "modules": {module:
    {"manifest", "wasm"}}} (hex sha256)."""
    if not DIGESTS_FILE.is_file():
        raise FileNotFoundError(f"{DIGESTS_FILE} is missing: run `make build`")
    return json.loads(DIGESTS_FILE.read_text())


# --- the checks: each returns a list of problems (strings), empty when all is well ---


def check_pins(plugins: list, digests: dict) -> list:
    problems = []
    for plugin in plugins:
        spec = plugin.doc.get("spec", {})
        url, pinned = spec.get("url", ""), spec.get("sha256", "")
        module = module_of(url)
        built = digests["modules"].get(module)
        if built is None:
            problems.append(f"{plugin.label}: no module {module!r} was built for {url}")
            continue
        scheme = urllib.parse.urlsplit(url).scheme
        want, what = ((built["manifest"], "the OCI image's manifest digest") if scheme == "oci"
                      else (built["wasm"], f"the sha256 of build/wasm/{module}.wasm"))
        if pinned != want:
            problems.append(f"{plugin.label}: sha256 {pinned or '(none)'} is stale: {what} is "
                            f"{want}; run `make istio-pin`")
        version = url.rsplit(":", 1)[-1] if scheme == "oci" else url.rsplit("/", 2)[-2]
        if version != digests["version"]:
            problems.append(f"{plugin.label}: {url} is not version {digests['version']} "
                            f"(the workspace version); run `make istio-pin`")
    return problems


def check_order(plugins: list) -> list:
    problems = []
    placed = []
    for plugin in plugins:
        module = module_of(plugin.doc["spec"]["url"])
        role = PLUGIN_ROLES.get(module)
        if role is None:
            problems.append(f"{plugin.label}: module {module!r} has no entry in PLUGIN_ROLES "
                            f"(harness/istio_checks.py): say where it belongs in the chain")
            continue
        phase = plugin.doc["spec"].get("phase") or "UNSPECIFIED_PHASE"
        if phase != role.phase:
            problems.append(f"{plugin.label}: phase {phase}, but {module} belongs in "
                            f"{role.phase}: it {role.reason}")
        placed.append(WasmPlugin.from_manifest(plugin.doc))
    ordered = IstiodEmulation().ordered(placed)
    chain = [module_of(p.spec["url"]) for p in ordered]
    for position, module in enumerate(chain):
        for earlier in PLUGIN_ROLES[module].runs_after:
            if earlier in chain and chain.index(earlier) > position:
                problems.append(f"{module} runs before {earlier} (chain: {' -> '.join(chain)}), "
                                f"but must run after it: {module} {PLUGIN_ROLES[module].reason}")
    for first, second in zip(ordered, ordered[1:]):
        if (first.phase, first.priority) == (second.phase, second.priority):
            problems.append(f"{module_of(first.spec['url'])} and {module_of(second.spec['url'])} "
                            f"share phase {first.phase} and priority {first.priority}: their "
                            f"order would depend on creation time")
    return problems


def check_clusters(plugins: list, manifests: list) -> list:
    ports, subsets = set(), set()
    for m in manifests:
        spec = m.doc.get("spec") or {}
        if m.kind == "ServiceEntry":
            for host in spec.get("hosts", []):
                ports.update((host, p["number"]) for p in spec.get("ports", []))
        elif m.kind == "DestinationRule":
            subsets.update((spec.get("host"), s["name"]) for s in spec.get("subsets", []))
    problems = []
    for plugin in plugins:
        for path, key, value in _strings(plugin.doc.get("spec", {}).get("pluginConfig") or {}):
            name = ISTIO_CLUSTER.match(value)
            if name is None:
                if key == "cluster" or key.endswith("_cluster"):
                    problems.append(f"{plugin.label}: pluginConfig.{path} = {value!r} is not an "
                                    f"Istio cluster name (outbound|<port>||<host>)")
                continue
            direction, port, subset, host = name.groups()
            if direction != "outbound" or (host, int(port)) not in ports:
                problems.append(f"{plugin.label}: pluginConfig.{path} names {value!r}, but no "
                                f"ServiceEntry under istio/ has host {host} port {port}")
            elif subset and (host, subset) not in subsets:
                problems.append(f"{plugin.label}: pluginConfig.{path} names subset {subset!r}, "
                                f"which no DestinationRule for {host} defines")
    return problems


def _strings(node, path=""):
    """(path, key, value) of every string in a JSON value."""
    if isinstance(node, dict):
        for key, value in node.items():
            child = f"{path}.{key}" if path else str(key)
            if isinstance(value, str):
                yield child, str(key), value
            else:
                yield from _strings(value, child)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            child = f"{path}[{index}]"
            if isinstance(value, str):
                yield child, path.rsplit(".", 1)[-1], value
            else:
                yield from _strings(value, child)
