#!/usr/bin/env bash
# Every test: formatting, clippy, the sidecar's dependency boundary, unit tests (including the
# CRD drift check), helm lint, and the end-to-end tests against a local control plane that
# this script starts and always stops.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source e2e/scripts/versions.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$SCOPEGATE_CACHE/target}"
step() { printf '\n[test %s] == %s\n' "$(date +%H:%M:%S)" "$*"; }
started=$SECONDS

step "set-up"
bash scripts/setup.sh
bash e2e/scripts/build-bins.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, -D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "dependency boundary: the sidecar never compiles k8s-openapi or kube"
if cargo tree -p scopegate-sidecar -e normal,build --prefix none --locked | grep -E '^(k8s-openapi|kube|kube-[a-z]+) '; then
  echo "scopegate-sidecar depends on Kubernetes crates: it must depend on scopegate-core only" >&2
  exit 1
fi

step "unit and integration tests (includes the CRD drift check)"
cargo test --workspace --exclude scopegate-e2e --locked

step "helm lint"
"$HELM_BIN/helm" lint charts/scopegate-crds

step "end-to-end tests against a local control plane"
cargo build -p scopegate-e2e --tests --locked
E2E_DIR="$(mktemp -d "${TMPDIR:-/tmp}/scopegate-e2e.XXXXXX")"
trap 'bash "$root/e2e/scripts/cluster-down.sh" "$E2E_DIR"' EXIT
bash e2e/scripts/cluster-up.sh "$E2E_DIR"
source "$E2E_DIR/env"
# Two test threads: the other core serves kube-apiserver and etcd.
cargo test -p scopegate-e2e --locked -- --test-threads 2 --nocapture

step "all tests passed in $((SECONDS - started))s"
