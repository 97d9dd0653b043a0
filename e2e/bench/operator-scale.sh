#!/usr/bin/env bash
# Benchmark: 1,000 AuthPolicies and 1,000 OAuthClients against a fresh local control plane and a
# release-built operator (running as its ServiceAccount). Prints time until all Ready, peak RSS
# and CPU per no-op reconcile. Not part of `make test`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
source e2e/scripts/versions.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$SCOPEGATE_CACHE/target}"
bash e2e/scripts/build-bins.sh >/dev/null
cargo build --release --locked -p scopegate-operator
cargo build --release --locked -p scopegate-e2e --example operator_scale
D="$(mktemp -d /tmp/scopegate-scale.XXXXXX)"
trap 'bash e2e/scripts/cluster-down.sh "$D"' EXIT
bash e2e/scripts/cluster-up.sh "$D"
bash e2e/scripts/operator-up.sh "$D" "$CARGO_TARGET_DIR/release/scopegate-operator"
source "$D/env"
OPERATOR_PID="$(cat "$D/operator.pid")" OPERATOR_ADMIN="$E2E_OPERATOR_ADMIN" \
  "$CARGO_TARGET_DIR/release/examples/operator_scale"
