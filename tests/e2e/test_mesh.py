"""The east-west mesh (envoy-config/mesh/) in real Envoy: checkout-service and
order-service, each an echo app behind its own sidecar, talking mutual TLS with SPIFFE
identities from the demo mesh CA, order-service guarded by the RBAC form of its
AuthorizationPolicy. A third identity, reporting-service, is a test client holding its
mesh certificate."""

import datetime
import http.client
import json
import ssl

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from harness import Seen, wait_for
from harness.certs import spiffe_id
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


def test_only_checkout_may_post_orders_other_identities_may_do_the_rest(mesh, demo_certs):
    order_inbound = mesh.port("order-service", "inbound")
    reporting = tls_context(demo_certs / "mesh-ca.crt", mesh_cert(demo_certs, "reporting-service"))
    denied_stat = "http.inbound.rbac.denied"
    denied_before = mesh.sidecars["order-service"].stat(denied_stat)
    served_before = app_requests(mesh, "order-service")

    status, text, server_sans = call_inbound(order_inbound, reporting, "POST", "/api/orders",
                                             {"sku": "lamp"})
    assert status == 403, text
    # The caller checked who answered: order-service's own identity.
    assert ("URI", spiffe_id("order-service")) in server_sans
    # The same path spelt differently is the same path: a query string is not part of
    # it, dot segments and double slashes are normalised before the policy looks.
    for path in ("/api/orders?source=report", "/api/./orders", "//api//orders"):
        status, text, _ = call_inbound(order_inbound, reporting, "POST", path, {})
        assert status == 403, (path, text)
    assert mesh.sidecars["order-service"].stat(denied_stat) == denied_before + 4
    assert app_requests(mesh, "order-service") == served_before  # none of them got through

    # The policy denies that one thing: reading (or anything else) stays open to every
    # workload of the mesh, and the service sees who called.
    for method, path in (("GET", "/api/orders/17"), ("PUT", "/api/orders/17")):
        status, text, _ = call_inbound(order_inbound, reporting, method, path,
                                       {} if method == "PUT" else None)
        assert status == 200, (method, path, text)
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
                                  ports={15301: mesh.port("checkout-service", "inbound")})
    served_before = app_requests(mesh, "checkout-service")
    resp = requests.post(f"http://127.0.0.1:{miswired.port('outbound')}/api/orders", json={},
                         timeout=TIMEOUT)
    assert resp.status_code == 503
    assert miswired.stat("cluster.order-service.ssl.fail_verify_san") >= 1
    assert app_requests(mesh, "checkout-service") == served_before
