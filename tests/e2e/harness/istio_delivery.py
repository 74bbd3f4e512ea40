"""An emulation of how Istio delivers a WasmPlugin to its proxies, into stock Envoy.

No Kubernetes, istiod or istio-agent can run here, so this module does what they do,
following the Istio source (istio/istio, read at the 1.29/1.30 branches):

istiod (`IstiodEmulation`)
- `pilot/pkg/model/extensions.go` (`WasmPluginWrapper.buildPluginConfig`, 1.29;
  `TrafficExtensionWrapper.buildWasmConfig`, 1.30): one `Wasm` filter config per
  WasmPlugin: `config.name` `<ns>.<name>`, `root_id` = pluginName, the pluginConfig as
  a JSON `google.protobuf.StringValue` (`protomarshal.ToJSON`, see `istiod_json`), V8,
  the code as `remote` (`http_uri` with cluster `_`, timeout 30s, `sha256`), VM
  environment (`ISTIO_META_WASM_*` for the agent, then `vmConfig.env`), failStrategy
  -> `failure_policy` (FAIL_CLOSE -> FAIL_CLOSED, the default; FAIL_OPEN -> FAIL_OPEN;
  istiod writes the deprecated `fail_open` instead only for proxies older than 1.25,
  not emulated).
- ECDS resource names: `extensions.istio.io/wasmplugin/<ns>.<name>` up to 1.29
  (`WasmPluginResourceNamePrefix`); from 1.30 a WasmPlugin is first translated into a
  synthetic TrafficExtension named `<name>~istio-translated-wasmplugin`
  (`translateWasmPlugin`) and named `extensions.istio.io/trafficextension/<ns>.<name>~
  istio-translated-wasmplugin` (`TrafficExtensionResourceNamePrefix`); the same
  wrapper builds `config.name` from that synthetic name.
- `pilot/pkg/networking/core/extension/wasmplugin.go` (`toEnvoyHTTPFilter`): the
  listener's HTTP filter only refers to the resource (`config_discovery`, type URLs
  Wasm and RBAC); `pilot/pkg/model/push_context.go` (`WasmPluginsByListenerInfo`)
  sorts each phase by descending priority (no priority = lowest), stable;
  `pilot/pkg/networking/core/listener_builder.go` places the phases:
  AUTHN, (Istio authn), AUTHZ, (Istio RBAC), STATS, then plugins without a phase.

istio-agent (`AgentEmulation`, `pkg/wasm/convert.go`, `pkg/wasm/cache.go`,
`pkg/wasm/imagefetcher.go`)
- fetches the module: for `oci://` the image manifest's digest is the checksum and
  `plugin.wasm` comes from the last layer (compat variant); for http(s) the checksum is
  the sha256 of the downloaded bytes; a checksum different from `sha256` is an error;
  the bytes must start with the Wasm magic number;
- on success rewrites `code` to the local file (`<cache>/<sha256(url without tag)>/
  <checksum>.wasm`) and strips the `ISTIO_META_*` variables from the VM environment;
- on failure replaces the whole resource with an RBAC filter of the same name: allow
  all (`wasm-default-allow`) under FAIL_OPEN, deny all (`wasm-default-deny`) otherwise.

Delivery: Istio streams ECDS over ADS from istiod through the agent; here each
resource is a file read through `path_config_source` (the same ECDS subscription in
Envoy, fed by a file), replaced by an atomic rename to push an update. The module is
read from `make oci`/`make build` output instead of a registry or web server, and
callout clusters named after ServiceEntries point at local fixtures without TLS.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import gzip
import tarfile
import urllib.parse
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from .bootstrap import STRING_VALUE, WASM, bootstrap, cluster, http_listener, route

RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
TYPED_EXTENSION_CONFIG = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"

#: The two ECDS naming schemes, by the Istio release that introduced them.
ISTIO_1_29 = "1.29"
ISTIO_1_30 = "1.30"
ISTIO_VERSIONS = (ISTIO_1_29, ISTIO_1_30)

#: Phases in the order listener_builder.go appends them.
PHASE_ORDER = ("AUTHN", "AUTHZ", "STATS", "UNSPECIFIED_PHASE")
FAILURE_POLICY = {"FAIL_CLOSE": "FAIL_CLOSED", "FAIL_OPEN": "FAIL_OPEN", "FAIL_RELOAD": "FAIL_RELOAD"}
INT32_MIN = -(2**31)
SYNTHETIC_MARKER = "~istio-translated-wasmplugin"


# --- pluginConfig as istiod writes it ----------------------------------------------


def istiod_json(value) -> str:
    """A pluginConfig (a `google.protobuf.Struct`) as istiod serialises it.

    istiod calls `protomarshal.ToJSON`, the legacy `github.com/golang/protobuf/jsonpb`
    Marshaler without indent: compact; object keys sorted; every number is a double
    written by Go's `encoding/json` (`50` -> `50`, `0.5` -> `0.5`, `1e21` -> `1e+21`,
    integers above 2^53 rounded); strings escaped as Go does (`<`, `>`, `&`, U+2028,
    U+2029 as `\\u....`, non-ASCII kept as UTF-8).
    """
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return _go_float(float(value))
    if isinstance(value, str):
        return _go_string(value)
    if isinstance(value, list):
        return "[" + ",".join(istiod_json(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{_go_string(str(k))}:{istiod_json(value[k])}"
                              for k in sorted(value, key=str)) + "}"
    raise TypeError(f"a Struct holds no {type(value).__name__}")


def _go_float(number: float) -> str:
    if math.isnan(number):  # jsonpb writes these three as strings
        return '"NaN"'
    if math.isinf(number):
        return '"Infinity"' if number > 0 else '"-Infinity"'
    magnitude = abs(number)
    if magnitude != 0 and (magnitude < 1e-6 or magnitude >= 1e21):
        text = repr(number)  # shortest digits, exponent form: 1e+21, 1.5e-07
        mantissa, exponent = text.split("e")
        sign, digits = exponent[0], exponent[1:].lstrip("0") or "0"
        if sign == "-" and len(digits) == 1:
            return f"{mantissa}e-{digits}"  # Go turns e-07 into e-7
        return f"{mantissa}e{sign}{digits.zfill(2)}"
    return format(Decimal(repr(number)).normalize(), "f")


_GO_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n",
               "\r": "\\r", "\t": "\\t", "<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
               "\u2028": "\\u2028", "\u2029": "\\u2029"}


def _go_string(text: str) -> str:
    out = []
    for char in text:
        if char in _GO_ESCAPES:
            out.append(_GO_ESCAPES[char])
        elif ord(char) < 0x20:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


# --- istiod ------------------------------------------------------------------------


@dataclass
class WasmPlugin:
    """A WasmPlugin as istiod reads it from the API server."""

    namespace: str
    name: str
    spec: dict
    resource_version: str = "1"

    @classmethod
    def from_manifest(cls, doc: dict, resource_version: str = "1") -> "WasmPlugin":
        meta = doc["metadata"]
        return cls(meta.get("namespace", "default"), meta["name"], doc.get("spec") or {},
                   resource_version)

    @property
    def phase(self) -> str:
        return self.spec.get("phase") or "UNSPECIFIED_PHASE"

    @property
    def priority(self) -> int:
        value = self.spec.get("priority")
        return INT32_MIN if value is None else int(value)


@dataclass
class IstiodEmulation:
    """What istiod sends a proxy for a set of WasmPlugins (HTTP type only)."""

    istio_version: str = ISTIO_1_30

    def _synthetic_name(self, plugin: WasmPlugin) -> str:
        return plugin.name + SYNTHETIC_MARKER if self.istio_version >= ISTIO_1_30 else plugin.name

    def resource_name(self, plugin: WasmPlugin) -> str:
        prefix = ("extensions.istio.io/trafficextension/" if self.istio_version >= ISTIO_1_30
                  else "extensions.istio.io/wasmplugin/")
        return f"{prefix}{plugin.namespace}.{self._synthetic_name(plugin)}"

    def config_name(self, plugin: WasmPlugin) -> str:
        return f"{plugin.namespace}.{self._synthetic_name(plugin)}"

    def extension_config(self, plugin: WasmPlugin) -> dict:
        """The ECDS resource (a TypedExtensionConfig) istiod builds for `plugin`."""
        spec = plugin.spec
        config = {"name": self.config_name(plugin), "root_id": spec.get("pluginName", "")}
        if spec.get("pluginConfig"):
            config["configuration"] = {"@type": STRING_VALUE,
                                       "value": istiod_json(spec["pluginConfig"])}
        config["vm_config"] = {
            "runtime": "envoy.wasm.runtime.v8",
            "code": self._code(spec),
            "environment_variables": self._environment(plugin),
        }
        config["failure_policy"] = FAILURE_POLICY[spec.get("failStrategy", "FAIL_CLOSE")]
        return {"@type": TYPED_EXTENSION_CONFIG, "name": self.resource_name(plugin),
                "typed_config": {"@type": WASM, "config": config}}

    @staticmethod
    def _code(spec: dict) -> dict:
        url = spec["url"]
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme == "file":
            return {"local": {"filename": url.removeprefix("file://")}}
        if scheme not in ("oci", "http", "https"):
            raise ValueError(f"this emulation needs an explicit oci/http/https/file url: {url}")
        return {"remote": {"http_uri": {"uri": url, "timeout": "30s", "cluster": "_"},
                           "sha256": spec.get("sha256", "")}}

    @staticmethod
    def _environment(plugin: WasmPlugin) -> dict:
        spec = plugin.spec
        values = {}
        if spec.get("imagePullPolicy") not in (None, "UNSPECIFIED_POLICY"):
            values["ISTIO_META_WASM_IMAGE_PULL_POLICY"] = spec["imagePullPolicy"]
        values["ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION"] = plugin.resource_version
        host_keys = []
        for env in (spec.get("vmConfig") or {}).get("env", []):
            if env.get("valueFrom", "INLINE") == "INLINE":
                values[env["name"]] = env.get("value", "")
            else:
                host_keys.append(env["name"])
        out = {"key_values": values}
        if host_keys:
            out["host_env_keys"] = host_keys
        return out

    def ordered(self, plugins: list) -> list:
        """The plugins in filter-chain order: phase buckets, then descending priority
        (stable: equal priorities keep the order istiod listed them in)."""
        out = []
        for phase in PHASE_ORDER:
            bucket = [p for p in plugins if p.phase == phase]
            out.extend(sorted(bucket, key=lambda p: -p.priority))
        return out

    def http_filter(self, plugin: WasmPlugin, ecds_file: Path) -> dict:
        """The listener's reference to the plugin: ECDS, fed here from a file (istiod
        uses ADS with `initial_fetch_timeout: 0s`, which blocks listener warming)."""
        return {
            "name": self.resource_name(plugin),
            "config_discovery": {
                "config_source": {"path_config_source": {"path": str(ecds_file)},
                                  "resource_api_version": "V3",
                                  "initial_fetch_timeout": "0s"},
                "type_urls": [WASM, RBAC],
            },
        }


# --- istio-agent -------------------------------------------------------------------


class FetchError(RuntimeError):
    pass


@dataclass
class BuiltArtifacts:
    """Stands in for the OCI registry and the web server: `oci://<any>/<module>:<tag>`
    is read from the OCI image layout `make oci` wrote (build/oci/<module>), and an
    http(s) url ending in `<module>.wasm` from build/wasm/."""

    build_dir: Path

    def fetch(self, url: str):
        """(module bytes, checksum) as the agent's fetchers compute them."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme == "oci":
            return self._fetch_image(parts.netloc + parts.path)
        if parts.scheme in ("http", "https"):
            path = self.build_dir / "wasm" / Path(parts.path).name
            if not path.is_file():
                raise FetchError(f"{url}: 404 Not Found")
            data = path.read_bytes()
            return data, hashlib.sha256(data).hexdigest()
        raise FetchError(f"unsupported Wasm module downloading URL scheme: {parts.scheme}")

    def _fetch_image(self, reference: str):
        repository, _, tag = reference.rpartition(":")
        if "/" in tag or not repository:
            repository, tag = reference, "latest"
        layout = self.build_dir / "oci" / repository.rsplit("/", 1)[-1]
        try:
            index = json.loads((layout / "index.json").read_text())
        except FileNotFoundError:
            raise FetchError(f"could not fetch manifest: {reference}: MANIFEST_UNKNOWN") from None
        for descriptor in index["manifests"]:
            if descriptor.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
                manifest_bytes = self._blob(layout, descriptor["digest"])
                manifest = json.loads(manifest_bytes)
                checksum = hashlib.sha256(manifest_bytes).hexdigest()
                return self._plugin_wasm(layout, manifest), checksum
        raise FetchError(f"could not fetch manifest: {reference}: tag {tag} not found")

    @staticmethod
    def _blob(layout: Path, digest: str) -> bytes:
        data = (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise FetchError(f"blob {digest} does not match its digest")
        return data

    def _plugin_wasm(self, layout: Path, manifest: dict) -> bytes:
        # imagefetcher.go extractOCIStandardImage: the last layer, a tar+gzip holding
        # plugin.wasm.
        layer = manifest["layers"][-1]
        if layer["mediaType"] != "application/vnd.oci.image.layer.v1.tar+gzip":
            raise FetchError(f"invalid media type {layer['mediaType']}")
        data = gzip.decompress(self._blob(layout, layer["digest"]))
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar:
                if Path(member.name).name == "plugin.wasm":
                    return tar.extractfile(member).read()
        raise FetchError("plugin.wasm not found in the archive")


WASM_MAGIC = b"\x00asm"


@dataclass
class AgentEmulation:
    """istio-agent's rewrite of each ECDS resource before Envoy sees it."""

    artifacts: BuiltArtifacts
    cache_dir: Path
    log: list = field(default_factory=list)

    def convert(self, resource: dict) -> dict:
        config = resource["typed_config"]["config"]
        vm = config["vm_config"]
        fail_open = config.get("failure_policy") == "FAIL_OPEN"
        try:
            local = self._fetch(resource["name"], vm["code"]["remote"])
        except FetchError as err:
            verdict = "allow" if fail_open else "deny"
            self.log.append(f"error in converting the wasm config to local: {err}. "
                            f"applying {verdict} RBAC filter")
            return rbac_fallback(resource["name"], fail_open)
        converted = json.loads(json.dumps(resource))
        vm = converted["typed_config"]["config"]["vm_config"]
        vm["code"] = {"local": {"filename": str(local)}}
        env = vm.get("environment_variables", {})
        values = {k: v for k, v in env.get("key_values", {}).items()
                  if not k.startswith("ISTIO_META_")}
        if values:
            env["key_values"] = values
        elif env.get("host_env_keys"):
            env.pop("key_values", None)
        else:
            vm.pop("environment_variables", None)
        return converted

    def _fetch(self, resource_name: str, remote: dict) -> Path:
        url, expected = remote["http_uri"]["uri"], remote.get("sha256", "")
        data, checksum = self.artifacts.fetch(url)
        if expected and checksum != expected:
            raise FetchError(f"module downloaded from {url} has checksum {checksum}, "
                             f"which does not match: {expected}")
        if len(data) < 8 or data[:4] != WASM_MAGIC:
            raise FetchError(f"fetched Wasm binary from {url} is invalid")
        # cache.go getModulePath: <dir>/<sha256(url without tag)>/<checksum>.wasm
        name = url.rsplit(":", 1)[0] if url.startswith("oci://") else url
        directory = self.cache_dir / hashlib.sha256(name.encode()).hexdigest()
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{checksum}.wasm"
        path.write_bytes(data)
        return path


def rbac_fallback(resource_name: str, fail_open: bool) -> dict:
    """convert.go createHTTPDefaultFilter: no rules allow all; empty rules deny all."""
    rbac = ({"@type": RBAC, "rules_stat_prefix": "wasm-default-allow"} if fail_open
            else {"@type": RBAC, "rules": {}, "rules_stat_prefix": "wasm-default-deny"})
    return {"@type": TYPED_EXTENSION_CONFIG, "name": resource_name, "typed_config": rbac}


# --- Envoy side: ECDS files and the proxy's bootstrap -------------------------------


def write_ecds(path: Path, resource: dict, version: str):
    """Publishes one ECDS resource: written beside its destination, then renamed over
    it, the only change Envoy's file watch reacts to."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps({"version_info": version, "resources": [resource]}, indent=2))
    os.replace(temporary, path)


def istio_cluster_name(host: str, port: int, subset: str = "") -> str:
    """The name Istio gives the Envoy cluster of a service port."""
    return f"outbound|{port}|{subset}|{host}"


def service_entry_clusters(service_entries: list, endpoints: dict, default) -> list:
    """The `outbound|<port>||<host>` clusters of ServiceEntry manifests, each pointing
    at a local fixture (anything with .host/.port) instead of the real host:
    `endpoints[host]`, else `default`."""
    clusters = []
    for entry in service_entries:
        for host in entry["spec"]["hosts"]:
            target = endpoints.get(host, default)
            for port in entry["spec"].get("ports", []):
                clusters.append(cluster(istio_cluster_name(host, port["number"]),
                                        target.host, target.port))
    return clusters


def proxy_bootstrap(http_filters: list, upstream, extra_clusters=()) -> dict:
    """An ingress-gateway-like proxy: one listener (`main`) whose chain is the ECDS
    filters + router, routing everything to `upstream` (cluster `upstream`)."""
    listener = http_listener("main", http_filters, [route("/", "upstream", name="default")])
    return bootstrap([listener], [cluster("upstream", upstream.host, upstream.port),
                                  *extra_clusters],
                     node_id="router~127.0.0.1~istio-ingressgateway.istio-system~"
                             "istio-system.svc.cluster.local")


class EmulatedProxy:
    """One Istio proxy as istiod and istio-agent set it up for a set of WasmPlugins:
    `bootstrap()` gives the Envoy config, `push()` sends an updated WasmPlugin the way
    an edit in Kubernetes would reach the running proxy."""

    def __init__(self, workdir: Path, istio_version: str, build_dir: Path):
        self.istiod = IstiodEmulation(istio_version)
        self.agent = AgentEmulation(BuiltArtifacts(Path(build_dir)), Path(workdir) / "wasm-cache")
        self.ecds_dir = Path(workdir) / "ecds"
        self.ecds_dir.mkdir(parents=True, exist_ok=True)
        self._versions = {}

    def ecds_file(self, plugin: WasmPlugin) -> Path:
        digest = hashlib.sha256(self.istiod.resource_name(plugin).encode()).hexdigest()[:16]
        return self.ecds_dir / f"{plugin.namespace}.{plugin.name}.{digest}.json"

    def push(self, plugin: WasmPlugin) -> dict:
        """istiod's resource, converted by the agent, written for Envoy. Returns what
        Envoy receives."""
        resource = self.agent.convert(self.istiod.extension_config(plugin))
        key = self.istiod.resource_name(plugin)
        self._versions[key] = self._versions.get(key, 0) + 1
        write_ecds(self.ecds_file(plugin), resource, str(self._versions[key]))
        return resource

    def bootstrap(self, plugins: list, upstream, service_entries=(), callouts=None) -> dict:
        """`callouts` maps a ServiceEntry host to the fixture serving it (e.g. the JWKS
        issuer for idp.example.com); other hosts go to `upstream`."""
        for plugin in plugins:
            self.push(plugin)
        filters = [self.istiod.http_filter(p, self.ecds_file(p)) for p in self.istiod.ordered(plugins)]
        clusters = service_entry_clusters(service_entries, callouts or {}, upstream)
        return proxy_bootstrap(filters, upstream, clusters)


__all__ = [
    "EmulatedProxy",
    "AgentEmulation", "BuiltArtifacts", "FetchError", "ISTIO_VERSIONS", "IstiodEmulation",
    "WasmPlugin", "istio_cluster_name", "istiod_json", "proxy_bootstrap", "rbac_fallback",
    "service_entry_clusters", "write_ecds",
]
