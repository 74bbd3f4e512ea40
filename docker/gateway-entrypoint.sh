#!/bin/sh
# Envoy in a container, on a config written for 127.0.0.1 (envoy-config/gateway.yaml).
#
#   gateway-entrypoint.sh CONFIG [ENVOY ARGS...]
#
# Listeners are bound to $WASMGATE_BIND_ADDRESS instead (0.0.0.0 behind published
# ports; 127.0.0.1 on the host network). Only listener addresses change: lines that
# start with `address: {socket_address: {address: 127.0.0.1,` between `listeners:` and
# `clusters:` of static_resources, which is how gateway.yaml writes them. Admin (above
# static_resources) stays on 127.0.0.1 whatever the variable says: it can stop Envoy
# and change its runtime, so nothing outside the container may reach it (the `stats`
# listener serves /stats/prometheus). Upstream endpoints (`- endpoint: {address: ...`)
# stay on 127.0.0.1, where the services of the same network namespace listen.
# With WASMGATE_TRACING=on, the config's `#~ ` lines (gateway.yaml's tracing) are
# turned on; off (the default) leaves them commented out.
# Needs only sh and sed (the stock Envoy image has both).
set -eu
config="$1"
shift
bind="${WASMGATE_BIND_ADDRESS:-0.0.0.0}"
case "${WASMGATE_TRACING:-off}" in
    on) tracing='s/^( *)#~ /\1/' ;;
    off) tracing='' ;;
    *) echo "gateway-entrypoint: WASMGATE_TRACING must be on or off, not '$WASMGATE_TRACING'" >&2; exit 2 ;;
esac
sed -E -e "/^  listeners:/,/^  clusters:/ s/^( *address: \{socket_address: \{address: )127\.0\.0\.1,/\1${bind},/" \
    -e "$tracing" "$config" >/tmp/envoy.yaml
exec envoy -c /tmp/envoy.yaml "$@"
