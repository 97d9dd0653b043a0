#!/usr/bin/env bash
# Every test: formatting, clippy, the sidecar's dependency boundary, cargo deny, import cycles
# between modules, unit tests (including the CRD drift check), helm lint, and the end-to-end
# tests against a local control plane that this script starts and always stops.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source e2e/scripts/versions.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$SCOPEGATE_CACHE/target}"
# The pinned cargo tools scripts/setup.sh installs.
export PATH="$SCOPEGATE_CACHE/tools/bin:$PATH"
step() { printf '\n[test %s] == %s\n' "$(date +%H:%M:%S)" "$*"; }
started=$SECONDS

step "set-up"
bash scripts/setup.sh
bash e2e/scripts/build-bins.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, -D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "dependency boundary: no sidecar crate compiles k8s-openapi or kube; the verifier never depends on the issuer, the egress proxy on neither"
for crate in scopegate-sidecar scopegate-sidecar-kit scopegate-verifier scopegate-issuer scopegate-egress scopegate-sessions; do
  if cargo tree -p "$crate" -e normal,build --prefix none --locked | grep -E '^(k8s-openapi|kube|kube-[a-z]+) '; then
    echo "$crate depends on Kubernetes crates: the sidecar crates must depend on scopegate-core only" >&2
    exit 1
  fi
done
if cargo tree -p scopegate-verifier -e normal,build,dev --prefix none --locked | grep -E '^scopegate-issuer '; then
  echo "scopegate-verifier depends on scopegate-issuer: the issuer may use the verifier, never the reverse" >&2
  exit 1
fi
if cargo tree -p scopegate-egress -e normal,build,dev --prefix none --locked | grep -E '^scopegate-(verifier|issuer|sessions) '; then
  echo "scopegate-egress depends on the verifier, the issuer or the sessions: it sits beside them, below the binary" >&2
  exit 1
fi
if cargo tree -p scopegate-sessions -e normal,build,dev --prefix none --locked | grep -E '^scopegate-(verifier|issuer|egress) '; then
  echo "scopegate-sessions depends on a role: it sits below the verifier, beside the issuer and egress" >&2
  exit 1
fi

step "cargo deny: licenses, duplicate versions, wildcards and sources (deny.toml)"
# Not `check advisories`: the RustSec database is a git repository on GitHub, which this
# project's machines and CI cannot reach (they reach package registries only); see deny.toml.
cargo deny --locked check licenses bans sources

step "no import cycle between the modules of a crate (tools/import-cycles)"
# The crates checked: those with no cycle today. To add one, run
# `cargo run -q -p scopegate-import-cycles -- DIR`, break each cycle it names (one module
# depends on the other, not both), and add DIR here. Every crate of the workspace is listed.
acyclic=(core crds fetch operator cli e2e sidecar sidecar/kit sidecar/verifier sidecar/issuer sidecar/egress sidecar/sessions tools/import-cycles)
cargo run -q -p scopegate-import-cycles --locked -- "${acyclic[@]}"

step "unit and integration tests (includes the CRD drift check)"
cargo test --workspace --exclude scopegate-e2e --locked

step "helm lint"
"$HELM_BIN/helm" lint charts/scopegate-crds charts/scopegate

step "end-to-end tests against a local control plane"
cargo build -p scopegate-e2e --tests --locked
cargo build -p scopegate-operator -p scopegate-sidecar -p scopegate-cli --locked
# The pods tests run the sidecar binary as a kubelet would run the injected container.
export E2E_SIDECAR_BIN="$CARGO_TARGET_DIR/debug/scopegate-sidecar"
# The cli tests run `kubectl scopegate` against the control plane.
export E2E_CLI_BIN="$CARGO_TARGET_DIR/debug/kubectl-scopegate"
E2E_DIR="$(mktemp -d "${TMPDIR:-/tmp}/scopegate-e2e.XXXXXX")"
trap 'bash "$root/e2e/scripts/cluster-down.sh" "$E2E_DIR"' EXIT
bash e2e/scripts/cluster-up.sh "$E2E_DIR"
bash e2e/scripts/operator-up.sh "$E2E_DIR" "$CARGO_TARGET_DIR/debug/scopegate-operator"
source "$E2E_DIR/env"
# Two test threads: the other core serves kube-apiserver, etcd and the operator.
if ! cargo test -p scopegate-e2e --locked --test crds --test operator --test keys --test webhook --test pods --test story --test upstreams --test trust --test discovery --test tenancy --test cli --test dry_run --test status --test service_accounts --test projected_tokens --test egress --test sessions --test browser_sessions -- --test-threads 2 --nocapture; then
  echo "--- operator log (last 40 lines) ---" >&2; tail -n 40 "$E2E_DIR/logs/operator.log" >&2
  exit 1
fi

step "operator lifecycle: leader election and SIGKILL recovery (tests start their own operators)"
kill "$(cat "$E2E_DIR/operator.pid")" && rm -f "$E2E_DIR/operator.pid"
cargo test -p scopegate-e2e --locked --test operator_lifecycle --test faults -- --test-threads 1 --nocapture

step "release images: static binaries, reproducible OCI archives, run as uid 65532 (images/check.sh)"
bash images/check.sh

step "all tests passed in $((SECONDS - started))s"
