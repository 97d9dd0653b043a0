#!/usr/bin/env bash
# Builds the local control plane from Go modules: kube-apiserver, kube-controller-manager,
# kubectl (k8s.io/kubernetes), etcd (go.etcd.io/etcd/server/v3) and helm (helm.sh/helm/v3);
# and the peer tools the tests run: kstatus (e2e/tools/kstatus over sigs.k8s.io/cli-utils).
# Idempotent: each binary set is cached by version under $E2E_BIN_CACHE and skipped when present.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/versions.sh"
export CGO_ENABLED=0

step() { printf '[build-bins %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# Runs a long command with its output in a log file, printing a progress line every 30 s so a
# cold build never looks hung, and the log's tail if it fails.
with_progress() {
  local what="$1"; shift
  local start=$SECONDS log
  mkdir -p "$E2E_BIN_CACHE/logs"
  log="$E2E_BIN_CACHE/logs/$(tr -c 'A-Za-z0-9.\n-' '_' <<<"$what" | head -c 80).log"
  step "$what"
  "$@" >"$log" 2>&1 &
  local pid=$! status=0
  while kill -0 "$pid" 2>/dev/null; do
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$pid" 2>/dev/null && step "$what: still running ($((SECONDS - start))s)"
  done
  wait "$pid" || status=$?
  if ((status != 0)); then
    tail -n 40 "$log" >&2
    echo "build-bins: $what failed (exit $status); full log: $log" >&2
    exit "$status"
  fi
  step "$what: done in $((SECONDS - start))s"
}

build_k8s() {
  if [[ -x $K8S_BIN/kube-apiserver && -x $K8S_BIN/kube-controller-manager && -x $K8S_BIN/kubectl ]]; then
    step "kubernetes v$K8S_VERSION: cached in $K8S_BIN"; return
  fi
  local mod="$E2E_BIN_CACHE/src-k8s-v$K8S_VERSION" staging="v0.${K8S_VERSION#1.}" minor
  minor="$(cut -d. -f2 <<<"$K8S_VERSION")"
  mkdir -p "$mod" && cd "$mod"
  [[ -f go.mod ]] || go mod init e2e.local/k8s-bins >/dev/null 2>&1
  go mod edit -go=1.26.0
  step "kubernetes v$K8S_VERSION: resolving modules (cold: several minutes)"
  local kgomod
  kgomod="$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
  local kgo lgo
  kgo="$(awk '$1=="go"{print $2; exit}' "$kgomod")"; lgo="$(go env GOVERSION)"; lgo="${lgo#go}"
  if [[ "$(printf '%s\n' "$kgo" "$lgo" | sort -V | tail -n1)" != "$lgo" ]]; then
    echo "k8s.io/kubernetes v$K8S_VERSION needs go >= $kgo, have $lgo: export GOTOOLCHAIN=go1.27.3 or K8S_VERSION=1.36.3" >&2
    exit 1
  fi
  local mods
  mapfile -t mods < <(awk '$2=="=>" && $3 ~ /^\.\/staging\/src\// {print $1}' "$kgomod")
  (( ${#mods[@]} >= 31 )) || { echo "parsed only ${#mods[@]} staging modules from $kgomod" >&2; exit 1; }
  for m in "${mods[@]}"; do go mod edit "-replace=$m=$m@$staging"; done
  with_progress "kubernetes v$K8S_VERSION: go get" go get -tool \
    "k8s.io/kubernetes/cmd/kube-apiserver@v$K8S_VERSION" \
    "k8s.io/kubernetes/cmd/kube-controller-manager@v$K8S_VERSION" \
    "k8s.io/kubernetes/cmd/kubectl@v$K8S_VERSION"
  with_progress "kubernetes v$K8S_VERSION: go mod tidy" go mod tidy
  local ldf="-s -w" bd="2026-01-01T00:00:00Z"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldf+=" -X $p.gitVersion=v$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ldf+=" -X $p.gitTreeState=clean -X $p.buildDate=$bd"
  done
  local tmp="$K8S_BIN.partial"
  mkdir -p "$tmp"
  with_progress "kubernetes v$K8S_VERSION: compiling kube-apiserver, kube-controller-manager, kubectl (cold: 15-30 min)" \
    go build -trimpath -buildvcs=false -tags "selinux,notest,grpcnotrace" -ldflags "$ldf" -o "$tmp/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl
  "$tmp/kube-apiserver" --version
  rm -rf "$K8S_BIN" && mv "$tmp" "$K8S_BIN"
}

build_etcd() {
  if [[ -x $ETCD_BIN/etcd ]]; then step "etcd v$ETCD_VERSION: cached in $ETCD_BIN"; return; fi
  local mod="$E2E_BIN_CACHE/src-etcd-v$ETCD_VERSION"
  mkdir -p "$mod" && cd "$mod"
  [[ -f go.mod ]] || go mod init e2e.local/etcd-bin >/dev/null 2>&1
  go mod edit -go=1.26.0
  with_progress "etcd v$ETCD_VERSION: go get" go get -tool "go.etcd.io/etcd/server/v3@v$ETCD_VERSION"
  with_progress "etcd v$ETCD_VERSION: go mod tidy" go mod tidy
  mkdir -p "$ETCD_BIN.partial"
  with_progress "etcd v$ETCD_VERSION: compiling" go build -trimpath -buildvcs=false \
    -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=v$ETCD_VERSION" \
    -o "$ETCD_BIN.partial/etcd" go.etcd.io/etcd/server/v3
  "$ETCD_BIN.partial/etcd" --version | head -1
  rm -rf "$ETCD_BIN" && mv "$ETCD_BIN.partial" "$ETCD_BIN"
}

build_helm() {
  if [[ -x $HELM_BIN/helm ]]; then step "helm v$HELM_VERSION: cached in $HELM_BIN"; return; fi
  local minor; minor="$(cut -d. -f2 <<<"$K8S_VERSION")"
  mkdir -p "$HELM_BIN.partial"
  with_progress "helm v$HELM_VERSION: go install" env GOBIN="$HELM_BIN.partial" go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor" \
    "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION"
  "$HELM_BIN.partial/helm" version --short
  rm -rf "$HELM_BIN" && mv "$HELM_BIN.partial" "$HELM_BIN"
}

build_kstatus() {
  if [[ -x $KSTATUS_BIN/kstatus ]]; then step "kstatus (cli-utils v$CLI_UTILS_VERSION): cached in $KSTATUS_BIN"; return; fi
  local mod="$E2E_BIN_CACHE/src-kstatus-v$CLI_UTILS_VERSION"
  mkdir -p "$mod" && cd "$mod"
  [[ -f go.mod ]] || go mod init e2e.local/kstatus >/dev/null 2>&1
  go mod edit -go=1.26.0
  cp "$here/../tools/kstatus/main.go" main.go
  with_progress "kstatus (cli-utils v$CLI_UTILS_VERSION): go get" go get \
    "sigs.k8s.io/cli-utils@v$CLI_UTILS_VERSION" "k8s.io/apimachinery@v0.${K8S_VERSION#1.}"
  with_progress "kstatus: go mod tidy" go mod tidy
  mkdir -p "$KSTATUS_BIN.partial"
  with_progress "kstatus: compiling" go build -trimpath -buildvcs=false -ldflags "-s -w" \
    -o "$KSTATUS_BIN.partial/kstatus" .
  rm -rf "$KSTATUS_BIN" && mv "$KSTATUS_BIN.partial" "$KSTATUS_BIN"
}

command -v go >/dev/null || { echo "go is required to build the local control plane" >&2; exit 1; }
mkdir -p "$E2E_BIN_CACHE"
build_etcd
build_helm
build_k8s
build_kstatus
step "all binaries ready under $E2E_BIN_CACHE"
