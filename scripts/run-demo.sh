#!/usr/bin/env bash
# `make run`: the demo gateway on fixed local ports, until Ctrl-C.
# Starts the demo upstream and Envoy (envoy-config/gateway.yaml), waits until Envoy
# is ready, prints a walk-through, and stops everything it started on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

RUN_DIR=.run
mkdir -p "$RUN_DIR"
pids=()
cleanup() {
    trap - EXIT INT TERM
    echo; echo "stopping demo..."
    kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in 8080 9901 18081; do
    if port_busy "$port"; then
        echo "run: port $port on 127.0.0.1 is already in use; stop whatever holds it and retry" >&2
        exit 1
    fi
done

build/bin/wasmgate-demo echo --listen 127.0.0.1:18081 --name users >"$RUN_DIR/users.log" 2>&1 &
pids+=($!)
.venv/bin/envoy-bin -c envoy-config/gateway.yaml --concurrency 2 --disable-hot-restart \
    --log-path "$RUN_DIR/envoy.log" &
pids+=($!)

for _ in $(seq 1 300); do
    [ "$(curl -s http://127.0.0.1:9901/ready 2>/dev/null)" = "LIVE" ] && break
    if ! kill -0 "${pids[1]}" 2>/dev/null; then
        echo "run: Envoy exited; its log:" >&2; tail -n 30 "$RUN_DIR/envoy.log" >&2; exit 1
    fi
    sleep 0.1
done

cat <<'TXT'

wasmgate demo is up.
  gateway   http://127.0.0.1:8080   (Envoy + build/wasm/headers.wasm)
  admin     http://127.0.0.1:9901   (stats: /stats/prometheus)
  logs      .run/

Try it: a spoofed identity header is stripped, the gateway adds its own headers, and
the echo upstream shows exactly what it received:

  curl -s -i -H 'X-User-ID: admin' http://127.0.0.1:8080/api/v1/users/42

The filter's counters:

  curl -s http://127.0.0.1:9901/stats | grep wasmgate

Ctrl-C stops everything.
TXT
wait
