"""The east-west mesh (envoy-config/mesh/) in real Envoy: checkout-service and
order-service (two replicas), each an echo app behind its own sidecar, talking mutual
TLS with SPIFFE identities from the demo mesh CA (read through SDS from files),
order-service guarded by the RBAC form of its AuthorizationPolicy, checkout's sidecar
ejecting a failing replica as the DestinationRule says. A third identity,
reporting-service, is a test client holding its mesh certificate."""

import datetime
import http.client
import json
import ssl
import time

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from harness import Seen, wait_for
from harness.certs import (certificate_file, make_demo_certs, renew_demo_certs,
                           served_certificate, spiffe_id)
from harness.http2 import http2_request
from harness.mesh import Mesh

TIMEOUT = 10


def outbound(mesh, path):
    """A URL on checkout-service's sidecar, as the checkout app calls other services."""
    return f"http://127.0.0.1:{mesh.port('checkout-service', 'outbound')}{path}"


def tls_context(ca_file, cert=None):
    """Trusts `ca_file`; presents `cert` ((crt, key) files) if given. Mesh
    certificates name a SPIFFE id, not a host, so the name check is ours to do."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.check_hostname = False
    if cert:
        context.load_cert_chain(*[str(f) for f in cert])
    return context


def call_inbound(port, context, method, path, body=None):
    """One request straight to a sidecar's mTLS port: (status, json, server SANs)."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=TIMEOUT)
    try:
        conn.connect()
        server_sans = conn.sock.getpeercert()["subjectAltName"]
        headers = {"content-type": "application/json"} if body is not None else {}
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(), server_sans
    finally:
        conn.close()


def mesh_cert(certs, service):
    return certs / "mesh" / f"{service}.crt", certs / "mesh" / f"{service}.key"


def app_requests(mesh, service):
    return requests.get(mesh.instances[service].url("/__echo/stats"), timeout=TIMEOUT).json()["requests"]


def test_checkout_creates_an_order_and_order_service_sees_its_spiffe_id(mesh):
    resp = requests.post(outbound(mesh, "/api/orders"), json={"sku": "lamp", "qty": 2},
                         headers={"x-caller-spiffe-id": spiffe_id("admin")}, timeout=TIMEOUT)
    assert resp.status_code == 200
    seen = Seen(resp)
    assert seen.service == "order-service"
    assert (seen.method, seen.path) == ("POST", "/api/orders")
    assert json.loads(seen.body) == {"sku": "lamp", "qty": 2}
    # The identity comes from checkout's certificate; the one its app claimed is gone.
    assert seen.header("x-caller-spiffe-id") == spiffe_id("checkout-service")


# The same request spelt as a client, a proxy or an app framework may spell it: each
# is "write to the orders" to some app, so each must be refused to any identity but
# checkout-service, with HTTP/1.1 and HTTP/2 alike.
WRITE_SPELLINGS = [
    ("POST", "/api/orders"),
    ("POST", "/api/orders/"),              # trailing slash
    ("POST", "/api/orders;jsessionid=x"),  # path parameter (servlet containers drop it)
    ("POST", "/api;x=1/orders"),           # ... on any segment
    ("POST", "//api//orders"),             # double slashes
    ("POST", "/api/./orders"),             # dot segment
    ("POST", "/api%2Forders"),             # escaped slash
    ("POST", "/api%2forders/"),
    ("POST", "/API/orders"),               # case-insensitive routers
    ("POST", "/api/orders?source=report"),
    ("PUT", "/api/orders/17"),
    ("PATCH", "/api/orders/17"),
    ("DELETE", "/api/orders/17"),
]
READS = [("GET", "/api/orders/17"), ("HEAD", "/api/orders"), ("OPTIONS", "/api/orders")]


def mesh_tls(certs, service):
    """A client TLS context holding `service`'s mesh identity."""
    return tls_context(certs / "mesh-ca.crt", mesh_cert(certs, service))


def send(protocol, port, context, method, path, headers=None, body=None):
    """(status or "reset", text) of one request to a sidecar's mTLS port."""
    if protocol == "h2":
        answer = http2_request(port, method, path, headers, (body or "").encode(), context=context)
        return ("reset" if answer.status is None else answer.status), answer.body.decode()
    context.set_alpn_protocols(["http/1.1"])  # http2_request asks for h2 on the same context
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=TIMEOUT)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("host", "order-service")
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.putheader("content-length", str(len(body or "")))
        conn.endheaders((body or "").encode())
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


