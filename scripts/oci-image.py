#!/usr/bin/env python3
"""Packages each filter's .wasm as an OCI image Istio's agent accepts (`make oci`).

One image per module, written as an OCI image layout (directory and tarball), so no
registry or container engine is needed to build it:

    build/oci/<module>/            oci-layout, index.json, blobs/sha256/...
    build/oci/<module>.tar         the same directory as a tarball
    build/oci/digests.json         {"version", "modules": {module: {"manifest", "wasm"}}}
                                   (hex sha256: what `make istio-pin` writes into istio/)

The image is the Wasm image specification's *compat* variant, the layout istio-agent
reads (istio/istio pkg/wasm/imagefetcher.go, extractOCIStandardImage): a `FROM
scratch` image whose single layer (`application/vnd.oci.image.layer.v1.tar+gzip`)
holds `plugin.wasm`. Everything that goes into a digest is fixed (file mode, owner,
mtime 0, gzip header), so the same .wasm always gives the same manifest digest: that
digest is what a WasmPlugin's `sha256` pins for an `oci://` url.

Publish with a tool that copies blobs as they are (the digest stays the same):
    oras cp --from-oci-layout build/oci/headers:0.1.0 REGISTRY/wasmgate/headers:0.1.0
    crane push build/oci/headers REGISTRY/wasmgate/headers:0.1.0
    skopeo copy --preserve-digests oci:build/oci/headers:0.1.0 docker://REGISTRY/wasmgate/headers:0.1.0

Standard library only: runs with the system python3.
"""

import argparse
import gzip
import hashlib
import io
import json
import shutil
import sys
import tarfile
from pathlib import Path

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
INDEX = "application/vnd.oci.image.index.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"


def canonical_json(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def layer_tar(wasm: bytes) -> bytes:
    """An uncompressed tar holding only `plugin.wasm`, with nothing that varies."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("plugin.wasm")
        info.size = len(wasm)
        info.mode = 0o644
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(wasm))
    return out.getvalue()


def gzipped(data: bytes) -> bytes:
    out = io.BytesIO()
    # mtime=0 and no file name keep the gzip header constant.
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9, mtime=0, filename="") as gz:
        gz.write(data)
    return out.getvalue()


def build_image(module: str, wasm: bytes, version: str, source: str) -> dict:
    """The blobs of one image, keyed by digest, plus the manifest's descriptor."""
    tar = layer_tar(wasm)
    layer = gzipped(tar)
    config = canonical_json({
        "architecture": "wasm",
        "os": "wasip1",
        "config": {"Labels": {"org.opencontainers.image.title": module,
                              "org.opencontainers.image.version": version}},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{sha256(tar)}"]},
        "history": [{"created_by": "COPY plugin.wasm / # wasmgate make oci",
                     "created": "1970-01-01T00:00:00Z"}],
        "created": "1970-01-01T00:00:00Z",
    })
    manifest = canonical_json({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": f"sha256:{sha256(config)}", "size": len(config)},
        "layers": [{"mediaType": LAYER, "digest": f"sha256:{sha256(layer)}", "size": len(layer),
                    "annotations": {"org.opencontainers.image.title": "plugin.wasm"}}],
        "annotations": {"org.opencontainers.image.title": module,
                        "org.opencontainers.image.version": version,
                        "org.opencontainers.image.source": source,
                        "module.wasm.image/variant": "compat"},
    })
    blobs = {sha256(b): b for b in (layer, config, manifest)}
    descriptor = {"mediaType": MANIFEST, "digest": f"sha256:{sha256(manifest)}",
                  "size": len(manifest), "annotations": {REF_NAME: version}}
    return {"blobs": blobs, "descriptor": descriptor}


def write_layout(directory: Path, image: dict):
    if directory.exists():
        shutil.rmtree(directory)
    (directory / "blobs" / "sha256").mkdir(parents=True)
    (directory / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
    (directory / "index.json").write_bytes(canonical_json({
        "schemaVersion": 2, "mediaType": INDEX, "manifests": [image["descriptor"]]}))
    for digest, blob in image["blobs"].items():
        (directory / "blobs" / "sha256" / digest).write_bytes(blob)


def write_tarball(directory: Path, tarball: Path):
    with tarfile.open(tarball, "w", format=tarfile.USTAR_FORMAT) as tar:
        for path in sorted(directory.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(directory)))
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if path.is_file():
                with open(path, "rb") as blob:
                    tar.addfile(info, blob)
            else:
                tar.addfile(info)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wasm", nargs="+", type=Path, help="build/wasm/<module>.wasm files")
    parser.add_argument("--out", type=Path, default=Path("build/oci"))
    parser.add_argument("--version", required=True, help="the image tag, e.g. 0.1.0")
    parser.add_argument("--source", default="https://github.com/wasmgate/wasmgate")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    digests = {}
    for wasm_file in args.wasm:
        module = wasm_file.stem
        wasm = wasm_file.read_bytes()
        image = build_image(module, wasm, args.version, args.source)
        write_layout(args.out / module, image)
        write_tarball(args.out / module, args.out / f"{module}.tar")
        manifest_digest = image["descriptor"]["digest"].removeprefix("sha256:")
        digests[module] = {"manifest": manifest_digest, "wasm": sha256(wasm)}
        print(f"  {args.out / module}:{args.version}  sha256:{manifest_digest}")
    summary = {"version": args.version, "modules": digests}
    (args.out / "digests.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
