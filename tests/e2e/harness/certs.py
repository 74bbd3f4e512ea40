"""Demo certificates for tests: the same script `make run` uses (scripts/demo-certs.sh),
written to a directory of the test's own."""

import subprocess
from pathlib import Path

from .paths import ROOT

TRUST_DOMAIN = "cluster.local"


def make_demo_certs(directory) -> Path:
    """Runs scripts/demo-certs.sh into `directory` and returns it. See the script for
    the files: edge-ca.crt, gateway.{crt,key}, mesh-ca.crt, mesh/<service>.{crt,key}."""
    directory = Path(directory)
    subprocess.run([str(ROOT / "scripts" / "demo-certs.sh"), str(directory)], check=True,
                   capture_output=True, timeout=60)
    return directory


def spiffe_id(service: str, namespace: str = "default") -> str:
    """The identity a mesh service's certificate carries in its URI SAN."""
    return f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{service}"