@pytest.mark.parametrize("protocol", ["http/1.1", "h2"])
def test_only_checkout_may_change_orders_however_the_request_is_spelt(mesh, demo_certs, protocol):
    order_inbound = mesh.port("order-service", "inbound")
    reporting = mesh_tls(demo_certs, "reporting-service")
    sidecar = mesh.sidecars["order-service"]
    denied_stat = "http.inbound.rbac.denied"
    denied_before = sidecar.stat(denied_stat)
    served_before = app_requests(mesh, "order-service")

    status, text, server_sans = call_inbound(order_inbound, reporting, "POST", "/api/orders",
                                             {"sku": "lamp"})
    assert status == 403, text
    # The caller checked who answered: order-service's own identity.
    assert ("URI", spiffe_id("order-service")) in server_sans
    for method, path in WRITE_SPELLINGS:
        assert send(protocol, order_inbound, reporting, method, path, body="{}")[0] == 403, \
            (method, path)
    denied = 1 + len(WRITE_SPELLINGS)
    if protocol == "h2":
        # HTTP/2 carries the method as written: `post` is not a read either.
        assert send(protocol, order_inbound, reporting, "post", "/api/orders", body="{}")[0] == 403
        denied += 1
    else:
        # HTTP/1.1 with a lower-case method does not get past Envoy's parser.
        assert send(protocol, order_inbound, reporting, "post", "/api/orders", body="{}")[0] == 400
    assert sidecar.stat(denied_stat) == denied_before + denied
    assert app_requests(mesh, "order-service") == served_before  # none of them got through

    # A read that asks the app to treat it as a write is not a read.
    for header in ("x-http-method-override", "x-http-method", "x-method-override"):
        assert send(protocol, order_inbound, reporting, "GET", "/api/orders", {header: "POST"})[0] == 403
    denied += 3
    assert sidecar.stat(denied_stat) == denied_before + denied

    # Reading stays open to every workload of the mesh, and the service sees who called.
    for method, path in READS:
        status, text = send(protocol, order_inbound, reporting, method, path)
        assert status == 200, (method, path, text)
        if method == "GET":
            assert json.loads(text)["headers"]["x-caller-spiffe-id"] == [spiffe_id("reporting-service")]
    assert app_requests(mesh, "order-service") == served_before + len(READS)


def test_checkout_may_change_orders_and_the_app_sees_the_normalised_path(mesh):
    for method, path, seen_path in (("PUT", "/api/orders/17", "/api/orders/17"),
                                    ("DELETE", "/api/orders/17", "/api/orders/17"),
                                    ("POST", "/api//orders", "/api/orders"),
                                    ("POST", "/api/orders%2F18", "/api/orders/18")):
        resp = requests.request(method, outbound(mesh, path), json={}, timeout=TIMEOUT)
        assert resp.status_code == 200, (method, path, resp.text)
        seen = Seen(resp)
        assert (seen.method, seen.path) == (method, seen_path)
        assert seen.header("x-caller-spiffe-id") == spiffe_id("checkout-service")


def test_headers_with_underscores_are_refused_by_every_sidecar(mesh, demo_certs):
    """x_caller_spiffe_id would pass the header filter (it strips x-caller-spiffe-id)
    and reach the app, where CGI-style stacks read it as X-Caller-Spiffe-Id."""
    spoofed = {"x_caller_spiffe_id": spiffe_id("checkout-service")}
    reporting = mesh_tls(demo_certs, "reporting-service")
    served_before = {service: app_requests(mesh, service) for service in ("order-service", "checkout-service")}
    for service in ("order-service", "checkout-service"):
        port = mesh.port(service, "inbound")
        assert send("http/1.1", port, reporting, "GET", "/api/orders/17", spoofed)[0] == 400
        # HTTP/2: the stream is reset, no answer at all.
        assert send("h2", port, reporting, "GET", "/api/orders/17", spoofed)[0] == "reset"
    # The app's own outbound calls too: the sidecar does not carry them on.
    resp = requests.get(outbound(mesh, "/api/orders/17"), headers=spoofed, timeout=TIMEOUT)
    assert resp.status_code == 400
    assert {service: app_requests(mesh, service) for service in served_before} == served_before
    # The same names with dashes are the verified identity's, as always.
    status, text = send("h2", mesh.port("order-service", "inbound"), reporting, "GET",
                        "/api/orders/17", {"x-caller-spiffe-id": spiffe_id("checkout-service")})
    assert status == 200
    assert json.loads(text)["headers"]["x-caller-spiffe-id"] == [spiffe_id("reporting-service")]


