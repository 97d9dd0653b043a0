# scopegate developer entry points. See README.md.
SHELL := /bin/bash
SCOPEGATE_CACHE ?= $(HOME)/.cache/scopegate
export CARGO_TARGET_DIR ?= $(SCOPEGATE_CACHE)/target

.PHONY: up down test crds bins

## up: build what is missing, start the local control plane, install the CRDs, apply examples/
up:
	@bash scripts/up.sh

## down: stop the control plane that `make up` started
down:
	@bash e2e/scripts/cluster-down.sh "$(SCOPEGATE_CACHE)/up"

## test: fmt, clippy, dependency checks (boundaries, cargo deny, import cycles), unit tests, CRD
##       drift, helm lint, and e2e against a fresh control plane (scripts/test.sh)
test:
	@bash scripts/test.sh

## crds: regenerate crds/*.yaml and the scopegate-crds chart from the Rust types
crds:
	cargo run -q -p scopegate-crds --bin crdgen

## bins: build the control-plane binaries from Go modules (cached by version)
bins:
	@bash e2e/scripts/build-bins.sh

.PHONY: images
## images: static release binaries and reproducible OCI archives with SBOMs (images/README.md)
images:
	@bash images/build.sh
