#!/usr/bin/env bash
# Installs scopegate with Helm on a running control plane (the scopegate-crds chart, then the
# scopegate chart in webhook URL mode: the API server calls the operator process at
# https://127.0.0.1:PORT), writes a token kubeconfig for the chart's ServiceAccount and, unless
# --no-start, starts the operator binary as that ServiceAccount. There are no nodes, so the
# chart's Deployment never runs: the local process plays it. Appends E2E_OPERATOR_* to $DIR/env.
# Usage: operator-up.sh DIR OPERATOR_BINARY [--no-start]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
D="${1:?usage: operator-up.sh DIR OPERATOR_BINARY [--no-start]}"
BIN="${2:?operator binary}"
source "$D/env"
step() { printf '[operator-up %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
k() { "$E2E_KUBECTL" --kubeconfig "$D/admin.kubeconfig" "$@"; }

free_port() { python3 "$here/free-port.py"; }
webhook_port="$(free_port)"
step "helm install scopegate-crds and scopegate (webhook at https://127.0.0.1:$webhook_port)"
"$E2E_HELM" --kubeconfig "$D/admin.kubeconfig" upgrade --install scopegate-crds "$root/charts/scopegate-crds" >/dev/null
for crd in authpolicies.scopegate.dev oauthclients.scopegate.dev; do
  # (kubectl wait errors out while a new CRD has no conditions yet, so poll.)
  for _ in $(seq 300); do
    [[ "$(k get crd "$crd" -o jsonpath='{.status.conditions[?(@.type=="Established")].status}')" == True ]] && break
    sleep 0.2
  done
done
"$E2E_HELM" --kubeconfig "$D/admin.kubeconfig" upgrade --install scopegate "$root/charts/scopegate" \
  --namespace scopegate-system --create-namespace \
  --set "webhook.url=https://127.0.0.1:$webhook_port" --set "webhook.ipSans={127.0.0.1}" >/dev/null
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
export E2E_WEBHOOK_PORT=$webhook_port
ENV
[[ ${3:-} == --no-start ]] && exit 0

port="$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')"
step "starting the operator as system:serviceaccount:scopegate-system:scopegate-operator (admin 127.0.0.1:$port)"
KUBECONFIG="$D/operator.kubeconfig" RUST_LOG="${RUST_LOG:-info,kube=warn}" setsid "$BIN" \
  --namespace scopegate-system --identity e2e-shared --lease-seconds 6 --admin-addr "127.0.0.1:$port" \
  --webhook-addr "127.0.0.1:$webhook_port" --webhook-ip-san 127.0.0.1 --sidecar-image scopegate/sidecar:e2e \
  >"$D/logs/operator.log" 2>&1 </dev/null &
echo $! >"$D/operator.pid"
echo "export E2E_OPERATOR_ADMIN=127.0.0.1:$port" >>"$D/env"
# Ready when it leads, the caBundle is filled in, and the webhook answers over TLS with a
# certificate that bundle verifies (an empty review gets 400).
webhook_ready() {
  local bundle
  bundle="$(k get mutatingwebhookconfiguration scopegate-injector -o jsonpath='{.webhooks[0].clientConfig.caBundle}')"
  [[ -n $bundle ]] || return 1
  base64 -d <<<"$bundle" >"$D/pki/webhook-ca.crt"
  [[ "$(curl -s -o /dev/null -w '%{http_code}' --cacert "$D/pki/webhook-ca.crt" -X POST \
        "https://127.0.0.1:$webhook_port/mutate-pods")" == 400 ]]
}
for _ in $(seq 150); do
  if curl -fsS "http://127.0.0.1:$port/metrics" 2>/dev/null | grep -q '^scopegate_operator_leader 1' && webhook_ready; then
    step "operator leads; webhook serving over TLS with the CA in the caBundle"; exit 0
  fi
  kill -0 "$(cat "$D/operator.pid")" 2>/dev/null || { tail -20 "$D/logs/operator.log" >&2; echo "operator exited" >&2; exit 1; }
  sleep 0.2
done
tail -20 "$D/logs/operator.log" >&2
echo "operator did not become leader with a serving webhook within 30s" >&2
exit 1
