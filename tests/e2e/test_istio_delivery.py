"""An emulation of Istio's delivery of our WasmPlugins into stock Envoy.

istiod turns each WasmPlugin into an ECDS resource (pilot/pkg/model/extensions.go,
pilot/pkg/networking/core/extension/wasmplugin.go), istio-agent fetches the module,
checks its sha256 and rewrites the resource to a local file or, on failure, to an RBAC
filter (pkg/wasm/convert.go, pkg/wasm/cache.go, pkg/wasm/imagefetcher.go), and Envoy
loads it through ECDS. `harness/istio_delivery.py` reproduces those steps (see its
docstring for what differs: ECDS from a file instead of ADS, modules from build/
instead of a registry); these tests load the result into the real Envoy binary with
the real .wasm files, for both ECDS naming schemes (Istio <=1.29 and 1.30+).

Every WasmPlugin under istio/ is delivered; DELIVERY_PROBES says how to see that a
filter works, the default being that it counts the request. The callouts of the
delivered filters reach local fixtures through the clusters Istio would create for
istio/callouts/ (idp.example.com: a JWKS issuer; keystore.internal.example.com: the
key store), and the API-key pepper comes from the proxy's environment, as
vmConfig.env asks.
"""

import json
import re
import secrets
from dataclasses import dataclass

import pytest
import requests

from harness import Seen, tool_path, wait_for
from harness.istio_checks import (
    https_variants, module_of, role_of, shipped_manifests, wasm_plugins,
)
from harness.istio_delivery import (
    ISTIO_1_29, ISTIO_1_30, ISTIO_VERSIONS, EmulatedProxy, IstiodEmulation, WasmPlugin,
    istiod_json,
)
from harness.jwt import KeyDir, claims_for
from harness.keystore import KeyStore, start_keystore
from harness.paths import BUILD

SHIPPED = shipped_manifests()
SERVICE_ENTRIES = [m.doc for m in SHIPPED if m.kind == "ServiceEntry"]
PLUGIN_DOCS = {m.name: m.doc for m in wasm_plugins(SHIPPED)}
JWT_PROVIDER = PLUGIN_DOCS["wasmgate-jwt"]["spec"]["pluginConfig"]["providers"]["idp"]
PEPPER_VARIABLE = PLUGIN_DOCS["wasmgate-api-key"]["spec"]["pluginConfig"]["pepper_env"]


@dataclass
class Callouts:
    """What the delivered filters call out to, and how to make credentials for them."""

    signing_keys: KeyDir  # published by the JWKS issuer behind idp.example.com
    jwks: object          # the issuer's Service
    keys: KeyStore        # the key store behind keystore.internal.example.com
    pepper: str           # WASMGATE_API_KEY_PEPPER of the proxy (and of `keys create`)

    def endpoints(self) -> dict:
        return {"idp.example.com": self.jwks, "keystore.internal.example.com": self.keys.service}

    def bearer(self, scope="orders:read", **claims) -> dict:
        token = self.signing_keys.mint("idp-es256", claims_for(
            iss=JWT_PROVIDER["issuer"], aud=JWT_PROVIDER["audiences"][0], scope=scope, **claims))
        return {"authorization": f"Bearer {token}"}

    def api_key(self, tenant="acme", plan=None, peppered=True) -> str:
        extra = ["--pepper-env", PEPPER_VARIABLE] if peppered else []
        return self.keys.create(tenant, plan, *extra,
                                env={PEPPER_VARIABLE: self.pepper}).api_key


@pytest.fixture
def callouts(start_service, tmp_path, monkeypatch) -> Callouts:
    signing_keys = KeyDir(tmp_path / "idp-keys")
    signing_keys.add("idp-es256", "ES256")
    jwks = start_service([tool_path("demo"), "jwks", "--keys", signing_keys.path], "idp")
    keys = start_keystore(start_service, f"file:{tmp_path / 'keys.json'}")
    pepper = secrets.token_urlsafe(24)
    # The proxy's own environment (Envoy inherits the test's); vmConfig.env names it.
    monkeypatch.setenv(PEPPER_VARIABLE, pepper)
    return Callouts(signing_keys, jwks, keys, pepper)


