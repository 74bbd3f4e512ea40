# wasmgate-ratelimit (docs/ratelimit-service.md) in a small Debian image: the rate-limit
# service the rate-limit filter's global tier asks, on Redis or in memory.
#
#   docker build -f docker/ratelimit.Dockerfile -t wasmgate/ratelimit .
#   docker run --rm wasmgate/ratelimit serve --config /etc/wasmgate/limits.yaml \
#       --store redis://redis:6379 --listen 0.0.0.0:8081
#
# Building it compiles Kuadrant's limitador with RocksDB (C++: clang and g++ in the
# build stage, several minutes); the service links OpenSSL for rediss://, so the image
# carries libssl3 and the CA certificates (libstdc++, which RocksDB links, is in Debian
# slim). It runs as an unprivileged user. The build stage runs on the Rust that
# rust-toolchain.toml pins, with the lock file as it is (--locked), in Cargo.toml's
# `service` profile, as `make tools` builds it.
FROM rust:1.95.0-slim-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends clang libclang-dev g++ libssl-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates crates
COPY filters filters
COPY tools tools
COPY bench bench
COPY fuzz fuzz
RUN cargo build --locked --profile service -p wasmgate-ratelimit

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends libssl3 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/service/wasmgate-ratelimit /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/wasmgate-ratelimit"]
