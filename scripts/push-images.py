#!/usr/bin/env python3
"""Pushes the filters' OCI images (`make oci`, build/oci/) to a registry: `make push`.

Each build/oci/<module> layout goes to `<registry>/<module>:<version>` with skopeo, its
manifest digest preserved (the digest istio/wasmplugins/ pins as `sha256`). After each
push the manifest is read back from the registry and its digest compared with the one
built: a registry that rewrote the manifest (or a stale push) is an error, not a
warning, because istio-agent would refuse the module for that digest.

  make push REGISTRY=registry.example.com/wasmgate
  make push REGISTRY=127.0.0.1:5000/wasmgate PUSH_TLS_VERIFY=false   # plain-http registry

Credentials are skopeo's own (`skopeo login`, or REGISTRY_AUTH_FILE pointing at an auth
file); nothing here takes a password.
"""

import argparse
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

# <host>[:port]/<path>, as skopeo's docker:// transport takes it (no scheme, no tag).
REGISTRY = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*$")


def fail(message: str):
    print(f"push: {message}", file=sys.stderr)
    sys.exit(1)


def skopeo(*args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["skopeo", *args], capture_output=True, timeout=300)
    except FileNotFoundError:
        fail("skopeo is not installed (make setup installs it)")
    except subprocess.TimeoutExpired:
        fail(f"skopeo {args[0]} took more than 300 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", required=True, help="where to push: HOST[:PORT]/PATH (no scheme, no tag)")
    parser.add_argument("--oci", type=Path, default=Path("build/oci"), help="the layouts `make oci` wrote")
    parser.add_argument("--tls-verify", choices=["true", "false"], default="true",
                        help="false for a plain-http or self-signed registry")
    parser.add_argument("modules", nargs="*", help="modules to push (default: every one built)")
    args = parser.parse_args()

    registry = args.registry.rstrip("/")
    if not REGISTRY.match(registry):
        fail(f"REGISTRY={args.registry!r} is not HOST[:PORT]/PATH (for example registry.example.com/wasmgate)")
    digests_file = args.oci / "digests.json"
    if not digests_file.is_file():
        fail(f"{digests_file} is missing: run `make oci` first")
    built = json.loads(digests_file.read_text())
    version, modules = built["version"], built["modules"]
    wanted = args.modules or sorted(modules)
    unknown = [m for m in wanted if m not in modules]
    if unknown:
        fail(f"no image built for {', '.join(unknown)} (built: {', '.join(sorted(modules))})")

    tls = f"--dest-tls-verify={args.tls_verify}"
    for module in wanted:
        layout = args.oci / module
        target = f"docker://{registry}/{module}:{version}"
        copied = skopeo("copy", "--quiet", "--preserve-digests", tls, f"oci:{layout}:{version}", target)
        if copied.returncode != 0:
            fail(f"pushing {module} to {target} failed: {copied.stderr.decode(errors='replace').strip()}")
        inspected = skopeo("inspect", "--raw", f"--tls-verify={args.tls_verify}", target)
        if inspected.returncode != 0:
            fail(f"reading {target} back failed: {inspected.stderr.decode(errors='replace').strip()}")
        digest = hashlib.sha256(inspected.stdout).hexdigest()
        if digest != modules[module]["manifest"]:
            fail(f"{target} has manifest sha256:{digest}, built sha256:{modules[module]['manifest']}: "
                 "the registry rewrote it; istio/wasmplugins/ pins the built digest")
        print(f"pushed {registry}/{module}:{version}@sha256:{digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
