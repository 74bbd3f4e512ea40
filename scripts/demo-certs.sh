#!/usr/bin/env bash
# Demo certificates for the gateway's TLS listener and the east-west mesh, made with
# openssl. Never committed: `make run` writes them to build/certs/, each test writes
# its own set to a temporary directory.
#
#   scripts/demo-certs.sh [DIR]          (default DIR: build/certs)
#
# DIR/edge-ca.crt                 the demo CA clients trust for the gateway (curl --cacert)
# DIR/gateway.{crt,key}           the gateway's server certificate: localhost, 127.0.0.1, ::1
# DIR/mesh-ca.crt                 the mesh CA every sidecar trusts (Istio's role: istiod's CA)
# DIR/mesh/<service>.{crt,key}    one workload identity per service, SPIFFE id in the URI SAN:
#                                 spiffe://cluster.local/ns/default/sa/<service>
#
# Two CAs on purpose: a certificate that identifies the gateway to browsers must not
# be accepted as a workload identity inside the mesh, and the other way round.
# Keys are ECDSA P-256 (fast to make, accepted everywhere). Idempotent: an existing set
# is kept while every certificate is valid for at least one more day.
set -euo pipefail

dir="${1:-build/certs}"
days=90
trust_domain="cluster.local"
namespace="default"
mesh_services=(checkout-service order-service reporting-service)

valid_set() {
    local crt
    for crt in edge-ca.crt gateway.crt mesh-ca.crt "${mesh_services[@]/#/mesh/}"; do
        crt="${crt%.crt}.crt"
        [ -f "$dir/$crt" ] || return 1
        openssl x509 -checkend 86400 -noout -in "$dir/$crt" >/dev/null 2>&1 || return 1
    done
}
if valid_set; then
    exit 0
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/wasmgate-certs.XXXXXX")"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/out/mesh"

# new_ca NAME COMMON_NAME: a self-signed CA, key and certificate in $work/NAME.*
new_ca() {
    cat >"$work/$1.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
O = wasmgate demo
CN = $2
[ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$work/$1.key" -out "$work/$1.crt" -days "$days" \
        -config "$work/$1.cnf" -extensions ext 2>/dev/null
}

# new_leaf CA OUT COMMON_NAME SUBJECT_ALT_NAMES: a key and a certificate signed by CA,
# usable as both server and client certificate (a sidecar is both).
new_leaf() {
    local ca="$1" out="$2" cn="$3" san="$4"
    cat >"$work/leaf.cnf" <<EOF
[ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = $san
EOF
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$out.key" -out "$work/leaf.csr" -subj "/O=wasmgate demo/CN=$cn" 2>/dev/null
    openssl x509 -req -in "$work/leaf.csr" -CA "$work/$ca.crt" -CAkey "$work/$ca.key" \
        -set_serial "0x$(openssl rand -hex 16)" -days "$days" \
        -extfile "$work/leaf.cnf" -extensions ext -out "$out.crt" 2>/dev/null
}

new_ca edge-ca "wasmgate demo edge CA"
new_leaf edge-ca "$work/out/gateway" localhost "DNS:localhost, IP:127.0.0.1, IP:::1, DNS:gateway"
new_ca mesh-ca "wasmgate demo mesh CA"
for service in "${mesh_services[@]}"; do
    new_leaf mesh-ca "$work/out/mesh/$service" "$service" \
        "URI:spiffe://$trust_domain/ns/$namespace/sa/$service"
done
# The CA keys stay behind in $work (deleted on exit): nothing else may sign with them.
cp "$work/edge-ca.crt" "$work/mesh-ca.crt" "$work/out/"

mkdir -p "$(dirname "$dir")"
rm -rf "$dir"
mv "$work/out" "$dir"
echo "demo certificates written to $dir/"
