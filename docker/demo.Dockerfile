# The workspace's demo binaries (wasmgate-demo: the echo upstream, and the demo tools
# that come with the auth filters) in a small Debian image.
#
#   docker build -f docker/demo.Dockerfile -t wasmgate/demo .
#   docker run --rm wasmgate/demo echo --listen 0.0.0.0:8080 --name users
#
# The filters (.wasm) are not in it: the gateway mounts build/wasm/ instead.
FROM rust:1.85-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates crates
COPY filters filters
COPY tools tools
RUN cargo build --release --locked -p wasmgate-demo

FROM debian:bookworm-slim
COPY --from=build /src/target/release/wasmgate-demo /usr/local/bin/wasmgate-demo
USER 65534:65534
ENTRYPOINT ["/usr/local/bin/wasmgate-demo"]
