"""The manifests under istio/ and the checks Istio itself would not make.

Istio accepts a WasmPlugin whose pluginConfig the filter will refuse, whose sha256 is
stale, whose priority puts it in the wrong place, or whose callout names a cluster no
ServiceEntry creates: each of these only shows up at run time, in a proxy. The checks
here find them offline, for every WasmPlugin found under istio/:

- `check_pins`: `sha256` is the digest of what `make build` produced (the OCI
  manifest for an oci:// url, the .wasm for http(s)), and the image tag is the
  workspace version;
- `check_order`: phases and priorities put the filters in the order they rely on
  (`PLUGIN_ROLES`, by role: a module may play two, as the rate-limit filter does
  before and after authentication), as istiod orders them;
- `check_clusters`: every Istio cluster name in a pluginConfig
  (`outbound|<port>|<subset>|<host>`) is created by a ServiceEntry, or by a Kubernetes
  Service in the mesh (`<name>.<namespace>.svc.cluster.local`), and a DestinationRule
  subset; fields named `cluster` hold such names;
- `check_agreement`: each pluginConfig is the configuration the same filter has in
  envoy-config/gateway.yaml, but for the fields `DEPLOYMENT_SPECIFIC` names.

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
HTTPS_PATCHES = ISTIO_DIR / "overlays" / "https"
CRD_FILE = ROOT / "tests" / "istio" / "crds" / "crd-all.gen.istio-1.30.3.yaml"
DIGESTS_FILE = BUILD / "oci" / "digests.json"


@dataclass(frozen=True)
class PluginRole:
    """Where a filter's WasmPlugin belongs in the chain, and why."""

    phase: str
    runs_after: tuple  # roles whose WasmPlugins (when shipped) must run earlier
    reason: str
    #: For a module shipped in more than one role: the module, and the `pluginName`
    #: that says which role a WasmPlugin of it plays (the role of its own name
    #: otherwise).
    module: str = ""
    plugin_name: str = ""


#: One entry per role a filter module (build/wasm/<module>.wasm) plays: its own name,
#: or a second role of a module (the rate-limit filter before authentication). A
#: WasmPlugin whose module is missing here fails `check_order`: add its entry when
#: adding its manifest. The role is also the name of the filter's configuration in
#: envoy-config/gateway.yaml (`check_agreement`).
PLUGIN_ROLES = {
    "headers": PluginRole(
        "AUTHN", (),
        "removes client-sent identity headers before any auth filter sets its own; "
        "AUTHN is the earliest phase, the highest priority runs first"),
    "pre-auth": PluginRole(
        "AUTHN", ("headers",),
        "limits each client address before a credential is checked, so it runs "
        "before the auth filters (AUTHN, below the header filter's priority)",
        module="rate-limit", plugin_name="wasmgate-pre-auth"),
    "jwt": PluginRole(
        "AUTHN", ("headers", "pre-auth"),
        "authenticates, then sets x-user-id/x-tenant-id/x-scopes, which the header "
        "filter must not strip afterwards; a forged token is to be rate limited "
        "(pre-auth) before its signature is checked"),
    "api-key": PluginRole(
        "AUTHN", ("headers", "pre-auth"),
        "authenticates, then sets x-api-key-id/x-tenant-id/x-plan, which the header "
        "filter must not strip afterwards; a random key is to be rate limited "
        "(pre-auth) before it is looked up"),
    "rate-limit": PluginRole(
        "AUTHZ", ("headers", "jwt", "api-key"),
        "keys its buckets by the identity and plan the auth filters set, so it runs "
        "after authentication (AUTHZ: after Istio's authn, before its RBAC)"),
}