def probe_headers(envoy, callouts):
    """The shipped header config: spoofed identities never reach the service, the
    gateway adds its headers, the request id is echoed, v1 answers carry Sunset. (With
    a token, for when the JWT filter runs too: the service then sees the token's
    identity, never the spoofed one.)"""
    spoofed = {"x-user-id": "admin", "x-tenant-id": "other", "x-plan": "gold"}
    stripped = envoy.metric("wasmgate_headers_spoofed_headers_stripped_total")
    resp = requests.get(envoy.url("/api/v1/users/42"), headers={**spoofed, **callouts.bearer()},
                        timeout=10)
    seen = Seen(resp)
    assert resp.status_code == 200
    for name, value in spoofed.items():
        assert seen.header(name) != value, name
    assert seen.header("x-gateway") == "wasmgate"
    assert seen.header("x-client-ip") == "127.0.0.1"
    assert resp.headers["x-request-id"] == seen.header("x-request-id")
    assert resp.headers["sunset"] == "Thu, 31 Dec 2026 23:59:59 GMT"
    assert envoy.metric("wasmgate_headers_spoofed_headers_stripped_total") == stripped + 3


def probe_jwt(envoy, callouts):
    """Tokens on /api/: none gets 401, a valid one passes with the identity it
    carries, a missing scope gets 403; /public needs none."""
    orders = envoy.url("/api/v2/orders")
    missing = requests.get(orders, timeout=10)
    assert missing.status_code == 401 and missing.json()["error"] == "missing_token"
    resp = requests.get(orders, headers={**callouts.bearer(sub="alice", tenant="acme"),
                                         "x-user-id": "admin"}, timeout=10)
    assert resp.status_code == 200, resp.text
    seen = Seen(resp)
    assert (seen.header("x-user-id"), seen.header("x-tenant-id")) == ("alice", "acme")
    assert seen.header("authorization") is None
    # Only reads go with orders:read; any other verb is a write (an allow-list).
    for method in ("POST", "MERGE"):
        refused = requests.request(method, orders, json={}, headers=callouts.bearer(), timeout=10)
        assert refused.status_code == 403, method
    assert requests.get(envoy.url("/public/x"), timeout=10).status_code == 200
    assert envoy.metric("wasmgate_jwt_jwks_fetches_total", result="success") >= 1


def probe_api_key(envoy, callouts):
    """Keys on /partner: none gets 401, a key hashed with the proxy's pepper passes
    with its tenant and plan, the same kind of key hashed without it is unknown (so
    the pepper did reach the filter through vmConfig.env)."""
    partner = envoy.url("/partner/orders")
    assert requests.get(partner, timeout=10).status_code == 401
    resp = requests.get(partner, headers={"x-api-key": callouts.api_key("acme", "gold"),
                                          "x-tenant-id": "spoofed"}, timeout=10)
    assert resp.status_code == 200, resp.text
    seen = Seen(resp)
    assert (seen.header("x-tenant-id"), seen.header("x-plan")) == ("acme", "gold")
    assert seen.header("x-api-key") is None
    unpeppered = callouts.api_key("acme", "gold", peppered=False)
    assert requests.get(partner, headers={"x-api-key": unpeppered}, timeout=10).status_code == 401


def probe_rate_limit(envoy, callouts):
    """Partners without a plan get 5 requests a minute: the 6th is refused with 429 and
    Retry-After. (A new key, so a bucket of its own when the API-key filter runs too;
    on its own the filter counts the client address, in an Envoy of its own.)"""
    headers = {"x-api-key": callouts.api_key("acme")}
    answers = [requests.get(envoy.url("/partner/orders"), headers=headers, timeout=10)
               for _ in range(6)]
    assert [a.status_code for a in answers] == [200] * 5 + [429]
    assert answers[-1].headers["x-ratelimit-limit"] == "5"
    assert int(answers[-1].headers["retry-after"]) >= 1


