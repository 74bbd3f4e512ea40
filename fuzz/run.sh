#!/usr/bin/env bash
# Builds every fuzz target once (cargo-fuzz), then runs each for SECONDS (default 60)
# from its committed seeds (fuzz/corpus/<target>/). New inputs libFuzzer finds go to
# build/fuzz/corpus/<target>/ (kept between runs, never committed by this script);
# a failing input goes to build/fuzz/artifacts/<target>/ and fails the run.
#
#   fuzz/run.sh [SECONDS] [TARGET...]     (`make fuzz`, `make fuzz-smoke`)
#
# The sanitizer is off: the fuzzed crates are safe Rust, where a bug shows as a panic,
# which libFuzzer catches without one; that also lets stable Rust build the targets.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then
    mapfile -t targets < <(sed -n 's/^name = "\([a-z0-9_]*\)"$/\1/p' fuzz/Cargo.toml)
fi

# The workspace's release profile is the .wasm one (fat LTO, one codegen unit,
# stripped): the fuzz binaries use it without LTO and with symbols, which builds them
# in a fraction of the time and keeps crash backtraces readable.
export CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_STRIP=false
build=(cargo fuzz build --fuzz-dir fuzz --sanitizer none --features libfuzzer --codegen-units 16)
echo "${build[*]}"
"${build[@]}"

bin_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/x86_64-unknown-linux-gnu/release"
failed=()
for target in "${targets[@]}"; do
    work="build/fuzz/corpus/$target"
    artifacts="build/fuzz/artifacts/$target"
    mkdir -p "$work" "$artifacts"
    log="build/fuzz/$target.log"
    # -rss_limit_mb and -timeout turn runaway memory or time into failures too.
    if "$bin_dir/$target" "$work" "fuzz/corpus/$target" -max_total_time="$seconds" \
        -rss_limit_mb=1024 -timeout=10 -artifact_prefix="$artifacts/" -print_final_stats=1 \
        >"$log" 2>&1; then
        runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")"
        edges="$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)"
        printf 'fuzz: %-20s %4ss  %9s runs  %5s edges  ok\n' "$target" "$seconds" "${runs:-?}" "${edges:-?}"
    else
        printf 'fuzz: %-20s FAILED, input in %s (log: %s)\n' "$target" "$artifacts" "$log"
        grep -m1 -A12 -E 'panicked at|ERROR: libFuzzer' "$log" || tail -20 "$log"
        failed+=("$target")
    fi
done
if ((${#failed[@]})); then
    echo "fuzz: ${#failed[@]} target(s) failed: ${failed[*]}"
    echo "fuzz: replay one with: $bin_dir/<target> build/fuzz/artifacts/<target>/<file>"
    exit 1
fi
echo "fuzz: ${#targets[@]} passed, 0 failed"
