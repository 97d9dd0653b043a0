#!/usr/bin/env bash
# Prepares the operator's identity on a running control plane (namespace, ServiceAccount, the
# RBAC in deploy/rbac.yaml, a token kubeconfig) and, unless --no-start, starts the operator
# binary as that ServiceAccount. Appends E2E_OPERATOR_* to $DIR/env.
# Usage: operator-up.sh DIR OPERATOR_BINARY [--no-start]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
D="${1:?usage: operator-up.sh DIR OPERATOR_BINARY [--no-start]}"
BIN="${2:?operator binary}"
source "$D/env"
step() { printf '[operator-up %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
k() { "$E2E_KUBECTL" --kubeconfig "$D/admin.kubeconfig" "$@"; }

step "installing CRDs and the operator's ServiceAccount and RBAC"
k apply --server-side --field-manager=scopegate-e2e -f "$root/crds/" >/dev/null
k create namespace scopegate-system --dry-run=client -o yaml | k apply -f - >/dev/null
k apply --server-side --field-manager=scopegate-e2e -f "$root/deploy/rbac.yaml" >/dev/null
k wait --for condition=Established --timeout=60s crd/authpolicies.scopegate.dev crd/oauthclients.scopegate.dev >/dev/null
token="$(k -n scopegate-system create token scopegate-operator --duration=24h)"
server="$(k config view --raw -o jsonpath='{.clusters[0].cluster.server}')"
ca="$(k config view --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')"
cat >"$D/operator.kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: scopegate-e2e
  cluster:
    server: $server
    certificate-authority-data: $ca
contexts:
- name: operator
  context: {cluster: scopegate-e2e, user: scopegate-operator}
current-context: operator
users:
- name: scopegate-operator
  user:
    token: $token
KUBECONFIG
cat >>"$D/env" <<ENV
export E2E_OPERATOR_KUBECONFIG=$D/operator.kubeconfig
export E2E_OPERATOR_BIN=$BIN
ENV
[[ ${3:-} == --no-start ]] && exit 0

port="$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')"
step "starting the operator as system:serviceaccount:scopegate-system:scopegate-operator (admin 127.0.0.1:$port)"
KUBECONFIG="$D/operator.kubeconfig" RUST_LOG="${RUST_LOG:-info,kube=warn}" setsid "$BIN" \
  --namespace scopegate-system --identity e2e-shared --lease-seconds 6 --admin-addr "127.0.0.1:$port" \
  >"$D/logs/operator.log" 2>&1 </dev/null &
echo $! >"$D/operator.pid"
echo "export E2E_OPERATOR_ADMIN=127.0.0.1:$port" >>"$D/env"
for _ in $(seq 150); do
  curl -fsS "http://127.0.0.1:$port/metrics" 2>/dev/null | grep -q '^scopegate_operator_leader 1' && { step "operator leads"; exit 0; }
  kill -0 "$(cat "$D/operator.pid")" 2>/dev/null || { tail -20 "$D/logs/operator.log" >&2; echo "operator exited" >&2; exit 1; }
  sleep 0.2
done
tail -20 "$D/logs/operator.log" >&2
echo "operator did not become leader within 30s" >&2
exit 1
