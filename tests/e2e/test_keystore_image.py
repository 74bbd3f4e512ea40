"""docker/keystore.Dockerfile and docker/demo.Dockerfile build what they claim.

Nothing can be pulled here (no `rust:` or `debian:` base image), so the images
themselves are not built. What is checked instead, for real:
- the build stage's Rust is the one rust-toolchain.toml pins, not older than
  Cargo.toml's rust-version, and its COPY lines bring every workspace member (cargo
  refuses a workspace with a member missing);
- the key store's build stage runs as written (its COPY lines into a fresh directory,
  its RUN line with that Rust, the lock file as it is), and the binary it makes, run
  the way the image runs it (its ENV, ENTRYPOINT and CMD), serves /healthz.
The registry dependencies' build is shared with `make build` (same target directory,
same profile); the workspace's own crates are compiled afresh from the copy.
"""

import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib

import pytest
import requests

from harness import ROOT, Service

DOCKERFILES = {name: ROOT / "docker" / f"{name}.Dockerfile" for name in ("keystore", "demo")}


def instructions(path):
    """(stage name, INSTRUCTION, arguments) per instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stage = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            parts = rest.split()
            stage = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else parts[0]
        yield stage, word, rest.strip()


def build_stage(path):
    steps = [(word, rest) for stage, word, rest in instructions(path) if stage == "build"]
    [image] = [rest.split()[0] for word, rest in steps if word == "FROM"]
    copies = [shlex.split(rest) for word, rest in steps if word == "COPY"]
    runs = [rest for word, rest in steps if word == "RUN"]
    return image, copies, runs


def toolchain():
    return tomllib.loads((ROOT / "rust-toolchain.toml").read_text())["toolchain"]["channel"]


def version(text):
    return tuple(int(part) for part in text.split("."))


@pytest.mark.parametrize("name", DOCKERFILES)
def test_the_build_stage_has_the_pinned_rust_and_every_workspace_member(name):
    image, copies, _ = build_stage(DOCKERFILES[name])
    match = re.fullmatch(r"rust:(\d+\.\d+\.\d+)-slim-bookworm", image)
    assert match, image
    assert match.group(1) == toolchain()
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
    assert version(cargo["workspace"]["package"]["rust-version"]) <= version(toolchain())
    copied = [source for *sources, _ in copies for source in sources]
    assert {"Cargo.toml", "Cargo.lock"} <= set(copied)
    for pattern in cargo["workspace"]["members"]:
        for member in glob.glob(str(ROOT / pattern)):
            relative = os.path.relpath(member, ROOT)
            assert any(relative == c or relative.startswith(c.rstrip("/") + "/") for c in copied), \
                f"{name}.Dockerfile does not copy the workspace member {relative}"


def test_both_images_build_the_same_way():
    keystore, demo = (build_stage(DOCKERFILES[n]) for n in ("keystore", "demo"))
    assert keystore[:2] == demo[:2]
    [keystore_run], [demo_run] = keystore[2], demo[2]
    assert keystore_run.replace(" -p wasmgate-keystore", "") == \
        demo_run.replace(" -p wasmgate-keystore", "").replace(" -p wasmgate-demo", "")


def test_the_key_store_build_steps_run_and_make_a_binary_that_serves(tmp_path):
    path = DOCKERFILES["keystore"]
    _, copies, [run] = build_stage(path)
    context = tmp_path / "src"  # WORKDIR /src
    context.mkdir()
    for *sources, destination in copies:
        for source in sources:
            target = context / (os.path.basename(source) if destination.endswith("/") else destination)
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, target,
                                ignore=shutil.ignore_patterns("__pycache__", "target"))
            else:
                shutil.copy(ROOT / source, target)
    argv = shlex.split(run)
    assert argv[:2] == ["cargo", "build"] and "--locked" in argv, run
    target_dir = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    built = subprocess.run(["cargo", f"+{toolchain()}", *argv[1:]], cwd=context,
                           env={**os.environ, "CARGO_TARGET_DIR": target_dir},
                           capture_output=True, text=True, timeout=1500)
    assert built.returncode == 0, built.stderr[-5000:]

    # The final stage: where the binary comes from, and how the image starts it.
    final = [(word, rest) for stage, word, rest in instructions(path) if stage != "build"]
    [source] = [shlex.split(rest)[1] for word, rest in final
                if word == "COPY" and rest.startswith("--from=build")]
    binary = source.replace("/src/target", target_dir)
    env = dict(pair.split("=", 1) for word, rest in final if word == "ENV"
               for pair in shlex.split(rest))
    entrypoint = [json.loads(rest) for word, rest in final if word == "ENTRYPOINT"][0]
    command = [json.loads(rest) for word, rest in final if word == "CMD"][0]
    assert entrypoint == ["/usr/local/bin/wasmgate-keystore"] and command == ["serve"]
    assert env["WASMGATE_KEYSTORE_LISTEN"] == "0.0.0.0:8090"
    env.update({"WASMGATE_KEYSTORE_LISTEN": "127.0.0.1:0",  # not a fixed port in tests
                "WASMGATE_KEYSTORE_STORE": f"file:{tmp_path / 'keys.json'}"})
    with Service([binary, *command], "image-keystore", tmp_path, env=env) as service:
        assert requests.get(service.url("/healthz"), timeout=10).json() == {"status": "ok"}
        assert requests.get(service.url("/readyz"), timeout=10).status_code == 200