def test_a_service_without_a_policy_takes_any_mesh_identity(mesh, demo_certs):
    reporting = tls_context(demo_certs / "mesh-ca.crt", mesh_cert(demo_certs, "reporting-service"))
    status, text, server_sans = call_inbound(mesh.port("checkout-service", "inbound"), reporting,
                                             "POST", "/api/carts", {})
    assert status == 200, text
    assert ("URI", spiffe_id("checkout-service")) in server_sans
    assert json.loads(text)["headers"]["x-caller-spiffe-id"] == [spiffe_id("reporting-service")]


def handshake_refused(port, context) -> bool:
    """True when the server ends the connection without any HTTP answer. With TLS 1.3
    the client finishes its side first and learns of the refusal on the first read."""
    try:
        status, text, _ = call_inbound(port, context, "GET", "/api/orders")
    except (ssl.SSLError, ConnectionError, http.client.HTTPException):
        return True
    raise AssertionError(f"the sidecar answered {status}: {text[:200]}")


def test_a_client_without_a_certificate_cannot_connect(mesh, demo_certs):
    port = mesh.port("order-service", "inbound")
    sidecar = mesh.sidecars["order-service"]
    stat = "listener.inbound.ssl.fail_verify_no_cert"
    before = sidecar.stat(stat)
    served_before = app_requests(mesh, "order-service")
    assert handshake_refused(port, tls_context(demo_certs / "mesh-ca.crt"))
    # Counted by the worker once the handshake is over; the client may learn first.
    wait_for(lambda: sidecar.stat(stat) == before + 1, 10, stat)
    # Plain HTTP does not get an answer either.
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/api/orders", timeout=TIMEOUT)
    assert app_requests(mesh, "order-service") == served_before


