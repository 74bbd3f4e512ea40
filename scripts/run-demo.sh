#!/usr/bin/env bash
# `make run`: the demo gateway until Ctrl-C. Starts the demo services and Envoy on
# envoy-config/gateway.yaml, waits until Envoy is ready, prints a walk-through, and
# stops everything it started when interrupted.
#
# Ports and places, from the environment (defaults in brackets):
#   WASMGATE_HTTP_PORT [8080]  WASMGATE_HTTPS_PORT [8443]  WASMGATE_ADMIN_PORT [9901]
#   WASMGATE_STATS_PORT [9902] (/stats/prometheus only)
#   WASMGATE_PORT_<INSTANCE>   a demo service, e.g. WASMGATE_PORT_USERS_A [18081]
#   WASMGATE_PORT_JWKS [18090]  the JWKS issuer   WASMGATE_PORT_KEYSTORE [18091]  the key store
#   WASMGATE_TRACING [off]     on: gateway.yaml's tracing, spans posted (OTLP/HTTP) to a
#                              collector you run on WASMGATE_OTLP_PORT [4318]
#   WASMGATE_PROMETHEUS_PORT [9090, or a free port if 9090 is taken]  Prometheus (Debian's),
#                              scraping the gateway; `off`: no Prometheus
#   WASMGATE_CERTS_DIR [build/certs]  WASMGATE_RUN_DIR [.run] (logs, the demo's signing
#   keys, key store and token: made at run time, never committed)
# With the defaults Envoy runs envoy-config/gateway.yaml itself; otherwise a copy
# with the ports and paths replaced, written to the run directory.
set -euo pipefail
cd "$(dirname "$0")/.."

run_dir="${WASMGATE_RUN_DIR:-.run}"
certs="${WASMGATE_CERTS_DIR:-build/certs}"
http_port="${WASMGATE_HTTP_PORT:-8080}"
https_port="${WASMGATE_HTTPS_PORT:-8443}"
admin_port="${WASMGATE_ADMIN_PORT:-9901}"
stats_port="${WASMGATE_STATS_PORT:-9902}"
otlp_port="${WASMGATE_OTLP_PORT:-4318}"
tracing="${WASMGATE_TRACING:-off}"
case "$tracing" in
    on|off) ;;
    *) echo "run: WASMGATE_TRACING must be on or off, not '$tracing'" >&2; exit 1 ;;
esac

# The demo services gateway.yaml routes to: instance, service, shipped port.
# (tests/e2e/harness/demo_gateway.py and docker-compose.yml list the same.)
services=(
    "users-a users 18081"
    "users-b users 18082"
    "orders-v1 orders 18083"
    "orders-v2 orders 18084"
    "products products 18085"
)
# The auth filters' callouts, each started on its own line below: name, shipped port.
callouts=(
    "jwks 18090"
    "keystore 18091"
)

port_of() {  # port_of INSTANCE DEFAULT: WASMGATE_PORT_<INSTANCE> or DEFAULT
    local var="WASMGATE_PORT_${1//-/_}"
    var="${var^^}"
    echo "${!var:-$2}"
}

for tool in build/bin/wasmgate-demo build/bin/wasmgate-keystore build/wasm/headers.wasm \
    build/wasm/jwt.wasm build/wasm/api-key.wasm build/wasm/rate-limit.wasm .venv/bin/envoy-bin; do
    [ -e "$tool" ] || { echo "run: $tool is missing: run \`make run\` (it builds first)" >&2; exit 1; }
done

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
declare -A port_map=([8080]="$http_port" [8443]="$https_port" [9901]="$admin_port" [9902]="$stats_port"
                     [4318]="$otlp_port")
for entry in "${services[@]}"; do
    read -r instance _ shipped <<<"$entry"
    port_map[$shipped]="$(port_of "$instance" "$shipped")"
done
for entry in "${callouts[@]}"; do
    read -r name shipped <<<"$entry"
    port_map[$shipped]="$(port_of "$name" "$shipped")"
done
for shipped in "${!port_map[@]}"; do
    port="${port_map[$shipped]}"
    if [ "$shipped" != 4318 ] && port_busy "$port"; then
        echo "run: port $port on 127.0.0.1 is already in use; stop whatever holds it or choose" \
             "another (see the top of scripts/run-demo.sh)" >&2
        exit 1
    fi
