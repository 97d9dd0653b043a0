#!/usr/bin/env bash
# Starts a local control plane in directory $1: etcd, kube-apiserver (RBAC on, client-cert
# admin, service-account signing key) and kube-controller-manager (garbage collection,
# namespace deletion, service accounts). No nodes: pods are objects only.
# Writes $1/env (KUBECONFIG, E2E_KUBECTL, E2E_HELM, ...), $1/*.pid and $1/logs/.
# Stop it with cluster-down.sh $1.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/versions.sh"
D="${1:?usage: cluster-up.sh DIR}"
mkdir -p "$D/logs" "$D/pki"
D="$(cd "$D" && pwd)"

step() { printf '[cluster-up %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
free_port() { python3 "$here/free-port.py"; }
b64() { base64 -w0 <"$1"; }
wait_for() {
  local what="$1" timeout="$2"; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      echo "cluster-up: timed out after ${timeout}s waiting for $what; logs in $D/logs" >&2
      return 1
    fi
    sleep 0.2
  done
}
start() { # name, command... : starts in its own session, records the pid
  local name="$1"; shift
  setsid "$@" >"$D/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$D/$name.pid"
}

for bin in "$ETCD_BIN/etcd" "$K8S_BIN/kube-apiserver" "$K8S_BIN/kube-controller-manager" "$K8S_BIN/kubectl"; do
  [[ -x $bin ]] || { echo "cluster-up: $bin is missing: run e2e/scripts/build-bins.sh first" >&2; exit 1; }
done
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY
export NO_PROXY=127.0.0.1,localhost

step "generating PKI"
(
  cd "$D/pki"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 7 -subj "/CN=scopegate-e2e-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  sign() {
    openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
    printf '%b' "$3" >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 7 \
      -out "$1.crt" -extfile "$1.ext" 2>/dev/null
  }
  srv='basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n'
  sign apiserver "/CN=kube-apiserver" "${srv}subjectAltName=DNS:localhost,IP:127.0.0.1,IP:10.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\n"
  sign admin "/O=system:masters/CN=e2e-admin" \
    'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n'
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key 2>/dev/null
  openssl pkey -in sa.key -pubout -out sa.pub
)

ETCD_PORT=$(free_port); PEER_PORT=$(free_port); API_PORT=$(free_port)
step "starting etcd v$ETCD_VERSION on 127.0.0.1:$ETCD_PORT"
start etcd "$ETCD_BIN/etcd" --name e2e --data-dir "$D/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
  --initial-cluster "e2e=http://127.0.0.1:$PEER_PORT" --unsafe-no-fsync --log-level warn
wait_for etcd 30 curl -fsS "http://127.0.0.1:$ETCD_PORT/health"

step "starting kube-apiserver v$K8S_VERSION on https://127.0.0.1:$API_PORT"
start kube-apiserver "$K8S_BIN/kube-apiserver" \
  --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
  --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$API_PORT" \
  --cert-dir="$D/pki" --tls-cert-file="$D/pki/apiserver.crt" --tls-private-key-file="$D/pki/apiserver.key" \
  --client-ca-file="$D/pki/ca.crt" \
  --authorization-mode=RBAC \
  --service-account-issuer="https://127.0.0.1:$API_PORT" \
  --service-account-key-file="$D/pki/sa.pub" --service-account-signing-key-file="$D/pki/sa.key" \
  --service-cluster-ip-range=10.0.0.0/24 \
  --allow-privileged=true \
  --disable-admission-plugins=ServiceAccount \
  --endpoint-reconciler-type=none \
  --v=1
wait_for kube-apiserver 180 curl -fsS --cacert "$D/pki/ca.crt" --cert "$D/pki/admin.crt" --key "$D/pki/admin.key" \
  "https://127.0.0.1:$API_PORT/readyz"

write_kubeconfig() { # file, indented user body
  cat >"$1" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: scopegate-e2e
  cluster:
    server: https://127.0.0.1:${API_PORT}
    certificate-authority-data: $(b64 "$D/pki/ca.crt")
contexts:
- name: scopegate-e2e
  context: {cluster: scopegate-e2e, user: e2e-user}
current-context: scopegate-e2e
users:
- name: e2e-user
  user:
$2
KUBECONFIG
}
write_kubeconfig "$D/admin.kubeconfig" "    client-certificate-data: $(b64 "$D/pki/admin.crt")
    client-key-data: $(b64 "$D/pki/admin.key")"

step "starting kube-controller-manager (garbage collection, namespaces, service accounts)"
start kube-controller-manager "$K8S_BIN/kube-controller-manager" \
  --kubeconfig="$D/admin.kubeconfig" \
  --controllers=garbage-collector-controller,namespace-controller,serviceaccount-controller,clusterrole-aggregation-controller \
  --leader-elect=false --use-service-account-credentials=false \
  --secure-port=0 --v=1
wait_for "kube-controller-manager (default ServiceAccount)" 90 \
  "$K8S_BIN/kubectl" --kubeconfig "$D/admin.kubeconfig" -n default get serviceaccount default
# Hardened clusters drop the default grant of the service-account issuer's discovery to every
# ServiceAccount: without it, the operator reads the issuer only through its own ClusterRole,
# so a missing rule there fails the tests. (The API server puts it back when it restarts.)
"$K8S_BIN/kubectl" --kubeconfig "$D/admin.kubeconfig" delete clusterrolebinding \
  system:service-account-issuer-discovery --ignore-not-found >/dev/null

cat >"$D/env" <<ENV
export KUBECONFIG=$D/admin.kubeconfig
export E2E_DIR=$D
export E2E_API_PORT=$API_PORT
export E2E_KUBECTL=$K8S_BIN/kubectl
export E2E_HELM=$HELM_BIN/helm
export E2E_K8S_VERSION=v$K8S_VERSION
ENV
step "control plane v$K8S_VERSION is up; kubeconfig: $D/admin.kubeconfig"
