"""`make push`: the OCI images go to a real registry (Debian's docker-registry, the CNCF
distribution server, on loopback) and come back by the digest istio/wasmplugins/ pins,
holding the very .wasm that was built."""

import gzip
import io
import json
import subprocess
import tarfile
import urllib.request

import pytest
import yaml

from harness import ROOT
from harness.istio_checks import built_digests, shipped_manifests, wasm_plugins
from harness.paths import BUILD
from harness.ports import free_ports
from harness.process import spawn, stop_process
from harness.wait import wait_for

MODULES = sorted(built_digests()["modules"])


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A plain-http registry on 127.0.0.1 with its storage in a temporary directory."""
    work = tmp_path_factory.mktemp("registry")
    [port] = free_ports(1)
    config = work / "config.yml"
    config.write_text(yaml.safe_dump({
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(work / "data")}},
        "http": {"addr": f"127.0.0.1:{port}"},
    }))
    proc = spawn(["docker-registry", "serve", config], work / "registry.log")

    def answers():
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited:\n{(work / 'registry.log').read_text()}")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2) as response:
            return response.status == 200

    try:
        wait_for(answers, 20, "the registry to answer /v2/")
        yield f"127.0.0.1:{port}"
    finally:
        stop_process(proc)


def make_push(*args):
    # `-o oci`: the images were built before the tests (make test builds first); rebuilding
    # them here would only re-run cargo while other tests use the same files.
    return subprocess.run(["make", "-s", "-o", "oci", "push", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def wasm_in_layout(layout) -> bytes:
    """plugin.wasm out of a single-image OCI layout (skopeo's, not ours)."""
    index = json.loads((layout / "index.json").read_text())
    [descriptor] = index["manifests"]
    blob = lambda d: (layout / "blobs" / "sha256" / d["digest"].split(":")[1]).read_bytes()  # noqa: E731
    manifest = json.loads(blob(descriptor))
    [layer] = manifest["layers"]
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob(layer)))) as tar:
        return tar.extractfile("plugin.wasm").read()


def test_make_push_sends_every_image_and_istio_pulls_it_back_by_the_pinned_digest(registry, tmp_path):
    result = make_push(f"REGISTRY={registry}/wasmgate", "PUSH_TLS_VERIFY=false")
    assert result.returncode == 0, result.stdout + result.stderr
    built = built_digests()
    version = built["version"]
    for module in MODULES:
        digest = built["modules"][module]["manifest"]
        assert f"pushed {registry}/wasmgate/{module}:{version}@sha256:{digest}" in result.stdout

    # What a WasmPlugin names: the shipped manifest's url with our registry, and its pin.
    for manifest in wasm_plugins(shipped_manifests()):
        spec = manifest.doc["spec"]
        url, pinned = spec["url"], spec["sha256"]
        assert url.startswith("oci://registry.example.com/wasmgate/"), url
        module = url.rsplit("/", 1)[1].split(":")[0]
        pulled = tmp_path / module
        subprocess.run(
            ["skopeo", "copy", "--quiet", "--src-tls-verify=false",
             f"docker://{registry}/wasmgate/{module}@sha256:{pinned}", f"oci:{pulled}:pulled"],
            check=True, capture_output=True, timeout=120,
        )
        assert wasm_in_layout(pulled) == (BUILD / "wasm" / f"{module}.wasm").read_bytes(), module


def test_make_push_without_a_registry_or_to_a_dead_one_fails_and_says_why():
    missing = make_push()
    assert missing.returncode != 0
    assert "set REGISTRY=" in missing.stderr

    malformed = make_push("REGISTRY=https://example.com/wasmgate")
    assert malformed.returncode != 0
    assert "is not HOST[:PORT]/PATH" in malformed.stderr

    [port] = free_ports(1)
    dead = make_push(f"REGISTRY=127.0.0.1:{port}/wasmgate", "PUSH_TLS_VERIFY=false")
    assert dead.returncode != 0
    assert f"pushing {MODULES[0]} to docker://127.0.0.1:{port}/wasmgate/{MODULES[0]}" in dead.stderr