done

if [ "$tracing" = on ] && ! port_busy "$otlp_port"; then
    echo "run: tracing is on but nothing listens on 127.0.0.1:$otlp_port: Envoy will log an" \
         "export error every 5 s until an OpenTelemetry collector (OTLP/HTTP) runs there" >&2
fi
# Prometheus: on the port asked for (refused if taken), or 9090, or any free port.
prometheus_port="${WASMGATE_PROMETHEUS_PORT:-}"
if [ "$prometheus_port" != off ] && ! command -v prometheus >/dev/null; then
    echo "run: prometheus is not installed (\`make setup\` installs it): starting without it" >&2
    prometheus_port=off
fi
if [ -n "$prometheus_port" ] && [ "$prometheus_port" != off ] && port_busy "$prometheus_port"; then
    echo "run: port $prometheus_port on 127.0.0.1 (WASMGATE_PROMETHEUS_PORT) is already in use" >&2
    exit 1
fi
if [ -z "$prometheus_port" ]; then
    prometheus_port=9090
    if port_busy 9090; then
        prometheus_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    fi
fi

mkdir -p "$run_dir"
scripts/demo-certs.sh "$certs" >/dev/null

config=envoy-config/gateway.yaml
custom=""
for shipped in "${!port_map[@]}"; do
    [ "${port_map[$shipped]}" = "$shipped" ] || custom=yes
done
[ "$certs" = build/certs ] || custom=yes
# Tracing on: gateway.yaml's `#~ ` lines without their mark.
tracing_sed=()
if [ "$tracing" = on ]; then
    custom=yes
    tracing_sed=(-e 's/^\( *\)#~ /\1/')
fi
if [ -n "$custom" ]; then
    # Two passes (port → @port@ → new port), so that a new port equal to another
    # shipped port is not replaced twice.
    mark=() final=()
    for shipped in "${!port_map[@]}"; do
        mark+=(-e "s/port_value: $shipped}/port_value: @$shipped@}/g")
        final+=(-e "s/@$shipped@/${port_map[$shipped]}/g")
    done
    sed "${mark[@]}" "$config" | sed "${final[@]}" -e "s#build/certs/#${certs%/}/#g" \
        "${tracing_sed[@]}" >"$run_dir/gateway.yaml"
    config="$run_dir/gateway.yaml"
fi

pids=()
cleanup() {
    trap - EXIT INT TERM
    echo; echo "stopping the demo..."
    kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$run_dir/prometheus"  # Prometheus's samples: nothing is kept
}
trap cleanup EXIT INT TERM

for entry in "${services[@]}"; do
    read -r instance service shipped <<<"$entry"
    build/bin/wasmgate-demo echo --listen "127.0.0.1:${port_map[$shipped]}" \
        --name "$service" --instance "$instance" >"$run_dir/$instance.log" 2>&1 &
    pids+=($!)
done
# The JWKS issuer publishes the public halves of $run_dir/jwks-keys (it makes an ES256
# key there on its first start); `wasmgate-demo token --keys` signs with the same files.
build/bin/wasmgate-demo jwks --listen "127.0.0.1:${port_map[18090]}" --keys "$run_dir/jwks-keys" \
    >"$run_dir/jwks.log" 2>&1 &
pids+=($!)
# The key store, on its embedded default: a JSON file of key hashes (never keys).
build/bin/wasmgate-keystore --store "file:$run_dir/keys.json" serve \
    --listen "127.0.0.1:${port_map[18091]}" >"$run_dir/keystore.log" 2>&1 &
pids+=($!)
# Envoy's stdout is the JSON access log; its own log goes to envoy.log.
.venv/bin/envoy-bin -c "$config" --concurrency 2 --disable-hot-restart \
    --file-flush-interval-msec 1000 --log-path "$run_dir/envoy.log" >"$run_dir/access.log" &
envoy_pid=$!
pids+=("$envoy_pid")