def probe_pre_auth(envoy, callouts):
    """Before authentication, every request counts against its address: admitted ones
    carry no X-RateLimit-* of this tier (the tier after authentication sets them)."""
    allowed = envoy.metric("wasmgate_rate_limit_allowed_total")
    resp = requests.get(envoy.url("/public/x"), timeout=10)
    assert resp.status_code != 429
    assert resp.headers.get("x-ratelimit-limit") != "1000"
    assert envoy.metric("wasmgate_rate_limit_allowed_total") > allowed


def probe_counts_requests(module):
    """Default probe: a request passes through the filter, which counts it."""
    def probe(envoy, callouts):
        requests.get(envoy.url("/"), timeout=10)
        prefix = f"wasmcustom.wasmgate.{module.replace('-', '_')}."
        counted = {k: v for k, v in envoy.stats(f"^{re.escape(prefix)}").items() if v}
        assert counted, f"no {prefix}* counter moved"
    return probe


#: How to see that a delivered filter works, by role (harness/istio_checks.py
#: PLUGIN_ROLES): `probe(envoy, callouts)`. Filters that call out reach the `callouts`
#: fixtures through the clusters of istio/callouts/; the default probe only shows that
#: the filter loaded and counted a request.
DELIVERY_PROBES = {"headers": probe_headers, "jwt": probe_jwt, "api-key": probe_api_key,
                   "rate-limit": probe_rate_limit, "pre-auth": probe_pre_auth}


def probe_for(doc):
    role = role_of(doc)
    return DELIVERY_PROBES.get(role) or probe_counts_requests(module_of(doc["spec"]["url"]))


def ecds_stat(envoy, resource_name, stat):
    return envoy.stat(f"extension_config_discovery.http_filter.{resource_name}.{stat}")


def ecds_dump(envoy) -> dict:
    dump = json.loads(envoy.admin("/config_dump?resource=ecds_filters"))
    return {c["ecds_filter"]["name"]: c["ecds_filter"] for c in dump["configs"]}


def listener_filter_names(envoy) -> list:
    dump = json.loads(envoy.admin("/config_dump?resource=static_listeners"))
    listener = dump["configs"][0]["listener"]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return [f["name"] for f in hcm["http_filters"]]


@pytest.fixture
def gateway(start_envoy, echo, tmp_path, callouts):
    """`gateway(plugin_docs, istio_version) -> (envoy, proxy)`: an Envoy set up as
    istiod + istio-agent would, for these WasmPlugin manifests, in front of the echo
    upstream. The ServiceEntry clusters lead to the `callouts` fixtures."""
    started = 0

    def start(docs, istio_version=ISTIO_1_30):
        nonlocal started
        started += 1
        proxy = EmulatedProxy(tmp_path / f"{istio_version}-{started}", istio_version, BUILD)
        plugins = [WasmPlugin.from_manifest(doc) for doc in docs]
        envoy = start_envoy(proxy.bootstrap(plugins, echo, SERVICE_ENTRIES, callouts.endpoints()),
                            name=f"gateway-{istio_version}-{started}")
        return envoy, proxy
    return start


@pytest.mark.parametrize("istio_version", ISTIO_VERSIONS)
@pytest.mark.parametrize("name", sorted(PLUGIN_DOCS))
def test_emulated_istio_delivery_serves_the_shipped_wasmplugin(gateway, callouts, name,
                                                               istio_version):
    doc = PLUGIN_DOCS[name]
    envoy, proxy = gateway([doc], istio_version)
    assert proxy.agent.log == [], "the agent refused the module (stale pin? `make istio-pin`)"
    plugin = WasmPlugin.from_manifest(doc)
    resource = proxy.istiod.resource_name(plugin)
    # The pluginConfig, serialised as istiod does, was accepted by the filter itself.
    assert ecds_stat(envoy, resource, "update_success") == 1
    assert ecds_stat(envoy, resource, "update_rejected") == 0
    assert "invalid plugin configuration" not in envoy.log()
    delivered = ecds_dump(envoy)[resource]["typed_config"]["config"]
    assert delivered["name"] == proxy.istiod.config_name(plugin)
    assert delivered["root_id"] == doc["spec"].get("pluginName", "")
    assert delivered["configuration"]["value"] == istiod_json(doc["spec"]["pluginConfig"])
    assert delivered["vm_config"]["code"]["local"]["filename"].endswith(
        doc["spec"]["sha256"] + ".wasm")
    assert listener_filter_names(envoy) == [resource, "envoy.filters.http.router"]
    probe_for(doc)(envoy, callouts)


