"""`make oci`: each .wasm packaged as an OCI image layout, checked against the OCI
image spec and the layout istio-agent reads (istio/istio pkg/wasm/imagefetcher.go:
the last layer, `application/vnd.oci.image.layer.v1.tar+gzip`, holds `plugin.wasm`).
Every digest is recomputed here from the bytes, independently of the writer."""

import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile

import pytest

from harness import ROOT
from harness.istio_checks import built_digests
from harness.paths import BUILD

MODULES = sorted(p.stem for p in (BUILD / "wasm").glob("*.wasm"))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob(layout, descriptor) -> bytes:
    """A blob, checked against its descriptor's digest and size."""
    algorithm, digest = descriptor["digest"].split(":")
    assert algorithm == "sha256"
    data = (layout / "blobs" / "sha256" / digest).read_bytes()
    assert sha256(data) == digest, f"blob {digest} does not hash to its name"
    assert len(data) == descriptor["size"], f"blob {digest} size differs from its descriptor"
    return data


@pytest.mark.parametrize("module", MODULES)
def test_oci_layout_holds_the_module_as_istio_reads_it(module):
    layout = BUILD / "oci" / module
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout / "index.json").read_text())
    assert index["schemaVersion"] == 2
    [descriptor] = index["manifests"]
    version = built_digests()["version"]
    assert descriptor["annotations"]["org.opencontainers.image.ref.name"] == version
    assert descriptor["mediaType"] == "application/vnd.oci.image.manifest.v1+json"

    manifest_bytes = blob(layout, descriptor)
    manifest = json.loads(manifest_bytes)
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == descriptor["mediaType"]
    config = json.loads(blob(layout, manifest["config"]))
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"

    # FROM scratch + plugin.wasm: exactly one layer, tar+gzip, holding only plugin.wasm.
    [layer] = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    tar_bytes = gzip.decompress(blob(layout, layer))
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        members = tar.getmembers()
        assert [(m.name, m.isfile()) for m in members] == [("plugin.wasm", True)]
        wasm = tar.extractfile(members[0]).read()
    assert wasm == (BUILD / "wasm" / f"{module}.wasm").read_bytes()
    assert config["rootfs"] == {"type": "layers", "diff_ids": [f"sha256:{sha256(tar_bytes)}"]}

    # What `make istio-pin` writes into the WasmPlugin: the manifest digest.
    assert built_digests()["modules"][module] == {"manifest": sha256(manifest_bytes),
                                                 "wasm": sha256(wasm)}


@pytest.mark.parametrize("module", MODULES)
def test_oci_tarball_is_the_layout(module):
    layout = BUILD / "oci" / module
    with tarfile.open(BUILD / "oci" / f"{module}.tar") as tar:
        packed = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    on_disk = {str(p.relative_to(layout)): p.read_bytes() for p in layout.rglob("*") if p.is_file()}
    assert packed == on_disk


def test_oci_images_are_reproducible(tmp_path):
    """The same .wasm gives the same manifest digest on every build and machine: the
    digest can be pinned in a WasmPlugin and checked against the next build."""
    wasm_files = [BUILD / "wasm" / f"{m}.wasm" for m in MODULES]
    version = built_digests()["version"]
    subprocess.run([sys.executable, ROOT / "scripts" / "oci-image.py", "--version", version,
                    "--out", tmp_path, *wasm_files], check=True, capture_output=True, timeout=120)
    assert json.loads((tmp_path / "digests.json").read_text()) == built_digests()
    for module in MODULES:
        assert (tmp_path / f"{module}.tar").read_bytes() == \
            (BUILD / "oci" / f"{module}.tar").read_bytes()


@pytest.mark.parametrize("module", MODULES)
def test_skopeo_reads_the_image_and_keeps_its_digest_when_copying(module, tmp_path):
    """An independent OCI implementation (skopeo, containers/image) reads the layout
    and the tarball with the pinned digest, and copying the image the way a push does
    keeps that digest: the WasmPlugin's sha256 still matches after publishing."""
    version = built_digests()["version"]
    digest = built_digests()["modules"][module]["manifest"]

    def raw_manifest(reference):
        return subprocess.run(["skopeo", "inspect", "--raw", reference], check=True,
                              capture_output=True, timeout=60).stdout

    layout = BUILD / "oci" / module
    assert sha256(raw_manifest(f"oci:{layout}:{version}")) == digest
    assert sha256(raw_manifest(f"oci-archive:{BUILD / 'oci' / module}.tar:{version}")) == digest
    copy = tmp_path / "copy"
    subprocess.run(["skopeo", "copy", "--preserve-digests", f"oci:{layout}:{version}",
                    f"oci:{copy}:{version}"], check=True, capture_output=True, timeout=60)
    assert sha256(raw_manifest(f"oci:{copy}:{version}")) == digest