# Prometheus (Debian's) on observability/prometheus/: scrapes this gateway's stats listener every
# 5 s and evaluates wasmgate's rules. Its samples go to the run directory, removed at exit.
prometheus="http://127.0.0.1:$prometheus_port"
if [ "$prometheus_port" != off ]; then
    rm -rf "$run_dir/prometheus"
    mkdir -p "$run_dir/prometheus"
    sed -e "s/127\.0\.0\.1:9902/127.0.0.1:$stats_port/" \
        -e "s#^  - rules/#  - $PWD/observability/prometheus/rules/#" \
        observability/prometheus/prometheus.yml >"$run_dir/prometheus/prometheus.yml"
    prometheus --config.file="$run_dir/prometheus/prometheus.yml" \
        --storage.tsdb.path="$run_dir/prometheus/data" \
        --web.listen-address="127.0.0.1:$prometheus_port" >"$run_dir/prometheus.log" 2>&1 &
    pids+=($!)
fi

admin="http://127.0.0.1:$admin_port"
for _ in $(seq 1 300); do
    [ "$(curl -s "$admin/ready" 2>/dev/null)" = "LIVE" ] && break
    if ! kill -0 "$envoy_pid" 2>/dev/null; then
        echo "run: Envoy exited; its log:" >&2; tail -n 30 "$run_dir/envoy.log" >&2; exit 1
    fi
    sleep 0.1
done
[ "$(curl -s "$admin/ready" 2>/dev/null)" = "LIVE" ] || { echo "run: Envoy did not become ready" >&2; exit 1; }
# Until every service passed a health check, Envoy balances in panic mode (all hosts,
# healthy or not); on a busy machine the first round can time out. Wait for the next.
for _ in $(seq 1 300); do
    curl -s "$admin/clusters" | grep -q 'health_flags::/failed_active_hc' || break
    sleep 0.1
done
# The JWT filter fetches the JWKS on its first timer tick: start with the keys in place.
for _ in $(seq 1 300); do
    curl -s "$admin/stats?filter=jwks_fetch.success" | grep -q 'success: [1-9]' && break
    sleep 0.1
done

if [ "$prometheus_port" != off ]; then
    for _ in $(seq 1 300); do
        curl -sf "$prometheus/-/ready" >/dev/null 2>&1 && break
        sleep 0.1
    done
    curl -sf "$prometheus/-/ready" >/dev/null 2>&1 || {
        echo "run: Prometheus did not become ready; its log:" >&2; tail -n 20 "$run_dir/prometheus.log" >&2; exit 1; }
fi

gw="http://127.0.0.1:$http_port"
users_b="http://127.0.0.1:${port_map[18082]}"
products="http://127.0.0.1:${port_map[18085]}"
# Printed into the commands as they are: each step runs in a shell of its own, so the
# token and the key are read back from the files the first steps write.
token="$run_dir/token"
bearer="-H \"Authorization: Bearer \$(cat $token)\""
keys_cli="build/bin/wasmgate-keystore --store file:$run_dir/keys.json"
api_key="-H \"x-api-key: \$(awk '/^api_key/ {print \$2}' $run_dir/api-key.txt)\""
mint_for="build/bin/wasmgate-demo token --keys $run_dir/jwks-keys --aud"  # + the audience
mint="$mint_for wasmgate-gateway"
n=0
step() {  # step TITLE COMMAND...: one numbered step of the walk-through
    n=$((n + 1))
    printf '\n[%d] %s\n' "$n" "$1"
    shift
    printf '    %s\n' "$@"
}

cat <<TXT

wasmgate demo is up.
  gateway   $gw   https://localhost:$https_port (demo CA: $certs/edge-ca.crt)
  admin     $admin   (/stats/prometheus, /clusters, /config_dump; loopback only)
  metrics   http://127.0.0.1:$stats_port/stats/prometheus   (nothing else of admin)
  services  $(for e in "${services[@]}"; do read -r i _ p <<<"$e"; printf '%s :%s  ' "$i" "${port_map[$p]}"; done)
  callouts  JWKS issuer :${port_map[18090]}   key store :${port_map[18091]}
  logs      $run_dir/   (access.log: one JSON line per request)
$(if [ "$prometheus_port" != off ]; then
    echo "  metrics   Prometheus $prometheus   (scrapes the gateway every 5 s: /graph, /targets, /alerts)"
  else
    echo "  metrics   no Prometheus (WASMGATE_PROMETHEUS_PORT=off, or not installed)"
  fi)
$(if [ "$tracing" = on ]; then
    echo "  tracing   on: spans to an OTLP/HTTP collector on 127.0.0.1:$otlp_port"
  else
    echo "  tracing   off (WASMGATE_TRACING=on make run: spans to a collector on 127.0.0.1:$otlp_port)"
  fi)

