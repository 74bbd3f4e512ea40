"""Demo certificates for tests: the same script `make run` uses (scripts/demo-certs.sh),
written to a directory of the test's own."""

import socket
import ssl
import subprocess
from pathlib import Path

from .paths import ROOT

TRUST_DOMAIN = "cluster.local"


def make_demo_certs(directory) -> Path:
    """Runs scripts/demo-certs.sh into `directory` and returns it. See the script for
    the files: edge-ca.crt, gateway.{crt,key}, mesh-ca.crt, mesh/<service>.{crt,key},
    and the SDS files sds/*.yaml Envoy reads them through."""
    directory = Path(directory)
    subprocess.run([str(ROOT / "scripts" / "demo-certs.sh"), str(directory)], check=True,
                   capture_output=True, timeout=60)
    return directory


def spiffe_id(service: str, namespace: str = "default") -> str:
    """The identity a mesh service's certificate carries in its URI SAN."""
    return f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{service}"


def renew_demo_certs(directory) -> Path:
    """`scripts/demo-certs.sh --renew`: a new set swapped in while Envoys run on it."""
    directory = Path(directory)
    subprocess.run([str(ROOT / "scripts" / "demo-certs.sh"), "--renew", str(directory)],
                   check=True, capture_output=True, timeout=60)
    return directory


def certificate_file(path) -> bytes:
    """The (first) certificate of a PEM file, DER-encoded as TLS peers see it."""
    return ssl.PEM_cert_to_DER_cert(Path(path).read_text().split("-----END CERTIFICATE-----")[0]
                                    + "-----END CERTIFICATE-----\n")


def served_certificate(port: int, context: ssl.SSLContext, timeout: float = 10) -> bytes:
    """The certificate a TLS server on 127.0.0.1:`port` presents to a new connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return tls.getpeercert(binary_form=True)