def test_emulated_istio_delivery_over_https(gateway, callouts):
    """The https variant (overlays/https/ patch): the agent checks the .wasm's
    own sha256 instead of the image digest."""
    for variant in https_variants(wasm_plugins(SHIPPED)):
        assert variant.doc["spec"]["url"].startswith("https://")
        envoy, proxy = gateway([variant.doc], ISTIO_1_30)
        assert proxy.agent.log == [], "the agent refused the module (stale pin? `make istio-pin`)"
        resource = proxy.istiod.resource_name(WasmPlugin.from_manifest(variant.doc))
        assert ecds_stat(envoy, resource, "update_success") == 1
        probe_for(variant.doc)(envoy, callouts)
        envoy.stop()


def test_emulated_istio_delivery_chains_every_plugin_in_phase_and_priority_order(gateway,
                                                                                 callouts):
    docs = list(PLUGIN_DOCS.values())
    envoy, proxy = gateway(docs, ISTIO_1_30)
    assert proxy.agent.log == [], "the agent refused a module (stale pin? `make istio-pin`)"
    plugins = [WasmPlugin.from_manifest(d) for d in docs]
    expected = [proxy.istiod.resource_name(p) for p in proxy.istiod.ordered(plugins)]
    assert listener_filter_names(envoy) == [*expected, "envoy.filters.http.router"]
    # The clusters the callouts name exist under Istio's names.
    clusters = envoy.admin("/clusters")
    for entry in SERVICE_ENTRIES:
        for host in entry["spec"]["hosts"]:
            for port in entry["spec"]["ports"]:
                assert f"outbound|{port['number']}||{host}::" in clusters
    # Every filter still does its job with the others around it (the JWT filter's
    # tenant survives the API-key filter, which skips /api/; the rate limit counts the
    # key the API-key filter verified).
    for doc in docs:
        probe_for(doc)(envoy, callouts)


def _headers_doc():
    return json.loads(json.dumps(PLUGIN_DOCS["wasmgate-headers"]))


def test_emulated_istio_delivery_hot_reloads_a_changed_plugin_config(gateway):
    doc = _headers_doc()
    envoy, proxy = gateway([doc])
    process = envoy.proc.pid
    resource = proxy.istiod.resource_name(WasmPlugin.from_manifest(doc))
    assert Seen(requests.get(envoy.url("/other"), timeout=10)).header("x-gateway") == "wasmgate"

    doc["spec"]["pluginConfig"]["default"]["request"]["set"]["x-gateway"] = "wasmgate-v2"
    proxy.push(WasmPlugin.from_manifest(doc, resource_version="2"))
    wait_for(lambda: ecds_stat(envoy, resource, "version_text") == "2", 20, "the ECDS update")
    wait_for(lambda: Seen(requests.get(envoy.url("/other"), timeout=10))
             .header("x-gateway") == "wasmgate-v2", 20, "the new configuration to serve")
    assert envoy.alive() and envoy.proc.pid == process  # the same Envoy, never restarted
    assert ecds_stat(envoy, resource, "update_rejected") == 0


def test_emulated_istio_delivery_keeps_serving_when_the_filter_refuses_an_update(gateway):
    doc = _headers_doc()
    envoy, proxy = gateway([doc])
    resource = proxy.istiod.resource_name(WasmPlugin.from_manifest(doc))
    # Valid for Istio (pluginConfig is free-form), refused by the filter's parser.
    doc["spec"]["pluginConfig"]["strip_inbound"] = ["x user"]
    doc["spec"]["pluginConfig"]["default"]["request"]["set"]["x-gateway"] = "broken"
    proxy.push(WasmPlugin.from_manifest(doc, resource_version="2"))
    wait_for(lambda: ecds_stat(envoy, resource, "update_rejected") == 1, 20,
             "the update to be refused")
    assert ("wasmgate-headers: invalid plugin configuration: strip_inbound[0]: "
            in envoy.log())
    # Envoy still holds version 1 (its counters: config_fail and update_rejected moved,
    # config_reload counts the attempt too).
    assert ecds_stat(envoy, resource, "update_success") == 1
    assert ecds_stat(envoy, resource, "version_text") == "1"
    # The previous configuration still serves, spoofed headers still stripped.
    for _ in range(5):  # several connections: every worker kept the old filter
        seen = Seen(requests.get(envoy.url("/api/v1/x"), headers={"x-user-id": "admin"},
                                 timeout=10))
        assert seen.header("x-gateway") == "wasmgate"
        assert seen.header("x-user-id") is None


