#!/usr/bin/env bash
# The main job: build what is missing, start the local control plane, install scopegate with
# Helm, run the operator as its ServiceAccount, and play the demo (examples/ applied, the shop's
# pods run as a kubelet would, a transcript of what scopegate does); then print how
# to use kubectl against the control plane, which keeps running until `make down`.
# Needs root, as a kubelet does (network and mount namespaces for the pods).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source e2e/scripts/versions.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$SCOPEGATE_CACHE/target}"
UP_DIR="${SCOPEGATE_UP_DIR:-$SCOPEGATE_CACHE/up}"
step() { printf '[up %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
[[ $EUID -eq 0 ]] || { echo "up: run as root: the demo plays the kubelet (network and mount namespaces for the pods)" >&2; exit 1; }

bash scripts/setup.sh
bash e2e/scripts/build-bins.sh
step "building scopegate (debug; reuses $CARGO_TARGET_DIR)"
cargo build --workspace --locked # cargo prints its progress; a cold build takes several minutes

# Start fresh every time: a stale control plane from an earlier run is stopped first.
bash e2e/scripts/cluster-down.sh "$UP_DIR"
bash e2e/scripts/cluster-up.sh "$UP_DIR"
bash e2e/scripts/operator-up.sh "$UP_DIR" "$CARGO_TARGET_DIR/debug/scopegate-operator"
source "$UP_DIR/env"
kubectl=("$E2E_KUBECTL")

step "the demo: examples/ applied, the shop's pods run as a kubelet would"
export E2E_SIDECAR_BIN="$CARGO_TARGET_DIR/debug/scopegate-sidecar"
"$CARGO_TARGET_DIR/debug/demo"
echo
"${kubectl[@]}" get authpolicies,oauthclients,pods -n shop

cat <<EOT

That was scopegate on a local control plane (Kubernetes $E2E_K8S_VERSION, no nodes: this script
played the kubelet for the shop's pods, which stopped with the demo). Installed with Helm, the
operator runs as its ServiceAccount, the API server calls the injection webhook at 127.0.0.1.
It keeps running; use it with:

  source $UP_DIR/env
  \$E2E_KUBECTL get authpolicies,oauthclients -n shop
  \$E2E_KUBECTL get pod auth-0 -n shop -o yaml      # the injected sidecar
  \$E2E_KUBECTL explain authpolicy.spec.issuer

Try an invalid object, and the API server refuses it with the rule's message:

  \$E2E_KUBECTL -n shop patch ap auth --type merge -p '{"spec":{"issuer":{"self":{"tokens":{"codeTtl":"30m"}}}}}'

Logs: $UP_DIR/logs (operator, and each pod's containers). Stop everything with: make down
EOT
