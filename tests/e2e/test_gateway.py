"""The demo gateway (envoy-config/gateway.yaml) in real Envoy, in front of its demo
services, exactly as `make run` starts it but on ports chosen at run time: the whole
chain (headers -> jwt -> api-key -> rate-limit -> router) with the JWKS issuer and the
key store it calls.

Most tests share one gateway per test module (they only read, and each uses its own
token subject or API key, so rate-limit buckets never meet); the ejection test breaks
an instance, so it gets a gateway of its own.
"""

import email.utils
import http.client
import json
import re
import socket
import ssl
import subprocess
import time
from collections import Counter

import pytest
import requests

from harness import ROOT, Seen, wait_for, wasm_path
from harness.bootstrap import bootstrap, cluster, http_listener, route, wasm_filter
from harness import observability
from harness.certs import certificate_file, make_demo_certs, renew_demo_certs, served_certificate
from harness.demo_gateway import GATEWAY_CONFIG, DemoGateway
from harness.load import HoldingUpstream, InFlight
from harness.metrics import parse_prometheus
from harness.shipped import load_shipped, mappings


@pytest.fixture(scope="module")
def shared_gateway(tmp_path_factory, demo_certs):
    """This module's demo gateway runs with tracing on (`WASMGATE_TRACING=on`), its
    spans going to an OTLP receiver (`gateway.collector`)."""
    gateway = DemoGateway(tmp_path_factory.mktemp("demogateway"), demo_certs, tracing=True).start()
    yield gateway
    gateway.stop()


UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
IDENTITY_HEADERS = ["x-user-id", "x-tenant-id", "x-scopes", "x-api-key-id", "x-plan"]
TIMEOUT = 10  # seconds, for any single request of these tests


def with_credentials(gateway, path: str) -> dict:
    """What a client sends to reach `path`: a token on /api/, an API key on /partner
    (a new key each time: its own rate-limit bucket), nothing elsewhere; and the
    identity a service must then see."""
    if path.startswith("/api/"):
        return {"headers": gateway.bearer(sub="route-tester", tenant="acme"),
                "identity": {"x-user-id": "route-tester", "x-tenant-id": "acme",
                             "x-scopes": "orders:read"}}
    if path.startswith("/partner"):
        key = gateway.keys.create("globex", "gold")
        return {"headers": {"x-api-key": key.api_key},
                "identity": {"x-api-key-id": key.key_id, "x-tenant-id": "globex",
                             "x-plan": "gold"}}
    return {"headers": {}, "identity": {}}


def counter_delta(envoy, names):
    """`delta()` returns how much each stat grew since this call."""
    before = {name: envoy.stat(name) for name in names}
    return lambda: {name: envoy.stat(name) - before[name] for name in names}


@pytest.mark.parametrize("path, service, instances", [
    ("/api/v1/users/42", "users", {"users-a", "users-b"}),
    ("/api/v2/users", "users", {"users-a", "users-b"}),
    ("/api/v1/orders/7", "orders", {"orders-v1", "orders-v2"}),
    ("/api/v2/orders", "orders", {"orders-v1", "orders-v2"}),
    ("/api/v1/products/9?fields=name", "products", {"products"}),
    ("/api/v2/products", "products", {"products"}),
    ("/partner/v1/orders", "orders", {"orders-v1"}),  # partners stay on the stable version
    ("/public/catalog", "products", {"products"}),
])
def test_routes_reach_their_service_with_the_verified_identity_only(gateway, path, service,
                                                                     instances):
    spoofed = {name: "spoofed" for name in IDENTITY_HEADERS}
    credentials = with_credentials(gateway, path)
    # An API key sent where none is checked does not travel on either.
    stray_key = {"x-api-key": "sk_live_" + "s" * 43}
    resp = requests.get(gateway.url(path), timeout=TIMEOUT, headers={
        **spoofed, "x-request-id": "client-chosen", **stray_key, **credentials["headers"]})
    assert resp.status_code == 200, resp.text
    seen = Seen(resp)
    assert seen.service == service
    assert seen.instance in instances
    assert f"{seen.path}?{seen.query}".rstrip("?") == path  # forwarded unchanged
    # Exactly the identity the auth filters verified (none on /public), never a
    # client's; the credentials themselves stay at the gateway.
    for name in IDENTITY_HEADERS:
        assert seen.header(name) == credentials["identity"].get(name), name
    assert seen.header("authorization") is None and seen.header("x-api-key") is None
    assert seen.header("x-gateway") == "wasmgate"
    assert seen.header("x-client-ip") == "127.0.0.1"
    # At the edge the client's request id is replaced by Envoy's own, echoed back.
    assert UUID.match(seen.header("x-request-id"))
    assert resp.headers["x-request-id"] == seen.header("x-request-id")
    # Nothing about the inside leaks to the client.
    for name in ("server", "x-envoy-upstream-service-time"):
        assert name not in resp.headers


def test_paths_outside_the_routes_get_404_and_health_answers_locally(gateway):
    # No credentials needed to learn that a path leads nowhere (the auth filters are
    # off on the not-found route).
    for path in ("/api/v1/usersX", "/api/v3/users", "/admin", "/", "/partnerX"):
        resp = requests.get(gateway.url(path), timeout=TIMEOUT)
        assert resp.status_code == 404, path
        assert resp.json() == {"error": "not_found"}, path
    # Dot segments and double slashes are resolved before routing: this is /api/v2/users.
    # (http.client sends the path as written; requests would resolve it itself.)
    conn = http.client.HTTPConnection("127.0.0.1", gateway.envoy.port(), timeout=TIMEOUT)
    conn.request("GET", "/api/v1/../v2//users", headers=gateway.bearer())
    raw = conn.getresponse()
    seen = json.loads(raw.read())
    conn.close()
    assert (raw.status, seen["path"], seen["instance"][:5]) == (200, "/api/v2/users", "users")
    resp = requests.get(gateway.url("/healthz"), timeout=TIMEOUT)
    assert (resp.status_code, resp.text) == (200, "ok\n")