def test_emulated_istio_delivery_passes_the_vm_environment_without_the_agents_own(gateway,
                                                                                   callouts):
    """vmConfig.env (how the API-key filter gets its pepper): inline values and host
    variable names reach Envoy, the agent's ISTIO_META_* variables do not."""
    doc = _headers_doc()
    doc["spec"]["vmConfig"] = {"env": [{"name": "WASMGATE_PEPPER", "valueFrom": "HOST"},
                                       {"name": "WASMGATE_MODE", "value": "strict"}]}
    envoy, proxy = gateway([doc])
    resource = proxy.istiod.resource_name(WasmPlugin.from_manifest(doc))
    vm = ecds_dump(envoy)[resource]["typed_config"]["config"]["vm_config"]
    assert vm["environment_variables"] == {"host_env_keys": ["WASMGATE_PEPPER"],
                                           "key_values": {"WASMGATE_MODE": "strict"}}
    probe_headers(envoy, callouts)


def _with_wrong_sha256(fail_strategy: str, https: bool = False) -> dict:
    doc = _headers_doc()
    doc["spec"]["failStrategy"] = fail_strategy
    doc["spec"]["sha256"] = "deadbeef" * 8
    if https:
        doc["spec"]["url"] = "https://artifacts.example.com/wasmgate/0.1.0/headers.wasm"
    return doc


@pytest.mark.parametrize("https", [False, True], ids=["oci", "https"])
def test_emulated_istio_delivery_fail_close_denies_all_when_the_sha256_does_not_match(
        gateway, https):
    envoy, proxy = gateway([_with_wrong_sha256("FAIL_CLOSE", https)])
    assert any("does not match" in line and "applying deny RBAC filter" in line
               for line in proxy.agent.log), proxy.agent.log
    for path in ("/", "/api/v1/users"):
        resp = requests.get(envoy.url(path), timeout=10)
        assert resp.status_code == 403, resp.text
        assert resp.text == "RBAC: access denied"
    assert envoy.metric("wasmgate_headers_requests_total") == 0


def test_emulated_istio_delivery_fail_open_passes_through_when_the_sha256_does_not_match(gateway):
    """What FAIL_OPEN would cost for the header filter (which ships FAIL_CLOSE): with
    the module refused, requests pass untouched, spoofed identity included."""
    envoy, proxy = gateway([_with_wrong_sha256("FAIL_OPEN")])
    assert any("applying allow RBAC filter" in line for line in proxy.agent.log), proxy.agent.log
    resp = requests.get(envoy.url("/api/v1/users"), headers={"x-user-id": "admin"}, timeout=10)
    assert resp.status_code == 200
    assert Seen(resp).header("x-user-id") == "admin"
    assert "sunset" not in resp.headers


# --- the emulation's own rules, without Envoy ------------------------------------------


def _plugin(**spec):
    return WasmPlugin("ns", "p", {"url": "oci://r.example/w/headers:1", **spec})


def test_istiod_names_resources_per_release():
    plugin = _plugin()
    assert IstiodEmulation(ISTIO_1_29).resource_name(plugin) == "extensions.istio.io/wasmplugin/ns.p"
    assert IstiodEmulation(ISTIO_1_29).config_name(plugin) == "ns.p"
    assert (IstiodEmulation(ISTIO_1_30).resource_name(plugin)
            == "extensions.istio.io/trafficextension/ns.p~istio-translated-wasmplugin")
    assert IstiodEmulation(ISTIO_1_30).config_name(plugin) == "ns.p~istio-translated-wasmplugin"


