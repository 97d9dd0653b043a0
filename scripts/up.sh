#!/usr/bin/env bash
# The main job on the embedded local control plane: build what is missing, start the control
# plane (or reuse the running one), install scopegate with Helm, run the operator as its
# ServiceAccount, apply the examples, and print how to use kubectl against it.
# `make down` stops it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source e2e/scripts/versions.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$SCOPEGATE_CACHE/target}"
UP_DIR="${SCOPEGATE_UP_DIR:-$SCOPEGATE_CACHE/up}"
step() { printf '[up %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

bash scripts/setup.sh
bash e2e/scripts/build-bins.sh
step "building scopegate"
cargo build --workspace --locked --quiet

# Start fresh every time: a stale control plane from an earlier run is stopped first.
bash e2e/scripts/cluster-down.sh "$UP_DIR"
bash e2e/scripts/cluster-up.sh "$UP_DIR"
bash e2e/scripts/operator-up.sh "$UP_DIR" "$CARGO_TARGET_DIR/debug/scopegate-operator"
source "$UP_DIR/env"
kubectl=("$E2E_KUBECTL")

step "applying examples/"
"${kubectl[@]}" apply --server-side --field-manager=scopegate-up -f examples/
for _ in $(seq 100); do
  ready="$("${kubectl[@]}" get authpolicies,oauthclients -n shop -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True || true)"
  [[ $ready -ge 5 ]] && break
  sleep 0.2
done
"${kubectl[@]}" get authpolicies,oauthclients -n shop

cat <<EOT

scopegate is running on a local control plane (Kubernetes $E2E_K8S_VERSION; no nodes, so pods
are objects only): installed with Helm, the operator running as its ServiceAccount, the
injection webhook called by the API server at 127.0.0.1. Use it with:

  source $UP_DIR/env
  \$E2E_KUBECTL get authpolicies,oauthclients -n shop
  \$E2E_KUBECTL get secret,configmap -n shop
  \$E2E_KUBECTL explain authpolicy.spec.issuer

Try an invalid object, and the API server refuses it with the rule's message:

  \$E2E_KUBECTL -n shop patch ap auth --type merge -p '{"spec":{"issuer":{"self":{"tokens":{"codeTtl":"30m"}}}}}'

Operator log: $UP_DIR/logs/operator.log. Stop everything with: make down
EOT
