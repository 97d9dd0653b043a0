#!/usr/bin/env bash
# The main job on the embedded local control plane: build what is missing, start the control
# plane (or reuse the running one), install the CRDs, apply the examples, and print how to use
# kubectl against it. `make down` stops it.
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

if [[ -f $UP_DIR/env ]] && (source "$UP_DIR/env" && "$E2E_KUBECTL" get --raw /readyz >/dev/null 2>&1); then
  step "control plane already running in $UP_DIR"
else
  bash e2e/scripts/cluster-down.sh "$UP_DIR"
  bash e2e/scripts/cluster-up.sh "$UP_DIR"
fi
source "$UP_DIR/env"
kubectl=("$E2E_KUBECTL")

step "installing the CRDs"
"${kubectl[@]}" apply --server-side --field-manager=scopegate-up -f crds/ >/dev/null
"${kubectl[@]}" wait --for condition=Established --timeout=60s \
  crd/authpolicies.scopegate.dev crd/oauthclients.scopegate.dev >/dev/null

step "applying examples/"
"${kubectl[@]}" apply --server-side --field-manager=scopegate-up -f examples/

cat <<EOT

scopegate's local control plane is up (Kubernetes $E2E_K8S_VERSION, no nodes: pods are objects only).
Use it with:

  source $UP_DIR/env
  \$E2E_KUBECTL get authpolicies,oauthclients -n shop
  \$E2E_KUBECTL explain authpolicy.spec.issuer

Try an invalid object, and the API server refuses it with the rule's message:

  \$E2E_KUBECTL -n shop patch ap auth --type merge -p '{"spec":{"issuer":{"self":{"tokens":{"codeTtl":"30m"}}}}}'

Stop it with: make down
EOT
