# The workspace's demo binaries in a small Debian image: wasmgate-demo (the echo
# upstream, the JWKS issuer, token minting; the entrypoint) and wasmgate-keystore
# (the API-key store and its CLI; docker/keystore.Dockerfile is its own image).
#
#   docker build -f docker/demo.Dockerfile -t wasmgate/demo .
#   docker run --rm wasmgate/demo echo --listen 0.0.0.0:8080 --name users
#   docker run --rm --entrypoint wasmgate-keystore wasmgate/demo --help
#
# The filters (.wasm) are not in it: the gateway mounts build/wasm/ instead.
# /var/lib/wasmgate (owned by nobody) holds the JWKS issuer's signing keys and the key
# store's file; docker-compose.yml mounts a volume there. The build stage is the key
# store image's (docker/keystore.Dockerfile), building both binaries.
FROM rust:1.95.0-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates crates
COPY filters filters
COPY tools tools
COPY bench bench
COPY fuzz fuzz
RUN cargo build --locked --profile service -p wasmgate-demo -p wasmgate-keystore

FROM debian:bookworm-slim
COPY --from=build /src/target/service/wasmgate-demo /src/target/service/wasmgate-keystore \
     /usr/local/bin/
RUN install -d -o 65534 -g 65534 /var/lib/wasmgate
USER 65534:65534
ENTRYPOINT ["/usr/local/bin/wasmgate-demo"]