def test_v1_is_deprecated_with_a_sunset_date_and_v2_is_not(gateway):
    v1 = requests.get(gateway.url("/api/v1/products/1"), headers=gateway.bearer(), timeout=TIMEOUT)
    assert v1.status_code == 200
    # RFC 9745: Deprecation is a structured-field date, "@" + Unix seconds.
    deprecation = v1.headers["deprecation"]
    assert re.fullmatch(r"@\d+", deprecation), deprecation
    # RFC 8594: Sunset is an HTTP-date, and not before the deprecation.
    sunset = email.utils.parsedate_to_datetime(v1.headers["sunset"])
    assert sunset.timestamp() > int(deprecation[1:])
    v2 = requests.get(gateway.url("/api/v2/products/1"), headers=gateway.bearer(), timeout=TIMEOUT)
    assert v2.status_code == 200
    assert "deprecation" not in v2.headers and "sunset" not in v2.headers


def test_tls_listener_serves_the_demo_certificate(gateway):
    resp = requests.get(gateway.url("/api/v2/users/1", tls=True), verify=gateway.ca_file,
                        headers=gateway.bearer(), timeout=TIMEOUT)
    assert resp.status_code == 200
    seen = Seen(resp)
    assert seen.header("x-forwarded-proto") == "https"
    assert seen.header("x-gateway") == "wasmgate"

    # The certificate is for 127.0.0.1 and signed by the demo CA, and HTTP/2 is offered.
    context = ssl.create_default_context(cafile=gateway.ca_file)
    context.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", gateway.envoy.port("tls")), timeout=TIMEOUT) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.selected_alpn_protocol() == "h2"
            assert ("IP Address", "127.0.0.1") in tls.getpeercert()["subjectAltName"]
            assert tls.version() in ("TLSv1.2", "TLSv1.3")

    # A client that does not trust the demo CA refuses the connection.
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(gateway.url("/api/v2/users/1", tls=True), headers=gateway.bearer(),
                     timeout=TIMEOUT)


def test_orders_canary_splits_about_90_10(gateway):
    requests_sent = 400
    answered_by = Counter()
    with requests.Session() as session:
        session.headers.update(gateway.bearer(sub="canary-tester"))
        for _ in range(requests_sent):
            resp = session.get(gateway.url("/api/v2/orders"), timeout=TIMEOUT)
            assert resp.status_code == 200
            answered_by[Seen(resp).instance] += 1
    assert set(answered_by) <= {"orders-v1", "orders-v2"}
    # 10% of 400 is 40 with a standard deviation of 6: 16..68 is four of them either
    # side, so a correct split fails this about once in 30,000 runs.
    assert 16 <= answered_by["orders-v2"] <= 68, answered_by


def test_users_are_balanced_over_two_instances(gateway):
    answered_by = Counter()
    with requests.Session() as session:
        session.headers.update(gateway.bearer(sub="balance-tester"))
        for _ in range(40):
            resp = session.get(gateway.url("/api/v2/users"), timeout=TIMEOUT)
            answered_by[Seen(resp).instance] += 1
    # Least request with nothing in flight picks at random: fewer than 6 of 40 on one
    # instance would happen about once in 700,000 runs.
    assert set(answered_by) == {"users-a", "users-b"}
    assert min(answered_by.values()) >= 6, answered_by