def test_istiod_orders_by_phase_then_descending_priority_stably():
    plugins = [
        WasmPlugin("ns", "stats", {"url": "x", "phase": "STATS", "priority": 99}),
        WasmPlugin("ns", "none", {"url": "x", "priority": 1000}),
        WasmPlugin("ns", "authz", {"url": "x", "phase": "AUTHZ"}),
        WasmPlugin("ns", "authn-low", {"url": "x", "phase": "AUTHN", "priority": -5}),
        WasmPlugin("ns", "authn-unset", {"url": "x", "phase": "AUTHN"}),
        WasmPlugin("ns", "authn-high", {"url": "x", "phase": "AUTHN", "priority": 10}),
        WasmPlugin("ns", "authn-high-2", {"url": "x", "phase": "AUTHN", "priority": 10}),
    ]
    order = [p.name for p in IstiodEmulation().ordered(plugins)]
    assert order == ["authn-high", "authn-high-2", "authn-low", "authn-unset", "authz", "stats", "none"]


def test_istiod_maps_fail_strategy_and_vm_environment():
    plugin = _plugin(failStrategy="FAIL_OPEN", imagePullPolicy="Always", vmConfig={"env": [
        {"name": "PEPPER", "valueFrom": "HOST"}, {"name": "MODE", "value": "strict"}]})
    config = IstiodEmulation().extension_config(plugin)["typed_config"]["config"]
    assert config["failure_policy"] == "FAIL_OPEN"
    assert "configuration" not in config  # no pluginConfig: no configuration at all
    env = config["vm_config"]["environment_variables"]
    assert env == {"key_values": {"ISTIO_META_WASM_IMAGE_PULL_POLICY": "Always",
                                  "ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION": "1",
                                  "MODE": "strict"},
                   "host_env_keys": ["PEPPER"]}
    assert config["vm_config"]["code"]["remote"]["http_uri"] == {
        "uri": "oci://r.example/w/headers:1", "timeout": "30s", "cluster": "_"}
    default = IstiodEmulation().extension_config(_plugin())["typed_config"]["config"]
    assert default["failure_policy"] == "FAIL_CLOSED"


def test_agent_rewrites_to_the_cached_module_and_strips_its_own_variables(tmp_path):
    docs = list(PLUGIN_DOCS.values())
    proxy = EmulatedProxy(tmp_path, ISTIO_1_30, BUILD)
    for doc in docs:
        spec = dict(doc["spec"], vmConfig={"env": [{"name": "PEPPER", "valueFrom": "HOST"}]})
        resource = proxy.push(WasmPlugin("istio-system", doc["metadata"]["name"], spec))
        vm = resource["typed_config"]["config"]["vm_config"]
        local = vm["code"]["local"]["filename"]
        module = module_of(spec["url"])
        assert open(local, "rb").read() == (BUILD / "wasm" / f"{module}.wasm").read_bytes()
        assert vm["environment_variables"] == {"host_env_keys": ["PEPPER"]}


@pytest.mark.parametrize("value, text", [
    ({"capacity": 50}, '{"capacity":50}'),
    ({"capacity": 50.0, "ratio": 0.25}, '{"capacity":50,"ratio":0.25}'),
    ({"big": 10**21, "tiny": 1e-7, "exact": 2**53 + 1}, '{"big":1e+21,"exact":9007199254740992,"tiny":1e-7}'),
    ({"b": [True, None, "x"], "a": {}}, '{"a":{},"b":[true,null,"x"]}'),
    ({"t": "<a href='x'>&amp;</a>\n"}, '{"t":"\\u003ca href=\'x\'\\u003e\\u0026amp;\\u003c/a\\u003e\\n"}'),
    ({"u": "né\u2028"}, '{"u":"né\\u2028"}'),
])
def test_plugin_config_is_serialised_as_istiod_does(value, text):
    assert istiod_json(value) == text
    json.loads(text)  # and it is JSON


def test_probes_name_known_modules():
    assert set(DELIVERY_PROBES) <= {role_of(d) for d in PLUGIN_DOCS.values()}