def self_signed_spiffe_cert(directory, service):
    """A certificate that claims `service`'s SPIFFE id but was not issued by the mesh CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(spiffe_id(service))]), critical=False)
            .sign(key, hashes.SHA256()))
    crt, pem = directory / "forged.crt", directory / "forged.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return crt, pem


def test_a_certificate_from_another_ca_cannot_connect(mesh, demo_certs, tmp_path):
    port = mesh.port("order-service", "inbound")
    sidecar = mesh.sidecars["order-service"]
    stat = "listener.inbound.ssl.fail_verify_error"
    before = sidecar.stat(stat)
    forged = tls_context(demo_certs / "mesh-ca.crt", self_signed_spiffe_cert(tmp_path, "checkout-service"))
    assert handshake_refused(port, forged)
    # Counted by the worker once the handshake is over; the client may learn first.
    wait_for(lambda: sidecar.stat(stat) == before + 1, 10, stat)


def test_a_caller_refuses_a_peer_that_is_not_the_service_it_meant(mesh):
    # A checkout sidecar whose order-service endpoint is really checkout's own inbound
    # port: a valid mesh certificate, but the wrong identity.
    miswired = mesh.start_sidecar("checkout-service", name="miswired-checkout",
                                  ports={15301: mesh.port("checkout-service", "inbound"),
                                         15311: mesh.port("checkout-service", "inbound")})
    served_before = app_requests(mesh, "checkout-service")
    resp = requests.post(f"http://127.0.0.1:{miswired.port('outbound')}/api/orders", json={},
                         timeout=TIMEOUT)
    assert resp.status_code == 503
    assert miswired.stat("cluster.order-service.ssl.fail_verify_san") >= 1
    assert app_requests(mesh, "checkout-service") == served_before


def fail(instance, status=None):
    """Makes an echo app answer `status` to everything (None: heals it)."""
    resp = requests.request("PUT" if status else "DELETE", instance.url("/__echo/fail"),
                            data=str(status or ""), timeout=TIMEOUT)
    assert resp.status_code == 200


def test_a_failing_replica_is_ejected_for_30s_and_never_both(tmp_path, demo_certs, on_failure):
    """checkout-service's sidecar ejects an order-service replica as the DestinationRule
    says: 5 consecutive 5xx, at most 50% of the replicas, 30 s, swept every 10 s.
    Waits out the ejection: about 40 s."""
    mesh = Mesh(tmp_path, demo_certs).start()
    on_failure(mesh.logs)
    sidecar = mesh.sidecars["checkout-service"]
    detector = "cluster.order-service.outlier_detection."
    first, second = mesh.instances["order-service"], mesh.instances["order-service-2"]
    second_port = mesh.port("order-service-2", "inbound")
    try:
        with requests.Session() as session:
            def order():
                resp = session.get(outbound(mesh, "/api/orders/7"), timeout=TIMEOUT)
                return resp.status_code, Seen(resp).instance

            # Both replicas take traffic.
            assert {order() for _ in range(4)} == {(200, "order-service"), (200, "order-service-2")}
            # The second replica breaks. Round robin keeps sending it every other
            # request (the sidecar does not retry): the 5th 500 in a row ejects it.
            fail(second, 500)
            not_yet_ejected_at = time.monotonic()
            failures = 0
            for _ in range(20):
                status, instance = order()
                failures += status == 500
                polled_at = time.monotonic()
                if sidecar.stat(detector + "ejections_enforced_consecutive_5xx"):
                    break
                not_yet_ejected_at = polled_at
            assert sidecar.stat(detector + "ejections_enforced_consecutive_5xx") == 1
            assert sidecar.ejected_hosts("order-service") == {second_port}
            assert 5 <= failures <= 8  # a few more while the main thread ejects it
            assert {order() for _ in range(6)} == {(200, "order-service")}

            # The first replica breaks as well: ejecting it would leave none, so it
            # stays (its 500s reach the caller) and the detector counts the ejection
            # it did not make.
            fail(first, 500)
            assert {order() for _ in range(6)} == {(500, "order-service")}
            assert sidecar.stat(detector + "ejections_overflow") >= 1
            assert sidecar.ejected_hosts("order-service") == {second_port}

            # Both heal; the second replica is let back in when its 30 s are over (at
            # the next sweep of the 10 s interval), not before.
            fail(first)
            fail(second)
            wait_for(lambda: not sidecar.ejected_hosts("order-service"), 60,
                     "the second replica to be let back in", interval=0.25)
            assert time.monotonic() - not_yet_ejected_at >= 30
            assert {order() for _ in range(4)} == {(200, "order-service"), (200, "order-service-2")}
    finally:
        mesh.stop()


def test_renewed_identities_are_used_without_a_restart_and_open_connections_go_on(
        tmp_path, on_failure):
    """Every sidecar reads its identity and the mesh CAs through SDS from files it
    watches: `scripts/demo-certs.sh --renew` swaps a new set in (new CA, new
    certificates; the CA file keeps the old CA beside the new one)."""
    certs = make_demo_certs(tmp_path / "certs")
    mesh = Mesh(tmp_path, certs).start()
    on_failure(mesh.logs)
    checkout = mesh.sidecars["checkout-service"]
    inbound = mesh.port("order-service", "inbound")
    old_reporting = [path.read_bytes() for path in mesh_cert(certs, "reporting-service")]
    try:
        old = certificate_file(certs / "mesh" / "order-service.crt")
        assert served_certificate(inbound, mesh_tls(certs, "reporting-service")) == old
        # checkout's sidecar holds HTTP/2 connections to the order-service replicas (one
        # per replica and worker that has needed one).
        for _ in range(4):
            assert requests.get(outbound(mesh, "/api/orders/1"), timeout=TIMEOUT).status_code == 200
        opened = checkout.stat("cluster.order-service.upstream_cx_total")
        assert opened >= 2

        renew_demo_certs(certs)
        new = certificate_file(certs / "mesh" / "order-service.crt")
        assert new != old
        wait_for(lambda: served_certificate(inbound, mesh_tls(certs, "reporting-service")) == new,
                 10, "order-service's new certificate")
        # The connections opened before carry on: none was closed.
        for _ in range(4):
            resp = requests.get(outbound(mesh, "/api/orders/1"), timeout=TIMEOUT)
            assert resp.status_code == 200
            assert Seen(resp).header("x-caller-spiffe-id") == spiffe_id("checkout-service")
        assert checkout.stat("cluster.order-service.upstream_cx_destroy") == 0
        assert checkout.stat("cluster.order-service.upstream_cx_active") >= opened
        # A workload still on its old certificate is trusted (the CA file holds both
        # CAs) until it has loaded its new one; the new one is trusted too.
        old_files = tmp_path / "old-reporting"
        old_files.mkdir()
        (old_files / "crt").write_bytes(old_reporting[0])
        (old_files / "key").write_bytes(old_reporting[1])
        for cert in ((old_files / "crt", old_files / "key"), mesh_cert(certs, "reporting-service")):
            status, text, _ = call_inbound(inbound, tls_context(certs / "mesh-ca.crt", cert),
                                           "GET", "/api/orders/1")
            assert status == 200, text
        for replica in ("order-service", "order-service-2", "checkout-service"):
            sidecar = mesh.sidecars[replica]
            assert sidecar.stat("listener.inbound.server_ssl_socket_factory.ssl_context_update_by_sds") >= 1
            assert sidecar.stat("sds.default.key_rotation_failed") == 0
        assert checkout.stat("cluster.order-service.client_ssl_socket_factory.ssl_context_update_by_sds") >= 1
    finally:
        mesh.stop()
