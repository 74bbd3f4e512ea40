# The key store's image: `wasmgate-keystore serve` (docs/keystore.md), listening on
# 0.0.0.0:8090, configured through WASMGATE_KEYSTORE_* variables, as user nobody.
#
#   docker build -f docker/keystore.Dockerfile -t wasmgate/keystore .
#   docker run --rm -p 8090:8090 -e WASMGATE_KEYSTORE_STORE=redis://redis:6379 wasmgate/keystore
#   docker run --rm -e WASMGATE_KEYSTORE_STORE=redis://redis:6379 wasmgate/keystore \
#       keys create --tenant acme --plan gold
#
# The build stage runs on the Rust that rust-toolchain.toml pins (not older than
# Cargo.toml's rust-version), with the lock file as it is (--locked). Its steps are run
# for real by tests/e2e/test_keystore_image.py, which cannot pull the base images.
# Probes: GET /healthz (alive) and /readyz (Redis answers). SIGTERM drains and exits 0.
FROM rust:1.95.0-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates crates
COPY filters filters
COPY tools tools
COPY bench bench
COPY fuzz fuzz
RUN cargo build --locked --profile service -p wasmgate-keystore

FROM debian:bookworm-slim
COPY --from=build /src/target/service/wasmgate-keystore /usr/local/bin/
RUN install -d -o 65534 -g 65534 /var/lib/wasmgate
USER 65534:65534
WORKDIR /var/lib/wasmgate
ENV WASMGATE_KEYSTORE_LISTEN=0.0.0.0:8090 \
    WASMGATE_KEYSTORE_STORE=file:/var/lib/wasmgate/keys.json
EXPOSE 8090
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/wasmgate-keystore"]
CMD ["serve"]
