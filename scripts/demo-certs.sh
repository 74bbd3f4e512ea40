#!/usr/bin/env bash
# Demo certificates for the gateway's TLS listener and the east-west mesh, made with
# openssl. Never committed: `make run` writes them to build/certs/, each test writes
# its own set to a temporary directory.
#
#   scripts/demo-certs.sh [--renew] [DIR]    (default DIR: build/certs)
#
# DIR/edge-ca.crt                 the demo CAs clients trust for the gateway (curl --cacert)
# DIR/gateway.{crt,key}           the gateway's server certificate: localhost, 127.0.0.1, ::1
# DIR/mesh-ca.crt                 the mesh CAs every sidecar trusts (Istio's role: istiod's CA)
# DIR/mesh/<service>.{crt,key}    one workload identity per service, SPIFFE id in the URI SAN:
#                                 spiffe://cluster.local/ns/default/sa/<service>
# DIR/sds/*.yaml                  where Envoy reads them: SDS resources naming the files
#                                 above (see "Rotation")
#
# Two CAs on purpose: a certificate that identifies the gateway to browsers must not
# be accepted as a workload identity inside the mesh, and the other way round.
# Keys are ECDSA P-256 (fast to make, accepted everywhere). Idempotent: an existing set
# is kept while every certificate is valid for at least one more day; `--renew`
# re-issues it now.
#
# Rotation. Envoy reads every certificate through SDS from the files of DIR/sds/ and
# watches DIR (`watched_directory`): a new set replaces the old one while Envoy runs,
# without a restart. The set is swapped in one step, the way Kubernetes updates a
# mounted Secret: the files live in DIR/..<generation>/, every name above is a
# symbolic link through DIR/..data, and a new generation is put in place by renaming
# a new ..data link over the old one (atomic), so Envoy never reads a key of one
# generation with a certificate of another. Each set comes from new CAs (their keys
# are thrown away, see below); the CA files keep the previous generation's CA after
# the new one, so a peer that still presents an old certificate is trusted until it
# has loaded its new one.
set -euo pipefail

renew=""
if [ "${1:-}" = "--renew" ]; then
    renew=yes
    shift
fi
dir="${1:-build/certs}"
days=90
trust_domain="cluster.local"
namespace="default"
mesh_services=(checkout-service order-service reporting-service)

valid_set() {
    local crt
    # A set from before the rotation layout (plain files, no SDS) is replaced.
    [ -L "$dir/..data" ] && [ -f "$dir/sds/gateway.yaml" ] || return 1
    for crt in edge-ca.crt gateway.crt mesh-ca.crt "${mesh_services[@]/#/mesh/}"; do
        crt="${crt%.crt}.crt"
        [ -f "$dir/$crt" ] || return 1
        openssl x509 -checkend 86400 -noout -in "$dir/$crt" >/dev/null 2>&1 || return 1
    done
}
if [ -z "$renew" ] && valid_set; then
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

# trust_bundle CA: the new CA, then the first certificate of the CA file in use (the
# previous generation's own CA).
trust_bundle() {
    cat "$work/$1.crt"
    sed -n '1,/-----END CERTIFICATE-----/p' "$dir/$1.crt"
}

new_ca edge-ca "wasmgate demo edge CA"
new_leaf edge-ca "$work/out/gateway" localhost "DNS:localhost, IP:127.0.0.1, IP:::1, DNS:gateway"
new_ca mesh-ca "wasmgate demo mesh CA"
for service in "${mesh_services[@]}"; do
    new_leaf mesh-ca "$work/out/mesh/$service" "$service" \
        "URI:spiffe://$trust_domain/ns/$namespace/sa/$service"
done
# The CA keys stay behind in $work (deleted on exit): nothing else may sign with them.
if [ -L "$dir/..data" ] && [ -f "$dir/edge-ca.crt" ] && [ -f "$dir/mesh-ca.crt" ]; then
    trust_bundle edge-ca >"$work/out/edge-ca.crt"
    trust_bundle mesh-ca >"$work/out/mesh-ca.crt"
else
    cp "$work/edge-ca.crt" "$work/mesh-ca.crt" "$work/out/"
    rm -rf "$dir"  # absent, or a set from before this layout
fi

# sds_secret NAME: an SDS resource file (a DiscoveryResponse, as Envoy's
# path_config_source reads it) holding one Secret, whose body is read from stdin.
sds_secret() {
    printf '%s\n' "# Written by scripts/demo-certs.sh. Envoy reads the files named here, and reads" \
        "# them again after a rename in watched_directory." \
        "resources:" \
        "- \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret" \
        "  name: $1"
    sed 's/^/  /'
}
# tls_certificate NAME: the Secret body of DIR/NAME.{crt,key}. Paths are written as
# DIR was given: a relative DIR (build/certs) is found from the directory Envoy runs
# in, as the configs' own paths are.
tls_certificate() {
    printf '%s\n' "tls_certificate:" \
        "  certificate_chain: {filename: $dir/$1.crt}" \
        "  private_key: {filename: $dir/$1.key}" \
        "  watched_directory: {path: $dir}"
}
mkdir -p "$dir/sds/mesh"
# Each SDS file is renamed into place too: Envoy watches them as well.
tls_certificate gateway | sds_secret gateway >"$work/sds.yaml"
mv -f "$work/sds.yaml" "$dir/sds/gateway.yaml"
# Istio's names: ROOTCA for the mesh's trust bundle, default for a workload's identity.
printf '%s\n' "validation_context:" "  trusted_ca: {filename: $dir/mesh-ca.crt}" \
    "  watched_directory: {path: $dir}" | sds_secret ROOTCA >"$work/sds.yaml"
mv -f "$work/sds.yaml" "$dir/sds/mesh-ca.yaml"
for service in "${mesh_services[@]}"; do
    tls_certificate "mesh/$service" | sds_secret default >"$work/sds.yaml"
    mv -f "$work/sds.yaml" "$dir/sds/mesh/$service.yaml"
done

# The new generation beside the old one, then one rename makes it the current one.
generation="..$(date -u +%Y%m%dT%H%M%S).$$"
old="$(readlink "$dir/..data" 2>/dev/null || true)"
mv "$work/out" "$dir/$generation"
ln -s "$generation" "$dir/..data.tmp"
mv -T "$dir/..data.tmp" "$dir/..data"
for name in edge-ca.crt gateway.crt gateway.key mesh-ca.crt mesh; do
    [ -L "$dir/$name" ] || ln -s "..data/$name" "$dir/$name"
done
if [ -n "$old" ] && [ "$old" != "$generation" ]; then
    rm -rf "${dir:?}/$old"
fi
echo "demo certificates written to $dir/"
