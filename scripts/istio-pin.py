#!/usr/bin/env python3
"""Pins the WasmPlugins under istio/ to the modules just built (`make istio-pin`).

For each istio/wasmplugins/<file>.yaml whose url is `oci://<registry>/<module>:<tag>`:
- the tag becomes the workspace version and `sha256` the image's manifest digest
  (build/oci/digests.json, written by `make oci`);
- istio/overlays/https/<file>.yaml, the overlay's patch for serving the .wasm over
  https, gets the same version in its url and the .wasm's own sha256 (it is created
  from a template when missing, and added to that overlay's kustomization.yaml).

Only those lines change; comments and layout stay. `make test` fails while a pin is
stale (test_istio_manifests.py), so run this after any change that alters a .wasm and
commit the result.
"""

import argparse
import json
import re
import sys
from pathlib import Path

OCI_URL = re.compile(r"^(?P<lead>[ \t]*url:[ \t]*oci://(?P<repo>\S+)/(?P<module>[^/:@\s]+)):(?P<tag>\S+)[ \t]*$", re.M)
HTTPS_URL = re.compile(r"^(?P<lead>[ \t]*url:[ \t]*https?://\S+/)(?P<tag>[^/\s]+)(?P<file>/[^/\s]+\.wasm)[ \t]*$", re.M)
SHA256 = re.compile(r"^(?P<lead>[ \t]*sha256:[ \t]*)\S*[ \t]*$", re.M)

METADATA = re.compile(r"^metadata:\n(?:[ \t]+.*\n)*?[ \t]+name:[ \t]*(?P<name>\S+)[ \t]*\n"
                      r"(?:[ \t]+.*\n)*?[ \t]+namespace:[ \t]*(?P<namespace>\S+)", re.M)
HTTPS_OVERLAY = Path("overlays") / "https"
HTTPS_TEMPLATE = """\
# Serve {module}.wasm over https instead of an OCI registry: a patch (./kustomization.yaml)
# on ../../wasmplugins/{file}; sha256 is then the .wasm file's own sha256.
# `make istio-pin` rewrites url and sha256 from the build; `make test` fails while stale.
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata:
  name: {name}
  namespace: {namespace}
spec:
  url: https://artifacts.example.com/wasmgate/{version}/{module}.wasm
  sha256: {sha}
"""


def pin(text: str, pattern: re.Pattern, replacement) -> str:
    updated, count = pattern.subn(replacement, text, count=1)
    if count != 1:
        raise ValueError(f"no line matches {pattern.pattern}")
    return updated


def add_patch(kustomization: Path, patch: str) -> int:
    """Appends `- path: <patch>` to the kustomization's `patches:` list, its last key,
    unless it is listed already. Returns the number of files changed (0 or 1)."""
    text = kustomization.read_text()
    if re.search(rf"^- path:[ \t]*{re.escape(patch)}[ \t]*$", text, re.M):
        return 0
    if not re.search(r"^patches:[ \t]*\n(?![\s\S]*^[A-Za-z])", text, re.M):
        raise ValueError(f"{kustomization}: `patches:` must be the last key to add {patch}")
    kustomization.write_text(text.rstrip("\n") + f"\n- path: {patch}\n")
    print(f"  listed {patch} in {kustomization}")
    return 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digests", type=Path, default=Path("build/oci/digests.json"))
    parser.add_argument("--istio", type=Path, default=Path("istio"))
    args = parser.parse_args(argv)

    built = json.loads(args.digests.read_text())
    version, modules = built["version"], built["modules"]
    changed = 0
    for manifest in sorted((args.istio / "wasmplugins").glob("*.yaml")):
        if manifest.name == "kustomization.yaml":
            continue
        text = manifest.read_text()
        url = OCI_URL.search(text)
        if url is None:
            print(f"  {manifest}: no oci:// url, left alone")
            continue
        module = url["module"]
        if module not in modules:
            print(f"error: {manifest} ships {module}, but build/wasm/{module}.wasm was not built",
                  file=sys.stderr)
            return 1
        digests = modules[module]
        pinned = pin(text, OCI_URL, rf"\g<lead>:{version}")
        pinned = pin(pinned, SHA256, rf"\g<lead>{digests['manifest']}")

        patch = args.istio / HTTPS_OVERLAY / manifest.name
        if patch.is_file():
            patch_text = pin(patch.read_text(), HTTPS_URL, rf"\g<lead>{version}\g<file>")
            patch_text = pin(patch_text, SHA256, rf"\g<lead>{digests['wasm']}")
        else:
            patch.parent.mkdir(parents=True, exist_ok=True)
            meta = METADATA.search(text)
            if meta is None:
                print(f"error: {manifest} has no metadata name and namespace", file=sys.stderr)
                return 1
            patch_text = HTTPS_TEMPLATE.format(module=module, file=manifest.name,
                                               name=meta["name"], namespace=meta["namespace"],
                                               version=version, sha=digests["wasm"])
            changed += add_patch(args.istio / HTTPS_OVERLAY / "kustomization.yaml", patch.name)
        for path, new in ((manifest, pinned), (patch, patch_text)):
            if not path.is_file() or path.read_text() != new:
                path.write_text(new)
                changed += 1
                print(f"  pinned {path}")
    print(f"istio-pin: {changed} file(s) updated" if changed else "istio-pin: all pins current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
