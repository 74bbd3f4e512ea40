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
#
# $WASMGATE_PORT_MAP ("FROM:TO FROM:TO ...", empty by default) moves the gateway's own
# ports, for a second gateway in the same network namespace: every `port_value: FROM`
# becomes `port_value: TO` (the listeners', admin's, and the `admin` cluster's that the
# stats listener asks). Map only ports that name nothing else in the file.
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
moves=""
for pair in ${WASMGATE_PORT_MAP:-}; do
    # Two passes (FROM -> @FROM@ -> TO), so that a TO equal to another FROM moves once.
    moves="$moves -e s/(port_value:[[:space:]]*)${pair%%:*}([^0-9]|$)/\1@${pair%%:*}@\2/g"
done
for pair in ${WASMGATE_PORT_MAP:-}; do
    moves="$moves -e s/@${pair%%:*}@/${pair#*:}/g"
done
sed -E -e "/^  listeners:/,/^  clusters:/ s/^( *address: \{socket_address: \{address: )127\.0\.0\.1,/\1${bind},/" \
    -e "$tracing" "$config" >/tmp/envoy.yaml
if [ -n "$moves" ]; then
    # shellcheck disable=SC2086 # each -e expression is one word
    sed -E -i $moves /tmp/envoy.yaml
fi
exec envoy -c /tmp/envoy.yaml "$@"