def steer(instance, what: str, value=None):
    """Sets (PUT with `value`) or clears (DELETE) one of an echo instance's control
    endpoints (`fail-next`, `delay`, `fail`): the gateway removes the x-echo-* headers
    from client requests, so tests steer instances on their own ports."""
    method = "DELETE" if value is None else "PUT"
    resp = requests.request(method, instance.url(f"/__echo/{what}"), data=str(value or ""),
                            timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text


def test_a_retry_recovers_a_transient_503_for_reads_only(gateway):
    stats = ["cluster.products.upstream_rq_retry", "cluster.products.upstream_rq_retry_success"]
    delta = counter_delta(gateway.envoy, stats)
    products = gateway.instances["products"]
    # The products instance answers 503 to its next request only.
    steer(products, "fail-next", 1)
    resp = requests.get(gateway.url("/api/v2/products/1"), headers=gateway.bearer(), timeout=TIMEOUT)
    assert resp.status_code == 200
    request_id = resp.headers["x-request-id"]
    assert delta() == {stats[0]: 1, stats[1]: 1}
    entry = wait_for(lambda: next((e for e in gateway.access_log()
                                   if e.get("request_id") == request_id), None),
                     10, "the access log line of the retried request")
    assert entry["attempts"] == 2

    # A POST that failed may have been carried out: it is not replayed.
    steer(products, "fail-next", 1)
    resp = requests.post(gateway.url("/api/v2/products"), json={"name": "lamp"}, timeout=TIMEOUT,
                         headers=gateway.bearer())
    assert resp.status_code == 503
    assert delta() == {stats[0]: 1, stats[1]: 1}


def test_slow_upstream_hits_its_route_timeout(gateway):
    delta = counter_delta(gateway.envoy, ["cluster.products.upstream_rq_timeout"])
    slow = ["products", "users-a", "users-b"]
    try:
        for instance in slow:
            steer(gateway.instances[instance], "delay", 2500)
        # products allows 2 s, users 5 s: the same slow answer fails on one, not the other.
        resp = requests.get(gateway.url("/api/v2/products/1"), headers=gateway.bearer(), timeout=TIMEOUT)
        assert resp.status_code == 504
        assert delta() == {"cluster.products.upstream_rq_timeout": 1}
        resp = requests.get(gateway.url("/api/v2/users/1"), headers=gateway.bearer(), timeout=TIMEOUT)
        assert resp.status_code == 200
    finally:
        for instance in slow:
            steer(gateway.instances[instance], "delay")


def test_clients_cannot_steer_the_demo_services(gateway):
    """The echo's x-echo-* headers would let any client fail an instance (until outlier
    detection ejects it), hold a thread for a minute or set response headers."""
    steering = {"x-echo-status": "500", "x-echo-delay-ms": "60000", "x-echo-fail-first": "3",
                "x-echo-response-header": "x-injected=1"}
    resp = requests.get(gateway.url("/api/v2/products/1"), headers={**steering, **gateway.bearer()},
                        timeout=TIMEOUT)
    assert resp.status_code == 200
    assert "x-injected" not in resp.headers
    seen = Seen(resp)
    assert [name for name in steering if seen.header(name) is not None] == []


def test_the_demo_jwks_issuer_keeps_its_keys_whoever_asks(gateway):
    """`make run` starts the issuer without --mode-endpoint: nobody can make it publish
    keys of their own (the gateway would trust tokens they sign)."""
    jwks = gateway.instances["jwks"]
    forged = json.dumps({"body": json.dumps({"keys": [{"kty": "oct", "k": "AAAA"}]})})
    resp = requests.post(jwks.url("/__jwks/mode"), data=forged, timeout=TIMEOUT)
    assert resp.status_code == 404
    assert "--mode-endpoint" in resp.json()["error"]
    keys = requests.get(jwks.url("/.well-known/jwks.json"), timeout=TIMEOUT).json()["keys"]
    assert [key["kid"] for key in keys] == ["demo-es256"]


def test_admin_stays_on_loopback_and_metrics_have_a_listener_of_their_own(gateway):
    assert gateway.envoy.admin_address.startswith("127.0.0.1:")
    stats = f"http://127.0.0.1:{gateway.envoy.port('stats')}"
    requests.get(gateway.url("/api/v2/users/1"), headers=gateway.bearer(), timeout=TIMEOUT)
    metrics = requests.get(f"{stats}/stats/prometheus", timeout=TIMEOUT)
    assert metrics.status_code == 200
    assert 'envoy_cluster_upstream_rq_completed{envoy_cluster_name="users"}' in metrics.text
    # Nothing else of admin is reachable there.
    for method, path in (("GET", "/clusters"), ("GET", "/config_dump"), ("POST", "/quitquitquit"),
                         ("POST", "/runtime_modify?x=1"), ("POST", "/stats/prometheus"),
                         ("GET", "/stats/prometheus/../../clusters")):
        assert requests.request(method, f"{stats}{path}", timeout=TIMEOUT).status_code == 404, path
    assert gateway.envoy.alive()


def test_access_log_is_one_json_line_per_request(gateway):
    spoofed = {"x-user-id": "admin", "x-tenant-id": "other-tenant", "user-agent": "wasmgate-test"}
    resp = requests.get(gateway.url("/api/v1/users/42?api_key=do-not-log-me"), timeout=TIMEOUT,
                        headers={**spoofed, **gateway.bearer(sub="dana", tenant="initech")})
    request_id = resp.headers["x-request-id"]
    entry = wait_for(lambda: next((e for e in gateway.access_log()
                                   if e.get("request_id") == request_id), None),
                     10, "the request's access log line")
    assert entry["status"] == 200
    assert entry["method"] == "GET"
    assert entry["path"] == "/api/v1/users/42"  # no query string: it may carry credentials
    assert entry["route"] == "users-v1"
    assert entry["upstream_cluster"] == "users"
    assert entry["client_ip"] == "127.0.0.1"
    assert entry["user_agent"] == "wasmgate-test"
    assert isinstance(entry["latency_ms"], int) and entry["latency_ms"] >= 0
    assert re.fullmatch(r"[0-9a-f]{32}", entry["trace_id"])
    # Identity fields carry what the auth filters verified, never what a client sent.
    assert (entry["user_id"], entry["tenant"], entry["api_key_id"]) == ("dana", "initech", None)
    assert "do-not-log-me" not in gateway.envoy.log()

    # A partner's request logs its key's id and tenant; a refused one logs no identity.
    key = gateway.keys.create("globex", "free")
    partner = requests.get(gateway.url("/partner/orders"), headers={"x-api-key": key.api_key,
                                                                    "x-user-id": "admin"},
                           timeout=TIMEOUT)
    refused = requests.get(gateway.url("/api/v2/users"), headers={"x-user-id": "admin"},
                           timeout=TIMEOUT)
    assert (partner.status_code, refused.status_code) == (200, 401)
    logged = {}
    for resp in (partner, refused):
        rid = resp.headers["x-request-id"]
        logged[resp.status_code] = wait_for(
            lambda: next((e for e in gateway.access_log() if e.get("request_id") == rid), None),
            10, "the access log line")
    assert (logged[200]["api_key_id"], logged[200]["tenant"], logged[200]["user_id"]) == (
        key.key_id, "globex", None)
    assert (logged[401]["user_id"], logged[401]["tenant"]) == (None, None)
    assert key.api_key not in gateway.envoy.log()


def test_prometheus_stats_on_the_admin_port(gateway):
    requests.get(gateway.url("/api/v2/users/1"), headers=gateway.bearer(), timeout=TIMEOUT)
    requests.get(gateway.url("/api/v2/users/1"), timeout=TIMEOUT)
    samples = parse_prometheus(gateway.envoy.admin("/stats/prometheus"))
    assert samples[("envoy_cluster_upstream_rq_completed", (("envoy_cluster_name", "users"),))] >= 1
    # The filters' own metrics (wasmcustom.wasmgate.*) lose the wasmcustom prefix, and
    # their tags become labels (gateway.yaml's stats_tags).
    assert samples[("wasmgate_headers_requests_total", ())] >= 1
    assert samples[("wasmgate_jwt_allowed_total", ())] >= 1
    assert samples[("wasmgate_jwt_denied_total", (("reason", "missing_token"),))] >= 1
    assert samples[("wasmgate_jwt_jwks_fetches_total", (("provider", "idp"), ("result", "success")))] >= 1
    assert samples[("wasmgate_rate_limit_allowed_total", ())] >= 1
    assert ("wasmgate_api_key_cache_slots", ()) in samples
    assert ("envoy_cluster_outlier_detection_ejections_active", (("envoy_cluster_name", "users"),)) in samples
    # Every tag was extracted: no name still carries one, no label is unknown.
    wasmgate = [(name, labels) for name, labels in samples if name.startswith("wasmgate_")]
    assert len(wasmgate) > 50
    for name, labels in wasmgate:
        assert re.fullmatch(r"wasmgate_(headers|jwt|api_key|rate_limit)_[a-z_]+", name), name
        assert {label for label, _ in labels} <= {"reason", "kind", "provider", "result", "le"}, name


def test_the_dashboard_and_the_rules_read_metrics_the_gateway_exports(gateway):
    """Every metric the Grafana dashboard and the Prometheus rules (observability/)
    read is in this gateway's scrape, with the labels they select and group by; every
    recording rule they read is defined."""
    samples = parse_prometheus(gateway.envoy.admin("/stats/prometheus"))
    labels_of = {}
    for name, labels in samples:
        labels_of.setdefault(name, set()).update(labels)
    recorded = observability.recorded_names()
    queries = observability.dashboard_queries() + observability.rule_queries()
    assert len(queries) > 40
    for where, expr in queries:
        used = observability.selectors(expr)
        for name, matchers in used:
            assert name in labels_of, f"{where}: {name} is not exported"
            for label, (op, value) in matchers.items():
                if label in observability.TARGET_LABELS:
                    continue
                assert label in {l for l, _ in labels_of[name]}, f"{where}: {name} has no {label}"
                if op == "=":
                    assert (label, value) in labels_of[name], f"{where}: {name}{{{label}={value!r}}}"
        kept = {label for name, _ in used for label, _ in labels_of[name]} | observability.TARGET_LABELS
        for label in observability.grouping_labels(expr):
            assert label in kept, f"{where}: no metric of it has the label {label}"
        assert observability.recorded_used(expr) <= recorded, where


def test_the_operations_page_lists_every_metric_the_filters_export(gateway):
    """docs/operations.md's table of every metric: exactly the wasmgate families in a
    scrape of the gateway, which runs all four filters, each with the labels it shows."""
    samples = parse_prometheus(gateway.envoy.admin("/stats/prometheus"))
    exported = {}
    for name, labels in samples:
        if name.startswith("wasmgate_"):
            family = re.sub(r"_(bucket|sum|count)$", "", name) if "_milliseconds_" in name else name
            exported.setdefault(family, set()).update(label for label, _ in labels if label != "le")
    page = (ROOT / "docs" / "operations.md").read_text()
    table = page[page.index("### Every metric"):page.index("## Prometheus")]
    documented, optional = {}, set()
    rows = re.findall(r"^\| [a-z-]+ \| `(wasmgate_\w+)` \|([^|]*)\|[^|]*\|([^|]*)\|", table, re.M)
    for name, labels, meaning in rows:
        # The labels column: `reason`, or `provider`, `result` (`success`, `failure`).
        documented[name] = set(re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", labels)))
        # A family of a feature the demo gateway does not configure (OIDC discovery):
        # test_jwt_discovery.py reads it from an Envoy that does.
        if "Only with a provider that sets `discovery`" in meaning:
            optional.add(name)
    assert optional == {"wasmgate_jwt_discovery_fetches_total"}
    assert set(documented) - optional == set(exported)
    for name, labels in exported.items():
        assert documented[name] == labels, name


def test_traceparent_is_propagated_to_the_upstream(gateway):
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    client_span = "00f067aa0ba902b7"
    resp = requests.get(gateway.url("/api/v2/users/1"), timeout=TIMEOUT, headers={
        "traceparent": f"00-{trace_id}-{client_span}-01", **gateway.bearer()})
    forwarded = TRACEPARENT.match(Seen(resp).header("traceparent"))
    assert forwarded, Seen(resp).header("traceparent")
    # Same trace; the gateway's own span is the upstream's parent.
    assert forwarded.group(1) == trace_id
    assert forwarded.group(2) != client_span

    # A request without one starts a trace.
    started = TRACEPARENT.match(Seen(requests.get(gateway.url("/api/v2/users/1"), timeout=TIMEOUT,
                                                  headers=gateway.bearer())).header("traceparent"))
    assert started and started.group(1) != trace_id


def exported_span(gateway, trace_id):
    """The one span of `trace_id` the gateway exported (it flushes every 5 s)."""
    spans = wait_for(lambda: gateway.collector.spans(trace_id), 20,
                     f"Envoy to export the span of trace {trace_id}")
    assert len(spans) == 1, spans
    return spans[0]


def test_the_spans_envoy_exports_describe_each_request_in_the_clients_trace(gateway):
    """Tracing on (WASMGATE_TRACING=on): what reaches an OTLP/HTTP collector."""
    client = {name: f"{n:032x}" for n, name in enumerate(("ok", "refused", "timeout"), 0xa11ce)}
    client_span = "00f067aa0ba902b7"

    def get(path, trace, **headers):
        return requests.get(gateway.url(path), timeout=TIMEOUT, headers={
            "traceparent": f"00-{client[trace]}-{client_span}-01", **headers})

    resp = get("/api/v2/users/1", "ok", **gateway.bearer(sub="tracer"))
    upstream_saw = TRACEPARENT.match(Seen(resp).header("traceparent"))
    refused = get("/api/v2/orders", "refused")
    steer(gateway.instances["products"], "delay", 2500)
    try:
        timed_out = get("/api/v2/products/1", "timeout", **gateway.bearer(sub="tracer"))
    finally:
        steer(gateway.instances["products"], "delay")
    assert (resp.status_code, refused.status_code, timed_out.status_code) == (200, 401, 504)

    span = exported_span(gateway, client["ok"])
    # The span the upstream was told is its parent, child of the client's span.
    assert (span.span_id, span.parent_span_id) == (upstream_saw.group(2), client_span)
    assert span.resource["service.name"] == "wasmgate-gateway"
    assert span.kind == "SPAN_KIND_SERVER"
    assert span.status == "STATUS_CODE_UNSET"
    assert span.end_ns > span.start_ns
    assert span.attributes["http.method"] == "GET"
    assert span.attributes["http.url"].endswith("/api/v2/users/1")
    assert span.attributes["http.status_code"] == "200"
    assert span.attributes["upstream_cluster"] == "users"
    assert span.attributes["guid:x-request-id"] == resp.headers["x-request-id"]
    # The access log names the same trace.
    logged = wait_for(lambda: [e for e in gateway.access_log()
                               if e["request_id"] == resp.headers["x-request-id"]], 10,
                      "the access log line")
    assert logged[0]["trace_id"] == client["ok"]

    # Refused by the JWT filter: answered by the gateway, never sent upstream. A 4xx
    # is the client's error, not the server's: the span's status stays unset.
    span = exported_span(gateway, client["refused"])
    assert span.attributes["http.status_code"] == "401"
    assert span.status == "STATUS_CODE_UNSET" and "error" not in span.attributes

    # The route's 2 s timeout: a 504, and an error span saying why (UT).
    span = exported_span(gateway, client["timeout"])
    assert span.attributes["http.status_code"] == "504"
    assert span.attributes["upstream_cluster"] == "products"
    assert span.attributes["response_flags"] == "UT"
    assert span.status == "STATUS_CODE_ERROR"
    assert (span.end_ns - span.start_ns) / 1e9 >= 1.9  # the 2 s, give or take Envoy's timer
    assert gateway.collector.refused == []


def test_api_routes_need_a_valid_token_and_orders_their_scope(gateway):
    users = gateway.url("/api/v2/users/1")
    missing = requests.get(users, timeout=TIMEOUT)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == 'Bearer realm="wasmgate"'
    assert missing.json()["error"] == "missing_token"
    good = gateway.token()
    for bad in (gateway.token(lifetime=-300), gateway.token(aud="another-api"),
                gateway.token(iss="https://elsewhere.test"), good[:-6] + "AAAAAA"):
        resp = requests.get(users, headers={"authorization": f"Bearer {bad}"}, timeout=TIMEOUT)
        assert resp.status_code == 401, bad
        assert resp.json()["error"] == "invalid_token"
        assert 'error="invalid_token"' in resp.headers["www-authenticate"]

    # Reading orders needs orders:read, changing them orders:write; users need neither.
    orders = gateway.url("/api/v2/orders")
    reader, writer = gateway.bearer(scope="orders:read"), gateway.bearer(scope="orders:read orders:write")
    no_scope = gateway.bearer(scope=None)
    assert requests.get(users, headers=no_scope, timeout=TIMEOUT).status_code == 200
    assert requests.get(orders, headers=no_scope, timeout=TIMEOUT).status_code == 403
    assert requests.get(orders, headers=reader, timeout=TIMEOUT).status_code == 200
    refused = requests.post(orders, json={"sku": "lamp"}, headers=reader, timeout=TIMEOUT)
    assert refused.status_code == 403
    assert 'scope="orders:write"' in refused.headers["www-authenticate"]
    placed = requests.post(orders, json={"sku": "lamp"}, headers=writer, timeout=TIMEOUT)
    assert placed.status_code == 200
    assert Seen(placed).header("x-scopes") == "orders:read orders:write"


def _send(gateway, method: str, path: str, token: str, http2: bool = False):
    """`method` sent verbatim (HTTP/1.1 with http.client, HTTP/2 with curl, prior
    knowledge on the plain listener); (status, the upstream's echo or None)."""
    auth = {"authorization": f"Bearer {token}"}
    if http2:
        out = subprocess.run(
            ["curl", "-sS", "--http2-prior-knowledge", "-X", method, "-H",
             f"authorization: Bearer {token}", "-o", "-", "-w", "\n%{http_code}",
             gateway.url(path)], capture_output=True, text=True, timeout=TIMEOUT, check=True)
        body, status = out.stdout.rsplit("\n", 1)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", gateway.envoy.port(), timeout=TIMEOUT)
        conn.request(method, path, headers=auth)
        resp = conn.getresponse()
        body, status = resp.read().decode(), resp.status
        conn.close()
    echo = json.loads(body) if body.startswith('{"body"') else None
    return int(status), echo


def test_the_write_scope_guards_every_method_that_is_not_a_read(gateway):
    """Reads are an allow-list (GET, HEAD, OPTIONS need orders:read); every other method,
    whatever its spelling, needs orders:write. Envoy 1.40 passes the methods below to the
    filters (over HTTP/1.1 its codec answers 400 itself to lowercase and unknown verbs)."""
    path = "/api/v2/orders/7"
    reader = gateway.token(sub="method-reader", scope="orders:read")
    writer = gateway.token(sub="method-writer", scope="orders:read orders:write")
    for method in ("GET", "HEAD", "OPTIONS"):
        status, _ = _send(gateway, method, path, reader)
        assert status == 200, method
    writes = [(m, False) for m in ("POST", "PUT", "PATCH", "DELETE", "MERGE", "PROPPATCH",
                                   "PURGE", "SEARCH", "REPORT", "TRACE")]
    # Over HTTP/2 Envoy forwards any spelling: a lowercase `get` is not GET to the
    # filter (the upstream may read it as one), so it needs the write scope too.
    writes += [(m, True) for m in ("post", "Post", "get", "delete", "options", "FOO")]
    for method, http2 in writes:
        status, echo = _send(gateway, method, path, reader, http2)
        assert (status, echo) == (403, None), (method, http2)
        # With orders:write the request reaches the orders service as sent.
        status, echo = _send(gateway, method, path, writer, http2)
        assert status == 200 and echo["method"] == method, (method, http2)
        assert echo["headers"]["x-scopes"] == ["orders:read orders:write"], (method, http2)
    # HTTP/1.1 lowercase or unknown verbs never reach a filter: Envoy's codec refuses them.
    for method in ("post", "FOO"):
        assert _send(gateway, method, path, reader)[0] == 400, method


def test_partner_route_needs_an_api_key_and_forwards_its_tenant_and_plan(gateway):
    url = gateway.url("/partner/orders")
    missing = requests.get(url, timeout=TIMEOUT)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == 'ApiKey realm="wasmgate-partners"'
    unknown = requests.get(url, headers={"x-api-key": "sk_live_" + "x" * 43}, timeout=TIMEOUT)
    assert (unknown.status_code, unknown.json()["message"]) == (401, "the API key is not valid")
    # A token is not a key: partners authenticate with keys only.
    assert requests.get(url, headers=gateway.bearer(), timeout=TIMEOUT).status_code == 401

    key = gateway.keys.create("globex", "gold")
    resp = requests.get(url, timeout=TIMEOUT, headers={
        "x-api-key": key.api_key, "x-tenant-id": "spoofed", "x-plan": "platinum"})
    assert resp.status_code == 200
    seen = Seen(resp)
    assert (seen.service, seen.instance) == ("orders", "orders-v1")
    assert seen.header("x-tenant-id") == "globex"
    assert seen.header("x-plan") == "gold"
    assert seen.header("x-api-key-id") == key.key_id
    assert seen.header("x-api-key") is None  # the key stays at the gateway
    assert seen.header("x-user-id") is None


def test_public_route_needs_no_credentials_and_carries_no_identity(gateway):
    resp = requests.get(gateway.url("/public/catalog"), headers={"x-user-id": "admin"},
                        timeout=TIMEOUT)
    assert resp.status_code == 200
    seen = Seen(resp)
    for name in IDENTITY_HEADERS:
        assert seen.header(name) is None, name
    # Counted per client address.
    assert resp.headers["x-ratelimit-limit"] == "600"


def test_partners_are_limited_by_their_plan_and_told_when_to_retry(gateway):
    served = lambda: requests.get(gateway.instances["orders-v1"].url("/__echo/stats"),  # noqa: E731
                                  timeout=TIMEOUT).json()["requests"]
    for plan, limit in (("free", 5), ("gold", 10)):  # free is no plan of its own: the default
        key = gateway.keys.create("globex", plan)
        before = served()
        answers = [requests.get(gateway.url("/partner/orders"), headers={"x-api-key": key.api_key},
                                timeout=TIMEOUT) for _ in range(limit + 2)]
        assert [a.status_code for a in answers] == [200] * limit + [429, 429], plan
        assert served() - before == limit  # a limited request never reaches the service
        assert [a.headers["x-ratelimit-remaining"] for a in answers[:limit]] == [
            str(n) for n in range(limit - 1, -1, -1)]
        limited = answers[-1]
        assert limited.headers["x-ratelimit-limit"] == str(limit)
        assert limited.headers["x-ratelimit-remaining"] == "0"
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert int(limited.headers["x-ratelimit-reset"]) > time.time()
        assert limited.headers["ratelimit-policy"] == f'"per-minute";q={limit};w=60'
        assert limited.headers["content-type"] == "application/problem+json"
        problem = limited.json()
        assert (problem["status"], problem["violated-policies"]) == (429, ["per-minute"])


def test_a_spoofed_identity_never_reaches_a_service_even_beside_a_valid_token(gateway):
    token = gateway.bearer(sub="carol", tenant="umbrella")
    buckets = counter_delta(gateway.envoy, ["wasmcustom.wasmgate.rate_limit.slots_in_use"])
    for spoofed_key in ("key_admin", "key_other"):
        resp = requests.get(gateway.url("/api/v2/users/1"), timeout=TIMEOUT, headers={
            **token, "x-user-id": "alice", "X-Tenant-ID": "initech", "x-scopes": "admin:*",
            "x-api-key-id": spoofed_key, "x-plan": "gold"})
        seen = Seen(resp)
        assert (seen.header("x-user-id"), seen.header("x-tenant-id")) == ("carol", "umbrella")
        assert seen.header("x-scopes") == "orders:read"
        assert seen.header("x-api-key-id") is None and seen.header("x-plan") is None
    # A spoofed x-api-key-id does not pick a fresh rate-limit bucket either: both
    # requests counted against one new bucket, carol's.
    assert buckets() == {"wasmcustom.wasmgate.rate_limit.slots_in_use": 1}


def test_an_instance_answering_500s_is_ejected_for_30s_and_never_both(tmp_path, demo_certs,
                                                                       on_failure):
    """gateway.yaml's outlier detection, every number of it: 5 consecutive 5xx eject an
    instance, at most 50% of a cluster is ejected, an ejection lasts 30 s (and ends at
    a sweep of the 10 s interval). Waits out the ejection: about 40 s."""
    gateway = DemoGateway(tmp_path, demo_certs).start()
    on_failure(gateway.logs)
    envoy = gateway.envoy
    detector = "cluster.users.outlier_detection."
    users_a, users_b = gateway.instances["users-a"], gateway.instances["users-b"]
    try:
        # users-b answers 500 to everything but its health check: only the passive
        # outlier detection can tell (the active checks keep passing).
        steer(users_b, "fail", 500)
        with requests.Session() as session:
            session.headers.update(gateway.bearer())
            not_yet_ejected_at = time.monotonic()
            for _ in range(40):
                # Reads are retried on the sibling: clients never see the 500s.
                resp = session.get(gateway.url("/api/v2/users"), timeout=TIMEOUT)
                assert resp.status_code == 200
                assert Seen(resp).instance == "users-a"
                polled_at = time.monotonic()
                if envoy.stat(detector + "ejections_enforced_consecutive_5xx"):
                    break
                not_yet_ejected_at = polled_at
            assert envoy.stat(detector + "ejections_enforced_consecutive_5xx") == 1
            assert envoy.ejected_hosts("users") == {users_b.port}
            # The 500s the broken instance gave (all of them retried, hence `retry.`):
            # the 5th consecutive one trips the detector. The ejection is carried out
            # on Envoy's main thread, so on a busy machine a few more requests may
            # reach the instance first (this loop asks the admin API, on that same
            # thread, after every request, which keeps the gap small).
            errors = envoy.stat("cluster.users.retry.upstream_rq_500")
            assert 5 <= errors <= 10

            # Ejected: the broken instance gets nothing more, its sibling everything.
            for _ in range(10):
                resp = session.get(gateway.url("/api/v2/users"), timeout=TIMEOUT)
                assert (resp.status_code, Seen(resp).instance) == (200, "users-a")
            assert envoy.stat("cluster.users.retry.upstream_rq_500") == errors

            # Now users-a breaks too. Ejecting it would leave the cluster empty: at
            # most 50% of the instances go, so users-a keeps the traffic (and clients
            # see its 500s) and the detector counts an ejection it did not make.
            steer(users_a, "fail", 500)
            for _ in range(4):
                resp = session.get(gateway.url("/api/v2/users"), timeout=TIMEOUT)
                assert (resp.status_code, Seen(resp).instance) == (500, "users-a")
            assert envoy.stat(detector + "ejections_overflow") >= 1
            assert envoy.stat(detector + "ejections_active") == 1
            assert envoy.ejected_hosts("users") == {users_b.port}

            # Both heal. users-b comes back when its 30 s are over, at the detector's
            # next sweep (every 10 s), never sooner.
            steer(users_a, "fail")
            steer(users_b, "fail")
            wait_for(lambda: not envoy.ejected_hosts("users"), 60, "users-b to be let back in",
                     interval=0.25)
            assert time.monotonic() - not_yet_ejected_at >= 30
            assert envoy.stat(detector + "ejections_active") == 0
            answered_by = Counter(Seen(session.get(gateway.url("/api/v2/users"), timeout=TIMEOUT)).instance
                                  for _ in range(20))
            assert set(answered_by) == {"users-a", "users-b"}, answered_by
    finally:
        gateway.stop()


def _orders_routes_wait_longer(config):
    """gateway.yaml with every route to an orders cluster timing out after 60 s, not
    10 s (`test_past_its_circuit_breakers_a_cluster_answers_503_at_once`)."""
    routes = [node["route"] for node in mappings(config)
              if isinstance(node.get("route"), dict) and "timeout" in node["route"]]
    to_orders = [route for route in routes if any(
        name.startswith("orders-") for name in [route.get("cluster", "")] + [
            c["name"] for c in route.get("weighted_clusters", {}).get("clusters", [])])]
    assert to_orders, "gateway.yaml has no route to an orders cluster with a timeout"
    for route in to_orders:
        route["timeout"] = "60s"


# Two thousand connections held open: on its own (conftest.py, `serial`).
@pytest.mark.serial
def test_past_its_circuit_breakers_a_cluster_answers_503_at_once(tmp_path, demo_certs, on_failure):
    """gateway.yaml's circuit breakers, as shipped: 1024 connections (one per request
    over HTTP/1.1, so also the 1024 requests), then 256 requests waiting for one, then
    every further request gets 503 at once (response flag UO), counted by Envoy.

    The test holds over a thousand requests upstream at once; the orders routes answer
    them 504 after 60 s instead of the shipped 10 s (`_orders_routes_wait_longer`): on
    a busy machine the first requests could time out, closing their connections,
    before the last had opened theirs."""
    orders = {instance: HoldingUpstream().start() for instance in ("orders-v1", "orders-v2")}
    gateway = DemoGateway(tmp_path, demo_certs,
                          upstreams={name: server.port for name, server in orders.items()},
                          edit=_orders_routes_wait_longer)
    on_failure(gateway.logs)
    stat = "cluster.orders-v1."
    breakers = stat + "circuit_breakers.default."
    clusters = load_shipped(GATEWAY_CONFIG, {})["static_resources"]["clusters"]
    limits = next(c for c in clusters if c["name"] == "orders-v1")["circuit_breakers"]["thresholds"][0]
    try:
        gateway.start()
        envoy = gateway.envoy
        # Rate limits count per user and route: enough users that none is reached; and
        # before authentication per address: enough addresses (127.0.x.y) for that.
        tokens = [gateway.bearer(sub=f"breaker-{n}") for n in range(8)]
        addresses = [f"127.0.{1 + n // 250}.{1 + n % 250}" for n in range(2000)]

        def flood(count):
            return InFlight(envoy.port(), [("/api/v2/orders", tokens[n % len(tokens)])
                                           for n in range(count)], timeout=90,
                            sources=addresses).start()

        # First the connections: batches of requests, held upstream, open connections
        # until orders-v1 has all 1024 (a flood would fill the queue faster than
        # connections open and overflow before there are 1024). Answered, they stay
        # open, idle in Envoy's pool. A round that has not got there after 8 batches
        # (a request answered early, at the route's timeout, closes its connection) is
        # let go, and the next one reuses the idle connections and opens the rest.
        warm_up = []

        def connected():
            """Every request of the round is on a connection upstream (or already
            answered), or orders-v1 has every connection it may have (the last batch
            may have to wait)."""
            if envoy.stat(stat + "upstream_cx_active") == limits["max_connections"]:
                return True
            upstream = sum(envoy.stat(f"cluster.{c}.upstream_rq_active") for c in orders)
            waiting = sum(envoy.stat(f"cluster.{c}.upstream_rq_pending_active") for c in orders)
            answered = sum(len(batch.answers) for batch in warm_up)
            return waiting == 0 and upstream + answered == 200 * len(warm_up)

        rounds = []  # per round: connections after each batch, answers before the release
        for _ in range(4):
            for server in orders.values():
                server.hold()
            warm_up, opened = [], []
            while (envoy.stat(stat + "upstream_cx_active") < limits["max_connections"]
                   and len(warm_up) < 8):
                warm_up.append(flood(200))
                wait_for(connected, 90, "the batch's connections to open", interval=0.05)
                opened.append(envoy.stat(stat + "upstream_cx_active"))
            early = Counter(a.status for batch in warm_up for a in list(batch.answers))
            rounds.append((opened, dict(early)))
            for server in orders.values():
                server.release()
            for batch in warm_up:
                batch.wait()
            wait_for(lambda: envoy.stat(stat + "upstream_rq_active") == 0, 30, "the pool to be idle")
            if envoy.stat(stat + "upstream_cx_active") == limits["max_connections"]:
                break
        assert envoy.stat(stat + "upstream_cx_active") == limits["max_connections"], (
            f"connections after each batch, and answers before the release, per round: {rounds}")

        # Then a flood, held again: 90% of orders requests go to orders-v1 (the canary
        # split), so 1650 requests bring it well past 1024 + 256.
        before = {name: envoy.stat(stat + name) for name in
                  ("upstream_rq_pending_overflow", "upstream_cx_overflow", "upstream_rq_retry")}
        for server in orders.values():
            server.hold()
        requests_sent = 1650
        answers = flood(requests_sent)

        def accounted():
            """Every request is answered, on a connection upstream or waiting for one."""
            held = sum(envoy.stat(f"cluster.{c}.upstream_rq_active")
                       + envoy.stat(f"cluster.{c}.upstream_rq_pending_active") for c in orders)
            return held + len(answers.answers) == requests_sent

        wait_for(accounted, 60, "every request to reach the orders clusters", interval=0.1)
        # Every threshold reached: breakers open, nothing left of any of them.
        assert envoy.stat(stat + "upstream_cx_active") == limits["max_connections"]
        for name in ("cx_open", "rq_pending_open", "rq_open"):
            assert envoy.stat(breakers + name) == 1, name
        for name in ("remaining_cx", "remaining_pending", "remaining_rq"):
            assert envoy.stat(breakers + name) == 0, name
        # The queued requests wanted connections of their own and were refused one.
        assert envoy.stat(stat + "upstream_cx_overflow") > before["upstream_cx_overflow"]
        # The overflowing requests are answered at once, while the rest still wait.
        overflow = envoy.stat(stat + "upstream_rq_pending_overflow") - before["upstream_rq_pending_overflow"]
        assert overflow > 0 and len(answers.answers) == overflow
        assert {a.status for a in answers.answers} == {503}
        assert b"overflow" in answers.answers[0].body
        for server in orders.values():
            server.release()
        statuses = Counter(a.status for a in answers.wait())
        assert statuses == {200: requests_sent - overflow, 503: overflow}, statuses
        # Overflows are not retried (that would only add load), and the access log says
        # why each one failed: UO, upstream overflow.
        assert envoy.stat(stat + "upstream_rq_retry") == before["upstream_rq_retry"]
        flags = wait_for(lambda: (lambda c: c if sum(c.values()) >= overflow else None)(
            Counter(e["response_flags"] for e in gateway.access_log() if e.get("status") == 503)),
            10, "the access log lines")
        assert flags == {"UO": overflow}, flags
        # The breakers close again once the requests are done.
        wait_for(lambda: envoy.stat(breakers + "remaining_rq") == limits["max_requests"], 10,
                 "the requests to finish")
        assert envoy.stat(breakers + "remaining_pending") == limits["max_pending_requests"]
        assert envoy.stat(breakers + "rq_open") == 0
    finally:
        gateway.stop()
        for server in orders.values():
            server.stop()


def test_a_renewed_certificate_is_served_without_a_restart(tmp_path, on_failure):
    """The TLS listener reads its certificate through SDS from files Envoy watches:
    `scripts/demo-certs.sh --renew` swaps a new set in, new connections get the new
    certificate at once, and a connection opened before goes on with the old one."""
    certs = make_demo_certs(tmp_path / "certs")
    gateway = DemoGateway(tmp_path, certs).start()
    on_failure(gateway.logs)
    port = gateway.envoy.port("tls")
    try:
        old = certificate_file(certs / "gateway.crt")
        trusting = ssl.create_default_context(cafile=str(certs / "edge-ca.crt"))
        assert served_certificate(port, trusting) == old
        kept = http.client.HTTPSConnection("127.0.0.1", port, context=trusting, timeout=TIMEOUT)
        kept.request("GET", "/api/v2/users/1", headers=gateway.bearer())
        first = kept.getresponse()
        assert first.status == 200 and first.read()
        assert kept.sock.getpeercert(binary_form=True) == old

        renew_demo_certs(certs)
        new = certificate_file(certs / "gateway.crt")
        assert new != old
        # edge-ca.crt now holds the new CA and the old one.
        trusting = ssl.create_default_context(cafile=str(certs / "edge-ca.crt"))
        wait_for(lambda: served_certificate(port, trusting) == new, 10, "the new certificate")
        for _ in range(3):
            kept.request("GET", "/api/v2/users/1", headers=gateway.bearer())
            resp = kept.getresponse()
            assert resp.status == 200
            assert json.loads(resp.read())["headers"]["x-forwarded-proto"] == ["https"]
        assert kept.sock.getpeercert(binary_form=True) == old
        kept.close()
        assert gateway.envoy.stat("listener.tls.server_ssl_socket_factory.ssl_context_update_by_sds") >= 1
        # One rename, one consistent pair: Envoy never saw a key without its certificate.
        assert gateway.envoy.stat("sds.gateway.key_rotation_failed") == 0
    finally:
        gateway.stop()


def test_a_wasm_filter_can_be_switched_off_for_one_route(start_envoy, echo):
    """The per-route alternative to a filter's own path rules (docs/gateway-and-mesh.md,
    "The filter chain"): Envoy's FilterConfig `disabled`, addressed by the filter's name."""
    headers = wasm_filter(wasm_path("headers"),
                          {"default": {"request": {"set": {"x-gateway": "wasmgate"}}}}, name="headers")
    headers["name"] = "wasmgate.headers"
    switched_off = route("/open", "upstream", name="open")
    switched_off["typed_per_filter_config"] = {"wasmgate.headers": {
        "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": True}}
    envoy = start_envoy(bootstrap(
        [http_listener("main", [headers], [switched_off, route("/", "upstream", name="default")])],
        [cluster("upstream", echo.host, echo.port)]))
    assert Seen(requests.get(envoy.url("/api"), timeout=TIMEOUT)).header("x-gateway") == "wasmgate"
    assert Seen(requests.get(envoy.url("/open"), timeout=TIMEOUT)).header("x-gateway") is None