#: Where a WasmPlugin's pluginConfig may differ from its filter's configuration in
#: envoy-config/gateway.yaml (the shipped Envoy gateway), by module: field path ->
#: why. Everything else must be equal, so a rule or limit changed in one place only
#: fails `check_agreement`.
DEPLOYMENT_SPECIFIC = {
    "headers": {
        ("response_cleanup",): "an Istio gateway writes its own `server` after the "
                               "filters ran, so it is not in the Istio list",
    },
    "jwt": {
        ("providers", "idp", "issuer"): "the mesh's IdP instead of the demo issuer",
        ("providers", "idp", "jwks", "remote", "cluster"): "Istio's cluster of the IdP's "
                                                           "ServiceEntry",
        ("providers", "idp", "jwks", "remote", "authority"): "the IdP's host",
    },
    "api-key": {
        ("store", "cluster"): "Istio's cluster of the key store's ServiceEntry",
        ("store", "authority"): "the key store's host",
        ("pepper_env",): "keys hashed with a pepper from the proxy's environment; the "
                         "demo gateway keeps plain SHA-256",
    },
    "rate-limit": {
        ("rules", 0, "global", "cluster"): "Istio's outbound cluster of the rate-limit "
                                           "service's Service",
        ("rules", 0, "global", "timeout"): "the demo gateway's is generous for a busy "
                                           "laptop; the mesh keeps a production one",
    },
    "pre-auth": {},
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


# Kinds istioctl reads at install time (MeshConfig and friends), not objects of the
# API server: no CRD to check them against (`install_manifests`).
INSTALL_KINDS = {"IstioOperator"}


def _istio_documents() -> list:
    found = []
    for path in sorted(ISTIO_DIR.rglob("*.yaml")):
        # kustomization.yaml files and the https overlay's patches are not objects
        # (harness/istio_kustomize.py renders them).
        if path.name != "kustomization.yaml" and not path.is_relative_to(HTTPS_PATCHES):
            found.extend(load_manifests(path))
    return found


def shipped_manifests() -> list:
    """Every Istio object under istio/, each from its own file (not the https overlay's
    patches, nor the install-time `INSTALL_KINDS`; Kubernetes' own objects are
    `kubernetes_manifests`)."""
    return [m for m in _istio_documents()
            if _api_group(m).endswith("istio.io") and m.kind not in INSTALL_KINDS]


def install_manifests() -> list:
    """The IstioOperator overlays under istio/ (`istioctl install -f`)."""
    return [m for m in _istio_documents() if m.kind in INSTALL_KINDS]


def kubernetes_manifests() -> list:
    """Every object under istio/ of Kubernetes' own APIs (Deployment, Service, ...),
    checked by test_ratelimit_service_manifests.py."""
    return [m for m in _istio_documents() if not _api_group(m).endswith("istio.io")]


def _api_group(manifest) -> str:
    api_version = str(manifest.doc.get("apiVersion", "")) if isinstance(manifest.doc, dict) else ""
    return api_version.rpartition("/")[0]


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
    """Each WasmPlugin with its https patch (overlays/https/<same file>) applied as a
    JSON merge patch: what `kubectl apply -k istio/overlays/https` applies to fetch the
    .wasm over https (test_istio_kustomize.py checks kustomize makes the same)."""
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


def role_of(doc: dict) -> str:
    """The role a WasmPlugin plays (a key of `PLUGIN_ROLES`): the one its module and
    `pluginName` name, else its module's own."""
    spec = doc.get("spec", {})
    module = module_of(spec.get("url", ""))
    for role, entry in PLUGIN_ROLES.items():
        if entry.module == module and entry.plugin_name == spec.get("pluginName"):
            return role
    return module


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
        module = role_of(plugin.doc)
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
    chain = [role_of({"spec": p.spec}) for p in ordered]
    for position, module in enumerate(chain):
        for earlier in PLUGIN_ROLES[module].runs_after:
            if earlier in chain and chain.index(earlier) > position:
                problems.append(f"{module} runs before {earlier} (chain: {' -> '.join(chain)}), "
                                f"but must run after it: {module} {PLUGIN_ROLES[module].reason}")
    for first, second in zip(ordered, ordered[1:]):
        if (first.phase, first.priority) == (second.phase, second.priority):
            problems.append(f"{role_of({'spec': first.spec})} and {role_of({'spec': second.spec})} "
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
        elif m.kind == "Service" and str(m.doc.get("apiVersion")) == "v1":
            meta = m.doc.get("metadata") or {}
            host = f"{meta.get('name')}.{meta.get('namespace', 'default')}.svc.cluster.local"
            ports.update((host, p["port"]) for p in spec.get("ports", []))
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
                                f"ServiceEntry or Service under istio/ has host {host} port {port}")
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


def check_agreement(plugins: list, gateway_configs: dict) -> list:
    """`gateway_configs`: {role: JSON config of that filter in gateway.yaml}."""
    problems = []
    for plugin in plugins:
        module = role_of(plugin.doc)
        if module not in gateway_configs:
            problems.append(f"{plugin.label}: envoy-config/gateway.yaml has no {module} filter "
                            f"to agree with")
            continue
        allowed = DEPLOYMENT_SPECIFIC.get(module, {})
        ours = _without(plugin.doc["spec"].get("pluginConfig") or {}, allowed)
        theirs = _without(gateway_configs[module], allowed)
        for path in _differences(ours, theirs):
            problems.append(f"{plugin.label}: pluginConfig.{path} differs from "
                            f"envoy-config/gateway.yaml (allowed to differ: "
                            f"{', '.join('.'.join(map(str, p)) for p in allowed) or 'nothing'})")
    return problems


def _without(config, paths):
    """A deep copy of `config` without the fields at `paths` (keys, and list indices)."""
    config = json.loads(json.dumps(config))
    for path in paths:
        node = config
        for key in path[:-1]:
            if isinstance(node, dict):
                node = node.get(key)
            elif isinstance(node, list) and isinstance(key, int) and key < len(node):
                node = node[key]
            else:
                node = None
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return config


def _differences(a, b, path=""):
    """Paths (dotted) where two JSON values differ; numbers compare by value, as a
    filter reads them (Istio sends every number as a double)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            child = f"{path}.{key}" if path else key
            if key not in a or key not in b:
                yield child
            else:
                yield from _differences(a[key], b[key], child)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            yield from _differences(x, y, f"{path}[{i}]")
    elif not _same_value(a, b):
        yield path or "(the whole config)"


def _same_value(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):  # True == 1 in Python, not in JSON
        return type(a) is type(b) and a == b
    return a == b  # 5 == 5.0