Walk-through: run each command in another terminal.
TXT
step "Mint a demo token: subject alice, tenant acme, scope orders:read, signed with the key the JWKS issuer publishes. Every /api/ step below sends it." \
    "$mint --sub alice --tenant acme --scope orders:read --lifetime 1h > $token" \
    "cat $token"
step "Without a token, or with an expired one (--lifetime -5m), /api/ answers 401 with a WWW-Authenticate challenge." \
    "curl -s -i $gw/api/v2/users/42" \
    "curl -s -i -H \"Authorization: Bearer \$($mint --lifetime -5m)\" $gw/api/v2/users/42"
step "A route to the users service with the token. The service sees who is calling (x-user-id, x-tenant-id, x-scopes from the token), never the spoofed X-User-ID; the gateway adds its own headers, and v1 answers Deprecation and Sunset." \
    "curl -s -i $bearer -H 'X-User-ID: admin' $gw/api/v1/users/42"
step "The same on v2: no Deprecation, no Sunset." \
    "curl -s -i $bearer $gw/api/v2/users/42"
step "Versions by header, for paths without one: X-API-Version (or Accept: application/vnd.wasmgate+json;version=N) picks the version the service sees in its path, v1 deprecated however it was chosen; no version asked is v2; an unknown one is a 406." \
    "curl -s -i $bearer -H 'X-API-Version: 1' $gw/api/users/42" \
    "curl -s $bearer -H 'Accept: application/vnd.wasmgate+json;version=2' $gw/api/users/42" \
    "curl -s -i -H 'X-API-Version: 3' $gw/api/users/42"
step "HTTPS with the demo certificate (the upstream sees x-forwarded-proto: https)." \
    "curl -s $bearer --cacert $certs/edge-ca.crt https://localhost:$https_port/api/v2/products/7"
step "Scopes: reading orders needs orders:read (the token has it), placing one needs orders:write: 403." \
    "curl -s -i $bearer -X POST -d '{\"sku\":\"lamp\"}' $gw/api/v2/orders"
step "Canary: about 90% of orders go to orders-v1, 10% to orders-v2." \
    "for i in \$(seq 100); do curl -s $bearer $gw/api/v2/orders | grep -o '\"instance\":\"[^\"]*\"'; done | sort | uniq -c"
step "A/B: x-experiment: b (or the cookie ab=b) always gets orders-v2, ab=a always orders-v1; everyone else meets the canary." \
    "for i in \$(seq 10); do curl -s $bearer -H 'x-experiment: b' $gw/api/v2/orders | grep -o '\"instance\":\"[^\"]*\"'; done | sort | uniq -c" \
    "for i in \$(seq 10); do curl -s $bearer -b 'ab=a' $gw/api/v2/orders | grep -o '\"instance\":\"[^\"]*\"'; done | sort | uniq -c"
step "Load balancing, least request: users-b answers 300 ms late, so it holds more requests in flight and gets fewer new ones: of 100 requests, 8 at a time, about a quarter (round robin would send it half)." \
    "curl -s -o /dev/null -X PUT --data 300 $users_b/__echo/delay" \
    "seq 100 | xargs -P 8 -I{} curl -s $bearer $gw/api/v2/users | grep -o '\"instance\":\"[^\"]*\"' | sort | uniq -c" \
    "curl -s -o /dev/null -X DELETE $users_b/__echo/delay"
step "Retry: products fails its next request with 503 (told so on its own port: the gateway removes the echo's x-echo-* steering headers from clients); the gateway retries and answers 200." \
    "curl -s -o /dev/null -X PUT --data 1 $products/__echo/fail-next" \
    "curl -s -o /dev/null -w '%{http_code}\n' $bearer $gw/api/v2/products/1" \
    "curl -s $admin/stats | grep -E 'cluster.products.upstream_rq_retry(_success)?:'"
step "Timeout: products has 2 s to answer; a 3 s answer becomes a 504." \
    "curl -s -o /dev/null -X PUT --data 3000 $products/__echo/delay" \
    "curl -s -o /dev/null -w '%{http_code} after %{time_total}s\n' $bearer $gw/api/v2/products/1" \
    "curl -s -o /dev/null -X DELETE $products/__echo/delay"
