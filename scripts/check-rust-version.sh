#!/usr/bin/env bash
# Checks that `rust-version` in Cargo.toml tells the truth (`make msrv`):
#   1. no locked dependency declares a higher rust-version (cargo would refuse to
#      build it with an older toolchain), and says which one sets the floor;
#   2. that toolchain really compiles the workspace: every native crate with its tests
#      (cargo check --workspace --all-targets --locked), and the filters for
#      wasm32-wasip1.
# Installs the toolchain with rustup (minimal profile) and checks into target/msrv.
# Re-run it after adding or updating dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

declared="$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
floor="$(cargo metadata --format-version 1 --locked | python3 -c '
import json, sys
packages = [p for p in json.load(sys.stdin)["packages"] if p["source"] and p.get("rust_version")]
top = max(packages, key=lambda p: tuple(int(x) for x in p["rust_version"].split(".")))
print(top["rust_version"], top["name"], top["version"])')"
read -r floor_version floor_name floor_crate_version <<<"$floor"
echo "msrv: Cargo.toml says rust-version = $declared; the highest any locked dependency" \
     "declares is $floor_version ($floor_name $floor_crate_version)"

newest="$(printf '%s\n%s\n' "$declared" "$floor_version" | sort -V | tail -1)"
if [ "$newest" != "$declared" ]; then
    echo "msrv: FAIL: $floor_name $floor_crate_version needs Rust $floor_version:" \
         "raise rust-version in Cargo.toml (and the Dockerfiles' rust image if below)" >&2
    exit 1
fi

toolchain="$declared"
rustup toolchain install "$toolchain" --profile minimal --target wasm32-wasip1 --no-self-update
export CARGO_TARGET_DIR=target/msrv
echo "msrv: cargo +$toolchain check --workspace --all-targets --locked"
cargo +"$toolchain" check --workspace --all-targets --locked
filters=()
for dir in filters/*/; do
    name="$(basename "$dir")"
    [ "$name" = host ] || filters+=(-p "wasmgate-$name")
done
echo "msrv: cargo +$toolchain check --target wasm32-wasip1 --locked ${filters[*]}"
cargo +"$toolchain" check --target wasm32-wasip1 --locked "${filters[@]}"
echo "msrv: OK: Rust $toolchain builds the workspace"