step "Outlier detection: break users-b (every answer 500, while its health check still passes). Clients still get 200 (reads are retried on users-a); after 5 consecutive errors (a few more while the ejection takes effect) users-b is ejected for 30 s. (40 requests: least request picks at random when nothing is in flight, so users-b's fifth one may take a while.)" \
    "curl -s -X PUT --data 500 $users_b/__echo/fail" \
    "for i in \$(seq 40); do curl -s -o /dev/null -w '%{http_code} ' $bearer $gw/api/v2/users; done; echo" \
    "curl -s $admin/stats | grep -E 'cluster.users.(outlier_detection.ejections_active|retry.upstream_rq_500):'" \
    "curl -s -X DELETE $users_b/__echo/fail"
traced="curl -s $bearer -H 'traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01' $gw/api/v2/users/1 | grep -o '\"traceparent\":\[[^]]*\]'"
if [ "$tracing" = on ]; then
    step "Tracing: the upstream gets a W3C traceparent in the client's trace, with the gateway's span as parent; the span goes to the collector on 127.0.0.1:$otlp_port." \
        "$traced"
else
    step "Tracing is off (\`WASMGATE_TRACING=on make run\` turns it on, with an OpenTelemetry collector on 127.0.0.1:$otlp_port): Envoy makes no spans and forwards the client's traceparent as it came." \
        "$traced"
fi
step "Backends for frontends: mobile.wasmgate.test takes only tokens for audience wasmgate-mobile (a web token gets 401 there), tells the service the client type, answers gzip-compressed with its own cache header and counts its own limit (300 a minute)." \
    "curl -s -o /dev/null -w '%{http_code}\n' -H 'Host: mobile.wasmgate.test' -H \"Authorization: Bearer \$($mint_for wasmgate-web)\" $gw/api/v2/users/42" \
    "curl -s -i --compressed -H 'Host: mobile.wasmgate.test' -H \"Authorization: Bearer \$($mint_for wasmgate-mobile)\" $gw/api/v2/users/42"
step "Create an API key for a partner: tenant acme, plan gold. The key is shown once; the store keeps only its hash." \
    "$keys_cli keys create --tenant acme --plan gold > $run_dir/api-key.txt" \
    "cat $run_dir/api-key.txt" \
    "$keys_cli keys list"
step "The partner route takes API keys: 401 without one; with it, the service sees the key's tenant, id and plan (x-tenant-id, x-api-key-id, x-plan), never the key." \
    "curl -s -i $gw/partner/orders" \
    "curl -s -i $api_key $gw/partner/orders"
step "The partner host, partner.wasmgate.test: API keys only (a token gets 401), the orders API on the stable version, 120 requests a minute for a gold key." \
    "curl -s -o /dev/null -w '%{http_code}\n' -H 'Host: partner.wasmgate.test' $bearer $gw/api/v2/orders" \
    "curl -s -i -H 'Host: partner.wasmgate.test' $api_key $gw/api/v2/orders"
step "Rate limit: the gold plan allows 10 requests a minute on /partner (other plans 5). Past it: 429 with Retry-After and the X-RateLimit-* and RateLimit headers." \
    "for i in \$(seq 12); do curl -s -o /dev/null -w '%{http_code} ' $api_key $gw/partner/orders; done; echo" \
    "curl -s -i $api_key $gw/partner/orders"
step "The access log: one JSON line per request (request id, user, tenant, API key id, status, latency...)." \
    "tail -n 2 $run_dir/access.log"
step "Metrics in Prometheus format: the filters' own (those that counted something) and Envoy's." \
    "curl -s $admin/stats/prometheus | grep -E '^(wasmgate_|envoy_cluster_upstream_rq_retry\{)' | grep -v ' 0\$'"
if [ "$prometheus_port" != off ]; then
    step "Prometheus scrapes the gateway every 5 s: its target is up, and a query gives the JWT filter's refusals by reason (the UI: $prometheus/graph, the alerts: $prometheus/alerts)." \
        "curl -s $prometheus/api/v1/targets | grep -o '\"health\":\"[a-z]*\"'" \
        "curl -s $prometheus/api/v1/query --data-urlencode 'query=sum by (reason) (wasmgate_jwt_denied_total) > 0' | grep -o '\"reason\":\"[a-z_]*\"},\"value\":\[[^]]*\]'"
fi
printf '\nCtrl-C stops everything.\n'
wait "$envoy_pid"
